"""The client session: platforms shared by the runs of this process, and the run entry points.

Platforms are kept per (platform, store, max_workers, pool, ...) and counted by
the runs in flight. A cheap platform (threads, an http invoker) stays for the
life of the process. A platform that sets ``keep_warm = False`` holds resources
(a pool of worker processes the client started) and is kept *warm* the way a
FaaS platform keeps a function instance: when its last run ends it stays up for
``config.keep_alive_s`` (default 60 s), so the next ``compute()`` of the session
finds its worker processes running, and is closed when that idle period passes
without a run, when more than :data:`IDLE_MAX` such platforms sit idle (the
oldest goes first), or at interpreter exit, whichever comes first. A platform a
failed or cancelled run had to halt is unregistered at once: the next run gets
a fresh one.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import fanflow.worker  # noqa: F401 - loads the worker layer, which registers the handler threads workers run
from fanflow.client.hooks import STANDARD_HOOKS, OnPlanned, RunHook
from fanflow.client.run import Run
from fanflow.config import Config
from fanflow.dag.graph import DAG
from fanflow.errors import NestedRunError, RunCancelledError
from fanflow.planning.plan import apply_plan, plans_nothing
from fanflow.platforms import Platform, client_platform
from fanflow.platforms.base import CapsWorkers, RunsOnCaller, supports
from fanflow.store.base import CANCELLED

log = logging.getLogger(__name__)

IDLE_MAX = 2
"""Idle kept-warm platforms (pools of worker processes) a session holds at most."""


class RunFuture(concurrent.futures.Future[Any]):
    """A ``concurrent.futures.Future`` for one run; ``cancel()`` stops the run.

    The future stays *pending* while the run is in flight, so the standard
    ``cancel()`` succeeds until the result is in, and the run then stops its
    workers and cleans up its keys.
    """

    run_id: str = ""


@dataclass(eq=False)
class _Entry:
    """A platform of the session and the runs using it."""

    platform: Platform
    caller: RunsOnCaller | None
    """The platform as :class:`RunsOnCaller`, if it can run a run's workers on its client's thread."""
    closes: bool
    """The platform is closed when its last run ends (see :func:`_closes_when_idle`), read once."""
    runs: int = 0
    idle: threading.Timer | None = None
    """Closes the platform when its keep-alive period ends; set only while no run uses it."""
    idle_order: int = 0


def _closes_when_idle(platform: Platform) -> bool:
    return not getattr(platform, "keep_warm", True)


def _close(platform: Platform) -> None:
    try:
        platform.close()
    except Exception:  # a store gone away must not turn the end of a session into a crash
        log.warning("could not close the %s platform cleanly", platform.name, exc_info=True)


class Session:
    def __init__(self) -> None:
        self._platforms: dict[tuple[Any, ...], _Entry] = {}
        self._lock = threading.Lock()
        self._last_key: tuple[Config | None, tuple[Any, ...]] = (None, ())
        """The last config a key was made for, and its key."""
        self._idle_order = itertools.count()

    def _key(self, config: Config) -> tuple[Any, ...]:
        last = self._last_key  # one tuple read: threads swapping it never mix a config and another's key
        if last[0] is config:
            return last[1]  # a program's runs mostly share one config object (frozen: its key stays)
        key = (
            config.platform,
            config.store,
            config.max_workers,
            config.pool,
            config.idle_timeout_s,
            config.bind_cpus,
            config.keep_alive_s,
            config.secret,
            config.endpoints,
        )
        self._last_key = (config, key)
        return key

    def acquire(self, config: Config) -> Platform:
        """The platform for a run of ``config``: the session's (warm) one, else a new one."""
        return self._acquire(self._key(config), config)

    def _acquire(self, key: tuple[Any, ...], config: Config) -> Platform:
        with self._lock:
            entry = self._platforms.get(key)
            if entry is None:
                platform = client_platform(config)
                entry = self._platforms[key] = _Entry(
                    platform, supports(platform, RunsOnCaller), _closes_when_idle(platform)
                )
            elif entry.idle is not None:
                entry.idle.cancel()
                entry.idle = None
            if entry.caller is not None and entry.caller.runs_this_thread():
                # The new run would queue behind the very tasks that wait for it: with every
                # worker thread in such a task, nothing would ever run.
                raise NestedRunError(
                    "compute() or submit() was called inside a task, for the threads platform that runs the "
                    "task: the new run needs worker threads its caller holds, so it could wait forever. "
                    "Build the whole DAG before the run (use fanflow.map for fan-outs known only at run time), "
                    "or give the inner run a config of its own (another platform or max_workers)"
                )
            entry.runs += 1
            return entry.platform

    def release(self, config: Config, platform: Platform) -> None:
        """A run of ``config`` on ``platform`` ended: keep the platform warm, or close it."""
        self._release(self._key(config), config, platform)

    def _release(self, key: tuple[Any, ...], config: Config, platform: Platform) -> None:
        evicted: list[Platform] = []
        with self._lock:
            entry = self._platforms.get(key)
            if entry is None or entry.platform is not platform:
                return  # halted and unregistered by its run
            entry.runs -= 1
            if entry.runs or not entry.closes:
                return
            if config.keep_alive_s <= 0:
                del self._platforms[key]
                evicted.append(platform)
            else:
                entry.idle = threading.Timer(config.keep_alive_s, self._expire, (key, entry))
                entry.idle.daemon = True
                entry.idle_order = next(self._idle_order)
                entry.idle.start()
                evicted = self._evict_beyond(IDLE_MAX)
        for old in evicted:
            _close(old)

    def _evict_beyond(self, limit: int) -> list[Platform]:
        """Unregister the oldest idle platforms beyond ``limit`` (lock held); the caller closes them."""
        idle = sorted(
            ((k, e) for k, e in self._platforms.items() if e.idle is not None), key=lambda ke: ke[1].idle_order
        )
        evicted = []
        for k, e in idle[: max(0, len(idle) - limit)]:
            assert e.idle is not None
            e.idle.cancel()
            del self._platforms[k]
            evicted.append(e.platform)
        return evicted

    def _expire(self, key: tuple[Any, ...], entry: _Entry) -> None:
        """The keep-alive period of ``entry`` passed: close it unless a run took it meanwhile."""
        with self._lock:
            if self._platforms.get(key) is not entry or entry.runs or entry.idle is None:
                return
            entry.idle = None
            del self._platforms[key]
        _close(entry.platform)

    def _halt(self, config: Config, platform: Platform) -> None:
        """Stop the platform's workers now, if it was started for this run alone (not a shared pool).

        It is unregistered first, so no later run is handed a closed platform.
        """
        key = self._key(config)
        with self._lock:
            entry = self._platforms.get(key)
            if entry is None or entry.platform is not platform or entry.runs > 1 or not entry.closes:
                return
            del self._platforms[key]
        _close(platform)

    def close_idle(self) -> None:
        """Close now every platform no run is using, kept warm or kept for the process; runs in flight keep theirs.

        The next run starts a new platform, with nothing of the earlier runs: no
        warm worker and no measurement (the threads platform's choice to keep a
        run on one thread is learnt from the runs before it).
        """
        with self._lock:
            evicted = self._evict_beyond(0)
            for key, entry in list(self._platforms.items()):
                if not entry.runs:
                    del self._platforms[key]
                    evicted.append(entry.platform)
        for platform in evicted:
            _close(platform)

    def close(self) -> None:
        """Close every platform of the session, warm or in use (interpreter exit)."""
        with self._lock:
            entries, self._platforms = list(self._platforms.values()), {}
        for entry in entries:
            if entry.idle is not None:
                entry.idle.cancel()
            _close(entry.platform)

    # -- running -------------------------------------------------------------------
    def execute(
        self,
        dag: DAG,
        config: Config,
        cancelled: Callable[[], bool] | None = None,
        hooks: Sequence[RunHook] = (),
    ) -> tuple[Any, ...]:
        """Run ``dag`` to the end and return its sinks' values, cleaning up on every path.

        ``cancelled`` is polled while the run is in flight (a future's cancel). Without
        it the calling thread only waits, so it may run the first workers itself
        (:meth:`Run.start`'s ``here``). ``hooks`` hear of the run after the standard
        ones (:mod:`fanflow.client.hooks`).
        """
        planned, started, ending, ended = _moments((*STANDARD_HOOKS, *hooks) if hooks else STANDARD_HOOKS)
        key = self._key(config)  # once for the run's acquire and release
        platform = self._acquire(key, config)
        try:
            run = Run(dag, config, platform)
            caps = supports(platform, CapsWorkers)
            run.max_workers = caps.worker_cap() if caps else None  # recorded: plans replay the run's starts at it
            if not plans_nothing(config):  # else the run keeps Run's no-plan values (no prediction, planning_s 0)
                plan = apply_plan(dag, config, platform)
                run.planning_s, run.predicted_makespan_s = plan.planning_s, plan.predicted_makespan_s
                run.predicted_p10_s, run.predicted_p90_s = plan.predicted_p10_s, plan.predicted_p90_s
                run.plan_kind, run.calibration = plan.kind, plan.calibration
            for hook in planned:
                hook.planned(run)
            error: BaseException | None = None
            try:
                run.start(here=cancelled is None)
                for hook in started:
                    hook.started(run)
                try:
                    run.wait() if cancelled is None else run.wait(cancelled)
                except KeyboardInterrupt:
                    run._stop(CANCELLED)
                    raise
                return run.results()
            except BaseException as exc:
                error = exc
                raise
            finally:
                for hook in ending:
                    hook.ending(run, error)
                if error is not None:
                    self._halt(config, platform)  # no worker of a failed or cancelled run may write after cleanup
                run.cleanup()
                for hook in ended:
                    hook.ended(run, error)
        finally:
            self._release(key, config, platform)

    def submit(self, dag: DAG, config: Config, single: bool = False, hooks: Sequence[RunHook] = ()) -> RunFuture:
        """Start ``dag`` in the background; the future's result is the tuple of sink
        values, or the one value when ``single``."""
        future = RunFuture()

        def named(run: Run) -> None:
            future.run_id = run.run_id

        def target() -> None:
            try:
                values = self.execute(dag, config, future.cancelled, (OnPlanned(named), *hooks))
            except RunCancelledError:
                return  # the future is already in its cancelled state
            except BaseException as exc:
                if future.set_running_or_notify_cancel():
                    future.set_exception(exc)
                return
            if future.set_running_or_notify_cancel():
                future.set_result(values[0] if single else values)

        threading.Thread(target=target, name="fanflow-run", daemon=True).start()
        return future


_Moments = tuple[tuple[RunHook, ...], ...]

_standard_moments: tuple[tuple[RunHook, ...], _Moments] = ((), ())
"""The standard hooks and their moments, worked out once (again if the standard hooks change)."""


def _moments(hooks: tuple[RunHook, ...]) -> _Moments:
    """``hooks`` per moment (planned, started, ending, ended), in order, each without the hooks that
    leave that moment to :class:`RunHook`'s empty method: a call that does nothing, per hook and run."""
    global _standard_moments
    if hooks is _standard_moments[0]:
        return _standard_moments[1]
    moments = tuple(
        tuple(h for h in hooks if getattr(type(h), moment) is not getattr(RunHook, moment))
        for moment in ("planned", "started", "ending", "ended")
    )
    if hooks is STANDARD_HOOKS:
        _standard_moments = (hooks, moments)
    return moments


_session: Session | None = None
_session_lock = threading.Lock()


def session() -> Session:
    """The process-wide session (created on first use, closed at exit)."""
    global _session
    if _session is None:
        with _session_lock:
            if _session is None:
                _session = Session()
                atexit.register(_session.close)
    return _session


def gather(futures: Sequence[concurrent.futures.Future[Any]]) -> list[Any]:
    """The results of several futures, in order; raises the first error met."""
    return [f.result() for f in futures]
