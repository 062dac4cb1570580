"""Every platform on two workloads: tree reduction of 1024 numbers and a blocked gemm, in one table.

Platforms (each on what this machine can run; lambda needs AWS and is left out):

- ``threads``: the embedded default, memory store;
- ``processes``: a client-started pool of 2 worker processes, one ``redis-server``;
- ``cluster``: the same pool on a 3-master Redis Cluster (``redis+cluster://``);
- ``http``: 2 ``fanflow gateway`` processes on localhost (1 worker process each), one ``redis-server``;
- ``ray``: a local Ray instance with 2 CPUs, one ``redis-server``.

``NAME:wukong`` (e.g. ``processes:wukong``) runs a platform with ``fanout="wukong"``,
one new worker per fan-out branch and per root, next to the default ``capacity``
(fan out no wider than the platform's idle slots), in the same run.

Each workload runs once to warm up (cold starts happen there), then ``--repeat``
times; the table reports the best timed run. Columns:

- ``wall s``: the client's wall time of the run; ``ms/task``: wall time per task;
- ``ovh ms/task``: fanflow's own per-task cost inside workers, the mean of
  ``fetch_s + store_s`` of the ``task_finished`` events (inputs fetched, output
  stored and dependents notified), i.e. what is not the task's code;
- ``invocations``, ``cold`` / ``warm``: the run's worker invocations, and the mean
  invocation latency (from the invoker's ``invoked_at`` to the worker starting,
  the ``worker_started`` events' ``latency_s``) of cold and of warm workers,
  over the warm-up and the timed runs together.

Run: ``python benchmarks/platforms.py [--repeat 3] [--platforms threads,http]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import fanflow
from fanflow.cli.script import load_module
from fanflow.client.session import session
from fanflow.store.metadata import open_metadata

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's launchers of real redis-servers, clusters and gateways

from support import GATEWAY_SECRET, free_port, start_cluster, start_gateways, stop  # noqa: E402

PLATFORMS = ("threads", "processes", "cluster", "http", "ray")


def _redis(stack: ExitStack, workdir: Path) -> str:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    stack.callback(stop, [proc])
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0"


def configs(names: list[str], stack: ExitStack, workdir: Path) -> dict[str, fanflow.Config]:
    """A config per platform, with its backends started (and stopped by ``stack``)."""
    meta = f"sqlite:///{workdir / 'metadata.db'}"
    common: dict[str, Any] = {"progress": False, "metadata": meta}
    out: dict[str, fanflow.Config] = {}
    url = _redis(stack, workdir) if set(names) - {"threads"} else ""
    for spec in names:
        name, _, fanout = spec.partition(":")
        kw = {**common, **({"fanout": fanout} if fanout else {})}
        if name == "threads":
            out[spec] = fanflow.Config(platform="threads", store="memory://", **kw)
        elif name == "processes":
            out[spec] = fanflow.Config(platform="processes", store=url, max_workers=2, **kw)
        elif name == "cluster":
            (cluster_dir := workdir / "cluster").mkdir()
            ports, procs = start_cluster(cluster_dir)
            stack.callback(stop, procs)
            cluster = f"redis+cluster://127.0.0.1:{ports[0]}"
            out[spec] = fanflow.Config(platform="processes", store=cluster, max_workers=2, **kw)
        elif name == "http":
            urls, procs = start_gateways(2, max_workers=1)
            stack.callback(stop, procs)
            endpoints = ",".join(urls)
            out[spec] = fanflow.Config(platform="http", store=url, endpoints=endpoints, secret=GATEWAY_SECRET, **kw)
        elif name == "ray":
            import ray

            if not ray.is_initialized():  # once for ray and ray:wukong
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
                stack.callback(ray.shutdown)
            out[spec] = fanflow.Config(platform="ray", store=url, **kw)
    stack.callback(session().close)  # pools kept warm between runs go before the servers they use
    return out


def measure(build: Callable[[], fanflow.Node], config: fanflow.Config, repeat: int) -> dict[str, Any]:
    """Best wall time over ``repeat`` runs after one warm-up, and the events of all of them."""
    run_ids: list[str] = []
    walls: list[float] = []
    for i in range(repeat + 1):
        node = build()
        start = time.perf_counter()
        future = node.submit(config)
        future.result()
        wall = time.perf_counter() - start
        run_ids.append(future.run_id)
        if i:
            walls.append(wall)
    history = open_metadata(config.metadata)
    events = [e for run_id in run_ids for e in history.load_run(run_id).events]
    best = run_ids[1 + walls.index(min(walls))]
    best_events = history.load_run(best).events
    finished = [e for e in best_events if e["kind"] == "task_finished"]
    tasks = len(finished)
    started = [e for e in events if e["kind"] == "worker_started"]
    cold = [e["latency_s"] for e in started if e.get("cold")]
    warm = [e["latency_s"] for e in started if not e.get("cold")]
    return {
        "wall": min(walls),
        "tasks": tasks,
        "overhead": statistics.fmean(e.get("fetch_s", 0.0) + e.get("store_s", 0.0) for e in finished),
        "invocations": sum(1 for e in best_events if e["kind"] == "worker_started"),
        "cold": (len(cold), statistics.fmean(cold) if cold else None),
        "warm": (len(warm), statistics.fmean(warm) if warm else None),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--platforms", default=",".join(PLATFORMS))
    parser.add_argument("--gemm-n", type=int, default=512)
    parser.add_argument("--gemm-block", type=int, default=128)
    args = parser.parse_args()
    tree = load_module(str(ROOT / "examples" / "tree_reduction.py"))
    gemm = load_module(str(ROOT / "examples" / "gemm.py"))
    workloads: dict[str, Callable[[], fanflow.Node]] = {
        "tree 1024": lambda: tree.build(n=1024),
        f"gemm {args.gemm_n}/{args.gemm_block}": lambda: gemm.build(n=args.gemm_n, block=args.gemm_block),
    }
    table = Table(
        "platform",
        "workload",
        "tasks",
        "wall s",
        "ms/task",
        "ovh ms/task",
        "invocations",
        "cold n / ms",
        "warm n / ms",
        title="fanflow platforms (best of the timed runs; latencies over all runs)",
    )
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        for name, config in configs(args.platforms.split(","), stack, Path(tmp)).items():
            for workload, build in workloads.items():
                r = measure(build, config, args.repeat)
                table.add_row(
                    name,
                    workload,
                    str(r["tasks"]),
                    f"{r['wall']:.3f}",
                    f"{r['wall'] / max(1, r['tasks']) * 1000:.2f}",
                    f"{r['overhead'] * 1000:.2f}",
                    str(r["invocations"]),
                    f"{r['cold'][0]} / {_ms(r['cold'][1])}",
                    f"{r['warm'][0]} / {_ms(r['warm'][1])}",
                )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
