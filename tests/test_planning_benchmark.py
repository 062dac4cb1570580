"""benchmarks/planning.py's own arithmetic: the execution floor from task records, the floor's predictions,
how a miss splits between the machine and fanflow, the summary of a pair protocol's ratios, and the
configurations section 2's nulls compare."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

import fanflow
from fanflow.metrics.records import FINISHED, ElementRecord, RunMetrics, RunRecord, TaskRecord, WorkerRecord
from fanflow.planning.calibrate import recent_level
from fanflow.platforms.processes.cgroups import cpu_quota_us
from fanflow.platforms.sizing import blas_threads, vcpus

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _benchmark(file: str = "planning.py") -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # the benchmark imports its sibling _redis
    try:
        spec = importlib.util.spec_from_file_location(f"{file[:-3]}_benchmark", BENCHMARKS / file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


bench = _benchmark()
replay = _benchmark("level_replay.py")


def task(t: int, worker: str, exec_s: float, elements: tuple[tuple[str, float], ...] = ()) -> TaskRecord:
    record = TaskRecord(
        "r", t, f"t{t}", "f", [], FINISHED, worker, 3008, 1, 0.0, 1.0, exec_s, 0.5, 0.5, [], 0, False, 0.0, 0, 0, 0
    )
    record.elements = [
        ElementRecord(i, w, 3008, 1, 0.0, 1.0, e, 0.0, 0.0, 0, 0, 0.0) for i, (w, e) in enumerate(elements)
    ]
    return record


def metrics(*tasks: TaskRecord) -> RunMetrics:
    run = RunRecord("r", "sig", "sink", "succeeded", "critical-path", "processes", "none", 3008, 0.0, 9.0, 9.0)
    return RunMetrics(run, list(tasks), [])


def test_the_floor_is_the_busiest_process_s_execution_time_over_all_its_invocations() -> None:
    # worker ids are <host>-<pid>-<salt>-<n>: invocations 1 and 2 of process 11 add up, process 22 is apart
    run = metrics(
        task(0, "h-11-s-1", 0.2),
        task(1, "h-11-s-2", 0.3),
        task(2, "h-22-s-1", 0.4),
        task(3, "h-22-s-3", 0.05, elements=(("h-11-s-4", 0.1), ("h-22-s-3", 0.02))),  # a map's elements count
        task(4, "", 0.0),  # not run (a fetched or lost task): no process
    )
    assert bench.busiest_exec_s(run) == pytest.approx(0.6)  # process 11: 0.2 + 0.3 + 0.1; 22: 0.47
    assert bench.busiest_process(run) == (11, pytest.approx(0.6))  # its pid, for its /proc counters
    assert bench.busiest_exec_s(metrics()) == 0.0
    # fetches, uploads and waits (fetch_s, store_s, finished_at - started_at) are not in it
    assert bench.busiest_exec_s(metrics(task(0, "h-1-s-1", 0.1))) == pytest.approx(0.1)


def test_the_floor_is_predicted_from_the_runs_before_that_taught_calibration() -> None:
    values = [5.0, 1.0, 1.2, 1.1, 0.9, 2.0]
    taught = [False, True, True, True, True, True]  # the first warm-up was planned from defaults
    predicted = bench.level_predictions(values, taught, 3)
    # run 3 from runs 2 and 1 (not 0): the lower of 2; run 4 from 3, 2, 1; run 5 from 4, 3, 2
    assert predicted == [recent_level([1.2, 1.0]), recent_level([1.1, 1.2, 1.0]), recent_level([0.9, 1.1, 1.2])]
    assert predicted[0] == 1.0  # the slower of 2 is taken as noise
    assert bench.level_predictions([1.0, 2.0], [False, True], 1) == [None]  # nothing before that taught


def test_the_floor_summary_sets_the_floor_s_spread_and_errors_beside_the_makespan_s() -> None:
    floors = [5.0, 1.0, 1.0, 1.0, 1.0, 2.0]  # 3 warm-ups, 3 measured runs
    taught = [False, True, True, True, True, True]
    makespans = [4.0, 4.0, 5.0]
    f = bench.floor_summary(floors, taught, makespans, [0.1, -0.2, 0.05])
    assert f.cv == pytest.approx(statistics.stdev([1.0, 1.0, 2.0]) / (4 / 3))
    assert f.cv_in_run == pytest.approx(statistics.stdev([1.0, 1.0, 2.0]) / statistics.mean(makespans))
    # predicted 1.0 each time (the last from 1.0, 1.0, 1.0): errors 0, 0 and 1.0 -> 2.0
    assert (f.median_error, f.p90_error) == (0.0, pytest.approx(0.5))
    assert (f.median_in_run, f.p90_in_run) == (0.0, pytest.approx(1.0 / 5.0))
    assert f.makespan_cv == pytest.approx(statistics.stdev(makespans) / statistics.mean(makespans))
    assert (f.makespan_median_error, f.makespan_p90_error) == (pytest.approx(0.1), pytest.approx(0.2))
    assert f.share == pytest.approx(0.25)  # 1/4, 1/4, 2/5


def test_a_miss_is_the_machine_s_up_to_the_floor_s_own_miss() -> None:
    split = bench.split_miss
    assert split(0.08, 0.12, 0.10) == (0.0, 0.0)  # the target met: no miss, whatever the floor
    machine, fanflow = split(0.16, 0.12, 0.10)
    assert (machine, fanflow) == (pytest.approx(0.02), pytest.approx(0.04))
    assert split(0.16, 0.05, 0.10) == (0.0, pytest.approx(0.06))  # the floor meets it: all of it fanflow's
    assert split(0.12, 0.20, 0.10) == (pytest.approx(0.02), 0.0)  # the floor misses by more: all the machine's


def test_a_makespan_that_moved_with_its_worker_cpu_leaves_no_spread_per_cpu() -> None:
    slowed = [0.050, 0.060, 0.055, 0.065]  # the same work at other speeds: CPU in proportion
    assert bench.cv(slowed) > 0.09
    assert bench.cv_per_cpu(slowed, [0.040, 0.048, 0.044, 0.052]) == pytest.approx(0.0, abs=1e-12)
    assert bench.cv_per_cpu(slowed, [0.05] * 4) == pytest.approx(bench.cv(slowed))  # the CPU did not move
    assert bench.cv_per_cpu(slowed, [0.05, 0.0, 0.05, 0.05]) == 0.0  # a run without CPU measured: no reading


def test_pair_ratios_are_the_second_over_the_first_with_a_sign_test() -> None:
    summary = bench.pair_ratios([1.0, 2.0, 1.0, 1.0, 1.0, 1.0], [1.1, 1.8, 1.2, 1.05, 1.3, 1.02])
    assert summary.median == pytest.approx(1.075)
    assert (summary.low, summary.high) == (pytest.approx(0.9), pytest.approx(1.3))
    assert summary.slower == 5
    assert summary.p == pytest.approx(bench.sign_test(5, 6)) and summary.p == pytest.approx(14 / 64)
    same = bench.pair_ratios([1.0, 1.0], [1.0, 1.0])
    assert (same.median, same.slower, same.p) == (1.0, 0, 0.5)  # equal runs are not slower


def test_pairs_alternate_settle_and_triple_only_short_runs_unless_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_run(build: object, cfg: str, times: int) -> list[RunMetrics]:
        calls.append(f"{cfg}x{times}")
        return [metrics() for _ in range(times)]  # makespan 9 s: not short

    monkeypatch.setattr(bench, "run", fake_run)
    first, second = bench.pair_runs(lambda: [], "a", "b", 3)
    assert len(first) == len(second) == 3
    settled = f"x{bench.SETTLE_RUNS + 1}"  # each measured run after its settling runs
    assert calls == [f"{c}{settled}" for c in ("a", "b", "b", "a", "a", "b")]  # the order alternates

    short = metrics()
    short.run.makespan_s = bench.SHORT_RUN_S / 2
    monkeypatch.setattr(bench, "run", lambda build, cfg, times: [short] * times)
    assert len(bench.pair_runs(lambda: [], "a", "b", 2)[0]) == 2 * bench.SHORT_PAIRS
    assert len(bench.pair_runs(lambda: [], "a", "a", 6, exact=True)[1]) == 6


def test_the_level_replay_predicts_a_run_from_the_earlier_runs_of_its_plan_that_started_as_it_did() -> None:
    def run(i: int, plan: str, makespan: float, cold: int = 0, hog: bool = False) -> dict[str, object]:
        return {"i": i, "plan": plan, "cold": cold, "makespan": makespan, "hog": hog}

    sequence = [
        run(0, "", 0.9, cold=2),  # planned from defaults: teaches nothing
        run(1, "uniform 1769", 0.5),
        run(2, "uniform 1769", 0.4),
        run(3, "uniform 1769", 0.45),  # measured from here
        run(4, "uniform 3008", 0.3, cold=1),  # a plan not run before: not replayed
        run(5, "uniform 1769", 0.7, hog=True),
        run(6, "uniform 1769", 0.42),
        run(7, "uniform 3008", 0.31),  # its one earlier run started cold: not this way
    ]
    live = replay.replayed(sequence, replay.RULES["current"])
    assert [r["i"] for r, _ in live] == [3, 5, 6]
    # newest first, as calibration reads them; the current rule is calibrate.recent_level of the latest 3
    assert [p for _, p in live] == [
        recent_level([0.4, 0.5]),
        recent_level([0.45, 0.4, 0.5]),
        recent_level([0.7, 0.45, 0.4]),
    ]
    assert [p for _, p in replay.replayed(sequence, replay.RULES["2nd of 4"])] == [0.4, 0.45, 0.45]
    assert replay.error(sequence[6], 0.63) == pytest.approx(0.5)
    assert replay.p90([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.46)


def test_floor_and_rest_split_each_side_s_median_makespan() -> None:
    def run(makespan_s: float, exec_s: float) -> RunMetrics:
        m = metrics(task(0, "h-1-s-1", exec_s))
        m.run.makespan_s = makespan_s
        return m

    u = [run(1.0, 0.6), run(1.2, 0.7), run(1.1, 0.8)]
    cp = [run(1.2, 0.6), run(1.3, 0.6), run(1.5, 0.7)]
    assert bench.floor_and_rest(u) == (pytest.approx(0.7), pytest.approx(0.4))  # rests 0.4, 0.5, 0.3
    assert bench.floor_and_rest(cp) == (pytest.approx(0.6), pytest.approx(0.7))  # rests 0.6, 0.7, 0.8
    # the same floor and a longer rest: cp's extra time is outside execution
    assert bench.split_sides(u, cp, "u", "cp") == "floor u -> cp 0.700 -> 0.600 s (0.86), rest 0.400 -> 0.700 s (1.75)"
    assert "rest 0.000 -> 0.300 s (-)" in bench.split_sides([run(0.6, 0.6)], [run(0.9, 0.6)], "u", "cp")


def test_the_nulls_run_uniform_3008_against_itself_and_against_its_own_processes_of_the_same_cpu(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    compared: list[tuple[tuple[str, int], tuple[str, int], int, bool]] = []

    def fake_pairs(
        build: object, first: fanflow.Config, second: fanflow.Config, repeat: int, exact: bool = False
    ) -> tuple[list[RunMetrics], list[RunMetrics]]:
        compared.append(((first.planner, first.memory_mb), (second.planner, second.memory_mb), repeat, exact))
        sides = []
        for cfg in (first, second):
            m = metrics(task(0, "h-1-s-1", 0.5))
            m.workers = [WorkerRecord("h-1-s-1", 0.0, 1.0, False, cfg.memory_mb, 0.0, [0])]
            sides.append([m] * repeat)
        return sides[0], sides[1]

    monkeypatch.setattr(bench, "pair_runs", fake_pairs)
    base = fanflow.Config(platform="processes", store="redis://localhost:1/0", max_workers=2, metadata="none")
    bench.compare(base, {"w": lambda: []}, 4, null=True)
    twin = bench.NULL_TWIN_MB
    assert compared == [
        (("uniform", 3008), ("critical-path", base.memory_mb), 4, False),
        (("uniform", 3008), ("uniform", 3008), 4, True),  # one process on both sides
        (("uniform", 3008), ("uniform", twin), 4, True),  # processes of its own: the pool matches sizes exactly
    ]
    # ... with the CPU of 3008 MB: its quota within 0.1% (0.03%), the same numeric threads
    assert twin != 3008 and cpu_quota_us(twin) == pytest.approx(cpu_quota_us(3008), rel=1e-3)
    assert blas_threads(vcpus(twin)) == blas_threads(vcpus(3008))
    printed = capsys.readouterr().out
    assert f"null, u 3008 against u {twin}, two processes" in printed
    assert printed.count("floor u -> ") == 3  # cp/u and both nulls split into floor and rest
