"""A worker process of the pool: ``python -c "...child import main; main()" <fd>``.

The pool starts each worker as a fresh interpreter (a cold start, as on a FaaS
platform) and talks to it over one pipe, whose file descriptor is the only
argument. A fresh interpreter rather than ``multiprocessing``'s spawn, because
spawn re-imports the user's ``__main__`` in every child: a script that calls
``compute()`` at top level without a ``__main__`` guard would run again in each
worker. The pool passes its ``sys.path`` in ``PYTHONPATH``, so modules the
client can import (test modules, a project's packages) import here too.

Protocol (length-framed messages of :mod:`multiprocessing.connection`):

- pool -> worker, once: the pickled setup (``secret``, ``log_level``,
  ``prewarmed``); the secret travels here, never on the command line or in the
  environment; a prewarmed worker's first invocation is a warm start;
- worker -> pool: ``R`` once imported and ready;
- pool -> worker: one signed invocation payload; worker -> pool: ``D`` (done),
  ``X`` (refused: bad signature) or ``E`` + traceback (the worker itself
  crashed before it could record the failure; the pool fails the run);
- pool -> worker: an empty message, or end of file: exit.
"""

from __future__ import annotations

import logging
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection

from fanflow.errors import PayloadRejectedError
from fanflow.worker import handle

log = logging.getLogger("fanflow.platforms.processes.child")

READY = b"R"
DONE = b"D"
REFUSED = b"X"
CRASHED = b"E"


def serve(conn: Connection) -> None:
    """Run invocations from the pool until it says stop or goes away."""
    setup = pickle.loads(conn.recv_bytes())
    secret: bytes = setup["secret"]
    logging.basicConfig(level=setup["log_level"], format="%(levelname)s fanflow-worker: %(message)s")
    conn.send_bytes(READY)
    cold = not setup.get("prewarmed", False)
    while True:
        try:
            payload = conn.recv_bytes()
        except EOFError:
            return
        if not payload:
            return
        try:
            handle(payload, secret=secret, cold=cold)
            reply = DONE
        except PayloadRejectedError as exc:
            log.warning("refused an invocation: %s", exc)
            reply = REFUSED
        except Exception:  # handle() records task failures itself; this is the worker breaking
            log.exception("the worker crashed outside of its tasks")
            reply = CRASHED + traceback.format_exc().encode(errors="replace")
        conn.send_bytes(reply)
        cold = False


def main() -> None:
    """Entry point: the pipe's file descriptor is ``argv[1]``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the pool, which stops its workers
    with Connection(int(sys.argv[1])) as conn:
        serve(conn)
