"""Tree reduction: fanflow against Dask, measured in the same run.

``--mode embedded`` (default) builds and computes a tree reduction of N leaves
(N ``inc`` leaves, then pairwise ``add`` up to one sink) with fanflow's embedded
default (threads + memory store) and with ``dask.delayed`` on the "sync" and
"threads" schedulers, and prints per-task microseconds for build and compute
and the ratios. Target: fanflow end-to-end at most 0.5x Dask "sync" for N=8192.

Run: ``python benchmarks/tree_reduction.py --n 8192 --repeat 3``.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import fanflow


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def build_tree(n: int, leaf: Callable[[int], Any], combine: Callable[[Any, Any], Any]) -> Any:
    level = [leaf(i) for i in range(n)]
    while len(level) > 1:
        nxt = [combine(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def tasks_in_tree(n: int) -> int:
    return 2 * n - 1


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def measure_fanflow(n: int, config: fanflow.Config) -> tuple[float, float, int]:
    finc, fadd = fanflow.task(inc), fanflow.task(add)
    sink, build_s = timed(lambda: build_tree(n, finc, fadd))
    value, compute_s = timed(lambda: sink.compute(config))
    return build_s, compute_s, value


def measure_dask(n: int, scheduler: str) -> tuple[float, float, int]:
    import dask

    dinc, dadd = dask.delayed(inc), dask.delayed(add)
    sink, build_s = timed(lambda: build_tree(n, dinc, dadd))
    value, compute_s = timed(lambda: sink.compute(scheduler=scheduler))
    return build_s, compute_s, value


def best(samples: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    """The run with the lowest end-to-end time (least disturbed by other load)."""
    return min(samples, key=lambda s: s[0] + s[1])


def embedded(n: int, repeat: int) -> None:
    expected = sum(range(1, n + 1))
    config = fanflow.Config(progress=False, metadata="none")
    rows: dict[str, tuple[float, float, int]] = {}
    measure_fanflow(min(n, 256), config)  # warm the thread pool and imports
    rows["fanflow threads+memory"] = best([measure_fanflow(n, config) for _ in range(repeat)])
    for scheduler in ("sync", "threads"):
        rows[f"dask.delayed {scheduler}"] = best([measure_dask(n, scheduler) for _ in range(repeat)])
    ntasks = tasks_in_tree(n)
    print(f"tree reduction: N={n} leaves, {ntasks} tasks, best of {repeat}")
    print(f"{'system':<26}{'build us/task':>15}{'compute us/task':>17}{'total s':>10}")
    for name, (b, c, value) in rows.items():
        if value != expected:
            raise SystemExit(f"{name} computed {value}, expected {expected}")
        print(f"{name:<26}{b / ntasks * 1e6:>15.1f}{c / ntasks * 1e6:>17.1f}{b + c:>10.3f}")
    ours = sum(rows["fanflow threads+memory"][:2])
    for scheduler in ("sync", "threads"):
        theirs = sum(rows[f"dask.delayed {scheduler}"][:2])
        print(f"ratio fanflow / dask {scheduler} (end-to-end): {ours / theirs:.2f}x")
    print("target: <= 0.50x dask sync")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["embedded", "processes"], default="embedded")
    parser.add_argument("--n", type=int, default=8192, help="number of leaves")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.mode == "processes":
        from _processes_mode import processes  # fanflow processes+redis vs dask distributed, N=1024 by default

        processes(args.n if args.n != parser.get_default("n") else 1024, args.repeat, build_tree, inc, add)
        return
    embedded(args.n, args.repeat)


if __name__ == "__main__":
    main()
