"""One run of a DAG, from the client's side: ship, start the roots, wait, fetch, clean up.

The client is not a scheduler: it starts one worker per root and then only
listens. It subscribes to the run's channel BEFORE starting the roots, so no
completion message can be missed, and it also polls the run status and the
sinks' output keys as a fallback. After it has the results (or the error), it
deletes every key of the run, each one named from the DAG.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from fanflow import errors
from fanflow.client import requirements
from fanflow.config import Config, mask_url, signing_secret
from fanflow.dag.encoding import encode
from fanflow.dag.graph import DAG
from fanflow.dag.placement import PlanView, plan_of, root_groups
from fanflow.dag.tracebacks import with_source_lines
from fanflow.errors import (
    FanflowError,
    RunCancelledError,
    RunStateLostError,
    RunTimeoutError,
    StoreError,
    TaskFailedError,
    TaskLostError,
    ValueRejectedError,
)
from fanflow.platforms.base import ChecksServing, KeepsWarmWorkers, Platform, RunsOnCaller, runs_on_caller, supports
from fanflow.platforms.invocation import Invocation, WorkerSettings, new_invocation_id, send
from fanflow.store import keys, open_store
from fanflow.store.base import CANCELLED, FAILED, LEASE_DONE, MISSING, RUNNING, Store, error_record

log = logging.getLogger(__name__)

POLL_S = 0.25
"""Fallback poll period of the status and result keys, in case a message is lost."""

HEALTH_S = 0.5
"""How often the waiting client asks its platform whether it still serves (see ``check_serving``)."""

PROGRESS_AFTER_S = 1.0
"""A progress bar appears only for runs that last longer than this."""


class Run:
    """A single execution of ``dag`` under ``config`` on an acquired ``platform``."""

    plan: PlanView
    """The plan the run starts with (set by :meth:`start`, after planning annotated the DAG)."""

    # What a run may learn later starts as these class-level values: none is set per run at creation.
    encoded_size = 0
    submitted_at = 0.0
    planning_s = 0.0
    predicted_makespan_s: float | None = None
    predicted_p10_s: float | None = None
    predicted_p90_s: float | None = None
    plan_kind = ""
    calibration = 1.0
    max_workers: int | None = None
    """The platform's worker cap (:meth:`~fanflow.platforms.base.CapsWorkers.worker_cap`; None: it cannot tell)."""
    finished_at = 0.0
    _sub: Any = None
    _base: Invocation | None = None
    """Any invocation of the run, for :meth:`_recover` to copy."""
    _here: Invocation | None = None
    """The invocation :meth:`wait` runs on the caller's thread (see :meth:`start`)."""
    _others: Sequence[Invocation] = ()
    """The other roots, which :meth:`wait` hands to ``run_here`` with :attr:`_here`."""
    _outputs: list[Any] | None = None
    """The sinks' values, when :meth:`wait` read them already."""

    def __init__(self, dag: DAG, config: Config, platform: Platform) -> None:
        self.dag = dag
        self.config = config
        self.platform = platform
        self.secret = signing_secret(config)
        self.store: Store = open_store(config.store, retry_s=config.store_retry_s, secret=self.secret)
        self.run_id = dag.new_run_id()
        self.settings = _worker_settings(config)
        self._status_key = keys.status(self.run_id)
        self._leased: dict[int, str] = {}  # task -> owner, for tasks whose lease the watch has seen
        self.recoveries: dict[int, int] = {}
        self._timers: list[threading.Timer] = []

    # -- start -------------------------------------------------------------------
    def start(self, here: bool = False) -> None:
        """Subscribe, write the run state and the DAG, then invoke one worker per root group.

        ``here``: the caller has nothing to do until the run ends (no cancellation to
        watch for), so on a platform that can run invocations on the calling thread
        (the threads platform's ``run_here``) the first group is kept for :meth:`wait`
        to run there, then the run's invocations no worker thread has taken yet,
        saving the hand-offs to worker threads and back. Not with a
        ``timeout_s`` (a task on the caller's thread cannot be left behind) nor a
        progress bar (it is drawn by the waiting loop). Such a run subscribes to
        its channel only if it has not ended when the caller's share is done
        (see :meth:`wait`); any other, before its first invocation.
        """
        requirements.check(self.dag, self.config, self.platform)
        self.plan = plan_of(self.dag, refresh=True)  # planning wrote the annotations after this Run was made
        store, run, ttl = self.store, self.run_id, self.config.key_ttl_s
        dag_field: Any = self.dag
        if not self.platform.in_process:
            # Stored once for every worker that gets it by reference (fan-outs, recoveries), and
            # inline in the roots' payloads when small enough, saving them a round trip.
            data = encode(self.dag)
            self.encoded_size = len(data)
            store.put_many({keys.dag(run): store.dumps(data)[0]}, ttl)
            dag_field = data if len(data) <= self.config.inline_dag_max_bytes else None
        store.set_status(self._status_key, RUNNING, ttl)
        platform = self.platform
        runtime = (store, platform) if platform.in_process else None
        self.submitted_at = now = time.time()
        # On a platform that says how many workers could start now, that many share the roots.
        free = platform.free_slots() if self.settings.fanout == "capacity" else None
        groups = root_groups(self.dag, self.plan, free)
        first = groups[0]
        self._base = base = Invocation(  # also what a recovery copies, with a start, memory and id of its own
            run_id=run,
            start=tuple(first),
            memory_mb=self._memory_for(first[0]),
            store_url=self.config.store,
            platform=platform.name,
            platform_options=platform.options,
            settings=self.settings,
            dag=dag_field,
            invoked_at=now,
            runtime=runtime,
            inv_id=new_invocation_id(),
        )
        starts = [base]
        for g in groups[1:]:
            starts.append(base.with_start(tuple(g), self._memory_for(g[0]), now))
        if here and self._can_run_here():
            # The others go with it to run_here, which may hold them back for this thread.
            self._here, self._others = starts[0], starts[1:]
        else:
            self._sub = store.subscribe(keys.channel(run))
            self._invoke(starts)
        self._schedule_prewarms()

    def _schedule_prewarms(self) -> None:
        """Prewarm: start workers of a task's planned memory ``prewarm_s`` after the run starts.

        The plan puts it just ahead of the task's predicted start, to hide the
        cold start. Only platforms that can (:class:`KeepsWarmWorkers` whose
        ``prewarm`` returns True) do it; each one that fires is a ``prewarmed`` event.
        """
        wanted = self.plan.prewarm_s
        pool = supports(self.platform, KeepsWarmWorkers) if wanted else None
        if pool is None:
            return
        prewarm = pool.prewarm
        for t, delay in sorted(wanted.items(), key=lambda item: item[1]):
            timer = threading.Timer(max(0.0, float(delay)), self._prewarm_now, (prewarm, t))
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    def _prewarm_now(self, prewarm: Callable[[int], bool], t: int) -> None:
        memory = self._memory_for(t)
        try:
            if prewarm(memory):
                event = {"kind": "prewarmed", "task": t, "worker": "client", "t": time.time(), "memory_mb": memory}
                self.store.append_events(keys.events(self.run_id), [event], self.config.key_ttl_s)
        except FanflowError:
            log.warning("run %s: could not prewarm a worker for %s", self.run_id, self.dag.name(t), exc_info=True)

    def _invoke(self, invs: list[Invocation]) -> None:
        send(self.platform, invs, self.secret)

    def _can_run_here(self) -> bool:
        return self.config.timeout_s is None and runs_on_caller(self.platform) and not self._progress_wanted()

    def _memory_for(self, t: int) -> int:
        return self.plan.memory_for(t, self.config.memory_mb)

    # -- wait --------------------------------------------------------------------
    def wait(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Block until every sink is done; raise the run's error, timeout or cancellation."""
        sinks = set(self.dag.sinks)
        done: set[int] = set()
        if self._here is not None:
            inv, others, self._here, self._others = self._here, self._others, None, ()
            # Then its other roots and fan-outs no worker has taken; False: every worker slot is taken.
            ran = cast(RunsOnCaller, self.platform).run_here(inv, others)
            if ran:
                # Mostly the run ended on this thread: its sinks' outputs are there, no message needed
                # (and results() takes them as read here).
                values, _ = self.store.get_many([keys.output(self.run_id, t) for t in self.dag.sinks])
                if all(v is not MISSING for v in values):
                    self._outputs = values
                    self.finished_at = time.time()
                    return
            # Subscribed, then read again: what ended before the subscription (the others, on pool
            # threads) left its status and outputs in the store.
            self._sub = self.store.subscribe(keys.channel(self.run_id))
            done = self._poll(sinks)
            if not ran:
                self._invoke([inv])  # it queues like the others
        deadline = None if self.config.timeout_s is None else self.submitted_at + self.config.timeout_s
        next_poll = time.monotonic() + POLL_S
        watch_every = self.config.lease_ms / 2000
        next_watch = time.monotonic() + watch_every if not self.store.keeps_objects else float("inf")
        serving = supports(self.platform, ChecksServing)
        check_serving = None if serving is None else serving.check_serving
        next_health = time.monotonic() + HEALTH_S
        progress = _Progress(self) if self._progress_wanted() else None
        try:
            while done != sinks:
                if cancelled():
                    self._stop(CANCELLED)
                    raise RunCancelledError(f"run {self.run_id} was cancelled")
                if deadline is not None and time.time() > deadline:
                    self._stop(CANCELLED)
                    raise RunTimeoutError(f"run {self.run_id} did not finish within timeout_s={self.config.timeout_s}")
                message = self._sub.get(timeout=0.05 if progress else POLL_S)
                if message is not None:
                    if message == b"failed":
                        self._raise_failure()
                    elif message.startswith(b"sink:"):
                        done.add(int(message[5:]))
                    continue
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + POLL_S
                    done |= self._poll(sinks - done)
                if time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + watch_every
                    self._watch()
                if check_serving is not None and time.monotonic() >= next_health:
                    next_health = time.monotonic() + HEALTH_S
                    self._check_serving(check_serving)
                if progress:
                    progress.update()
        finally:
            if progress:
                progress.close(finished=done == sinks)
        self.finished_at = time.time()

    def _check_serving(self, check_serving: Callable[[], None]) -> None:
        """Liveness: a platform that no longer serves (host stopped, pool gone) ends the run now."""
        try:
            check_serving()
        except FanflowError as exc:
            self._stop(FAILED)  # workers that are still alive stop at their next status check
            raise type(exc)(f"run {self.run_id}: {exc}") from exc

    def _poll(self, pending: set[int]) -> set[int]:
        status = self.store.get_status(self._status_key)
        if status == FAILED:
            self._raise_failure()
        if status is None:
            raise RunStateLostError(
                f"run {self.run_id}: its state is gone from the store at {mask_url(self.config.store)} "
                "(restarted without persistence, or flushed); run it again, and turn on Redis AOF "
                "(appendonly yes) for runs to survive a restart"
            )
        order = sorted(pending)
        values, _ = self.store.get_many([keys.output(self.run_id, t) for t in order])
        return {t for t, v in zip(order, values, strict=True) if v is not MISSING}

    def _watch(self) -> None:
        """Re-invoke every task whose lease was seen alive and then expired without ``done``."""
        n = len(self.dag)
        leases = self.store.read_leases([keys.lease(self.run_id, t) for t in range(n)])
        lost = []
        for t, owner in enumerate(leases):
            if owner is None:
                if t in self._leased:
                    lost.append(t)
            elif owner == LEASE_DONE:
                self._leased.pop(t, None)
            else:
                self._leased[t] = owner
        for t in lost:
            self._recover(t)

    def _recover(self, t: int) -> None:
        """Hand lost task ``t`` to a new invocation, or fail the run after ``max_recoveries``."""
        tries = self.recoveries[t] = self.recoveries.get(t, 0) + 1
        owner = self._leased.pop(t)
        name = self.dag.name(t)
        if tries > self.config.max_recoveries:
            message = (
                f"task {name!r} was lost with its worker {tries} times (max_recoveries="
                f"{self.config.max_recoveries}): it may exceed its memory_mb or crash its process"
            )
            record = error_record(self.run_id, name, t, "fanflow.errors.TaskLostError", message, owner, tries)
            status, errors, ttl = self._status_key, keys.errors(self.run_id), self.config.key_ttl_s
            self.store.fail_run(status, errors, record, ttl, keys.channel(self.run_id))
            raise TaskLostError(message)
        assert self._base is not None
        inv = self._base.with_start((t,), self._memory_for(t), time.time())
        if self.dag.deps[t]:
            self.store.take_claim(keys.claim(self.run_id, t), inv.inv_id, self.config.key_ttl_s)
        log.warning("run %s: task %s lost its worker; re-invoking it (try %d)", self.run_id, name, tries)
        event = {"kind": "task_recovered", "task": t, "worker": owner, "t": time.time(), "attempt": tries}
        self.store.append_events(keys.events(self.run_id), [event], self.config.key_ttl_s)
        self._invoke([inv])

    def _stop(self, status: str) -> None:
        try:
            self.store.set_status(self._status_key, status, self.config.key_ttl_s)
        except FanflowError:
            log.warning("could not mark run %s as %s", self.run_id, status)

    def _raise_failure(self) -> None:
        records = self.store.read_list(keys.errors(self.run_id))
        if not records:
            raise StoreError(f"run {self.run_id} failed but left no error record")
        record = json.loads(records[0])
        task = self._task_name(record)
        try:
            (exc_obj,), _ = self.store.get_many([keys.error_object(self.run_id)])
        except ValueRejectedError:  # the record still names the task, the type and the traceback
            log.warning("run %s: the stored exception object fails its MAC; reporting the record only", self.run_id)
            exc_obj = MISSING
        if isinstance(exc_obj, FanflowError) and not isinstance(exc_obj, TaskFailedError):
            exc_obj.remote_traceback = record["traceback"]  # type: ignore[attr-defined]
            raise exc_obj
        platform_error = _fanflow_error_type(record["exc_type"])
        if exc_obj is MISSING and platform_error is not None:
            # Written by a platform that refused or lost an invocation: it knows task ids, we know names.
            raise platform_error(f"task {task!r}: {record['message']}")
        err = TaskFailedError(
            f"task {task!r} failed on attempt {record['attempt']}: "
            f"{record['exc_type'].rsplit('.', 1)[-1]}: {record['message']}",
            task=task,
            run_id=self.run_id,
            exc_type=record["exc_type"],
            remote_traceback=with_source_lines(record["traceback"], self.dag),
            attempt=record["attempt"],
            worker_id=record["worker"],
        )
        raise err from (exc_obj if isinstance(exc_obj, BaseException) else None)

    def _task_name(self, record: dict[str, Any]) -> str:
        """The failed task's name; a record written by a platform names it by id only."""
        task_id = record.get("task_id")
        if str(record["task"]).startswith("#") and isinstance(task_id, int) and 0 <= task_id < len(self.dag):
            return self.dag.name(task_id)
        return str(record["task"])

    def _progress_wanted(self) -> bool:
        if self.config.progress is not None:
            return self.config.progress
        return sys.stderr.isatty()

    # -- finish ------------------------------------------------------------------
    def results(self) -> tuple[Any, ...]:
        """The sinks' values in the order (and with the repeats) they were asked for."""
        order = self.dag.sinks
        values = self._outputs
        if values is None:
            values, _ = self.store.get_many([keys.output(self.run_id, t) for t in order])
        for t, v in zip(order, values, strict=True):
            if v is MISSING:
                raise StoreError(
                    f"run {self.run_id}: the output of sink {self.dag.name(t)!r} vanished before it was read"
                )
        outputs = self.dag.outputs
        if outputs == order:  # each sink asked for once, in order: the usual case
            return tuple(values)
        by_task = dict(zip(order, values, strict=True))
        return tuple(by_task[t] for t in outputs)

    def cleanup(self) -> None:
        """Delete every key of the run (never the event stream), named from the DAG."""
        for timer in self._timers:
            timer.cancel()
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        try:
            expanded: dict[int, Any] = {}
            if self.dag.maps:  # a run without fan-outs known only at run time needs no round trip here
                maps = sorted(self.dag.maps)
                sizes, _ = self.store.get_many([keys.map_size(self.run_id, m) for m in maps])
                expanded = {m: n for m, n in zip(maps, sizes, strict=True) if n is not MISSING}
            # A store that keeps objects has its workers in this process: they take no leases.
            run_keys = keys.run_keys(self.run_id, self.dag, expanded, leases=not self.store.keeps_objects)
            self.store.delete(list(run_keys))
        except FanflowError:
            log.warning("could not delete the keys of run %s; they expire after key_ttl_s", self.run_id)


_SETTINGS_KEPT = 64
_settings: dict[int, tuple[Config, WorkerSettings]] = {}
"""Worker settings by the id of the config they came from, with that config (held: its id stays its own)."""


def _worker_settings(config: Config) -> WorkerSettings:
    """The settings every worker of a run under ``config`` obeys: made once per config object (both are
    immutable, and the configs of repeated calls are kept ones, see fanflow.config)."""
    kept = _settings.get(id(config))
    if kept is not None and kept[0] is config:
        return kept[1]
    settings = WorkerSettings(
        key_ttl_s=config.key_ttl_s,
        lease_ms=config.lease_ms,
        max_value_bytes=config.max_value_bytes,
        metrics_upload=config.metrics_upload,
        max_recoveries=config.max_recoveries,
        store_retry_s=config.store_retry_s,
        fanout=config.fanout,
    )
    if len(_settings) >= _SETTINGS_KEPT:
        _settings.clear()
    _settings[id(config)] = (config, settings)
    return settings


def _fanflow_error_type(exc_type: str) -> type[FanflowError] | None:
    """The fanflow error class named ``fanflow.errors.<Name>``, except TaskFailedError; else None."""
    module, _, name = exc_type.rpartition(".")
    found = getattr(errors, name, None) if module == errors.__name__ else None
    if isinstance(found, type) and issubclass(found, FanflowError) and found is not TaskFailedError:
        return found
    return None


class _Progress:
    """A rich progress bar fed by counting ``task_finished`` events."""

    def __init__(self, run: Run) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._run = run
        self._stream = keys.events(run.run_id)
        self._after = "0"
        self._done = 0
        self._bar: Any = None
        self._columns = (
            TextColumn(f"[bold]{run.dag.sink_name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self._progress_cls = Progress
        self._console = Console(stderr=True)
        self._shown_task: Any = None

    def update(self) -> None:
        run = self._run
        if self._bar is None:
            if time.time() - run.submitted_at < PROGRESS_AFTER_S:
                return
            # On stderr, like the terminal check that turns it on: results on stdout stay clean.
            self._bar = self._progress_cls(*self._columns, transient=False, console=self._console)
            self._bar.start()
            self._shown_task = self._bar.add_task("run", total=len(run.dag))
        events = run.store.read_events(self._stream, self._after)
        if events:
            self._after = events[-1][0]
            self._done += sum(1 for _, e in events if e.get("kind") == "task_finished")
            self._bar.update(self._shown_task, completed=self._done)

    def close(self, finished: bool) -> None:
        """Stop the bar; a finished run shows every task done (the last workers' events may still trail)."""
        if self._bar is not None:
            self._bar.update(self._shown_task, completed=len(self._run.dag) if finished else self._done)
            self._bar.stop()
