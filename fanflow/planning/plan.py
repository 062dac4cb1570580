"""Making a plan for a run: read history once, predict, place, choose memory, simulate, annotate.

:func:`make_plan` is what the client calls before a run (through
:func:`apply_plan`) and what ``fanflow plan`` prints. It builds one
:class:`~fanflow.metrics.History` per call from ``config.metadata`` (only the
planners that use history read it: ``uniform`` and ``critical-path``), turns it
into per-task predictions (:mod:`fanflow.planning.predict`), runs the chosen
planner (:mod:`fanflow.planning.planners`) and simulates the result
(:mod:`fanflow.planning.simulate`) under the run's worker cap, which gives the
predicted makespan recorded beside the actual one.

``metadata="none"``, or a metadata store that cannot be read, plans without
history: every prediction is then a documented default, and the plan lists
those tasks in :attr:`Plan.defaults`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from fanflow.config import Config
from fanflow.dag.graph import DAG
from fanflow.errors import FanflowError
from fanflow.metrics.history import History
from fanflow.planning.calibrate import Calibration
from fanflow.planning.planners import (
    MEMORY_CHOICES,
    claimers,
    critical_path_assignment,
    merge_labels,
    place,
    plan_key,
    prewarm_times,
    upload_flags,
)
from fanflow.planning.predict import RECENT_RUNS, DagCosts, Predictor
from fanflow.planning.simulate import Assignment, Simulation, simulate
from fanflow.platforms.base import KeepsWarmWorkers, supports
from fanflow.store.metadata import is_disabled, open_metadata

log = logging.getLogger(__name__)

HISTORY_PLANNERS = ("uniform", "critical-path")
"""Planners that read run history; ``wukong`` plans from defaults and ``none`` does nothing."""

INTERVAL_Z = NormalDist().inv_cdf(0.9)
"""Standard deviations between a prediction and its 10th / 90th percentile."""
PAST_RUNS = 20
"""Latest runs of the same DAG read for calibration."""


@dataclass(slots=True)
class Plan:
    """A planner's decisions for one DAG and what the simulator predicts of them."""

    planner: str
    annotations: dict[int, dict[str, Any]] = field(default_factory=dict)
    simulation: Simulation | None = None
    costs: DagCosts | None = None
    assignment: Assignment | None = None
    best_makespan_s: float | None = None
    """Critical-path planner: the makespan with the largest memory everywhere."""
    target_makespan_s: float | None = None
    """Critical-path planner: the makespan it had to stay within (best × (1 + slack))."""
    planning_s: float = 0.0
    used_history: bool = False
    kind: str = ""
    """The plan's kind and memory sizes (``uniform 1769``, ``mixed 512/3008``): which calibration factor
    applies. Empty when some task was predicted from defaults: such a run's actual / predicted ratio says
    how wrong the defaults were, not how the simulator errs, so calibration does not learn from it."""
    calibration: float = 1.0
    """Actual / simulated makespan of past runs of this DAG and plan (:mod:`fanflow.planning.calibrate`)."""
    predicted_p10_s: float | None = None
    predicted_p90_s: float | None = None
    """The interval the actual makespan is predicted to fall in (10th to 90th percentile)."""
    uniform_makespan_s: float | None = None
    uniform_gb_s: float | None = None
    """Critical-path planner: uniform at the largest memory size, calibrated, which the plan never exceeds by 5%."""

    @property
    def predicted_makespan_s(self) -> float | None:
        """The simulated makespan times the calibration factor."""
        return None if self.simulation is None else self.simulation.makespan * self.calibration

    @property
    def predicted_gb_s(self) -> float | None:
        return None if self.simulation is None else self.simulation.cost_gb_s * self.calibration

    @property
    def defaults(self) -> list[int]:
        """Tasks whose predictions came from defaults rather than history."""
        return [] if self.costs is None else self.costs.defaults


def load_history(dag: DAG, config: Config) -> History | None:
    """The history of ``dag``'s functions, or None (recording off, or the store unreadable: logged)."""
    if is_disabled(config.metadata):
        return None
    try:
        return History.for_dag(dag, config.metadata, RECENT_RUNS)
    except FanflowError as exc:
        log.warning("planning without history: %s", exc)
        return None


def load_calibration(dag: DAG, config: Config) -> Calibration:
    """Past predicted vs actual makespans of ``dag`` on this platform (empty when none or unreadable: logged)."""
    if is_disabled(config.metadata):
        return Calibration()
    try:
        docs = open_metadata(config.metadata).runs(dag.signature, limit=PAST_RUNS)
    except FanflowError as exc:
        log.warning("planning without past predictions: %s", exc)
        return Calibration()
    return Calibration.from_runs(docs, config.platform)


def interval(costs: DagCosts, sim: Simulation, pool: bool, spread: tuple[float, float]) -> tuple[float, float]:
    """(p10, p90) of the uncalibrated makespan, widened by ``spread`` (past runs' ratios around their median).

    Two sources of spread. Each step of the simulated critical path (start
    latency or loop gap, fetch, execution, upload) varies on its own: its
    10th and 90th percentiles (from the residuals of its fit) are combined
    over the path as independent deviations, root of the sum of squares. What
    moves every step together (a machine busier than the history it learned
    from) is what past runs of this DAG measured: what the calibration factor
    would have erred by on them, ``spread``. The interval is the wider of the two.
    Re-simulating the whole plan at both percentiles would also let another
    path become critical, but cost two more simulations per plan; the path is
    where the spread is.
    """
    z0 = costs.z
    below = above = 0.0
    seen: dict[tuple[int, float], tuple[float, float]] = {}
    for t in sim.critical_path:
        w = sim.worker[t]
        m = sim.worker_memory[w]
        lines = [(costs.exec_models[costs.function[t]].line(m), costs.in_bytes[t])]
        if sim.remote_bytes[t] > 0:
            lines.append((costs.fetch.line(m), sim.remote_bytes[t]))
        lines.append((costs.upload.line(m), sim.up_bytes[t]))
        if sim.previous[t] >= 0:
            lines.append((costs.gap.line(m), 0.0))
        else:
            start = (costs.cold if sim.worker_cold[w] else costs.warm) if pool else costs.mix
            lines.append((start.line(m), 0.0))
        for line, x in lines:
            key = (id(line), x)
            found = seen.get(key)
            if found is None:
                mid = line.at(x, z0)
                found = seen[key] = (mid - line.at(x, z0 - INTERVAL_Z), line.at(x, z0 + INTERVAL_Z) - mid)
            below += found[0] * found[0]
            above += found[1] * found[1]
    mid = sim.makespan
    return max(0.0, min(mid - math.sqrt(below), mid * spread[0])), max(mid + math.sqrt(above), mid * spread[1])


def worker_cap(config: Config) -> int | None:
    """Concurrent workers the run's platform allows (None: no cap, as on a FaaS platform)."""
    if config.max_workers:
        return config.max_workers
    if config.platform == "processes":
        return os.cpu_count() or 1
    return None


def plans_nothing(config: Config) -> bool:
    """Whether ``config``'s planner leaves every DAG as it is: ``none``, or ``wukong`` without optimizations.

    The worker loop's own policy is WUKONG's (one worker per fan-out branch,
    continuation on fan-in), so WUKONG without optimizations needs no annotations
    and costs nothing. The session then skips planning altogether (the default's
    small runs made an empty :class:`Plan` and asked the platform for its warm
    processes per run).
    """
    name = config.planner
    return name == "none" or (name == "wukong" and config.optimizations == "none")


def make_plan(
    dag: DAG,
    config: Config,
    history: History | None = None,
    read_history: bool = True,
    warm: Sequence[int] = (),
) -> Plan:
    """Plan ``dag`` with ``config.planner``; ``history`` is read from ``config.metadata`` unless given.

    ``warm``: memory sizes of the idle processes the run's pool holds now
    (:func:`warm_memory`). Plans are *chosen* as if the pool were empty, each
    paying its own cold starts, so processes another plan's run left warm do
    not pin the choice to that plan's sizes (they only widen the noise allowance
    of the plan of exactly those sizes, which another plan must beat to start
    fresh processes: ``held`` in
    :func:`~fanflow.planning.planners.critical_path_assignment`); the chosen
    plan's *prediction* is simulated with the pool as it is. Nothing is written to the DAG;
    :func:`apply_plan` does that.
    """
    began = time.perf_counter()
    name = config.planner
    if len(dag) == 0 or plans_nothing(config):
        return Plan(name, planning_s=time.perf_counter() - began)
    enabled = set(config.optimizations.split(",")) if config.optimizations != "none" else set()
    learned = Calibration()
    if read_history and name in HISTORY_PLANNERS:
        if history is None:
            history = load_history(dag, config)
        learned = load_calibration(dag, config)
    cap = worker_cap(config)
    remote = config.shared_store  # out of process: the loop keeps large outputs out of it when it can
    costs = Predictor(history, config.sla, cap).costs(dag)
    clustering = "clustering" in enabled
    requested = [dag.task(t).memory_mb for t in range(len(dag))]
    n = len(dag)
    plan = Plan(name, costs=costs, used_history=history is not None)
    if name == "critical-path":
        top = max(MEMORY_CHOICES)
        labels, known, upload = _labels(
            dag, costs, [r or top for r in requested], clustering, cap, remote, "delayed-io" in enabled
        )
        assignment, sim, best, top_sim = critical_path_assignment(
            dag,
            costs,
            labels,
            upload,
            config.slack,
            MEMORY_CHOICES,
            requested,
            cap,
            learned,
            known,
            remote,
            warm,
        )
        plan.best_makespan_s = best
        plan.target_makespan_s = best * (1 + config.slack)
        # on the basis the planner compared them on: both simulated here from an empty pool
        now = {plan_key(assignment.memory_mb): sim.makespan, plan_key([top]): top_sim.makespan}
        top_factor = learned.factor(plan_key([top]), True if cap else None, now)
        plan.uniform_makespan_s, plan.uniform_gb_s = top_sim.makespan * top_factor, top_sim.cost_gb_s * top_factor
    else:
        memory = [r or config.memory_mb for r in requested]
        labels, known, upload = _labels(dag, costs, memory, clustering, cap, remote, "delayed-io" in enabled)
        assignment = Assignment(memory, labels, upload)
        sim = known if known is not None else simulate(dag, costs, assignment, cap, remote)
    if warm and cap:
        sim = simulate(dag, costs, assignment, cap, remote, warm)
    plan.simulation = sim
    plan.assignment = assignment
    plan.kind = "" if costs.defaults else plan_key(assignment.memory_mb)
    cold = any(sim.worker_cold) if cap else None
    now = {plan.kind: sim.makespan}
    plan.calibration = learned.predicting(plan.kind, cold, now)
    low, high = interval(costs, sim, bool(cap), learned.spread(plan.kind, cold, now))
    plan.predicted_p10_s, plan.predicted_p90_s = low * plan.calibration, high * plan.calibration
    prewarm = prewarm_times(sim, costs, dag.roots) if "prewarm" in enabled else {}
    annotations: dict[int, dict[str, Any]] = {}
    with_memory = name != "wukong"
    for t in range(n):
        note: dict[str, Any] = {"worker": f"w{labels[t]}"}
        if with_memory:
            note["memory_mb"] = assignment.memory_mb[t]
        if upload is not None and not upload[t]:
            note["upload"] = False
        if t in prewarm:
            note["prewarm_s"] = prewarm[t]
        if "preload" in enabled and len(dag.deps[t]) > 1:
            note["preload"] = True
        annotations[t] = note
    plan.annotations = annotations
    plan.planning_s = time.perf_counter() - began
    return plan


def _labels(
    dag: DAG,
    costs: DagCosts,
    memory: list[int],
    clustering: bool,
    cap: int | None,
    remote: bool,
    delayed_io: bool = False,
) -> tuple[list[int], Simulation | None, list[bool] | None]:
    """Placement, then one correction: fan-ins follow the input the simulation says claims them;
    with clustering, then label pairs that move many bytes merged where the makespan holds
    (:func:`~fanflow.planning.planners.merge_labels`).

    The simulation that finds the claimers is the plan's own: with the upload flags of
    these labels under delayed I/O (:func:`~fanflow.planning.planners.upload_flags`, also
    returned: None without delayed I/O). It is returned when no correction was needed, so
    the caller need not simulate that plan again (before, it ran without the flags and the
    planner simulated the plan once more: one of the two simulations of a 100k-task tree's
    plan).
    """
    labels = place(dag, costs, memory, clustering)
    upload = upload_flags(dag, labels) if delayed_io else None
    first = simulate(dag, costs, Assignment(memory, labels, upload), cap, remote)
    follow = claimers(dag, first)
    sim = None if follow else first
    if follow:
        labels = place(dag, costs, memory, clustering, follow)
    if clustering:
        merged = merge_labels(dag, costs, memory, labels, delayed_io, cap, remote)
        if merged is not None:
            labels, sim = merged, None
    if sim is None and delayed_io:
        upload = upload_flags(dag, labels)  # the labels moved
    return labels, sim, upload


def warm_memory(platform: object) -> list[int]:
    """Memory sizes of the idle worker processes ``platform`` keeps warm, least recently used first.

    Only a platform that can tell (:class:`KeepsWarmWorkers`, as the processes
    platform's own pool) says anything; others give an empty list.
    """
    pool = supports(platform, KeepsWarmWorkers)
    found = pool.warm_memory() if pool is not None else None
    return list(found or ())


def apply_plan(dag: DAG, config: Config, platform: object = None) -> Plan:
    """Plan ``dag`` and write the annotations into it (replacing the planner's keys per task).

    ``platform``: the one the run will use, asked which worker processes it keeps warm.
    """
    plan = make_plan(dag, config, warm=warm_memory(platform))
    for t, note in plan.annotations.items():
        dag.annotations.setdefault(t, {}).update(note)
    return plan
