"""A pytest plugin that runs Dask's own test files on fanflow, and records every test's outcome.

``-p fanflow_schedulers --schedulers=fanflow`` routes every scheduler Dask can
name (``sync``, ``threads``, ``processes`` and their aliases) and the default
one to :func:`fanflow.dask.get`, with the config fanflow loads from
``FANFLOW_*`` (progress bar off). ``--schedulers=dask`` leaves Dask's own.
``--outcomes=FILE`` writes ``{test id: outcome}`` as JSON, for ``compare.py``
to set the two runs side by side; an outcome is ``passed`` (an xfail test that
passes too), ``failed``, ``error`` (its setup or teardown failed), ``skipped``
or ``xfailed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fanflow")
    group.addoption("--schedulers", choices=("dask", "fanflow"), default="dask", help="whose schedulers run Dask")
    group.addoption("--outcomes", default=None, help="write each test's outcome to this JSON file")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Outcomes(config.getoption("outcomes")), "fanflow-outcomes")
    if config.getoption("schedulers") != "fanflow":
        return
    import dask
    import dask.base

    import fanflow
    import fanflow.dask

    settings = fanflow.Config.load(progress=False)

    def get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return fanflow.dask.get(dsk, keys, config=settings, **kwargs)

    # The table is the one get_scheduler reads: replace its entries in place, so every
    # module that imported it sees fanflow; the config entry is what "no scheduler" means.
    for name in list(dask.base.named_schedulers):
        dask.base.named_schedulers[name] = get
    dask.config.set(scheduler=get)


class _Outcomes:
    """Each test's outcome: failed or error if any phase failed, else what its call (or skip) was."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        seen = self.outcomes.get(report.nodeid)
        if report.failed:
            if seen not in ("failed", "error"):
                self.outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
        elif seen is not None:
            return
        elif report.skipped:
            self.outcomes[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        elif report.when == "call":
            self.outcomes[report.nodeid] = "passed"

    def pytest_sessionfinish(self) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(self.outcomes, indent=0, sort_keys=True))
