"""The live dashboard and run replay: ``fanflow dashboard``, or ``compute(..., dashboard=True)``.

Importing this package is cheap (no web framework): the client calls
:mod:`fanflow.dashboard.tracking` on every run, and the server
(:mod:`fanflow.dashboard.app`, FastAPI) is imported only when a dashboard is
actually served. See ``docs/dashboard.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fanflow.client.run import Run

__all__ = ["open_for_run"]


def open_for_run(run: Run) -> None:
    """Show ``run`` in this process's dashboard: start it if needed, print its URL, open a browser.

    Never raises: a dashboard that cannot start is logged, and the run goes on.
    """
    from fanflow.dashboard.embedded import open_for_run as open_run

    open_run(run)
