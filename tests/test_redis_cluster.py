"""The Redis Cluster store on a real 3-master cluster: slots, scripts, cleanup, a run's spread.

The DAG-shape suite runs on the cluster through ``run_config`` (see conftest);
these tests check what is specific to a cluster.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from support import inc

import fanflow
from fanflow.store import keys, open_store
from fanflow.store.base import MISSING, Claim
from fanflow.store.redis_cluster import RedisClusterStore, connect


@fanflow.task
def total(values: list[int]) -> int:
    return sum(values)


@pytest.fixture
def store(redis_cluster_url: str) -> RedisClusterStore:
    opened = open_store(redis_cluster_url)
    assert isinstance(opened, RedisClusterStore)
    return opened


@pytest.fixture
def masters(redis_cluster_url: str) -> Iterator[list[redis.Redis]]:
    port = int(redis_cluster_url.rsplit(":", 1)[1])
    nodes = redis.Redis(port=port).cluster("nodes")
    clients = [redis.Redis(host=a.split(":")[0], port=int(a.split(":")[1].split("@")[0])) for a in nodes]
    yield clients
    for c in clients:
        c.close()


def test_outputs_of_a_run_spread_over_every_master(store: RedisClusterStore, masters: list[redis.Redis]) -> None:
    run = f"spread-{uuid.uuid4().hex[:8]}"
    names = [keys.output(run, t) for t in range(300)]
    before = [m.dbsize() for m in masters]
    store.put_many({k: store.dumps(i)[0] for i, k in enumerate(names)}, ttl_s=60)
    slots = {store.client.keyslot(k) for k in names}
    # One slot per task's hash tag, mostly distinct (not one for the run). CRC16 is linear, so for some run
    # ids the tags fall into slots in groups: 210-300 distinct slots over 2,000 random ids (>250 failed 1%).
    assert len(slots) > 150
    per_master = [m.dbsize() - b for m, b in zip(masters, before, strict=True)]
    assert len(per_master) == 3 and all(n > 50 for n in per_master), per_master
    values, sizes = store.get_many([*names, keys.output(run, 999)])  # one MGET per slot, one pipeline
    assert values[:-1] == list(range(300)) and values[-1] is MISSING and sizes[-1] == 0
    assert store.delete([*names, keys.output(run, 999)]) == 300
    assert store.get_many(names)[0] == [MISSING] * 300


def test_large_values_round_trip_over_the_cluster(store: RedisClusterStore) -> None:
    """Arrays of MBs go to each master as chunks from the array (see ``Packer``), in a pipeline and alone."""
    run = f"large-{uuid.uuid4().hex[:8]}"
    arrays = {keys.output(run, t): np.full((500, 500), float(t)) for t in range(4)}
    store.put_many({k: store.dumps(a)[0] for k, a in arrays.items()}, ttl_s=60)
    claim = Claim(keys.deps(run, 9), keys.claim(run, 9), 4, 2, keys.output(run, 4, 9), store.dumps(arrays)[0])
    assert store.finish({}, [claim], "w", 60, 1000) == [False]
    values, _ = store.get_many([*arrays, keys.output(run, 4, 9)])
    assert all(np.array_equal(v, a) for v, a in zip(values, arrays.values(), strict=False))
    assert values[-1].keys() == arrays.keys()


def test_claim_script_stays_in_one_slot_and_is_exactly_once(store: RedisClusterStore) -> None:
    run = f"claim-{uuid.uuid4().hex[:8]}"
    task = 7
    assert store.client.keyslot(keys.deps(run, task)) == store.client.keyslot(keys.claim(run, task))
    claims = [Claim(keys.deps(run, task), keys.claim(run, task), member, 3) for member in (1, 2)]
    assert store.finish({keys.output(run, 1): store.dumps(1)[0]}, claims, "w1", 60, 1000) == [False, False]
    last = [Claim(keys.deps(run, task), keys.claim(run, task), 3, 3)]
    assert store.finish({}, last, "w2", 60, 1000) == [True]
    assert store.finish({}, last, "w3", 60, 1000) == [False]  # a re-run upstream never triggers twice


def test_a_pipelined_claim_is_one_command_on_its_own_master(
    store: RedisClusterStore, masters: list[redis.Redis]
) -> None:
    """No ``COMMAND GETKEYS`` round trip to the default node per script call (a hot spot and a second trip)."""
    run = f"route-{uuid.uuid4().hex[:8]}"
    for m in masters:
        m.config_resetstat()
    claims = [Claim(keys.deps(run, d), keys.claim(run, d), 0, 1) for d in range(1, 31)]
    assert store.finish({keys.output(run, 0): store.dumps(0)[0]}, claims, "w", 60, 1000) == [True] * 30
    stats = [m.info("commandstats") for m in masters]
    assert not [s for s in stats if "cmdstat_command|getkeys" in s]
    evals = [int(s.get("cmdstat_evalsha", {"calls": 0})["calls"]) for s in stats]
    assert sum(evals) == 30 and all(n > 0 for n in evals)  # each claim ran once, on the master of its slot


def test_a_shared_output_is_stored_before_a_claim_on_another_master_tells_of_it(
    store: RedisClusterStore,
) -> None:
    """One pipeline's commands to two masters run in no set order: the claim must wait for the output.

    The output's master holds its writes (``CLIENT PAUSE WRITE``) while the finish
    runs: the claim, on another master, must not be there before the output is.
    """
    run = f"order-{uuid.uuid4().hex[:8]}"
    out = keys.output(run, 0)
    out_node = store.client.get_node_from_key(out)
    reader = next(d for d in range(1, 200) if store.client.get_node_from_key(keys.deps(run, d)).port != out_node.port)
    deps_node = store.client.get_node_from_key(keys.deps(run, reader))
    claim = Claim(keys.deps(run, reader), keys.claim(run, reader), 0, 2)  # not the last input: nobody wins yet
    held, other = redis.Redis(port=out_node.port), redis.Redis(port=deps_node.port)
    held.client_pause(1500, all=False)
    finish = threading.Thread(target=store.finish, args=({out: store.dumps(41)[0]}, [claim], "w", 60, 1000))
    finish.start()
    time.sleep(0.5)  # the claim's master is free all along: an unordered pipeline ran the claim by now
    assert not other.exists(keys.deps(run, reader)), "the claim was recorded before its input was stored"
    finish.join(timeout=10)
    assert not finish.is_alive()
    assert other.exists(keys.deps(run, reader))
    assert store.get_many([out])[0] == [41]


def test_scripts_come_back_after_a_master_flushes_them(store: RedisClusterStore, masters: list[redis.Redis]) -> None:
    for m in masters:
        m.script_flush()
    run = f"noscript-{uuid.uuid4().hex[:8]}"
    claim = Claim(keys.deps(run, 1), keys.claim(run, 1), 0, 1)
    assert store.finish({}, [claim], "w", 60, 1000) == [True]


def test_a_run_writes_on_every_master(redis_cluster_url: str, masters: list[redis.Redis]) -> None:
    for m in masters:
        m.config_resetstat()
    config = fanflow.Config(
        platform="processes", store=redis_cluster_url, max_workers=2, progress=False, metadata="none"
    )
    # 100 independent branches: each branch's keys share its own hash tag, so branches spread over the slots
    assert fanflow.compute(*[inc(inc(i)) for i in range(100)], config=config) == tuple(range(2, 102))
    writes = [int(m.info("commandstats").get("cmdstat_set", {}).get("calls", 0)) for m in masters]
    assert all(n > 20 for n in writes), writes


def test_bad_cluster_urls_say_what_to_use() -> None:
    with pytest.raises(fanflow.StoreUnavailableError, match="only database 0"):
        connect("redis+cluster://127.0.0.1:7000/3")
    with pytest.raises(fanflow.StoreUnavailableError, match="cannot reach"):
        connect("redis+cluster://127.0.0.1:1")
