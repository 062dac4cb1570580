"""Worker layer: :func:`handle`, where every invocation on every platform ends.

Out-of-process platforms reach it through :mod:`fanflow.worker.entry`; the
in-process one through the handler registered with the platform layer below.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fanflow.dag.encoding import decode
from fanflow.dag.graph import DAG
from fanflow.platforms import worker_platform
from fanflow.platforms.base import set_local_handler
from fanflow.platforms.invocation import Invocation, WorkerSettings, sign, verify
from fanflow.platforms.sizing import blas_threads, limit_blas_threads, vcpus
from fanflow.store import keys, open_store
from fanflow.store.base import MISSING, RUNNING, Store
from fanflow.worker.loop import Worker
from fanflow.worker.values import values as process_values

__all__ = ["Invocation", "Worker", "WorkerSettings", "drop_ended_runs", "handle", "sign"]

log = logging.getLogger(__name__)

_DAG_CACHE_SIZE = 16
_dags: OrderedDict[str, DAG] = OrderedDict()
_DECODED_KEPT = 2
"""Decoded DAGs kept by their encoding across runs: a plan run again ships the same bytes (the
real-size tree: 77,707 B, the same in 10 of 10 runs), and decoding its 2,047 tasks cost each
worker 5.5 ms per run (load 5.7), at the start of the run, before its first task. Two, so that
two workflows taking turns on a pool both hit; few, so that full collections stay short (see
:func:`drop_ended_runs`)."""
_decoded: OrderedDict[bytes, DAG] = OrderedDict()
_dags_lock = threading.Lock()
_cold = True


def handle(
    payload: bytes | Invocation,
    *,
    secret: bytes | None = None,
    cold: bool | None = None,
    redelivered: bool = False,
    delivery: str | None = None,
    done: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run one worker invocation to its end and return a short report.

    ``payload`` is signed bytes (every out-of-process platform) or, inside the
    client's own process, an :class:`Invocation` object. Bytes are verified with
    ``secret`` (default: the ``FANFLOW_SECRET`` env var) before anything is
    unpickled; a bad signature raises :class:`fanflow.PayloadRejectedError`.
    Task failures never raise here: they are recorded in the store for the client.
    ``cold`` says whether this invocation waited for its process to start; by
    default, the first invocation in a process is cold. ``redelivered`` says the
    platform delivers it again because the worker it first went to died: it
    takes the invocation over (see :meth:`Worker.run`). ``delivery`` names this
    delivery when the platform keeps the name across its own retries of it (a
    Ray task's id, a Lambda request id): a retry then runs as the same delivery.
    ``done`` is called once the worker's loop is over, before it writes its last
    events: a platform that tells its pool then lets that write overlap the hand-over
    of the process's next invocation. It is not called when the worker breaks
    outside its tasks (the failure is recorded after the loop).
    """
    global _cold
    received_at = time.time()
    first, _cold = _cold, False
    cold = first if cold is None else cold
    if isinstance(payload, Invocation):
        inv = payload
        store, platform = inv.runtime
    else:
        if secret is None:
            env = os.environ.get("FANFLOW_SECRET")
            secret = env.encode() if env else None
        inv = verify(bytes(payload), secret)
        # Before anything of the run is unpickled (and may load numpy): size numeric thread pools.
        limit_blas_threads(blas_threads(vcpus(inv.memory_mb)))
        store = open_store(inv.store_url, retry_s=inv.settings.store_retry_s, secret=secret)
        platform = worker_platform(inv.platform, inv.platform_options)
    verified_at = time.time()
    dag = _dag_for(inv, store)
    if dag is None:  # the run ended (its keys are gone) while this invocation waited: nothing to do
        log.info("run %s ended before its worker started; exiting", inv.run_id)
        return {"worker": None, "run_id": inv.run_id, "tasks": 0, "cold": cold, "latency_s": 0.0}
    if not store.keeps_objects:  # only workers of a remote store keep values in the process (values.py)
        drop_ended_runs(inv.run_id, store)
    worker = Worker(
        inv,
        store,
        platform,
        dag,
        secret=secret,
        cold=cold,
        redelivered=redelivered,
        delivery=delivery,
        arrival=(received_at, verified_at),
        done=done,
    )
    try:
        worker.run()
    except Exception as exc:
        log.debug("worker %s failed outside a task", worker.id, exc_info=True)
        worker.fail_outside_task(exc)
    return {
        "worker": worker.id,
        "run_id": inv.run_id,
        "tasks": worker.tasks_run,
        "cold": cold,
        "latency_s": max(0.0, worker.started_at - inv.invoked_at) if inv.invoked_at else 0.0,
        "finished_at": time.time(),
    }


def drop_ended_runs(run_id: str, store: Store) -> None:
    """On the first invocation of ``run_id`` in this process: forget the values and DAGs of the runs that ended.

    The process value cache keeps the last :data:`~fanflow.worker.values.RUNS` runs for runs that
    share a pool at once; for a plan run again and again it held the previous run's values through
    the next one, so a fresh worker's heap grew over its first two runs: a pool's first warm run of
    gemm (2000² in 500² blocks) paid 32,000-36,000 page faults and 130-190 ms of kernel time per
    process, the next runs 30-650 faults. Dropped here, the run reuses that memory: 18 and 196 faults
    (a worker given more tasks than in any run before still grows).
    The decoded DAGs of the runs that ended go too: a warm process kept the last 16, so its oldest
    garbage-collector generation grew run after run and a full collection traversed them all, in
    both workers of a pool in the same run (they get the same work). A real-size tree (2,047 tasks),
    24 runs: a full collection cost each worker 1.7 ms of CPU with 7 DAGs kept, 4.0-5.0 ms with
    14-16 (4 per worker; ~7% of a quiet run's worker CPU); with ended runs' DAGs dropped 0.7-1.0 ms.
    One status read per other run held, once per run and process; a run still running keeps its
    values and DAG, and a read that fails keeps them too (the caches' own bounds still hold).
    """
    kept = process_values.runs()
    if run_id in kept or not (kept or _dags):  # in-process invocations keep neither
        return
    with _dags_lock:
        decoded = [r for r in _dags if r != run_id]
    for other in dict.fromkeys([*kept, *decoded]):
        try:
            ended = store.get_status(keys.status(other)) != RUNNING
        except Exception:  # a hint only
            log.debug("could not read the status of run %s", other, exc_info=True)
            continue
        if ended:
            process_values.drop(other)
            with _dags_lock:
                _dags.pop(other, None)


def _dag_for(inv: Invocation, store: Any) -> DAG | None:
    """The run's DAG: the object itself in-process, else decoded once per run and cached, and
    taken from an earlier run that shipped the same encoding when there is one (:data:`_DECODED_KEPT`).

    Runs may share one decoded DAG as they share a client's DAG object in-process: what a
    worker derives from it (its plan view) depends only on its encoded content.
    None when the DAG is neither inline nor in the store: the run has ended.
    """
    if isinstance(inv.dag, DAG):
        return inv.dag
    with _dags_lock:
        dag = _dags.get(inv.run_id)
        if dag is not None:
            _dags.move_to_end(inv.run_id)
            return dag
    data = inv.dag
    if data is None:
        (data,), _ = store.get_many([keys.dag(inv.run_id)])
        if data is MISSING:
            return None
    encoded = data if isinstance(data, bytes) else bytes(data)
    with _dags_lock:
        dag = _decoded.get(encoded)
        if dag is not None:
            _decoded.move_to_end(encoded)
    if dag is None:
        dag = decode(encoded)
        with _dags_lock:
            _decoded[encoded] = dag
            while len(_decoded) > _DECODED_KEPT:
                _decoded.popitem(last=False)
    with _dags_lock:
        _dags[inv.run_id] = dag
        while len(_dags) > _DAG_CACHE_SIZE:
            _dags.popitem(last=False)
    return dag


set_local_handler(handle)
