"""Shared fixtures.

``run_config`` is parametrized over every platform the suite can run here, so a
test that takes it runs once per platform. Tests that need Redis start their
own ``redis-server`` on a free port (see ``redis_url``). Helpers and shared tasks live in
tests/support.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
from support import GATEWAY_SECRET, RedisServer, install_hint, start_cluster, start_gateways, stop

import fanflow
from fanflow.client.session import session

PLATFORMS = ["threads", "processes"]
SHAPE_PLATFORMS = ["cluster", "http", "ray"]
"""Platforms only the DAG-shape suite (tests/test_shapes.py) runs on as well, to keep the suite's time:
processes on a Redis Cluster, 2 gateways on localhost, a local Ray instance."""


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private ``redis-server`` on a free port for the whole session (no persistence)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), "--save", "", "--appendonly", "no").start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-master Redis Cluster (no replicas) for the whole session."""
    ports, procs = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield f"redis+cluster://127.0.0.1:{ports[0]}"
    stop(procs)


@pytest.fixture(scope="session")
def gateway_urls() -> Iterator[list[str]]:
    """Two ``fanflow gateway`` processes on localhost, verifying with ``GATEWAY_SECRET``."""
    urls, procs = start_gateways(2)
    yield urls
    stop(procs)


@pytest.fixture
def serving_procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts with ``support.start_serving``; killed with their workers (by process group)
    if still running at its end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray instance (2 CPUs) for the session; skips when Ray is not installed."""
    ray = pytest.importorskip("ray", reason=install_hint("ray"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Close the platforms a test's runs kept before its fixtures stop their redis-servers, so no
    idle pool outlives the store it queues in (tests of keep-alive look within one test), and so
    each test starts from new platforms: the embedded default's threads platform keeps what it
    measured of earlier runs (whether to spread a run over threads), which would make a test's
    worker counts depend on the tests before it."""
    session().close_idle()
    yield


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``run_config`` runs each test on every platform of PLATFORMS, the DAG shapes on SHAPE_PLATFORMS too."""
    if "run_config" in metafunc.fixturenames:
        extra = SHAPE_PLATFORMS if metafunc.module.__name__.rsplit(".", 1)[-1] == "test_shapes" else []
        metafunc.parametrize("run_config", PLATFORMS + extra, indirect=True)


@pytest.fixture
def run_config(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> fanflow.Config:
    """A config for each platform under test (progress off, history in a temp dir)."""
    meta = tmp_path_factory.mktemp("meta") / "metadata.db"
    if request.param == "cluster":
        return fanflow.Config(
            platform="processes",
            store=request.getfixturevalue("redis_cluster_url"),
            max_workers=2,
            progress=False,
            metadata=f"sqlite:///{meta}",
        )
    if request.param == "http":
        return fanflow.Config(
            platform="http",
            store=request.getfixturevalue("redis_url"),
            endpoints=",".join(request.getfixturevalue("gateway_urls")),
            secret=GATEWAY_SECRET,
            progress=False,
            metadata=f"sqlite:///{meta}",
        )
    if request.param == "ray":
        request.getfixturevalue("ray_local")
        return fanflow.Config(
            platform="ray", store=request.getfixturevalue("redis_url"), progress=False, metadata=f"sqlite:///{meta}"
        )
    if request.param == "threads":
        return fanflow.Config(platform="threads", store="memory://", progress=False, metadata=f"sqlite:///{meta}")
    if request.param == "processes":
        return fanflow.Config(
            platform="processes",
            store=request.getfixturevalue("redis_url"),
            max_workers=2,
            progress=False,
            metadata=f"sqlite:///{meta}",
        )
    raise AssertionError(f"no fixture for platform {request.param}")
