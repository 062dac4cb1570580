"""The plan as the worker loop reads it, and the placement rules the loop and the simulator share.

A plan gives tasks *labels*: tasks with one label should run in one worker.
The loop honours labels where it can (a worker keeps the dependents it claims
that share its task's label; the client starts a label's roots together), and
the simulator must predict exactly what the loop will do, so every rule that
decides where a task runs lives here, as a pure function both call: which
claimed dependents a worker keeps (:func:`continuation`) and which of them
runs before its queue (:func:`runs_next`), how the client
groups roots (:func:`root_groups`), and whether an output may stay out of the
store (:func:`delayable`). A plan reaches them as a typed :class:`PlanView`.

A task is **anchored** when it is certain to run in the worker that starts its
label's roots: it is such a root, or every input of it is an anchored task of
the same label (and it is not a dynamic fan-out, whose elements fan out). By
induction that one worker produces all of an anchored task's inputs, so it is
the one to finish the last of them, claims the task and, the label matching,
keeps it. An output whose consumers are all anchored in its label never needs
the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container, Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from types import MappingProxyType
from typing import TypeVar

from fanflow.dag.graph import DAG

T = TypeVar("T")


def anchored_tasks(dag: DAG, labels: Sequence[Hashable | None]) -> frozenset[int]:
    """The tasks certain to run in their label's root worker (see the module docstring)."""
    deps, maps = dag.deps, dag.maps
    anchored = [False] * len(deps)  # a flag per task, not set lookups: planners ask for every label set they try
    for t, label in enumerate(labels):  # topological order: inputs are decided first
        if label is None or t in maps:
            continue
        for u in deps[t]:
            if not anchored[u] or labels[u] != label:
                break
        else:
            anchored[t] = True
    return frozenset(compress(range(len(deps)), anchored))


def delayable(dag: DAG, t: int, labels: Sequence[Hashable | None], anchored: frozenset[int]) -> bool:
    """True when no other worker can need ``t``'s output, so delayed I/O may skip its upload.

    Every dependent shares ``t``'s label and either is anchored, or has ``t``
    as its only input (it is claimed, and kept, by ``t``'s worker the moment
    ``t`` finishes). A sink's output is always stored.
    """
    label = labels[t]
    dependents = dag.dependents[t]
    if label is None or dag.is_sink(t) or not dependents:
        return False
    if not all(labels[d] == label for d in dependents):
        return False
    return all(d in anchored or len(dag.deps[d]) == 1 for d in dependents)


def delayable_all(dag: DAG, labels: Sequence[Hashable | None], anchored: frozenset[int]) -> list[bool]:
    """:func:`delayable` of every task, in one pass: what a planner asks of each plan it simulates.

    The same answers as asking task by task: whether a reader may take an
    output without the store (anchored, or that output its only input) is
    decided once per reader, not once per input it reads.
    """
    takes = [d in anchored or len(ups) == 1 for d, ups in enumerate(dag.deps)]
    shared = readers_share_label(dag, labels, takes)
    return [s and label is not None for s, label in zip(shared, labels, strict=True)]


def readers_share_label(dag: DAG, labels: Sequence[Hashable | None], takes: Sequence[bool] | None = None) -> list[bool]:
    """Per task: not a sink, and every reader of it shares its label, None too (and, given ``takes``,
    each reader ``d`` with ``takes[d]``): what delayed I/O asks first of an output, statically
    (:func:`delayable_all`, for labelled tasks) and in the planner's upload flags."""
    sinks = set(dag.sinks)
    out = [False] * len(dag.deps)
    for t, readers in enumerate(dag.dependents):
        if not readers or t in sinks:
            continue
        label = labels[t]
        for d in readers:
            if labels[d] != label or (takes is not None and not takes[d]):
                break
        else:
            out[t] = True
    return out


@dataclass(frozen=True, slots=True)
class PlanView:
    """A DAG's plan as typed columns indexed by task id; what the plan leaves out is ``None``/default.

    Built once per DAG (:func:`plan_of`) from ``dag.annotations`` (the planner's
    ``worker``, ``memory_mb``, ``upload``, ``preload``, ``prewarm_s`` keys), or
    straight from a planner's columns (:meth:`from_columns`) by the simulator.
    """

    labels: Sequence[Hashable | None]
    """Placement label per task: tasks with one label should run in one worker."""
    memory_mb: Sequence[int | None]
    """Planned memory per task (None: the task's own ``memory_mb`` or the run's default)."""
    upload: Sequence[bool]
    """False where the plan asks for delayed I/O (skip the upload when :func:`delayable` allows)."""
    preload: Sequence[bool]
    """True where the plan asks to fetch the task's finished inputs while its claimer still runs."""
    prewarm_s: Mapping[int, float]
    """Task -> seconds after the run's start to start a worker of its memory (sparse)."""
    requested_mb: Sequence[int | None]
    """Each task's own ``memory_mb`` option."""
    anchored: frozenset[int]
    """See :func:`anchored_tasks`."""

    @classmethod
    def from_columns(
        cls,
        dag: DAG,
        labels: Sequence[Hashable | None] | None,
        memory_mb: Sequence[int | None] | None = None,
        upload: Sequence[bool] | None = None,
    ) -> PlanView:
        """A view of a planner's columns (``None``: the plan does not decide that)."""
        n = len(dag)
        labels = labels if labels is not None else [None] * n
        return cls(
            labels=labels,
            memory_mb=memory_mb if memory_mb is not None else [None] * n,
            upload=upload if upload is not None else [True] * n,
            preload=[False] * n,
            prewarm_s={},
            requested_mb=_requested_mb(dag),
            anchored=anchored_tasks(dag, labels),
        )

    def memory_for(self, t: int, default: int) -> int:
        """The memory a worker started for ``t`` gets: planned, else the task's own, else ``default``."""
        return int(self.memory_mb[t] or self.requested_mb[t] or default)

    def fits(self, t: int, memory_mb: int) -> bool:
        """Whether ``t`` may run in a worker of ``memory_mb`` (no planned memory fits any)."""
        planned = self.memory_mb[t]
        return planned is None or planned == memory_mb

    def delays_upload(self, dag: DAG, t: int) -> bool:
        """Delayed I/O: the plan asks to skip ``t``'s upload and :func:`delayable` allows it."""
        return not self.upload[t] and delayable(dag, t, self.labels, self.anchored)


def _requested_mb(dag: DAG) -> list[int | None]:
    """Each task's own ``memory_mb`` option (looked up once per function, not per task)."""
    per_function = [task.memory_mb for task in dag.tasks]
    return [per_function[f] for f in dag.task_of]


def plan_of(dag: DAG, *, refresh: bool = False) -> PlanView:
    """The plan view of ``dag``'s annotations, built once per DAG object in a process (kept on the DAG).

    The client passes ``refresh=True`` when it starts a run, after planning
    wrote the annotations, so in-process workers never see an older plan.
    """
    found = None if refresh else dag.plan_view
    if found is None:
        found = dag.plan_view = _read_annotations(dag) if dag.annotations else _no_plan(dag)
    return found


_NO_PLANS: dict[int, PlanView] = {}
"""Task count -> the view of a DAG with no annotations and no task's own ``memory_mb``."""
_NO_PLANS_MAX = 256
"""Task counts kept in :data:`_NO_PLANS` (each entry holds five tuples of that length)."""


def _no_plan(dag: DAG) -> PlanView:
    """The view of an unannotated ``dag``: shared by every such DAG of its size when no task asks for memory.

    Such a view depends on nothing but the task count (no labels: nothing is
    anchored), so a fresh DAG per call (``fanflow.dask.get``) need not rebuild
    its columns and anchored set, ~150 bytecodes for one task. Its columns are
    tuples and its prewarm map read-only, so no holder can change the others'.
    """
    if any(task.memory_mb for task in dag.tasks):
        return PlanView.from_columns(dag, None)
    n = len(dag)
    found = _NO_PLANS.get(n)
    if found is None:
        nothing: tuple[None, ...] = (None,) * n
        found = PlanView(
            labels=nothing,
            memory_mb=nothing,
            upload=(True,) * n,
            preload=(False,) * n,
            prewarm_s=MappingProxyType({}),
            requested_mb=nothing,
            anchored=frozenset(),
        )
        if len(_NO_PLANS) < _NO_PLANS_MAX:
            _NO_PLANS[n] = found
    return found


def _read_annotations(dag: DAG) -> PlanView:
    notes = [dag.annotations.get(t) or {} for t in range(len(dag))]
    labels = [a.get("worker") for a in notes]
    return PlanView(
        labels=labels,
        memory_mb=[int(m) if m else None for m in (a.get("memory_mb") for a in notes)],
        upload=[bool(a.get("upload", True)) for a in notes],
        preload=[bool(a.get("preload")) for a in notes],
        prewarm_s={t: float(a["prewarm_s"]) for t, a in enumerate(notes) if "prewarm_s" in a},
        requested_mb=_requested_mb(dag),
        anchored=anchored_tasks(dag, labels),
    )


def spread(items: Sequence[T], free: int | None) -> tuple[list[T], list[list[T]]]:
    """Split work a worker holds between itself and new workers, given the platform's idle capacity.

    ``free`` is the platform's count of idle worker slots, or None when it has
    no limit worth knowing (a FaaS platform): then every item gets its own
    worker, as in WUKONG. Where invocations queue behind busy workers, an
    invocation costs more than running the task here, so with a count the
    worker keeps a share and hands the rest to at most ``free`` new workers,
    as WUKONG's executors do when invoking is expensive: each of the
    ``free + 1`` parties gets about as many items, and the new workers take
    contiguous runs from the end (neighbours in a list tend to share a
    dependent). Returns ``(kept, groups)``, one group per new worker.
    """
    if free is None:
        return [], [[item] for item in items]
    if free <= 0 or not items:
        return list(items), []
    give = -(-len(items) * free // (free + 1))
    kept, tail = list(items[: len(items) - give]), list(items[len(items) - give :])
    parts = min(free, len(tail))
    return kept, [tail[i * len(tail) // parts : (i + 1) * len(tail) // parts] for i in range(parts)]


def root_groups(dag: DAG, plan: PlanView, free: int | None = None) -> list[list[int]]:
    """The client's start: roots sharing a label share a worker; the others get one worker each, as in
    WUKONG, or, when the platform says ``free`` workers could start now, that many workers share them
    (per memory size, see :func:`spread`), in :func:`by_shared_readers` order so that roots read by
    one task tend to start in one worker (a worker handing its roots on splits them the same way).

    With a ``free`` count a label's roots are one unit of that sharing, never split: a planner
    labels each root on its own unless it clusters them, and one invocation per label would queue
    thousands behind a pool's few slots (a 2,048-leaf tree took 10x longer planned than not)."""
    if len(dag.roots) == 1:
        return [list(dag.roots)]  # one root, one group, whatever the labels and the free count
    groups: dict[Hashable, list[int]] = {}
    for r in by_shared_readers(dag):
        label = plan.labels[r]
        key = ("memory", plan.memory_mb[r] or plan.requested_mb[r]) if label is None else ("label", label)
        groups.setdefault(key, []).append(r)
    if free is None:
        out: list[list[int]] = []
        for (kind, _), roots in groups.items():
            out.extend([roots] if kind == "label" else ([r] for r in roots))
        return out
    units: dict[int | None, list[list[int]]] = {}  # per memory size of the worker that starts them
    for (kind, _), roots in groups.items():
        size = plan.memory_mb[roots[0]] or plan.requested_mb[roots[0]]
        units.setdefault(size, []).extend([roots] if kind == "label" else ([r] for r in roots))
    shares: list[list[list[int]]] = []
    for sized in units.values():
        first, others = spread(sized, max(1, free) - 1)
        shares.extend(([first] if first else []) + others)
    return [[r for unit in share for r in unit] for share in shares]


def by_shared_readers(dag: DAG) -> Sequence[int]:
    """The roots, those with a dependent in common next to each other (connected groups, in order of
    their first root); computed once per DAG (:attr:`~fanflow.dag.graph.DAG.roots_by_readers`).

    Shares of roots are contiguous runs (:func:`spread`), so this keeps a task's
    inputs in one worker where a whole group fits in a share: ``x @ omega`` of
    ``svd_compressed`` then runs where the 8 MB block ``x`` was made, instead of
    fetching it to where the small ``omega`` chunk was.
    """
    return dag.roots_by_readers


def continuation(
    dag: DAG,
    plan: PlanView,
    t: int,
    claimed: Sequence[int],
    memory_mb: int,
    is_here: Callable[[int], bool],
    *,
    unshared: bool = False,
    free: int | None = None,
) -> tuple[list[int], list[list[int]]]:
    """The continuation policy: of the dependents ``t`` just claimed, what runs next in this worker.

    Returns the tasks to run here (in order) and the groups to start one new
    worker each for. ``memory_mb`` is this worker's; ``is_here(u)`` says whether
    ``u``'s output is already in this worker. The worker loop and the
    simulator both call this, so plans predict what the loop does.

    ``unshared``: ``t``'s output is in this worker only (a large output whose
    every dependent this worker claimed before uploading it), so every claimed
    dependent runs here, in order: size-driven clustering, with no plan.

    When ``t`` has a placement label, the dependents sharing it stay (clustering)
    and each other label gets one new worker; if none shares it, the label
    group with most inputs here stays instead, if its memory fits (the plan's
    guess of who finishes a fan-in last was wrong; its worker may be gone, and
    a new one would fetch every input). Without a label one dependent stays,
    the one with most inputs here among those whose memory fits, as in WUKONG,
    and the others that fit are spread over the platform's ``free`` idle
    slots (:func:`spread`; ``None``: one new worker each), the rest queued here:
    those with most inputs here are the ones queued, those with fewest go.
    """
    if unshared:
        return list(claimed), []
    labels, deps = plan.labels, dag.deps
    label = labels[t]
    if label is not None:
        groups: dict[Hashable, list[int]] = {}
        for d in claimed:
            mine = labels[d]
            groups.setdefault(("solo", d) if mine is None else mine, []).append(d)
        here = groups.pop(label, [])
        if not here:
            fits = [k for k, g in groups.items() if plan.fits(g[0], memory_mb)]
            if fits:
                best = max(fits, key=lambda k: sum(is_here(u) for d in groups[k] for u in deps[d]))
                here = groups.pop(best)
        return here, list(groups.values())
    fits = [d for d in claimed if plan.fits(d, memory_mb)]
    if not fits:
        return [], [[d] for d in claimed]
    if len(fits) > 1:  # most inputs here first: those stay, the others go (spread gives the tail away)
        fits = sorted(fits, key=lambda d: -sum(is_here(u) for u in deps[d]))
    keep = fits[0]
    if free is None:
        return [keep], [[d] for d in claimed if d != keep]
    kept, groups = spread(fits[1:], free)
    return [keep, *kept], [[d] for d in claimed if d not in fits] + groups


def sheddable(dag: DAG, d: int, held_here_only: Callable[[int], bool]) -> bool:
    """Whether a queued task may move to a new worker as far as its inputs go: none of them is an
    output only this worker holds (it was never uploaded). Its label decides the rest (:func:`shed_units`)."""
    return not any(held_here_only(u) for u in dag.deps[d])


def shed_units(
    plan: PlanView,
    queue: Sequence[T],
    task_of: Callable[[T], int],
    stays: Callable[[T], bool],
    started_here: Container[Hashable],
) -> list[list[T]]:
    """What of a worker's queue may move to new workers, as units that each move whole, in queue order.

    ``queue[0]`` runs here next; ``stays(item)`` says an item may not move (an input only this
    worker holds, see :func:`sheddable`, or the loop pinned it); ``started_here`` holds the labels of
    the tasks this worker ran. An unlabelled item is a unit of its own. A label's items move
    together, and only while no task of that label ran here, none of its items stays and it is not
    the label of ``queue[0]``: the plan put a label's tasks in one worker, and its delayed I/O counts
    on the worker that starts a label's roots running all of them (:func:`anchored_tasks`). Moving
    a label that started here would split that, where moving it whole leaves the new worker the
    one that starts them. A planner labels each root on its own, so without this the roots a
    shared pool's client starts in one worker (:func:`root_groups` with one free slot) never
    moved: one worker ran a 2,047-task tree while the pool's other slot stayed idle.

    What does not move now never will (labels only start, inputs only stay, pins only add), so
    the loop scans again only once its queue has grown (:meth:`fanflow.worker.Worker._shed`).
    """
    labels = plan.labels
    units: list[list[T]] = []
    by_label: dict[Hashable, list[T]] = {}
    kept: set[Hashable] = set()
    for i, item in enumerate(queue):
        label = labels[task_of(item)]
        if label is not None and label in started_here:
            continue
        if i == 0 or stays(item):
            if label is not None:
                kept.add(label)
        elif label is None:
            units.append([item])
        elif label not in started_here:
            unit = by_label.get(label)
            if unit is None:
                unit = by_label[label] = []
                units.append(unit)
            unit.append(item)
    if kept and by_label:
        units = [u for u in units if labels[task_of(u[0])] not in kept]
    return units


def runs_here_if_claimed(plan: PlanView, t: int, d: int, memory_mb: int) -> bool:
    """Whether :func:`continuation` keeps ``d`` in ``t``'s worker when ``t`` claims ``d`` alone."""
    label = plan.labels[t]
    return (label is not None and plan.labels[d] == label) or plan.fits(d, memory_mb)


def runs_next(d: int, inputs: Sequence[int], is_here: Callable[[int], bool]) -> bool:
    """Whether ``d``, a task a worker just kept whose ``inputs`` are given, runs before the rest of its queue.

    A *join*: some input was made in another worker (``is_here`` is false for it). The worker
    finishing its share of a join last claims it; behind that worker's own queue the join held up its
    readers while slowing nothing, so which of two busy workers claimed the next join was a race
    each time (gemm's sums went 16/0, 13/3 or 8/8 from run to run). Run at once, a claimed join
    delays its claimer's share of the next one, so the same worker claims that too: one plan, one
    placement. Tasks whose inputs are all here keep first-in-first-out (a tree's pairs). A join whose
    output the plan asks to keep local runs at once too: when its readers' other inputs are not here
    yet, the worker keeps its notification back until they are (:func:`readers_stay`, ``WAIT``).
    """
    return len(inputs) > 1 and not all(map(is_here, inputs))


UPSTREAM_LIMIT = 512
"""Most tasks :func:`is_upstream` visits to tell that an input of a reader finished before a task started."""


def is_upstream(dag: DAG, u: int, t: int) -> bool:
    """Whether ``u`` is upstream of ``t``, looking at :data:`UPSTREAM_LIMIT` tasks at most (False: not found).

    Task ids are topological (a task's inputs have smaller ids), so only tasks above ``u``'s id can
    lead to it: a tree's pair whose other input is a later task asks nothing, and a search stays in
    the part of ``t``'s ancestry younger than ``u`` (a walk of all of it, 512 tasks for every output
    at a label's edge, took a third of the time of planning 8,191 tasks with every optimization).
    """
    if u >= t:
        return False
    deps = dag.deps
    seen: set[int] = set()
    todo = [x for x in deps[t] if x >= u]
    while todo and len(seen) < UPSTREAM_LIMIT:
        x = todo.pop()
        if x == u:
            return True
        if x not in seen:
            seen.add(x)
            todo.extend(y for y in deps[x] if y >= u)
    return False


STORE, STAY, WAIT = 0, 1, 2
"""What :func:`readers_stay` decides for an output: upload it as usual, keep it here and notify now, or
keep it here and keep its notification back until the readers' other inputs are made here."""


def readers_stay(
    dag: DAG,
    plan: PlanView,
    t: int,
    ran_here: Callable[[int], bool],
    queued: Container[int],
) -> tuple[int, list[int]]:
    """Delayed I/O decided at run time, by the loop and the simulator alike: ``STORE``, ``STAY`` or
    ``WAIT`` for ``t``'s output, and the inputs of its readers it waits for.

    The plan's rule (:func:`delayable`) is static: a fan-in is only safe when it is *anchored*, so
    the sums of a blocked matrix product, whose products come from two labels, were uploaded though
    the worker that ran them went on to claim their reader. Asked only where the plan asked for
    delayed I/O (every reader shares ``t``'s label). For every reader ``d`` each other input ``u``
    is either made here (``ran_here(u)``: notified, or its notification held here), queued here with
    the same label (returned: the caller pins it, never shed), or upstream of ``t``
    (:func:`is_upstream`, finished and notified before ``t`` could start): then the last notification ``d`` waits for
    comes from this worker, which keeps ``d`` (its label matches, :func:`continuation`): ``STAY``.

    Where some ``u`` is none of these but shares the label (the plan expects this worker to make
    it), ``WAIT``: the output stays here and its notification waits (returned: what it waits for)
    until every such input is made here, when ``STAY`` holds; nobody else can claim ``d`` meanwhile,
    since ``t`` has not notified it. A worker whose queue empties first notifies anyway, storing the
    value unless its claim completes ``d`` (``only_if_last``). gemm's clustered sums: the first one
    a worker claims runs at once (:func:`runs_next`), before its next products complete the other
    sums, so without the wait every sum was uploaded; queued instead, which worker claimed which
    sum was a race (37-56% fewer bytes than plain from run to run).
    """
    label = plan.labels[t]
    if plan.upload[t] or label is None or dag.is_sink(t) or t in dag.maps:
        return STORE, []
    labels, maps = plan.labels, dag.maps
    waits: list[int] = []
    missing = False
    for d in dag.dependents[t]:
        if labels[d] != label or d in maps:
            return STORE, []
        for u in dag.deps[d]:
            if u == t or ran_here(u):
                continue
            if labels[u] != label or u in maps:
                if is_upstream(dag, u, t):
                    continue
                return STORE, []
            if u in queued:
                waits.append(u)
                continue
            if not is_upstream(dag, u, t):
                waits.append(u)
                missing = True
    return (WAIT if missing else STAY), waits


def queue_kept(queue: deque[T], kept: Sequence[T], first: Sequence[T]) -> None:
    """Queue what a worker keeps: ``first`` (those :func:`runs_next` picks, in ``kept``'s order) at the
    front, the rest of ``kept`` at the back, as the loop and the simulator both do."""
    if first:
        queue.extendleft(reversed(first))
        queue.extend(d for d in kept if d not in first)
    else:
        queue.extend(kept)
