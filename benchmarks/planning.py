"""Planning on the processes platform: prediction error, critical-path vs uniform, bytes moved.

Starts a private ``redis-server`` on a free port and runs every workload on the
processes platform (worker processes with CPU quotas where cgroups are
writable) with a temporary SQLite history:

1. predicted vs actual makespan of tree_reduction, gemm, image_transform and
   svd1 with the critical-path planner, after 3 warm-up runs that fill the
   history: each run's error and whether it fell in the predicted p10-p90
   interval, then per workload the coefficient of variation of the makespan
   (target <= 10%) and the median / p90 error (targets <= 10% / <= 15%), and
   the worker processes' CPU time per run with its CV (on a shared machine the
   makespan's CV is mostly other jobs; the CPU's is the platform's own), and
   per run its worker CPU, invocations and tasks per worker process: counts
   that repeat run after run for one plan unless the platform varies; and the
   CFS periods a CPU quota throttled a worker in, and when each worker process
   received its first invocation of the run and began its work (a run whose
   processes both start late lost its time before its first task: a late
   receipt is the client's or the pool's delivery, a late start after it the
   worker's own verify, DAG load and begin), when each finished its last task,
   the workers' minor page faults and ``redis-server``'s CPU and faults (it
   shares the cores), and the CPU other processes on the machine used meanwhile
   (``other ms``: another job's burst shows there, in the run it slowed); and
   the execution floor: per run the busiest worker process's task execution
   time (``floor s``, the sum of its tasks' ``exec_s``: the same code on the
   same inputs every run, no transfers or waits for inputs) and how long that
   process waited for a core (``wait ms``), then per workload the floor's CV
   and its error predicted as the makespan is, beside the makespan's, and how
   much of each miss of a target the floor accounts for (the machine's part;
   the rest is fanflow's);
2. cost (GB-s, from the worker records: memory x time alive) and makespan of
   critical-path against uniform at the largest memory (3008 MB), runs
   interleaved so both see the same load (target: never more than +5%). The
   session keeps its pool of 2 worker processes warm between runs, so a run
   right after the other plan's would find processes of the wrong size and
   pay cold starts the plan does not cause, and the run after that is still
   slower than the ones that follow; each measured run therefore follows two
   unmeasured runs of the same configuration (the steady state of a user
   re-running one plan), the pair order alternates, and the table counts the
   cold starts. Runs under 0.1 s get 3x the pairs, and a sign test over the
   pairs says whether critical-path's ratio is more than the runs' noise;
   with ``--null``, each workload's pairs are followed by the same pairs with
   uniform 3008 MB on both sides, whose ratios are what noise alone gives
   on one process, and by pairs of uniform 3008 MB against uniform 3007 MB
   (:data:`NULL_TWIN_MB`): the same CPU in processes of their own, as
   critical-path's plan of another size gets, so what two processes alone
   give; every comparison also splits each side's median makespan into the
   execution floor (as in section 1) and the rest (transfers, starts, waits),
   to say which part a ratio came from;
3. bytes moved through the store (fetched inputs + uploaded outputs, from the
   run metrics; an output the loop kept local under delayed I/O is not
   uploaded) on gemm and svd1, with and without clustering + delayed I/O
   (target: at least 50% less), uniform at 3008 MB, interleaved warm runs,
   with the makespan of both;
4. the time the critical-path planner takes for tree reductions of 8,191 and
   100,000 tasks, CPU and wall (targets: 0.5 s and 5 s), with an empty history
   and with ``--history-runs`` (10) stored runs of the same tree and of other
   DAGs, first plan in a process and the next.

Run: ``python benchmarks/planning.py`` (several minutes; ``--repeat`` sets the
measured runs, 5 by default; ``--only accuracy`` runs section 1 alone, the
CV of the makespan included, ``--only compare,bytes`` sections 2 and 3,
``--only timing`` section 4 without Redis; ``--workloads gemm,svd1`` picks
workloads). Sections 1-3 run at the sizes users run (MB-sized numpy values,
up to 2,047 tasks, warm runs of ~0.1-1 s on 2 workers); ``--size small`` runs
the DAGs of the earlier #17 tables instead (warm runs of 0.01-0.1 s on the
machines of 2026-12-01, where a few ms of scheduling jitter is 10-30% of the
makespan); ``--size real --only accuracy,compare`` took 5.2
minutes at load 1-10, the whole benchmark ~6 (before the root-label fix, f1f47ba, which
took the real tree from 2.4 s to 0.11-0.19 s); ``--null`` added 2.3 minutes to section 2 at real
sizes with its one-process baseline alone (54 s for tree_reduction and gemm together, 29 s for
image_transform, 55 s for svd1; 29-33 s at the small sizes, with the 3x pairs of runs under 0.1 s);
both baselines took 63 s for tree_reduction and gemm, 28 s for image_transform, 42 s for svd1 and
50 s at the small sizes on a machine whose runs were faster (2026-12-01: real image_transform 0.41 s).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from _redis import redis_server

import fanflow
from fanflow.cli.script import load_module
from fanflow.client.session import session
from fanflow.dag.graph import DAG
from fanflow.metrics.records import RunMetrics
from fanflow.planning import make_plan
from fanflow.planning.calibrate import KINDS, RECENT, kind_of, recent_level
from fanflow.planning.predict import clear_cache
from fanflow.store.metadata import drain, open_metadata

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WARMUP = 3


SIZES = ("small", "real")


def workloads(size: str = "real") -> dict[str, Callable[[], list[Any]]]:
    """The four workloads at ``size``.

    ``small`` (the DAGs of the earlier #17 tables): 0.01-0.1 s warm runs on
    2026-12-01's machines, where a few ms of scheduling jitter is 10-30% of the makespan.
    ``real`` (the default): what users run, MB-sized numpy values and thousands of tasks;
    warm runs of about 0.1-1 s on 2 workers (tree_reduction 2,047 tasks,
    gemm 2 MB blocks, image_transform 322 tasks, svd1 8 MB blocks).
    """
    tree = load_module(str(EXAMPLES / "tree_reduction.py"))
    gemm = load_module(str(EXAMPLES / "gemm.py"))
    image = load_module(str(EXAMPLES / "image_transform.py"))
    svd1 = load_module(str(EXAMPLES / "svd1.py"))
    if size == "real":
        return {
            "tree_reduction": lambda: [tree.build(2048)],
            "gemm": lambda: [gemm.build(2000, 500)],
            "image_transform": lambda: [image.build(2048, 256)],
            "svd1": lambda: list(svd1.build(200_000, 50, 20_000)),
        }
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


SECTIONS = ("accuracy", "compare", "bytes", "timing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="measured runs per configuration")
    parser.add_argument(
        "--only",
        default="all",
        help="comma-separated sections to run: accuracy (1: prediction error and CV of makespan), compare (2), "
        "bytes (3), timing (4, without Redis); default all",
    )
    parser.add_argument("--workloads", default="", help="comma-separated workloads (default: all four)")
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="real",
        help="workload sizes: real (the default: MB-sized values, thousands of tasks, ~0.1-1 s runs) or small "
        "(the DAGs of the earlier tables, 0.01-0.1 s runs); sections 1-3",
    )
    parser.add_argument(
        "--null",
        action="store_true",
        help="section 2 also runs each workload's pairs with uniform 3008 MB on both sides: the spread of ratios "
        "noise alone gives (about doubles section 2's time)",
    )
    parser.add_argument("--max-workers", type=int, default=2, help="worker processes in the pool")
    parser.add_argument(
        "--history-runs",
        type=int,
        default=10,
        help="section 4: runs of each tree stored before timing its plan with history (10 runs of the "
        "100k-task tree take ~2 minutes)",
    )
    args = parser.parse_args()
    sections = set(SECTIONS if args.only == "all" else args.only.split(","))
    if not sections <= set(SECTIONS):
        parser.error(f"--only takes {', '.join(SECTIONS)} or all")
    cp_timing = fanflow.Config(
        platform="processes",
        store="redis://localhost:1/0",
        max_workers=args.max_workers,
        metadata="none",
        planner="critical-path",
    )
    if sections == {"timing"}:
        planning_times(cp_timing, args.history_runs)
        return
    loads = workloads(args.size)
    if args.workloads:
        wanted = args.workloads.split(",")
        unknown = [w for w in wanted if w not in loads]
        if unknown:
            parser.error(f"unknown workloads {unknown}; choose from {', '.join(loads)}")
        loads = {w: loads[w] for w in wanted}
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        metadata = f"sqlite:///{tmp}/history.db"
        base = fanflow.Config(
            platform="processes", store=url, max_workers=args.max_workers, progress=False, metadata=metadata
        )
        print(f"sizes: {args.size}; load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        if "accuracy" in sections:
            accuracy(base, loads, args.repeat)
        if "compare" in sections:
            compare(base, loads, args.repeat, args.null)
        if "bytes" in sections:
            moved(base, {w: b for w, b in loads.items() if w in ("gemm", "svd1")}, args.repeat)
        if "timing" in sections:
            planning_times(cp_timing, args.history_runs)
        session().close()  # the pool's host talks to this Redis: stop it first
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


def accuracy(base: fanflow.Config, loads: dict[str, Callable[[], list[Any]]], repeat: int) -> None:
    """Section 1: predicted vs actual makespan of the critical-path plan, and the CV of the makespan."""
    print(f"1. predicted vs actual makespan, critical-path planner, {repeat} runs after {WARMUP} warm-ups")
    print(
        f"{'workload':<17}{'actual s':>10}{'predicted s':>13}{'p10-p90 s':>15}{'inside':>8}{'error':>8}{'steal ms':>10}"
        f"{'other ms':>10}{'exec x':>8}{'floor s':>9}{'wait ms':>9}"
        f"{'CPU s':>7}{'faults':>8}{'rd ms':>7}{'rd flt':>8}{'inv':>5}{'thr':>5}{'got ms':>9}{'start ms':>10}"
        f"{'end ms':>10}  tasks per process"
    )
    errors: list[float] = []
    cp = base.replace(planner="critical-path", optimizations="none")
    spreads = {}
    floored: dict[str, Floor] = {}
    inside_all = 0
    for name, build in loads.items():
        warmups = run(build, cp, WARMUP)
        warm = ", ".join(
            f"{m.run.makespan_s:.3f}" + (f" ({m.run.cold_starts} cold)" if m.run.cold_starts else "") for m in warmups
        )
        print(f"{name:<17}warm-ups {warm} s")
        own = []
        inside_runs = 0
        ms, cpu, stolen, throttles, counted, others, waits = [], [], [], [], [], [], []
        for _ in range(repeat):
            before, steal_before, throttled_before = pool_processes(), steal_s(), throttled()
            busy_before, mine_before = machine_busy_s(), time.process_time()
            ms += run(build, cp, 1)
            after = pool_processes()
            busy, mine = machine_busy_s() - busy_before, time.process_time() - mine_before
            stolen.append(steal_s() - steal_before)
            throttles.append(throttled() - throttled_before)
            new = (False, 0.0, 0, 0.0)  # a process started during the run
            used = {
                pid: (redis, t - before.get(pid, new)[1], f - before.get(pid, new)[2])
                for pid, (redis, t, f, _) in after.items()
            }
            pid, _ = busiest_process(ms[-1])
            waits.append(after.get(pid, new)[3] - before.get(pid, new)[3])
            cpu.append(sum(t for redis, t, _ in used.values() if not redis))
            others.append(max(0.0, busy - mine - sum(t for _, t, _ in used.values())))
            counted.append(
                (
                    sum(f for redis, _, f in used.values() if not redis),
                    sum(t for redis, t, _ in used.values() if redis),
                    sum(f for redis, _, f in used.values() if redis),
                )
            )
        slowed = exec_factors(ms)
        floors = [busiest_exec_s(m) for m in ms]
        for m, taken, used, thr, (faults, redis_s, redis_faults), other, x, floor, waited in zip(
            ms, stolen, cpu, throttles, counted, others, slowed, floors, waits, strict=True
        ):
            got, began = starts(m)
            r = m.run
            predicted = r.predicted_makespan_s or 0.0
            error = (predicted - r.makespan_s) / r.makespan_s
            own.append(error)
            low, high = r.predicted_p10_s or 0.0, r.predicted_p90_s or 0.0
            inside = "yes" if low <= r.makespan_s <= high else "no"
            inside_runs += low <= r.makespan_s <= high
            band = f"{low:.3f}-{high:.3f}"
            print(
                f"{name:<17}{r.makespan_s:>10.3f}{predicted:>13.3f}{band:>15}{inside:>8}{error:>+8.1%}"
                f"{taken * 1e3:>10.0f}{other * 1e3:>10.0f}{x:>8.2f}{floor:>9.3f}{waited * 1e3:>9.0f}{used:>7.3f}"
                f"{faults:>8}{redis_s * 1e3:>7.0f}{redis_faults:>8}"
                f"{len(m.workers):>5}{thr:>5}{got:>9}{began:>10}{ends(m):>10}  {split(m)}"
            )
        errors.extend(abs(e) for e in own)
        times = [m.run.makespan_s for m in ms]
        size = [abs(e) for e in own]
        spreads[name] = (
            cv(times),
            min(times),
            max(times),
            statistics.median(size),
            pct(size, 0.9),
            statistics.median(own),
            statistics.median(cpu),
            cv(cpu),
            inside_runs,
            cv([t / x for t, x in zip(times, slowed, strict=True)]),
            cv_per_cpu(times, cpu),
        )
        floored[name] = floor_summary(
            [busiest_exec_s(m) for m in warmups] + floors,
            [kind_of(m.run.plan_kind) in KINDS for m in warmups + ms],
            times,
            own,
        )
        inside_all += inside_runs
    print("\n(steal ms: CPU time the hypervisor took from this machine during the run, all CPUs, 10 ms ticks;")
    print(" other ms: CPU time of other processes on this machine over the run, planning and recording included:")
    print(" the machine's busy time less this benchmark's process, its workers and redis-server, 10 ms ticks;")
    print(" exec x: how much longer the tasks of the run's slowest worker process took to execute than the same")
    print(" tasks in the workload's measured runs (median over its tasks): the same code on the same inputs, so")
    print(" what moves it is the machine, whose vCPUs run at one of two speeds about 1.8x apart in phases of")
    print(" 0.1 s to seconds; the summary's CV / exec x is the makespan's CV once each run is divided by it;")
    print(" floor s: the execution time of the tasks the run's busiest worker process ran, the sum of their exec_s,")
    print(" the table after the summary reads it; wait ms: the time that process's threads waited runnable for a")
    print(" CPU over the run (schedstat), which exec_s, wall time, holds where it fell inside a task)")
    print("(error: predicted minus actual over actual; bias: its median, + means predicted slower; worker CPU:")
    print(" CPU time of the pool's worker processes per run, all threads, and its CV: the platform's own variance,")
    print(" which other jobs on the machine inflate far less than the makespan's; inside: measured runs inside")
    print(" their p10-p90 interval. Warm-ups: the runs before, whose history the first prediction comes from;")
    print(" per run, CPU s: its worker CPU; faults: the worker processes' minor page faults (memory they touch")
    print(" for the first time, or again after giving it back); rd ms / rd flt: CPU and minor page faults of")
    print(" redis-server, which shares the cores; inv: worker invocations; tasks per process: how the pool's processes")
    print(" split the DAG's tasks, busiest first, which wall time under load cannot hide: the same plan should")
    print(" give the same counts run after run; thr: CFS periods in which a worker's CPU quota throttled it;")
    print(" got ms / start ms: when each process received its first invocation of the run / began its work,")
    print(" after the run was submitted; end ms: when each process finished its last task, earliest first;")
    print(" CV / CPU x: the makespan's CV once each run is divided by its worker CPU over the workload's median:")
    print(" with the same tasks per process and invocations, the CPU the same work took, so the spread left is")
    print(" waits and order, not speed; on small gemm and svd1 a slow run's store, fetch and redis-server's work")
    print(" slowed with its tasks (docs/planning-log.md, fifteenth session), which exec x and the floor miss)")
    print(
        f"{'workload':<17}{'CV makespan':>12}{'min-max s':>15}{'median error':>14}{'p90 error':>11}{'bias':>8}"
        f"{'worker CPU s':>14}{'CV CPU':>8}{'inside':>8}{'CV / exec x':>13}{'CV / CPU x':>12}"
    )
    for name, (c, lo, hi, med, p90, bias, cpu_s, cpu_cv, inside_runs, c_exec, c_cpu) in spreads.items():
        print(
            f"{name:<17}{c:>12.1%}{f'{lo:.3f}-{hi:.3f}':>15}{med:>14.1%}{p90:>11.1%}{bias:>+8.1%}"
            f"{cpu_s:>14.3f}{cpu_cv:>8.1%}{f'{inside_runs}/{repeat}':>8}{c_exec:>13.1%}{c_cpu:>12.1%}"
        )
    print(
        f"all: median error {statistics.median(errors):.1%} (target <= 10%), p90 {pct(errors, 0.9):.1%} (<= 15%); "
        f"inside p10-p90 {inside_all} of {len(errors)} (a p10-p90 interval should hold ~80%)"
    )
    print_floors(floored)


class Floor(NamedTuple):
    """A workload's execution floor in section 1 beside its makespan; CVs and errors as fractions.

    Each of the floor's figures twice: relative to the floor (what the machine does to a piece of CPU
    work that long) and ``in_run``, in units of the makespan (the spread the floor alone puts into the
    run: its standard deviation or error over the makespan).
    """

    cv: float
    """CV of the busiest process's task execution time over the measured runs."""
    cv_in_run: float
    median_error: float
    """Median absolute error of that time predicted from the runs before (:func:`level_predictions`)."""
    median_in_run: float
    p90_error: float
    p90_in_run: float
    makespan_cv: float
    makespan_median_error: float
    makespan_p90_error: float
    share: float
    """Median over the measured runs of the floor over the makespan."""


def floor_summary(values: list[float], taught: list[bool], makespans: list[float], errors: list[float]) -> Floor:
    """The :class:`Floor` of a workload: ``values`` its floor per run, warm-ups first, the measured runs
    last (as many as ``makespans``); ``taught`` per run whether it had a plan (calibration learns from
    it); ``errors`` the measured runs' makespan errors (predicted minus actual over actual)."""
    first = len(values) - len(makespans)
    floors = values[first:]
    relative, in_run = [], []
    for predicted, floor, makespan in zip(level_predictions(values, taught, first), floors, makespans, strict=True):
        if predicted is not None:
            relative.append(abs(predicted - floor) / floor)
            in_run.append(abs(predicted - floor) / makespan)
    size = [abs(e) for e in errors]
    spread = statistics.stdev(floors) if len(floors) > 1 else 0.0
    return Floor(
        cv(floors),
        spread / statistics.mean(makespans),
        statistics.median(relative) if relative else 0.0,
        statistics.median(in_run) if in_run else 0.0,
        pct(relative, 0.9) if relative else 0.0,
        pct(in_run, 0.9) if in_run else 0.0,
        cv(makespans),
        statistics.median(size),
        pct(size, 0.9),
        statistics.median(f / t for f, t in zip(floors, makespans, strict=True)),
    )


CV_TARGET, P90_TARGET, MEDIAN_TARGET = 0.10, 0.15, 0.10
"""#17's targets for each workload: CV of the makespan over 5 runs, p90 and median error of its prediction."""


def split_miss(value: float, floor: float, target: float) -> tuple[float, float]:
    """How far ``value`` misses ``target`` because of the floor, and beyond it: ``(machine, fanflow)``.

    The floor's own miss (``floor - target``) is the machine's, up to the whole miss; the rest of the
    miss is above the floor, so fanflow's. Both 0 when ``value`` meets the target; all of it the
    machine's when the floor is the larger (the floor's relative spread can exceed the makespan's: the
    makespan adds steady parts, startup and transfers, that dilute it).
    """
    miss = max(0.0, value - target)
    machine = min(miss, max(0.0, floor - target))
    return machine, miss - machine


def print_floors(floored: dict[str, Floor]) -> None:
    """Section 1's execution floor per workload beside the makespan, and how much of each miss is the machine's."""
    print("\nexecution floor: per run the busiest worker process's task execution time (sum of its tasks' exec_s),")
    print("predicted from the runs before as the makespan is; miss: points over the target: machine's part")
    print(
        f"{'workload':<17}{'CV makespan':>12}{'CV floor':>9}{'in run':>8}{'miss: machine':>15}{'p90 error':>11}"
        f"{'floor p90':>10}{'in run':>8}{'miss: machine':>15}{'median error':>13}{'floor median':>13}{'in run':>8}"
        f"{'miss: machine':>15}{'floor/makespan':>16}"
    )

    def miss(value: float, floor: float, in_run: float, target: float) -> str:
        low, high = split_miss(value, in_run, target), split_miss(value, floor, target)
        return "-" if sum(high) == 0 else f"{sum(high) * 100:.1f}: {low[0] * 100:.1f}-{high[0] * 100:.1f}"

    for name, f in floored.items():
        print(
            f"{name:<17}{f.makespan_cv:>12.1%}{f.cv:>9.1%}{f.cv_in_run:>8.1%}"
            f"{miss(f.makespan_cv, f.cv, f.cv_in_run, CV_TARGET):>15}"
            f"{f.makespan_p90_error:>11.1%}{f.p90_error:>10.1%}{f.p90_in_run:>8.1%}"
            f"{miss(f.makespan_p90_error, f.p90_error, f.p90_in_run, P90_TARGET):>15}"
            f"{f.makespan_median_error:>13.1%}{f.median_error:>13.1%}{f.median_in_run:>8.1%}"
            f"{miss(f.makespan_median_error, f.median_error, f.median_in_run, MEDIAN_TARGET):>15}{f.share:>16.2f}"
        )
    n = len(floored)
    fs = floored.values()

    def count(test: Callable[[Floor], bool]) -> str:
        return f"{sum(test(f) for f in fs)} of {n}"

    print(
        f"floor misses CV <= {CV_TARGET:.0%} in {count(lambda f: f.cv > CV_TARGET)} workloads "
        f"({count(lambda f: f.cv_in_run > CV_TARGET)} in run units), p90 <= {P90_TARGET:.0%} in "
        f"{count(lambda f: f.p90_error > P90_TARGET)} ({count(lambda f: f.p90_in_run > P90_TARGET)}); makespan "
        f"over neither target nor floor: CV {count(lambda f: split_miss(f.makespan_cv, f.cv, CV_TARGET)[1] == 0)}"
        f", p90 {count(lambda f: split_miss(f.makespan_p90_error, f.p90_error, P90_TARGET)[1] == 0)}; "
        f"makespan CV minus floor CV, median {statistics.median(f.makespan_cv - f.cv for f in fs) * 100:+.1f} pts"
    )
    print("(floor: the busiest process's tasks alone, the same code on the same inputs every run, without fetches,")
    print(" uploads, claims or waits for inputs; its CV and its error predicted as the makespan is (recent_level of")
    print(" the runs before that had a plan, warm-ups included) are what the machine leaves any scheduler. in run:")
    print(" the same in units of the makespan (standard deviation, error over the run's makespan): the spread the")
    print(" floor alone puts into the run, which no schedule removes. miss: points the makespan is over the target:")
    print(" the machine's part at least the in-run floor's own miss, at most the floor's (if all of the run's work")
    print(" slowed as its tasks did), the rest fanflow's; a floor of a small share of the run (floor/makespan) says")
    print(" little of the rest. exec_s is wall time: it also holds a task's waits for a core (wait ms; on 2 cores")
    print(" the other worker, redis-server and the client take turns with it, and other jobs do) and the GIL the")
    print(" process's other threads take (heartbeat, prefetch: 1-9 ms of CPU a run; a task's time neither on a CPU")
    print(" nor waiting for one measured under 2.5 ms a run); garbage collections inside tasks measured none)")


SETTLE_RUNS = 2
"""Unmeasured runs of a configuration before each of its measured runs in section 2. A plan switch
starts fresh worker processes, and the run right after that cold one is not yet the steady state of a
user re-running one plan: on small image_transform it took 40-70 ms (worker CPU 46-75 ms) where the
third run on the same processes took 30-41 ms (CPU 33-38 ms), 14 pairs each, load ~0.9; with one
unmeasured run section 2 measured only that transient."""
SHORT_RUN_S = 0.1
"""Section 2 gives a workload whose runs take less than this :data:`SHORT_PAIRS` times the pairs: a few
ms of scheduling jitter is 10-40% of such a run, and 5 pairs of 7-50 ms runs put the small tree's ratio
anywhere in 0.85-1.29 between passes of the same code."""
SHORT_PAIRS = 3
NULL_TWIN_MB = 3007
"""The second side of section 2's two-process null: uniform at this size gets worker processes of its own (the
pool gives a run only processes of its exact size) with the CPU of 3008 MB (a quota of 1.6998 against 1.7004
vCPU), as critical-path's plan at 1769 MB does; uniform 3008 MB on both sides runs on one process. With two
processes of one size, the pair order and the settling runs are critical-path's, and only the size is not."""


def compare(base: fanflow.Config, loads: dict[str, Callable[[], list[Any]]], repeat: int, null: bool) -> None:
    """Section 2: critical-path against uniform at 3008 MB, in pairs of measured runs.

    Each measured run follows :data:`SETTLE_RUNS` unmeasured runs of the same
    configuration, so it meets the pool as its own plan left it (a plan that
    changes its sizes between its own runs still pays the cold starts in the
    measured run: the ``cold`` column). The pair's order alternates, so
    neither plan always runs after the other. Runs under :data:`SHORT_RUN_S`
    get :data:`SHORT_PAIRS` times the pairs, and the per-pair ratios are
    summarized with a sign test: how often critical-path was the slower, and
    how likely that count is if both plans were equally fast. A p under
    0.05 is a difference the runs show; above it, the ratio is noise.
    With ``null``, each workload's pairs are followed by as many pairs of
    uniform 3008 MB against itself (:func:`pair_runs` with one
    configuration on both sides): the ratios noise alone gives, to read
    critical-path's against.
    """
    print(
        "\n2. critical-path vs uniform at 3008 MB, pairs of measured runs, each after "
        f"{SETTLE_RUNS} unmeasured runs of its"
    )
    print("   own configuration, pair order alternating (median and min-max; measured GB-s from worker records;")
    print(f"   runs under {SHORT_RUN_S} s get {SHORT_PAIRS}x the pairs)")
    print(
        f"{'workload':<17}{'pairs':>6}{'makespan u -> cp s':>22}{'ratio':>7}{'u min-max':>14}{'cp min-max':>14}"
        f"{'GB-s u -> cp':>18}{'ratio':>7}{'cp plan, MB':>20}{'cold':>8}  per pair: cp/u median, slower, sign test"
    )
    cp = base.replace(planner="critical-path", optimizations="none")
    uniform = base.replace(planner="uniform", memory_mb=3008, optimizations="none")
    twin = uniform.replace(memory_mb=NULL_TWIN_MB)
    added = 0.0
    for name, build in loads.items():
        u_runs, cp_runs = pair_runs(build, uniform, cp, repeat)
        got = {"u": u_runs, "cp": cp_runs}
        pairs = len(u_runs)
        times = {k: [m.run.makespan_s for m in v] for k, v in got.items()}
        mk = {k: statistics.median(v) for k, v in times.items()}
        span = {k: f"{min(v):.3f}-{max(v):.3f}" for k, v in times.items()}
        gb = {k: statistics.median(measured_cost(m) for m in v) for k, v in got.items()}
        cold = {k: sum(sum(w.cold for w in m.workers) for m in v) for k, v in got.items()}
        sizes = sorted({w.memory_mb for w in got["cp"][-1].workers})
        kind = f"{got['cp'][-1].run.plan_kind or '-'} {'/'.join(map(str, sizes))}"
        ratio = pair_ratios(times["u"], times["cp"])
        switched = [str(i) for i, m in enumerate(got["cp"]) if any(w.cold for w in m.workers)]
        print(
            f"{name:<17}{pairs:>6}{mk['u']:>10.3f} -> {mk['cp']:<8.3f}{mk['cp'] / mk['u']:>7.2f}{span['u']:>14}"
            f"{span['cp']:>14}{gb['u']:>8.3f} -> {gb['cp']:<6.3f}{gb['cp'] / gb['u']:>7.2f}{kind:>20}"
            f"{cold['u']:>4} /{cold['cp']:>2}  {ratio.median:.2f}, {ratio.slower} of {pairs}, "
            f"p={ratio.p:.2f}" + (f"; cp cold in pairs {', '.join(switched)}" if switched else "")
        )
        print(f"{'':<23}{split_sides(got['u'], got['cp'], 'u', 'cp')}")
        if null:
            began = time.perf_counter()
            for second, label in ((uniform, "u 3008"), (twin, f"u {NULL_TWIN_MB}, two processes")):
                twins = pair_runs(build, uniform, second, pairs, exact=True)  # as many pairs as cp/u had
                same = pair_ratios(*([m.run.makespan_s for m in side] for side in twins))
                print(
                    f"{'':<17}{len(twins[0]):>6}  null, u 3008 against {label}: ratio {same.median:.2f}, min-max "
                    f"{same.low:.2f}-{same.high:.2f} (cp/u {ratio.low:.2f}-{ratio.high:.2f}), {same.slower} of "
                    f"{len(twins[0])} slower, p={same.p:.2f}"
                )
                print(f"{'':<23}{split_sides(*twins, 'u', 'null')}")
            added += time.perf_counter() - began
    print("(cold: cold starts in all measured runs, u / cp: critical-path changed its sizes between its own runs,")
    print(" in the pairs listed, counted from 0; slower: pairs where critical-path's run took longer;")
    print(" p: two-sided sign test of that count, the chance of a split at least that uneven between equally fast")
    print(" plans: under 0.05 the difference is in the runs, above it the ratio is within their noise;")
    print(" floor: median execution floor of each side's measured runs (the busiest worker process's task execution")
    print(" time, as in section 1), rest: median makespan less floor (transfers, starts, loop, waits for inputs):")
    print(" a size that slows execution moves the floor, one that slows transfers or starts the rest)")
    if null:
        print("(null: the same pairs with uniform 3008 MB on both sides, the second side's ratio to the first, run")
        print(" right after the workload's cp/u pairs: the spread of ratios that noise alone gives between identical")
        print(" configurations, whose median moved 0.95-1.16 between passes of 5 pairs (docs/planning-log.md): a cp/u")
        print(" median no further from 1 is not a difference of plans, nor is a sign test the null also gives (5 of 5")
        print(" pairs is p=0.06). Against itself, u 3008's two sides run on one process; against u")
        print(f" {NULL_TWIN_MB} (the same CPU) each side has processes of its own, as cp/u's sides do when")
        print(" critical-path chose another size, and pays the size switch's cold starts in its settling runs as")
        print(f" cp/u does: what two processes of one size give; the null pairs took {added:.0f} s)")


def split_sides(first: list[RunMetrics], second: list[RunMetrics], a: str, b: str) -> str:
    """Two sides' median execution floor and median rest (makespan less floor), each with its ratio: which
    part of the runs a makespan ratio came from (at least one run per side)."""
    (floor_a, rest_a), (floor_b, rest_b) = floor_and_rest(first), floor_and_rest(second)
    return (
        f"floor {a} -> {b} {floor_a:.3f} -> {floor_b:.3f} s ({_ratio(floor_b, floor_a)}), "
        f"rest {rest_a:.3f} -> {rest_b:.3f} s ({_ratio(rest_b, rest_a)})"
    )


def floor_and_rest(runs: list[RunMetrics]) -> tuple[float, float]:
    """The median execution floor (:func:`busiest_exec_s`) of ``runs`` and the median of their makespan less
    floor: the part no scheduling removes and the part the framework and the machine add to it."""
    floors = [busiest_exec_s(m) for m in runs]
    return statistics.median(floors), statistics.median(m.run.makespan_s - f for m, f in zip(runs, floors, strict=True))


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference > 0 else "-"


class PairRatios(NamedTuple):
    """Per-pair ratios of the second configuration's makespan to the first's."""

    median: float
    low: float
    high: float
    slower: int
    """Pairs where the second configuration's run took longer."""
    p: float
    """Two-sided sign test of ``slower`` (:func:`sign_test`)."""


def pair_ratios(first: list[float], second: list[float]) -> PairRatios:
    """Summary of the ratios ``second[i] / first[i]`` of paired runs (at least one pair)."""
    ratios = [b / a for a, b in zip(first, second, strict=True)]
    slower = sum(r > 1 for r in ratios)
    return PairRatios(statistics.median(ratios), min(ratios), max(ratios), slower, sign_test(slower, len(ratios)))


def pair_runs(
    build: Callable[[], list[Any]], first: fanflow.Config, second: fanflow.Config, repeat: int, exact: bool = False
) -> tuple[list[RunMetrics], list[RunMetrics]]:
    """Section 2's pairs: the measured runs of ``first`` and of ``second``, in pair order. Each follows
    :data:`SETTLE_RUNS` unmeasured runs of its own configuration, the order alternating (``first`` leads the
    even pairs); ``repeat`` pairs, unless ``exact`` is False and the faster run of the first pair took under
    :data:`SHORT_RUN_S`: then :data:`SHORT_PAIRS` times that."""
    got: tuple[list[RunMetrics], list[RunMetrics]] = ([], [])
    pairs = repeat
    i = 0
    while i < pairs:
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            got[side].extend(run(build, (first, second)[side], SETTLE_RUNS + 1)[SETTLE_RUNS:])
        # by the faster of the first pair: a run that paid cold starts says nothing of the workload's length
        if i == 0 and not exact and min(got[0][0].run.makespan_s, got[1][0].run.makespan_s) < SHORT_RUN_S:
            pairs = repeat * SHORT_PAIRS
        i += 1
    return got


def sign_test(k: int, n: int) -> float:
    """Two-sided sign test: the probability of at least ``max(k, n - k)`` of ``n`` fair coin flips landing one way,
    either way (1.0 for ``n`` = 0)."""
    tail = sum(math.comb(n, i) for i in range(max(k, n - k), n + 1)) / 2**n
    return min(1.0, 2 * tail)


def moved(base: fanflow.Config, loads: dict[str, Callable[[], list[Any]]], repeat: int) -> None:
    """Section 3: bytes moved through the store with and without clustering + delayed I/O, and the makespan.

    Uniform at 3008 MB, so both plans run on the same warm processes. After a
    warm-up of each (the history the plans learn from), ``repeat`` rounds,
    each running the plain plan then the clustered one twice and measuring the
    second (the pool left in that plan's state); medians and min-max. Bytes
    depend on the plan, which follows the history, and on which worker claims
    each fan-in; the makespan ratio is a same-round comparison.
    """
    print(f"\n3. bytes moved through the store (uniform 3008 MB; median of {repeat} interleaved runs, min-max)")
    print(
        f"{'workload':<17}{'plain B':>14}{'clustering+delayed-io B':>25}{'saved':>8}{'min-max':>15}"
        f"{'makespan plain -> clustered s':>32}{'ratio':>7}"
    )
    plain_cfg = base.replace(planner="uniform", memory_mb=3008, optimizations="none")
    opt_cfg = base.replace(planner="uniform", memory_mb=3008, optimizations="clustering,delayed-io")
    for name, build in loads.items():
        run(build, plain_cfg, 1)
        run(build, opt_cfg, 1)
        got: dict[str, list[RunMetrics]] = {"plain": [], "opt": []}
        for _ in range(repeat):
            got["plain"] += run(build, plain_cfg, 2)[1:]
            got["opt"] += run(build, opt_cfg, 2)[1:]
        a = statistics.median(bytes_moved(m) for m in got["plain"])
        saved = [1 - bytes_moved(m) / a for m in got["opt"]]
        b = statistics.median(bytes_moved(m) for m in got["opt"])
        mk = {k: statistics.median(m.run.makespan_s for m in v) for k, v in got.items()}
        print(
            f"{name:<17}{a:>14,.0f}{b:>25,.0f}{1 - b / a:>8.1%}{f'{min(saved):.0%}-{max(saved):.0%}':>15}"
            f"{mk['plain']:>17.3f} -> {mk['opt']:<11.3f}{mk['opt'] / mk['plain']:>7.2f}  (target >= 50%)"
        )


def planning_times(cp: fanflow.Config, history_runs: int) -> None:
    """Section 4: the critical-path planner's time on tree reductions of 8,191 and 100,000 tasks.

    With an empty history, then with ``history_runs`` stored runs of the same DAG (recorded on the
    embedded default into a temporary SQLite file, beside 3 runs of gemm: another DAG, other
    functions). Runs of the 100k-task tree are stored after the 8,191-task plan is timed, so that plan
    is timed again with both trees' runs (one function: it reads the newest runs of either). Each
    history row is timed twice: "cold" is the first plan in a process (decoded runs and replayed start
    latencies forgotten), "warm" the next plan of that process. The newest 3 runs of a tree are what a
    plan of either tree reads (``ENOUGH_RUNS``); their workers are printed: the embedded default runs a
    tree as one worker when it runs serially and as one per branch when it spreads (50,000 for the 100k
    tree, whose start latencies a cold plan replays), as its measured windows chose. "GC s": CPU time of
    the garbage collections during the cold plan, part of "CPU s" (what a full collection costs depends
    on what else the process holds, not on the planner: a row that moves from run to run shows it here).
    """
    print(
        "\n4. planning time, critical-path planner, tree reductions, CPU time of the process "
        "(time.process_time; targets: 8,191 tasks <= 0.5 s, 100k <= 5 s)"
    )
    module = load_module(str(EXAMPLES / "tree_reduction.py"))
    every = "clustering,delayed-io,prewarm,preload"
    trees = {leaves: DAG.from_sinks([module.build(leaves)]) for leaves in (8192, 100_001)}
    print(f"{'history':<44}{'tasks':>8}  {'optimizations':<15}{'CPU s':>8}{'wall s':>8}{'CPU warm s':>12}{'GC s':>8}")
    collecting = [0.0, 0.0]  # CPU time in collections, CPU time at the start of the current one

    def collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[1] = time.process_time()
        else:
            collecting[0] += time.process_time() - collecting[1]

    def timed(history: str, tree: DAG, config: fanflow.Config, cold_and_warm: bool) -> None:
        clear_cache()
        collecting[0] = 0.0
        gc.callbacks.append(collection)
        began, cpu = time.perf_counter(), time.process_time()
        plan = make_plan(tree, config)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        gc.callbacks.remove(collection)
        warm = ""
        if cold_and_warm:
            again = time.process_time()
            make_plan(tree, config)
            warm = f"{time.process_time() - again:.3f}"
        opts = "none" if config.optimizations == "none" else "all four"
        used = "" if plan.used_history == (config.metadata != "none") else " (history not used!)"
        print(f"{history + used:<44}{len(tree):>8,}  {opts:<15}{cpu:>8.3f}{wall:>8.3f}{warm:>12}{collecting[0]:>8.3f}")

    for tree in trees.values():
        for opts in ("none", every):
            timed("empty", tree, cp.replace(optimizations=opts), False)
    with tempfile.TemporaryDirectory(prefix="fanflow-planning-") as tmp:
        url = f"sqlite:///{tmp}/history.db"
        record = fanflow.Config(progress=False, metadata=url)
        gemm = load_module(str(EXAMPLES / "gemm.py"))
        for _ in range(3):
            fanflow.compute(gemm.build(512, 256), config=record)
        stored = cp.replace(metadata=url, optimizations=every)
        for leaves, tree in trees.items():
            began = time.perf_counter()
            for _ in range(history_runs):
                module.build(leaves).compute(record)
            drain()
            workers = "/".join(f"{r['workers']:,}" for r in open_metadata(url).runs(limit=3))
            print(
                f"  (stored {history_runs} runs of the {len(tree):,}-task tree in {time.perf_counter() - began:.0f} s; "
                f"workers of the newest 3: {workers})"
            )
            timed(f"{history_runs} runs of this tree, 3 of gemm", tree, stored, True)
        timed(f"{history_runs} runs of the 100k tree, {history_runs} of this", trees[8192], stored, True)


def split(m: RunMetrics) -> str:
    """The run's tasks per worker process, busiest first (``65/48``): its invocations grouped by the process
    that ran them (a worker id is ``<host>-<pid>-<salt>-<n>``)."""
    per_process: dict[str, int] = {}
    for w in m.workers:
        process = w.worker.rsplit("-", 1)[0]
        per_process[process] = per_process.get(process, 0) + len(w.tasks)
    return "/".join(str(n) for n in sorted(per_process.values(), reverse=True))


def ends(m: RunMetrics) -> str:
    """When each worker process finished its last task of the run, ms after the run was submitted, earliest
    first (``59/88``): with the same tasks per process and CPU, a gap between them is time one process waited
    for a core the other did not (on 2 cores, the one sharing its core with ``redis-server`` and the client)."""
    last: dict[str, float] = {}
    for t in m.tasks:
        if t.worker:
            process = t.worker.rsplit("-", 1)[0]
            last[process] = max(last.get(process, 0.0), t.finished_at)
    return "/".join(f"{(end - m.run.submitted_at) * 1e3:.0f}" for end in sorted(last.values()))


def starts(m: RunMetrics) -> tuple[str, str]:
    """When each worker process got its first invocation of the run, and when it began that
    invocation's work, ms after the run was submitted, in the order the processes began (``5/7``,
    ``9/12``): a late receipt is the client's or the pool's delivery, a late start after an early
    receipt the worker's own (verify, DAG, begin)."""
    received = {str(e.get("worker")): float(e["received_at"]) for e in m.events if e.get("kind") == "worker_started"}
    first: dict[str, tuple[float, float]] = {}
    for w in m.workers:
        process = w.worker.rsplit("-", 1)[0]
        if process not in first or w.started_at < first[process][1]:
            first[process] = (received.get(w.worker, w.started_at), w.started_at)
    ordered = sorted(first.values(), key=lambda pair: pair[1])

    def ms(times: list[float]) -> str:
        return "/".join(f"{(t - m.run.submitted_at) * 1e3:.0f}" for t in times)

    return ms([got for got, _ in ordered]), ms([began for _, began in ordered])


def throttled() -> int:
    """CFS periods so far in which a CPU quota throttled a worker process of this benchmark's pool
    (``nr_throttled`` of each one's cgroup, v1 or v2); 0 where cgroups are not readable."""
    total = 0
    for pid in worker_cpu_s():
        try:
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                _, controllers, path = line.split(":", 2)
                if controllers == "" and (Path("/sys/fs/cgroup") / "cgroup.controllers").is_file():
                    stat = Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.stat"
                elif "cpu" in controllers.split(","):
                    mount = next(m for m in ("cpu", "cpu,cpuacct") if (Path("/sys/fs/cgroup") / m).is_dir())
                    stat = Path("/sys/fs/cgroup") / mount / path.lstrip("/") / "cpu.stat"
                else:
                    continue
                fields = dict(row.split() for row in stat.read_text().splitlines())
                total += int(fields.get("nr_throttled", 0))
                break
        except (OSError, ValueError, StopIteration):  # the process ended while read, or no such group
            continue
    return total


def worker_cpu_s() -> dict[int, float]:
    """CPU seconds used so far by each worker process of this benchmark's pool, all threads, by pid."""
    return {pid: cpu for pid, (redis, cpu, _, _) in pool_processes().items() if not redis}


def pool_processes() -> dict[int, tuple[bool, float, int, float]]:
    """This benchmark's child processes by pid: whether it is the ``redis-server``, the CPU seconds it used so
    far (all threads), its minor page faults so far, and the seconds its threads waited runnable for a CPU
    so far (the run queue, a CPU quota's throttling included).

    The pool runs in this process (client-started), so its workers are this
    process's children, and so is ``redis-server``. CPU from
    ``/proc/<pid>/task/*/schedstat`` (nanoseconds, not the 10 ms ticks of
    ``/proc/<pid>/stat``), and the wait beside it; faults from
    ``/proc/<pid>/stat``; empty where there is no ``/proc``.
    """
    me = str(os.getpid())
    found: dict[int, tuple[bool, float, int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, _, rest = stat.read_text().rpartition(")")
            fields = rest.split()
            if fields[1] != me:
                continue
            threads = [task.read_text().split() for task in stat.parent.glob("task/*/schedstat")]
            cpu, waited = (sum(int(t[i]) for t in threads) / 1e9 for i in (0, 1))
            found[int(stat.parent.name)] = (comm.endswith("(redis-server"), cpu, int(fields[7]), waited)
        except (OSError, IndexError, ValueError):  # the process or a thread ended while read
            continue
    return found


def exec_factors(runs: list[RunMetrics]) -> list[float]:
    """Per run, how much longer the tasks of its slowest worker process took to execute than the same
    tasks over all of ``runs``: per process, the median over its tasks of ``exec_s`` over that task's
    median ``exec_s``; the largest of them (1.0 where no task ran in every run).

    The runs are of one DAG, so a task is the same code on the same inputs in each, and what changes its
    time is the machine: this one's vCPUs ran a fixed loop at one of two speeds about 1.8x apart, in phases
    of 0.1 s to seconds, each vCPU on its own, with nothing else running in the VM. In the real-size tree's
    runs a worker's median task time (0.31-0.65 us) followed its CPU for the run (0.08-0.14 s), correlation
    0.87-0.92 over 28 runs. The slowest process, as a run's makespan is mostly the last process's end.
    """
    times: dict[int, list[float]] = {}
    for m in runs:
        for t in m.tasks:
            if t.exec_s > 0:
                times.setdefault(t.task, []).append(t.exec_s)
    typical = {task: statistics.median(v) for task, v in times.items() if len(v) == len(runs)}
    factors = []
    for m in runs:
        per_process: dict[str, list[float]] = {}
        for t in m.tasks:
            if t.exec_s > 0 and t.task in typical and t.worker:
                per_process.setdefault(t.worker.rsplit("-", 1)[0], []).append(t.exec_s / typical[t.task])
        factors.append(max((statistics.median(r) for r in per_process.values()), default=1.0))
    return factors


def busiest_exec_s(m: RunMetrics) -> float:
    """The task execution time of the run's busiest worker process: per process (a worker id is
    ``<host>-<pid>-<salt>-<n>``), the sum of ``exec_s`` of the tasks and map elements it ran; the largest.

    The same code on the same inputs in every run of one plan, without fetches, uploads, claims or waits
    for inputs: a run cannot end before its busiest process has executed its tasks, so that time's spread
    is a floor under the makespan's that no scheduling removes (as long as the plan puts the same tasks on
    one process: the ``tasks per process`` column). ``exec_s`` is wall time around the task function, so
    it also holds what interrupts the function: garbage collections its allocations trigger (of the
    framework's objects too), other threads of the process taking the GIL, and other processes taking
    the core (``docs/planning-log.md`` measures each).
    """
    return busiest_process(m)[1]


def busiest_process(m: RunMetrics) -> tuple[int, float]:
    """The pid of the worker process with the most task execution time in the run, and that time
    (:func:`busiest_exec_s`); (0, 0.0) for a run without tasks run."""
    per_process: dict[int, float] = {}
    for t in m.tasks:
        for worker, exec_s in ((t.worker, t.exec_s), *((e.worker, e.exec_s) for e in t.elements)):
            if worker:
                pid = int(worker.rsplit("-", 3)[1])
                per_process[pid] = per_process.get(pid, 0.0) + exec_s
    return max(per_process.items(), key=lambda item: item[1], default=(0, 0.0))


def level_predictions(values: list[float], taught: list[bool], first: int) -> list[float | None]:
    """``values[first:]`` each predicted as a run's makespan is calibrated:
    :func:`~fanflow.planning.calibrate.recent_level` of the :data:`RECENT` latest values before it (newest
    first) whose run ``taught`` calibration (had a plan: a run planned from defaults, the first warm-up,
    teaches nothing); None for a run with no such value before it.
    """
    predicted: list[float | None] = []
    for i in range(first, len(values)):
        before = [values[j] for j in range(i - 1, -1, -1) if taught[j]][:RECENT]
        predicted.append(recent_level(before) if before else None)
    return predicted


def machine_busy_s() -> float:
    """CPU seconds this machine's CPUs have run anything so far, all processes (user, nice, system, irq and
    softirq time in ``/proc/stat``, 10 ms ticks); 0.0 where there is no ``/proc/stat``."""
    ticks = cpu_ticks()
    return sum(ticks[i] for i in (0, 1, 2, 5, 6)) / os.sysconf("SC_CLK_TCK") if ticks else 0.0


def steal_s() -> float:
    """CPU seconds the hypervisor has taken from this machine's CPUs so far (``steal`` in ``/proc/stat``).

    The benchmarks run in a virtual machine, and a run the host slows shows here, in that run's row: a
    quiet run's first measured image_transform run took 0.656 s against 0.41 s with nothing in the
    platform to show why (no plan change, cold start or page faults). 0.0 where there is no ``/proc/stat``.
    """
    ticks = cpu_ticks()
    return ticks[7] / os.sysconf("SC_CLK_TCK") if ticks else 0.0


def cpu_ticks() -> list[int]:
    """The all-CPU line of ``/proc/stat`` (user, nice, system, idle, iowait, irq, softirq, steal, ...), in
    ticks; empty where it cannot be read."""
    try:
        ticks = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return []
    return ticks if len(ticks) >= 8 else []


def cv_per_cpu(makespans: list[float], cpu: list[float]) -> float:
    """The CV of ``makespans`` once each is divided by its run's worker CPU (``cpu``) over their median.

    Runs of one plan that split their tasks and invocations alike do the same work, so a run whose workers
    needed more CPU for it ran on a slower machine (or paid faults or collections: the faults column says);
    what spread is left is waits and order. 0.0 when a run has no CPU measured.
    """
    if not cpu or min(cpu) <= 0:
        return 0.0
    typical = statistics.median(cpu)
    return cv([t / (c / typical) for t, c in zip(makespans, cpu, strict=True)])


def cv(values: list[float]) -> float:
    """Coefficient of variation: standard deviation over mean."""
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


if __name__ == "__main__":
    main()
