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

import fanflow

PLATFORMS = ["threads", "processes"]
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


@pytest.fixture(params=PLATFORMS)
def run_config(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> fanflow.Config:
    """A config for each platform under test (progress off, history in a temp dir)."""
    meta = tmp_path_factory.mktemp("meta") / "metadata.db"
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
