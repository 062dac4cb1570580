"""Turning a run's events and its DAG into :class:`RunMetrics`.

Workers emit facts only they know (times, sizes, which worker, cold or warm);
the DAG, on the client, adds what a worker never sends (task names, function
identities, dependencies). :func:`build_metrics` joins the two in one pass over
the events, in any order they arrived: batches from different workers
interleave in the stream.

Fields are coerced to their types on the way in, so a store that keeps event
fields as text (as Redis Streams do) gives the same records as the memory store.
Every task of the DAG gets a record; a task that never finished (the run failed
or was cancelled first) is marked ``unfinished`` with zero times.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fanflow.metrics.graph import Graph
from fanflow.metrics.normalize import to_baseline
from fanflow.metrics.records import (
    FAILED,
    FINISHED,
    UNFINISHED,
    ElementRecord,
    InputRecord,
    RunMetrics,
    RunRecord,
    TaskRecord,
    WorkerRecord,
)
from fanflow.store.metadata.base import Summary, SummaryKey
from fanflow.store.metadata.trace import decode_trace


def _float(value: Any) -> float:
    return float(value) if value is not None else 0.0


def _int(value: Any) -> int:
    return int(float(value)) if value is not None else 0


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def _sizes(value: Any) -> list[int | None]:
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    return [None if v is None else _int(v) for v in value or ()]


def build_metrics(dag: Graph, events: Iterable[dict[str, Any]], header: RunRecord) -> RunMetrics:
    """The metrics of the run ``header`` describes, from its ``events`` and its ``dag``.

    ``header`` carries the client's facts (ids, status, times, config); counts
    and byte totals are filled in here.
    """
    events = sorted(events, key=lambda e: _float(e.get("t")))  # workers' batches interleave in the stream
    workers: dict[str, WorkerRecord] = {}
    started: dict[int, tuple[float, str]] = {}
    ends: dict[int, dict[str, Any]] = {}
    elements: dict[int, dict[int, ElementRecord]] = {}
    for e in events:
        kind, task, wid, t = e.get("kind"), _int(e.get("task", -1)), str(e.get("worker", "")), _float(e.get("t"))
        w = workers.get(wid)
        if w is None:
            w = workers[wid] = WorkerRecord(wid, t, t, False, header.memory_mb, 0.0, [])
        if kind == "worker_started":
            w.started_at = t
            w.cold = _bool(e.get("cold"))
            w.memory_mb = _int(e.get("memory_mb")) or header.memory_mb
            w.latency_s = _float(e.get("latency_s"))
        elif kind == "worker_stopped":
            w.stopped_at = t
        elif e.get("element") is not None:  # an element of a dynamic fan-out, not the task itself
            _element_event(elements.setdefault(task, {}), e, w, t)
        elif kind == "task_started":
            started.setdefault(task, (t, wid))
            w.tasks.append(task)
        elif kind in ("task_finished", "task_failed") and task not in ends:
            ends[task] = e  # a task re-run after a lost lease keeps its first ending
        w.stopped_at = max(w.stopped_at, t)

    tasks = [_task_record(dag, i, started.get(i), ends.get(i), workers, header) for i in range(len(dag.deps))]
    for i, by_index in elements.items():
        tasks[i].elements = [by_index[k] for k in sorted(by_index)]
    by_id = {t.task: t for t in tasks}
    for t in tasks:  # local inputs were never transferred: their size is the upstream's output size
        for inp in t.inputs:
            if inp.local:
                inp.bytes = by_id[inp.task].out_bytes
    finished = [t for t in tasks if t.status == FINISHED]
    run = dataclasses.replace(
        header,
        tasks=len(tasks),
        tasks_finished=len(finished),
        workers=len(workers),
        cold_starts=sum(w.cold for w in workers.values()),
        bytes_fetched=sum(t.fetched_bytes for t in finished),
        bytes_local=sum(i.bytes for t in finished for i in t.inputs if i.local),
        bytes_out=sum(t.out_bytes for t in finished),
    )
    ordered = sorted(workers.values(), key=lambda w: (w.started_at, w.worker))
    return RunMetrics(run, tasks, ordered, events)


def metrics_of_trace(trace: bytes, run: RunRecord) -> RunMetrics:
    """The records of a run saved as ``trace`` with the run document ``run``."""
    decoded = decode_trace(trace)
    return build_metrics(Graph.of_trace(decoded), decoded.table.events(), run)


def _element_event(by_index: dict[int, ElementRecord], e: Mapping[str, Any], w: WorkerRecord, t: float) -> None:
    """Fold one event of a dynamic fan-out's element into that element's record."""
    index = _int(e.get("element"))
    el = by_index.get(index)
    if el is None:
        el = by_index[index] = ElementRecord(index, w.worker, w.memory_mb, 0, t, t, 0.0, 0.0, 0.0, 0, 0, 0.0)
    kind = e.get("kind")
    if kind == "task_started":
        w.tasks.append(_int(e.get("task")))
        el.started_at = t
    elif kind == "task_finished":
        el.memory_mb = _int(e.get("memory_mb")) or el.memory_mb
        el.attempt, el.finished_at = _int(e.get("attempt")), t
        el.exec_s, el.fetch_s, el.store_s = _float(e.get("exec_s")), _float(e.get("fetch_s")), _float(e.get("store_s"))
        el.fetched_bytes = sum(n for n in _sizes(e.get("in_bytes")) if n is not None)
        el.out_bytes = _int(e.get("out_bytes"))
        el.exec_s_512 = to_baseline(el.exec_s, el.memory_mb)


def _task_record(
    dag: Graph,
    i: int,
    start: tuple[float, str] | None,
    end: Mapping[str, Any] | None,
    workers: Mapping[str, WorkerRecord],
    header: RunRecord,
) -> TaskRecord:
    deps = list(dag.deps[i])
    wid = str(end.get("worker", "")) if end else (start[1] if start else "")
    w = workers.get(wid)
    memory = _int(end.get("memory_mb")) if end and end.get("memory_mb") is not None else 0
    memory = memory or (w.memory_mb if w else header.memory_mb)
    status = UNFINISHED if end is None else FINISHED if end.get("kind") == "task_finished" else FAILED
    exec_s = fetch_s = store_s = 0.0
    inputs = [InputRecord(u, 0, False, None) for u in deps]
    out_bytes = 0
    if status == FINISHED and end is not None:
        exec_s, fetch_s, store_s = _float(end.get("exec_s")), _float(end.get("fetch_s")), _float(end.get("store_s"))
        sizes = _sizes(end.get("in_bytes"))
        inputs = [
            InputRecord(u, 0, True, None) if n is None else InputRecord(u, n, False, fetch_s)
            for u, n in zip(deps, sizes, strict=False)
        ]
        out_bytes = _int(end.get("out_bytes"))
    finished_at = _float(end.get("t")) if end else 0.0
    started_at = start[0] if start else finished_at
    return TaskRecord(
        run_id=header.run_id,
        task=i,
        name=dag.name(i),
        identity=dag.identity(i),
        deps=deps,
        status=status,
        worker=wid,
        memory_mb=memory,
        attempt=_int(end.get("attempt")) if end else 0,
        started_at=started_at,
        finished_at=finished_at,
        exec_s=exec_s,
        fetch_s=fetch_s,
        store_s=store_s,
        inputs=inputs,
        out_bytes=out_bytes,
        worker_cold=w.cold if w else False,
        worker_latency_s=w.latency_s if w else 0.0,
        exec_s_512=to_baseline(exec_s, memory),
        fetch_s_512=to_baseline(fetch_s, memory),
        store_s_512=to_baseline(store_s, memory),
        error=str(end.get("error")) if end and status == FAILED else None,
        uploaded=_bool(end.get("uploaded", True)) if end else True,
    )


def summaries_of(tasks: Sequence[TaskRecord]) -> dict[SummaryKey, Summary]:
    """The running-summary increments of one run: its finished executions per (function, memory).

    A dynamic fan-out counts its elements (one call of the function each), not its gather.
    """
    out: dict[SummaryKey, Summary] = {}
    for t in tasks:
        if t.status != FINISHED:
            continue
        runs = [(e.memory_mb, e.exec_s, e.fetched_bytes, e.out_bytes) for e in t.elements if e.finished_at > 0]
        for memory_mb, exec_s, in_bytes, out_bytes in runs or [(t.memory_mb, t.exec_s, t.in_bytes, t.out_bytes)]:
            summary = out.get((t.identity, memory_mb))
            if summary is None:
                summary = out[(t.identity, memory_mb)] = Summary()
            summary.add(exec_s, in_bytes, out_bytes)
    return out
