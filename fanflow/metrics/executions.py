"""Finished executions as columns: what planning reads of past runs, without a record per task.

A planner fits lines on thousands of past executions per function (ten runs of
an 8,191-task tree are 82,000 of them). Building a
:class:`~fanflow.metrics.records.TaskRecord` for each from the run's trace cost
~0.3 s of CPU per run, and fitting on lists of records as much again.
:class:`Executions` keeps only the fields the predictor uses, one numpy column
each, and :func:`executions_of` reads them from a trace's columns directly for
the common run (every task finished once and started at most once, each worker
started at most once, no dynamic fan-out), whether its events of one kind fall
into one group or several (on a pool, the finishes a worker held back carry a
field the others lack).
Any other run, and runs saved before traces, go through the records
(:meth:`Executions.of_records`), which give the same columns (tests compare
both).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
    :data:`COLUMNS`, each as long as the table. ``caps`` holds each run's
    worker cap, in the order of ``run_ids``
    (:attr:`~fanflow.metrics.records.RunRecord.max_workers`: 0 for none, None
    where the run did not record it).
    """

    run_ids: tuple[str, ...]
    functions: tuple[str, ...]
    workers: tuple[str, ...]
    columns: dict[str, np.ndarray]
    caps: tuple[int | None, ...]

    def __len__(self) -> int:
        return len(self.columns["run"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def duration_s(self) -> np.ndarray:
        """Wall time from task start to finish, as :attr:`TaskRecord.duration_s` gives it."""
        return np.maximum(0.0, self.columns["finished_at"] - self.columns["started_at"])

    def take(self, rows: np.ndarray | slice, columns: Iterable[str] | None = None) -> Executions:
        """The executions at ``rows`` (a boolean mask, indexes, or a slice: then the columns are views of these),
        in that order; the tables are shared.

        ``columns``: only those (the others are left out: reading one is then a KeyError)."""
        names = self.columns if columns is None else dict.fromkeys(columns)
        columns = {k: self.columns[k][rows] for k in names}
        return Executions(self.run_ids, self.functions, self.workers, columns, self.caps)

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
        return cls((), (), (), {k: np.zeros(0, dtype=t) for k, t in COLUMNS.items()}, ())

    @classmethod
    def of_records(cls, records: Iterable[TaskRecord], caps: Mapping[str, int | None] | None = None) -> Executions:
        """The finished ones of ``records``, in their order (runs and functions numbered as they come).

        ``caps``: worker caps by run id (a run not in it did not record one)."""
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
        kept = tuple(run_ids)
        return cls(kept, tuple(functions), tuple(w for _, w in pairs), columns, tuple(map((caps or {}).get, kept)))

    @classmethod
    def concat(cls, parts: Sequence[Executions]) -> Executions:
        """One table of ``parts``, in their order; runs, functions and workers are numbered again."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        run_ids: dict[str, int] = {}
        caps: dict[str, int | None] = {}  # as run_ids numbers the runs
        functions: dict[str, int] = {}
        workers: list[str] = []
        columns: dict[str, list[np.ndarray]] = {k: [] for k in COLUMNS}
        for part in parts:
            for run_id, cap in zip(part.run_ids, part.caps, strict=True):
                caps.setdefault(run_id, cap)
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
        return cls(tuple(run_ids), tuple(functions), tuple(workers), joined, tuple(caps.values()))


def executions_of(stored: StoredRun) -> Executions:
    """The finished executions of a stored run (from its trace's columns when it is a common run)."""
    run_id, cap = str(stored.run["run_id"]), stored.run.get("max_workers")  # older runs did not record a cap
    if stored.trace is not None:
        decoded = decode_trace(stored.trace)
        found = _from_columns(decoded, run_id, cap)
        if found is not None:
            return found
        return Executions.of_records(RunMetrics.from_stored(stored).tasks, {run_id: cap})
    tasks = (TaskRecord.from_doc(d) for d in sorted(stored.tasks, key=lambda t: t["task"]))
    return Executions.of_records(tasks, {run_id: cap})


class _Names:
    """Worker ids by code: the trace's shared table of strings, then the ids of list columns not in it."""

    def __init__(self, shared: list[str]) -> None:
        self.shared = shared
        self.values = shared
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, code: int) -> str:
        return self.values[code]

    def code(self, name: str) -> int:
        if self._index is None:
            self._index = {v: i for i, v in enumerate(self.values)}
        found = self._index.get(name)
        if found is None:
            if self.values is self.shared:
                self.values = list(self.shared)  # the trace's own table stays as it is
            found = self._index[name] = len(self.values)
            self.values.append(name)
        return found


class _Gather:
    """Columns of several event groups of one kind, end to end; None for a value of another type.

    Events of one kind fall into several groups when their fields differ (on a pool, the finishes a
    worker held back carry ``held``), and a group of fewer than 64 events keeps lists. String codes
    refer to ``names``, the trace's shared table of strings, which strings of list columns extend.
    """

    def __init__(self, groups: list[EventGroup], names: _Names) -> None:
        self.groups = groups
        self.names = names

    def numbers(self, key: str, kinds: str, default: float | None = None) -> np.ndarray | None:
        """A numeric column (``kinds``: numpy dtype kinds), ``default`` where a group lacks the field."""
        parts = []
        for group in self.groups:
            col = group.columns.get(key)
            if col is None:
                if default is None:
                    return None
                parts.append(np.full(group.size, default))
            elif isinstance(col, np.ndarray) and col.dtype.kind in kinds:
                parts.append(col)
            elif isinstance(col, list) and all(type(v) in _PYTHON[kinds] for v in col):
                parts.append(
                    np.array(col, dtype=np.bool_ if kinds == "b" else np.float64 if "f" in kinds else np.int64)
                )
            else:
                return None
        return np.concatenate(parts) if parts else np.zeros(0)

    def codes(self, key: str) -> np.ndarray | None:
        """A string column as codes into ``names``."""
        parts = []
        for group in self.groups:
            col = group.columns.get(key)
            if isinstance(col, Strings) and col.values is self.names.shared:
                parts.append(col.codes)
            elif isinstance(col, Strings):  # a table of its own (small traces): its strings, then its codes
                parts.append(np.array([self.names.code(v) for v in col.values], dtype=np.int64)[col.codes])
            elif isinstance(col, list) and all(type(v) is str for v in col):
                parts.append(np.array([self.names.code(v) for v in col], dtype=np.int64))
            else:
                return None
        return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, dtype=np.int64)

    def sizes(self, key: str) -> IntLists | None:
        """A column of lists of ints or None (input sizes), end to end."""
        parts = []
        for group in self.groups:
            col = group.columns.get(key)
            if isinstance(col, list):
                col = IntLists.of(col) if col else IntLists(*(np.zeros(0, dtype=t) for t in (np.int64, np.int64, bool)))
            if not isinstance(col, IntLists):
                return None
            parts.append(col)
        if not parts:
            return None
        return IntLists(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("lengths", "items", "missing")))


_PYTHON: dict[str, tuple[type, ...]] = {"b": (bool,), "iu": (int,), "fiu": (int, float), "f": (float,)}
"""Python types a list column may hold for each kind of numpy column."""
_DTYPES: dict[str, type] = {"b": np.bool_, "iu": np.int64, "fiu": np.float64, "f": np.float64}


def _from_columns(trace: Trace, run_id: str, cap: int | None) -> Executions | None:
    """What :func:`fanflow.metrics.build.build_metrics` gives for a common run, from the columns; None otherwise.

    Common: every task finished once and started at most once, each worker
    started at most once, no dynamic fan-out, no other kind of event, and
    values of the types workers write (in numpy columns or, for groups of
    fewer than 64 events, lists).
    """
    dag, table = trace.dag, trace.table
    n = len(dag.task_of)
    if dag.maps or not table.kinds() <= _KNOWN or any("element" in g.columns for g in table.groups):
        return None
    ends = table.of_kind("task_finished")
    if sum(g.size for g in ends) != n or n == 0:
        return None
    shared = [c.values for g in ends if isinstance(c := g.columns.get("worker"), Strings)]
    names = _Names(shared[0] if shared else [])
    ended = _Gather(ends, names)
    task, memory, t_end = ended.numbers("task", "iu"), ended.numbers("memory_mb", "iu"), ended.numbers("t", "fiu")
    exec_s, out = ended.numbers("exec_s", "fiu", 0.0), ended.numbers("out_bytes", "iu", 0)
    fetch_s, store_s = ended.numbers("fetch_s", "fiu", 0.0), ended.numbers("store_s", "fiu", 0.0)
    uploaded, sizes, worker = ended.numbers("uploaded", "b", True), ended.sizes("in_bytes"), ended.codes("worker")
    if task is None or memory is None or t_end is None or exec_s is None or out is None or fetch_s is None:
        return None
    if store_s is None or uploaded is None or sizes is None or worker is None:
        return None
    if task.min() < 0 or task.max() >= n or (np.bincount(task, minlength=n) != 1).any():
        return None
    if not (memory > 0).all() or (sizes.lengths != dag.dep_counts[task]).any():
        return None
    order = np.argsort(task, kind="stable")  # rows by task id, as the records come
    finished_at = t_end[order].astype(np.float64)

    # started_at: the task's start, or its finish when it never logged one
    started = _Gather(table.of_kind("task_started"), names)
    began, at = started.numbers("task", "iu"), started.numbers("t", "fiu")
    if began is None or at is None or (began.size and (began.min() < 0 or began.max() >= n)):
        return None
    if began.size and (np.bincount(began, minlength=n) > 1).any():
        return None  # a task started twice: the records keep the earliest start
    started_at = finished_at.copy()
    started_at[began] = at

    # workers: cold and latency from their (single) start event, by string code
    booted = _Gather(table.of_kind("worker_started"), names)
    who, cold, latency = booted.codes("worker"), booted.numbers("cold", "b"), booted.numbers("latency_s", "fiu")
    if who is None or cold is None or latency is None:
        return None
    if who.size and (np.bincount(who) > 1).any():
        return None  # a worker started twice: the records keep its last start
    cold_by = np.zeros(len(names), dtype=np.bool_)
    latency_by = np.zeros(len(names), dtype=np.float64)
    cold_by[who] = cold
    latency_by[who] = latency
    # numbered by name, as of_records does: the codes present sorted by their names (a mark per code, not a
    # sort of the rows; a run of the embedded default names 50,000 workers), the empty name (none) is -1
    present = np.zeros(len(names), dtype=np.bool_)
    present[worker] = True
    values = names.values
    by_name = sorted(np.flatnonzero(present).tolist(), key=values.__getitem__)
    if by_name and not values[by_name[0]]:  # the empty name sorts first
        del by_name[0]
    kept = [values[c] for c in by_name]
    number = np.full(len(names), -1, dtype=np.int64)
    number[np.array(by_name, dtype=np.int64)] = np.arange(len(by_name))
    worker = worker[order]

    # input bytes: fetched sizes, and for a local input its upstream's output size; summed per task id
    counts = dag.dep_counts[task]
    row = np.repeat(task, counts)
    first = np.concatenate(([0], np.cumsum(dag.dep_counts)[:-1]))
    slot = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    upstream = dag.deps[first[row] + slot]
    out_of = np.zeros(n, dtype=np.float64)
    out_of[task] = out
    fetched_item = np.where(sizes.missing, 0.0, sizes.items.astype(np.float64))
    slot_bytes = np.where(sizes.missing, out_of[upstream], fetched_item)

    # function identities: two function entries may share one identity
    index: dict[str, int] = {}
    fn_code = np.array([index.setdefault(identity, len(index)) for _, identity in dag.functions], dtype=np.int32)
    columns = {
        "run": np.zeros(n, dtype=np.int32),
        "task": np.arange(n, dtype=np.int32),  # every task once: the rows by task id are the task ids
        "function": fn_code[dag.task_of],
        "memory_mb": memory[order],
        "in_bytes": np.bincount(row, weights=slot_bytes, minlength=n),
        "fetched_bytes": np.bincount(row, weights=fetched_item, minlength=n),
        "out_bytes": out_of,
        "exec_s": exec_s[order],
        "fetch_s": fetch_s[order],
        "store_s": store_s[order],
        "started_at": started_at,
        "finished_at": finished_at,
        "uploaded": uploaded[order],
        "worker": number[worker],
        "worker_cold": cold_by[worker],
        "worker_latency_s": latency_by[worker],
    }
    typed = {k: v.astype(COLUMNS[k], copy=False) for k, v in columns.items()}
    return Executions((run_id,), tuple(index), tuple(kept), typed, (cap,))
