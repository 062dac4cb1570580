"""What the client tells the dashboard about its runs: a started document, and errors at the end.

A run's records reach the metadata store only after it ends, but a dashboard
must draw a run in flight: its DAG, which tasks exist, what they call. So the
client saves a small *started document* right after it invokes the roots
(:func:`note_start`): the run header and the DAG structure as columns (each
function once, then per task its function index and upstream ids), a few
bytes per task. The write goes through the metadata layer's background writer
(:func:`fanflow.store.metadata.defer`), like the run's records, so it never
delays the run, and it is queued before them, so it is stored first. A run
that ended well before the writer got to it (within about
:data:`fanflow.store.metadata.BATCH_S`) gets none: its record is what shows it.

Live progress is not written here: the dashboard reads the run's event stream
in the run store, the same stream the metrics are built from.

A failed run's tracebacks live in the run store's error list, which cleanup
deletes. :func:`note_end` copies that list into the started document before
cleanup, so a finished run's page still shows them. Successful runs cost no
write at the end.

A dashboard opened in this process (``compute(..., dashboard=True)``) also
keeps its runs in :data:`LOCAL`, with their store objects: it can then show a
run whatever the metadata store (even ``none``), including one in a
``memory://`` store no other process sees.

Everything here is observability: an error is logged and never fails a run.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fanflow.config import mask_url
from fanflow.dag.tracebacks import with_source_lines
from fanflow.metrics.recorder import status_of, workflow_of
from fanflow.store import Store, keys
from fanflow.store.base import RUNNING, SUCCEEDED
from fanflow.store.metadata import defer, is_disabled, open_metadata

if TYPE_CHECKING:
    from fanflow.client.run import Run

log = logging.getLogger(__name__)

LOCAL_MAX_RUNS = 100
"""Runs an in-process dashboard keeps in memory (oldest dropped first)."""


def started_doc(run: Run) -> dict[str, Any]:
    """The started document of ``run``: header and DAG structure, JSON-able."""
    dag, config = run.dag, run.config
    return {
        "run_id": run.run_id,
        "signature": dag.signature,
        "sink": dag.sink_name,
        "workflow": workflow_of(dag),
        "planner": config.planner,
        "platform": config.platform,
        "metrics_upload": config.metrics_upload,
        "memory_mb": config.memory_mb,
        "submitted_at": run.submitted_at or time.time(),
        "store": mask_url(config.store),
        "functions": [[t.name, t.identity] for t in dag.tasks],
        "task_of": list(dag.task_of),
        "deps": dag.deps,  # tuples, written as JSON lists: no list per task on the recording path
        "maps": sorted(dag.maps),
        "sinks": list(dag.sinks),
        "errors": [],
    }


def error_records(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The error records workers wrote for ``run_id`` (type, message, traceback, task, worker, ...)."""
    out = []
    for raw in store.read_list(keys.errors(run_id)):
        try:
            out.append(json.loads(raw))
        except ValueError:
            log.debug("run %s: an error record is not JSON", run_id)
    return out


@dataclass
class LocalRun:
    """A run shown by the dashboard of this process."""

    doc: dict[str, Any]
    store: Store
    status: str = RUNNING
    ended_at: float | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


class LocalRuns:
    """The runs of this process that its dashboard was opened on, newest last, bounded."""

    def __init__(self, limit: int = LOCAL_MAX_RUNS) -> None:
        self._runs: OrderedDict[str, LocalRun] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, run: Run) -> None:
        with self._lock:
            self._runs[run.run_id] = LocalRun(started_doc(run), run.store)
            while len(self._runs) > self._limit:
                self._runs.popitem(last=False)

    def get(self, run_id: str) -> LocalRun | None:
        return self._runs.get(run_id)

    def all(self) -> list[LocalRun]:
        """Every kept run, newest first."""
        with self._lock:
            return list(reversed(self._runs.values()))

    def started(self, run: Run) -> None:
        entry = self._runs.get(run.run_id)
        if entry is not None:
            entry.doc["submitted_at"] = run.submitted_at

    def ended(self, run_id: str, status: str, errors: list[dict[str, Any]]) -> None:
        entry = self._runs.get(run_id)
        if entry is not None:
            entry.status, entry.ended_at, entry.errors = status, time.time(), errors


LOCAL = LocalRuns()


_in_flight: dict[str, Run] = {}
"""Runs started whose started document is not saved yet, and that have not ended: the writer's next batch saves it."""

_queued = False
"""Whether a job saving the documents of :data:`_in_flight` waits in the writer's queue."""


def note_start(run: Run) -> None:
    """Save ``run``'s started document in its metadata store (call right after ``run.start()``).

    The writer builds it when its batch runs; a run that has ended by then
    gets none: its record follows at once, and the document would only tell a
    dashboard of a run in flight that is not (a failed run's is saved by
    :func:`note_end`, with its errors). The run waits in :data:`_in_flight`,
    which :func:`note_end` takes it out of, and one job per batch saves what is
    left there: a job per run kept every run alive until the batch, long enough
    for the garbage collector to move its objects to the oldest generation,
    whose collections then walked every object of the process (a stream of
    tiny runs set one off every few hundred runs).
    """
    global _queued
    LOCAL.started(run)
    if not is_disabled(run.config.metadata):
        _in_flight[run.run_id] = run  # before the flag is read: a job that cleared it sees this run
        if not _queued:
            _queued = True
            defer(_save_in_flight)


def _save_in_flight() -> None:
    """Save the started documents of the runs still in flight (in the background writer)."""
    global _queued
    _queued = False  # before the runs are read: a run noted meanwhile queues a job of its own
    for run_id in list(_in_flight):
        run = _in_flight.pop(run_id, None)
        if run is not None and not run.finished_at:
            _save(run, [])


def _forget_parent() -> None:
    """In a child made by ``fork``: the parent's runs are not this process's, nor is its writer's queue."""
    global _queued
    _in_flight.clear()
    _queued = False


os.register_at_fork(after_in_child=_forget_parent)


def _save(run: Run, errors: list[dict[str, Any]]) -> None:
    """Build and save the started document (in the background writer: the DAG is immutable)."""
    config = run.config
    try:
        doc = started_doc(run)
        doc["errors"] = errors
        open_metadata(config.metadata).save_started(doc, config.key_ttl_s)
    except Exception as exc:
        log.warning("run %s: could not save its started document in %s: %s", run.run_id, mask_url(config.metadata), exc)


def note_end(run: Run, error: BaseException | None) -> None:
    """Keep a failed run's error records beside its started document (call before ``run.cleanup()``)."""
    _in_flight.pop(run.run_id, None)
    if error is None:
        LOCAL.ended(run.run_id, SUCCEEDED, [])
        return
    if not run.submitted_at:
        return
    try:
        errors = error_records(run.store, run.run_id)
    except Exception as exc:
        log.warning("run %s: could not read its error records: %s", run.run_id, exc)
        errors = []
    if not errors:
        errors = [{"task": None, "exc_type": type(error).__name__, "message": str(error), "traceback": ""}]
    errors = [{**e, "traceback": with_source_lines(e.get("traceback") or "", run.dag)} for e in errors]
    LOCAL.ended(run.run_id, status_of(error), errors)
    if not is_disabled(run.config.metadata):
        defer(lambda: _save(run, errors))
