"""Where the dashboard's data comes from: runs in flight from the run store, finished runs from history.

A run is in one of three places, checked in this order:

1. **saved** in the metadata store: it ended and was recorded. Its page is built
   from the records (tasks, workers, critical path) and its saved events, which
   outlive the run store's keys, so any finished run can be replayed.
2. **local**: a run of this process that its dashboard was opened on
   (:data:`fanflow.dashboard.tracking.LOCAL`); its events come from the run's own
   store object, so even a ``memory://`` run or one with ``metadata="none"``
   shows.
3. **started**: its started document is in the metadata store but its records
   are not, so it is in flight (or ended without being recorded). The DAG comes
   from that document, live events from this dashboard's run store.

Progress is never summarised here: the browser folds the raw events into task
states, the same fold for a live run and for a replay at any instant. This
module only finds documents and events and shapes them as JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fanflow.config import mask_url
from fanflow.dashboard.tracking import LOCAL, LocalRun, LocalRuns, error_records
from fanflow.errors import FanflowError
from fanflow.metrics.history import task_records
from fanflow.metrics.records import FINISHED, UNFINISHED, RunMetrics, TaskRecord
from fanflow.store import RUNNING, Store, keys
from fanflow.store.base import ENDED
from fanflow.store.metadata import MetadataStore, RunNotFoundError

STATUSES = (RUNNING, *ENDED, "unrecorded")
"""Run statuses the history can be filtered by; ``running`` means every run in flight."""

DEFAULT_LIMIT = 200

RECORDED_CACHE = 4
"""Recorded runs kept parsed in memory (the newest asked for)."""


class NotFoundError(FanflowError):
    """The dashboard knows nothing of this run or function (shown as HTTP 404)."""


def _function_name(identity: str) -> str:
    """``pkg.mod.f:0123abcd`` -> ``f``."""
    return identity.rsplit(":", 1)[0].rsplit(".", 1)[-1]


def _finite(value: Any) -> Any:
    """JSON has no infinity or NaN: such floats become None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class _Found:
    """A run located by :meth:`Source._find`: exactly one of the three kinds is set."""

    metrics: RunMetrics | None = None
    local: LocalRun | None = None
    started: dict[str, Any] | None = None


class Source:
    """Reads runs, events, errors and function statistics for the dashboard's API."""

    def __init__(self, store: Store | None, metadata: MetadataStore | None, local: LocalRuns = LOCAL) -> None:
        self.store = store
        self.metadata = metadata
        self.local = local
        self.store_url = mask_url(store.url) if store is not None else None
        self.metadata_url = mask_url(metadata.url) if metadata is not None else None
        self._recorded: dict[str, RunMetrics] = {}

    # -- locating a run --------------------------------------------------------------
    def _saved(self, run_id: str) -> RunMetrics | None:
        if self.metadata is None:
            return None
        cached = self._recorded.get(run_id)
        if cached is not None:
            return cached
        try:
            metrics = RunMetrics.from_stored(self.metadata.load_run(run_id))
        except RunNotFoundError:
            return None
        # A recorded run never changes, and its page asks for it twice at once (header, then events).
        self._recorded[run_id] = metrics
        while len(self._recorded) > RECORDED_CACHE:
            self._recorded.pop(next(iter(self._recorded)))
        return metrics

    def _find(self, run_id: str) -> _Found:
        metrics = self._saved(run_id)
        if metrics is not None:
            return _Found(metrics=metrics)
        local = self.local.get(run_id)
        if local is not None:
            return _Found(local=local)
        started = self.metadata.load_started(run_id) if self.metadata is not None else None
        if started is not None:
            return _Found(started=started)
        where = f"the metadata store {self.metadata_url}" if self.metadata is not None else "this process"
        raise NotFoundError(f"run {run_id!r} is unknown: it is neither in flight nor recorded in {where}")

    def _store_for(self, found: _Found) -> Store | None:
        """The store holding the run's live keys, when this dashboard can see it."""
        if found.local is not None:
            return found.local.store
        if found.started is not None and self.store is not None and found.started.get("store") == self.store_url:
            return self.store
        return None

    def _live_status(self, run_id: str, found: _Found) -> str:
        """``running``, ``failed``, ``cancelled``, a local run's final status, ``ending`` or ``started``."""
        if found.local is not None and found.local.ended_at is not None:
            return found.local.status
        store = self._store_for(found)
        if store is None:
            return "started"  # in flight as far as this dashboard can tell; its store is elsewhere
        status = store.get_status(keys.status(run_id))
        if status is None:
            return "ending"  # cleaned up, being recorded (or never recorded)
        return status

    # -- the history ---------------------------------------------------------------------
    def runs(
        self,
        dag: str | None = None,
        signature: str | None = None,
        status: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[dict[str, Any]]:
        """Rows of the runs list, newest first: runs in flight, then the recorded ones, filtered."""
        rows: dict[str, dict[str, Any]] = {}
        finished = self.metadata.runs(limit=limit) if self.metadata is not None else []
        saved = {d["run_id"] for d in finished}
        live_docs: list[tuple[dict[str, Any], _Found]] = [
            (e.doc, _Found(local=e)) for e in self.local.all() if e.doc["run_id"] not in saved
        ]
        if self.metadata is not None:
            live_docs += [(d, _Found(started=d)) for d in self.metadata.started_runs(limit=limit)]
        for doc, found in live_docs:
            run_id = doc["run_id"]
            if run_id not in rows:
                rows[run_id] = self._live_row(doc, self._live_status(run_id, found))
        for d in finished:
            rows[d["run_id"]] = self._finished_row(d)
        out = sorted(rows.values(), key=lambda r: r["submitted_at"], reverse=True)
        if dag:
            out = [r for r in out if dag.lower() in r["sink"].lower() or dag.lower() in r["workflow"].lower()]
        if signature:
            out = [r for r in out if r["signature"].startswith(signature)]
        if status:
            out = [r for r in out if r["status"] == status or (status == RUNNING and r["live"])]
        return out[:limit]

    @staticmethod
    def _live_row(doc: dict[str, Any], status: str) -> dict[str, Any]:
        return {
            "run_id": doc["run_id"],
            "sink": doc["sink"],
            "workflow": doc.get("workflow") or doc["sink"],
            "signature": doc["signature"],
            "status": status,
            "live": status not in ENDED,
            "submitted_at": doc["submitted_at"],
            "makespan_s": None,
            "predicted_makespan_s": doc.get("predicted_makespan_s"),
            "cost": doc.get("cost"),
            "planner": doc.get("planner"),
            "platform": doc.get("platform"),
            "tasks": len(doc["deps"]),
            "tasks_finished": None,
            "workers": None,
            "error": None,
        }

    @staticmethod
    def _finished_row(d: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": d["run_id"],
            "sink": d["sink"],
            "workflow": d.get("workflow") or d["sink"],
            "signature": d["signature"],
            "status": d["status"],
            "live": False,
            "submitted_at": d["submitted_at"],
            "makespan_s": d.get("makespan_s"),
            "predicted_makespan_s": d.get("predicted_makespan_s"),
            "predicted_p10_s": d.get("predicted_p10_s"),
            "predicted_p90_s": d.get("predicted_p90_s"),
            "cost": d.get("cost"),
            "planner": d.get("planner"),
            "platform": d.get("platform"),
            "tasks": d.get("tasks"),
            "tasks_finished": d.get("tasks_finished"),
            "workers": d.get("workers"),
            "error": d.get("error"),
        }

    # -- one run -------------------------------------------------------------------------
    def run(self, run_id: str) -> dict[str, Any]:
        """Everything the run page draws except the events: header, DAG, critical path, errors."""
        found = self._find(run_id)
        if found.metrics is not None:
            return self._finished(found.metrics)
        doc = found.local.doc if found.local is not None else found.started
        assert doc is not None
        status = self._live_status(run_id, found)
        store = self._store_for(found)
        notice = None
        if store is None:
            notice = (
                f"Live events of this run are in its store {doc.get('store')}, which this dashboard does not read "
                f"(it reads {self.store_url or 'no store'}); start it with --store pointing at that store. "
                "The run shows here in full once it is recorded."
            )
        header = self._live_row(doc, status)
        header.update(metrics_upload=doc.get("metrics_upload"), store=doc.get("store"), memory_mb=doc.get("memory_mb"))
        return {
            "run": header,
            "live": header["live"],
            "graph": self._graph_of_doc(doc),
            "critical_path": [],
            "critical_tasks": [],
            "functions": {},
            "errors": self._live_errors(found, store),
            "notice": notice,
        }

    def _live_errors(self, found: _Found, store: Store | None) -> list[dict[str, Any]]:
        if found.local is not None and found.local.errors:
            return found.local.errors
        doc = found.local.doc if found.local is not None else found.started
        run_id = doc["run_id"] if doc else ""
        live = error_records(store, run_id) if store is not None else []
        return live or (found.started or {}).get("errors", [])

    @staticmethod
    def _graph_of_doc(doc: dict[str, Any]) -> dict[str, Any]:
        functions, task_of = doc["functions"], doc["task_of"]
        maps, sinks = set(doc.get("maps", ())), set(doc.get("sinks", ()))
        nodes = [
            {
                "id": i,
                "name": f"{functions[f][0]}-{i}",
                "function": functions[f][0],
                "identity": functions[f][1],
                "map": i in maps,
                "sink": i in sinks,
            }
            for i, f in enumerate(task_of)
        ]
        edges = [{"source": u, "target": t, "index": k} for t, ups in enumerate(doc["deps"]) for k, u in enumerate(ups)]
        return {"nodes": nodes, "edges": edges}

    def _finished(self, metrics: RunMetrics) -> dict[str, Any]:
        run_doc = {f.name: getattr(metrics.run, f.name) for f in dataclasses.fields(metrics.run)}  # not every task's
        header = self._finished_row(run_doc)
        header.update(
            finished_at=run_doc["finished_at"],
            metrics_upload=run_doc.get("metrics_upload"),
            memory_mb=run_doc.get("memory_mb"),
            cold_starts=run_doc.get("cold_starts"),
            bytes_fetched=run_doc.get("bytes_fetched"),
            bytes_local=run_doc.get("bytes_local"),
            bytes_out=run_doc.get("bytes_out"),
            dag_build_s=run_doc.get("dag_build_s"),
            planning_s=run_doc.get("planning_s"),
        )
        started = self.metadata.load_started(metrics.run.run_id) if self.metadata is not None else None
        maps = set(started.get("maps", ())) if started else set()
        sinks = set(started.get("sinks", ())) if started else set()
        has_dependents = {d for t in metrics.tasks for d in t.deps}
        nodes = [
            {
                "id": t.task,
                "name": t.name,
                "function": _function_name(t.identity),
                "identity": t.identity,
                "map": t.task in maps or bool(t.elements),
                "sink": t.task in sinks if started else t.task not in has_dependents,
            }
            for t in metrics.tasks
        ]
        edges = [{"source": u, "target": t.task, "index": k} for t in metrics.tasks for k, u in enumerate(t.deps)]
        critical = metrics.critical_path() if any(t.status != UNFINISHED for t in metrics.tasks) else []
        by_id = {t.task: t for t in metrics.tasks}
        critical_tasks = [
            {
                "task": t.task,
                "name": t.name,
                "status": t.status,
                "worker": t.worker,
                "memory_mb": t.memory_mb,
                "duration_s": t.duration_s,
                "exec_s": t.exec_s,
                "in_bytes": t.in_bytes,
                "out_bytes": t.out_bytes,
                "error": t.error,
            }
            for t in (by_id[i] for i in critical)
        ]
        per_function: dict[str, dict[str, float]] = {}
        for t, node in zip(metrics.tasks, nodes, strict=True):
            row = per_function.setdefault(node["function"], {"tasks": 0, "exec_s": 0.0, "in_bytes": 0, "failed": 0})
            row["tasks"] += 1
            row["exec_s"] += t.exec_s or 0.0
            row["in_bytes"] += t.in_bytes or 0
            row["failed"] += t.status == "failed"
        errors = (started or {}).get("errors") or [
            {"task": t.name, "task_id": t.task, "exc_type": "", "message": t.error, "traceback": "", "worker": t.worker}
            for t in metrics.tasks
            if t.error
        ]
        if not errors and metrics.run.error:
            errors = [{"task": None, "exc_type": "", "message": metrics.run.error, "traceback": ""}]
        return {
            "run": header,
            "live": False,
            "graph": {"nodes": nodes, "edges": edges},
            "critical_path": critical,
            "critical_tasks": critical_tasks,
            "functions": per_function,
            "errors": errors,
            "notice": None,
        }

    # -- events --------------------------------------------------------------------------
    def events(self, run_id: str, after: str = "0", limit: int | None = None) -> dict[str, Any]:
        """The run's events after stream id ``after``, oldest first, and whether the run is over.

        A recorded run gives its saved events (ids are positions), at most ``limit``
        of them (``more`` says whether others follow: a page reads a big run in
        pieces, each parsed in a short task); a run in flight gives what its
        store's stream holds.
        """
        found = self._find(run_id)
        if found.metrics is not None:
            start = int(after) if after.isdigit() else 0
            every = found.metrics.events
            end = len(every) if limit is None else min(len(every), start + limit)
            return {
                "events": every[start:end],
                "last": str(end),
                "more": end < len(every),
                "total": len(every),
                "ended": True,
                "status": found.metrics.run.status,
            }
        store = self._store_for(found)
        batch = store.read_events(keys.events(run_id), after) if store is not None else []
        status = self._live_status(run_id, found)
        return {
            "events": [e for _, e in batch],
            "last": batch[-1][0] if batch else after,
            "more": False,
            "ended": False,
            "status": status,
        }

    def live_feed(self, run_id: str) -> LiveFeed | None:
        """A cheap handle to follow a run in flight; None when it is already recorded."""
        found = self._find(run_id)
        if found.metrics is not None:
            return None
        return LiveFeed(run_id, self._store_for(found), found.local)

    def is_recorded(self, run_id: str) -> bool:
        """True once the run's records are in the metadata store."""
        return self._saved(run_id) is not None

    def status(self, run_id: str) -> str:
        """The run's status as the live view reports it (its recorded status once recorded)."""
        found = self._find(run_id)
        if found.metrics is not None:
            return found.metrics.run.status
        return self._live_status(run_id, found)

    # -- functions -------------------------------------------------------------------------
    def functions(self) -> list[dict[str, Any]]:
        """Per task function: its running summary at every memory size it ran at."""
        if self.metadata is None:
            return []
        by_identity: dict[str, list[dict[str, Any]]] = {}
        for (identity, memory_mb), s in sorted(self.metadata.summaries().items()):
            by_identity.setdefault(identity, []).append(
                {
                    "memory_mb": memory_mb,
                    "count": s.count,
                    "mean_s": s.mean,
                    "stdev_s": s.stdev,
                    "min_s": _finite(s.min),
                    "max_s": s.max,
                    "mean_out_bytes": s.sum_out / s.count if s.count else None,
                }
            )
        return [
            {
                "identity": identity,
                "name": _function_name(identity),
                "sizes": sizes,
                "count": sum(s["count"] for s in sizes),
            }
            for identity, sizes in by_identity.items()
        ]

    def executions(self, identity: str) -> list[dict[str, Any]]:
        """Every kept execution of a function: ``exec_s``, ``in_bytes``, ``memory_mb``, ``run_id``.

        Map elements count one each.
        """
        if self.metadata is None:
            raise NotFoundError("this dashboard has no metadata store, so no function history")
        records = task_records(self.metadata, [identity])
        if not records and not any(i == identity for i, _ in self.metadata.summaries([identity])):
            raise NotFoundError(f"function {identity!r} has no recorded executions")
        return list(_points(records))


@dataclass
class LiveFeed:
    """Follows one run in flight without touching the metadata store: events and status from its store."""

    run_id: str
    store: Store | None
    """None when this dashboard cannot see the run's store (its events then come once it is recorded)."""
    local: LocalRun | None

    def read(self, after: str) -> list[tuple[str, dict[str, Any]]]:
        """Events after stream id ``after``, each with its id."""
        return self.store.read_events(keys.events(self.run_id), after) if self.store is not None else []

    def running(self) -> bool:
        """True while the run store says the run is running (one status read)."""
        if self.local is not None and self.local.ended_at is not None:
            return False
        return self.store is not None and self.store.get_status(keys.status(self.run_id)) == RUNNING

    def ended_unrecorded(self) -> bool:
        """True when this process saw the run end and no metadata store will record it."""
        return self.local is not None and self.local.ended_at is not None


def _points(records: Iterable[TaskRecord]) -> Iterable[dict[str, Any]]:
    for t in records:
        if t.status != FINISHED:
            continue
        elements = [e for e in t.elements if e.finished_at]
        if elements:
            for e in elements:
                yield {"exec_s": e.exec_s, "in_bytes": e.fetched_bytes, "memory_mb": e.memory_mb, "run_id": t.run_id}
        else:
            yield {"exec_s": t.exec_s, "in_bytes": t.in_bytes, "memory_mb": t.memory_mb, "run_id": t.run_id}
