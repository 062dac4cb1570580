"""Typed metric records of a run: per task, per worker, per run, and the whole :class:`RunMetrics`.

Records are plain dataclasses built from a run's events and DAG
(:mod:`fanflow.metrics.build`). A metadata store keeps the run's trace, not
the records: reading a run back (:meth:`RunMetrics.from_stored`) builds them
from it, as the recording client would have. Runs saved by older versions kept
JSON documents of the records, which are read as they are.

Two round trips per task carry all its I/O, and the records say so rather than
invent a split: ``fetch_s`` is the one round trip that fetched every input not
in the worker's cache (each fetched input carries that same time as its
``download_s``), and ``store_s`` is the one round trip that uploaded the output
*and* notified the dependents. Every time has a ``*_512`` twin, normalized to a
512 MB worker (:mod:`fanflow.metrics.normalize`).
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field, fields
from typing import Any

from fanflow.store.metadata.base import StoredRun

FINISHED = "finished"
FAILED = "failed"
UNFINISHED = "unfinished"
"""Task states: it finished, it failed for good, or the run ended before it finished."""


@dataclass(slots=True)
class InputRecord:
    """One input of a task, in dependency order."""

    task: int
    """The upstream task id."""
    bytes: int
    """Its size: as fetched, or, for a local input, the upstream's output size."""
    local: bool
    """True when it came from the worker's own cache (no transfer)."""
    download_s: float | None
    """The fetch round trip this input shared with the task's other fetched inputs; None when local."""


@dataclass(slots=True)
class ElementRecord:
    """One element of a dynamic fan-out (``fanflow.map``): the task's function on one item."""

    index: int
    worker: str
    memory_mb: int
    attempt: int
    started_at: float
    finished_at: float
    exec_s: float
    fetch_s: float
    """One round trip for the item and any other non-local input (0 when all were local)."""
    store_s: float
    """One round trip storing the element's result and joining the map's fan-in."""
    fetched_bytes: int
    """Bytes of the inputs fetched; the size of an item handed over in memory is not known."""
    out_bytes: int
    exec_s_512: float


@dataclass(slots=True)
class TaskRecord:
    """One task of one run, as it ran (the last attempt's figures)."""

    run_id: str
    task: int
    name: str
    identity: str
    """The task function's stable identity: history is keyed by it and ``memory_mb``."""
    deps: list[int]
    status: str
    worker: str
    memory_mb: int
    attempt: int
    started_at: float
    finished_at: float
    exec_s: float
    fetch_s: float
    """One round trip fetching every non-local input (0 when all were local or there were none)."""
    store_s: float
    """One round trip uploading the output and notifying the dependents together."""
    inputs: list[InputRecord]
    out_bytes: int
    worker_cold: bool
    worker_latency_s: float
    """Invocation latency of the worker that ran the task: from invoke to worker start."""
    exec_s_512: float
    fetch_s_512: float
    store_s_512: float
    error: str | None = None
    elements: list[ElementRecord] = field(default_factory=list)
    """For a dynamic fan-out: its elements, by index; the task's own figures are the gather's."""
    uploaded: bool = True
    """False when the output stayed in the worker that made it (every reader ran there)."""

    @property
    def duration_s(self) -> float:
        """Wall time from task start (before fetching) to finish (after notifying)."""
        return max(0.0, self.finished_at - self.started_at)

    @property
    def in_bytes(self) -> int:
        """Total input bytes, local and fetched."""
        return sum(i.bytes for i in self.inputs)

    @property
    def fetched_bytes(self) -> int:
        return sum(i.bytes for i in self.inputs if not i.local)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> TaskRecord:
        values = dict(doc)
        values["inputs"] = [InputRecord(**i) for i in doc["inputs"]]
        values["elements"] = [ElementRecord(**e) for e in doc.get("elements", ())]
        return cls(**values)


@dataclass(slots=True)
class WorkerRecord:
    """One worker invocation."""

    worker: str
    started_at: float
    stopped_at: float
    cold: bool
    memory_mb: int
    latency_s: float
    tasks: list[int]
    """Task ids in the order this worker ran (or failed) them."""

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> WorkerRecord:
        return cls(**doc)


@dataclass(slots=True)
class RunRecord:
    """One run. Counts and totals are derived from its tasks when the record is built."""

    run_id: str
    signature: str
    sink: str
    status: str
    """``succeeded``, ``failed``, ``cancelled`` or ``timeout``."""
    planner: str
    platform: str
    metrics_upload: str
    memory_mb: int
    """The run's default worker memory."""
    submitted_at: float
    """Unix time the client invoked the roots."""
    finished_at: float
    """Unix time the client saw the last sink finish (or the run end in error)."""
    makespan_s: float
    """``finished_at - submitted_at``: what the user waited for, past building and planning."""
    dag_build_s: float = 0.0
    planning_s: float = 0.0
    """Time the planner took."""
    encoded_size: int = 0
    """Bytes of the encoded DAG shipped to workers; 0 when it was passed in-process."""
    predicted_makespan_s: float | None = None
    """The planner's prediction, for comparison with ``makespan_s``; None without one."""
    predicted_p10_s: float | None = None
    predicted_p90_s: float | None = None
    """The prediction's interval (10th to 90th percentile); None without one."""
    plan_kind: str = ""
    """The plan's kind and memory sizes, ``uniform 1769`` or ``mixed 512/3008`` (older runs: ``uniform`` or
    ``mixed``; '' without a plan or when planned from defaults): the planner learns per plan."""
    calibration: float = 1.0
    """Factor from past runs the prediction includes (:mod:`fanflow.planning.calibrate`)."""
    error: str | None = None
    max_workers: int | None = None
    """The worker cap the run's platform ran it under: at most this many workers at once, the others
    queued for a slot, 0 for no cap (:meth:`fanflow.platforms.base.CapsWorkers.worker_cap`). None: not
    known (a shared pool, or a run saved before runs recorded it), which a planner replays at the cap it
    plans for."""
    tasks: int = 0
    tasks_finished: int = 0
    workers: int = 0
    cold_starts: int = 0
    bytes_fetched: int = 0
    bytes_local: int = 0
    bytes_out: int = 0
    record_s: float = 0.0
    """Time this process spent collecting events and building these records (the caller's and the history
    writer's)."""
    workflow: str = ""
    """What the user ran: the script's file name (``fanflow run``), else the DAG's first task's function."""

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> RunRecord:
        return cls(**doc)

    def to_doc(self) -> dict[str, Any]:
        """The run document a metadata store keeps."""
        return _doc(self)


@dataclass(slots=True)
class RunMetrics:
    """Everything recorded of one run; ``tasks`` is indexed by task id."""

    run: RunRecord
    tasks: list[TaskRecord]
    workers: list[WorkerRecord]
    events: list[dict[str, Any]] = field(default_factory=list)

    def critical_path(self) -> list[int]:
        """The chain that decided the end of the run, root first.

        Start at the task that ended the run (the first failure of a failed run,
        else the task that finished last) and walk back, at each step, to the
        upstream that finished last: the input the task was waiting for.
        """
        done = [t for t in self.tasks if t.status != UNFINISHED]
        if not done:
            return []
        tasks = self.tasks
        failed = [t for t in done if t.status == FAILED]
        current = min(failed, key=lambda t: t.finished_at) if failed else max(done, key=lambda t: t.finished_at)
        path = [current.task]
        while current.deps:
            current = max((tasks[d] for d in current.deps), key=lambda t: t.finished_at)
            path.append(current.task)
        path.reverse()
        return path

    def slowest(self, n: int = 10) -> list[TaskRecord]:
        """The ``n`` tasks that took longest, start to finish."""
        ran = [t for t in self.tasks if t.status != UNFINISHED]
        return sorted(ran, key=lambda t: t.duration_s, reverse=True)[:n]

    def to_docs(self) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """The run, task and worker documents a metadata store keeps.

        Written out field by field: ``dataclasses.asdict`` deep-copies every
        value and cost more than the whole run for DAGs of thousands of tasks.
        """
        return _doc(self.run), [_task_doc(t) for t in self.tasks], [_doc(w) for w in self.workers]

    def to_json(self, indent: int | None = 2) -> str:
        """Everything, events included, as one JSON document."""
        run, tasks, workers = self.to_docs()
        return json.dumps({"run": run, "tasks": tasks, "workers": workers, "events": self.events}, indent=indent)

    @classmethod
    def from_stored(cls, stored: StoredRun) -> RunMetrics:
        """The metrics of a stored run: built from its trace, or read from an older run's documents."""
        run = RunRecord.from_doc(stored.run)
        if stored.trace is not None:
            # build imports this module: the builder is looked up when a trace is read
            from fanflow.metrics.build import metrics_of_trace

            return metrics_of_trace(stored.trace, run)
        return cls(
            run,
            [TaskRecord.from_doc(t) for t in sorted(stored.tasks, key=lambda t: t["task"])],
            [WorkerRecord.from_doc(w) for w in stored.workers],
            stored.events,
        )


_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (InputRecord, ElementRecord, TaskRecord, WorkerRecord, RunRecord)
}


_GETTERS: dict[type, operator.attrgetter[Any]] = {cls: operator.attrgetter(*names) for cls, names in _FIELDS.items()}
"""One C-level read of every field per record: to_docs runs once per task of every recorded run."""

_LISTS: dict[type, tuple[int, ...]] = {
    cls: tuple(i for i, f in enumerate(fields(cls)) if str(f.type).startswith("list[")) for cls in _FIELDS
}
"""Per record type, the positions of its list fields (copied into a doc, so a doc never aliases a record)."""


def _doc(record: Any) -> dict[str, Any]:
    """A flat record as a JSON-able dict (lists are copied, their items are plain values)."""
    kind = type(record)
    values = list(_GETTERS[kind](record))
    for i in _LISTS[kind]:
        values[i] = list(values[i])
    return dict(zip(_FIELDS[kind], values, strict=True))


def _task_doc(t: TaskRecord) -> dict[str, Any]:
    doc = _doc(t)
    doc["inputs"] = [_doc(i) for i in t.inputs]
    doc["elements"] = [_doc(e) for e in t.elements]
    return doc
