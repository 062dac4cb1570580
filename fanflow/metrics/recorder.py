"""Recording a run in the metadata store, on the client, after the run ends.

The client calls :func:`record_run` once per run, on success and on failure,
after cleanup (the event stream survives cleanup). A run is recorded as its
run document, its trace (events and DAG structure as columns,
:mod:`fanflow.store.metadata.trace`) and its summary increments
(:mod:`fanflow.metrics.digest`): no record per task is built, which cost more
than the run itself for DAGs of thousands of tiny tasks. Records are built when
history is read. The work (reading the events, encoding, saving) is deferred to the metadata layer's
background writer, so ``compute()`` returns as soon as the results are in;
reads in this process and interpreter exit wait for it
(:func:`fanflow.store.metadata.defer`). Recording is observability: any error
in it is logged as a warning and never changes the run's outcome.

A *tiny* run (fewer than ``SMALL_COLUMN`` events, ended well, its events in this
process) is recorded *raw* (:mod:`fanflow.store.metadata.raw`). The client only
copies what the writer needs into tuples of numbers and strings
(:func:`_record_raw`); the writer, once per batch, checks and sums its event
rows without a dict per event (:func:`~fanflow.metrics.digest.digest_rows`)
and hands them to the store as the client copied them, with the totals; the
store packs the batch's runs in one ``marshal`` call, writes them and builds
the trace only when it is read. Keeping the run's own objects until the writer's batch would let the
garbage collector promote them to its oldest generation, and a stream of
``dask.compute`` calls then set off full collections; the copy, one flat tuple,
is untracked by its first young passes.

The last events can trail the completion message: the sink's worker publishes
"done" in the same round trip that stores the output, and only then emits
``task_finished``/``worker_stopped`` and flushes (at exit, with the default
``shutdown`` strategy). So :func:`collect_events` reads the stream until it is
*complete* (every task finished and every worker seen has stopped) or a short
deadline passes: up to :data:`SETTLE_S` after a success, where completeness is
certain to come within moments, and :data:`SETTLE_FAILED_S` after a failure,
where workers that never got to flush may never show up. A failed run is thus
recorded with what its workers had written by then.

DAG build time is measured by :func:`build_dag`, which the API uses in place of
``DAG.from_sinks``; it is remembered per DAG object (weakly) until the run is
recorded, so no signature between the API and the client has to carry it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fanflow.config import mask_url
from fanflow.dag.graph import DAG
from fanflow.dag.node import Node
from fanflow.errors import RunCancelledError, RunTimeoutError
from fanflow.metrics.build import build_metrics, summaries_of
from fanflow.metrics.digest import digest, digest_events, digest_rows
from fanflow.metrics.graph import Graph
from fanflow.metrics.records import RunRecord
from fanflow.store import Store, keys
from fanflow.store.base import CANCELLED, FAILED, SUCCEEDED, TIMEOUT
from fanflow.store.events import SHAPES, EventRows, as_dict, kind_of
from fanflow.store.memory import EventStream, MemoryStore
from fanflow.store.metadata import defer, is_disabled, open_metadata, raw
from fanflow.store.metadata.base import MetadataStore, RawRun, SavesRaw, Summary, SummaryKey, saves_raw
from fanflow.store.metadata.trace import (
    SMALL_COLUMN,
    DagArrays,
    EventLog,
    EventTable,
    Labels,
    distinct_count,
    encode_small_trace,
    encode_trace,
    small_trace,
)

if TYPE_CHECKING:
    from fanflow.client.run import Run

log = logging.getLogger(__name__)

SETTLE_S = 5.0
"""Longest wait for the last events of a successful run."""

SETTLE_FAILED_S = 0.5
"""Longest wait for the events of a failed or cancelled run."""

_POLL_S = 0.002


def build_dag(nodes: Sequence[Node]) -> DAG:
    """``DAG.from_sinks(nodes)``, remembering how long it took for the run's record."""
    began = time.perf_counter()
    dag = DAG.from_sinks(nodes)
    note_dag_build(dag, time.perf_counter() - began)
    return dag


def note_dag_build(dag: DAG, seconds: float) -> None:
    """Remember that building ``dag`` took ``seconds``, for its runs' records (a DAG built without nodes)."""
    dag.build_s = seconds


SCRIPT_MODULE = "fanflow_script_"
"""Prefix of the module name ``fanflow run`` gives a workflow script (``fanflow_script_<stem>_<digest>``)."""


def workflow_of(dag: DAG) -> str:
    """The workflow a DAG comes from: its script's file name, else the function of its first task."""
    if len(dag) == 0:
        return dag.sink_name
    first = dag.tasks[dag.task_of[0]]
    key = (first.identity, first.name, sys.argv[0] if sys.argv else "")
    found = _workflows.get(key)
    if found is None:
        if len(_workflows) >= _WORKFLOWS_KEPT:  # a process making functions without end
            _workflows.clear()
        found = _workflows[key] = _workflow(*key)
    return found


_workflows: dict[tuple[str, str, str], str] = {}
"""The workflow of a first task's identity and name and the script's path: each call of a tiny run's recording
took a tenth of it to split the identity."""

_WORKFLOWS_KEPT = 256


def _workflow(identity: str, name: str, script: str) -> str:
    module = identity.split(":", 1)[0].rsplit(".", 1)[0]
    if module.startswith(SCRIPT_MODULE):
        return module[len(SCRIPT_MODULE) :].rsplit("_", 1)[0] + ".py"
    if module == "__main__" and script:
        return Path(script).name
    return name


def status_of(error: BaseException | None) -> str:
    """The run status recorded for the way it ended."""
    if error is None:
        return SUCCEEDED
    if isinstance(error, RunTimeoutError):
        return TIMEOUT
    if isinstance(error, (RunCancelledError, KeyboardInterrupt)):
        return CANCELLED
    return FAILED


def _error_text(error: BaseException) -> str:
    """``Type: first line of the message`` (a task failure's message goes on with the remote traceback)."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def collect_events(store: Store, run_id: str, n_tasks: int, succeeded: bool) -> EventTable | list[dict[str, Any]]:
    """The run's events, read until complete or until the settle deadline passes: their table, or,
    for a run of fewer than ``SMALL_COLUMN`` events, the events themselves.

    Complete: every task finished (a dynamic fan-out's elements aside) and every
    worker seen has stopped. A tree of 16k tasks has 49k events, which workers
    flush as rows (:mod:`fanflow.store.events`): each read only counts their
    shapes, and the table, which recording builds anyway, is built from the rows
    when the counts say the run may be complete, and checked. A small run is
    checked on its event dicts and recorded as a list (:func:`encode_trace`).
    """
    stream = keys.events(run_id)
    deadline = time.monotonic() + (SETTLE_S if succeeded else SETTLE_FAILED_S)
    events = EventLog()
    table: EventTable | None = None
    read, after = False, "0"
    while True:
        batches, after = store.read_event_batches(stream, after)
        if batches or not read:  # something new (or the first read, which may find nothing)
            read = True
            events.add(batches)
            table = None
            if len(events) < SMALL_COLUMN:  # checked on its dicts: cheaper than counting with numpy
                dicts = events.events()
                if _complete_small(dicts, n_tasks, succeeded):
                    return dicts
            elif _may_be_complete(grouped := events.grouping(), n_tasks, succeeded):
                table = events.table(grouped)
                if _complete(table, n_tasks, succeeded):
                    return table
        if time.monotonic() >= deadline:
            log.debug("run %s: recording with %d events, some may still be in flight", run_id, len(events))
            if len(events) < SMALL_COLUMN:
                return events.events()
            return table if table is not None else events.table()
        time.sleep(_POLL_S)


def _may_be_complete(grouped: Labels, n_tasks: int, succeeded: bool) -> bool:
    """As many workers stopped as started, and as many tasks finished as the DAG has (counted, not checked)."""
    kinds: Counter[Any] = Counter()
    for label, count in zip(grouped[1], np.bincount(grouped[0]).tolist(), strict=True):
        kinds[kind_of(label)] += count
    return kinds["worker_stopped"] >= kinds["worker_started"] and (kinds["task_finished"] >= n_tasks or not succeeded)


def _complete(table: EventTable, n_tasks: int, succeeded: bool) -> bool:
    stopped: set[str] = set().union(*(g.distinct("worker") for g in table.of_kind("worker_stopped")))
    if not table.workers() <= stopped:
        return False
    if not succeeded:
        return True
    ended = [g for g in table.of_kind("task_finished") if "element" not in g.columns]  # elements are no tasks
    ids = [g.columns.get("task") for g in ended]
    if ids and all(isinstance(c, np.ndarray) and c.dtype.kind in "iu" for c in ids):  # no text per task
        return distinct_count(np.concatenate(ids)) >= n_tasks
    return len(set().union(*(g.distinct("task") for g in ended))) >= n_tasks


def _complete_small(events: list[dict[str, Any]], n_tasks: int, succeeded: bool) -> bool:
    """:func:`_complete` on the event dicts (the same text values the table's groups would give)."""
    stopped = {str(e.get("worker", "")) for e in events if e.get("kind") == "worker_stopped"}
    if not {str(e.get("worker", "")) for e in events} <= stopped:
        return False
    if not succeeded:
        return True
    ended = {str(e.get("task", "")) for e in events if e.get("kind") == "task_finished" and "element" not in e}
    return len(ended) >= n_tasks


def record_run(run: Run, error: BaseException | None) -> None:
    """Record the run in the background: a tiny one raw, any other from its events (module docstring); never raises."""
    if is_disabled(run.config.metadata) or not run.submitted_at:
        if run.store.keeps_objects:
            run.store.delete([keys.events(run.run_id)])  # nobody will read them: free the memory now
        return
    if error is None and run.store.keeps_objects and _record_raw(run):
        return
    defer(lambda: _record(run, error))


_tiny: dict[SavesRaw, collections.deque[_TinyRun]] = {}
"""Tiny runs waiting for the writer, per metadata store."""

_tiny_queued = False
"""A job that saves them waits in the writer's queue."""


def _record_raw(run: Run) -> bool:
    """Keep a tiny run for the writer to save raw (:mod:`fanflow.store.metadata.raw`); False when it is not one.

    Tiny: it ended well, has no dynamic fan-out, its events are in this
    process's store, fewer than ``SMALL_COLUMN`` and all there (every worker
    seen has flushed its ``worker_stopped`` last), and its metadata store keeps
    raw runs (:class:`~fanflow.store.metadata.base.SavesRaw`). The client only
    takes the run's values, its worker's rows and its DAG's lists (kept per DAG)
    as tuples of numbers and strings: the garbage collector stops tracking
    those at its first young pass, so a stream of tiny runs waiting for the
    writer's batch promotes nothing to its older generations (the run's own
    objects, kept until the batch, set off full collections). The batch checks
    and sums the rows, packs them (:func:`_save_tiny`) and records a run whose
    rows the digest refuses from its rows as the usual way would. Nothing is
    kept when it returns False: the caller records the run the usual way, which
    also reports any error met here.
    """
    global _tiny_queued
    dag = run.dag
    memory = run.store
    if dag.maps or len(dag.deps) >= SMALL_COLUMN or type(memory) is not MemoryStore:
        return False
    config = run.config
    began = time.perf_counter()
    url = config.metadata
    store = _raw_stores.get(url)
    if store is None:
        store = _raw_store(url)
        if store is None:
            return False
    stream = keys.events(run.run_id)
    entry = memory.take_stream(stream)  # put back below unless the run is kept for the writer
    flat = () if entry is None else _flat(entry.batches)
    if flat is None:  # a worker has events to flush yet, or the client has events of its own
        memory.put_back_stream(stream, cast(EventStream, entry), config.key_ttl_s)
        return False
    key = (dag.signature, tuple(dag.tasks), tuple(dag.task_of))
    lists = _dag_lists.get(key)
    if lists is None or lists[5] != (sys.argv[0] if sys.argv else ""):
        lists = _lists_of(dag, key)
    head = _run_values(run, lists[4][0], lists[4][1], SUCCEEDED, None)
    waiting = _tiny.get(store)
    if waiting is None:
        waiting = _tiny.setdefault(store, collections.deque())
    waiting.append((head, lists, time.perf_counter() - began, config.retention_runs, *flat))
    if not _tiny_queued:
        _tiny_queued = True
        defer(_save_tiny)
    return True


def _flat(batches: Sequence[Any]) -> Sequence[Any] | None:
    """Each flush's worker, then its rows; None unless every batch is a worker's rows, fewer than
    ``SMALL_COLUMN`` in all, and every worker seen flushed its ``worker_stopped`` last."""
    if len(batches) == 1:  # one worker's one flush (a small run on the caller's thread): no set or list
        batch = batches[0]
        if type(batch) is EventRows and 0 < len(rows := batch.rows) < SMALL_COLUMN:
            last = rows[-1]
            number = last[-1] if type(last) is tuple and last else None
            if type(number) is int and (_stop_shapes[number] if number in _stop_shapes else _stop_shape(number)):
                return (batch.worker, *rows)
    flat: list[Any] = []
    count = 0
    workers: set[str] = set()
    stopped: set[str] = set()
    for batch in batches:
        if type(batch) is not EventRows:
            return None  # events of the client's own: recorded the usual way
        rows = batch.rows
        if not rows:
            continue
        worker = batch.worker
        flat.append(worker)
        flat += rows
        count += len(rows)
        workers.add(worker)
        if _stops(rows[-1]):
            stopped.add(worker)
    return flat if count < SMALL_COLUMN and stopped == workers else None


def _stops(row: Any) -> bool:
    """Whether ``row`` is a ``worker_stopped`` event's (a worker's last)."""
    number = row[-1] if type(row) is tuple and row else None
    return type(number) is int and (_stop_shapes[number] if number in _stop_shapes else _stop_shape(number))


_raw_stores: dict[str, SavesRaw] = {}
"""The metadata store of each URL that names the same store from any working directory, when it keeps tiny runs
raw: :func:`open_metadata` and the protocol check cost about 1.5 us of a 1-task call."""


def _raw_store(url: str) -> SavesRaw | None:
    """The metadata store at ``url`` when it keeps tiny runs raw, else None (also when it cannot be opened: the
    usual way reports it)."""
    try:
        store = saves_raw(open_metadata(url, wait=False))
    except Exception:
        return None
    if store is not None and not (url.startswith("sqlite:///") and not url.startswith("sqlite:////")):
        _raw_stores[url] = store  # a relative SQLite path is looked up anew: it depends on the working directory
    return store


_stop_shapes: dict[int, bool] = {}
"""Per event shape number: whether it is a ``worker_stopped`` event's (a worker's last)."""


def _stop_shape(number: int) -> bool:
    """Whether shape ``number`` is a ``worker_stopped`` event's (False for a number that is no shape's)."""
    if not 0 <= number < len(SHAPES):
        return False
    found = _stop_shapes[number] = SHAPES[number].kind == "worker_stopped"
    return found


_TinyRun = tuple[Any, ...]
"""A tiny run as the client keeps it for the writer, laid out as :data:`fanflow.store.metadata.raw.RawParts`
reads it: the values of :data:`_HEAD_FIELDS`, its DAG's lists (:data:`_DagLists`), the seconds the client took,
the retention it asks for, then each flush's worker id followed by its rows. The batch hands it to the store as it
is. Flat: the collector stops tracking a tuple of untracked values in a pass, one level of nesting per pass, so
every level more kept the runs waiting tracked into its older generations."""

_DagLists = tuple[tuple[tuple[Any, ...], ...], str, tuple[str, ...], tuple[tuple[int, ...], ...], tuple[str, str], str]
"""The six tuples of DAG lists a raw run keeps and its workflow (first, where
:data:`fanflow.store.metadata.raw.RawParts` reads them), the function identity of each task and the upstream ids
of each task (for the digest), the DAG's signature and sink (run document values) and the script path its
workflow was found with."""

_dag_lists: dict[tuple[str, tuple[Any, ...], tuple[int, ...]], _DagLists] = {}
"""Per DAG signature, task functions and task-to-function map: the function identity of each task (for the
digest), the DAG's lists a raw run keeps (names, identities, task_of, upstream counts and ids, sinks), its
values in the run document and its upstream ids. The signature covers the upstream ids, the sinks and each
function's code (the tasks and task_of give the sink's and the first task's names and identities);
``fanflow.dask.get`` of one graph makes the same functions (the same objects) call after call, and copying these
lists each time was about 10k of the 132k instructions a tiny run's recording took (callgrind). Kept entries
hold their task functions."""

_DAG_LISTS_KEPT = 256


def _lists_of(dag: DAG, key: tuple[str, tuple[Any, ...], tuple[int, ...]]) -> _DagLists:
    tasks, task_of, deps = dag.tasks, key[2], dag.deps
    identities = tuple([t.identity for t in tasks])
    kept = (
        tuple([t.name for t in tasks]),
        identities,
        task_of,
        tuple(map(len, deps)),
        tuple(itertools.chain.from_iterable(deps)),
        tuple(dag.sinks),
    )
    found = (
        kept,
        workflow_of(dag),
        tuple([identities[f] for f in task_of]),
        tuple(map(tuple, deps)),
        (key[0], dag.sink_name),
        sys.argv[0] if sys.argv else "",  # as workflow_of reads it: a workflow may be named after it
    )
    if len(_dag_lists) >= _DAG_LISTS_KEPT:  # a process making DAGs without end
        _dag_lists.clear()
    _dag_lists[key] = found
    return found


def _save_tiny() -> None:
    """Check, sum and pack the tiny runs waiting and hand them to their stores (in the writer, once per batch).

    The work per run is done here, run after run, rather than on the client's
    thread between two calls, where its code and the run's evicted each other
    from the caches (the digest of a 1-task ``get``'s rows takes 1.4 us alone and
    cost about 3.7 us there): history's CPU per such call went from 24.9 to
    22.8 us (medians of 6 paired runs), and the client's share of it left the
    caller's thread.
    """
    global _tiny_queued
    _tiny_queued = False  # before the runs are read: a run noted meanwhile queues a job of its own
    for store, waiting in list(_tiny.items()):
        runs: list[RawRun] = []
        while waiting:
            tiny = waiting.popleft()
            lists = tiny[1]
            try:  # None, or an error: a task ended twice, a value of a type the records would convert
                digested = digest_rows(lists[2], lists[3], tiny[4:])
            except Exception:
                digested = None
            if digested is None:
                _record_rows(store, tiny)
            else:  # the raw run: what the client kept and the digest's totals
                runs.append(((tiny, digested[0]), digested[1], tiny[3]))
        if runs:
            store.save_raw(runs)


def _record_rows(store: SavesRaw, tiny: _TinyRun) -> None:
    """Save a tiny run whose rows the digest refused as :func:`_record` would have from its events; never raises."""
    head, lists, record_s, keep_runs = tiny[:4]
    flushed = raw.flushes_of(tiny[4:])
    began = time.perf_counter()
    try:
        names, identities, task_of, _, _, sinks = lists[0]
        deps = lists[3]
        events = [as_dict(row, worker) for worker, rows in flushed for row in rows]
        header = RunRecord(**_doc_of((*head, lists[1]), 0, 0, 0, 0, 0, 0, 0.0))
        functions = list(zip(names, identities, strict=True))
        digested = digest_events(lists[2], deps, events, header)
        if digested is None:  # a re-run, a value the records convert: the records say it
            digested = _built(Graph(functions, task_of, deps), events, header)
        record, summaries = digested
        trace = small_trace(
            [list(f) for f in functions],
            task_of,
            [len(d) for d in deps],
            list(itertools.chain.from_iterable(deps)),
            [],
            list(sinks),
            events,
        )
        record.record_s = record_s + time.perf_counter() - began
        cast(MetadataStore, store).save_run(record.to_doc(), trace, identities, summaries, keep_runs=keep_runs)
    except Exception as exc:
        log.warning("run %s: could not record its metrics: %s", head[0], exc)


def _built(
    graph: Graph, events: Sequence[dict[str, Any]], header: RunRecord
) -> tuple[RunRecord, dict[SummaryKey, Summary]]:
    """The run record and summary increments built from the records of ``events``: what a digest refuses."""
    metrics = build_metrics(graph, events, header)
    return metrics.run, summaries_of(metrics.tasks)


def _forget_parent() -> None:
    """In a child made by ``fork``: the parent's tiny runs are the parent's to save, as is its writer's queue."""
    global _tiny_queued
    _tiny.clear()
    _raw_stores.clear()
    _tiny_queued = False


os.register_at_fork(after_in_child=_forget_parent)


def _header(run: Run, error: BaseException | None) -> RunRecord:
    """The run's record before its events are read: what the client knows of it."""
    return RunRecord(**_doc_of(_header_values(run, error), 0, 0, 0, 0, 0, 0, 0.0))


_FIELDS = raw.DOC_FIELDS[raw.DOC_VERSION]
"""The run document's fields, in :class:`RunRecord`'s order."""

_HEAD_FIELDS = _FIELDS[: _FIELDS.index("tasks")]
"""The fields the client knows before the events are read."""


def _header_values(run: Run, error: BaseException | None) -> tuple[Any, ...]:
    """The values of :data:`_HEAD_FIELDS`, then the workflow: what the client knows of the run."""
    dag = run.dag
    text = None if error is None else _error_text(error)
    return (*_run_values(run, dag.signature, dag.sink_name, status_of(error), text), workflow_of(dag))


def _run_values(run: Run, signature: str, sink: str, status: str, error: str | None) -> tuple[Any, ...]:
    """The values of :data:`_HEAD_FIELDS`, given those of the DAG (a tiny run's recording keeps them per DAG)."""
    config = run.config
    submitted_at = run.submitted_at
    finished_at = run.finished_at or time.time()
    return (
        run.run_id,
        signature,
        sink,
        status,
        config.planner,
        config.platform,
        config.metrics_upload,
        config.memory_mb,
        submitted_at,
        finished_at,
        max(0.0, finished_at - submitted_at),
        run.dag.build_s,
        run.planning_s,
        run.encoded_size,
        run.predicted_makespan_s,
        run.predicted_p10_s,
        run.predicted_p90_s,
        run.plan_kind,
        run.calibration,
        error,
        run.max_workers,
    )


def _doc_of(
    head: tuple[Any, ...],
    tasks: int,
    workers: int,
    cold_starts: int,
    fetched: int,
    local: int,
    out: int,
    record_s: float,
) -> dict[str, Any]:
    """The run document of :func:`_header_values` and the counts, its fields in :class:`RunRecord`'s order."""
    doc = dict(zip(_HEAD_FIELDS, head, strict=False))  # stops before the workflow
    doc["tasks"] = doc["tasks_finished"] = tasks
    doc["workers"], doc["cold_starts"] = workers, cold_starts
    doc["bytes_fetched"], doc["bytes_local"], doc["bytes_out"] = fetched, local, out
    doc["record_s"] = record_s
    doc["workflow"] = head[-1]
    return doc


def _record(run: Run, error: BaseException | None) -> RunRecord | None:
    """Save the run's document, trace and summary increments; never raises.

    Returns the run's record, or None when recording failed (logged as a warning).
    """
    config = run.config
    try:
        began = time.perf_counter()
        dag = run.dag
        events = collect_events(run.store, run.run_id, len(dag), error is None)
        header = _header(run, error)
        functions = [t.identity for t in dag.tasks]
        if isinstance(events, EventTable):
            arrays = DagArrays.of(dag)
            digested = digest(arrays, events, header)
        else:  # a small run: its events stay a list, read without numpy
            arrays = None
            by_task = [functions[f] for f in dag.task_of]
            digested = None if dag.maps else digest_events(by_task, dag.deps, events, header)
        if digested is None:  # a failure, a dynamic fan-out, a re-run: the records say it
            dicts = events.events() if isinstance(events, EventTable) else events
            digested = _built(Graph.of_dag(dag), dicts, header)
        record, summaries = digested
        trace = encode_small_trace(dag, events) if arrays is None else encode_trace(arrays, events)
        record.record_s = time.perf_counter() - began
        store = open_metadata(config.metadata)
        store.save_run(record.to_doc(), trace, functions, summaries, keep_runs=config.retention_runs)
        log.debug("run %s recorded in %.1f ms", run.run_id, (time.perf_counter() - began) * 1e3)
        run.store.delete([keys.events(run.run_id)])  # now kept with the run's metadata
        return record
    except Exception as exc:
        log.warning("run %s: could not record its metrics in %s: %s", run.run_id, mask_url(config.metadata), exc)
        return None
