"""Planners: per-task memory, placement labels and optimizations, written to ``dag.annotations``.

The contract with the worker loop (one dict per task, keys optional):

- ``memory_mb`` (int): memory of the worker started for this task;
- ``worker`` (str): placement label; the worker that claims a task keeps the
  claimed tasks sharing its current task's label and starts one new worker per
  other label;
- ``upload`` (bool): False asks for delayed I/O, which the loop applies only when
  no other worker can need the output;
- ``prewarm_s`` (float): start a worker for this task that many seconds after
  the run starts, to hide its cold start.

Optimizations are annotated only when named in ``config.optimizations``.

**Placement** (:func:`place`) is one topological pass. A root gets a new label
(the client starts one worker per root). A producer's first dependent continues
in the producer's label; every other fan-out branch gets a new label (one
worker per branch, as in WUKONG). A fan-in continues in the label of the input
predicted to finish last, since the worker finishing the last input is the one
that claims it (without history: the largest input, then the first). With
*clustering*, a fan-out branch also stays in its producer's worker when its
predicted execution is shorter than what moving it would cost (a worker start
plus fetching the producer's output), and a fan-in may continue in any of its
inputs' labels, not only those it is the first dependent of.

**wukong** needs no history: default predictions only choose labels.
**uniform** gives every task one memory size (``config.memory_mb``).
**critical-path** (the author's algorithm): simulate with the largest memory
everywhere (the best case, ``B``), target ``B × (1 + slack)``, and downgrade the
workers off the critical path, one at a time, to the smallest memory whose
slower tasks still fit in their slack. Slack is ``target - (finish + tail)``,
where ``finish`` is the longest path to the end of a task and ``tail`` the
longest path from it to the end of the run, in the structure the simulation
produced (dependencies plus the order of tasks within a worker). Accepting a
downgrade updates ``finish`` forward and ``tail`` backward only in the cone it
reaches, stopping where values do not change, so planning stays near linear.
A full simulation then checks the plan (a slower task can change which input
finishes last, hence which worker claims a task); downgrades that now sit on a
path over the target are undone and the check repeats, a few rounds at most.
Memory above one vCPU (1769 MB) buys no speed in the model, so every worker
first gets the cheapest memory that matches the largest one's speed: the
critical path keeps its best-case time at a lower price.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from fanflow.dag.graph import DAG
from fanflow.planning.predict import DagCosts, scale
from fanflow.planning.simulate import Assignment, Simulation, delayable, simulate

MEMORY_CHOICES: tuple[int, ...] = (512, 1024, 1769, 3008)
"""Memory sizes (MB) the critical-path planner chooses from, ascending."""

MAX_CHECK_ROUNDS = 4
"""Full simulations the critical-path planner may use to confirm its downgrades."""

_EPS = 1e-9


def place(
    dag: DAG, costs: DagCosts, memory: Sequence[int], clustering: bool, follow: Mapping[int, int] | None = None
) -> list[int]:
    """Placement labels (ints) for every task, in one topological pass (see the module docstring).

    ``follow`` maps a fan-in to the input it should continue from (the claimer a
    simulation found), overriding the guess.
    """
    n = len(dag)
    deps, dependents = dag.deps, dag.dependents
    exec_512, out_bytes = costs.exec_512, costs.out_bytes
    follow = follow or {}
    labels = [-1] * n
    done = [0.0] * n  # predicted finish, ignoring transfers: enough to tell which input comes last
    next_label = 0
    for t in range(n):
        ups = deps[t]
        work = exec_512[t] * scale(memory[t])
        candidates: list[int] = []
        for u in ups:
            first = dependents[u][0] == t
            cheap = len(ups) > 1 or work <= costs.start_s + costs.fetch_s(out_bytes[u], memory[u])
            if first or (clustering and cheap):
                candidates.append(u)
        chosen = follow.get(t, -1)
        if chosen < 0 and candidates:
            chosen = max(candidates, key=lambda u: (done[u], out_bytes[u], -u))
        if chosen >= 0:
            labels[t] = labels[chosen]
        else:
            labels[t] = next_label
            next_label += 1
        done[t] = max((done[u] for u in ups), default=0.0) + work
    return labels


def claimers(dag: DAG, sim: Simulation) -> dict[int, int]:
    """Fan-ins to continue in their claimer's worker: WUKONG's continuation on fan-in.

    A fan-in that the simulation started in a new worker, claimed by a task
    that was the last of its own worker (that worker was about to exit), is
    better run there: no worker start, and that input is already local. At
    most one fan-in follows each claimer, so fan-outs stay parallel.
    """
    ended = [True] * len(dag)
    for p in sim.previous:
        if p >= 0:
            ended[p] = False
    follow: dict[int, int] = {}
    taken: set[int] = set()
    for t in range(len(dag)):
        c = sim.claimer[t]
        if len(dag.deps[t]) > 1 and sim.previous[t] < 0 and c >= 0 and ended[c] and c not in taken:
            follow[t] = c
            taken.add(c)
    return follow


def upload_flags(dag: DAG, labels: Sequence[int]) -> list[bool]:
    """Delayed I/O: False where the loop may skip the upload (its own safety rule), True elsewhere."""
    return [not delayable(dag, t, labels) for t in range(len(dag))]


def prewarm_times(sim: Simulation, costs: DagCosts, roots: Sequence[int]) -> dict[int, float]:
    """When to start each non-root worker so that a cold start ends as its first task is claimed."""
    out: dict[int, float] = {}
    root_set = set(roots)
    for t in range(len(sim.start)):
        if sim.previous[t] < 0 and t not in root_set:
            out[t] = max(0.0, sim.start[t] - sim.head_latency[t] - costs.cold_start_s)
    return out


def cheapest_equal(memory_mb: int, choices: Sequence[int]) -> int:
    """The smallest choice as fast as ``memory_mb`` in the model (memory past one vCPU buys no speed)."""
    target = scale(memory_mb)
    return min((m for m in choices if scale(m) <= target + _EPS), default=memory_mb)


class _Paths:
    """Longest paths over a simulation's structure, kept up to date incrementally as weights change."""

    def __init__(self, dag: DAG, sim: Simulation) -> None:
        n = len(dag)
        self.preds: list[list[int]] = [list(u) for u in dag.deps]
        self.succs: list[list[int]] = [list(d) for d in dag.dependents]
        for t, p in enumerate(sim.previous):
            if p >= 0 and p not in dag.deps[t]:
                self.preds[t].append(p)
                self.succs[p].append(t)
        self.rank = [0] * n
        for r, t in enumerate(sim.order):
            self.rank[t] = r
        self.weight = [sim.head_latency[t] + sim.duration[t] for t in range(n)]
        self.finish = [0.0] * n
        self.tail = [0.0] * n
        finish, tail, weight, preds, succs = self.finish, self.tail, self.weight, self.preds, self.succs
        for t in sim.order:
            finish[t] = max((finish[p] for p in preds[t]), default=0.0) + weight[t]
        for t in reversed(sim.order):
            tail[t] = max((weight[s] + tail[s] for s in succs[t]), default=0.0)

    def makespan(self) -> float:
        return max(self.finish)

    def slack(self, t: int, target: float) -> float:
        return target - self.finish[t] - self.tail[t]

    def reweigh(self, changed: dict[int, float]) -> None:
        """Set new weights for some tasks and propagate finish forward and tail backward where they change."""
        rank, finish, tail, weight = self.rank, self.finish, self.tail, self.weight
        preds, succs = self.preds, self.succs
        for t, w in changed.items():
            weight[t] = w
        heap = [(rank[t], t) for t in changed]
        heapq.heapify(heap)
        seen = set(changed)
        while heap:
            _, t = heapq.heappop(heap)
            new = max((finish[p] for p in preds[t]), default=0.0) + weight[t]
            if abs(new - finish[t]) <= _EPS and t not in changed:
                continue
            finish[t] = new
            for s in succs[t]:
                if s not in seen:
                    seen.add(s)
                    heapq.heappush(heap, (rank[s], s))
        back = [(-rank[p], p) for t in changed for p in preds[t]]
        heapq.heapify(back)
        seen = {p for _, p in back}
        while back:
            _, t = heapq.heappop(back)
            new = max((weight[s] + tail[s] for s in succs[t]), default=0.0)
            if abs(new - tail[t]) <= _EPS:
                continue
            tail[t] = new
            for p in preds[t]:
                if p not in seen:
                    seen.add(p)
                    heapq.heappush(back, (-rank[p], p))


def _durations(dag: DAG, costs: DagCosts, sim: Simulation, tasks: Sequence[int], memory_mb: int) -> list[float]:
    """Durations of one worker's tasks if that worker had ``memory_mb`` (same inputs fetched, same uploads)."""
    deps, worker, out = dag.deps, sim.worker, costs.out_bytes
    factor = scale(memory_mb)
    base_scale = scale(sim.worker_memory[worker[tasks[0]]])
    result = []
    for t in tasks:
        w = worker[t]
        remote = sum(out[u] for u in deps[t] if worker[u] != w)
        fetch = costs.fetch_s(remote, memory_mb)
        old_fetch = costs.fetch_s(remote, sim.worker_memory[w])
        execute = costs.exec_512[t] * factor
        # the upload part keeps its simulated value, rescaled to the new memory
        rest = (sim.duration[t] - old_fetch - costs.exec_512[t] * base_scale) * factor / base_scale
        result.append(fetch + execute + max(0.0, rest))
    return result


def downgrade(
    dag: DAG,
    costs: DagCosts,
    plan: Assignment,
    sim: Simulation,
    target: float,
    choices: Sequence[int],
    fixed: set[int],
) -> list[int]:
    """Lower the memory of workers off the critical path within their slack; returns the workers changed.

    Workers are visited by best-case cost, largest first (most to save). Each
    gets the smallest memory in ``choices`` for which every task of the worker,
    delayed by its own extra time and that of the worker's tasks before it,
    still (1) finishes within its slack and (2) finishes before the input that
    claims each of its dependents in the simulation: a slower task must not
    become the one that claims a fan-in, or the fan-in would move to this
    slower worker (or to a new one), which the slack does not account for.
    """
    paths = _Paths(dag, sim)
    finish = paths.finish
    dependents, claimer, worker = dag.dependents, sim.claimer, sim.worker
    by_worker: list[list[int]] = [[] for _ in range(sim.workers)]
    for t in sim.order:
        by_worker[worker[t]].append(t)
    cost = [(sim.worker_end[w] - sim.worker_begin[w]) * sim.worker_memory[w] for w in range(sim.workers)]
    changed: list[int] = []
    for w in sorted(range(sim.workers), key=lambda w: -cost[w]):
        tasks = by_worker[w]
        if not tasks or tasks[0] in fixed:
            continue
        current = sim.worker_memory[w]
        for m in choices:
            if m >= current:
                break
            new = _durations(dag, costs, sim, tasks, m)
            extra = 0.0
            fits = True
            for t, d in zip(tasks, new, strict=True):
                extra += d - sim.duration[t]
                if extra > paths.slack(t, target) + _EPS:
                    fits = False
                    break
                late = finish[t] + extra
                if any(
                    claimer[x] != t and worker[claimer[x]] != w and late >= finish[claimer[x]] - _EPS
                    for x in dependents[t]
                ):
                    fits = False
                    break
            if not fits:
                continue
            paths.reweigh({t: sim.head_latency[t] + d for t, d in zip(tasks, new, strict=True)})
            for t in tasks:
                plan.memory_mb[t] = m
            changed.append(w)
            break
    return changed


def critical_path_assignment(
    dag: DAG,
    costs: DagCosts,
    labels: list[int] | None,
    upload: list[bool] | None,
    slack: float,
    choices: Sequence[int] = MEMORY_CHOICES,
    requested: Sequence[int | None] | None = None,
) -> tuple[Assignment, Simulation, float]:
    """The critical-path plan's memory sizes, its simulation and the best-case makespan.

    ``requested`` holds per-task memory a user asked for (``@task(memory_mb=...)``),
    which the planner keeps.
    """
    n = len(dag)
    top = max(choices)
    fast = cheapest_equal(top, choices)
    requested = requested or [None] * n
    memory = [r or fast for r in requested]
    fixed = {t for t in range(n) if requested[t]}
    plan = Assignment(memory, labels, upload)
    sim = simulate(dag, costs, plan)
    best = sim.makespan
    target = best * (1.0 + slack)
    ordered = sorted(c for c in choices if c <= fast)
    for _ in range(MAX_CHECK_ROUNDS):
        downgrade(dag, costs, plan, sim, target, ordered, fixed)
        sim = simulate(dag, costs, plan)
        if sim.makespan <= target * (1 + 1e-6):
            return plan, sim, best
        # which input finishes last moved: the workers on the new critical path get their best memory back
        on_path = {sim.worker[t] for t in sim.critical_path}
        for t in range(n):
            if sim.worker[t] in on_path and t not in fixed:
                plan.memory_mb[t] = fast
        sim = simulate(dag, costs, plan)
    for t in range(n):
        if t not in fixed:
            plan.memory_mb[t] = fast
    return plan, simulate(dag, costs, plan), best
