"""Cold vs warm: sequential ``compute()`` calls on a client-started pool against a shared warm pool.

Three ways to run the same DAG on 2 worker processes and one ``redis-server``:

- ``stop after run``: ``keep_alive_s=0``, the client-started pool stops when its
  run ends, so every ``compute()`` cold-starts its workers (fanflow before keep-alive);
- ``kept warm``: the default ``keep_alive_s=60``, the second and later ``compute()``
  of the session run on the workers the first one started;
- ``shared pool``: a ``fanflow worker-pool`` started beforehand and warmed by one run.

The variants take turns within each repeat (the machine's load hits them alike);
the table shows the median wall time of the timed calls and the ratio to the
shared pool. Run: ``python benchmarks/keep_alive.py [--repeat 5] [--n 1024]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

import fanflow
from fanflow.cli.script import load_module
from fanflow.client.session import session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _redis import redis_server  # noqa: E402

SECRET = "keep-alive-benchmark-secret"


def _start_shared_pool(url: str, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FANFLOW_SECRET": SECRET}
    cmd = [shutil.which("fanflow") or "fanflow", "worker-pool", "--name", name, "--store", url, "--max-workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while not client.exists(f"ff:pool:{name}:alive"):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("the shared worker pool did not start")
        time.sleep(0.05)
    return proc


def _timed(build: Callable[[], fanflow.Node], config: fanflow.Config) -> float:
    node = build()
    began = time.perf_counter()
    node.compute(config)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--n", type=int, default=1024, help="leaves of the tree reduction")
    args = parser.parse_args()
    tree = load_module(str(ROOT / "examples" / "tree_reduction.py"))
    workloads: dict[str, Callable[[], fanflow.Node]] = {
        f"tree {args.n}": lambda: tree.build(n=args.n),
        "tree 8 (7 tasks)": lambda: tree.build(n=8),
    }
    table = Table("workload", "variant", "median s", "spread s", "vs shared pool", title="cold vs warm compute()")
    with redis_server() as url:
        common = {"platform": "processes", "store": url, "max_workers": 2, "progress": False, "metadata": "none"}
        variants = {
            "stop after run": fanflow.Config(**common, keep_alive_s=0),
            "kept warm": fanflow.Config(**common, keep_alive_s=60),
            "shared pool": fanflow.Config(**common, pool="bench", secret=SECRET),
        }
        pool = _start_shared_pool(url, "bench")
        try:
            for workload, build in workloads.items():
                for config in variants.values():
                    _timed(build, config)  # the first compute of the session (cold for every variant but shared)
                walls: dict[str, list[float]] = {v: [] for v in variants}
                for _ in range(args.repeat):
                    for variant, config in variants.items():
                        walls[variant].append(_timed(build, config))
                shared = statistics.median(walls["shared pool"])
                for variant, times in walls.items():
                    median = statistics.median(times)
                    table.add_row(
                        workload,
                        variant,
                        f"{median:.3f}",
                        f"{min(times):.3f}-{max(times):.3f}",
                        f"{median / shared:.2f}x",
                    )
        finally:
            session().close()  # the kept-warm pools, before their redis-server stops
            pool.terminate()
            pool.wait(timeout=30)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
