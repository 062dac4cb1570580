"""Simulating a run: when each task starts and finishes under a plan, the makespan, cost and critical path.

The simulator replays the worker loop's rules, not an idealized schedule, so a
prediction can be compared with a real run:

- the client starts one worker per root at time 0 (roots sharing a placement
  label share one worker); a new worker begins its start latency after it is
  invoked;
- with ``max_workers`` (a local pool, such as the processes platform) the
  simulator replays the pool: at most ``max_workers`` workers run at once and
  further invocations wait FIFO for a slot; the pool starts with the idle
  processes it kept from earlier runs (``warm``: a session keeps its pool
  warm between runs; empty for a fresh pool), keeps a finished worker's
  process idle, gives an invocation an idle process of the same memory size (a *warm* start, at
  the warm latency of that size) or else starts a fresh process (a *cold*
  start at that size's cold latency), evicting the least recently used idle
  process when the pool is full. This is why memory choices interact: a plan
  mixing sizes in a small pool pays cold starts a uniform plan does not.
  Without a cap (a FaaS platform) every new worker pays the mixed latency;
- a task that is not its worker's first begins the loop gap after the one
  before it, and finishes ``fetch + exec + upload`` after it begins: ``fetch`` is one
  round trip for the inputs produced in *other* workers (inputs this worker made
  are in its cache and cost nothing; in a pool on a store out of process, so
  are the inputs its *process* made or fetched for an earlier worker of the
  run: the process value cache, :mod:`fanflow.worker.values`, which also
  decides what counts as local when a claimer picks what to keep), ``exec`` is the function at the worker's
  memory, ``upload`` is the store + notify round trip (notify only when delayed
  I/O skips the upload, which happens only where the loop would allow it);
- on a store out of process (``remote``), an output of at least
  :data:`~fanflow.worker.loop.LARGE_OUTPUT_BYTES` whose readers would all
  stay in its worker is first only *claimed*, one round trip without the
  value, each claim won only where this output completes the reader's
  inputs. When it wins every reader, the value never travels and every
  reader runs in this worker (``continuation(unshared=True)``); otherwise a
  second round trip uploads it and notifies the rest. Which case holds is
  decided at the claim's time in the event order, as the store decides it;
- the task that finishes a dependent's last input claims it, and the claiming
  worker keeps or hands off the claimed dependents exactly as the loop does:
  both call :func:`fanflow.dag.placement.continuation` (labelled dependents
  cluster, one new worker per other label; without labels one dependent stays,
  the one with most inputs in this worker, as WUKONG does); the roots are
  grouped by :func:`fanflow.dag.placement.root_groups`, as the client does;
- with ``max_workers`` the idle slots are the platform's free-slot count the
  loop reads: the roots, the claimed dependents beyond the one kept and, when
  a worker is about to run its next task, the movable part of its queue are
  spread over them (:func:`fanflow.dag.placement.spread`), the rest queued in
  the worker, as the loop does; without a cap each goes to a new worker;
- a worker runs at the memory planned for the task it was started for, and
  ends when it has nothing left to run. Cost is the sum over workers of
  memory (GB) × time alive (first task start to last task finish): GB-seconds.

It is an event simulation: a heap of task finish events, processed in time
order, over plain lists indexed by task id, so it is O((tasks + edges) log
tasks) and needs no node objects.

Besides times, the result keeps the *structure* the run took (which worker ran
each task, which task it waited for, and the task before it in its worker):
the critical-path planner reuses it to update longest paths incrementally
instead of simulating the whole DAG again after each change. What a worker's
first task waited for is what dispatched its worker: the claimer, the worker
that handed it over, or, in a full pool, the worker whose exit freed the slot,
so a delay shows up in every worker queued behind it.
"""

from __future__ import annotations

import dataclasses
import heapq
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fanflow.dag.graph import DAG
from fanflow.dag.placement import (
    STORE,
    WAIT,
    PlanView,
    continuation,
    delayable_all,
    queue_kept,
    readers_stay,
    root_groups,
    runs_here_if_claimed,
    runs_next,
    shed_units,
    sheddable,
    spread,
)
from fanflow.planning.predict import DagCosts
from fanflow.worker.loop import LARGE_OUTPUT_BYTES
from fanflow.worker.values import MEMORY_SHARE


@dataclass(slots=True)
class Assignment:
    """A plan in simulator form: per task memory (MB), placement label (None: WUKONG default) and upload flag."""

    memory_mb: list[int]
    labels: list[int] | None = None
    upload: list[bool] | None = None


@dataclass(slots=True)
class Simulation:
    """Predicted times of one run (seconds from the start of the run) and its structure."""

    start: list[float]
    finish: list[float]
    duration: list[float]
    """fetch + exec + upload of each task (without waiting for a worker to start)."""
    worker: list[int]
    """Simulated worker index per task."""
    claimer: list[int]
    """The task whose finish completed this one's inputs (-1 for a root)."""
    waited_for: list[int]
    """The task whose finish let this one begin (-1: none): the task before it in its worker, its claimer, or,
    for a worker's first task, what dispatched the worker (its claimer, the worker that handed it over, or the
    worker whose exit freed the pool slot)."""
    previous: list[int]
    """The task run just before this one in the same worker (-1 when it was the worker's first)."""
    head_latency: list[float]
    """For a worker's first task, its start latency after the worker was dispatched; otherwise the
    loop gap after the previous task of its worker."""
    order: list[int]
    """Tasks in the order they began (a topological order of the DAG plus the per-worker sequences)."""
    worker_memory: list[int]
    worker_begin: list[float]
    worker_end: list[float]
    worker_cold: list[bool]
    """Per worker: True when the simulated pool had to start a fresh process for it."""
    worker_latency: list[float]
    """Per worker: the start latency (cold, warm or mixed) it paid, without the queue wait."""
    worker_process: list[int]
    """Per worker: the pool process it ran in (numbered from 0, the warm ones first); -1 without a pool."""
    remote_bytes: list[float]
    """Per task: bytes fetched from the store (inputs made in other workers)."""
    up_bytes: list[float]
    """Per task: bytes uploaded (0 when delayed I/O kept the output local)."""
    makespan: float
    cost_gb_s: float
    bytes_fetched: float
    bytes_uploaded: float
    critical_path: list[int]

    @property
    def workers(self) -> int:
        return len(self.worker_memory)

    @property
    def bytes_moved(self) -> float:
        """Bytes through the store: inputs fetched plus outputs uploaded."""
        return self.bytes_fetched + self.bytes_uploaded


class _AtMemory:
    """Every cost the simulator needs at one memory size, as plain numbers (computed once per size)."""

    __slots__ = (
        "cold",
        "exec",
        "f_base",
        "f_floor",
        "f_slope",
        "gap",
        "room",
        "start",
        "u_base",
        "u_floor",
        "u_slope",
        "warm",
    )

    def __init__(self, costs: DagCosts, memory_mb: int) -> None:
        z = costs.z
        fetch, upload = costs.fetch.line(memory_mb), costs.upload.line(memory_mb)
        self.f_base, self.f_slope, self.f_floor = fetch.intercept + z * fetch.sd, fetch.slope, fetch.floor
        self.u_base, self.u_slope, self.u_floor = upload.intercept + z * upload.sd, upload.slope, upload.floor
        self.exec = costs.exec_at(memory_mb)
        self.gap = costs.gap_s(memory_mb)
        self.cold = costs.cold_s(memory_mb)
        self.warm = costs.warm_s(memory_mb)
        self.start = costs.start_s(memory_mb)
        self.room = memory_mb * 2**20 * MEMORY_SHARE  # the process value cache keeps no larger value


@dataclass(slots=True)
class _Labelled:
    """What a plan's labels decide, kept for the next simulations and upload flags of the same labels."""

    dag: weakref.ref[DAG]
    labels: list[int] | None
    view: PlanView
    """The labels' view (anchored tasks); simulations replace its memory sizes and upload flags."""
    delayable: list[bool] | None = None
    """:func:`~fanflow.dag.placement.delayable` of every task (computed when first asked)."""
    starts: dict[tuple[int | None, tuple[int, ...]], list[list[int]]] = dataclasses.field(default_factory=dict)
    """The client's root groups, by free slots and which roots share a memory size."""


_labelled: _Labelled | None = None


def _of_labels(dag: DAG, labels: list[int] | None) -> _Labelled:
    """What ``labels`` decide for ``dag``, computed once while the labels stay equal (compared by value,
    so a list changed in place is never taken for the old one): a planner simulates one DAG with the
    same labels at every memory size, with and without upload flags, and asks for those flags too."""
    global _labelled
    last = _labelled
    if last is None or last.dag() is not dag or last.labels != labels:
        copied = None if labels is None else list(labels)
        last = _labelled = _Labelled(weakref.ref(dag), copied, PlanView.from_columns(dag, copied))
    return last


def delayable_tasks(dag: DAG, labels: list[int]) -> list[bool]:
    """:func:`~fanflow.dag.placement.delayable` of every task of ``dag`` under ``labels`` (kept, see
    :func:`_of_labels`: the simulations of one plan's labels at every size ask alike)."""
    found = _of_labels(dag, labels)
    if found.delayable is None:
        view = found.view
        found.delayable = delayable_all(dag, view.labels, view.anchored)
    return found.delayable


def _root_starts(dag: DAG, plan: Assignment, view: PlanView, free: int | None) -> list[list[int]]:
    """:func:`~fanflow.dag.placement.root_groups` of the plan, kept while the labels stay equal.

    The groups depend on the labels and on which roots share a memory size, not on the sizes or the
    upload flags, so a planner's uniform plans at every size, with and without delayed I/O, share one
    computation (it was a fifth of a simulation of a 100k-task tree: 50,000 roots).
    """
    starts = _of_labels(dag, plan.labels).starts
    memory, requested = view.memory_mb, view.requested_mb
    sizes = [memory[r] or requested[r] for r in dag.roots]
    numbers = dict.fromkeys(sizes)
    if len(numbers) > 1:
        # the sizes numbered in the order first met: the groups of uniform plans at any size are the same
        numbers.update((m, i) for i, m in enumerate(numbers))
        shape: tuple[int, ...] = tuple(map(numbers.__getitem__, sizes))
    else:
        shape = ()  # one size (the usual): every root alike, without a tuple as long as the roots
    found = starts.get((free, shape))
    if found is None:
        found = starts[(free, shape)] = root_groups(dag, view, free)
    return found


@dataclass(slots=True)
class _Placement:
    """What a plan's labels and upload flags decide, kept for the next simulation of the same DAG."""

    dag: weakref.ref[DAG]
    labels: list[int] | None
    upload: list[bool] | None
    view: PlanView
    local: list[bool]
    asks: list[bool]


_last: _Placement | None = None


def _placement(dag: DAG, plan: Assignment) -> tuple[PlanView, list[bool], list[bool]]:
    """The plan's view, which outputs delayed I/O keeps local, and where the loop decides that at run time
    (asked, with a label, not kept by the static rule; empty when none is): computed once while the
    labels and upload flags stay equal, the labels' part once while they do (see :func:`_of_labels`)."""
    global _last
    last = _last
    if last is not None and last.dag() is dag and last.labels == plan.labels and last.upload == plan.upload:
        return dataclasses.replace(last.view, memory_mb=plan.memory_mb), last.local, last.asks
    labelled = _of_labels(dag, plan.labels)
    asks: list[bool] = []
    if plan.upload is None:
        upload, local = None, [False] * len(dag)
        view = dataclasses.replace(labelled.view, memory_mb=plan.memory_mb)
    else:
        upload = list(plan.upload)
        view = dataclasses.replace(labelled.view, memory_mb=plan.memory_mb, upload=upload)
        may = delayable_tasks(dag, labelled.view.labels) if plan.labels is not None else [False] * len(dag)
        local = [not up and delay for up, delay in zip(upload, may, strict=True)]  # PlanView.delays_upload
        if plan.labels is not None:
            asks = [not up and not delay for up, delay in zip(upload, may, strict=True)]
            if not any(asks):
                asks = []
    _last = _Placement(weakref.ref(dag), labelled.labels, upload, view, local, asks)
    return view, local, asks


def _same(t: int) -> int:
    return t


def simulate(
    dag: DAG,
    costs: DagCosts,
    plan: Assignment,
    max_workers: int | None = None,
    remote: bool = False,
    warm: Sequence[int] = (),
) -> Simulation:
    """Predict the run of ``dag`` under ``plan`` (see the module docstring for the rules).

    ``remote``: the run's store is out of process (Redis), where the loop keeps a
    large output in its worker when that worker claims every reader. ``warm``:
    the memory sizes of the idle processes the pool holds when the run starts
    (least recently used first; a pool kept warm from an earlier run), empty
    for a fresh pool.
    """
    n = len(dag)
    deps, dependents = dag.deps, dag.dependents
    memory = plan.memory_mb
    view, local, asks = _placement(dag, plan)
    out_bytes = costs.out_bytes
    sinks = set(dag.sinks)
    if remote and max(out_bytes, default=0.0) >= LARGE_OUTPUT_BYTES:
        large = [
            out_bytes[t] >= LARGE_OUTPUT_BYTES and not local[t] and t not in sinks and bool(dependents[t])
            for t in range(n)
        ]
    else:
        large = [False] * n  # no output that large: no list of n tests
    remaining = [len(d) for d in deps]
    start = [0.0] * n
    finish = [0.0] * n
    duration = [0.0] * n
    worker = [-1] * n
    claimer = [-1] * n
    waited_for = [-1] * n
    previous = [-1] * n
    head_latency = [0.0] * n
    claimed_at = [0.0] * n
    held = list(local)  # outputs that never reached the store: only their worker can run their readers
    order: list[int] = []
    w_memory: list[int] = []
    w_begin: list[float] = []
    w_end: list[float] = []
    w_last: list[int] = []
    w_queue: list[deque[int]] = []
    w_costs: list[_AtMemory] = []
    w_cold: list[bool] = []
    w_latency: list[float] = []
    remote_bytes = [0.0] * n
    up_bytes = [0.0] * n
    at_memory: dict[int, _AtMemory] = {}
    heap: list[tuple[float, int, int]] = []
    won_first: dict[int, list[int]] = {}
    seq = 0
    fetched = uploaded = 0.0
    pool = max_workers is not None and max_workers > 0
    labels, planned_mb = view.labels, view.memory_mb
    decides = remote and bool(asks)  # delayed I/O the loop decides at run time (readers_stay)
    w_pinned: list[set[int]] = []
    w_waiting: list[dict[int, set[int]]] = []  # as the loop's _waiting, _awaited and _due, per worker
    w_awaited: list[dict[int, list[int]]] = []
    w_due: list[list[int]] = []
    went_large = [False] * n
    labelled = pool and plan.labels is not None  # labels a worker ran: only shedding reads them
    w_labels: list[set[object]] = []
    slots = max_workers if pool else n + 1
    # (memory, process) of the idle processes, least recently used first
    idle = [(m, p) for p, m in enumerate(list(warm)[-max_workers:] if pool and max_workers else [])]
    processes = next_process = len(idle)
    w_process: list[int] = []
    # which processes hold each task's output in their value cache (a bit per process)
    cached = remote and pool
    has = [0] * n
    waiting: deque[list[int]] = deque()
    push, pop = heapq.heappush, heapq.heappop
    began = order.append

    def run_next(w: int, now: float) -> None:
        nonlocal seq, fetched, uploaded
        t = w_queue[w].popleft()
        c = w_costs[w]
        prev = w_last[w]
        if prev >= 0:
            gap = c.gap
            head_latency[t] = gap
            now += gap
            previous[t] = prev
            if now - gap > claimed_at[t]:
                waited_for[t] = prev
        remote = 0.0
        if cached:
            bit, room = 1 << w_process[w], c.room
            for u in deps[t]:
                if worker[u] != w and not has[u] & bit:
                    remote += out_bytes[u]
                    if out_bytes[u] <= room:
                        has[u] |= bit
            if out_bytes[t] <= room:
                has[t] |= bit
        else:
            for u in deps[t]:
                if worker[u] != w:
                    remote += out_bytes[u]
        if remote > 0:
            fetch = c.f_base + c.f_slope * remote
            d = (fetch if fetch > c.f_floor else c.f_floor) + c.exec[t]  # max() of two, without its call
            fetched += remote
            remote_bytes[t] = remote
        else:
            d = 0.0 + c.exec[t]
        verdict = STORE
        if decides and asks[t]:
            # the loop's run-time delayed I/O, on the state it sees when t finishes: this worker is busy
            # with t till then, so what it made and what it queued do not change meanwhile
            verdict, waits = readers_stay(dag, view, t, lambda u: worker[u] == w, w_queue[w])
            if verdict != STORE:
                w_pinned[w].update(waits)
                held[t] = True
                if verdict == WAIT:
                    w_waiting[w][t] = set(waits)
                    awaited = w_awaited[w]
                    for u in waits:
                        awaited.setdefault(u, []).append(t)
        worker[t] = w
        start[t] = now
        w_last[w] = t
        if labelled:
            w_labels[w].add(labels[t])
        began(t)
        seq += 1
        if large[t] and verdict == STORE and all(runs_here_if_claimed(view, t, x, w_memory[w]) for x in dependents[t]):
            # claims first, without the value; whether it is uploaded is known at the claim (a negative event)
            went_large[t] = True
            d += max(c.u_floor, c.u_base)
            duration[t] = d
            finish[t] = now + d
            push(heap, (now + d, seq, -1 - t))
            return
        up = 0.0 if local[t] or verdict != STORE else out_bytes[t]
        upload = c.u_base + c.u_slope * up
        d += upload if upload > c.u_floor else c.u_floor
        uploaded += up
        up_bytes[t] = up
        duration[t] = d
        end = finish[t] = now + d
        push(heap, (end, seq, t))

    def new_worker(tasks: list[int], at: float, cause: int) -> None:
        nonlocal slots, processes, next_process
        if slots <= 0:
            waiting.append(tasks)
            return
        slots -= 1
        w = len(w_memory)
        mem = memory[tasks[0]]
        c = at_memory.get(mem)
        if c is None:
            c = at_memory[mem] = _AtMemory(costs, mem)
        same = len(idle) - 1  # the most recently idle process of that size
        while same >= 0 and idle[same][0] != mem:
            same -= 1
        process = -1
        if not pool:
            cold, latency = False, c.start
        elif same >= 0:
            _, process = idle.pop(same)
            cold, latency = False, c.warm
        else:
            if processes >= (max_workers or 0) and idle:
                del idle[0]  # the pool evicts the idle process used least recently
                processes -= 1
            processes += 1
            process = next_process
            next_process += 1
            cold, latency = True, c.cold
        w_process.append(process)
        begin = at + latency
        w_memory.append(mem)
        w_costs.append(c)
        w_cold.append(cold)
        w_begin.append(begin)
        w_end.append(begin)
        w_last.append(-1)
        w_queue.append(deque(tasks))
        w_pinned.append(set())
        w_waiting.append({})
        w_awaited.append({})
        w_due.append([])
        if labelled:
            w_labels.append(set())
        w_latency.append(latency)
        first = tasks[0]
        run_next(w, begin)
        # the path into a worker's first task runs through what dispatched it: its claimer, the
        # worker that handed it over, or the worker whose exit freed the pool slot it waited for
        head_latency[first] = latency
        if cause >= 0:
            waited_for[first] = cause

    def here_in(w: int) -> Callable[[int], bool]:
        """Whether an output is in worker ``w``: made there, or in its process's value cache."""
        bit = 1 << w_process[w] if cached else 0
        return lambda u: worker[u] == w or bool(has[u] & bit)

    def shed(w: int, now: float, t: int) -> None:
        """As the loop: a worker about to run its next task hands part of its queue to idle slots."""
        queue = w_queue[w]
        if not pool or slots <= 0 or len(queue) < 2:
            return
        held_here = lambda u: held[u] and worker[u] == w  # noqa: E731
        pinned = w_pinned[w]
        stays = lambda d: d in pinned or not sheddable(dag, d, held_here)  # noqa: E731
        units = shed_units(view, queue, _same, stays, w_labels[w] if labelled else ())
        _, shares = spread(units, slots)
        groups = [[d for unit in share for d in unit] for share in shares]
        moved = {d for g in groups for d in g}
        if moved:
            w_queue[w] = deque(d for d in queue if d not in moved)
            for group in groups:
                new_worker(group, now, t)

    def keep(w: int, t: int, claimed: list[int], now: float, unshared: bool = False) -> None:
        """As the loop's continue_after and _enqueue: what ``t``'s claims keep in ``w``, in which order."""
        is_here = here_in(w)
        here, others = continuation(
            dag, view, t, claimed, w_memory[w], is_here, unshared=unshared, free=max(0, slots) if pool else None
        )
        queue_kept(w_queue[w], here, [d for d in here if runs_next(d, deps[d], is_here)])
        for group in others:
            new_worker(group, now, t)

    def notify_waiting(w: int, now: float, last: bool) -> float:
        """As the loop's _settle (``last``: its _notify_waiting at the end of the queue); the time after."""
        nonlocal uploaded
        kept_back = w_waiting[w]
        if last:
            done = list(kept_back)
            w_awaited[w].clear()
            w_due[w].clear()
        else:
            done, w_due[w] = w_due[w], []
        if not done:
            return now
        c = w_costs[w]
        now += c.u_floor if c.u_floor > c.u_base else c.u_base
        got: dict[int, list[int]] = {}
        stored: list[int] = []
        for h in done:
            del kept_back[h]
            won = got[h] = []
            for d in dependents[h]:
                if not last:
                    remaining[d] -= 1
                    if not remaining[d]:
                        won.append(d)
                elif remaining[d] == 1:  # only_if_last: won only where it completes the reader
                    remaining[d] = 0
                    won.append(d)
            if last and len(won) < len(dependents[h]):
                stored.append(h)
        if stored:
            up = sum(out_bytes[h] for h in stored)
            rt = c.u_base + c.u_slope * up
            now += rt if rt > c.u_floor else c.u_floor
            uploaded += up
            for h in stored:
                up_bytes[h] = out_bytes[h]
                held[h] = False
                for d in dependents[h]:
                    if d not in got[h]:
                        remaining[d] -= 1
                        if not remaining[d]:
                            got[h].append(d)
        for h in done:
            if got[h]:
                for d in got[h]:
                    claimer[d] = waited_for[d] = h
                    claimed_at[d] = now
                keep(w, h, got[h], now)
        return now

    for group in _root_starts(dag, plan, view, max(0, slots) if pool else None):
        new_worker(group, 0.0, -1)
    while heap:
        now, _, t = pop(heap)
        w = worker[t if t >= 0 else -1 - t]
        unshared = False
        if t < 0:
            t = -1 - t
            won = [d for d in dependents[t] if remaining[d] == 1]
            if len(won) == len(dependents[t]):
                unshared = held[t] = True
            else:
                # some reader still waits for another input: a second round trip stores the value
                c = w_costs[w]
                up = out_bytes[t]
                extra = max(c.u_floor, c.u_base + c.u_slope * up)
                uploaded += up
                up_bytes[t] = up
                duration[t] += extra
                finish[t] = now + extra
                for d in won:
                    remaining[d] = 0
                    claimer[d] = waited_for[d] = t
                    claimed_at[d] = now
                won_first[t] = won
                seq += 1
                push(heap, (now + extra, seq, t))
                continue
        claimed = won_first.pop(t, None) if won_first else None
        skip = claimed is not None
        if not skip:
            claimed = []
        readers = dependents[t] if not (decides and t in w_waiting[w]) else ()  # its notification waits
        for d in readers:
            if skip and d in claimed:
                continue
            left = remaining[d] - 1
            remaining[d] = left
            if not left:
                claimed.append(d)
                claimer[d] = waited_for[d] = t
                claimed_at[d] = now
        queue = w_queue[w]
        if len(claimed) == 1:
            # what continuation() decides for a lone claim (runs_here_if_claimed, inlined: it runs per task),
            # without building its groups
            d = claimed[0]
            label, planned = labels[t], planned_mb[d]
            if (label is not None and labels[d] == label) or planned is None or planned == w_memory[w]:
                ups = deps[d]
                if len(ups) > 1:
                    # runs_next, inlined for the same reason: a join of another worker's output goes first
                    bit = 1 << w_process[w] if cached else 0
                    for u in ups:
                        if worker[u] != w and not has[u] & bit:
                            queue.appendleft(d)
                            break
                    else:
                        queue.append(d)
                else:
                    queue.append(d)
                if len(readers) == 1 and t not in sinks:
                    held[t] = True  # the claim stored the output only if another worker had won it
                    if not skip and not went_large[t] and up_bytes[t]:
                        uploaded -= up_bytes[t]
                        up_bytes[t] = 0.0
                claimed = None
        if claimed:
            keep(w, t, claimed, now, unshared)
        if decides and w_waiting[w]:
            kept_back = w_waiting[w]
            for h in w_awaited[w].pop(t, ()):  # t is made here now
                waits = kept_back.get(h)
                if waits is not None:
                    waits.discard(t)
                    if not waits:
                        w_due[w].append(h)
            if w_due[w]:
                now = notify_waiting(w, now, False)
            if not queue and kept_back:
                now = notify_waiting(w, now, True)
        if queue:
            if pool and slots > 0 and len(queue) > 1:
                shed(w, now, t)
            run_next(w, now)
            continue
        w_end[w] = now
        slots += 1
        if pool:
            idle.append((w_memory[w], w_process[w]))
        if waiting:
            new_worker(waiting.popleft(), now, t)

    last = max(sinks, key=lambda s: finish[s])
    path = [last]
    while waited_for[path[-1]] >= 0:
        path.append(waited_for[path[-1]])
    path.reverse()
    cost = sum(m / 1024 * (e - b) for m, b, e in zip(w_memory, w_begin, w_end, strict=True))
    return Simulation(
        start,
        finish,
        duration,
        worker,
        claimer,
        waited_for,
        previous,
        head_latency,
        order,
        w_memory,
        w_begin,
        w_end,
        w_cold,
        w_latency,
        w_process,
        remote_bytes,
        up_bytes,
        finish[last],
        cost,
        fetched,
        uploaded,
        path,
    )
