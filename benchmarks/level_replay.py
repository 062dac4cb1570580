"""Replay of the prediction rule for a plan run before, on recorded runs: which level of its latest makespans.

For a plan run before, ``make_plan`` predicts :func:`fanflow.planning.calibrate.recent_level` of the plan's
latest :data:`~fanflow.planning.calibrate.RECENT` actual makespans (the simulated makespan cancels out, see
docs/planning.md), so a rule on the recorded actual makespans is the live rule, and candidates can be
compared on the same runs without running them again.

``collect`` records sequences as ``benchmarks/planning.py`` section 1 runs them (critical-path planner, a
fresh history per sequence, 3 warm-ups, then measured runs on the session's warm pool), one JSON line per
run, optionally with 2 busy-looping processes during one measured run (``--hog-run``: the slow run a
rule must not keep predicting). ``replay`` prints, per size, workload and kind of sequence (quiet or
hog), the median and 90th percentile of each rule's error over the replayable runs (measured runs whose
plan ran before, started the same way, warm or cold; a hog sequence's slowed run itself apart, as no rule
can see it coming), and per sequence the 90th percentile over its first 5 measured runs (the benchmark's
view), and checks that the current rule replays the predictions the runs were made with.

Run: ``python benchmarks/level_replay.py collect runs.jsonl --size small --passes 2 --hog-run 1``
(4 s a pass at the small sizes, about a minute at ``--size real``), then
``python benchmarks/level_replay.py replay runs.jsonl ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from fanflow.planning.calibrate import RECENT, recent_level

WARMUP = 3
FIRST_MEASURED = 5
"""Measured runs per sequence that the benchmark's per-workload p90 covers."""

Rule = Callable[[Sequence[float]], float]


def _median_of_3(latest: Sequence[float]) -> float:
    window = latest[:3]
    return statistics.median(window) if len(window) == 3 else min(window)


def _mean_of_lower_2_of_3(latest: Sequence[float]) -> float:
    lower = sorted(latest[:3])[:2]
    return sum(lower) / len(lower)


def _second_lowest_of_4(latest: Sequence[float]) -> float:
    window = sorted(latest[:4])
    return window[1] if len(window) >= 3 else window[0]


def _median_of_5(latest: Sequence[float]) -> float:
    window = latest[:5]
    return statistics.median(window) if len(window) >= 3 else min(window)


RULES: dict[str, Rule] = {
    "current": lambda latest: recent_level(latest[:RECENT]),
    "lower of 2": lambda latest: min(latest[:2]),
    "median of 3": _median_of_3,
    "lowest of 3": lambda latest: min(latest[:3]),
    "newest": lambda latest: latest[0],
    "lower 2 of 3": _mean_of_lower_2_of_3,
    "2nd of 4": _second_lowest_of_4,
    "median of 5": _median_of_5,
}
"""Each rule maps a plan's actual makespans, newest first (at least one), to its next prediction."""


def replayed(sequence: Sequence[dict[str, Any]], rule: Rule) -> list[tuple[dict[str, Any], float]]:
    """The measured runs of ``sequence`` (in run order) whose plan ran before in it, started the same way
    (cold or warm), each with ``rule``'s prediction from those earlier runs' makespans, newest first. A run
    planned from defaults (no plan) neither is predicted this way nor teaches (as in calibration)."""
    out = []
    for k, run in enumerate(sequence):
        if run["i"] < WARMUP or not run["plan"]:
            continue
        cold = bool(run["cold"])
        latest = [r["makespan"] for r in reversed(sequence[:k]) if r["plan"] == run["plan"] and bool(r["cold"]) == cold]
        if latest:
            out.append((run, rule(latest)))
    return out


def error(run: dict[str, Any], predicted: float) -> float:
    return abs(predicted - run["makespan"]) / run["makespan"]


def p90(values: Sequence[float]) -> float:
    """The 90th percentile, linear between the nearest ranks (the benchmark's, for 5 values: near the largest)."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * 0.9
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def sequences(paths: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The recorded runs by sequence, each in run order."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in paths:
        with open(path) as f:
            for line in f:
                run = json.loads(line)
                found[run["seq"]].append(run)
    for runs in found.values():
        runs.sort(key=lambda r: r["i"])
    return dict(found)


def replay(paths: Sequence[str]) -> None:
    seqs = sequences(paths)
    live = [(run, p) for s in seqs.values() for run, p in replayed(s, RULES["current"]) if run["predicted"]]
    same = sum(abs(p / run["predicted"] - 1) < 0.01 for run, p in live)
    print(f"{len(seqs)} sequences; the current rule replays the live prediction within 1% for {same} of {len(live)}")
    groups: dict[tuple[str, str, str], list[list[dict[str, Any]]]] = defaultdict(list)
    for s in seqs.values():
        groups[(s[0]["size"], s[0]["workload"], "hog" if any(r["hog"] for r in s) else "quiet")].append(s)
    print("median / p90 error (%) over the replayed runs; hog sequences without the slowed run")
    print(f"{'size, workload, sequences':<34}{'runs':>5}" + "".join(f"{name:>14}" for name in RULES))
    pooled: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in RULES}
    for key in sorted(groups):
        line, runs = "", 0
        for name, rule in RULES.items():
            pairs = [(run, p) for s in groups[key] for run, p in replayed(s, rule)]
            errors = [error(run, p) for run, p in pairs if not run["hog"]]
            pooled[name][key[2]] += errors
            pooled[name]["all"] += errors
            pooled[name]["slowed run"] += [error(run, p) for run, p in pairs if run["hog"]]
            runs = len(errors)
            line += f"{100 * statistics.median(errors):>7.1f} /{100 * p90(errors):>5.1f}"
        print(f"{' '.join(key):<34}{runs:>5}{line}")
    for kind in ("quiet", "hog", "all", "slowed run"):
        if not pooled["current"][kind]:
            continue
        line = "".join(
            f"{100 * statistics.median(pooled[n][kind]):>7.1f} /{100 * p90(pooled[n][kind]):>5.1f}" for n in RULES
        )
        print(f"{'all ' + kind:<34}{len(pooled['current'][kind]):>5}{line}")
    print(f"sequences whose p90 over their first {FIRST_MEASURED} measured runs is over 15% / median of those p90s")
    for kind in ("quiet", "hog"):
        line = ""
        for rule in RULES.values():
            each = []
            for key, group in groups.items():
                for s in group if key[2] == kind else ():
                    errors = [
                        error(run, p)
                        for run, p in replayed(s, rule)
                        if run["i"] < WARMUP + FIRST_MEASURED and not run["hog"]
                    ]
                    if len(errors) >= FIRST_MEASURED - 1:
                        each.append(p90(errors))
            if each:
                line += f"{sum(e > 0.15 for e in each):>4}/{len(each):<3}{100 * statistics.median(each):>6.1f}%"
        print(f"{kind:<39}{line}")


def collect(path: str, size: str, passes: int, measured: int, hog_run: int | None, names: list[str]) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _redis import redis_server
    from planning import last_run, workloads

    import fanflow
    from fanflow.client.session import session

    loads = workloads(size)
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp, open(path, "a") as out:
        for p in range(passes):
            for name in names or list(loads):
                seq = f"{size}-{name}-{os.getpid()}-{p}"
                config = fanflow.Config(
                    platform="processes",
                    store=url,
                    max_workers=2,
                    progress=False,
                    metadata=f"sqlite:///{tmp}/{seq}.db",  # a fresh history per sequence
                    planner="critical-path",
                    optimizations="none",
                )
                for i in range(WARMUP + measured):
                    hogs = []
                    if hog_run is not None and i == WARMUP + hog_run:
                        busy = [sys.executable, "-c", "while True: pass"]
                        hogs = [subprocess.Popen(busy) for _ in range(2)]
                        time.sleep(0.05)  # both spinning before the run starts
                    try:
                        fanflow.compute(*loads[name](), config=config)
                    finally:
                        for hog in hogs:
                            hog.kill()
                            hog.wait()
                    r = last_run(config.metadata).run
                    row = {
                        "seq": seq,
                        "size": size,
                        "workload": name,
                        "i": i,
                        "hog": bool(hogs),
                        "plan": r.plan_kind,
                        "cold": r.cold_starts,
                        "makespan": r.makespan_s,
                        "predicted": r.predicted_makespan_s,
                        "load": os.getloadavg()[0],
                    }
                    out.write(json.dumps(row) + "\n")
        session().close()  # the pool's host talks to this Redis: stop it first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="record sequences of runs, one JSON line per run")
    c.add_argument("path")
    c.add_argument("--size", choices=("small", "real"), default="small")
    c.add_argument("--passes", type=int, default=1, help="sequences per workload")
    c.add_argument("--measured", type=int, default=8, help="measured runs per sequence, after 3 warm-ups")
    c.add_argument("--hog-run", type=int, default=None, help="measured run (from 0) slowed by 2 busy loops")
    c.add_argument("--workloads", default="", help="comma-separated (default: all four)")
    r = sub.add_parser("replay", help="compare the rules on recorded runs")
    r.add_argument("paths", nargs="+")
    args = parser.parse_args()
    if args.command == "collect":
        names = args.workloads.split(",") if args.workloads else []
        collect(args.path, args.size, args.passes, args.measured, args.hog_run, names)
    else:
        replay(args.paths)


if __name__ == "__main__":
    main()
