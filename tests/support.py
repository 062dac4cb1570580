"""The one support module of the test suite: shared tasks, waits, ports and real backends.

- ``inc`` and ``add``: the small tasks most tests build DAGs from (module level, so worker
  processes, gateways and Ray workers import them from here).
- ``wait_until(predicate, timeout, what)``: the only way a test waits; it polls, never sleeps blindly.
- ``free_port``, ``RedisServer``, ``start_cluster``, ``start_gateways``, ``stop``: real
  ``redis-server``, Redis Cluster and ``fanflow gateway`` processes on free ports.
- ``bump``: a counter in a file, for tasks that run in other processes.
- ``processes_config(store, tmp_path, workers=2, **options)``: the config of a client-started pool of
  ``workers`` worker processes on that Redis, its history in ``tmp_path``.
- ``install_hint(extra)``: the reason to give ``pytest.importorskip`` when an optional extra is missing.

Optional packages (httpx, ray, ...) are imported where they are used, so the suite loads with only
the ``dev`` extra installed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

import fanflow
from fanflow.store.redis import SERVER_ENV

T = TypeVar("T")

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
GATEWAY_SECRET = "gateway-test-secret"

_CLUSTER_NODE = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no")
_CREATE = ("--cluster-replicas", "0", "--cluster-yes")
_GATEWAY = (sys.executable, "-m", "fanflow.cli", "gateway", "--host", "127.0.0.1")


# -- tasks ----------------------------------------------------------------------------------------
@fanflow.task
def inc(x: int) -> int:
    return x + 1


@fanflow.task
def add(a: int, b: int) -> int:
    return a + b


# -- waiting --------------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail after ``timeout`` s.

    ``what`` completes the sentence "timed out after N s waiting for ...".
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def install_hint(extra: str) -> str:
    """The skip reason of a test whose optional ``extra`` is not installed: ``pytest.importorskip(m, reason=...)``."""
    return f'needs the {extra} extra: pip install "fanflow[{extra}]"'


def bump(path: str, by: int = 1) -> int:
    """Add ``by`` to the integer in file ``path`` (created at 0) under a lock; the new value."""
    file = Path(path)
    file.touch(exist_ok=True)
    with file.open("r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        value = int(f.read() or 0) + by
        f.seek(0)
        f.truncate()
        f.write(str(value))
    return value


# -- ports and processes --------------------------------------------------------------------------
def processes_config(store: str, tmp_path: Path, workers: int = 2, **options: Any) -> fanflow.Config:
    """A pool of ``workers`` worker processes this client starts, on the Redis ``store``, history in ``tmp_path``."""
    return fanflow.Config(
        platform="processes",
        store=store,
        max_workers=workers,
        progress=False,
        metadata=f"sqlite:///{tmp_path / 'meta.db'}",
        **options,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    """Wait until ``proc`` listens on ``port``; fail at once if it exits first."""

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with status {proc.returncode} before listening on port {port}")
        return _accepts(port)

    wait_until(up, timeout, f"{what} to listen on port {port}", interval=0.05)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the processes we started (each by its own handle), killing laggards."""
    for proc in procs:
        with suppress(OSError):
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class RedisServer:
    """A ``redis-server`` a test owns on a free port: it can kill it and start it again on the same port."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir), *self.options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **SERVER_ENV},
        )
        try:
            wait_port(self.port, self.proc, "redis-server")
        except AssertionError:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop([self.proc])
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def start_cluster(workdir: Path, masters: int = 3) -> tuple[list[int], list[subprocess.Popen[bytes]]]:
    """A Redis Cluster of ``masters`` masters and no replicas; its ports and processes."""
    # Distinct ports, no one's bus port another's: a port just closed can be handed out again at once, and
    # two nodes given one port failed the fixture (and every cluster test with it) on a directory of that name.
    ports: list[int] = []
    while len(ports) < masters:
        port = _cluster_port()
        if all(port != p and abs(port - p) != 10000 for p in ports):
            ports.append(port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = workdir / str(port)
            node_dir.mkdir()
            procs.append(
                subprocess.Popen(
                    [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", *_CLUSTER_NODE],
                    cwd=node_dir,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, **SERVER_ENV},
                )
            )
        for port, proc in zip(ports, procs, strict=True):
            wait_port(port, proc, "redis-server (cluster node)")
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), *_CREATE],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(
            lambda: all(redis.Redis(port=p).cluster("info").get("cluster_state") == "ok" for p in ports),
            30,
            "the Redis Cluster to reach cluster_state:ok",
            interval=0.1,
        )
    except BaseException:
        stop(procs)
        raise
    return ports, procs


def start_gateways(
    count: int, max_workers: int = 2, *options: str, ports: list[int] | None = None
) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    """``count`` gateways (``fanflow gateway [options]``) on localhost sharing :data:`GATEWAY_SECRET`, on
    ``ports`` (default: free ones); URLs and processes."""
    httpx = pytest.importorskip("httpx", reason=install_hint("http"))
    env = {
        **os.environ,
        "FANFLOW_SECRET": GATEWAY_SECRET,
        "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path),
    }
    urls, procs = [], []

    def healthy(url: str, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"fanflow gateway at {url} exited with status {proc.returncode}")
        try:
            return bool(httpx.get(f"{url}/healthz", timeout=1).status_code == 200)
        except httpx.TransportError:
            return False

    try:
        for i in range(count):
            port = ports[i] if ports else free_port()
            command = [*_GATEWAY, "--port", str(port), "--max-workers", str(max_workers), "--idle-timeout", "30"]
            procs.append(
                subprocess.Popen(
                    [*command, *options],
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs, strict=True):
            wait_until(lambda u=url, p=proc: healthy(u, p), 30, f"the fanflow gateway at {url}", interval=0.1)
    except BaseException:
        stop(procs)
        raise
    return urls, procs


def gateway_payload(
    store_url: str, secret: str = GATEWAY_SECRET, endpoints: Sequence[str] = ("http://127.0.0.1:9",)
) -> bytes:
    """A signed payload for a run that does not exist: a gateway accepts it (202) and its worker exits at once
    (before it would post anything to ``endpoints``)."""
    from fanflow.platforms.invocation import Invocation, WorkerSettings, sign

    inv = Invocation(
        run_id="no-such-run",
        start=(0,),
        memory_mb=1769,
        store_url=store_url,
        platform="http",
        platform_options={"endpoints": list(endpoints)},
        settings=WorkerSettings(key_ttl_s=60, lease_ms=30_000, max_value_bytes=1 << 20),
        invoked_at=time.time(),
    )
    return sign(inv, secret.encode())


def start_serving(
    procs: list[subprocess.Popen[str]], command: str, url: str, secret: str, tests_dir: str
) -> subprocess.Popen[str]:
    """``fanflow gateway`` or ``fanflow worker-pool --name gone`` on store ``url`` (one worker), in a session
    of its own (so ``os.killpg`` ends its workers too), stderr piped; returned once it advertises its pool.
    Its workers import tasks from ``tests_dir``."""
    args = [sys.executable, "-m", "fanflow.cli", command, "--store", url, "--max-workers", "1"]
    args += ["--host", "127.0.0.1", "--port", str(free_port())] if command == "gateway" else ["--name", "gone"]
    path = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "FANFLOW_SECRET": secret, "FANFLOW_METADATA": "none", "PYTHONPATH": path}
    out = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(args, env=env, text=True, start_new_session=True, **out)  # type: ignore[call-overload]
    procs.append(proc)
    client = redis.Redis.from_url(url)

    def advertised() -> bool:
        assert proc.poll() is None, f"fanflow {command} exited at start"
        return any(client.scan_iter(match="ff:pool:*:alive"))

    wait_until(advertised, 30, f"fanflow {command} to serve its pool", interval=0.05)
    return proc
