"""The data path at real sizes: large outputs stay with the worker that made them when it can run the dependent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

import fanflow
from fanflow.dag.graph import DAG
from fanflow.store import keys, open_store
from fanflow.store.base import MISSING, RUNNING, Claim, Store
from fanflow.store.metadata import drain, open_metadata
from fanflow.worker import drop_ended_runs
from fanflow.worker.values import RUNS, ValueCache
from fanflow.worker.values import values as process_values


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return open_store(f"memory://data-path-{uuid.uuid4().hex[:6]}")
    return open_store(request.getfixturevalue("redis_cluster_url" if request.param == "cluster" else "redis_url"))


def test_a_claim_only_if_last_joins_only_when_it_completes_the_set(store: Store) -> None:
    run, d = f"last-{uuid.uuid4().hex[:8]}", 4

    def claim(member: int, only_if_last: bool) -> Claim:
        return Claim(keys.deps(run, d), keys.claim(run, d), member, 3, only_if_last=only_if_last)

    assert store.finish({}, [claim(1, True)], "w1", 60, 1000) == [False]  # not last: nothing changed
    assert store.finish({}, [claim(2, False)], "w2", 60, 1000) == [False]
    assert store.finish({}, [claim(1, True)], "w1", 60, 1000) == [False]  # still not last: 1 never joined
    assert store.finish({}, [claim(1, False)], "w1", 60, 1000) == [False]  # stores, then notifies as usual
    assert store.finish({}, [claim(3, True)], "w3", 60, 1000) == [True]  # completes the set: claimed
    assert store.finish({}, [claim(3, True)], "w3", 60, 1000) == [True]  # its owner re-enters
    assert store.finish({}, [claim(1, True)], "w1", 60, 1000) == [False]  # a re-run never triggers twice


def test_a_claim_only_if_last_of_a_single_input_task_is_won_at_once(store: Store) -> None:
    run = f"single-{uuid.uuid4().hex[:8]}"
    c = Claim(keys.deps(run, 1), keys.claim(run, 1), 0, 1, only_if_last=True)
    assert store.finish({}, [c], "w1", 60, 1000) == [True]
    assert store.finish({}, [c._replace(only_if_last=False)], "w2", 60, 1000) == [False]


def test_a_wide_fan_in_is_claimed_once_by_its_last_member_however_often_members_report(store: Store) -> None:
    """40 inputs (the memory store keeps a set this wide, a tuple for a few): each reports twice, the claim
    goes to the one that completes the set, its owner re-enters it, and nobody else ever wins it."""
    run, d, n = f"wide-{uuid.uuid4().hex[:8]}", 99, 40

    def claim(member: int) -> Claim:
        return Claim(keys.deps(run, d), keys.claim(run, d), member, n)

    for member in range(n - 1):
        assert store.finish({}, [claim(member)], f"w{member}", 60, 1000) == [False]
        assert store.finish({}, [claim(member)], f"w{member}", 60, 1000) == [False]  # counted once
    assert store.finish({}, [claim(n - 1)], "last", 60, 1000) == [True]
    assert store.finish({}, [claim(n - 1)], "last", 60, 1000) == [True]  # its owner re-enters
    assert store.finish({}, [claim(0)], "w0", 60, 1000) == [False]
    assert store.read_leases([keys.claim(run, d)]) == ["last"]


def test_a_runs_entries_in_the_memory_store_are_not_tracked_by_the_garbage_collector() -> None:
    """Outputs that are numbers or strings, small fan-in sets and claims: 5,000 tasks' worth adds no object
    the collector tracks (each of those would bring its next full collection nearer; they were 10,000)."""
    import gc

    store = open_store(f"memory://untracked-{uuid.uuid4().hex[:6]}")
    run = "untracked"
    gc.collect()
    before = len(gc.get_objects())
    for t in range(5_000):
        d = 5_000 + t // 2
        value = t if t % 2 else f"out-{t}"
        puts = {keys.output(run, t): store.dumps(value)[0]}
        store.finish(puts, [Claim(keys.deps(run, d), keys.claim(run, d), t, 2)], f"w{t}", 60, 1000)
    gc.collect()
    tracked = len(gc.get_objects()) - before
    assert tracked < 100
    values, sizes = store.get_many([keys.output(run, 2), keys.output(run, 3)])
    assert values == ["out-2", 3] and sizes[0] == len("out-2") and sizes[1] > 0
    assert store.read_leases([keys.claim(run, 5_000 + t) for t in range(3)]) == ["w1", "w3", "w5"]


_TREE_GC = """
import gc, sys
sys.path.insert(0, sys.argv[1])
import fanflow
from tree_reduction import add, build_tree, inc

finc, fadd = fanflow.task(inc), fanflow.task(add)
config = fanflow.Config(progress=False, metadata="none")
for _ in range(2):  # warm: the platform's threads, which see such a tree run best on one thread
    build_tree(8192, finc, fadd).compute(config)
sink = build_tree(8192, finc, fadd)
full = []
gc.collect()
gc.callbacks.append(lambda phase, info: full.append(phase) if phase == "start" and info["generation"] == 2 else None)
sink.compute(config)
print(len(full))
"""


def test_a_16k_task_tree_on_the_embedded_default_runs_no_full_garbage_collection() -> None:
    """CPython runs a full collection once the objects its young passes promoted reach a quarter of the
    long-lived ones; a tree of 8,192 leaves promoted more than that (the DAG's per-task lists of
    dependents, the event rows holding a list of input sizes, the memory store's entries), so every
    compute() of it paid one full collection, 25-35 ms of its ~0.25 s. In a fresh interpreter: none."""
    benchmarks = str(Path(__file__).resolve().parent.parent / "benchmarks")
    out = subprocess.run(
        [sys.executable, "-c", _TREE_GC, benchmarks], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.split()[-1] == "0", out.stdout + out.stderr


def test_the_value_cache_keeps_a_share_of_memory_least_recently_used_out_first() -> None:
    cache = ValueCache()
    mb = 2**20
    budget_mb = 128  # a 512 MB worker keeps at most a quarter
    for t in range(4):
        cache.put("run", t, f"v{t}", 40 * mb, 512)
    assert cache.bytes <= budget_mb * mb and len(cache) == 3  # 4 x 40 MB > 128 MB: the oldest went
    assert cache.get("run", 0) is MISSING and cache.get("run", 1) == "v1"  # 1 is now the most recent
    cache.put("run", 9, "v9", 40 * mb, 512)
    assert cache.get("run", 2) is MISSING and cache.get("run", 1) == "v1"
    cache.put("run", 10, "huge", 200 * mb, 512)  # larger than the whole share: not kept, nothing evicted
    assert cache.get("run", 10) is MISSING and len(cache) == 3


def test_the_value_cache_keeps_the_last_runs_only() -> None:
    cache = ValueCache()
    for r in range(RUNS + 1):
        cache.put(f"run{r}", 0, r, 10, 1024)
    assert cache.get("run0", 0) is MISSING
    assert [cache.get(f"run{r}", 0) for r in range(1, RUNS + 1)] == list(range(1, RUNS + 1))
    assert cache.bytes == 10 * RUNS


def test_a_new_run_in_a_process_drops_the_values_of_runs_that_ended() -> None:
    """A plan run again kept the previous run's values through the next run, so a fresh worker's heap
    grew over its first two runs (gemm 2000/500: 32,000-36,000 page faults in the first warm run)."""
    store = open_store(f"memory://ended-{uuid.uuid4().hex[:6]}")
    reads: list[str] = []
    get_status = store.get_status

    def counted(key: str) -> str | None:
        reads.append(key)
        return get_status(key)

    store.get_status = counted  # type: ignore[method-assign]
    store.set_status(keys.status("ended"), "succeeded", 60)
    store.set_status(keys.status("live"), RUNNING, 60)
    process_values.clear()
    try:
        process_values.put("ended", 0, "old", 10, 1024)
        process_values.put("live", 0, "shared", 10, 1024)
        drop_ended_runs("next", store)
        assert process_values.runs() == ["live"]  # a run still running keeps its values
        assert process_values.get("ended", 0) is MISSING and process_values.bytes == 10
        process_values.put("next", 0, "new", 10, 1024)
        reads.clear()
        drop_ended_runs("next", store)  # not the run's first invocation here: nothing read
        assert reads == [] and process_values.runs() == ["live", "next"]
    finally:
        process_values.clear()


# -- the worker loop on the processes platform ------------------------------------------------------
BIG = 4 * 2**20
"""Bytes of a large output: far above the size from which a worker claims before it uploads."""


@fanflow.task
def big(seed: int) -> np.ndarray:
    return np.full(BIG // 8, float(seed))


@fanflow.task
def first(x: np.ndarray) -> float:
    return float(x[0])


@fanflow.task
def pick(x: np.ndarray, i: int) -> float:
    return float(x[i]) + i


@fanflow.task
def later(seconds: float, x: float) -> float:
    time.sleep(seconds)
    return x


@fanflow.task
def big_then_mark(seed: int, marker: str) -> np.ndarray:
    value = np.full(BIG // 8, float(seed))
    Path(marker).write_text("made")
    return value


@fanflow.task
def after_file(marker: str, seconds: float, x: float) -> float:
    """``x``, once ``marker`` exists and ``seconds`` more have passed (time for its maker to notify)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(seconds)
    return x


@fanflow.task
def both(x: np.ndarray, y: float) -> float:
    return float(x[0]) + y


@fanflow.task
def added(values: list[float]) -> float:
    return float(sum(values))


@fanflow.task
def counted_sum(url: str, counter: str, values: list[float]) -> float:
    redis.Redis.from_url(url).incr(counter)
    return float(sum(values))


@fanflow.task
def dies_once_with(marker: str, x: np.ndarray) -> float:
    """SIGKILLs its worker process the first time, as an OOM kill would: the large input was never uploaded."""
    if not os.path.exists(marker):
        Path(marker).write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return float(x[-1])


@pytest.fixture
def processes(redis_url: str, tmp_path: Path) -> fanflow.Config:
    meta = f"sqlite:///{tmp_path / 'meta.db'}"
    return fanflow.Config(platform="processes", store=redis_url, max_workers=2, progress=False, metadata=meta)


def _events(config: fanflow.Config, run_id: str) -> list[dict[str, Any]]:
    drain()
    return open_metadata(config.metadata).load_run(run_id).events


def _finished(events: list[dict[str, Any]], sink: fanflow.Node, name: str) -> list[dict[str, Any]]:
    """The ``task_finished`` events of the tasks named ``name`` in ``sink``'s DAG."""
    dag = DAG.from_sinks([sink])
    ids = {t for t in range(len(dag)) if dag.name(t).startswith(name)}
    return [e for e in events if e["kind"] == "task_finished" and e["task"] in ids]


def _uploaded(events: list[dict[str, Any]], sink: fanflow.Node) -> bool:
    (done,) = _finished(events, sink, "big")  # big or big_then_mark
    return bool(done["uploaded"])


def test_a_large_output_whose_reader_runs_in_its_worker_never_reaches_the_store(
    processes: fanflow.Config, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    first(big(3)).compute(processes)  # a warm pool: its start is not measured below
    received = client.info("stats")["total_net_input_bytes"]
    sink = first(big(7))
    future = sink.submit(processes)
    assert future.result(timeout=60) == 7.0
    assert client.info("stats")["total_net_input_bytes"] - received < BIG // 4  # not even in a claim script
    assert not _uploaded(_events(processes, future.run_id), sink)


def test_a_large_output_not_last_is_stored_before_its_reader_can_be_claimed(
    processes: fanflow.Config, tmp_path: Path
) -> None:
    marker = str(tmp_path / "made")
    sink = both(big_then_mark(2, marker), after_file(marker, 0.5, 1.0))  # the large input finishes first
    future = sink.submit(processes)
    assert future.result(timeout=60) == 3.0
    assert _uploaded(_events(processes, future.run_id), sink)


PURE_BIG = 8 * BIG
"""A pure root's output is remade where read when made faster than it moves (100 MB/s): 32 MB within 0.32 s."""


@fanflow.task(pure=True)
def pure_big(seed: int) -> np.ndarray:
    """PURE_BIG bytes made in microseconds (a view of one value; the bytes appear when it is serialized): with
    np.full's 10-20 ms, a loaded machine's stalls could stretch the making past 0.32 s, and then it is stored."""
    return np.broadcast_to(np.float64(seed), (PURE_BIG // 8,))


def test_a_large_output_of_a_cheap_pure_root_is_made_again_where_it_is_read_instead_of_stored(
    processes: fanflow.Config, redis_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    marker.write_text("")
    x = pure_big(6)
    # x finishes first; the second reader is claimed by the worker of ``after_file``, which may be another.
    sink = added([first(x), both(x, after_file(str(marker), 0.3, 1.0))])
    client = redis.Redis.from_url(redis_url)
    added([first(pure_big(1)), later(0.0, 1.0)]).compute(processes)  # a warm pool: its start is not measured below
    received = client.info("stats")["total_net_input_bytes"]
    future = sink.submit(processes)
    assert future.result(timeout=60) == 6.0 + 7.0
    events = _events(processes, future.run_id)
    (made,) = _finished(events, sink, "pure_big")
    assert not made["uploaded"] and made["out_bytes"] >= PURE_BIG, made
    assert client.info("stats")["total_net_input_bytes"] - received < PURE_BIG // 4  # neither made nor remade went up
    recomputed = [e for e in events if e["kind"] == "recomputed"]
    assert all(e["task"] == made["task"] for e in recomputed) and len(recomputed) <= 1  # by the one other reader


def test_a_large_output_read_by_several_tasks_of_its_worker_stays_there(processes: fanflow.Config) -> None:
    x = big(5)
    sink = added([pick(x, i) for i in range(4)])
    future = sink.submit(processes)
    assert future.result(timeout=60) == 4 * 5.0 + 6
    events = _events(processes, future.run_id)
    assert not _uploaded(events, sink)
    pickers = {e["worker"] for e in _finished(events, sink, "pick")}
    (maker,) = {e["worker"] for e in _finished(events, sink, "big")}
    assert pickers == {maker}


def test_a_lost_worker_whose_large_output_was_never_uploaded_is_recovered_exactly_once(
    processes: fanflow.Config, redis_url: str, tmp_path: Path
) -> None:
    counter = f"count-{uuid.uuid4().hex[:8]}"
    marker = str(tmp_path / "killed")
    x = big(9)
    sink = counted_sum(redis_url, counter, [dies_once_with(marker, x), first(x), later(0.2, 1.0)])
    assert sink.compute(processes) == 19.0
    assert Path(marker).exists()
    assert int(redis.Redis.from_url(redis_url).get(counter) or 0) == 1  # the fan-in ran once


def test_a_warm_worker_fetches_a_large_input_once_for_all_its_readers(processes: fanflow.Config) -> None:
    x = big(4)
    readers = [both(x, later(0.05, float(i))) for i in range(8)]
    sink = added(readers)
    future = sink.submit(processes)
    assert future.result(timeout=60) == 8 * 4.0 + sum(range(8))
    finished = _finished(_events(processes, future.run_id), sink, "both")
    assert len(finished) == 8
    fetched = sum(e["in_bytes"][0] or 0 for e in finished)  # None: the value was in the worker already
    assert fetched <= 2 * BIG + 2**16  # at most once per worker process, not once per reader


@fanflow.task
def short(i: int, marker: str = "") -> float:
    """Sleeps 5 ms; with ``marker``, SIGKILLs its worker process the first time, when that worker has run
    (and holds the notifications of) others of these before it."""
    time.sleep(0.005)
    if marker and not os.path.exists(marker):
        Path(marker).write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return float(i)


def test_a_busy_worker_sends_the_notifications_of_short_tasks_together(processes: fanflow.Config) -> None:
    added([short(i) for i in range(4)]).compute(processes)  # both workers warm: no slot idle during the run
    sink = added([short(i) for i in range(120)])
    future = sink.submit(processes)
    assert future.result(timeout=60) == float(sum(range(120)))
    finished = _finished(_events(processes, future.run_id), sink, "short")
    assert len(finished) == 120
    # A held notification is sent later, with the next ones: its task reports its share of that round trip.
    held = [e for e in finished if e.get("held")]
    assert len(held) >= 60, len(held)
    assert all(e["store_s"] > 0 for e in held)
    batches = Counter(e["store_s"] for e in held)  # one share per round trip, the same for each task it notified
    assert max(batches.values()) >= 2, batches


def test_a_worker_lost_while_it_holds_notifications_is_recovered_exactly_once(
    processes: fanflow.Config, redis_url: str, tmp_path: Path
) -> None:
    added([short(i) for i in range(4)]).compute(processes)
    counter = f"count-{uuid.uuid4().hex[:8]}"
    marker = str(tmp_path / "killed")
    parts = [short(i, marker if i == 15 else "") for i in range(60)]  # mid-queue in its worker
    sink = counted_sum(redis_url, counter, parts)
    assert sink.compute(processes) == float(sum(range(60)))
    assert Path(marker).exists()
    assert int(redis.Redis.from_url(redis_url).get(counter) or 0) == 1  # the fan-in ran once


def test_the_memory_store_sizes_values_shallowly_as_pandas_and_numpy_count_them() -> None:
    """Sizes are O(1) per value: a frame's column buffers and index (as ``memory_usage(deep=False)``), nbytes."""
    pd = pytest.importorskip("pandas")
    from fanflow.store.memory import sizeof

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"k": rng.integers(0, 9, 300), "x": rng.random(300), "s": rng.choice(["a", "bb"], 300)})
    frames = [
        frame,
        frame.iloc[::3],
        frame.set_index("s"),
        frame[["x"]],
        pd.concat([frame, frame]),
        frame.astype({"s": "category"}),
        pd.DataFrame(),
    ]
    for f in frames:
        assert sizeof(f) == int(f.memory_usage(index=True, deep=False).sum())
    assert sizeof(frame.x) == frame.x.nbytes and sizeof(frame.x.to_numpy()) == 2400
    assert sizeof(b"abc") == 3 and sizeof("abcd") == 4

    class Groups(dict):  # like Dask's shuffle groups, whose __sizeof__ measures every frame deeply
        def __sizeof__(self) -> int:
            raise AssertionError("a deep walk")

    groups = Groups({0: frame, 1: frame.iloc[:10]})
    assert sizeof(groups) == dict.__sizeof__(groups) + sizeof(frame) + sizeof(frame.iloc[:10])

    looked_up: list[str] = []

    class Looking(pd.DataFrame):  # a frame's missing attributes are column lookups (4-5 us each)
        def __getattr__(self, name: str) -> object:
            looked_up.append(name)
            return super().__getattr__(name)

    assert sizeof(Looking(frame)) == sizeof(frame) and looked_up == []
