"""Finished executions as columns: what planning reads of past runs, without a record per task.

A planner fits lines on thousands of past executions per function (ten runs of
an 8,191-task tree are 82,000 of them). Building a
:class:`~fanflow.metrics.records.TaskRecord` for each from the run's trace cost
~0.3 s of CPU per run, and fitting on lists of records as much again.
:class:`Executions` keeps only the fields the predictor uses, one numpy column
each, and :func:`executions_of` reads them from a trace's columns directly for
the common run (every task started and finished once, no dynamic fan-out, each
worker started once: what :func:`fanflow.metrics.digest.digest` also covers).
Any other run, and runs saved before traces, go through the records
(:meth:`Executions.of_records`), which give the same columns (tests compare
both).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fanflow.metrics.records import FINISHED, RunMetrics, TaskRecord
from fanflow.store.metadata.base import StoredRun
from fanflow.store.metadata.trace import EventGroup, IntLists, Strings, Trace, decode_trace

_KNOWN = frozenset({"worker_started", "worker_stopped", "task_started", "task_finished"})

COLUMNS: dict[str, type] = {
    "run": np.int32,
    "task": np.int32,
    "function": np.int32,
    "memory_mb": np.int32,
    "in_bytes": np.float64,
    "fetched_bytes": np.float64,
    "out_bytes": np.float64,
    "exec_s": np.float64,
    "fetch_s": np.float64,
    "store_s": np.float64,
    "started_at": np.float64,
    "finished_at": np.float64,
    "uploaded": np.bool_,
    "worker": np.int32,
    "worker_cold": np.bool_,
    "worker_latency_s": np.float64,
}
"""The per-execution columns and their types: 86 bytes a row (byte counts as float64: exact below 2**53,
and fits need floats)."""


@dataclass(frozen=True, slots=True)
class Executions:
    """Finished executions, one row each: a run's by task id, several runs' oldest run first.

    ``run`` indexes ``run_ids``, ``function`` indexes ``functions`` (identities)
    and ``worker`` indexes ``workers``, one entry per (run, worker id) pair
    (-1: the task named no worker). ``columns`` holds every column of
    :data:`COLUMNS`, each as long as the table.
    """

    run_ids: tuple[str, ...]
    functions: tuple[str, ...]
    workers: tuple[str, ...]
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["run"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def duration_s(self) -> np.ndarray:
        """Wall time from task start to finish, as :attr:`TaskRecord.duration_s` gives it."""
        return np.maximum(0.0, self.columns["finished_at"] - self.columns["started_at"])

    def take(self, rows: np.ndarray, columns: Iterable[str] | None = None) -> Executions:
        """The executions at ``rows`` (a boolean mask or indexes), in that order; the tables are shared.

        ``columns``: only those (the others are left out: reading one is then a KeyError)."""
        names = self.columns if columns is None else dict.fromkeys(columns)
        return Executions(self.run_ids, self.functions, self.workers, {k: self.columns[k][rows] for k in names})

    def of_function(self, identity: str) -> Executions:
        """The executions of one function."""
        if identity not in self.functions:
            return self.take(np.zeros(len(self), dtype=np.bool_))
        return self.take(self.columns["function"] == self.functions.index(identity))

    def run_ids_of_rows(self) -> list[str]:
        """Each row's run id."""
        return [self.run_ids[i] for i in self.columns["run"].tolist()]

    @classmethod
    def empty(cls) -> Executions:
        return cls((), (), (), {k: np.zeros(0, dtype=t) for k, t in COLUMNS.items()})

    @classmethod
    def of_records(cls, records: Iterable[TaskRecord]) -> Executions:
        """The finished ones of ``records``, in their order (runs and functions numbered as they come)."""
        done = [r for r in records if r.status == FINISHED]
        if not done:
            return cls.empty()
        run_ids: dict[str, int] = {}
        functions: dict[str, int] = {}
        for r in done:
            run_ids.setdefault(r.run_id, len(run_ids))
            functions.setdefault(r.identity, len(functions))
        # workers numbered by run, then by id, as executions_of numbers them: the order fits see them in
        pairs = sorted({(run_ids[r.run_id], r.worker) for r in done if r.worker})
        workers = {pair: i for i, pair in enumerate(pairs)}
        rows = [
            (
                run_ids[r.run_id],
                r.task,
                functions[r.identity],
                r.memory_mb,
                r.in_bytes,
                r.fetched_bytes,
                r.out_bytes,
                r.exec_s,
                r.fetch_s,
                r.store_s,
                r.started_at,
                r.finished_at,
                r.uploaded,
                workers[(run_ids[r.run_id], r.worker)] if r.worker else -1,
                r.worker_cold,
                r.worker_latency_s,
            )
            for r in done
        ]
        columns = {
            name: np.array(col, dtype=kind)
            for (name, kind), col in zip(COLUMNS.items(), zip(*rows, strict=True), strict=True)
        }
        return cls(tuple(run_ids), tuple(functions), tuple(w for _, w in pairs), columns)

    @classmethod
    def concat(cls, parts: Sequence[Executions]) -> Executions:
        """One table of ``parts``, in their order; runs, functions and workers are numbered again."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        run_ids: dict[str, int] = {}
        functions: dict[str, int] = {}
        workers: list[str] = []
        columns: dict[str, list[np.ndarray]] = {k: [] for k in COLUMNS}
        for part in parts:
            for name, col in part.columns.items():
                columns[name].append(col)
            runs = np.array([run_ids.setdefault(r, len(run_ids)) for r in part.run_ids], dtype=np.int64)
            funcs = np.array([functions.setdefault(f, len(functions)) for f in part.functions], dtype=np.int64)
            columns["run"][-1] = runs[part.columns["run"]]
            columns["function"][-1] = funcs[part.columns["function"]]
            # the parts' workers are (run, worker) pairs of different runs: number them one after the other
            worker = part.columns["worker"]
            columns["worker"][-1] = np.where(worker < 0, -1, worker + len(workers))
            workers.extend(part.workers)
        joined = {k: np.concatenate(v).astype(COLUMNS[k], copy=False) for k, v in columns.items()}
        return cls(tuple(run_ids), tuple(functions), tuple(workers), joined)


def executions_of(stored: StoredRun) -> Executions:
    """The finished executions of a stored run (from its trace's columns when it is a common run)."""
    if stored.trace is not None:
        decoded = decode_trace(stored.trace)
        found = _from_columns(decoded, str(stored.run["run_id"]))
        if found is not None:
            return found
        return Executions.of_records(RunMetrics.from_stored(stored).tasks)
    return Executions.of_records(TaskRecord.from_doc(d) for d in sorted(stored.tasks, key=lambda t: t["task"]))


def _only(groups: list[EventGroup]) -> EventGroup | None:
    return groups[0] if len(groups) == 1 else None


def _array(group: EventGroup, key: str, kinds: str) -> np.ndarray | None:
    col = group.columns.get(key)
    return col if isinstance(col, np.ndarray) and col.dtype.kind in kinds else None


def _worker_starts(group: EventGroup, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(string codes, cold flags, latencies) of a group of worker starts; None for values of other types.

    A group of fewer than 64 events keeps lists (the embedded default often runs a whole tree in one
    worker); a worker that finished no task may be missing from ``names`` and is left out.
    """
    ids, cold, latency = group.columns.get("worker"), group.columns.get("cold"), group.columns.get("latency_s")
    if isinstance(cold, list):
        cold = np.array(cold, dtype=np.bool_) if all(type(v) is bool for v in cold) else None
    if isinstance(latency, list):
        ok = all(type(v) in (int, float) for v in latency)
        latency = np.array(latency, dtype=np.float64) if ok else None
    if not isinstance(cold, np.ndarray) or cold.dtype.kind != "b":
        return None
    if not isinstance(latency, np.ndarray) or latency.dtype.kind not in "fiu":
        return None
    if isinstance(ids, Strings) and ids.values is names:
        return ids.codes, cold, latency
    if not isinstance(ids, list) or any(type(v) is not str for v in ids):
        return None
    code = {name: i for i, name in enumerate(names)}
    kept = np.array([name in code for name in ids], dtype=np.bool_)
    return np.array([code[name] for name in ids if name in code], dtype=np.int64), cold[kept], latency[kept]


def _from_columns(trace: Trace, run_id: str) -> Executions | None:
    """What :func:`fanflow.metrics.build.build_metrics` gives for a common run, from the columns; None otherwise.

    Common: every task finished once and started at most once, each worker
    started at most once, no dynamic fan-out, no other kind of event, every
    column numeric (a run of fewer than 64 events keeps lists: its records
    are cheap anyway).
    """
    dag, table = trace.dag, trace.table
    n = len(dag.task_of)
    if dag.maps or not table.kinds() <= _KNOWN or any("element" in g.columns for g in table.groups):
        return None
    ended = _only(table.of_kind("task_finished"))
    if ended is None or ended.size != n:
        return None
    task, memory, t_end = _array(ended, "task", "iu"), _array(ended, "memory_mb", "iu"), _array(ended, "t", "f")
    exec_s, out = _array(ended, "exec_s", "fiu"), _array(ended, "out_bytes", "iu")
    fetch_s, store_s = _array(ended, "fetch_s", "fiu"), _array(ended, "store_s", "fiu")
    uploaded = ended.columns.get("uploaded", True)
    sizes, worker = ended.columns.get("in_bytes"), ended.columns.get("worker")
    if task is None or memory is None or t_end is None or exec_s is None or out is None or fetch_s is None:
        return None
    if store_s is None or not isinstance(sizes, IntLists) or not isinstance(worker, Strings):
        return None
    if not (uploaded is True or (isinstance(uploaded, np.ndarray) and uploaded.dtype.kind == "b")):
        return None
    if n == 0 or task.min() < 0 or task.max() >= n or (np.bincount(task, minlength=n) != 1).any():
        return None
    if not (memory > 0).all() or (sizes.lengths != dag.dep_counts[task]).any():
        return None
    order = np.argsort(task, kind="stable")  # rows by task id, as the records come

    # started_at: the task's start, or its finish when it never logged one
    started_at = t_end.astype(np.float64)
    for group in table.of_kind("task_started"):
        began, at = _array(group, "task", "iu"), _array(group, "t", "f")
        if began is None or at is None:
            return None
        if began.size and (began.min() < 0 or began.max() >= n):
            return None
        row_of = np.empty(n, dtype=np.int64)
        row_of[task] = np.arange(n)
        started_at[row_of[began]] = at
    starts = np.concatenate([_array(g, "task", "iu") for g in table.of_kind("task_started")] or [np.zeros(0, np.int64)])
    if starts.size and (np.bincount(starts, minlength=n) > 1).any():
        return None  # a task started twice: the records keep the earliest start

    # workers: cold and latency from their (single) start event, looked up by string code (the event
    # table's string columns share one table of strings)
    names = worker.values
    cold_by = np.zeros(len(names), dtype=np.bool_)
    latency_by = np.zeros(len(names), dtype=np.float64)
    starts_by = np.zeros(len(names), dtype=np.int64)
    for group in table.of_kind("worker_started"):
        found = _worker_starts(group, names)
        if found is None:
            return None
        codes, cold, latency = found
        cold_by[codes] = cold
        latency_by[codes] = latency
        starts_by += np.bincount(codes, minlength=len(names))
    if (starts_by > 1).any():
        return None  # a worker started twice: the records keep its last start
    used, local_code = np.unique(worker.codes, return_inverse=True)
    used_names = list(map(names.__getitem__, used.tolist()))
    by_name = sorted(range(len(used_names)), key=used_names.__getitem__)  # numbered by name, as of_records does
    kept = [used_names[i] for i in by_name if used_names[i]]
    number = np.full(len(used_names), -1, dtype=np.int64)
    number[[i for i in by_name if used_names[i]]] = np.arange(len(kept))
    code = number[local_code]
    cold_col = cold_by[worker.codes]
    latency_col = latency_by[worker.codes]

    # input bytes: fetched sizes, and for a local input its upstream's output size
    counts = dag.dep_counts[task]
    row = np.repeat(np.arange(n), counts)
    first = np.concatenate(([0], np.cumsum(dag.dep_counts)[:-1]))[task]
    slot = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    upstream = dag.deps[first[row] + slot]
    out_of = np.zeros(n, dtype=np.float64)
    out_of[task] = out
    fetched_item = np.where(sizes.missing, 0.0, sizes.items.astype(np.float64))
    slot_bytes = np.where(sizes.missing, out_of[upstream], fetched_item)
    in_bytes = np.bincount(row, weights=slot_bytes, minlength=n)
    fetched = np.bincount(row, weights=fetched_item, minlength=n)

    # function identities: two function entries may share one identity
    index: dict[str, int] = {}
    fn_code = np.array([index.setdefault(identity, len(index)) for _, identity in dag.functions], dtype=np.int64)
    columns = {
        "run": np.zeros(n, dtype=np.int64),
        "task": task.astype(np.int64),
        "function": fn_code[dag.task_of[task]],
        "memory_mb": memory.astype(np.int64),
        "in_bytes": in_bytes,
        "fetched_bytes": fetched,
        "out_bytes": out.astype(np.float64),
        "exec_s": exec_s.astype(np.float64),
        "fetch_s": fetch_s.astype(np.float64),
        "store_s": store_s.astype(np.float64),
        "started_at": started_at,
        "finished_at": t_end.astype(np.float64),
        "uploaded": np.ones(n, dtype=np.bool_) if uploaded is True else uploaded,
        "worker": code,
        "worker_cold": cold_col,
        "worker_latency_s": latency_col,
    }
    typed = {k: v[order].astype(COLUMNS[k], copy=False) for k, v in columns.items()}
    return Executions((run_id,), tuple(index), tuple(kept), typed)
