"""One continuation policy: the worker loop and the planner's simulator keep the same tasks together.

Each case is a DAG and a plan (memory, labels, delayed I/O) whose claims do not
depend on timing (every fan-in's inputs come from one worker), so the workers a
real run uses are determined by the policy alone. The simulator predicts them
from the same plan; both must give the same tasks to the same workers, at the
same memory.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fanflow
from fanflow.client.hooks import OnPlanned
from fanflow.client.session import session
from fanflow.dag import DAG
from fanflow.dag.placement import (
    PlanView,
    by_shared_readers,
    continuation,
    plan_of,
    root_groups,
    runs_here_if_claimed,
)
from fanflow.planning.predict import Predictor
from fanflow.planning.simulate import Assignment, simulate
from fanflow.store.metadata import open_metadata


@fanflow.task
def source(n: int) -> int:
    return n


@fanflow.task
def grow(x: int) -> int:
    return x + 1


@fanflow.task
def merge(*parts: int) -> int:
    return sum(parts)


def fan_out(width: int) -> DAG:
    """A root, then ``width`` branches of two tasks, each branch end a sink (no fan-in: no race)."""
    root = source(1)
    return DAG.from_sinks([grow(grow(root)) for _ in range(width)])


def two_roots() -> DAG:
    return DAG.from_sinks([merge(grow(source(1)), grow(source(2)))])


Case = tuple[DAG, Callable[[int], int], Callable[[int], int] | None, bool]
"""A DAG; memory per task; label per task (None: no labels); whether delayed I/O is asked."""


def cases() -> dict[str, Case]:
    four = fan_out(4)  # task 0 the root; branch k is tasks 2k+1 -> 2k+2
    last = len(four) - 1
    return {
        "no plan: one branch stays, the others get a worker each": (four, lambda t: 1769, None, False),
        "a memory change starts a worker of that size": (four, lambda t: 3008 if t == last else 1769, None, False),
        "labels cluster branches, one worker per other label": (
            four,
            lambda t: 1769,
            lambda t: 0 if t <= 4 else 1,
            True,
        ),
        "one label, delayed I/O: everything in one worker": (four, lambda t: 1769, lambda t: 0, True),
        "no dependent shares the label: a group that fits stays": (
            four,
            lambda t: 3008 if t in (1, 2) else 1769,
            lambda t: (t + 1) // 2,
            False,
        ),
        "roots sharing a label start in one worker": (two_roots(), lambda t: 1769, lambda t: 0, True),
    }


def loop_partition(dag: DAG, config: fanflow.Config) -> set[tuple[frozenset[int], int]]:
    """The tasks each worker of a real run ran, with that worker's memory."""
    captured: list[str] = []
    session().execute(dag, config, hooks=[OnPlanned(lambda r: captured.append(r.run_id))])
    events = open_metadata(config.metadata).load_run(captured[0]).events
    memory = {e["worker"]: e["memory_mb"] for e in events if e["kind"] == "worker_started"}
    tasks: dict[str, set[int]] = {}
    for e in events:
        if e["kind"] == "task_finished":
            tasks.setdefault(e["worker"], set()).add(e["task"])
    return {(frozenset(ts), memory[w]) for w, ts in tasks.items()}


def loop_config(platform: str, store: str, tmp_path: Path) -> fanflow.Config:
    return fanflow.Config(
        platform=platform,
        store=store,
        progress=False,
        metadata=f"sqlite:///{tmp_path / 'meta.db'}",
        metrics_upload="task",
        memory_mb=1769,
        fanout="wukong",  # one worker per branch, as the simulator without max_workers (a pool's free
        # slots depend on timing; tests/test_capacity.py covers that mode)
    )


def simulated_partition(
    dag: DAG, assignment: Assignment, remote: bool = False, out_bytes: dict[int, float] | None = None
) -> set[tuple[frozenset[int], int]]:
    costs = Predictor(None, "p50", None).costs(dag)
    for t, size in (out_bytes or {}).items():
        costs.out_bytes[t] = size
    sim = simulate(dag, costs, assignment, remote=remote)
    tasks: dict[int, set[int]] = {}
    for t, w in enumerate(sim.worker):
        tasks.setdefault(w, set()).add(t)
    return {(frozenset(ts), sim.worker_memory[w]) for w, ts in tasks.items()}


@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("platform", ["threads", "processes"])
def test_loop_and_simulator_choose_the_same_continuations(
    name: str, platform: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dag, memory_of, label_of, delayed = cases()[name]
    dag = DAG.from_sinks(list(dag.nodes[s] for s in dag.sinks) if dag.nodes else [])  # a fresh copy per run
    n = len(dag)
    memory = [memory_of(t) for t in range(n)]
    labels = [label_of(t) for t in range(n)] if label_of is not None else None
    upload = [False] * n if delayed else None
    predicted = simulated_partition(dag, Assignment(memory, labels, upload))
    for t in range(n):
        note: dict[str, Any] = {"memory_mb": memory[t]}
        if labels is not None:
            note["worker"] = f"w{labels[t]}"
        if upload is not None:
            note["upload"] = False
        dag.annotations[t] = note
    store = request.getfixturevalue("redis_url") if platform == "processes" else "memory://continuation"
    config = loop_config(platform, store, tmp_path)
    assert loop_partition(dag, config) == predicted
    assert len(predicted) > 1 or labels is not None  # every case without labels fans out


def test_a_single_claim_stays_exactly_when_the_continuation_keeps_it() -> None:
    """The store-unless-claimed shortcut (:func:`runs_here_if_claimed`) is the policy's one-dependent case."""
    dag = fan_out(3)
    rng = random.Random(7)
    n = len(dag)
    for _ in range(200):
        labels = [rng.choice([None, "a", "b"]) for _ in range(n)]
        memory = [rng.choice([None, 1769, 3008]) for _ in range(n)]
        plan = PlanView.from_columns(dag, labels, memory)
        for t, d in itertools.product(range(n), repeat=2):
            here, _ = continuation(dag, plan, t, [d], 1769, lambda u: False)
            assert runs_here_if_claimed(plan, t, d, 1769) == (here == [d])


@fanflow.task
def blob(n: int) -> bytes:
    return b"x" * n


@fanflow.task
def head(data: bytes) -> int:
    return data[0]


@pytest.mark.parametrize("platform", ["threads", "processes"])
def test_a_large_output_keeps_every_reader_in_its_worker_in_the_loop_and_the_simulator(
    platform: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """From 1 MiB, an output whose readers its worker all claims is never uploaded: they all run there.

    Only with a store out of process (Redis); in memory nothing is uploaded anyway and WUKONG's
    one worker per branch holds. The simulator, told the output's size and the store, agrees.
    """
    size = 2 << 20
    root = blob(size)
    dag = DAG.from_sinks([head(root) for _ in range(3)])
    n = len(dag)
    remote = platform == "processes"
    predicted = simulated_partition(dag, Assignment([1769] * n), remote=remote, out_bytes={0: float(size)})
    assert len(predicted) == (1 if remote else 3)
    store = request.getfixturevalue("redis_url") if remote else "memory://large-output"
    assert loop_partition(dag, loop_config(platform, store, tmp_path)) == predicted


def test_claimed_work_that_reads_inputs_held_here_stays_and_the_rest_goes() -> None:
    """Without labels: the queue keeps the dependents with most inputs in this worker (or its process's
    cache); those with fewest go to the idle slots, where their inputs more likely are."""
    small = source(9)
    dag = DAG.from_sinks([merge(source(i), small) for i in range(4)])
    readers = [t for t in range(len(dag)) if len(dag.deps[t]) == 2]
    (common,) = set.intersection(*(set(dag.deps[r]) for r in readers))
    block = {r: next(u for u in dag.deps[r] if u != common) for r in readers}
    held = {block[readers[1]], block[readers[3]], common}.__contains__  # two of the four blocks are here
    here, groups = continuation(dag, PlanView.from_columns(dag, None), common, readers, 1769, held, free=1)
    assert here == [readers[1], readers[3]] and groups == [[readers[0], readers[2]]]
    here, groups = continuation(dag, PlanView.from_columns(dag, None), common, readers, 1769, held, free=None)
    assert here == [readers[1]] and sorted(groups) == [[r] for r in sorted({*readers} - {readers[1]})]


def test_roots_read_by_one_task_start_next_to_each_other() -> None:
    """Shares of roots are contiguous runs: roots with a common reader are ordered together, so a share keeps them."""
    blocks = [[source(10 * j + i) for i in range(3)] for j in range(2)]
    chunks = [source(100 + j) for j in range(2)]
    products = [merge(b, chunks[j]) for j in range(2) for b in blocks[j]]  # each chunk read with 3 blocks
    dag = DAG.from_sinks([merge(*products)])
    reader_of = {r: set(dag.dependents[r]) for r in dag.roots}
    order = by_shared_readers(dag)
    assert sorted(order) == sorted(dag.roots)
    first, second = order[:4], order[4:]
    for share in (first, second):  # a chunk and its 3 blocks: every product's inputs in one share
        assert len(set.union(*(reader_of[r] for r in share))) == 3
    groups = root_groups(dag, PlanView.from_columns(dag, None), free=2)
    assert [sorted(g) for g in groups] == [sorted(first), sorted(second)]


def test_a_single_root_starts_alone_whatever_the_plan_and_the_free_count() -> None:
    x = source(1)
    dag = DAG.from_sinks([merge(merge(x), x)])  # one root, read twice
    (root,) = dag.roots
    for plan in (PlanView.from_columns(dag, None), PlanView.from_columns(dag, ["w"] * len(dag), [512] * len(dag))):
        for free in (None, 0, 1, 3):
            assert root_groups(dag, plan, free) == [[root]]


def test_labelled_roots_share_the_free_slots_without_splitting_a_label() -> None:
    """A planner labels each root on its own: with a free count, labels are shared among that many workers
    (one worker per label would queue one invocation per root behind a pool's slots)."""
    leaves = [source(i) for i in range(8)]
    dag = DAG.from_sinks([merge(*(merge(leaves[i], leaves[i + 1]) for i in range(0, 8, 2)))])
    roots = dag.roots
    labels: list[str | None] = [None] * len(dag)
    for i, r in enumerate(roots):
        labels[r] = f"w{i // 2 if i < 4 else i}"  # the first four roots in pairs, the others alone
    plan = PlanView.from_columns(dag, labels, [3008] * len(dag))
    assert len(root_groups(dag, plan, None)) == 6  # no count (FaaS): one worker per label
    groups = root_groups(dag, plan, 2)
    assert len(groups) == 2 and sorted(r for g in groups for r in g) == sorted(roots)
    for label in {labels[r] for r in roots}:  # a label's roots are never split
        assert sum(any(labels[r] == label for r in g) for g in groups) == 1
    mixed = PlanView.from_columns(dag, labels, [512 if t == roots[-1] else 3008 for t in range(len(dag))])
    groups = root_groups(dag, mixed, 2)  # per memory size: the 512 MB root starts in a worker of its own
    assert [roots[-1]] in groups and len(groups) == 3


@fanflow.task(memory_mb=512)
def big(x: int) -> int:
    return x


def test_an_unannotated_dag_gets_the_shared_view_of_no_plan() -> None:
    """Two fresh DAGs of one size with no annotations share one read-only view, equal in value to the
    columns of no plan; a task's own memory or an annotation gets a view of its own."""
    first, second = (DAG.from_sinks([merge(grow(source(n)), source(n))]) for n in (1, 2))
    view = plan_of(first, refresh=True)
    assert plan_of(second, refresh=True) is view
    built = PlanView.from_columns(first, None)
    for column in ("labels", "memory_mb", "upload", "preload", "requested_mb"):
        assert list(getattr(view, column)) == list(getattr(built, column))
    assert view.anchored == built.anchored and dict(view.prewarm_s) == dict(built.prewarm_s) == {}
    with pytest.raises(TypeError):
        view.prewarm_s[0] = 1.0  # type: ignore[index]
    sized = DAG.from_sinks([merge(big(source(1)), source(1))])
    assert plan_of(sized, refresh=True) is not view
    assert 512 in plan_of(sized).requested_mb
    noted = DAG.from_sinks([merge(grow(source(1)), source(1))])
    noted.annotations[0] = {"worker": "w"}
    assert plan_of(noted, refresh=True).labels[0] == "w"
