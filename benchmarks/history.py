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
- what explains a slow round, per mode: the CPU spent off the calling thread (the history
  writer's, and worker threads' when the platform spreads a run over them), the process's
  context switches (a lock convoy makes thousands) and the full garbage collections;
- the history file's size per run (database plus write-ahead log, which is
  truncated at 4 MB) after the rounds, and the average size of a run's row;
- what reading history back costs: one run's records built from its trace
  (``RunMetrics.from_stored``), and a planner's ``History`` of the tree's functions.

Run: ``python benchmarks/history.py [--repeat 7] [--tr 8192]``.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import fanflow
from fanflow.metrics import History, RunMetrics, build_dag
from fanflow.store.metadata import drain, open_metadata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tree_reduction import add, build_tree, inc


class Round(NamedTuple):
    """One timed run: seconds of wall and CPU time, and what explains a slow one."""

    wall: float
    cpu: float
    elsewhere: float
    """CPU seconds of threads other than the caller's (the history writer's, worker threads')."""
    switches: int
    """Context switches of the process, voluntary and not."""
    full_gcs: int
    """Collections of the oldest generation."""


def timed(run: Callable[[], object]) -> Round:
    """``run()`` measured."""
    gc.collect()
    full: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.callbacks.append(count)
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall, cpu, here = time.perf_counter(), time.process_time(), time.thread_time()
    try:
        run()
    finally:
        gc.callbacks.remove(count)
    wall, cpu, here = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - here
    after = resource.getrusage(resource.RUSAGE_SELF)
    switches = after.ru_nvcsw - before.ru_nvcsw + after.ru_nivcsw - before.ru_nivcsw
    return Round(wall, cpu, max(0.0, cpu - here), switches, len(full))


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
        rounds: dict[str, list[Round]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for mode, config in modes.items():
                rounds[mode].append(timed(run(config)))
        walls = {m: [r.wall for r in rs] for m, rs in rounds.items()}
        cpus = {m: [r.cpu for r in rs] for m, rs in rounds.items()}
        tasks = 2 * args.tr - 1
        print(f"TR-{args.tr} ({tasks:,} tasks), embedded default, compute() + drain(); median of {args.repeat}")
        for mode in modes:
            print(f"  history {mode:<3}  wall {spread(walls[mode])}   CPU {spread(cpus[mode])}")
        ratio_wall = statistics.median(walls["on"]) / statistics.median(walls["off"])
        ratio_cpu = statistics.median(cpus["on"]) / statistics.median(cpus["off"])
        ratios = [a / b for a, b in zip(cpus["on"], cpus["off"], strict=True)]
        print(
            f"  on / off   wall {ratio_wall:.2f}x   CPU {ratio_cpu:.2f}x "
            f"(CPU rounds {min(ratios):.2f}-{max(ratios):.2f})   target <= 1.15x"
        )
        for mode, rs in rounds.items():
            elsewhere = [r.elsewhere for r in rs]
            switches = [r.switches for r in rs]
            print(
                f"  history {mode:<3}  CPU off the caller's thread {spread(elsewhere)}   "
                f"context switches {statistics.median(switches):,.0f} [{min(switches):,}-{max(switches):,}]   "
                f"full GCs {sum(r.full_gcs for r in rs)} in {len(rs)} rounds"
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
