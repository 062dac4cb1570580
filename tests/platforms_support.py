"""Real backends for the platform tests: a 3-master Redis Cluster and fanflow gateways, on free ports.

Each helper starts real processes (``redis-server --cluster-enabled yes`` and
``redis-cli --cluster create``; ``python -m fanflow.cli gateway``) and returns
once they answer, so the tests exercise the same code paths as a deployment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import httpx
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
GATEWAY_SECRET = "gateway-test-secret"

_CLUSTER_NODE = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no")
_CREATE = ("--cluster-replicas", "0", "--cluster-yes")
_GATEWAY = (sys.executable, "-m", "fanflow.cli", "gateway", "--host", "127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start on port {port}") from None
            time.sleep(0.05)


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


def start_cluster(workdir: Path, masters: int = 3) -> tuple[list[int], list[subprocess.Popen[bytes]]]:
    """A Redis Cluster of ``masters`` masters and no replicas; its ports and processes."""
    ports = [_cluster_port() for _ in range(masters)]
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
                )
            )
        for port, proc in zip(ports, procs, strict=True):
            _wait_port(port, proc, "redis-server (cluster node)")
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), *_CREATE],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(
            redis.Redis(port=p).cluster("info").get("cluster_state") == "ok"  # type: ignore[union-attr]
            for p in ports
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
    except BaseException:
        stop(procs)
        raise
    return ports, procs


def start_gateways(count: int, max_workers: int = 2) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    """``count`` gateways (``fanflow gateway``) on localhost sharing :data:`GATEWAY_SECRET`; URLs and processes."""
    env = {
        **os.environ,
        "FANFLOW_SECRET": GATEWAY_SECRET,
        "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path),
    }
    urls, procs = [], []
    try:
        for _ in range(count):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [*_GATEWAY, "--port", str(port), "--max-workers", str(max_workers), "--idle-timeout", "30"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs, strict=True):
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fanflow gateway at {url} did not start")
                time.sleep(0.1)
    except BaseException:
        stop(procs)
        raise
    return urls, procs
