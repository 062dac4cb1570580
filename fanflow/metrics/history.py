"""The history accessor planners use: past executions, read once when it is built.

A planner asks many small questions ("how long does f take at 1024 MB on 3 MB
of input?") while it plans one DAG. :class:`History` answers all of them from
memory: building it reads the summaries, lists the runs of the functions asked
for newest first, and loads runs from that list until it has enough of them
(``recent_runs``); nothing after that touches the store. Their finished
executions are kept as columns (:class:`~fanflow.metrics.executions.Executions`,
read from the trace's columns, no record per task) and stay decoded for the
next plan in this process (:func:`run_executions`). Build a new one to see
newer runs. :func:`task_records` reads whole records, for the dashboard.

Predictions come from the running summaries, never from scanning executions:
a least-squares line of execution time on input bytes at that memory size, or,
when the function never ran at that size, the nearest size it did run at,
converted through the 512 MB normalization (:mod:`fanflow.metrics.normalize`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from fanflow.dag.graph import DAG
from fanflow.metrics.executions import Executions, executions_of
from fanflow.metrics.normalize import from_baseline, to_baseline
from fanflow.metrics.records import RunMetrics, TaskRecord
from fanflow.store.metadata import (
    MetadataStore,
    RunNotFoundError,
    StoredRun,
    Summary,
    SummaryKey,
    drain,
    open_metadata,
)


def task_records(
    store: MetadataStore, identities: Iterable[str] | None = None, memory_mb: int | None = None
) -> list[TaskRecord]:
    """Task records of the kept runs, oldest run first (then by task id), filtered by function and memory."""
    wanted = None if identities is None else set(identities)
    out: list[TaskRecord] = []
    for stored in store.task_runs(wanted):
        tasks = _tasks_of(stored)
        out.extend(
            t
            for t in tasks
            if (wanted is None or t.identity in wanted) and (memory_mb is None or t.memory_mb == memory_mb)
        )
    return out


def _tasks_of(stored: StoredRun) -> list[TaskRecord]:
    if stored.trace is not None:
        return RunMetrics.from_stored(stored).tasks
    return [TaskRecord.from_doc(d) for d in stored.tasks]


CACHE_ROWS = 2_000_000
"""Executions kept decoded across plans in this process (86 bytes each, so at most ~170 MB), the runs read
most recently: ten runs of a 100k-task DAG and more. A cache smaller than what one plan reads would decode
every run again on every plan."""

_cache: OrderedDict[tuple[str, str], Executions] = OrderedDict()
"""``(store URL, run id)`` -> the run's executions, least recently used first. A run is saved once and never
changes, so an entry never goes stale; a new run is simply not in it yet, and a run retention deleted is
no longer asked for and ages out."""
_cache_rows = 0
_cache_lock = threading.Lock()


def run_executions(store: MetadataStore, run_id: str) -> Executions | None:
    """The finished executions of one kept run (cached; see :data:`CACHE_ROWS`), or None when it is gone."""
    global _cache_rows
    key = (store.url, run_id)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    try:
        found = executions_of(store.load_run(run_id))
    except RunNotFoundError:  # retention deleted it since it was listed
        return None
    with _cache_lock:
        if key not in _cache:
            _cache[key] = found
            _cache_rows += len(found)
            while _cache_rows > CACHE_ROWS and len(_cache) > 1:
                _cache_rows -= len(_cache.popitem(last=False)[1])
    return found


ENOUGH_EXECUTIONS = 50_000
"""Executions of one function at one memory size that, with :data:`ENOUGH_RUNS` runs, a planner's
history stops at before ``recent_runs`` runs: a DAG that runs a function 100,000 times a run fits its
lines from three runs as well as from ten, and reading ten such runs was most of a first plan's time
(1.1 s of 1.5 s for an 8,191-task tree after ten runs of a 100k-task one). Small DAGs never get there."""

ENOUGH_RUNS = 3
"""Runs a function and size needs, however many executions they hold, before :data:`ENOUGH_EXECUTIONS`
ends the read: the run-to-run spread of one run is not a spread."""


def _pair_counts(found: Executions) -> dict[tuple[int, int], int]:
    """Executions per (function code, memory size) of one run: a count per memory size of each function,
    not a sort of the run's rows (100,000 for a large DAG, one or a few functions and sizes)."""
    function, memory = found["function"], found["memory_mb"]
    out: dict[tuple[int, int], int] = {}
    for code in np.flatnonzero(np.bincount(function)).tolist() if len(function) else ():
        sizes = memory if len(found.functions) == 1 else memory[function == code]
        if len(sizes) and sizes.min() >= 0 and sizes.max() < 1 << 20:
            counts = np.bincount(sizes)
            out.update(((code, m), int(counts[m])) for m in np.flatnonzero(counts).tolist())
        else:
            values, counts = np.unique(sizes, return_counts=True)
            out.update(((code, int(m)), int(c)) for m, c in zip(values.tolist(), counts.tolist(), strict=True))
    return out


TABLES = 2
"""Tables of the runs a History read (:attr:`History.table`) kept for the next History reading the same runs
(re-planning a DAG with no new run): joining them again copied every execution read (26 MB for three runs
of a 100k-task DAG) into fresh memory on every plan. A table is a copy of the decoded runs it joins, so this
keeps at most two plans' reads besides :data:`CACHE_ROWS`."""

_tables: OrderedDict[tuple[object, ...], Executions] = OrderedDict()
"""``(store URL, functions asked for, the runs read)`` -> their table, least recently used first."""


def clear_cache() -> None:
    """Forget every decoded run and joined table (tests and benchmarks measure a cold read with it)."""
    global _cache_rows
    with _cache_lock:
        _cache.clear()
        _tables.clear()
        _cache_rows = 0


def _joined(key: tuple[object, ...], newest_first: list[Executions]) -> Executions:
    """The table of ``newest_first``, oldest run first (kept; see :data:`TABLES`)."""
    with _cache_lock:
        found = _tables.get(key)
        if found is not None:
            _tables.move_to_end(key)
            return found
    found = Executions.concat(newest_first[::-1])
    with _cache_lock:
        _tables[key] = found
        while len(_tables) > TABLES:
            _tables.popitem(last=False)
    return found


class History:
    """Past executions and running summaries of some (or all) task functions."""

    def __init__(
        self, store: MetadataStore, identities: Iterable[str] | None = None, recent_runs: int | None = None
    ) -> None:
        """``recent_runs``: read runs newest first and stop once every summarized function and memory size
        has that many runs with a finished execution, or :data:`ENOUGH_RUNS` runs holding
        :data:`ENOUGH_EXECUTIONS` executions, or has had all its executions read (as many as its summary
        counts: no older run has one), since a planner reads no older ones. The store lists the runs'
        ids (:meth:`MetadataStore.task_run_ids`) and only the runs read are loaded; their executions are
        decoded once per process (:func:`run_executions`)."""
        drain()  # runs this process finished are recorded in the background: see them
        wanted = None if identities is None else sorted(set(identities))
        only = set(wanted or ())
        self.summaries: dict[SummaryKey, Summary] = store.summaries(wanted)
        seen: dict[SummaryKey, set[int]] = {key: set() for key in self.summaries}
        counted = dict.fromkeys(self.summaries, 0)  # executions read per key
        open_keys = set(self.summaries)  # keys that may still find executions they need in older runs
        newest_first: list[Executions] = []
        for run_id in store.task_run_ids(wanted):
            if recent_runs is not None and not open_keys:
                break
            found = run_executions(store, run_id)
            if found is None:
                continue
            if wanted is not None:
                codes = [i for i, f in enumerate(found.functions) if f in only]
                if len(codes) < len(found.functions):  # a run of the DAG's own functions is kept whole, uncopied
                    found = found.take(np.isin(found["function"], codes))
            for (code, memory_mb), count in _pair_counts(found).items():
                key = (found.functions[code], memory_mb)
                if key in seen:
                    seen[key].add(len(newest_first))
                    counted[key] += count
                    runs = len(seen[key])
                    done = recent_runs is not None and (
                        runs >= recent_runs or (runs >= ENOUGH_RUNS and counted[key] >= ENOUGH_EXECUTIONS)
                    )
                    if done or counted[key] >= self.summaries[key].count:
                        open_keys.discard(key)
            newest_first.append(found)
        read = tuple(run_id for found in newest_first for run_id in found.run_ids)
        self.table = _joined((store.url, None if wanted is None else tuple(wanted), read), newest_first)
        """Every execution read, oldest run first (shared with the next History that reads the same runs:
        read only)."""
        self.url: str | None = store.url
        """The store read: with the run ids, what names the executions (None: not read from a store)."""

    @classmethod
    def for_dag(cls, dag: DAG, metadata_url: str, recent_runs: int | None = None) -> History:
        """The history of the functions ``dag`` uses, from the store at ``metadata_url`` (see ``__init__``)."""
        return cls(open_metadata(metadata_url), (t.identity for t in dag.tasks), recent_runs)

    def rows(self, identity: str, memory_mb: int | None = None) -> np.ndarray:
        """Indexes in :attr:`table` of a function's executions (at one memory size, unless None), oldest first."""
        table = self.table
        if identity not in table.functions:
            return np.zeros(0, dtype=np.int64)
        mask = table["function"] == table.functions.index(identity)
        if memory_mb is not None:
            mask &= table["memory_mb"] == memory_mb
        return np.flatnonzero(mask)

    def executions(self, identity: str, memory_mb: int | None = None) -> Executions:
        """Kept executions of a function (all memory sizes when ``memory_mb`` is None), oldest run first."""
        return self.table.take(self.rows(identity, memory_mb))

    def memory_sizes(self, identity: str) -> list[int]:
        """Memory sizes a function has a summary for, ascending."""
        return sorted(m for ident, m in self.summaries if ident == identity)

    def summary(self, identity: str, memory_mb: int) -> Summary | None:
        return self.summaries.get((identity, memory_mb))

    def predict_exec_s(self, identity: str, memory_mb: int, in_bytes: float) -> float | None:
        """Expected execution time, or None for a function never seen."""
        summary = self.summaries.get((identity, memory_mb))
        if summary is not None and summary.count:
            return summary.predict_exec_s(in_bytes)
        sizes = self.memory_sizes(identity)
        if not sizes:
            return None
        nearest = min(sizes, key=lambda m: abs(m - memory_mb))
        at_nearest = self.summaries[(identity, nearest)].predict_exec_s(in_bytes)
        return from_baseline(to_baseline(at_nearest, nearest), memory_mb)

    def predict_out_bytes(self, identity: str, in_bytes: float) -> float | None:
        """Expected output size (it does not depend on memory), or None for a function never seen."""
        merged = Summary()
        for (ident, _), summary in self.summaries.items():
            if ident == identity:
                merged = merged.merge(summary)
        return merged.predict_out_bytes(in_bytes) if merged.count else None
