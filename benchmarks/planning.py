"""Planning on the processes platform: prediction error, critical-path vs uniform, bytes moved.

Starts a private ``redis-server`` on a free port and runs every workload on the
processes platform (worker processes with CPU quotas where cgroups are
writable) with a temporary SQLite history:

1. predicted vs actual makespan of tree_reduction, gemm, image_transform and
   svd1 with the critical-path planner, after 3 warm-up runs that fill the
   history (target: median error <= 15%);
2. cost (GB-s, from the worker records: memory x time alive) and makespan of
   critical-path against uniform at the largest memory (3008 MB);
3. bytes moved through the store (fetched inputs + uploaded outputs, from the
   run metrics; an output the loop kept local under delayed I/O is not
   uploaded) on gemm and svd1, with and without clustering + delayed I/O
   (target: at least 50% less);
4. the time the critical-path planner takes for an 8,191-task tree reduction
   (target: at most 1 s).

Run: ``python benchmarks/planning.py`` (a few minutes; ``--repeat`` sets the measured runs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _redis import redis_server

import fanflow
from fanflow.cli.script import load_module
from fanflow.dag.graph import DAG
from fanflow.metrics.records import RunMetrics
from fanflow.planning import make_plan
from fanflow.store.metadata import drain, open_metadata

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WARMUP = 3


def workloads() -> dict[str, Callable[[], list[Any]]]:
    """Modest sizes: each run takes well under a second of work."""
    tree = load_module(str(EXAMPLES / "tree_reduction.py"))
    gemm = load_module(str(EXAMPLES / "gemm.py"))
    image = load_module(str(EXAMPLES / "image_transform.py"))
    svd1 = load_module(str(EXAMPLES / "svd1.py"))
    return {
        "tree_reduction": lambda: [tree.build(64)],
        "gemm": lambda: [gemm.build(512, 256)],
        "image_transform": lambda: [image.build(512, 256)],
        "svd1": lambda: list(svd1.build(8000, 50, 2000)),
    }


def last_run(metadata: str) -> RunMetrics:
    drain()
    store = open_metadata(metadata)
    return RunMetrics.from_stored(store.load_run(store.runs(limit=1)[0]["run_id"]))


def measured_cost(m: RunMetrics) -> float:
    """GB-seconds actually used: each worker's memory times its time alive."""
    return sum(w.memory_mb / 1024 * max(0.0, w.stopped_at - w.started_at) for w in m.workers)


def bytes_moved(m: RunMetrics) -> int:
    """Fetched input bytes plus the bytes of outputs that really went to the store.

    A worker records ``uploaded`` per task: False when delayed I/O kept the
    output local, or when the claim script skipped it because this worker runs
    the only consumer next.
    """
    uploaded = {
        int(e["task"]): e.get("uploaded", True)
        for e in m.events
        if e.get("kind") == "task_finished" and e.get("element") is None
    }
    sent = sum(t.out_bytes for t in m.tasks if uploaded.get(t.task, True))
    return sum(t.fetched_bytes for t in m.tasks) + sent


def run(build: Callable[[], list[Any]], cfg: fanflow.Config, times: int) -> list[RunMetrics]:
    out = []
    for _ in range(times):
        fanflow.compute(*build(), config=cfg)
        out.append(last_run(cfg.metadata))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per configuration")
    parser.add_argument("--max-workers", type=int, default=2, help="worker processes in the pool")
    args = parser.parse_args()
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        metadata = f"sqlite:///{tmp}/history.db"
        base = fanflow.Config(
            platform="processes", store=url, max_workers=args.max_workers, progress=False, metadata=metadata
        )
        loads = workloads()

        print("1. predicted vs actual makespan, critical-path planner, after 3 warm-up runs")
        print(f"{'workload':<17}{'actual s':>10}{'predicted s':>13}{'error':>9}")
        errors = []
        cp = base.replace(planner="critical-path", optimizations="none")
        for name, build in loads.items():
            run(build, cp, WARMUP)
            for m in run(build, cp, args.repeat):
                predicted = m.run.predicted_makespan_s or 0.0
                error = abs(predicted - m.run.makespan_s) / m.run.makespan_s
                errors.append(error)
                print(f"{name:<17}{m.run.makespan_s:>10.3f}{predicted:>13.3f}{error:>9.1%}")
        print(f"median error: {statistics.median(errors):.1%} (target <= 15%)")

        print("\n2. critical-path vs uniform at 3008 MB (median of runs)")
        print(f"{'workload':<17}{'planner':<15}{'makespan s':>11}{'cost GB-s':>11}{'predicted GB-s':>16}")
        uniform = base.replace(planner="uniform", memory_mb=3008, optimizations="none")
        for name, build in loads.items():
            for label, cfg in (("uniform-3008", uniform), ("critical-path", cp)):
                ms = run(build, cfg, args.repeat)
                makespan = statistics.median(m.run.makespan_s for m in ms)
                cost = statistics.median(measured_cost(m) for m in ms)
                plan = make_plan(DAG.from_sinks(build()), cfg)
                predicted = plan.simulation.cost_gb_s if plan.simulation else 0.0
                print(f"{name:<17}{label:<15}{makespan:>11.3f}{cost:>11.3f}{predicted:>16.3f}")

        print("\n3. bytes moved through the store (uniform planner)")
        print(f"{'workload':<17}{'plain B':>12}{'clustering+delayed-io B':>25}{'saved':>8}")
        for name in ("gemm", "svd1"):
            build = loads[name]
            plain = run(build, base.replace(planner="uniform", optimizations="none"), 1)[0]
            opt = run(build, base.replace(planner="uniform", optimizations="clustering,delayed-io"), 1)[0]
            a, b = bytes_moved(plain), bytes_moved(opt)
            print(f"{name:<17}{a:>12,}{b:>25,}{1 - b / a:>8.1%}  (target >= 50%)")

        print("\n4. planning time, critical-path planner, tree reduction of 8,191 tasks (target <= 1 s)")
        tree = DAG.from_sinks([load_module(str(EXAMPLES / "tree_reduction.py")).build(8192)])
        for opts in ("none", "clustering,delayed-io"):
            began = time.perf_counter()
            make_plan(tree, cp.replace(optimizations=opts))
            print(f"optimizations={opts}: {time.perf_counter() - began:.3f} s")


if __name__ == "__main__":
    main()
