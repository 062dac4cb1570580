"""How fast a SIGKILLed host of a shared pool has its invocations back, and what the held lists cost.

Two ``fanflow worker-pool`` hosts of one pool (one worker process each) serve
eight runs of two 1 s tasks; a client of a shared pool starts each run's roots
in one invocation, so each host runs one and holds others. Once the first host
holds at least two, it alone is SIGKILLed (its worker dies with it). Printed per
repeat: how many invocations it held, how long until its held list was back in
the queue (its alive key lives ``HOST_TTL_S`` = 4 s; a reaper, the other host's
beat or a client's check, runs every 0.5-1 s), and when the last run ended.

The cost side: Redis commands per invocation through a shared pool (200
one-task runs, ten at a time), read from ``INFO commandstats`` (commands inside
scripts count too), so a run before the held lists can be compared on the same
machine: ``PYTHONPATH=<other tree> python benchmarks/host_failover.py --only cost``.

Run: ``python benchmarks/host_failover.py [--repeat 3] [--only failover,cost]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

import fanflow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _redis import redis_server  # noqa: E402

SECRET = "host-failover-benchmark-secret"


@fanflow.task
def nap(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


@fanflow.task
def pair(xs: list[int]) -> int:
    return sum(xs)


def _host(url: str, name: str) -> subprocess.Popen[bytes]:
    here = str(Path(__file__).resolve().parent)  # the pool's workers import this module's tasks
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", ""), str(ROOT)) if p)
    env = {**os.environ, "FANFLOW_SECRET": SECRET, "FANFLOW_METADATA": "none", "PYTHONPATH": path}
    command = [sys.executable, "-m", "fanflow.cli", "worker-pool", "--store", url, "--name", name, "--max-workers", "1"]
    # cwd: ``-m`` puts it first on sys.path, and a checkout there would win over PYTHONPATH.
    return subprocess.Popen(command, env=env, cwd=here, start_new_session=True, stderr=subprocess.DEVNULL)


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def _held(client: redis.Redis, name: str, pid: int) -> int:
    found = client.scan_iter(match=f"{{ff:pool:{name}:queue}}:held:*-{pid}-*")
    return sum(int(client.llen(k)) for k in found)


def _config(url: str, name: str) -> fanflow.Config:
    return fanflow.Config(platform="processes", store=url, pool=name, secret=SECRET, progress=False, metadata="none")


def failover(url: str, name: str) -> tuple[int, float, float]:
    """Invocations the killed host held, seconds until they were back in the queue, until the runs ended."""
    client = redis.Redis.from_url(url)
    hosts = [_host(url, name), _host(url, name)]
    try:
        _wait(lambda: client.exists(f"ff:pool:{name}:alive"), 30, "the pool to come up")
        config = _config(url, name)
        runs = [pair([nap(10 * r + i, 1.0) for i in range(2)]).submit(config) for r in range(8)]
        first = hosts[0].pid
        _wait(lambda: _held(client, name, first) >= 2, 30, "the first host to hold invocations")
        held = _held(client, name, first)
        hosts[0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _wait(lambda: _held(client, name, first) == 0, 30, "the killed host's invocations to come back")
        back = time.monotonic() - killed
        results = [f.result(timeout=120) for f in runs]
        if results != [20 * r + 1 for r in range(8)]:
            raise SystemExit(f"wrong results after the kill: {results}")
        return held, back, time.monotonic() - killed
    finally:
        for host in hosts:
            if host.poll() is None:
                os.killpg(host.pid, signal.SIGKILL)
            host.wait(timeout=10)


def cost(url: str, name: str, runs: int = 200) -> tuple[float, float]:
    """Redis commands per invocation through a shared pool, and the wall seconds of ``runs`` one-task runs."""
    client = redis.Redis.from_url(url)
    host = _host(url, name)
    try:
        _wait(lambda: client.exists(f"ff:pool:{name}:alive"), 30, "the pool to come up")
        config = _config(url, name)
        nap(0, 0.0).compute(config)
        client.config_resetstat()
        began = time.monotonic()
        for wave in range(0, runs, 10):
            futures = [nap(i, 0.0).submit(config) for i in range(wave, wave + 10)]
            if [f.result(timeout=120) for f in futures] != list(range(wave, wave + 10)):
                raise SystemExit("wrong results")
        wall = time.monotonic() - began
        calls = sum(v["calls"] for v in client.info("commandstats").values())
        return calls / runs, wall
    finally:
        os.killpg(host.pid, signal.SIGTERM)
        host.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="failover,cost", help="comma-separated: failover, cost")
    args = parser.parse_args()
    only = set(args.only.split(","))
    with open("/proc/loadavg") as f:
        print(f"load {f.read().split()[0]}; fanflow from {Path(fanflow.__file__).parent}")
    with redis_server() as url:
        for i in range(args.repeat):
            if "failover" in only:
                held, back, ended = failover(url, f"failover-{i}")
                print(
                    f"failover {i}: {held} held, back in the queue {back:.2f} s after the kill, "
                    f"runs ended {ended:.1f} s"
                )
            if "cost" in only:
                per, wall = cost(url, f"cost-{i}")
                print(f"cost {i}: {per:.2f} Redis commands per invocation, 200 runs in {wall:.2f} s")


if __name__ == "__main__":
    main()
