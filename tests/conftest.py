"""Shared fixtures.

``run_config`` is parametrized over every platform the suite can run here, so a
test that takes it runs once per platform. Tests that need Redis start their
own ``redis-server`` on a free port (see ``redis_url``).
"""

from __future__ import annotations

import pytest

import fanflow

PLATFORMS = ["threads"]


@pytest.fixture(params=PLATFORMS)
def run_config(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> fanflow.Config:
    """A config for each platform under test (progress off, history in a temp dir)."""
    meta = tmp_path_factory.mktemp("meta") / "metadata.db"
    if request.param == "threads":
        return fanflow.Config(platform="threads", store="memory://", progress=False, metadata=f"sqlite:///{meta}")
    raise AssertionError(f"no fixture for platform {request.param}")
