"""What the pool and its worker processes say over their pipe, and how a worker process is started.

The pool starts each worker as a fresh interpreter (a cold start, as on a FaaS
platform) running :data:`CHILD_MAIN` with one argument, the file descriptor of
its pipe. A fresh interpreter rather than ``multiprocessing``'s spawn, because
spawn re-imports the user's ``__main__`` in every child: a script that calls
``compute()`` at top level without a ``__main__`` guard would run again in each
worker. The process's main is the worker layer's entry point, named here and
never imported (this layer sits below the worker).

Messages (length-framed, :mod:`multiprocessing.connection`):

- pool -> worker, once: the pickled setup (``secret``, ``log_level``,
  ``prewarmed``, ``capacity_fd``); the secret travels here, never on the
  command line or in the environment; a prewarmed worker's first invocation is
  a warm start; ``capacity_fd`` (inherited like the pipe) is the page holding
  the pool's free-slot count (:mod:`.capacity`), or None;
- worker -> pool: :data:`READY` once imported and ready;
- pool -> worker: one signed invocation payload, after :data:`REDELIVERED` when
  the pool delivers it again because the worker it first went to died (the new
  worker then takes the invocation over); worker -> pool: :data:`DONE`,
  :data:`REFUSED` (bad signature) or :data:`CRASHED` + traceback (the worker
  itself crashed before it could record the failure; the pool fails the run);
- pool -> worker: an empty message, or end of file: exit.
"""

from __future__ import annotations

import os
import select
import threading
import time

from fanflow.platforms.base import WORKER_ENTRY

POOL_PID_ENV = "FANFLOW_POOL_PID"
"""The environment variable that tells a worker process its pool host's pid (see :func:`die_with_pool`)."""

CHILD_MAIN = (
    f"from fanflow.platforms.processes.protocol import die_with_pool; die_with_pool(); "
    f"from {WORKER_ENTRY} import process_main; process_main()"
)
"""The ``python -c`` program of a worker process; its pipe's file descriptor follows as ``argv[1]``."""

_PARENT_POLL_S = 0.5

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}
"""glibc allocator settings of a worker process, where the pool's own environment does not set them.

By default glibc serves a block above its adaptive threshold (128 KB, raised to
the largest block freed so far) with a fresh ``mmap`` and gives the top of its
heap back to the system once 2x that threshold is free there: a warm worker
making and dropping MB-sized arrays faulted their pages in again, run after
run (gemm: 0-5,000 page faults per run, varying with the order of frees). With
the threshold at glibc's own adaptive ceiling (32 MB) and up to 64 MB of free
heap kept, those arrays reuse pages the process already has. The cost: a
worker keeps up to 64 MB it no longer uses, within its ``memory_mb``.
"""


def die_with_pool() -> None:
    """End this worker process when its pool host dies, however it dies (SIGKILL included).

    A host's held entries are handed back as redeliveries once it is dead
    (:mod:`.pool`); a worker of the dead host still running one of them would
    run it twice. A daemon thread waits for the host's exit: on a pidfd where
    the system has them (Linux 5.3+: no polling, no delay), else by polling the
    parent pid. (Not ``PR_SET_PDEATHSIG``: it fires when the *thread* that
    started the process ends, and the host starts workers from short-lived
    helper threads.)
    """
    pool_pid = int(os.environ.get(POOL_PID_ENV, "0"))
    if pool_pid:
        threading.Thread(target=_watch_pool, args=(pool_pid,), name="fanflow-pool-watch", daemon=True).start()


def _watch_pool(pool_pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pool_pid)
    except (AttributeError, OSError):  # no pidfds here, or the host is gone already
        pidfd = None
    if pidfd is not None and os.getppid() == pool_pid:
        select.select([pidfd], [], [])  # readable once the host has exited
    else:
        while os.getppid() == pool_pid:
            time.sleep(_PARENT_POLL_S)
    os._exit(1)


READY = b"R"
DONE = b"D"
REFUSED = b"X"
CRASHED = b"E"
REDELIVERED = b"!"
"""Prefix of a payload the pool delivers again (payloads themselves start with their magic, ``FF``)."""
