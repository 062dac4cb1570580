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
inputs' labels, not only those it is the first dependent of, and roots feeding
one fan-in share a label when their output is worth more than their
parallelism (:func:`_root_groups`).

**wukong** needs no history: default predictions only choose labels.
**uniform** gives every task one memory size (``config.memory_mb``).
**critical-path** (the author's algorithm, grounded in simulation): simulate
every *uniform* plan over :data:`MEMORY_CHOICES` (under the run's worker cap,
so cold starts per size and the pool count); the fastest is the best case
``B`` and the target is ``B × (1 + slack)``. The largest memory is not assumed
fastest: measured per-size times decide (a cold start at 512 MB can cost three
times one at 1769 MB). From the fastest uniform plan, downgrade the workers off
the critical path, one at a time, to the smallest memory whose slower tasks
(and slower start) still fit in their slack. Slack is ``target - (finish +
tail)``, where ``finish`` is the longest path to the end of a task and ``tail``
the longest path from it to the end of the run, in the structure the
simulation produced (dependencies plus the order of tasks within a worker).
Accepting a downgrade updates ``finish`` forward and ``tail`` backward only in
the cone it reaches, stopping where values do not change, so planning stays
near linear. A full simulation then checks the plan (a slower task can change
which input finishes last, and a new size in a small pool evicts warm
processes); downgrades that now sit on a path over the target are undone and
the check repeats, :data:`MAX_CHECK_ROUNDS` at most. Every plan within the
target (each uniform one, each confirmed downgrade) is a candidate, and the
cheapest predicted one wins, so the predicted makespan never exceeds the
target.

**Never worse than uniform.** A candidate is kept only if its predicted
makespan and GB-s are both within :data:`NEVER_WORSE` (5%) of uniform at the
largest size (3008 MB); that uniform plan is always a candidate, so the rule
always has an answer. On a pool (``max_workers``) candidates are simulated
from an empty pool, whose makespan is mostly cold starts, so there the
makespan and GB-s are checked instead when the plan and uniform 3008 MB
run again on the processes their own runs left warm (:func:`_again`), the
state a re-run plan meets: the cheapest candidate within 5% that way wins.
For the same reason a uniform size of a whole vCPU or more that an empty
pool puts over the target (its cold starts, learned per size from a few of
them) is still a candidate when, warm, it is within the target of the
fastest warm size.
Predictions are compared *calibrated*: each is
multiplied by what past runs of the same DAG measured (actual / predicted,
per plan: its kind and memory sizes, :func:`plan_key`), so a plan whose runs
came out slower than predicted loses to uniform at the largest size on the
next run.

**Sizes past one vCPU** (1769 and 3008 MB) give a task the same CPU in the
normalization model, and the evidence that one is slower is noisy: their
lines are measured at different times, and a calibrated makespan is about
the median of a plan's latest runs, taken minutes apart from uniform 3008
MB's. On a shared machine whose runs vary 10-20% the +5% rule was a coin
toss that turned uniform 1769 MB down on 3 of 4 workloads. So, for choosing,
the overhead models (transfers, loop gap, starts) of those sizes are tied
into one (:func:`_tied`; execution too, as the worker's numeric threads are
capped at its whole vCPUs: one at both sizes), and a plan of
such sizes only counts as over a bound when it is over by more than
:data:`NOISE_Z` standard errors of the comparison, from the spread of the
DAG's past runs (:func:`_allowance`). A plan with any size below one vCPU,
slower in the model, gets no allowance.

**The plan the pool holds.** On a pool, a plan of other sizes than the
processes it keeps warm starts fresh ones: two cold starts (0.3-0.7 s) on a
2-process pool, ten times a small run's makespan. The warm sizes are known
when planning (``held``), so the plan of exactly those sizes counts as over a
bound only past :data:`HOLD_Z` standard errors, where a plan it would replace
needs only :data:`NOISE_Z`: the same noise that let one run's check pass and
the next one's fail no longer switches sizes run after run. The choice is
still the cheapest candidate that holds, so a pool left warm at 3008 MB by
another plan's run does not keep a cheaper size that holds from being taken;
on such a pool every plan of sizes past one vCPU is judged with
:data:`HOLD_Z` too. Judged with :data:`NOISE_Z` there, a cheaper size turned
down on noise was taken a run or two later (gemm: 3008, 3008, then 1769 MB),
its cold starts falling between critical-path's own runs. And the held plan
over its bound even past :data:`HOLD_Z` is left only when what it loses per
run, over the :data:`RECENT` runs its calibrated comparison rests on, is more
than the switch's cold starts, as the simulator prices them (uniform 3008 MB
from the pool as it is, against on its own warm processes): a fixed threshold
on a check that moves run to run (the small tree's: 0.67-1.49x its bound) still
flips, while a plan whose loss over those runs is more than the cold starts is left.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Mapping, Sequence

from fanflow.dag.graph import DAG
from fanflow.dag.placement import readers_share_label
from fanflow.metrics.normalize import ONE_VCPU_MB
from fanflow.planning.calibrate import RECENT, Calibration
from fanflow.planning.predict import DagCosts, Line, scale
from fanflow.planning.simulate import Assignment, Simulation, simulate
from fanflow.platforms.sizing import vcpus
from fanflow.worker.values import MEMORY_SHARE

MEMORY_CHOICES: tuple[int, ...] = (512, 1024, 1769, 3008)
"""Memory sizes (MB) the critical-path planner chooses from, ascending."""

MAX_CHECK_ROUNDS = 2
"""Full simulations the critical-path planner may use to confirm its downgrades."""

NEVER_WORSE = 0.05
"""The critical-path plan's predicted makespan and GB-s stay within this fraction over uniform at the largest size."""

NOISE_Z = 1.0
"""A plan of sizes past one vCPU loses to uniform at the largest size only when its calibrated makespan is
over the +5% by this many standard errors of the comparison (from the spread of the DAG's past runs).
At 1.0 a plan as fast as uniform loses about 1 time in 12 on a machine whose runs vary by 15%; the rule
without it turned down uniform 1769 MB on 3 of 4 workloads (a coin toss: medians of 3 runs of each plan,
measured minutes apart, under a load that moved them 10-20%)."""

HOLD_Z = 2.0
"""The plan whose sizes the pool holds warm loses to another only when over a bound by this many standard
errors (:data:`NOISE_Z` for any other plan). With execution lines tied across 1769 and 3008 MB, what
switched critical-path between them was noise in the calibrated medians: section 2 of
``benchmarks/planning.py`` (small, load 1.3-2.5) counted 22 switches in 8 passes, 8 of them right after
critical-path's own runs; with the hold 8 in 5 passes (load 1.6-2.4), all right after uniform's runs
(1769 MB taking over from the 3008 MB processes they left, as it should)."""

REWEIGH_BUDGET = 1
"""Tasks the critical-path planner's path updates may visit, as a multiple of the DAG's size."""

MERGE_SLACK = 0.5
"""Clustering merges labels only if the predicted makespan (warm pool) grows by at most this fraction.

The simulator over-values two workers against one on a pool whose workers fill the machine's cores and
share them with the store: svd1 small in one worker was predicted 6-12% slower than in its 3-4 labels and
ran 0.55-0.58x their makespan (82.5% fewer bytes), gemm small one worker predicted 34-44% slower ran 0.39x
plain's (measured at load 5-9 and 8, two sessions), gemm real (2,000² in 500² blocks) one worker predicted
21-27% slower than its 4 labels on 2 processes ran 0.88x their makespan (0.458 against 0.521 s, medians of
5 interleaved runs at load 2-3) with 32 MB moved instead of 192 MB. At 2% every such merge was refused; at
15% gemm real's was once the simulator stopped predicting uploads the loop does not make (it had merged
only because the 4-label plan was predicted slower than it ran). A merge predicted much slower
(independent work that does run in parallel: twice as long for two even halves) still is."""

MERGE_TRIALS = 24
"""Label pairs clustering tries to merge at most (one simulation each), heaviest first."""

MERGE_MIN_BYTES = 64 * 1024
"""Label pairs moving fewer predicted bytes between them are not worth a simulation."""

MERGE_BUDGET_TASKS = 25_000
"""Tasks clustering's merge simulations may cover in all; a DAG too large for three of them (the unmerged
plan, one group, two groups) is not merged. Planning 8,191 tasks with every optimization: 0.11 -> 0.28 s
CPU at load 4."""

_OVERHEAD_MODELS = ("fetch", "upload", "gap", "cold", "warm", "mix")
"""The :class:`DagCosts` models of what a task costs beside its execution."""

SAME_PREDICTION = 1e-9
"""Lines of two sizes whose coefficients differ by less than this fraction are one prediction. A function
measured at 1769 MB alone predicts 3008 MB by the 512 MB normalization (the same CPU past one vCPU), which
gives its own line back but for rounding; told apart, the two sizes cost a plan two more simulations
(uniform 1769 MB from an empty pool and again on a warm one: 2 of 5 for a 100k-task tree) whose times
differed in the 16th digit."""

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
    out_bytes = costs.out_bytes
    follow = follow or {}
    labels = [-1] * n
    done = [0.0] * n  # predicted finish, ignoring transfers: enough to tell which input comes last
    next_label = 0
    together = _root_groups(dag, costs, memory) if clustering else {}
    executions: dict[int, list[float]] = {}  # by memory size: one lookup per size, not per task
    size, at_size = -1, []
    for t in range(n):
        ups = deps[t]
        m = memory[t]
        if m != size:
            found = executions.get(m)
            if found is None:
                found = executions[m] = costs.exec_at(m)
            size, at_size = m, found
        work = at_size[t]
        if together:
            first = together.get(t, t)
            if first != t:
                labels[t] = labels[first]
                done[t] = work
                continue
        candidates: list[int] = []
        for u in ups:
            # a first dependent always is one; clustering's cheap branch is asked only when it decides
            if dependents[u][0] == t or (
                clustering and (len(ups) > 1 or work <= costs.start_s(m) + costs.fetch_s(out_bytes[u], memory[u]))
            ):
                candidates.append(u)
        chosen = follow.get(t, -1)
        if chosen < 0 and candidates:
            if len(candidates) == 1:
                chosen = candidates[0]
            elif len(candidates) == 2:  # max() by the key below, without its calls: a binary fan-in's inputs
                a, b = candidates
                later = (done[b], out_bytes[b], -b) > (done[a], out_bytes[a], -a)
                chosen = b if later else a
            else:
                chosen = max(candidates, key=lambda u: (done[u], out_bytes[u], -u))
        if chosen >= 0:
            labels[t] = labels[chosen]
        else:
            labels[t] = next_label
            next_label += 1
        if ups:
            latest = done[ups[0]]  # max() of the inputs' finishes, as max() compares (first of equals kept)
            for u in ups:
                if done[u] > latest:
                    latest = done[u]
            done[t] = latest + work
        else:
            done[t] = work
    return labels


def _root_groups(dag: DAG, costs: DagCosts, memory: Sequence[int]) -> dict[int, int]:
    """Clustering of roots: roots feeding one fan-in share a worker when shipping their output costs more.

    Two roots that are inputs of the same task are put together (union-find,
    each group keyed by its smallest task id) when the root's execution is
    shorter than what running it apart costs: a worker start plus fetching
    its output. The client starts one worker per label of roots, so the group
    runs in one worker and the fan-ins it feeds find those inputs local (the
    blocks of a matrix product sharing an inner index, for one).
    """
    deps = dag.deps
    parent: dict[int, int] = {r: r for r in dag.roots}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    out_bytes = costs.out_bytes
    starts: dict[int, float] = {}
    executions: dict[int, list[float]] = {}
    fetches: dict[tuple[float, int], float] = {}  # a tree's roots have a few output sizes: asked once each
    for d, inputs in enumerate(deps):
        if len(inputs) < 2:
            continue
        ups = [u for u in inputs if not deps[u]]
        if len(ups) < 2:
            continue
        worth: list[int] = []
        for u in ups:
            m = memory[u]
            start, at_size = starts.get(m), executions.get(m)
            if start is None or at_size is None:
                start, at_size = starts[m], executions[m] = costs.start_s(m), costs.exec_at(m)
            key = (out_bytes[u], memory[d])
            fetch = fetches.get(key)
            if fetch is None:
                fetch = fetches[key] = costs.fetch_s(*key)
            # what running u apart from its reader d costs: a worker start and a fetch
            if at_size[u] <= start + fetch:
                worth.append(u)
        for u in worth[1:]:
            a, b = find(worth[0]), find(u)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {r: find(r) for r in parent}


def merge_labels(
    dag: DAG,
    costs: DagCosts,
    memory: Sequence[int],
    labels: Sequence[int],
    delayed_io: bool,
    max_workers: int | None,
    remote: bool,
) -> list[int] | None:
    """Clustering across labels: merge labels that move many bytes between them while the makespan holds.

    :func:`place` decides edge by edge, so a value read in two labels, or a
    fan-in whose inputs come from several, still travels through the store
    even where fewer workers would run as fast: on a pool of 2 slots, gemm's
    2,000² product in 500² blocks ran 4 labels whose products all crossed
    (254 MB predicted) where one worker was predicted 1% slower and moves
    only its result (32 MB). Each pair of labels is weighed by the predicted
    bytes of the outputs one makes and the other reads. Candidates:

    - the labels coarsened into ``k`` groups for ``k`` from 1 to the pool's
      slots (4 without a pool): heaviest pairs merged first, a group's
      predicted work kept within a ``k``-th of the whole (plus a quarter), so
      the groups can run side by side;
    - from the best of those, single pairs merged heaviest first
      (:data:`MERGE_TRIALS` at most), each kept if it holds.

    Pairs under :data:`MERGE_MIN_BYTES` are ignored, and so are pairs whose
    tasks have different memory (a worker runs its label's tasks at the size
    it started with, so a task planned at 3,008 MB could land in a 512 MB
    worker). The simulations stop at :data:`MERGE_BUDGET_TASKS` simulated
    tasks (a DAG of more than a third of that is not merged). Each candidate
    is simulated with the pool warm at the plan's sizes (the state a re-run
    meets, where a lost parallel branch shows instead of hiding behind cold
    starts) and kept only when the predicted makespan stays within
    :data:`MERGE_SLACK` of the unmerged plan's and no more bytes move. Upload
    flags follow the merged labels (delayed I/O keeps more outputs local once
    their readers share a label). Returns the merged labels, or None when no
    candidate moves fewer bytes.
    """
    n = len(dag)
    budget = MERGE_BUDGET_TASKS
    if budget < 3 * n:
        return None
    out_bytes, dependents = costs.out_bytes, dag.dependents
    weight: dict[tuple[int, int], float] = {}
    for u in range(n):
        mine = labels[u]
        for other in {labels[d] for d in dependents[u]}:
            if other != mine:
                pair = (mine, other) if mine < other else (other, mine)
                weight[pair] = weight.get(pair, 0.0) + out_bytes[u]
    sizes: dict[int, set[int]] = {}
    for t, x in enumerate(labels):
        sizes.setdefault(x, set()).add(memory[t])
    # labels of one memory size only: a worker runs every task of its label at the size it started with
    pairs = sorted(
        (p for p, w in weight.items() if w >= MERGE_MIN_BYTES and len(sizes[p[0]] | sizes[p[1]]) == 1),
        key=lambda p: -weight[p],
    )
    if not pairs:
        return None
    work: dict[int, float] = {}
    for t, x in enumerate(labels):
        work[x] = work.get(x, 0.0) + costs.exec_at(memory[t])[t]
    total = sum(work.values())
    warm = [max(memory)] * max_workers if max_workers else []

    def run(candidate: list[int]) -> Simulation:
        nonlocal budget
        budget -= n
        upload = upload_flags(dag, candidate) if delayed_io else None
        return simulate(dag, costs, Assignment(list(memory), candidate, upload), max_workers, remote, warm)

    def coarsened(groups: int) -> list[int]:
        parent: dict[int, int] = {}
        size = dict(work)
        bound = total / groups * 1.25
        for a, b in pairs:
            ra, rb = _root(parent, a), _root(parent, b)
            if ra != rb and (groups == 1 or size[ra] + size[rb] <= bound):
                keep, gone = min(ra, rb), max(ra, rb)
                parent[gone] = keep
                size[keep] += size.pop(gone)
        return [_root(parent, x) for x in labels]

    base = run(list(labels))
    limit = base.makespan * (1.0 + MERGE_SLACK)
    current, moved = list(labels), base.bytes_moved
    tried: set[tuple[int, ...]] = {tuple(current)}
    for groups in range(1, (max_workers or 4) + 1):
        if budget < n:
            break
        candidate = coarsened(groups)
        if tuple(candidate) in tried:
            continue
        tried.add(tuple(candidate))
        sim = run(candidate)
        if sim.makespan <= limit and sim.bytes_moved < moved:
            current, moved = candidate, sim.bytes_moved
    first: dict[int, int] = {}  # a task of each original label, to find which group it is in now
    for t, x in enumerate(labels):
        first.setdefault(x, t)
    for a, b in pairs[:MERGE_TRIALS]:
        ra, rb = current[first[a]], current[first[b]]
        if ra == rb:
            continue
        if budget < n:
            break
        keep, gone = min(ra, rb), max(ra, rb)
        candidate = [keep if x == gone else x for x in current]
        if tuple(candidate) in tried:
            continue
        tried.add(tuple(candidate))
        sim = run(candidate)
        if sim.makespan <= limit and sim.bytes_moved <= moved:  # a tie may be what the next merge needs
            current, moved = candidate, sim.bytes_moved
    return current if moved < base.bytes_moved else None


def _root(parent: dict[int, int], x: int) -> int:
    """Union-find over labels: the representative of ``x``'s group."""
    while parent.get(x, x) != x:
        x = parent[x]
    return x


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
    """Delayed I/O: False where the loop may skip the upload, True elsewhere.

    Asked wherever every reader shares the task's label (not for a sink): the
    loop skips the upload where its static rule allows it (:func:`delayable`,
    which the simulator applies too), or where the worker finds at run time
    that it will claim and keep every reader itself
    (:meth:`fanflow.worker.loop.Worker._readers_stay_here`).

    Both cases ask only that every reader share the label: an output the static
    rule delays has such readers, so that rule is not asked here (the
    simulations of the plan ask it, once per labels).
    """
    return [not shared for shared in readers_share_label(dag, labels)]


def prewarm_times(sim: Simulation, costs: DagCosts, roots: Sequence[int]) -> dict[int, float]:
    """When to start each non-root worker so that a cold start ends as its first task is claimed."""
    out: dict[int, float] = {}
    root_set = set(roots)
    for t in range(len(sim.start)):
        if sim.previous[t] < 0 and t not in root_set:
            cold = costs.cold_s(sim.worker_memory[sim.worker[t]])
            out[t] = max(0.0, sim.start[t] - sim.head_latency[t] - cold)
    return out


class _Paths:
    """Longest paths over a simulation's structure, kept up to date incrementally as weights change.

    The structure's edges are the dependencies, the order of tasks within a
    worker, and what dispatched each worker (:attr:`Simulation.waited_for` of
    its first task: its claimer, the worker that handed it over, or the one
    whose exit freed the pool slot it waited for). With each task weighted by
    its overhead before it plus its duration, the longest path to a task's end
    is exactly its simulated finish, so only the tails need a pass.
    """

    def __init__(self, dag: DAG, sim: Simulation) -> None:
        n = len(dag)
        deps, dependents = dag.deps, dag.dependents
        self.preds: list[list[int]] = [list(u) for u in deps]
        self.succs: list[list[int]] = [list(d) for d in dependents]
        for t in range(n):
            for p in (sim.previous[t], sim.waited_for[t]):
                if p >= 0 and p not in self.preds[t]:
                    self.preds[t].append(p)
                    self.succs[p].append(t)
        self.rank = [0] * n
        for r, t in enumerate(sim.order):
            self.rank[t] = r
        self.weight = [h + d for h, d in zip(sim.head_latency, sim.duration, strict=True)]
        self.finish = list(sim.finish)
        self.tail = [0.0] * n
        tail, weight, preds = self.tail, self.weight, self.preds
        for s in reversed(sim.order):
            through = weight[s] + tail[s]
            for p in preds[s]:
                if through > tail[p]:
                    tail[p] = through

    def slack(self, t: int, target: float) -> float:
        return target - self.finish[t] - self.tail[t]

    def reweigh(self, changed: dict[int, float]) -> int:
        """Set new weights for some tasks and propagate finish forward and tail backward where they change.

        Returns how many tasks it visited.
        """
        rank, finish, tail, weight = self.rank, self.finish, self.tail, self.weight
        preds, succs = self.preds, self.succs
        for t, w in changed.items():
            weight[t] = w
        heap = [(rank[t], t) for t in changed]
        heapq.heapify(heap)
        seen = set(changed)
        visited = 0
        while heap:
            _, t = heapq.heappop(heap)
            visited += 1
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
            visited += 1
            new = max((weight[s] + tail[s] for s in succs[t]), default=0.0)
            if abs(new - tail[t]) <= _EPS:
                continue
            tail[t] = new
            for p in preds[t]:
                if p not in seen:
                    seen.add(p)
                    heapq.heappush(back, (-rank[p], p))
        return visited


def _weights_at(costs: DagCosts, sim: Simulation, memory_mb: int, pool: bool) -> list[float]:
    """Path weight (overhead before + duration) of every task if its worker had ``memory_mb``.

    The same inputs are fetched and the same outputs uploaded; the loop gaps
    follow the size. A worker's first task pays the start latency of the new
    size: without a pool, the platform's mix of cold and warm; in a pool, a
    cold start, since a size the pool was not running needs a fresh process.
    """
    z = costs.z
    execute = costs.exec_at(memory_mb)
    fetch, upload = costs.fetch.line(memory_mb), costs.upload.line(memory_mb)
    f0, f1, ff = fetch.intercept + z * fetch.sd, fetch.slope, fetch.floor
    u0, u1, uf = upload.intercept + z * upload.sd, upload.slope, upload.floor
    gap = costs.gap_s(memory_mb)
    latency = costs.cold_s(memory_mb) if pool else costs.start_s(memory_mb)
    return [
        (gap if p >= 0 else latency) + (max(ff, f0 + f1 * r) if r > 0 else 0.0) + e + max(uf, u0 + u1 * u)
        for p, r, e, u in zip(sim.previous, sim.remote_bytes, execute, sim.up_bytes, strict=True)
    ]


def downgrade(
    dag: DAG,
    costs: DagCosts,
    plan: Assignment,
    sim: Simulation,
    target: float,
    choices: Sequence[int],
    fixed: set[int],
    pool: bool,
) -> list[int]:
    """Lower the memory of workers off the critical path within their slack; returns the workers changed.

    Workers are visited by cost, largest first (most to save). Each gets the
    smallest memory in ``choices`` for which every task of the worker, delayed
    by its own extra time and that of the worker's tasks before it (a slower
    start included), still (1) finishes within its slack and (2) finishes
    before the input that claims each of its dependents in the simulation: a
    slower task must not become the one that claims a fan-in, or the fan-in
    would move to this slower worker (or to a new one), which the slack does
    not account for. A size predicted slower (measured, or scaled where never
    measured) is only taken where the slack absorbs it. In a pool, the worker
    that next takes this worker's slot expected a warm process of its own
    size and now finds one of another size: its cold start must fit its slack
    too. Downgrades stop once their updates have visited :data:`REWEIGH_BUDGET`
    times the tasks (a delay in a busy pool runs down the whole queue behind
    it), so this stays near linear; the most costly workers came first.
    """
    dependents, claimer, worker = dag.dependents, sim.claimer, sim.worker
    by_worker: list[list[int]] = [[] for _ in range(sim.workers)]
    for t in sim.order:
        by_worker[worker[t]].append(t)
    at_size = {m: _weights_at(costs, sim, m, pool) for m in choices}
    if not _any_may_fit(sim, by_worker, at_size, target, fixed):
        return []
    paths = _Paths(dag, sim)
    finish, weight = paths.finish, paths.weight
    heir = [-1] * sim.workers  # first task of the worker dispatched into this worker's slot when it ended
    if pool:
        for t, cause in enumerate(sim.waited_for):
            if cause >= 0 and sim.previous[t] < 0 and by_worker[worker[cause]][-1] == cause:
                heir[worker[cause]] = t
    cost = [(sim.worker_end[w] - sim.worker_begin[w]) * sim.worker_memory[w] for w in range(sim.workers)]
    changed: list[int] = []
    budget = REWEIGH_BUDGET * len(dag)
    for w in sorted(range(sim.workers), key=lambda w: -cost[w]):
        if budget <= 0:
            break
        tasks = by_worker[w]
        if not tasks or tasks[0] in fixed:
            continue
        current = sim.worker_memory[w]
        for m in choices:
            if m >= current:
                break
            new = at_size[m]
            extra = 0.0
            fits = True
            for t in tasks:
                extra += new[t] - weight[t]
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
            update = {t: new[t] for t in tasks}
            h = heir[w]
            if h >= 0 and not sim.worker_cold[worker[h]] and sim.worker_memory[worker[h]] != m:
                late_start = costs.cold_s(sim.worker_memory[worker[h]]) - sim.worker_latency[worker[h]]
                if max(extra, 0.0) + late_start > paths.slack(h, target) + _EPS:
                    continue
                update[h] = weight[h] + late_start
            budget -= paths.reweigh(update)
            for t in tasks:
                plan.memory_mb[t] = m
            changed.append(w)
            break
    return changed


def _any_may_fit(
    sim: Simulation, by_worker: list[list[int]], at_size: Mapping[int, list[float]], target: float, fixed: set[int]
) -> bool:
    """Whether some worker might take a smaller size in :func:`downgrade`: a necessary condition, cheap.

    The first check of :func:`downgrade` with each task's slack bounded by ``target - finish`` (its
    tail is never negative), on the simulation's own paths. When no worker passes, none is downgraded
    and the longest paths need not be built: on a pool whose workers are all busy to the end (a
    100k-task tree on 2 processes) building them was a sixth of the plan.
    """
    weight = [h + d for h, d in zip(sim.head_latency, sim.duration, strict=True)]
    finish = sim.finish
    for w, tasks in enumerate(by_worker):
        if not tasks or tasks[0] in fixed:
            continue
        for m, new in at_size.items():
            if m >= sim.worker_memory[w]:
                continue
            extra = 0.0
            for t in tasks:
                extra += new[t] - weight[t]
                if extra > target - finish[t] + _EPS:
                    break
            else:
                return True
    return False


def makespan_floor(dag: DAG, costs: DagCosts, memory_mb: int, max_workers: int | None) -> float:
    """A makespan no simulation of uniform ``memory_mb`` from an empty pool can beat (0.0 where unsure).

    A task's worker holds it from the end of the worker's previous task (the
    loop gap) or from its dispatch (the start latency: cold or warm on a pool,
    the platform's mix without one) until it hands its output on (fetch,
    execution, upload: at least the upload's floor and intercept); that interval ends
    before its readers start, so before the sink it leads to finishes (every
    task of a DAG leads to a sink). Hence the makespan is at least the
    longest such interval, and on a pool, where at most ``max_workers``
    workers run at once, their sum over the slots. Sound only while no
    predicted gap, latency, floor or execution time is negative (none is, as
    fitted; the floor is 0.0 otherwise). One pass over the tasks' predicted
    times, against a full simulation.
    """
    execute = costs.exec_at(memory_mb)
    if not execute:
        return 0.0
    fetch, upload = costs.fetch.line(memory_mb), costs.upload.line(memory_mb)
    # the simulator's upload time: the larger of the floor and the line at the bytes uploaded (0 or more)
    upload_least = max(upload.floor, upload.intercept + costs.z * upload.sd) if upload.slope >= 0 else upload.floor
    gap = costs.gap_s(memory_mb)
    latency = min(costs.cold_s(memory_mb), costs.warm_s(memory_mb)) if max_workers else costs.start_s(memory_mb)
    if min(fetch.floor, upload.floor, gap, latency, min(execute)) < 0.0:
        return 0.0
    head = min(gap, latency) + upload_least
    longest = latency + max(execute) + upload_least
    return max(longest, (math.fsum(execute) + len(dag) * head) / max_workers) if max_workers else longest


def _same_costs(costs: DagCosts, a: int, b: int) -> bool:
    """Whether every prediction is the same at ``a`` and ``b`` MB (past one vCPU, unmeasured sizes scale alike),
    up to rounding (:data:`SAME_PREDICTION`)."""
    models = (costs.fetch, costs.upload, costs.gap, costs.cold, costs.warm, costs.mix, *costs.exec_models)
    return all(_same_line(model.line(a), model.line(b)) for model in models)


def _same_line(a: Line, b: Line) -> bool:
    return all(
        math.isclose(x, y, rel_tol=SAME_PREDICTION)
        for x, y in ((a.intercept, b.intercept), (a.slope, b.slope), (a.sd, b.sd), (a.floor, b.floor))
    )


def _time_factor(costs: DagCosts, a: int, b: int) -> float | None:
    """``k`` when every prediction at ``b`` MB is the one at ``a`` MB times ``k`` (up to rounding), else None.

    Sizes never measured scale one line by the normalization model: 1769 and 3008 MB predict the same
    times (``k`` = 1), 512 MB twice 1024 MB's. A uniform plan's simulation is then the other's with every
    time multiplied by ``k``: every duration, latency and gap is, so the events keep their order, as
    long as each worker's process value cache keeps the same outputs at both sizes (it keeps none larger
    than a share of the worker's memory).
    """
    if max(costs.out_bytes, default=0.0) > min(a, b) * 2**20 * MEMORY_SHARE:
        return None
    k = scale(b) / scale(a)
    models = (costs.fetch, costs.upload, costs.gap, costs.cold, costs.warm, costs.mix, *costs.exec_models)
    return k if all(_same_line(model.line(b), model.line(a).scaled(k)) for model in models) else None


def _resized(sim: Simulation, old_mb: int, new_mb: int, factor: float = 1.0) -> Simulation:
    """A uniform plan's simulation at another size whose predictions are ``factor`` times these: the times
    multiplied by it, the cost by it and in proportion to memory (:func:`_time_factor`)."""
    cost = sim.cost_gb_s * new_mb / old_mb
    if factor == 1.0:
        return dataclasses.replace(sim, worker_memory=[new_mb] * sim.workers, cost_gb_s=cost)

    def times(values: list[float]) -> list[float]:
        return [v * factor for v in values]

    return dataclasses.replace(
        sim,
        start=times(sim.start),
        finish=times(sim.finish),
        duration=times(sim.duration),
        head_latency=times(sim.head_latency),
        worker_memory=[new_mb] * sim.workers,
        worker_begin=times(sim.worker_begin),
        worker_end=times(sim.worker_end),
        worker_latency=times(sim.worker_latency),
        makespan=sim.makespan * factor,
        cost_gb_s=cost * factor,
    )


def plan_kind(memory_mb: Sequence[int]) -> str:
    """``uniform`` when every task has one memory size, else ``mixed``."""
    return "uniform" if len(set(memory_mb)) <= 1 else "mixed"


def plan_key(memory_mb: Sequence[int]) -> str:
    """The kind and the memory sizes (``uniform 1769``, ``mixed 512/3008``): the key of a calibration factor."""
    return f"{plan_kind(memory_mb)} {'/'.join(map(str, sorted(set(memory_mb))))}"


def critical_path_assignment(
    dag: DAG,
    costs: DagCosts,
    labels: list[int] | None,
    upload: list[bool] | None,
    slack: float,
    choices: Sequence[int] = MEMORY_CHOICES,
    requested: Sequence[int | None] | None = None,
    max_workers: int | None = None,
    calibration: Calibration | Mapping[str, float] | None = None,
    top_sim: Simulation | None = None,
    remote: bool = False,
    held: Sequence[int] = (),
) -> tuple[Assignment, Simulation, float, Simulation]:
    """The critical-path plan's memory sizes, its simulation, the best-case makespan and uniform at the top size.

    The best case is the fastest *uniform* plan over ``choices`` (simulated,
    so cold starts, the pool and measured per-size times all count; the
    largest memory is not assumed fastest). Every uniform plan within the
    target is a candidate, and so is the per-worker downgrade of the fastest
    one once a full simulation confirms it; the cheapest predicted candidate
    wins, among those no worse than uniform at the largest size (see the
    module docstring). ``calibration``: what past runs of this DAG measured
    (:class:`~fanflow.planning.calibrate.Calibration`), or a table of
    factors by :func:`plan_key` or, for a plan not in it, :func:`plan_kind`.
    ``requested`` holds per-task memory a user asked for
    (``@task(memory_mb=...)``), which the planner keeps. ``top_sim``, when
    given, is the simulation of uniform at the largest size with these labels
    and upload flags, which the caller already made. ``remote``: the store is
    out of process (see :func:`~fanflow.planning.simulate.simulate`).
    ``held``: memory sizes of the processes the pool keeps warm now; the plan
    of exactly those sizes is judged against its bounds with the wider
    allowance of :data:`HOLD_Z` (see the module docstring).
    """
    n = len(dag)
    requested = requested or [None] * n
    fixed = {t for t in range(n) if requested[t]}
    pool = bool(max_workers)
    tied = _tied(costs, [m for m in {*choices, *(r for r in requested if r)} if m >= ONE_VCPU_MB])
    if tied is not costs:
        # the caller's simulation holds where the tied lines are the same at the top
        top = max(choices)
        if not all(
            _same_line(a.line(top), b.line(top))
            for a, b in zip(
                [*(getattr(tied, k) for k in _OVERHEAD_MODELS), *tied.exec_models],
                [*(getattr(costs, k) for k in _OVERHEAD_MODELS), *costs.exec_models],
                strict=True,
            )
        ):
            top_sim = None
        costs = tied
    allow, hold = _allowance(calibration), _allowance(calibration, HOLD_Z)
    kept_warm = set(held) if pool else set()

    def within(a: Assignment, value: float, bound: float) -> bool:
        """``value`` within ``bound``, widened by the noise of past runs for a plan of sizes past one vCPU
        (further for the plan the pool holds warm, and any such plan on a pool held at the top size)."""
        if min(a.memory_mb) < ONE_VCPU_MB:
            return value <= bound * (1 + 1e-6)
        # A pool held at the top size keeps no cheaper plan out: turned down on noise, the plan is taken a
        # run later, and its cold starts fall between critical-path's own runs (gemm: 3008, 3008, then 1769
        # MB, on a pool uniform 3008 MB had left). Judged with HOLD_Z there too, it takes over at once.
        held_here = kept_warm == {max(choices)} or set(a.memory_mb) == kept_warm
        return value <= bound * (hold if held_here else allow) * (1 + 1e-6)

    def uniform(m: int) -> Assignment:
        return Assignment([r or m for r in requested], labels, upload)

    sims: dict[int, Simulation] = {} if top_sim is None else {max(choices): top_sim}
    for m in sorted(choices, reverse=True):
        if m in sims:
            continue
        # A size whose floor is past the target of the sizes simulated so far is no candidate and not the
        # fastest, whatever its simulation says: most often 512 and 1024 MB (two of the plan's simulations).
        # Sizes of a whole vCPU or more are simulated anyway on a pool (the warm re-check below needs them).
        if sims and not fixed and (not pool or m < ONE_VCPU_MB):
            target_so_far = min(s.makespan for s in sims.values()) * (1.0 + slack) * (1 + 1e-6)
            if makespan_floor(dag, costs, m, max_workers) > target_so_far * (1 + 1e-6):
                continue
        # sizes past one vCPU that were never measured predict the same times, and sizes below it that were
        # never measured the same times scaled: one simulation serves both
        twin = next(((tm, k) for tm in sims if not fixed and (k := _time_factor(costs, tm, m)) is not None), None)
        if twin is None:
            sims[m] = simulate(dag, costs, uniform(m), max_workers, remote)
        else:
            sims[m] = _resized(sims[twin[0]], twin[0], m, twin[1])
    trials = [(sims[m], m) for m in sorted(choices) if m in sims]
    best = min(s.makespan for s, _ in trials)
    target = best * (1.0 + slack)
    candidates = [(s.cost_gb_s, uniform(m), s) for s, m in trials if within(uniform(m), s.makespan, target)]
    sim, fast = min(((s, m) for s, m in trials if s.makespan <= best * (1 + 1e-6)), key=lambda sm: sm[0].cost_gb_s)
    warm_runs: dict[int, Simulation] = {}  # uniform plans by size, run again on their own warm processes
    if pool:
        # From an empty pool a uniform plan's makespan is mostly its cold starts, learned per size from a few
        # starts: one slow start at 1769 MB (a loaded machine) put that size over the target, the planner
        # switched a warm 1769 MB pool to 3008 MB and the next run paid two cold starts (4 s for a 50 ms
        # run). A size left out that way is still a candidate when, warm, it is within the target of the
        # fastest warm size; the check below then judges it warm, as every candidate on a pool. Only sizes of
        # a whole vCPU or more: below it a size is slower warm too, and each check is a simulation.
        out = [m for s, m in trials if not within(uniform(m), s.makespan, target) and m >= ONE_VCPU_MB]
        if out:
            for m in [fast, *out]:
                warm_runs[m] = _again(dag, costs, uniform(m), sims[m], max_workers, remote)
            warm_best = min(w.makespan for w in warm_runs.values())
            candidates += [
                (sims[m].cost_gb_s, uniform(m), sims[m])
                for m in out
                if within(uniform(m), warm_runs[m].makespan, warm_best * (1.0 + slack))
            ]
    plan = uniform(fast)
    below = [c for c in sorted(choices) if c < fast]
    for _ in range(MAX_CHECK_ROUNDS if below else 0):
        if not downgrade(dag, costs, plan, sim, target, below, fixed, pool):
            break
        sim = simulate(dag, costs, plan, max_workers, remote)
        if within(plan, sim.makespan, target):
            candidates.append((sim.cost_gb_s, Assignment(list(plan.memory_mb), labels, upload), sim))
            break
        # which input finishes last moved, or the pool started processes the slack did not
        # foresee: the workers on the new critical path get the fast size back
        on_path = {sim.worker[t] for t in sim.critical_path}
        for t in range(n):
            if sim.worker[t] in on_path and t not in fixed:
                plan.memory_mb[t] = fast
        sim = simulate(dag, costs, plan, max_workers, remote)
        if within(plan, sim.makespan, target):
            candidates.append((sim.cost_gb_s, Assignment(list(plan.memory_mb), labels, upload), sim))
    top_sim, top = trials[-1]

    def calibrated(a: Assignment, s: Simulation, cold: bool | None, now: Mapping[str, float]) -> tuple[float, float]:
        if isinstance(calibration, Calibration):
            f = calibration.factor(plan_key(a.memory_mb), cold, now)
        else:
            table = calibration or {}
            f = table.get(plan_key(a.memory_mb), table.get(plan_kind(a.memory_mb), 1.0))
        return s.makespan * f, s.cost_gb_s * f

    start = True if pool else None  # candidates are simulated from an empty pool
    top_plan = uniform(top)
    # runs of a plan simulated here are compared with its simulation here (see calibrate)
    now = {plan_key(a.memory_mb): s.makespan for _, a, s in candidates}
    now[plan_key(top_plan.memory_mb)] = top_sim.makespan
    top_makespan, top_cost = calibrated(top_plan, top_sim, start, now)
    bound = 1.0 + NEVER_WORSE
    # On a pool both are checked on the warm pool below: from an empty pool the makespan is mostly cold
    # starts, which are slower at 1769 MB than at 3008 MB (a CPU-bound interpreter start) and say nothing
    # of the runs after, and the factor of a cold run inflates its GB-s; checked there as well, the
    # planner switched sizes between a plan's two runs.
    kept = [
        (cost, a, s)
        for _, a, s in candidates
        for makespan, cost in [calibrated(a, s, start, now)]
        if pool or (within(a, makespan, top_makespan * bound) and within(a, cost, top_cost * bound))
    ]
    kept.append((top_cost, top_plan, top_sim))  # always an answer
    kept.sort(key=lambda c: c[0])
    if not pool or kept[0][1].memory_mb == top_plan.memory_mb:
        _, chosen, chosen_sim = kept[0]
        return chosen, chosen_sim, best, top_sim
    # On a pool the makespan must hold run after run, on the processes its last run left warm: an empty
    # pool's makespan is mostly cold starts (0.3-1.3 s against 0.03-0.06 s warm on this machine), and 5%
    # of that hides a plan 10-20% slower once warm.
    learned = calibration.runs > 0 if isinstance(calibration, Calibration) else bool(calibration)
    top_again: Simulation | None = None
    for _, a, s in kept:
        if a.memory_mb == top_plan.memory_mb:
            break
        m = a.memory_mb[0]
        twin = not fixed and plan_kind(a.memory_mb) == "uniform" and _same_costs(costs, m, top)
        if twin and not learned:
            return a, s, best, top_sim  # the same predictions and no past runs: the same makespan
        if top_again is None:
            top_again = warm_runs.get(top) or _again(dag, costs, top_plan, top_sim, max_workers, remote)
        # a twin has the same predictions: the same times
        uniform_again = warm_runs.get(m) if plan_kind(a.memory_mb) == "uniform" else None
        again = _resized(top_again, top, m) if twin else uniform_again or _again(dag, costs, a, s, max_workers, remote)
        by_start: dict[bool, dict[str, float]] = {}
        for plan_, sim_ in ((a, again), (top_plan, top_again)):
            by_start.setdefault(any(sim_.worker_cold), {})[plan_key(plan_.memory_mb)] = sim_.makespan
        cold, top_cold = any(again.worker_cold), any(top_again.worker_cold)
        again_top, again_top_cost = calibrated(top_plan, top_again, top_cold, by_start[top_cold])
        again_makespan, again_cost = calibrated(a, again, cold, by_start[cold])
        if within(a, again_makespan, again_top * bound) and within(a, again_cost, again_top_cost * bound):
            return a, s, best, top_sim
        if set(a.memory_mb) == kept_warm:
            # Leaving the plan the pool holds starts fresh processes: worth it only if what the held plan loses
            # per run over the next RECENT runs (the runs its comparison rests on) outweighs those cold starts,
            # as the simulator prices them (uniform at the top size on this pool against on its own warm one),
            # at the factor its warm runs are calibrated by.
            switch = simulate(dag, costs, top_plan, max_workers, remote, list(held))
            factor = again_top / top_again.makespan if top_again.makespan > 0 else 1.0
            per_run_s = max(0.0, switch.makespan - top_again.makespan) * factor / RECENT
            per_run_gb_s = max(0.0, switch.cost_gb_s - top_again.cost_gb_s) * factor / RECENT
            if within(a, again_makespan - per_run_s, again_top * bound) and within(
                a, again_cost - per_run_gb_s, again_top_cost * bound
            ):
                return a, s, best, top_sim
    return top_plan, top_sim, best, top_sim


def _tied(costs: DagCosts, sizes: Sequence[int]) -> DagCosts:
    """``costs`` with one line per overhead (transfers, loop gap, starts) across ``sizes`` (those past one vCPU),
    and one execution line per function across the sizes of as many whole vCPUs.

    The normalization model holds those sizes equal, and their lines, each
    measured at its own time, differed mostly by the load of that time: the
    tree reduction's loop overheads put uniform 1769 MB 12-22% over uniform
    3008 MB, which its runs never were, and a cold start measured slower at
    1769 MB put it over the target from an empty pool. A function's own
    numeric threads may use more than a vCPU, but every platform caps them at
    the worker's whole vCPUs (:func:`fanflow.platforms.sizing.blas_threads`),
    so sizes of as many whole vCPUs (1769 and 3008 MB: one) run a function
    alike, and their execution lines are tied too. Apart, the size run less
    often was predicted from fewer runs, most of them the first on fresh
    processes (svd1 small: 1769 MB 15-18% over 3008 MB after one run of it,
    which ran as fast), and the planner switched sizes between runs, each
    switch two cold starts. Returns ``costs`` itself when no line changes.
    """
    if len(sizes) < 2:
        return costs
    models: dict[str, object] = {name: getattr(costs, name).tied(sizes) for name in _OVERHEAD_MODELS}
    groups: dict[int, list[int]] = {}
    for m in sizes:
        groups.setdefault(int(vcpus(m)), []).append(m)
    execution = list(costs.exec_models)
    for group in groups.values():
        if len(group) > 1:
            execution = [model.tied(group) for model in execution]
    if all(model is getattr(costs, name) for name, model in models.items()) and all(
        a is b for a, b in zip(execution, costs.exec_models, strict=True)
    ):
        return costs
    return dataclasses.replace(costs, exec_models=execution, **models)


def _allowance(calibration: Calibration | Mapping[str, float] | None, z: float = NOISE_Z) -> float:
    """How far a plan of sizes past one vCPU may come out over a bound before it counts as over: ``exp(z·SE)``.

    A calibrated makespan is about the median of a plan's :data:`RECENT`
    latest runs (a median of ``n`` has a variance of ``π·s²/2n``), and the
    comparison is with another plan's, run at other times: the standard
    error of their log ratio is ``s·sqrt(π/RECENT)``. ``s`` is the run-to-run
    spread of the DAG's makespan: the standard deviation of log makespans of
    past runs of one plan that started the same way, pooled over plans.
    Sizes past one vCPU are those the normalization model holds equal, so
    there the evidence must beat the noise to turn the cheaper one down;
    below it a smaller size is slower in the model, and no allowance is
    made. 1.0 without at least 2 degrees of freedom.
    """
    if not isinstance(calibration, Calibration):
        return 1.0
    groups: dict[tuple[str, bool], list[float]] = {}
    for plan, cold, actual, _ in calibration.entries:
        if actual > 0:
            groups.setdefault((plan, cold), []).append(math.log(actual))
    squares, dof = 0.0, 0
    for logs in groups.values():
        mean = math.fsum(logs) / len(logs)
        squares += math.fsum((x - mean) ** 2 for x in logs)
        dof += len(logs) - 1
    if dof < 2:
        return 1.0
    return math.exp(z * math.sqrt(squares / dof) * math.sqrt(math.pi / RECENT))


def _again(
    dag: DAG, costs: DagCosts, plan: Assignment, sim: Simulation, max_workers: int | None, remote: bool
) -> Simulation:
    """``plan`` simulated again on the pool ``sim`` (its run) left: the processes of its last workers to end."""
    last = sorted(range(sim.workers), key=lambda w: sim.worker_end[w])[-(max_workers or 1) :]
    return simulate(dag, costs, plan, max_workers, remote, [sim.worker_memory[w] for w in last])
