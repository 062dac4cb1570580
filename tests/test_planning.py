"""Planning: predictions from history, the simulator on hand-computed DAGs, the planners, and runs with each planner."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import add, processes_config

import fanflow
from fanflow.cli.main import app
from fanflow.client.session import session
from fanflow.dag import placement
from fanflow.dag.graph import DAG
from fanflow.metrics import History
from fanflow.metrics.executions import Executions
from fanflow.metrics.records import FINISHED, RunMetrics, TaskRecord
from fanflow.planning import Assignment, DagCosts, Predictor, make_plan, planners, simulate
from fanflow.planning.planners import (
    MEMORY_CHOICES,
    MERGE_SLACK,
    critical_path_assignment,
    makespan_floor,
    merge_labels,
    place,
    upload_flags,
)
from fanflow.planning.predict import (
    DEFAULT_EXEC_S,
    FIT_SAMPLES,
    Line,
    MemoryModel,
    _grouped,
    _processes,
    clear_cache,
    fit_line,
    kept_outputs,
    pure_latencies,
    sla_z,
)
from fanflow.store.metadata import drain, open_metadata
from fanflow.worker.loop import LARGE_OUTPUT_BYTES


@fanflow.task
def blob(n: int) -> bytes:
    return b"x" * n


@fanflow.task
def grow(data: bytes, extra: int) -> bytes:
    return data + b"y" * extra


@fanflow.task
def join(*parts: bytes) -> int:
    return sum(len(p) for p in parts)


@fanflow.task
def never_ran(x: int) -> int:
    return x


def tree(n: int) -> fanflow.Node:
    level: list = list(range(n))
    while len(level) > 1:
        paired = [add(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def fan(n: int = 3) -> fanflow.Node:
    root = blob(1000)
    return join(*[grow(root, 100 * (i + 1)) for i in range(n)])


def costs_of(n: int, exec_s: float = 1.0, **kwargs: float) -> DagCosts:
    """Hand-made predictions: every task ``exec_s`` at 512 MB, fetch 0.1 s, upload 0.05 s, start 0.5 s."""
    return DagCosts.uniform(
        n, exec_s, 100.0, kwargs.get("fetch", 0.1), kwargs.get("upload", 0.05), kwargs.get("start", 0.5)
    )


# -- predictions -------------------------------------------------------------------------


def test_fit_line_and_sla() -> None:
    line = fit_line([0, 1, 2, 3], [1, 3, 5, 7])
    assert line is not None and line.slope == pytest.approx(2) and line.intercept == pytest.approx(1)
    flat = fit_line([5, 5], [1.0, 3.0])
    assert flat is not None and flat.slope == 0 and flat.at(100) == pytest.approx(2.0)
    assert fit_line([], []) is None
    assert sla_z("mean") == 0 and sla_z("p50") == pytest.approx(0)
    assert sla_z("p95") == pytest.approx(1.645, abs=1e-3)


def test_a_stall_among_many_samples_does_not_move_the_fit() -> None:
    """One sample 50x the others (a scheduler stall) is dropped once there are enough samples to tell."""
    xs = [float(i) for i in range(12)]
    ys = [1.0 + 0.1 * x for x in xs]
    ys[5] = 50.0
    line = fit_line(xs, ys)
    assert line is not None and line.intercept == pytest.approx(1.0) and line.slope == pytest.approx(0.1)
    assert line.sd == pytest.approx(0.0, abs=1e-9) and line.count == 12
    few = fit_line(xs[:6], ys[:6])  # too few to call any sample an outlier: plain least squares
    assert few is not None and few.at(2.5) == pytest.approx(sum(ys[:6]) / 6)


def test_a_line_of_many_samples_is_fitted_on_a_repeatable_subset_and_counts_them_all() -> None:
    """Past FIT_SAMPLES the fit uses a subset (its cost is the first plan's after large runs), chosen the
    same way each time, so plans repeat; the line still counts every sample (tied lines weigh by it)."""
    n = 3 * FIT_SAMPLES
    rng = np.random.default_rng(7)
    xs = rng.uniform(0, 1e6, n)
    ys = 0.002 + 3e-9 * xs + rng.normal(0, 1e-4, n)
    line = fit_line(xs, ys)
    assert line is not None and line.count == n and line == fit_line(xs, ys)
    assert line.intercept == pytest.approx(0.002, rel=0.01) and line.slope == pytest.approx(3e-9, rel=0.01)
    assert line.sd == pytest.approx(1e-4, rel=0.02)


def test_a_large_output_that_was_not_uploaded_is_a_zero_byte_upload() -> None:
    def record(task: int, out: int, uploaded: bool) -> TaskRecord:
        r = TaskRecord(
            "r", task, "t", "f", [], FINISHED, "w", 512, 1, 0.0, 1.0, 0.0, 0.0, 0.0, [], out, False, 0.0, 0, 0, 0
        )
        r.uploaded = uploaded
        return r

    big = LARGE_OUTPUT_BYTES
    records = [
        record(0, big, False),  # every reader claimed first, all by its worker: never sent
        record(1, big, True),  # some reader was elsewhere: uploaded
        record(2, 10, False),  # small and kept by the claim: sent to the claim script all the same
    ]
    assert kept_outputs(Executions.of_records(records)).tolist() == [True, False, False]


def test_predictions_from_history_and_explicit_unknowns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    cfg = fanflow.Config(metadata=url, progress=False, planner="none")
    for _ in range(3):
        assert fan().compute(cfg) == 3 * 1000 + 600
    drain()
    dag = DAG.from_sinks([fan()])
    history = History.for_dag(dag, url)
    predictor = Predictor(history)
    grown = predictor.out_bytes(grow.identity, 1000)
    assert grown.known and grown.samples == 9
    assert 1000 < grown.value < 1400
    e = predictor.exec_s(blob.identity, 512, 0)
    assert e.known and e.value > 0
    # memory past one vCPU buys nothing; less memory is slower, in proportion
    assert predictor.exec_s(blob.identity, 256, 0).value == pytest.approx(2 * e.value)
    assert predictor.exec_s(blob.identity, 3008, 0).value == pytest.approx(
        predictor.exec_s(blob.identity, 1769, 0).value
    )
    unknown = predictor.exec_s(never_ran.identity, 512, 10)
    assert not unknown.known and unknown.value == DEFAULT_EXEC_S
    assert not predictor.out_bytes(never_ran.identity, 0).known
    costs = predictor.costs(dag)
    assert costs.defaults == []
    assert costs.upload.known and costs.mix.known
    assert costs.start_s(512) > 0 and costs.upload_s(1000, 512) > 0
    # percentiles sit above the mean
    p99 = Predictor(history, "p99").exec_s(grow.identity, 512, 1000).value
    assert p99 >= Predictor(history, "mean").exec_s(grow.identity, 512, 1000).value


def test_without_history_every_task_is_from_defaults() -> None:
    dag = DAG.from_sinks([fan()])
    costs = Predictor(None).costs(dag)
    assert costs.defaults == list(range(len(dag)))
    assert all(e > 0 for e in costs.exec_at(512)) and all(o > 0 for o in costs.out_bytes)
    assert not costs.upload.known and not costs.mix.known


# -- simulation --------------------------------------------------------------------------


def diamond() -> DAG:
    a = blob(1)
    return DAG.from_sinks([join(grow(a, 1), grow(a, 2))])


def test_simulation_of_a_diamond_by_hand() -> None:
    dag = diamond()  # 0: blob, 1: grow, 2: grow, 3: join
    sim = simulate(dag, costs_of(4), Assignment([512] * 4))
    # w0 starts at 0.5: blob 0.5 -> 1.55, keeps grow-1 (1.55 -> 2.6); grow-2 on a new worker from 2.05,
    # fetches blob's output: 2.05 -> 3.2; it claims join, which fetches grow-1's output: 3.2 -> 4.35.
    assert sim.finish == pytest.approx([1.55, 2.6, 3.2, 4.35])
    assert sim.makespan == pytest.approx(4.35)
    assert sim.critical_path == [0, 2, 3]
    assert sim.workers == 2
    assert sim.cost_gb_s == pytest.approx(0.5 * ((2.6 - 0.5) + (4.35 - 2.05)))
    # grow-2's claim of join is won, so the loop never stores grow-2's output (store-unless-claimed)
    assert sim.bytes_fetched == pytest.approx(200) and sim.bytes_uploaded == pytest.approx(300)
    assert sim.up_bytes == pytest.approx([100, 100, 0, 100])


def test_simulation_with_one_label_runs_one_worker_and_skips_safe_uploads() -> None:
    dag = diamond()
    sim = simulate(dag, costs_of(4), Assignment([1024] * 4, [0] * 4, [False] * 4))
    # one worker at 1024 MB (twice as fast, its start too), nothing fetched; every task is anchored in the one label,
    # so every upload but the sink's is skipped.
    each = (1.0 + 0.05) / 2
    assert sim.workers == 1
    assert sim.makespan == pytest.approx(0.5 / 2 + 4 * each)
    assert sim.bytes_fetched == 0 and sim.bytes_uploaded == pytest.approx(100)
    assert sim.cost_gb_s == pytest.approx(1.0 * 4 * each)


def test_simulation_worker_cap_queues_invocations() -> None:
    dag = DAG.from_sinks([join(*[blob(i) for i in range(4)])])
    free = simulate(dag, costs_of(5), Assignment([512] * 5))
    capped = simulate(dag, costs_of(5), Assignment([512] * 5), max_workers=2)
    assert capped.makespan > free.makespan


# -- planners ------------------------------------------------------------------------------


def test_wukong_without_optimizations_leaves_the_loop_its_own_wukong_policy() -> None:
    plan = make_plan(DAG.from_sinks([fan(3)]), fanflow.Config(planner="wukong", metadata="none", optimizations="none"))
    assert plan.annotations == {} and plan.simulation is None


def test_wukong_labels_fan_out_and_fan_in() -> None:
    dag = DAG.from_sinks([fan(3)])  # 0: blob, 1-3: grow, 4: join
    plan = make_plan(dag, fanflow.Config(planner="wukong", metadata="none", optimizations="prewarm"))
    labels = [plan.annotations[t]["worker"] for t in range(len(dag))]
    assert labels[1] == labels[0]  # the first branch continues in the producer's worker
    assert len({labels[0], labels[2], labels[3]}) == 3  # every other branch gets its own
    assert labels[4] in labels[1:4]  # the fan-in continues in one of its inputs' workers
    assert all("memory_mb" not in a and "upload" not in a for a in plan.annotations.values())
    assert plan.defaults == list(range(len(dag)))


def test_delayed_io_is_annotated_only_where_safe_and_when_enabled() -> None:
    a = blob(10)
    dag = DAG.from_sinks([join(grow(grow(a, 1), 1))])  # a chain: every upload but the sink's can be skipped
    plan = make_plan(dag, fanflow.Config(planner="uniform", metadata="none", optimizations="delayed-io"))
    assert [plan.annotations[t].get("upload", True) for t in range(4)] == [False, False, False, True]
    plain = make_plan(dag, fanflow.Config(planner="uniform", metadata="none", optimizations="none"))
    assert all("upload" not in a for a in plain.annotations.values())
    warm = make_plan(
        DAG.from_sinks([fan(3)]), fanflow.Config(planner="uniform", metadata="none", optimizations="prewarm")
    )
    assert any("prewarm_s" in a for a in warm.annotations.values())


def two_chains() -> tuple[DAG, list[int]]:
    """Two roots, a chain of two on each, joined; labelled one chain per worker, the join with the first."""
    dag = DAG.from_sinks([join(grow(grow(blob(1), 1), 1), grow(grow(blob(2), 1), 1))])
    sink = dag.sinks[0]
    first, todo = {sink}, [dag.deps[sink][0]]
    while todo:  # the first input and everything upstream of it
        t = todo.pop()
        first.add(t)
        todo.extend(dag.deps[t])
    return dag, [0 if t in first else 1 for t in range(len(dag))]


def test_clustering_merges_labels_whose_values_cross_when_the_makespan_holds() -> None:
    """Short tasks with 1 MB outputs: one worker runs both chains about as fast and fetches nothing."""
    dag, labels = two_chains()
    n = len(dag)
    assert len(set(labels)) == 2
    costs = DagCosts.uniform(n, 0.001, 1e6, 0.1, 0.01, 0.01)
    before = simulate(dag, costs, Assignment([1769] * n, labels, None), 2, True, [1769, 1769])
    merged = merge_labels(dag, costs, [1769] * n, labels, True, 2, True)
    assert merged is not None and len(set(merged)) == 1
    after = simulate(dag, costs, Assignment([1769] * n, merged, None), 2, True, [1769, 1769])
    assert after.bytes_moved < before.bytes_moved
    assert after.makespan <= before.makespan * (1 + MERGE_SLACK)
    # predicted 7% slower in one worker (its tasks no longer overlap), which saves the crossing values: merged
    slower = DagCosts.uniform(n, 0.01, 1e6, 0.05, 0.01, 0.01)
    apart = simulate(dag, slower, Assignment([1769] * n, labels, upload_flags(dag, labels)), 2, True, [1769] * 2)
    one = merge_labels(dag, slower, [1769] * n, labels, True, 2, True)
    assert one is not None and len(set(one)) == 1
    together = simulate(dag, slower, Assignment([1769] * n, one, upload_flags(dag, one)), 2, True, [1769] * 2)
    assert apart.makespan * 1.05 < together.makespan <= apart.makespan * (1 + MERGE_SLACK)


def test_clustering_keeps_labels_apart_when_merging_would_serialize_them() -> None:
    """Long tasks: one worker would run both chains one after the other, so the labels stay apart."""
    dag, labels = two_chains()
    n = len(dag)
    costs = DagCosts.uniform(n, 1.0, 1e6, 0.01, 0.01, 0.01)
    assert merge_labels(dag, costs, [1769] * n, labels, True, 2, True) is None
    few = DagCosts.uniform(n, 0.001, 1000.0, 0.1, 0.01, 0.01)  # small values: not worth a simulation
    assert merge_labels(dag, few, [1769] * n, labels, True, 2, True) is None


def test_clustering_never_merges_labels_of_different_memory() -> None:
    """A worker runs its label's tasks at the size it started with: a 3,008 MB chain stays apart."""
    dag, labels = two_chains()
    n = len(dag)
    costs = DagCosts.uniform(n, 0.001, 1e6, 0.1, 0.01, 0.01)  # as in the test that merges them
    memory = [1769 if label == 0 else 3008 for label in labels]
    assert merge_labels(dag, costs, memory, labels, True, 2, True) is None


def test_uniform_uses_one_memory_size() -> None:
    dag = DAG.from_sinks([fan(4)])
    plan = make_plan(dag, fanflow.Config(planner="uniform", metadata="none", memory_mb=3008))
    assert {a["memory_mb"] for a in plan.annotations.values()} == {3008}
    assert plan.predicted_makespan_s is not None and plan.predicted_makespan_s > 0


def lopsided() -> DAG:
    """A long chain and a short branch from one root, joined: the short branch has slack."""
    root = blob(1)
    long = grow(grow(grow(grow(root, 1), 1), 1), 1)
    short = grow(root, 2)
    return DAG.from_sinks([join(long, short)])


def test_critical_path_downgrades_only_off_the_critical_path() -> None:
    dag = lopsided()
    n = len(dag)
    costs = costs_of(n, start=0.01, fetch=0.01, upload=0.01)
    short = next(t for t in range(n) if dag.deps[t] == (0,) and dag.dependents[t] == (n - 1,))
    # the short branch's function was measured as fast at 512 MB as at 1769 MB (a task shorter than its
    # CPU quota per period is not throttled): only a measured size makes a downgrade save anything,
    # since in the proportional model GB-seconds do not depend on memory below one vCPU
    costs.function[short] = 1
    costs.exec_models.append(MemoryModel([(m, 0.0, 0.3) for m in (512, 1769) for _ in range(3)], Line(1, 0, 0, 0)))
    labels = place(dag, costs, [3008] * n, clustering=False)
    plan, sim, best, _ = critical_path_assignment(dag, costs, labels, None, slack=0.1)
    assert sim.makespan <= best * 1.1 + 1e-9
    on_path = set(sim.critical_path)
    assert short not in on_path
    assert plan.memory_mb[short] == 512
    # the critical path keeps its best-case speed (1769 MB is as fast as 3008 MB in the model)
    assert all(plan.memory_mb[t] >= 1769 for t in on_path)
    uniform = simulate(dag, costs, Assignment([3008] * n, labels))
    assert sim.cost_gb_s < uniform.cost_gb_s


@pytest.mark.parametrize("max_workers", [None, 1, 2])
@pytest.mark.parametrize("remote", [False, True])
def test_the_makespan_floor_never_beats_a_simulation(max_workers: int | None, remote: bool) -> None:
    for dag in (DAG.from_sinks([tree(64)]), lopsided(), DAG.from_sinks([fan(5)])):
        n = len(dag)
        for costs in (
            costs_of(n),
            costs_of(n, exec_s=0.001, start=0.2, fetch=0.0, upload=0.0),
            DagCosts.uniform(n, 0.01, LARGE_OUTPUT_BYTES * 2, 0.002, 0.003, 0.05, 0.001),
            Predictor(None, "mean", max_workers).costs(dag),
        ):
            labels = place(dag, costs, [3008] * n, clustering=True)
            for upload in (None, upload_flags(dag, labels)):
                for m in MEMORY_CHOICES:
                    sim = simulate(dag, costs, Assignment([m] * n, labels, upload), max_workers, remote)
                    assert 0.0 < makespan_floor(dag, costs, m, max_workers) <= sim.makespan


@pytest.mark.parametrize("max_workers", [None, 2])
@pytest.mark.parametrize("remote", [False, True])
def test_a_simulation_scaled_by_the_time_factor_is_the_simulation_at_that_size(
    max_workers: int | None, remote: bool
) -> None:
    """Sizes never measured predict one line scaled (512 MB twice 1024 MB's): the planner scales one
    uniform plan's simulation instead of running another, and it is the same simulation."""
    for dag in (DAG.from_sinks([tree(64)]), lopsided(), DAG.from_sinks([fan(5)])):
        n = len(dag)
        costs = costs_of(n, start=0.01, fetch=0.01, upload=0.01)
        labels = place(dag, costs, [3008] * n, clustering=True)
        upload = upload_flags(dag, labels)
        base = simulate(dag, costs, Assignment([1024] * n, labels, upload), max_workers, remote)
        for m in MEMORY_CHOICES:
            k = planners._time_factor(costs, 1024, m)
            assert k == pytest.approx(planners.scale(m) / planners.scale(1024))
            scaled = planners._resized(base, 1024, m, k)
            real = simulate(dag, costs, Assignment([m] * n, labels, upload), max_workers, remote)
            assert scaled.worker == real.worker and scaled.critical_path == real.critical_path
            assert scaled.finish == pytest.approx(real.finish) and scaled.worker_end == pytest.approx(real.worker_end)
            assert scaled.makespan == pytest.approx(real.makespan) and scaled.cost_gb_s == pytest.approx(real.cost_gb_s)
    measured = costs_of(3)
    # as fast at 512 MB as at 1769 MB, measured: not the normalization model's ratio
    measured.exec_models[0] = MemoryModel([(m, 0.0, 0.3) for m in (512, 1769) for _ in range(3)], Line(1, 0, 0, 0))
    assert planners._time_factor(measured, 512, 1769) is None
    assert planners._time_factor(measured, 1024, 3008) is not None  # both from the pooled line


def _recorded(tmp_path: Path, *sinks: Any) -> str:
    """A SQLite history holding three runs of each of ``sinks``; its URL."""
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    record = fanflow.Config(metadata=url, progress=False, planner="none")
    for _ in range(3):
        for sink in sinks:
            sink.compute(record)
    drain()
    return url


def _count_simulations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The planner's simulations counted from now on, in the returned one-item list (reset it to 0)."""
    counted = [0]
    simulate_all = planners.simulate

    def counting(*args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        return simulate_all(*args, **kwargs)

    monkeypatch.setattr(planners, "simulate", counting)
    return counted


def test_sizes_past_the_floor_are_not_simulated_and_plans_stay_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _recorded(tmp_path, tree(512), fan(4))
    counted = _count_simulations(monkeypatch)
    # the floor alone: sizes below one vCPU that scale another's predictions are not simulated either
    same = planners._time_factor
    monkeypatch.setattr(planners, "_time_factor", lambda costs, a, b: 1.0 if same(costs, a, b) == 1.0 else None)

    def planned() -> tuple[list[tuple[Any, ...]], int]:
        counted[0] = 0
        plans = []
        for metadata in (url, "none"):
            for pool in ({"platform": "processes", "store": "redis://localhost:1/0", "max_workers": 2}, {}):
                config = fanflow.Config(metadata=metadata, planner="critical-path", progress=False, **pool)
                for dag in (DAG.from_sinks([tree(512)]), DAG.from_sinks([fan(4)]), lopsided()):
                    plan = make_plan(dag, config)
                    assert plan.used_history == (metadata == url)
                    plans.append(
                        (
                            plan.annotations,
                            plan.kind,
                            plan.simulation.makespan if plan.simulation else None,
                            plan.best_makespan_s,
                            plan.uniform_makespan_s,
                            plan.uniform_gb_s,
                            plan.predicted_p90_s,
                        )
                    )
        return plans, counted[0]

    fewer, skipping = planned()
    # the reference: every size simulated, as before the floor existed
    monkeypatch.setattr(planners, "makespan_floor", lambda *args: 0.0)
    every, simulating = planned()
    assert fewer == every
    assert skipping < simulating


def test_a_size_predicted_from_another_by_scaling_is_its_twin_and_is_not_simulated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """History measured at 1769 MB alone predicts 3008 MB through the 512 MB normalization: the same lines
    but for rounding. Those sizes are one prediction (SAME_PREDICTION), so uniform 1769 MB is not simulated
    again (from an empty pool, then warm), and the plans are those of telling them apart."""
    url = _recorded(tmp_path, tree(512))
    counted = _count_simulations(monkeypatch)

    def planned() -> tuple[list[tuple[Any, ...]], int]:
        counted[0] = 0
        plans = []
        for pool in ({"platform": "processes", "store": "redis://localhost:1/0", "max_workers": 2}, {}):
            config = fanflow.Config(metadata=url, planner="critical-path", progress=False, **pool)
            plan = make_plan(DAG.from_sinks([tree(512)]), config)
            assert plan.simulation is not None and plan.kind
            plans.append((plan.annotations, plan.kind, plan.simulation.makespan, plan.uniform_makespan_s))
        return plans, counted[0]

    twins, fewer = planned()
    monkeypatch.setattr(planners, "SAME_PREDICTION", 0.0)  # the reference: only equal lines are one
    apart, every = planned()
    assert [p[:2] for p in twins] == [p[:2] for p in apart]
    assert [p[2:] for p in twins] == [pytest.approx(p[2:], rel=1e-9) for p in apart]
    assert fewer < every


def test_measured_sizes_win_and_unmeasured_ones_scale() -> None:
    model = MemoryModel([(3008, 0.0, 0.02)] * 3 + [(512, 0.0, 0.01)] * 3, Line(1, 0, 0, 0))
    assert model.line(512).at(0) == pytest.approx(0.01)
    assert model.line(3008).at(0) == pytest.approx(0.02)  # slower at 3008 MB, as measured
    # 1024 MB: the pooled 512 MB-normalized mean (0.01 and 0.02·1769/512), halved
    assert model.line(1024).at(0) == pytest.approx((0.01 + 0.02 * 1769 / 512) / 2 / 2)
    empty = MemoryModel([], Line(0.5, 0, 0, 0))
    assert not empty.known and empty.line(1024).at(0) == pytest.approx(0.25)


def test_tied_sizes_share_the_mean_of_their_measured_lines() -> None:
    model = MemoryModel([(1769, 0.0, 0.03)] * 3 + [(3008, 0.0, 0.01)] * 6 + [(512, 0.0, 0.05)] * 3, Line(1, 0, 0, 0))
    tied = model.tied([1769, 3008])
    for m in (1769, 3008):
        assert tied.line(m).at(0) == pytest.approx((3 * 0.03 + 6 * 0.01) / 9)  # weighed by samples
        assert tied.line(m).count == 9 and tied.line(m).floor == pytest.approx(0.01)
    assert tied.line(512) == model.line(512) and model.line(1769).at(0) == pytest.approx(0.03)  # a copy
    one = MemoryModel([(1769, 0.0, 0.03)] * 3, Line(1, 0, 0, 0)).tied([1769, 3008])
    assert one.line(3008).at(0) == pytest.approx(0.03)  # the one measured line, not the scaled pool
    never = MemoryModel([(512, 0.0, 0.05)] * 3, Line(1, 0, 0, 0))
    assert never.tied([1769, 3008]) is never


def test_start_latency_leaves_out_the_wait_for_a_pool_slot() -> None:
    def record(worker: str, began: float, ended: float, latency: float, cold: bool) -> TaskRecord:
        return TaskRecord(
            "r", 0, "t", "f", [], FINISHED, worker, 512, 1, began, ended, 0.0, 0.0, 0.0, [], 0, cold, latency, 0, 0, 0
        )

    # one slot: w2 was invoked at 0 with w1 but waited for w1 to end at 1.0, then started warm at 1.01
    records = [record("a-1", 0.5, 1.0, 0.5, True), record("b-1", 1.01, 1.2, 1.01, False)]
    assert pure_latencies(Executions.of_records(records), 1) == [(512, True, 0.5), (512, False, pytest.approx(0.01))]
    assert pure_latencies(Executions.of_records(records), None)[1] == (512, False, 1.01)
    # c-1's timestamps put it behind a-1 in one slot, yet it started first: never a free cold start (its
    # whole invocation latency counts), and a warm one tells nothing
    early = [*records, record("c-1", 0.6, 0.7, 0.6, True)]
    assert pure_latencies(Executions.of_records(early), 1) == [
        (512, True, 0.5),
        (512, True, 0.6),
        (512, False, pytest.approx(0.01)),
    ]
    warm = [*records, record("c-1", 0.6, 0.7, 0.6, False)]
    assert pure_latencies(Executions.of_records(warm), 1) == [(512, True, 0.5), (512, False, pytest.approx(0.01))]
    # two slots, two processes: process "a" ran a-2 right after a-1 (ended at 1.0), so a-2 waited for that
    # slot, not b-1's, which the FIFO replay of invocation times would pick (freed first, at 0.9)
    two = [
        record("a-1", 0.5, 1.0, 0.5, True),
        record("b-1", 0.5, 0.9, 0.5, True),
        record("a-2", 1.02, 1.1, 1.02, False),
    ]
    assert pure_latencies(Executions.of_records(two), 2)[2] == (512, False, pytest.approx(0.02))


def test_start_latencies_are_replayed_per_run_and_kept() -> None:
    def record(run: str, worker: str, began: float, ended: float, latency: float, cold: bool) -> TaskRecord:
        return TaskRecord(
            run, 0, "t", "f", [], FINISHED, worker, 512, 1, began, ended, 0.0, 0.0, 0.0, [], 0, cold, latency, 0, 0, 0
        )

    one = [record("r1", "a-1", 0.5, 1.0, 0.5, True), record("r1", "b-1", 1.01, 1.2, 1.01, False)]
    two = [record("r2", "a-1", 0.3, 0.4, 0.3, True), record("r2", "b-1", 0.35, 0.9, 0.35, True)]
    clear_cache()
    apart = pure_latencies(Executions.of_records(two), 1) + pure_latencies(Executions.of_records(one), 1)
    both = Executions.of_records(two[:1] + one + two[1:])  # rows of two runs, interleaved; r2 numbered first
    assert pure_latencies(both, 1) == apart  # a run replays through its own slots, runs in table order
    assert pure_latencies(both, 1) == apart and pure_latencies(both, None) != apart  # kept per cap


def test_start_latencies_are_replayed_at_the_cap_each_run_recorded() -> None:
    """A run replays through the worker cap it ran under, whatever cap the plan is for: a history made on
    1 or 2 workers gives the same pure starts planned for 8 workers or none as for its own caps. A run
    saved before runs recorded their cap is replayed at the planned one."""

    def record(run: str, worker: str, began: float, ended: float, latency: float, cold: bool) -> TaskRecord:
        return TaskRecord(
            run, 0, "t", "f", [], FINISHED, worker, 512, 1, began, ended, 0.0, 0.0, 0.0, [], 0, cold, latency, 0, 0, 0
        )

    # one slot: b-1, invoked at 0 with a-1, waited for a-1 to end at 1.0 and started warm at 1.01
    one = [record("r1", "a-1", 0.5, 1.0, 0.5, True), record("r1", "b-1", 1.01, 1.2, 1.01, False)]
    # two slots, all invoked at 0: a-2 waited for a-1's process (free at 0.4) and started warm at 0.45,
    # c-1 for the slot a-2 freed at 0.6 (b-1 held the other to 0.9) and started warm at 0.62
    two = [
        record("r2", "a-1", 0.3, 0.4, 0.3, True),
        record("r2", "b-1", 0.35, 0.9, 0.35, True),
        record("r2", "a-2", 0.45, 0.6, 0.45, False),
        record("r2", "c-1", 0.62, 0.7, 0.62, False),
    ]
    clear_cache()
    own = pure_latencies(Executions.of_records(one), 1) + pure_latencies(Executions.of_records(two), 2)
    assert [round(s, 6) for _, _, s in own] == [0.5, 0.01, 0.3, 0.35, 0.05, 0.02]
    unrecorded = Executions.of_records(one + two)
    recorded = Executions.of_records(one + two, {"r1": 1, "r2": 2})
    for planned in (8, None, 2, 1):
        assert pure_latencies(unrecorded, planned) != own  # r1 at 1 and r2 at 2: no one cap gives both
        assert pure_latencies(recorded, planned) == own  # not the replay just kept for the planned cap
    # a run without a cap: its latencies as recorded, whatever the plan's cap
    free = Executions.of_records(one, {"r1": 0})
    assert pure_latencies(free, 1) == pure_latencies(unrecorded.take(unrecorded["run"] == 0), None)
    assert pure_latencies(free, 1)[1] == (512, False, 1.01)
    # only r2 recorded its cap: r1 falls back to the planned one
    older = Executions.of_records(one + two, {"r2": 2})
    assert pure_latencies(older, 1) == own
    assert pure_latencies(older, None) == [*pure_latencies(free, None), *own[2:]]


def test_a_run_saved_without_its_cap_loads_and_is_replayed_at_the_planned_one(tmp_path: Path) -> None:
    """Runs record the cap they ran under (the threads platform at max_workers=2: 2). A run whose document
    lacks it, as runs saved before they recorded it do, still loads; its starts replay at the planned cap,
    the other run's at its own."""
    db = tmp_path / "meta.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}", max_workers=2)
    for _ in range(2):
        fanflow.compute(tree(128), config=config)  # 127 tasks: its document is JSON, not a raw run's
    drain()
    store = open_metadata(config.metadata)
    new, old = (doc["run_id"] for doc in store.runs())
    assert [doc["max_workers"] for doc in store.runs()] == [2, 2]
    peek = sqlite3.connect(db)
    (text,) = peek.execute("SELECT doc FROM runs WHERE run_id = ?", (old,)).fetchone()
    doc = json.loads(text)
    del doc["max_workers"]
    peek.execute("UPDATE runs SET doc = ? WHERE run_id = ?", (json.dumps(doc), old))
    peek.commit()
    clear_cache()
    assert RunMetrics.from_stored(store.load_run(old)).run.max_workers is None
    table = History(store, [add.identity]).table  # oldest run first
    assert table.run_ids == (old, new) and table.caps == (None, 2)
    for planned in (None, 1, 3):
        clear_cache()
        assert pure_latencies(table, planned) == _pure_latencies_reference(table, planned)
    runs = [table.take(table["run"] == r) for r in (0, 1)]
    clear_cache()
    assert pure_latencies(table, 3) == _pure_latencies_reference(runs[0], 3) + _pure_latencies_reference(runs[1], 2)


def test_a_run_on_the_processes_platform_records_its_pools_cap(redis_url: str, tmp_path: Path) -> None:
    """A pool of 2 worker processes: the run records 2, and its starts replay at 2 whatever the plan's cap."""
    config = processes_config(redis_url, tmp_path)
    assert fanflow.compute(tree(16), config=config) == (sum(range(16)),)
    drain()
    store = open_metadata(config.metadata)
    (doc,) = store.runs()
    assert doc["platform"] == "processes" and doc["max_workers"] == 2
    table = History(store, [add.identity]).table
    assert table.caps == (2,)
    clear_cache()
    assert all(pure_latencies(table, planned) == pure_latencies(table, 2) for planned in (None, 1, 8))


def test_pool_replay_pays_cold_starts_per_memory_size() -> None:
    dag = DAG.from_sinks([join(*[blob(i) for i in range(4)])])
    costs = costs_of(5, start=0.01)
    costs.cold = MemoryModel.flat(1.0)
    one = simulate(dag, costs, Assignment([1769] * 5), max_workers=2)
    assert sum(one.worker_cold) == 2  # the fresh pool starts two processes, later workers reuse them
    mixed = simulate(dag, costs, Assignment([1769, 512, 1769, 512, 1769]), max_workers=2)
    assert sum(mixed.worker_cold) > 2 and mixed.makespan > one.makespan


def test_inputs_an_earlier_worker_left_in_the_process_are_not_fetched() -> None:
    dag = DAG.from_sinks([fan(3)])  # 0: blob, 1-3: grow, 4: join
    plan = Assignment([512] * 5, list(range(5)))  # a label each: a worker each
    # a pool of one process: every worker of the run runs there, so on a store out of process every
    # input is in the process's value cache and nothing is fetched
    one = simulate(dag, costs_of(5), plan, max_workers=1, remote=True)
    assert one.worker_process == [0] * one.workers and one.workers > 1
    assert one.bytes_fetched == 0
    # the in-process memory store keeps no process cache: the workers handed a grow fetch blob's output
    memory = simulate(dag, costs_of(5), plan, max_workers=1, remote=False)
    assert memory.bytes_fetched > 0 and memory.makespan > one.makespan
    # two processes: only what the other process made is fetched
    two = simulate(dag, costs_of(5), plan, max_workers=2, remote=True)
    assert set(two.worker_process) == {0, 1}
    for t in range(5):
        here = two.worker_process[two.worker[t]]
        made_elsewhere = sum(100.0 for u in dag.deps[t] if two.worker_process[two.worker[u]] != here)
        assert two.remote_bytes[t] <= made_elsewhere
    assert 0 < two.bytes_fetched < memory.bytes_fetched + 1e-9


def test_planning_a_tree_of_8191_tasks_is_fast() -> None:
    dag = DAG.from_sinks([tree(8192)])
    assert len(dag) == 8191
    began = time.process_time()  # CPU time: other load on the machine does not count
    plan = make_plan(dag, fanflow.Config(planner="critical-path", metadata="none"))
    elapsed = time.process_time() - began
    assert elapsed < 5.0  # a guard against a quadratic step (0.2-0.3 s here); benchmarks/planning.py measures it
    assert plan.simulation is not None and len(plan.simulation.critical_path) == 13  # one add per level


def test_plan_cli_prints_and_draws(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    script = tmp_path / "wf.py"
    script.write_text(
        "import fanflow\n"
        "@fanflow.task\ndef inc(x):\n    return x + 1\n"
        "@fanflow.task\ndef total(*xs):\n    return sum(xs)\n"
        "def main():\n    return total(*[inc(i) for i in range(4)])\n"
    )
    out = tmp_path / "plan.html"
    result = CliRunner().invoke(
        app, ["plan", str(script), "--planner", "critical-path", "--metadata", "none", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "predicted makespan" in result.output and "critical path" in result.output
    assert out.exists()


def test_plan_cli_upload_column_says_what_the_simulation_and_the_worker_decide() -> None:
    from fanflow.cli.plan import _upload

    dag = DAG.from_sinks([join(grow(grow(blob(1), 1), 1))])
    sink = dag.sinks[0]
    assert _upload(dag, 0.0, 0, True) == "no"  # the simulated run kept it local
    assert _upload(dag, 100.0, 1, True) == "if needed"  # asked; the worker decides at run time
    assert _upload(dag, 100.0, 1, False) == "yes"
    assert _upload(dag, 0.0, sink, False) == "yes"  # a sink's output is always stored


# -- runs --------------------------------------------------------------------------------


@pytest.mark.parametrize("planner", ["none", "wukong", "uniform", "critical-path"])
def test_each_planner_computes_the_right_result(run_config: fanflow.Config, planner: str) -> None:
    cfg = run_config.replace(planner=planner, optimizations="clustering,delayed-io,prewarm")
    assert tree(16).compute(cfg) == sum(range(16))
    assert fan(3).compute(cfg) == 3 * 1000 + 600
    drain()
    run = open_metadata(cfg.metadata).runs(limit=1)[0]
    assert run["planner"] == planner
    if planner == "none":
        assert run["predicted_makespan_s"] is None
    else:
        assert run["predicted_makespan_s"] > 0 and run["planning_s"] > 0


def test_preload_is_annotated_on_fan_ins_when_enabled() -> None:
    dag = DAG.from_sinks([fan(3)])  # 4: join of three
    plan = make_plan(dag, fanflow.Config(planner="wukong", metadata="none", optimizations="preload"))
    assert [t for t, a in plan.annotations.items() if a.get("preload")] == [4]
    plain = make_plan(dag, fanflow.Config(planner="uniform", metadata="none", optimizations="none"))
    assert not any(a.get("preload") for a in plain.annotations.values())


def test_simulations_of_one_dag_reuse_its_placement_only_while_the_labels_stay_the_same() -> None:
    """What labels decide is reused across memory sizes, but a label list changed in place is a new plan."""
    root = blob(1)
    dag = DAG.from_sinks([add(root, 1), add(root, 2)])
    n = len(dag)
    costs = costs_of(n)
    labels = [0] * n
    together = simulate(dag, costs, Assignment([1769] * n, labels))
    assert together.workers == 1
    labels[:] = range(n)  # every task its own label: one branch stays (it fits), the other leaves
    apart = simulate(dag, costs, Assignment([1769] * n, labels))
    assert apart.workers == 2
    assert simulate(dag, costs, Assignment([512] * n, [0] * n)).workers == 1


# -- joins of several workers' work ------------------------------------------------------------


def joined_late() -> tuple[DAG, list[str]]:
    """A worker (label A) that claims three chain tasks and a join whose other input another worker
    (label B) made long before: ``y -> y2 -> x``, then ``k1, k2, k3 = grow(x)`` and ``j = join(x, y)``.

    Worker B runs ``y`` and ``y2``; ``x`` is labelled A and planned at another memory size, so B
    starts a worker for it, which finishes
    ``x`` and claims ``k1, k2, k3`` and ``j`` at once (``y`` finished before ``x`` could start: the
    claims do not depend on timing). ``j`` is x's last dependent, so first-in-first-out would run it last.
    """
    y = blob(10)
    x = grow(grow(y, 1), 2)
    chain = [grow(x, 3 + i) for i in range(3)]
    dag = DAG.from_sinks([*chain, join(x, y)])
    labels = ["B", "B", "A", "A", "A", "A", "A"]
    assert [dag.name(t).rsplit("-", 1)[0] for t in range(len(dag))] == ["blob"] + ["grow"] * 5 + ["join"]
    return dag, labels


@pytest.mark.parametrize("keep_local", [False, True])
def test_a_join_of_another_workers_output_runs_before_the_rest_of_the_queue(tmp_path: Path, keep_local: bool) -> None:
    """The claimer of a join runs it next, in the loop and the simulator alike: behind the queue it
    held up its readers, and on a pool of two the worker that happened to finish last ran every
    join at its end (gemm's 16 sums: 65/48 tasks per process, the other process idle). So does a join
    whose output the plan asks to keep local (delayed I/O): where its readers' other inputs are not
    made here yet, its notification waits for them instead (``placement.readers_stay``)."""
    dag, labels = joined_late()
    j = len(dag) - 1
    n = len(dag)
    memory = [3008 if x == "A" else 1769 for x in labels]
    upload = [not (keep_local and t == j) for t in range(n)]
    sim = simulate(dag, costs_of(n), Assignment(memory, [0 if x == "A" else 1 for x in labels], upload))
    a = sim.worker[2]
    assert sim.worker[j] == a != sim.worker[0]
    expected = (2, j, 3, 4, 5)
    assert tuple(sorted((t for t in range(n) if sim.worker[t] == a), key=lambda t: sim.start[t])) == expected
    for t in range(n):
        dag.annotations[t] = {"worker": labels[t], "memory_mb": memory[t], "upload": upload[t]}
    config = fanflow.Config(
        platform="threads",
        store="memory://joins",
        progress=False,
        metadata=f"sqlite:///{tmp_path / 'meta.db'}",
        metrics_upload="task",
        memory_mb=1769,
        fanout="wukong",
    )
    assert session().execute(dag, config)[-1] == 10 + 10 + 1 + 2
    drain()
    store = open_metadata(config.metadata)
    run = store.load_run(store.runs(limit=1)[0]["run_id"])
    ran = {tuple(w.tasks) for w in RunMetrics.from_stored(run).workers}
    assert ran == {(0, 1), expected}


def test_the_simulator_runs_a_join_claimed_alone_before_its_queue() -> None:
    """The simulator's single-claim path (inlined for speed) follows runs_next as its other path does:
    worker A holds four roots, the second of which completes a join of a root of worker B's."""
    a = [blob(10 + i) for i in range(4)]
    b = blob(1)
    dag = DAG.from_sinks([*a, join(a[1], b)])
    j = len(dag) - 1
    labels = [1 if t == dag.deps[j][1] else 0 for t in range(len(dag))]
    n = len(dag)
    sim = simulate(dag, costs_of(n), Assignment([1769] * n, labels))
    in_a = sorted((t for t in range(n) if sim.worker[t] == sim.worker[j]), key=lambda t: sim.start[t])
    assert sim.claimer[j] == dag.deps[j][0] and in_a.index(j) == 2 and len(in_a) == 5
    keep_local = simulate(dag, costs_of(n), Assignment([1769] * n, labels, [t != j for t in range(n)]))
    assert keep_local.start == sim.start  # delayed I/O asked (j is a sink: stored anyway): a join first all the same


@fanflow.task
def square(seed: int, side: int, delay: float) -> np.ndarray:
    time.sleep(delay)
    return np.full((side, side), float(seed))


@fanflow.task
def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b


@fanflow.task
def total(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] + parts[1]


@fanflow.task
def tiles(rows: list[list[np.ndarray]]) -> np.ndarray:
    return np.block(rows)


def blocked_product(side: int, delay: float = 0.0) -> tuple[DAG, list[int], list[bool]]:
    """A matrix product in 2x2 blocks (as examples/gemm.py: 8 blocks, 8 products, 4 sums, 1 assembly)
    labelled as clustering does on 2 workers: the blocks and products of each inner index ``k`` one
    label, a sum and the assembly the label of their first input (``k`` = 0); delayed I/O asked.

    The first block of ``k`` = 0 sleeps ``delay``: that worker then finishes its share of every sum last
    and claims them all, where equal workers race for the first sum and, on a loaded machine, now and
    then for a later one (one full-suite run in three split the sums 3/1)."""
    a = [[square(10 * i + k, side, delay if i == k == 0 else 0.0) for k in range(2)] for i in range(2)]
    b = [[square(100 + 10 * k + j, side, 0.0) for j in range(2)] for k in range(2)]
    c = [[total([matmul(a[i][k], b[k][j]) for k in range(2)]) for j in range(2)] for i in range(2)]
    dag = DAG.from_sinks([tiles(c)])
    inner = {id(a[i][k]): k for i in range(2) for k in range(2)} | {id(b[k][j]): k for k in range(2) for j in range(2)}
    nodes = dag.nodes or []
    labels: list[int] = []
    for t in range(len(dag)):
        labels.append(labels[dag.deps[t][0]] if dag.deps[t] else inner[id(nodes[t])])
    return dag, labels, upload_flags(dag, labels)


def by_function(dag: DAG, tasks: Iterable[int]) -> Counter[str]:
    return Counter(dag.name(t).rsplit("-", 1)[0] for t in tasks)


def test_the_simulator_keeps_clustered_sums_local_and_in_one_worker() -> None:
    """gemm in 2x2 blocks, labels by inner index: the worker that claims the first sum runs it at once
    (a join), so it finishes its share of every later sum last and claims them all; each sum's
    notification waits until the others are made there (readers_stay: WAIT), so no sum is stored.
    Only the other label's 4 products travel. (Before, the simulator stored every sum and product.)"""
    dag, labels, upload = blocked_product(128)
    n = len(dag)
    sim = simulate(dag, costs_of(n), Assignment([1769] * n, labels, upload), max_workers=2, remote=True)
    sums = [t for t in range(n) if dag.name(t).startswith("total")]
    assert len({sim.worker[t] for t in sums}) == 1
    stored = [t for t in range(n) if sim.up_bytes[t]]
    assert by_function(dag, stored) == {"matmul": 4, "tiles": 1}
    assert by_function(dag, (t for t in range(n) if sim.remote_bytes[t])) == {"total": 4}
    per_process = Counter(sim.worker_process[sim.worker[t]] for t in range(n))
    assert sorted(per_process.values()) == [8, 13] and sim.workers == 2


def test_clustered_sums_move_as_the_simulator_predicts_and_far_fewer_bytes_than_plain(
    redis_url: str, tmp_path: Path
) -> None:
    """The loop on 2 worker processes and Redis, the product above in blocks of 128 KB, three runs of its
    plan (the worker of ``k`` = 0 given a head start of work): the same counts every run (tasks per
    process, invocations, which outputs are stored and which inputs fetched, bytes), the simulator's
    (given the sizes measured): 8 crossings of a product and the sink, where the same DAG without a
    plan moves 23-28 blocks' worth (so at most 0.6 of its bytes). Before, which worker claimed each sum
    was a race (37-56% fewer bytes over 5 runs of the 512 KB benchmark) and the simulator stored every
    sum."""
    config = processes_config(redis_url, tmp_path, memory_mb=1769)
    store = open_metadata(config.metadata)

    def run(dag: DAG) -> RunMetrics:
        session().execute(dag, config)
        drain()
        return RunMetrics.from_stored(store.load_run(store.runs(limit=1)[0]["run_id"]))

    def moved(m: RunMetrics) -> int:
        return sum(t.fetched_bytes + (t.out_bytes if t.uploaded else 0) for t in m.tasks)

    run(blocked_product(128)[0])  # the pool warm
    plain = min(moved(run(blocked_product(128)[0])) for _ in range(2))
    seen = []
    for _ in range(3):
        dag, labels, upload = blocked_product(128, delay=0.5)
        n = len(dag)
        for t in range(n):
            dag.annotations[t] = {"worker": f"w{labels[t]}", "memory_mb": 1769, "upload": upload[t]}
        m = run(dag)
        per_process = Counter(w.worker.rsplit("-", 1)[0] for w in m.workers for _ in w.tasks)
        stored = by_function(dag, (t.task for t in m.tasks if t.uploaded))
        fetched = by_function(dag, (t.task for t in m.tasks if t.fetched_bytes))
        seen.append((sorted(per_process.values()), len(m.workers), stored, fetched, moved(m)))
        size = {dag.name(t.task).rsplit("-", 1)[0]: t.out_bytes for t in m.tasks}
        assert moved(m) == 8 * size["matmul"] + size["tiles"]  # 4 products up and fetched, the sink
        costs = costs_of(n)
        costs.out_bytes = [0.0] * n
        for t in m.tasks:
            costs.out_bytes[t.task] = float(t.out_bytes)
        sim = simulate(dag, costs, Assignment([1769] * n, labels, upload), 2, True, [1769, 1769])
        predicted = Counter(sim.worker_process[sim.worker[t]] for t in range(n))
        assert sorted(predicted.values()) == sorted(per_process.values())
        assert by_function(dag, (t for t in range(n) if sim.up_bytes[t])) == stored
        assert by_function(dag, (t for t in range(n) if sim.remote_bytes[t])) == fetched
        assert sim.bytes_moved == moved(m)
    assert seen[0][:4] == ([8, 13], 2, {"matmul": 4, "tiles": 1}, {"total": 4})
    assert all(s == seen[0] for s in seen)
    assert seen[0][4] < 0.6 * plain


# -- planning time: the same answers, computed faster -------------------------------------


def _random_dag(n: int, seed: int) -> DAG:
    """A DAG of ``n`` tasks whose inputs are up to three earlier tasks (some roots, some fan-ins)."""
    rng = np.random.default_rng(seed)
    nodes: list[fanflow.Node] = []
    for i in range(n):
        ups = sorted({int(u) for u in rng.integers(0, i, size=int(rng.integers(0, 4)))}) if i > 2 else []
        nodes.append(add(nodes[ups[0]], nodes[ups[-1]]) if ups else add(i, 1))
    return DAG.from_sinks([join(*nodes[-4:])])


def _anchored_reference(dag: DAG, labels: list[Any]) -> set[int]:
    anchored: set[int] = set()
    for t, label in enumerate(labels):
        if label is not None and t not in dag.maps and all(u in anchored and labels[u] == label for u in dag.deps[t]):
            anchored.add(t)
    return anchored


def test_placement_rules_of_every_task_at_once_are_the_rules_task_by_task() -> None:
    """anchored_tasks, delayable_all and upload_flags (one pass each, as planners ask for them per label set)
    against the rules as the loop states them, task by task, on trees, fans and random DAGs under the
    planner's own labels and arbitrary ones (one label, random labels, unlabelled tasks)."""
    rng = np.random.default_rng(7)
    for dag in (
        DAG.from_sinks([tree(300)]),
        DAG.from_sinks([fan(5)]),
        lopsided(),
        *(_random_dag(80, s) for s in range(6)),
    ):
        n = len(dag)
        costs = Predictor(None).costs(dag)
        label_sets: list[list[Any]] = [
            planners.place(dag, costs, [1769] * n, clustering) for clustering in (False, True)
        ]
        label_sets += [[0] * n, rng.integers(0, 3, size=n).tolist()]
        label_sets.append([None if rng.random() < 0.2 else int(x) for x in rng.integers(0, 2, size=n)])
        for labels in label_sets:
            anchored = placement.anchored_tasks(dag, labels)
            assert anchored == _anchored_reference(dag, labels)
            each = [placement.delayable(dag, t, labels, anchored) for t in range(n)]
            assert placement.delayable_all(dag, labels, anchored) == each
            shared = [
                not dag.is_sink(t)
                and bool(dag.dependents[t])
                and all(labels[d] == labels[t] for d in dag.dependents[t])
                for t in range(n)
            ]
            assert planners.upload_flags(dag, labels) == [not (each[t] or shared[t]) for t in range(n)]


def _pure_latencies_reference(ex: Executions, planned: int | None) -> list[tuple[int, bool, float]]:
    """pure_latencies as its docstring states it, plainly: per run, workers rebuilt from their tasks, a warm
    worker handed its process's slot by the worker that process ran right before it (unless that process
    ran workers at once), the others replayed in invocation order through the run's recorded cap's FIFO
    slots (``planned``'s for a run that recorded none)."""
    out: list[tuple[int, bool, float]] = []
    for run in sorted(set(ex["run"].tolist())):
        recorded = ex.caps[run]
        max_workers = planned if recorded is None else recorded or None
        workers: dict[int, list[Any]] = {}
        for i in np.flatnonzero((ex["run"] == run) & (ex["worker"] >= 0)).tolist():
            w = int(ex["worker"][i])
            if w not in workers:
                workers[w] = [ex["started_at"][i], ex["finished_at"][i], int(ex["memory_mb"][i])]
                workers[w] += [bool(ex["worker_cold"][i]), float(ex["worker_latency_s"][i])]
            workers[w][0] = min(workers[w][0], ex["started_at"][i])
            workers[w][1] = max(workers[w][1], ex["finished_at"][i])
        handed: dict[int, float] = {}
        by_process: dict[str, list[int]] = {}
        for w in workers:
            by_process.setdefault(ex.workers[w].rsplit("-", 1)[0], []).append(w)
        for ws in by_process.values():
            ws.sort(key=lambda w: (workers[w][0], workers[w][1], w))
            if any(workers[b][0] < workers[a][1] for a, b in pairwise(ws)):
                continue  # workers at once: threads, nothing handed over
            handed.update((b, workers[a][1]) for a, b in pairwise(ws) if not workers[b][3])
        order = sorted(workers, key=lambda w: (workers[w][0] - workers[w][4], workers[w][0], workers[w][1], w))
        free, last = [-float("inf")] * (max_workers or 1), -float("inf")
        for w in order:
            began, ended, memory, cold, latency = workers[w]
            invoked = began - latency
            if not max_workers:
                out.append((memory, cold, max(0.0, began - invoked)))
                continue
            free.sort()
            dispatched = last = max(invoked, free[0], last)
            free[0] = ended
            if w in handed:
                dispatched = max(invoked, handed[w])
            elif dispatched > invoked and began <= dispatched:
                if not cold:
                    continue
                dispatched = invoked
            out.append((memory, cold, max(0.0, began - dispatched)))
    return out


def _random_runs(rng: np.random.Generator, processes: list[str], workers: int) -> list[TaskRecord]:
    """Three runs of ``workers`` workers of one or two tasks each, on ``processes`` ("threads": workers at
    once; the others one after another), worker ids ``<process>-<n>``."""
    records: list[TaskRecord] = []
    for run in ("r1", "r2", "r3"):
        clock = {p: float(rng.random()) for p in processes}
        for i in range(workers):
            process = str(rng.choice(processes))
            latency = float(rng.random() * 0.3)
            began = clock[process] + latency
            ended = began + float(rng.random() * 0.5)
            if process.endswith("threads"):
                clock[process] += float(rng.random() * 0.05)
            else:
                clock[process] = ended
            cold = bool(rng.random() < 0.3)
            memory = int(rng.choice([512, 1769]))
            for k in range(int(rng.integers(1, 3))):  # a worker of one or two tasks
                records.append(
                    TaskRecord(
                        run,
                        i * 2 + k,
                        "t",
                        "f",
                        [],
                        FINISHED,
                        f"{process}-{i}",
                        memory,
                        1,
                        began + k * 0.01,
                        ended + k * 0.01,
                        0.0,
                        0.0,
                        0.0,
                        [],
                        0,
                        cold,
                        latency,
                        0,
                        0,
                        0,
                    )
                )
    return records


def test_pure_latencies_of_many_workers_are_the_plain_replay() -> None:
    """The replay (FIFO slots compared inline, processes numbered by a dict) against the plain statement of
    it, on random runs mixing pool processes (workers one after another) and thread hosts (at once)."""
    records = _random_runs(np.random.default_rng(3), ["a", "b", "c", "threads"], 120)
    unrecorded, recorded = Executions.of_records(records), Executions.of_records(records, {"r1": 2, "r2": 0})
    for ex in (unrecorded, recorded):  # r3 never records its cap: it is replayed at the planned one
        for cap in (None, 1, 2, 3):
            clear_cache()
            assert pure_latencies(ex, cap) == _pure_latencies_reference(ex, cap)


def test_pure_latencies_of_any_table_are_the_plain_replay() -> None:
    """The shapes the replay takes shortcuts on, against the plain statement: every worker of one process
    (the embedded default's threads: one process number without splitting each id), the rows of runs
    interleaved (no run is one slice of the table), and worker numbers far apart (grouped by a sort)."""
    rng = np.random.default_rng(5)
    threads = Executions.of_records(_random_runs(rng, ["vm-12-ab-threads"], 300))
    mixed = Executions.of_records(_random_runs(rng, ["a-1", "a-1-x", "threads", "b"], 200))
    for ex in (threads, mixed):
        shuffled = ex.take(rng.permutation(len(ex)))
        spread = 5_000  # every worker number times this: far apart
        names = [""] * (len(ex.workers) * spread)
        names[::spread] = ex.workers
        columns = dict(ex.columns, worker=np.where(ex["worker"] < 0, -1, ex["worker"] * spread).astype(np.int32))
        apart = Executions(ex.run_ids, ex.functions, tuple(names), columns, ex.caps)
        for table in (ex, shuffled, apart):
            for cap in (None, 1, 2, 3):
                clear_cache()
                assert pure_latencies(table, cap) == _pure_latencies_reference(table, cap)


@pytest.mark.parametrize(
    "names",
    [
        [f"vm-12-ab-{i}" for i in (10, 9, 11)],  # one process
        ["vm-12-ab-10", "vm-12-ab-x-9", "vm-12-ab-11"],  # an id of another process that starts like them
        ["vm-12-ab-10", "vm-12-ab-9\nvm-12-ab-8", "vm-12-ab-11"],  # a newline in an id
        ["vm-12-ab-10", "vm-12-ab-9", "vm-12-cd-11", "vm-12-ab-12"],
        ["solo", "solo-1", "solo-2"],  # the first id names no process
        ["-a", "-b", "x-", "x-"],
        ["p-1", "p-2", "p-"],
    ],
)
def test_processes_number_workers_as_splitting_each_id(names: list[str]) -> None:
    """Workers' processes, numbered in the order first met: what splitting each id at its last "-" gives,
    whether or not the one-process count applies."""
    numbers: dict[str, int] = {}
    assert _processes(names).tolist() == [numbers.setdefault(n.rsplit("-", 1)[0], len(numbers)) for n in names]


def test_grouped_is_numpys_unique_with_first_and_places() -> None:
    rng = np.random.default_rng(7)
    for values in (rng.integers(40, 90, 500), rng.integers(0, 10**9, 500), np.array([3]), rng.integers(0, 2, 9)):
        mine, numpys = _grouped(values), np.unique(values, return_index=True, return_inverse=True)
        assert all(np.array_equal(a, b) for a, b in zip(mine, numpys, strict=True))


PINNED_PLANS = {
    (1024, "none", True): "37cef78fee2665dc",
    (1024, "all", True): "e5e881094aa72ea1",
    (1024, "all", False): "5bd457be2fa59f43",
    (2500, "all", True): "394a1306f8ea06b2",
}
"""Digests of plans made without history at main b3a6d90, before the planning-time work of 2026-12-01 made
the planner faster: it must decide exactly the same (every annotation, the kind, the predicted makespan, its
interval and the uniform figures). A change meant to change plans updates these."""


@pytest.mark.parametrize(("leaves", "optimizations", "pool"), list(PINNED_PLANS))
def test_plans_without_history_are_pinned(leaves: int, optimizations: str, pool: bool) -> None:
    every = "clustering,delayed-io,prewarm,preload"
    place_on = {"platform": "processes", "store": "redis://localhost:1/0", "max_workers": 2} if pool else {}
    config = fanflow.Config(
        metadata="none", planner="critical-path", optimizations=every if optimizations == "all" else "none", **place_on
    )
    plan = make_plan(DAG.from_sinks([tree(leaves)]), config)
    made = repr(
        (
            sorted(plan.annotations.items()),
            plan.kind,
            plan.predicted_makespan_s,
            plan.predicted_p10_s,
            plan.predicted_p90_s,
            plan.uniform_makespan_s,
            plan.uniform_gb_s,
            plan.simulation.bytes_moved if plan.simulation else None,
        )
    )
    assert hashlib.sha256(made.encode()).hexdigest()[:16] == PINNED_PLANS[(leaves, optimizations, pool)]
