"""The client session: platforms shared by the runs of this process, and the run entry points.

Platforms are kept per (platform, store, max_workers, pool) and reference
counted by the runs in flight. A platform that sets ``keep_warm = False`` (a pool
of worker processes started for the client's runs) is closed when its last run
ends; a cheap one (threads) stays for the life of the process.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import Any

from fanflow.client.run import Run
from fanflow.config import Config
from fanflow.dag.graph import DAG
from fanflow.dashboard.tracking import note_end, note_start
from fanflow.errors import RunCancelledError
from fanflow.metrics.recorder import record_run
from fanflow.planning import apply_plan
from fanflow.platforms import Platform, client_platform
from fanflow.worker import handle


class RunFuture(concurrent.futures.Future[Any]):
    """A ``concurrent.futures.Future`` for one run; ``cancel()`` stops the run.

    The future stays *pending* while the run is in flight, so the standard
    ``cancel()`` succeeds until the result is in, and the run then stops its
    workers and cleans up its keys.
    """

    run_id: str = ""


class Session:
    def __init__(self) -> None:
        self._platforms: dict[tuple[Any, ...], tuple[Platform, int]] = {}
        self._lock = threading.Lock()

    def _key(self, config: Config) -> tuple[Any, ...]:
        return (
            config.platform,
            config.store,
            config.max_workers,
            config.pool,
            config.idle_timeout_s,
            config.secret,
            config.endpoints,
        )

    def acquire(self, config: Config) -> Platform:
        key = self._key(config)
        with self._lock:
            entry = self._platforms.get(key)
            if entry is None:
                entry = (client_platform(config, handle), 0)
            self._platforms[key] = (entry[0], entry[1] + 1)
            return entry[0]

    def release(self, config: Config, platform: Platform) -> None:
        """A run of ``platform`` ended; close the platform when it was the last and is not kept warm."""
        key = self._key(config)
        with self._lock:
            entry = self._platforms.get(key)
            if entry is None or entry[0] is not platform:
                return  # halted, and already replaced for later runs
            if entry[1] > 1 or getattr(platform, "keep_warm", True):
                self._platforms[key] = (platform, entry[1] - 1)
                return
            del self._platforms[key]
        platform.close()

    def _halt(self, config: Config, platform: Platform) -> None:
        """Stop the platform's workers now, if it was started for this run alone (not a shared pool).

        It leaves the registry first, so a run submitted while it stops gets a new platform
        instead of a closed one.
        """
        key = self._key(config)
        with self._lock:
            entry = self._platforms.get(key)
            if entry is None or entry[0] is not platform:
                return
            if entry[1] > 1 or getattr(platform, "keep_warm", True):
                return
            del self._platforms[key]
        platform.close()

    def close(self) -> None:
        with self._lock:
            entries, self._platforms = list(self._platforms.values()), {}
        for platform, _ in entries:
            platform.close()

    # -- running -------------------------------------------------------------------
    def execute(
        self,
        dag: DAG,
        config: Config,
        cancelled: Callable[[], bool] = lambda: False,
        on_start: Callable[[Run], None] | None = None,
    ) -> tuple[Any, ...]:
        """Run ``dag`` to the end and return its sinks' values, cleaning up on every path."""
        platform = self.acquire(config)
        try:
            run = Run(dag, config, platform)
            plan = apply_plan(dag, config)
            run.planning_s, run.predicted_makespan_s = plan.planning_s, plan.predicted_makespan_s
            if on_start is not None:
                on_start(run)
            error: BaseException | None = None
            try:
                run.start()
                note_start(run)
                try:
                    run.wait(cancelled)
                except KeyboardInterrupt:
                    run._stop("cancelled")
                    raise
                return run.results()
            except BaseException as exc:
                error = exc
                raise
            finally:
                note_end(run, error)
                if error is not None:
                    self._halt(config, platform)  # no worker of a failed or cancelled run may write after cleanup
                run.cleanup()
                record_run(run, error)
        finally:
            self.release(config, platform)

    def submit(
        self, dag: DAG, config: Config, single: bool = False, on_start: Callable[[Run], None] | None = None
    ) -> RunFuture:
        """Start ``dag`` in the background; the future's result is the tuple of sink
        values, or the one value when ``single``."""
        future = RunFuture()

        def started(run: Run) -> None:
            future.run_id = run.run_id
            if on_start is not None:
                on_start(run)

        def target() -> None:
            try:
                values = self.execute(dag, config, future.cancelled, started)
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
