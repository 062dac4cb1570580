"""Shared fixtures.

``run_config`` is parametrized over every platform the suite can run here, so a
test that takes it runs once per platform. Tests that need Redis start their
own ``redis-server`` on a free port (see ``redis_url``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from platforms_support import GATEWAY_SECRET, start_cluster, start_gateways, stop

import fanflow
from fanflow.client.session import session

PLATFORMS = ["threads", "processes"]
SHAPE_PLATFORMS = ["cluster", "http", "ray"]
"""Platforms only the DAG-shape suite (tests/test_shapes.py) runs on as well, to keep the suite's time:
processes on a Redis Cluster, 2 gateways on localhost, a local Ray instance."""
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` a test owns: it can kill it and start it again on the same port."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir), *self.options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private ``redis-server`` on a free port for the whole session (no persistence)."""
    port = _free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


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


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray instance (2 CPUs) for the session; skips when Ray is not installed."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Close the pools a test's runs kept warm before its fixtures stop their redis-servers, so no
    idle pool outlives the store it queues in (tests of keep-alive look within one test)."""
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
