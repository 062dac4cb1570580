"""Where each out-of-process platform starts a worker: the entry points, all in the worker layer.

Platforms sit below the worker, so they name these functions rather than
import them (:data:`fanflow.platforms.base.WORKER_ENTRY`):

- :func:`process_main`: the main of a worker process of the ``processes``
  platform's pool (and of a gateway's pool), started as
  ``python -c "<CHILD_MAIN>" <fd>`` (:mod:`fanflow.platforms.processes.protocol`);
- :func:`ray_task`: what the ``ray`` platform's task runs in a Ray worker;
- :func:`lambda_handler`: the handler of the ``lambda`` platform's function.

Each ends in :func:`fanflow.worker.handle`. The in-process ``threads``
platform needs no entry: it calls ``handle`` in the client's process.
"""

from __future__ import annotations

import gc
import logging
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from fanflow.errors import PayloadRejectedError
from fanflow.worker import handle

__all__ = ["freeze_imports", "lambda_handler", "process_main", "ray_task", "serve_pipe"]

log = logging.getLogger(__name__)


# -- processes ----------------------------------------------------------------------------
def process_main() -> None:
    """A pool's worker process: the pipe's file descriptor is ``argv[1]``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the pool, which stops its workers
    with Connection(int(sys.argv[1])) as conn:
        serve_pipe(conn)


def serve_pipe(conn: Connection) -> None:
    """Run invocations from the pool until it says stop or goes away (the protocol of the pipe)."""
    from fanflow.platforms.processes import capacity, protocol

    setup = pickle.loads(conn.recv_bytes())
    secret: bytes = setup["secret"]
    logging.basicConfig(level=setup["log_level"], format="%(levelname)s fanflow-worker: %(message)s")
    if setup.get("capacity_fd") is not None:
        capacity.attach(setup["capacity_fd"])
    frozen = freeze_imports(collect=False)
    conn.send_bytes(protocol.READY)
    cold = not setup.get("prewarmed", False)
    told = False  # whether DONE went for the invocation at hand

    def done() -> None:
        # Its loop is over: the pool may send the next invocation while this one's last events go.
        nonlocal told
        conn.send_bytes(protocol.DONE)
        told = True

    while True:
        try:
            payload = conn.recv_bytes()
        except EOFError:
            return
        if not payload:
            return
        if payload[:1] == protocol.GROW:  # the pool is idle: take the heap growth out of a later run
            protocol.grow_heap(protocol.grow_size(payload), conn.poll)
            continue
        redelivered = payload[:1] == protocol.REDELIVERED
        if redelivered:
            payload = payload[1:]
        told = False
        try:
            handle(payload, secret=secret, cold=cold, redelivered=redelivered, done=done)
            reply = protocol.DONE
        except PayloadRejectedError as exc:
            log.warning("refused an invocation: %s", exc)
            reply = protocol.REFUSED
        except Exception:  # handle() records task failures itself; this is the worker breaking
            log.exception("the worker crashed outside of its tasks")
            reply = protocol.CRASHED + traceback.format_exc().encode(errors="replace")
        if not told:  # one reply per invocation: after DONE the pool may have sent this process the next one
            conn.send_bytes(reply)
        cold = False
        if len(sys.modules) != frozen:  # the run imported code (its first in this process): done between runs
            frozen = freeze_imports()


def freeze_imports(collect: bool = True) -> int:
    """Move every object alive now out of the garbage collector's sight (``gc.freeze``), after a
    collection unless ``collect`` is False; returns how many modules are loaded.

    Called while a worker process is idle, after its imports. A warm worker holds
    about 45,000 objects of imported modules (fanflow, redis, numpy, ...) that
    live as long as the process; a full collection traverses them all, 13-21 ms
    of CPU, and it came at a random point of whichever run crossed the
    threshold. Frozen, they are never traversed again (they would never have
    been garbage). Objects made later stay collectable; what the importing run
    left alive at that moment (its cached DAG, say) is frozen with the modules:
    reference counting still frees it, only a cycle in it would stay. The
    collection first keeps a finished run's garbage cycles out of the frozen
    set; a fresh process has had no run, so it skips that (18 ms of a cold start).
    """
    if collect:
        gc.collect()
    gc.freeze()
    return len(sys.modules)


# -- ray ------------------------------------------------------------------------------------
def ray_task(payload: bytes) -> dict[str, Any]:
    """One invocation as a Ray task; the secret is ``FANFLOW_SECRET`` from the task's runtime env.

    Ray retries a task whose process died with the same task id: the retry runs as the same delivery.
    """
    import ray

    return handle(payload, delivery=ray.get_runtime_context().get_task_id())


# -- lambda ---------------------------------------------------------------------------------
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda function's handler: run one worker invocation, or check requirements.

    ``{"payload": base64}`` runs a worker and returns its report;
    ``{"requirements": [...]}`` returns ``{"missing": [...]}``, what this
    function's environment lacks (asked by the client before a run). A payload
    with a bad signature is answered, not raised: Lambda would retry it.
    """
    if "requirements" in event:
        from fanflow.requirements import missing_of_specs

        return {"missing": missing_of_specs(event["requirements"])}
    from fanflow.platforms.aws_lambda import payload_of

    try:
        # Lambda retries a failed asynchronous invocation with the same request id: the same delivery.
        return handle(payload_of(event), delivery=getattr(context, "aws_request_id", None))
    except PayloadRejectedError as exc:
        log.error("refused an invocation: %s", exc)
        return {"refused": str(exc)}
