"""What run history costs on the embedded default: history on against off, the writer's wait included.

A tree reduction of ``--tr`` leaves (8,192 by default: 16,383 tasks) on the embedded
default (threads + memory store), with the default SQLite history on (in a temporary
file) and off (``metadata="none"``). Every timed run is ``compute()`` followed by
:func:`fanflow.store.metadata.drain`, which waits for the background writer to save
the run: the whole recording is inside the measurement, whether it ran on the run's
thread or in the background (both compete for the same GIL).

Printed per mode, as the median of ``--repeat`` rounds after one warm-up each (the
modes take turns, so load hits both alike) and the min-max spread:

- wall time, and CPU time of the process (``time.process_time``: every thread, the
  writer's included). On a shared, loaded machine wall times wander; CPU time is
  the steadier reading of the work done;
- the on / off ratio of both (issue #12 target: history on at most 1.15x off);
- the history file's size per run (database plus write-ahead log, which is
  truncated at 4 MB) after the rounds, and the average size of a run's row;
- what reading history back costs: one run's records built from its trace
  (``RunMetrics.from_stored``), and a planner's ``History`` of the tree's functions.

Run: ``python benchmarks/history.py [--repeat 7] [--tr 8192]``.
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fanflow
from fanflow.metrics import History, RunMetrics, build_dag
from fanflow.store.metadata import drain, open_metadata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tree_reduction import add, build_tree, inc


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``run()``."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.3f} s [{min(xs):.3f}-{max(xs):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tr", type=int, default=8192, help="leaves of the tree reduction")
    args = parser.parse_args()
    finc, fadd = fanflow.task(inc), fanflow.task(add)
    with tempfile.TemporaryDirectory(prefix="fanflow-history-") as tmp:
        db = Path(tmp) / "metadata.db"
        url = f"sqlite:///{db}"
        modes = {
            "on": fanflow.Config(progress=False, metadata=url),
            "off": fanflow.Config(progress=False, metadata="none"),
        }

        def run(config: fanflow.Config) -> Callable[[], object]:
            sink = build_tree(args.tr, finc, fadd)

            def go() -> None:
                sink.compute(config)
                drain()  # the recording is part of the cost

            return go

        for config in modes.values():  # warm: imports, thread pool, the SQLite file
            run(config)()
        walls: dict[str, list[float]] = {m: [] for m in modes}
        cpus: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for mode, config in modes.items():
                wall, cpu = timed(run(config))
                walls[mode].append(wall)
                cpus[mode].append(cpu)
        tasks = 2 * args.tr - 1
        print(f"TR-{args.tr} ({tasks:,} tasks), embedded default, compute() + drain(); median of {args.repeat}")
        for mode in modes:
            print(f"  history {mode:<3}  wall {spread(walls[mode])}   CPU {spread(cpus[mode])}")
        ratio_wall = statistics.median(walls["on"]) / statistics.median(walls["off"])
        ratio_cpu = statistics.median(cpus["on"]) / statistics.median(cpus["off"])
        rounds = [a / b for a, b in zip(cpus["on"], cpus["off"], strict=True)]
        print(
            f"  on / off   wall {ratio_wall:.2f}x   CPU {ratio_cpu:.2f}x "
            f"(CPU rounds {min(rounds):.2f}-{max(rounds):.2f})   target <= 1.15x"
        )

        store = open_metadata(url)
        runs = store.runs()
        size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
        with sqlite3.connect(db) as raw:
            (stored,) = raw.execute("SELECT avg(length(doc) + length(events)) FROM runs").fetchone()
        print(
            f"  history file: {size / 1e6:.2f} MB for {len(runs)} runs, write-ahead log included "
            f"({size / len(runs) / 1e3:.0f} KB/run); a run's row: {stored / 1e3:.0f} KB"
        )
        began = time.perf_counter()
        metrics = RunMetrics.from_stored(store.load_run(runs[0]["run_id"]))
        read_s = time.perf_counter() - began
        dag = build_dag([build_tree(args.tr, finc, fadd)])
        began = time.perf_counter()
        history = History.for_dag(dag, url)
        plan_s = time.perf_counter() - began
        executions = len(history.executions(finc.identity)) + len(history.executions(fadd.identity))
        print(
            f"  reading: one run's {len(metrics.tasks):,} task records in {read_s * 1e3:.0f} ms; "
            f"a planner's History of {executions:,} executions ({len(runs)} runs) in {plan_s:.2f} s"
        )


if __name__ == "__main__":
    main()
