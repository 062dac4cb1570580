"""The history accessor planners use: past executions, read once when it is built.

A planner asks many small questions ("how long does f take at 1024 MB on 3 MB
of input?") while it plans one DAG. :class:`History` answers all of them from
memory: building it costs two reads of the metadata store (summaries, then the
runs of the functions asked for, whose task records are built from their
traces: :func:`task_records`), and nothing after that touches the store. Build
a new one to see newer runs.

Predictions come from the running summaries, never from scanning executions:
a least-squares line of execution time on input bytes at that memory size, or,
when the function never ran at that size, the nearest size it did run at,
converted through the 512 MB normalization (:mod:`fanflow.metrics.normalize`).
"""

from __future__ import annotations

from collections.abc import Iterable

from fanflow.dag.graph import DAG
from fanflow.metrics.normalize import from_baseline, to_baseline
from fanflow.metrics.records import FINISHED, RunMetrics, TaskRecord
from fanflow.store.metadata import MetadataStore, StoredRun, Summary, SummaryKey, drain, open_metadata


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


class History:
    """Past executions and running summaries of some (or all) task functions."""

    def __init__(
        self, store: MetadataStore, identities: Iterable[str] | None = None, recent_runs: int | None = None
    ) -> None:
        """``recent_runs``: keep only the runs newer than the point where every summarized function and
        memory size has that many runs with a finished execution (a planner reads no older ones;
        building every kept run's records made planning grow with the history, ~50 ms per run of a
        2,047-task DAG)."""
        drain()  # runs this process finished are recorded in the background: see them
        wanted = None if identities is None else sorted(set(identities))
        self.summaries: dict[SummaryKey, Summary] = store.summaries(wanted)
        self._executions: dict[SummaryKey, list[TaskRecord]] = {}
        records = task_records(store, wanted) if recent_runs is None else self._recent(store, wanted, recent_runs)
        for record in records:
            self._executions.setdefault((record.identity, record.memory_mb), []).append(record)

    def _recent(self, store: MetadataStore, wanted: list[str] | None, runs: int) -> list[TaskRecord]:
        """Task records of the newest runs, read newest first until each summary key has ``runs`` of them."""
        seen: dict[SummaryKey, set[str]] = {key: set() for key in self.summaries}
        only = None if wanted is None else set(wanted)
        newest_first: list[list[TaskRecord]] = []
        for stored in reversed(store.task_runs(wanted)):
            if all(len(ids) >= runs for ids in seen.values()):
                break
            kept = [t for t in _tasks_of(stored) if only is None or t.identity in only]
            for t in kept:
                if t.status == FINISHED and (t.identity, t.memory_mb) in seen:
                    seen[(t.identity, t.memory_mb)].add(t.run_id)
            newest_first.append(kept)
        return [t for tasks in reversed(newest_first) for t in tasks]

    @classmethod
    def for_dag(cls, dag: DAG, metadata_url: str, recent_runs: int | None = None) -> History:
        """The history of the functions ``dag`` uses, from the store at ``metadata_url`` (see ``__init__``)."""
        return cls(open_metadata(metadata_url), (t.identity for t in dag.tasks), recent_runs)

    def executions(self, identity: str, memory_mb: int | None = None) -> list[TaskRecord]:
        """Kept executions of a function (all memory sizes when ``memory_mb`` is None), oldest first."""
        if memory_mb is not None:
            return list(self._executions.get((identity, memory_mb), ()))
        found = [r for (ident, _), records in self._executions.items() if ident == identity for r in records]
        return sorted(found, key=lambda r: r.started_at)

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
