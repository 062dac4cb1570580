"""Fan-out no wider than the platform can run: the free-slot count, spreading claimed work, shedding a queue."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import GATEWAY_SECRET, bump, gateway_payload, processes_config, wait_until

import fanflow
from fanflow.client.session import session
from fanflow.dag.graph import DAG
from fanflow.dag.placement import PlanView, shed_units, spread
from fanflow.planning.predict import Predictor
from fanflow.planning.simulate import Assignment, simulate
from fanflow.platforms.http.protocol import BATCH_TYPE, frame, unframe
from fanflow.platforms.processes import ProcessesPlatform
from fanflow.platforms.processes.pool import PoolHost, alive_key
from fanflow.store import open_store
from fanflow.store.metadata import open_metadata
from fanflow.store.redis import RedisStore


@fanflow.task
def inc(x: int) -> int:
    return x + 1


@fanflow.task
def total(values: list[int]) -> int:
    return sum(values)


@fanflow.task
def pause(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


@fanflow.task
def hold_slot(x: int, started: str) -> int:
    """Keep this worker's slot taken until a branch has started (the other worker queued them all)."""
    wait_until(Path(started).exists, 60, "the first branch to start")
    return x


@fanflow.task
def branch(x: int, started: str) -> int:
    """The first one to run ends only once its process sees the held slot idle: the next task boundary
    of its worker finds the rest of the branches queued and a slot free, whatever the machine's speed."""
    from fanflow.platforms.processes import capacity

    if bump(started) == 1:
        wait_until(capacity.free_slots, 60, "the held root's slot to be idle")
    return x


@fanflow.task
def seen_free_slots(x: int) -> int:
    from fanflow.platforms.processes import capacity

    free = capacity.free_slots()
    assert free is not None, "a pool worker process has the pool's shared count"
    return free


# -- the rule --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 10, 33])
@pytest.mark.parametrize("free", [1, 2, 3, 8])
def test_spread_shares_items_evenly_between_this_worker_and_at_most_free_new_ones(n: int, free: int) -> None:
    items = list(range(n))
    kept, groups = spread(items, free)
    assert kept + [i for g in groups for i in g] == items  # nothing lost, order kept, runs contiguous
    assert 1 <= len(groups) <= free and all(groups)
    sizes = [len(kept), *map(len, groups)]
    assert max(sizes) - min(s for s in sizes if s) <= max(1, n // (free + 1))


def test_spread_without_a_count_or_without_room() -> None:
    assert spread([1, 2, 3], None) == ([], [[1], [2], [3]])  # no limit known: one worker per item (WUKONG)
    assert spread([1, 2, 3], 0) == ([1, 2, 3], [])  # nothing idle: this worker keeps them all
    assert spread([], 4) == ([], [])


def test_a_labels_queued_tasks_are_shed_together_and_only_while_none_ran_here() -> None:
    dag = DAG.from_sinks([total([inc(i) for i in range(6)])])  # roots 0..5 (labels below), sink 6
    labels = ["a", "a", "b", "c", None, "d", None]
    plan = PlanView.from_columns(dag, labels)
    queue = [0, 1, 2, 3, 4, 5]

    def units(started: set[str], staying: tuple[int, ...] = ()) -> list[list[int]]:
        return shed_units(plan, queue, lambda t: t, staying.__contains__, started)

    # the head (0, label a) runs here next, so a's other task stays; the others move, a label whole
    assert units(set()) == [[2], [3], [4], [5]]
    assert units({"c"}) == [[2], [4], [5]]  # a task of c ran here: c's queued ones stay with it
    assert units(set(), staying=(4, 5)) == [[2], [3]]  # an unlabelled one stays alone; d stays with its task
    two = [1, 0, 3, 2]  # label b and a both with two queued tasks
    plan2 = PlanView.from_columns(dag, ["a", "b", "b", "a", None, None, None])
    assert shed_units(plan2, two, lambda t: t, lambda t: False, set()) == [[0, 3]]  # b is the head's label
    assert shed_units(plan2, two, lambda t: t, (3,).__contains__, set()) == []  # a task of a stays: a does


def test_the_simulator_spreads_over_a_pools_slots_as_the_loop_does() -> None:
    leaves = [inc(i) for i in range(64)]
    while len(leaves) > 1:
        leaves = [total(leaves[i : i + 2]) for i in range(0, len(leaves), 2)]
    dag = DAG.from_sinks([leaves[0]])
    costs = Predictor(None, "p50", None).costs(dag)
    plan = Assignment([1769] * len(dag), None)
    faas = simulate(dag, costs, plan)  # no cap: one worker per root, as WUKONG
    pool = simulate(dag, costs, plan, max_workers=2)
    assert faas.workers >= 64
    assert pool.workers <= 8  # the roots shared by the 2 slots, shares handed over only as slots free
    assert all(w >= 0 for w in pool.worker)


# -- processes -------------------------------------------------------------------------------------
def _platform(config: fanflow.Config) -> ProcessesPlatform:
    """The session's platform for ``config`` (taken and given back, so no run is counted)."""
    platform = session().acquire(config)
    session().release(config, platform)
    assert isinstance(platform, ProcessesPlatform)
    return platform


def _events(config: fanflow.Config, run_id: str) -> list[dict[str, Any]]:
    return open_metadata(config.metadata).load_run(run_id).events


def test_a_pool_worker_reads_its_pools_free_slots(redis_url: str, tmp_path: Path) -> None:
    config = processes_config(redis_url, tmp_path)
    assert seen_free_slots(0).compute(config) == 1  # 2 slots, one of them running this task


def test_a_tree_runs_on_as_many_workers_as_the_pool_has(redis_url: str, tmp_path: Path) -> None:
    config = processes_config(redis_url, tmp_path)
    leaves = [inc(i) for i in range(64)]
    while len(leaves) > 1:
        leaves = [total(leaves[i : i + 2]) for i in range(0, len(leaves), 2)]
    future = leaves[0].submit(config)
    assert future.result(timeout=120) == sum(range(1, 65))
    started = [e for e in _events(config, future.run_id) if e["kind"] == "worker_started"]
    # One worker per root would be 64 invocations; the client starts one per free slot instead,
    # and a worker hands part of its queue over only when a slot is idle.
    assert 2 <= len(started) <= 12, len(started)


@pytest.mark.parametrize("planner", ["uniform", "critical-path"])
def test_a_planned_tree_runs_on_as_many_workers_as_an_unplanned_one(
    redis_url: str, tmp_path: Path, planner: str
) -> None:
    """A plan labels each root on its own; the client still shares the labels among the free slots."""
    config = processes_config(redis_url, tmp_path, planner=planner, memory_mb=1769)
    leaves = [inc(i) for i in range(64)]
    while len(leaves) > 1:
        leaves = [total(leaves[i : i + 2]) for i in range(0, len(leaves), 2)]
    future = leaves[0].submit(config)
    assert future.result(timeout=120) == sum(range(1, 65))
    events = _events(config, future.run_id)
    started = [e for e in events if e["kind"] == "worker_started"]
    assert 2 <= len(started) <= 12, len(started)  # was 64: one invocation per root label
    assert sorted(e["task"] for e in events if e["kind"] == "task_finished") == list(range(127))  # each once


def test_a_wide_fan_out_goes_to_the_free_slots_only(redis_url: str, tmp_path: Path) -> None:
    config = processes_config(redis_url, tmp_path)
    root = inc(0)
    future = total([inc(root) for _ in range(40)]).submit(config)
    assert future.result(timeout=120) == 40 * 2
    events = _events(config, future.run_id)
    started = [e for e in events if e["kind"] == "worker_started"]
    ran_in = {e["worker"] for e in events if e["kind"] == "task_finished"}
    assert len(started) <= 6, len(started)  # not 40: the root's worker keeps most branches in its queue
    assert len(ran_in) >= 2  # and the other slot took a share


def test_a_worker_sheds_queued_work_when_a_slot_frees(redis_url: str, tmp_path: Path) -> None:
    config = processes_config(redis_url, tmp_path, keep_alive_s=60)
    total([inc(i) for i in range(4)]).compute(config)  # both workers warm
    host = _platform(config).host
    assert host is not None
    # The last worker of that run may still be writing its events: with one slot free the client would
    # start both roots in one worker, and the held root would wait for a branch queued behind it.
    wait_until(lambda: host.free_slots() == 2, 30, "both warm workers to be idle")
    started = str(tmp_path / "branch-started")
    held = hold_slot(0, started)  # the client starts one worker per free slot: this root holds one of them
    fan = inc(0)  # the other claims 6 branches while no slot is idle, so it queues them all
    branches = [branch(fan, started) for _ in range(6)]
    sink = total([held, *branches])
    future = sink.submit(config)
    assert future.result(timeout=120) == 6
    events = _events(config, future.run_id)
    shed = [e for e in events if e["kind"] == "shed"]
    assert shed and shed[0]["items"] >= 1  # the held root's worker ended: part of the queue moved there
    dag = DAG.from_sinks([sink])
    ran = {e["worker"] for e in events if e["kind"] == "task_finished" and dag.name(e["task"]).startswith("branch-")}
    # The queue's worker ran some branches and a worker it started on the freed slot others (it may shed
    # again when that one ends before the queue does: the branches are short).
    assert shed[0]["worker"] in ran and len(ran) >= 2


@contextlib.contextmanager
def _shared_pool(redis_url: str, tmp_path: Path, **settings: Any) -> Iterator[fanflow.Config]:
    """A shared pool of 2 processes, both warm, and a client's config for it (with ``settings``); stopped after."""
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    name = f"shared-{uuid.uuid4().hex[:8]}"
    host = PoolHost(store, name, b"shared-secret", max_workers=2, advertise=True)
    serving = threading.Thread(target=host.serve, daemon=True)
    serving.start()
    try:
        wait_until(lambda: store.client.exists(alive_key(name)), 30, "the shared pool to start")
        config = fanflow.Config(
            platform="processes",
            store=redis_url,
            pool=name,
            secret="shared-secret",
            progress=False,
            metadata=f"sqlite:///{tmp_path / 'meta.db'}",
            **settings,
        )
        total([inc(i) for i in range(4)]).compute(config)  # both processes warm
        yield config
    finally:
        host.stop()
        serving.join(timeout=30)


def test_a_shared_pools_client_starts_the_roots_in_one_worker_that_shares_them(redis_url: str, tmp_path: Path) -> None:
    """A client cannot see a shared pool's idle slots: one worker takes the roots and hands shares to the idle ones."""
    with _shared_pool(redis_url, tmp_path) as config:
        future = total([pause(i, 0.02) for i in range(60)]).submit(config)
        assert future.result(timeout=120) == sum(range(60))
    events = _events(config, future.run_id)
    started = [e for e in events if e["kind"] == "worker_started"]
    assert len(started) <= 6, len(started)  # not 60: one per root cost each task a pool dispatch
    assert [e for e in events if e["kind"] == "shed"]
    assert len({e["worker"] for e in events if e["kind"] == "task_finished"}) >= 2  # both processes ran roots


@pytest.mark.parametrize("planner", ["uniform", "critical-path"])
def test_a_shared_pools_idle_slot_takes_a_share_of_a_planned_trees_roots(
    redis_url: str, tmp_path: Path, planner: str
) -> None:
    """A planner labels each root on its own; the worker holding a shared pool's roots still hands a share
    of them to the idle slot (labelled tasks moved never: one worker ran the whole tree)."""
    with _shared_pool(redis_url, tmp_path, planner=planner, memory_mb=1769) as config:
        leaves = [pause(i, 0.005) for i in range(64)]
        while len(leaves) > 1:
            leaves = [total(leaves[i : i + 2]) for i in range(0, len(leaves), 2)]
        future = leaves[0].submit(config)
        assert future.result(timeout=120) == sum(range(64))
    events = _events(config, future.run_id)
    dag = DAG.from_sinks([leaves[0]])
    assert [e for e in events if e["kind"] == "shed"]
    per_worker: dict[str, int] = {}
    for e in events:
        if e["kind"] == "task_finished" and not dag.deps[e["task"]]:
            per_worker[e["worker"]] = per_worker.get(e["worker"], 0) + 1
    assert sum(per_worker.values()) == 64
    assert len(per_worker) >= 2 and max(per_worker.values()) <= 48, per_worker  # was {one worker: 64}


# -- http --------------------------------------------------------------------------------------------


def test_framing_round_trips_and_rejects_truncated_bodies() -> None:
    payloads = [b"a", b"", b"x" * 1000]
    assert unframe(frame(payloads)) == payloads
    assert unframe(frame(payloads)[:-1]) is None
    assert unframe(b"\x05\x00") is None


def test_a_gateway_takes_a_batch_in_one_request(gateway_urls: list[str], redis_url: str) -> None:
    url = gateway_urls[0]
    before = httpx.get(f"{url}/healthz").json()
    assert isinstance(before["free"], int) and before["free"] >= 0
    body = frame([gateway_payload(redis_url) for _ in range(3)])
    reply = httpx.post(f"{url}/invoke", content=body, headers={"content-type": BATCH_TYPE})
    assert reply.status_code == 202 and reply.json()["accepted"] == 3 and "free" in reply.json()
    assert httpx.get(f"{url}/healthz").json()["accepted"] == before["accepted"] + 3


def test_a_batch_with_one_forged_payload_queues_nothing(gateway_urls: list[str], redis_url: str) -> None:
    url = gateway_urls[0]
    before = httpx.get(f"{url}/healthz").json()["accepted"]
    body = frame([gateway_payload(redis_url), gateway_payload(redis_url, "another-secret")])
    assert httpx.post(f"{url}/invoke", content=body, headers={"content-type": BATCH_TYPE}).status_code == 403
    bad = httpx.post(f"{url}/invoke", content=b"\x09\x00\x00\x00abc", headers={"content-type": BATCH_TYPE})
    assert bad.status_code == 400
    assert httpx.get(f"{url}/healthz").json()["accepted"] == before


def test_http_fans_out_to_the_gateways_free_slots(gateway_urls: list[str], redis_url: str) -> None:
    config = fanflow.Config(
        platform="http",
        store=redis_url,
        endpoints=",".join(gateway_urls),
        secret=GATEWAY_SECRET,
        progress=False,
        metadata="none",
    )
    before = sum(httpx.get(f"{u}/healthz").json()["accepted"] for u in gateway_urls)
    root = inc(0)
    assert total([pause(root, 0.2) for _ in range(20)]).compute(config) == 20
    accepted = sum(httpx.get(f"{u}/healthz").json()["accepted"] for u in gateway_urls) - before
    assert 2 <= accepted <= 10, accepted  # the root, and shares of the fan-out as slots free, not 21 invocations
