"""Who hears of a run: the hooks a session calls at four moments of every run.

The dashboard's tracking and the metrics history are hooks like any caller's
(``compute(dashboard=True)`` opening a browser, a test taking the run id):
the session calls every hook of a run, the standard ones first, at each
moment, in order:

- :meth:`RunHook.planned`: the run has its id and plan; nothing is invoked yet;
- :meth:`RunHook.started`: the roots are invoked;
- :meth:`RunHook.ending`: the run is over (``error`` says how) and its keys are
  still in the store;
- :meth:`RunHook.ended`: its keys are deleted (the event stream stays until
  history has it).

The standard hooks never raise; a caller's hook that raises in ``planned``
stops the run before it starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fanflow.dashboard.tracking import note_end, note_start
from fanflow.metrics.recorder import record_run

if TYPE_CHECKING:
    from fanflow.client.run import Run


class RunHook:
    """A listener of runs; override the moments you need (each does nothing here)."""

    def planned(self, run: Run) -> None:
        """The run has its id and plan; no worker is invoked yet."""

    def started(self, run: Run) -> None:
        """The run's roots are invoked."""

    def ending(self, run: Run, error: BaseException | None) -> None:
        """The run is over (``error`` is None when it succeeded); its keys are still in the store."""

    def ended(self, run: Run, error: BaseException | None) -> None:
        """The run's keys are deleted."""


class OnPlanned(RunHook):
    """Calls ``callback(run)`` once the run has its id, before anything is invoked."""

    def __init__(self, callback: Callable[[Run], None]) -> None:
        self._callback = callback

    def planned(self, run: Run) -> None:
        self._callback(run)


class _DashboardTracking(RunHook):
    """The started document a dashboard draws a run in flight from, and its errors at the end."""

    def started(self, run: Run) -> None:
        note_start(run)

    def ending(self, run: Run, error: BaseException | None) -> None:
        note_end(run, error)


class _History(RunHook):
    """The run's metrics, built from its events and saved to the metadata store in the background."""

    def ended(self, run: Run, error: BaseException | None) -> None:
        record_run(run, error)


STANDARD_HOOKS: tuple[RunHook, ...] = (_DashboardTracking(), _History())
"""Called for every run, before the caller's own hooks."""
