"""Dask's own graphs on ``fanflow.dask.get`` against Dask's "sync" scheduler, measured in the same run.

Three measurements, each printed as fanflow's time, Dask's time and the ratio
(issue #13 targets: per-call and shuffle both at most 1.2x Dask "sync"):

* ``per-call``: the fixed cost of one call, in process CPU time (every thread of the
  process: worker threads and the history writer, drained before and after), with
  history on and off: ``dask.compute`` of a 1-task and a 3-task ``dask.delayed`` graph
  with ``scheduler=fanflow.dask.get`` against ``scheduler="sync"`` (both including
  Dask's optimization; once more for the 1-task graph with no ``config=``, history on
  through ``FANFLOW_METADATA``, the way users call it), ``fanflow.dask.get`` against ``dask.get`` on the legacy graph
  ``{"x": 1, "y": (inc, "x")}``, and ``fanflow.compute`` of the same 3 tasks as
  fanflow tasks against Dask sync. CPU time, not wall time, so the figures hold on a
  loaded machine (wall time there is mostly waiting for a core);
* ``shuffle``: a pandas DataFrame shuffled on a key with the "tasks" method, then
  grouped and summed (``--partitions 92``: about 2,700 tasks), wall time and
  process CPU time of the same rounds (each call including the wait for the
  history writer);
* ``history``: the embedded default's tree reduction of ``--tr`` leaves with the
  default SQLite history on and off (``metadata="none"``), each time including the
  wait for the history writer (:func:`fanflow.store.metadata.drain`), so the
  recording is paid inside the measurement; Dask "sync" on the same tree for scale.

fanflow runs with its defaults (embedded threads + memory store, history in a
temporary SQLite file) except where a line says ``history off``. Every number is
the median of ``--repeat`` rounds (per-call lines: ``--call-rounds`` rounds of
``--calls`` calls), rounds alternate fanflow and Dask, and the
spread (min-max of the ratios) is printed. Needs ``fanflow[dask]`` and pandas
(``pip install "dask[dataframe]"``) for the shuffle.

Run: ``python benchmarks/dask_overhead.py --repeat 5`` (``--only history`` for one part).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask

import fanflow
import fanflow.dask as ffdask
from fanflow.store.metadata import drain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tree_reduction import add, build_tree, inc


def seconds(fn: Callable[[], Any], calls: int = 1) -> float:
    """Wall time of ``calls`` calls of ``fn``, per call."""
    gc.collect()
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls


def rounds(pairs: dict[str, tuple[Callable[[], float], Callable[[], float]]], repeat: int) -> None:
    """Alternate fanflow and Dask ``repeat`` times per line; print medians, ratio and its spread."""
    for name, (ours, theirs) in pairs.items():
        ours(), theirs()  # warm: imports, thread pools, the SQLite file
        a, b = [], []
        for _ in range(repeat):
            a.append(ours())
            b.append(theirs())
        ratios = [x / y for x, y in zip(a, b, strict=True)]
        ma, mb = statistics.median(a), statistics.median(b)
        unit, scale = ("ms", 1e3) if mb < 0.1 else ("s", 1.0)
        print(
            f"{name:<44} fanflow {ma * scale:8.2f} {unit}  dask {mb * scale:8.2f} {unit}  "
            f"ratio {ma / mb:5.2f}x  (rounds {min(ratios):.2f}-{max(ratios):.2f})",
            flush=True,
        )


def cpu_seconds(fn: Callable[[], Any], calls: int) -> float:
    """Process CPU time (every thread: workers, the history writer) of ``calls`` calls of ``fn``, per call.

    The history writer is drained before and after, so each call pays for its own recording.
    """
    gc.collect()
    drain()
    began = time.process_time()
    for _ in range(calls):
        fn()
    drain()
    return (time.process_time() - began) / calls


def per_call(config: fanflow.Config, repeat: int, calls: int) -> None:
    off = config.replace(metadata="none")
    graph = {"x": 1, "y": (inc, "x")}
    finc, fadd = fanflow.task(inc), fanflow.task(add)
    one = dask.delayed(inc)(1)
    x = dask.delayed(inc)(1)
    three = dask.delayed(add)(x, dask.delayed(inc)(2))

    def ff_compute(cfg: fanflow.Config) -> None:
        a = finc(1)
        fanflow.compute(fadd(a, finc(2)), config=cfg)

    def pair(ours: Callable[[], Any], theirs: Callable[[], Any]) -> tuple[Callable[[], float], Callable[[], float]]:
        return (lambda: cpu_seconds(ours, calls), lambda: cpu_seconds(theirs, calls))

    # The default as users call it, no config= at all: fanflow loads its config (fanflow.toml,
    # FANFLOW_* variables) per call; the variables point history at the same temporary file.
    os.environ["FANFLOW_METADATA"], os.environ["FANFLOW_PROGRESS"] = config.metadata, "false"
    lines = {
        "CPU/call, dask.compute of 1 task, no config=": pair(
            lambda: dask.compute(one, scheduler=ffdask.get), lambda: dask.compute(one, scheduler="sync")
        )
    }
    for label, cfg in (("history on", config), ("history off", off)):
        lines |= {
            f"CPU/call, dask.compute of 1 task, {label}": pair(
                lambda cfg=cfg: dask.compute(one, scheduler=ffdask.get, config=cfg),
                lambda: dask.compute(one, scheduler="sync"),
            ),
            f"CPU/call, dask.compute of 3 tasks, {label}": pair(
                lambda cfg=cfg: dask.compute(three, scheduler=ffdask.get, config=cfg),
                lambda: dask.compute(three, scheduler="sync"),
            ),
            f"CPU/call, get of a 1-task graph, {label}": pair(
                lambda cfg=cfg: ffdask.get(graph, "y", config=cfg), lambda: dask.get(graph, "y")
            ),
            f"CPU/call, fanflow.compute of 3 tasks, {label}": pair(
                lambda cfg=cfg: ff_compute(cfg), lambda: dask.compute(three, scheduler="sync")
            ),
        }
    rounds(lines, repeat)


def shuffle(config: fanflow.Config, repeat: int, partitions: int, rows: int) -> None:
    import numpy as np
    import pandas as pd
    from dask import dataframe as dd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"key": rng.integers(0, 1000, rows), "x": rng.random(rows), "s": rng.choice(["a", "bb", "ccc"], rows)}
    )
    result = dd.from_pandas(frame, npartitions=partitions).shuffle("key", shuffle_method="tasks")
    result = result.groupby("key").x.sum()
    counted: dict[str, int] = {}

    def count(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        counted["tasks"] = len(dsk if isinstance(dsk, dict) else dict(dsk.__dask_graph__()))
        return dask.get(dsk, keys, **kwargs)

    expected = result.compute(scheduler=count)
    got = result.compute(scheduler=ffdask.get, config=config)
    assert (got.sort_index() == expected.sort_index()).all(), "fanflow's result differs from Dask's"

    def ours() -> Any:
        return result.compute(scheduler=ffdask.get, config=config)

    def theirs() -> Any:
        return result.compute(scheduler="sync")

    ours(), theirs()  # warm: imports, the SQLite file, the threads platform's first measurements
    a, b = [], []
    for _ in range(repeat):
        a.append(wall_and_cpu(ours))
        b.append(wall_and_cpu(theirs))
    name = f"shuffle+groupby, {counted['tasks']:,} tasks"
    for i, what in enumerate(("wall", "CPU")):
        mine, peer = [x[i] for x in a], [x[i] for x in b]
        ratios = [x / y for x, y in zip(mine, peer, strict=True)]
        ma, mb = statistics.median(mine), statistics.median(peer)
        print(
            f"{name + ', ' + what:<44} fanflow {ma:8.2f} s  dask {mb:8.2f} s  "
            f"ratio {ma / mb:5.2f}x  (rounds {min(ratios):.2f}-{max(ratios):.2f})",
            flush=True,
        )


def wall_and_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall time and process CPU time (every thread, the history writer drained) of one call of ``fn``."""
    gc.collect()
    drain()
    began, cpu = time.perf_counter(), time.process_time()
    fn()
    drain()
    return time.perf_counter() - began, time.process_time() - cpu


def history(db: Path, repeat: int, leaves: int) -> None:
    finc, fadd = fanflow.task(inc), fanflow.task(add)
    on = fanflow.Config(progress=False, metadata=f"sqlite:///{db}")
    off = fanflow.Config(progress=False, metadata="none")

    def tree(config: fanflow.Config) -> float:
        sink = build_tree(leaves, finc, fadd)
        gc.collect()
        began = time.perf_counter()
        sink.compute(config)
        drain()  # the recording is part of the cost
        return time.perf_counter() - began

    def dask_tree() -> float:
        sink = build_tree(leaves, dask.delayed(inc), dask.delayed(add))
        return seconds(lambda: sink.compute(scheduler="sync"))

    runs_before = _runs_in(db)
    rounds(
        {
            f"TR-{leaves} history on vs off": (lambda: tree(on), lambda: tree(off)),
            f"TR-{leaves} history on vs Dask sync": (lambda: tree(on), dask_tree),
        },
        repeat,
    )
    runs = _runs_in(db) - runs_before
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    per_run = size / max(runs, 1) / 1e3
    print(f"history file after {runs} more runs of TR-{leaves}: {size / 1e6:.2f} MB ({per_run:.0f} KB/run)")


def _runs_in(db: Path) -> int:
    if not db.exists():
        return 0
    from fanflow.store.metadata import open_metadata

    return len(open_metadata(f"sqlite:///{db}").runs())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40, help="calls per per-call round")
    parser.add_argument(
        "--call-rounds", type=int, default=25, help="per-call rounds (many short ones average out a loaded machine)"
    )
    parser.add_argument("--partitions", type=int, default=92)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--tr", type=int, default=8192, help="leaves of the history tree reduction")
    parser.add_argument("--only", choices=("per-call", "shuffle", "history"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fanflow-bench-") as tmp:
        db = Path(tmp) / "metadata.db"
        config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}")  # the default, in a temp file
        versions = f"dask {dask.__version__}, fanflow {fanflow.__version__}"
        print(f"{versions}, {os.cpu_count()} cores; median of {args.call_rounds} rounds per call, {args.repeat} else")
        if args.only in (None, "per-call"):
            per_call(config, args.call_rounds, args.calls)
        if args.only in (None, "shuffle"):
            shuffle(config, args.repeat, args.partitions, args.rows)
        if args.only in (None, "history"):
            history(db, args.repeat, args.tr)
        drain()


if __name__ == "__main__":
    main()
