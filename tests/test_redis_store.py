"""The Redis store against a real ``redis-server``: the Store protocol, exactly-once claims, TTLs."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer
from support import free_port, wait_until

import fanflow
from fanflow.errors import StoreError
from fanflow.store import keys
from fanflow.store import redis as redis_module
from fanflow.store.base import MISSING, Claim
from fanflow.store.codec import Codec
from fanflow.store.events import EventRows, shape
from fanflow.store.redis import LARGE_ARG_BYTES, Packer, RedisStore, connect


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    s = connect(redis_url)
    yield s
    s.close()


@pytest.fixture
def run() -> str:
    return f"test_{uuid.uuid4().hex[:8]}"


def test_values_round_trip_in_one_mget(store: RedisStore, run: str) -> None:
    values = {keys.output(run, 0): {"a": [1, 2.5, None]}, keys.output(run, 1): "text", keys.output(run, 2): None}
    store.put_many({k: store.dumps(v)[0] for k, v in values.items()}, ttl_s=60)
    got, sizes = store.get_many([*values, keys.output(run, 9)])
    assert got == [*values.values(), MISSING]
    assert all(n > 0 for n in sizes[:3]) and sizes[3] == 0


def test_numpy_travels_out_of_band_without_copy() -> None:
    array = np.arange(100_000, dtype=np.float64).reshape(100, 1000)
    codec = Codec(b"secret")
    data = codec.seal("k", codec.encode(array))
    assert len(data) < array.nbytes + 1024  # raw buffer once, not pickled into the stream and copied
    back = codec.decode("k", data)
    assert np.array_equal(back, array)
    assert not back.flags.writeable  # a view into the fetched bytes: read-only, never copied
    assert np.shares_memory(back, np.frombuffer(data, dtype=np.uint8))


def test_a_large_array_goes_to_the_socket_from_the_array_itself() -> None:
    array = np.random.default_rng(0).random((512, 512))
    codec = Codec(b"secret")
    sealed = codec.seal_frames("k", codec.encode(array))
    chunks = Packer().pack("SET", "k", sealed, "EX", 60)
    assert any(isinstance(c, memoryview) and np.shares_memory(np.frombuffer(c, np.uint8), array) for c in chunks)
    assert sum(len(c) for c in chunks) < array.nbytes + 1024  # every byte once: no copy packed with the command
    value = b"".join(sealed.frames)
    resp = b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n$2\r\nEX\r\n$2\r\n60\r\n" % (len(value), value)
    assert b"".join(chunks) == resp


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "f" * 40, 2, "ff:deps:1", "ff:claim:1", 0, 2, "w", 60),  # keys and numbers only
        ("SET", "k", b"v" * 100, "EX", 60),  # a small value
        ("SET", "k", memoryview(b"v" * (LARGE_ARG_BYTES - 1)), "EX", 60),
        ("SET", "k", b"v" * LARGE_ARG_BYTES, "EX", 60),  # from this size sent after its length, not copied
        ("EVALSHA", "f" * 40, 1, "ff:out:1", "w", 1.5, b"v" * LARGE_ARG_BYTES),
    ],
)
def test_the_packer_sends_every_command_as_redis_py_would(args: tuple[object, ...]) -> None:
    expected = b"".join(PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode).pack(*args))
    chunks = Packer().pack(*args)
    assert b"".join(bytes(c) for c in chunks) == expected
    values = [a for a in args if isinstance(a, bytes | memoryview)]
    sent_alone = any(c is a for c in chunks for a in values)  # not copied into the command
    assert sent_alone == any(len(a) >= LARGE_ARG_BYTES for a in values)


@pytest.mark.parametrize("shape", [(3,), (100, 100), (1000, 1000)])
def test_values_of_every_size_round_trip_through_the_packer(store: RedisStore, run: str, shape: tuple[int]) -> None:
    """Small values go through redis-py's packer, large ones as chunks: Redis reads both, alone or in a pipeline."""
    array = np.random.default_rng(1).random(shape)
    claim = Claim(keys.deps(run, 1), keys.claim(run, 1), 0, 2, keys.output(run, 0, 1), store.dumps(array * 2)[0])
    store.put_many({keys.output(run, 0): store.dumps(array)[0]}, ttl_s=60)
    assert store.finish({keys.output(run, 2): store.dumps(array + 1)[0]}, [claim], "w", 60, 5000) == [False]
    (plain, doubled, plus_one), sizes = store.get_many(
        [keys.output(run, 0), keys.output(run, 0, 1), keys.output(run, 2)]
    )
    assert np.array_equal(plain, array) and np.array_equal(doubled, array * 2) and np.array_equal(plus_one, array + 1)
    assert sizes[0] >= array.nbytes


def test_unpicklable_value_raises_serialization_error(store: RedisStore) -> None:
    with pytest.raises(fanflow.SerializationError, match="cannot be pickled"):
        store.dumps(socket.socket())


def test_claim_is_granted_exactly_once(store: RedisStore, run: str) -> None:
    d = 5
    claim = [Claim(keys.deps(run, d), keys.claim(run, d), member, 3) for member in (1, 2, 3)]
    assert store.finish({}, [claim[0]], "w1", 60, 5000) == [False]
    assert store.finish({}, [claim[1]], "w2", 60, 5000) == [False]
    assert store.finish({}, [claim[0]], "w1", 60, 5000) == [False]  # a re-run upstream: no double count
    assert store.finish({}, [claim[2]], "w3", 60, 5000) == [True]
    for c, owner in zip(claim[:2], ("w1", "w2"), strict=True):  # others' re-runs after the claim never re-trigger
        assert store.finish({}, [c], owner, 60, 5000) == [False]
    # The owner (an invocation redelivered after its worker died) re-enters its own claim.
    assert store.finish({}, [claim[2]], "w3", 60, 5000) == [True]
    assert store.client.get(keys.claim(run, d)) == b"w3"
    assert store.client.ttl(keys.claim(run, d)) > 30  # a claim lasts the run, not a lease


def test_finish_writes_outputs_claims_and_publishes_in_one_call(store: RedisStore, run: str) -> None:
    sub = store.subscribe(keys.channel(run))
    try:
        out, _ = store.dumps(42)
        won = store.finish(
            {keys.output(run, 0): out},
            [Claim(keys.deps(run, 1), keys.claim(run, 1), 0, 1), Claim(keys.deps(run, 2), keys.claim(run, 2), 0, 2)],
            "w",
            60,
            5000,
            [(keys.channel(run), b"sink:0")],
        )
        assert won == [True, False]
        assert store.get_many([keys.output(run, 0)])[0] == [42]
        assert sub.get(timeout=2) == b"sink:0"
        assert sub.get(timeout=0.05) is None
    finally:
        sub.close()


def _script_calls(store: RedisStore) -> int:
    stats = store.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_many_plain_claims_go_in_few_script_calls_with_the_verdicts_of_one_call_each(
    store: RedisStore, run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's held notifications (hundreds of plain claims and their small outputs) cost one script call
    per CLAIMS_PER_CALL claims instead of one per claim; what each claim answers and stores is the same."""
    monkeypatch.setattr(redis_module, "CLAIMS_PER_CALL", 3)
    big = np.arange(LARGE_ARG_BYTES, dtype=np.uint8)  # stored by a plain SET beside the scripts

    def notify(run_id: str, batched: bool) -> tuple[list[bool], int]:
        store.batches_claims = batched
        # Task 9 has 3 upstreams, two of them notified here (not complete); task 8's two upstreams are both
        # here (the second completes it); task 7's claim is this owner's already (a redelivery re-enters it).
        store.finish({}, [Claim(keys.deps(run_id, 7), keys.claim(run_id, 7), 0, 1)], "w", 60, 5000)
        puts = {keys.output(run_id, t): store.dumps(t * 10)[0] for t in range(4)}
        puts[keys.output(run_id, 4)] = store.dumps(big)[0]
        claims = [
            Claim(keys.deps(run_id, 9), keys.claim(run_id, 9), 1, 3),
            Claim(keys.deps(run_id, 8), keys.claim(run_id, 8), 2, 2),
            Claim(keys.deps(run_id, 9), keys.claim(run_id, 9), 2, 3),
            Claim(keys.deps(run_id, 8), keys.claim(run_id, 8), 3, 2),
            Claim(keys.deps(run_id, 7), keys.claim(run_id, 7), 0, 1),
            Claim(keys.deps(run_id, 6), keys.claim(run_id, 6), 4, 1),
            Claim(keys.deps(run_id, 5), keys.claim(run_id, 5), 4, 1),
        ]
        calls = _script_calls(store)
        won = store.finish(puts, claims, "w", 60, 5000, [(keys.channel(run_id), b"sink:4")])
        return won, _script_calls(store) - calls

    try:
        one_each, calls_one_each = notify(run, batched=False)
        batched, calls_batched = notify(f"{run}b", batched=True)
    finally:
        store.batches_claims = True
    assert batched == one_each == [False, False, False, True, True, True, True]
    assert (calls_one_each, calls_batched) == (7, 3)  # ceil(7 / CLAIMS_PER_CALL)
    for r in (run, f"{run}b"):
        values, _ = store.get_many([keys.output(r, t) for t in range(5)])
        assert values[:4] == [0, 10, 20, 30] and np.array_equal(values[4], big)
        assert store.client.smembers(keys.deps(r, 9)) == {b"1", b"2"}
        written = list(store.client.scan_iter(match=f"ff:{{{r}:*"))
        assert len(written) == 14  # 5 outputs, 5 dependency sets, the claims of tasks 5-8
        assert all(0 < store.client.pttl(key) <= 60_000 for key in written)


def test_claims_of_other_kinds_keep_their_own_script_calls(store: RedisStore, run: str) -> None:
    """A claim that stores the output unless it wins, or that joins only if it completes its set, is not
    batched: those come one or two per round trip, where a batch saves nothing."""
    calls = _script_calls(store)
    won = store.finish(
        {},
        [
            Claim(keys.deps(run, 5), keys.claim(run, 5), 1, 2, keys.output(run, 1, 5), store.dumps(1)[0]),
            Claim(keys.deps(run, 6), keys.claim(run, 6), 1, 1),
        ],
        "w",
        60,
        5000,
    )
    assert won == [False, True] and _script_calls(store) - calls == 2
    assert store.get_many([keys.output(run, 1, 5)])[0] == [1]


def test_every_key_written_has_a_ttl(store: RedisStore, run: str) -> None:
    ttl = 120
    store.put_many({keys.output(run, 0): store.dumps(1)[0]}, ttl)
    store.finish(
        {keys.output(run, 1): store.dumps(2)[0]}, [Claim(keys.deps(run, 2), keys.claim(run, 2), 1, 1)], "w", ttl, 5000
    )
    store.finish({}, [Claim(keys.deps(run, 3), keys.claim(run, 3), 1, 2)], "w", ttl, 5000)
    store.set_status(keys.status(run), "running", ttl)
    store.fail_run(keys.status(run), keys.errors(run), b"{}", ttl, keys.channel(run))
    store.append_events(keys.events(run), [{"kind": "x"}], ttl)
    store.renew_leases([keys.lease(run, 2)], "w", 9000)
    written = list(store.client.scan_iter(match=f"ff:{{{run}*"))
    assert len(written) == 9
    for key in written:
        assert 0 < store.client.pttl(key) <= ttl * 1000, key
    assert 5000 < store.client.pttl(keys.lease(run, 2)) <= 9000


def test_leases_are_renewed_read_and_ended(store: RedisStore, run: str) -> None:
    lease = [keys.lease(run, t) for t in range(3)]
    store.renew_leases(lease[:2], "inv-a", 200)
    assert store.read_leases(lease) == ["inv-a", "inv-a", None]
    store.end_leases(lease[:1], 60)
    expired = ["done", None, None]  # the unrenewed one expired after its 200 ms
    wait_until(lambda: store.read_leases(lease) == expired, 5, "the unrenewed lease to expire")
    store.take_claim(keys.claim(run, 1), "inv-b", 60)
    assert store.client.get(keys.claim(run, 1)) == b"inv-b"


def test_fail_run_records_error_and_status_then_publishes(store: RedisStore, run: str) -> None:
    sub = store.subscribe(keys.channel(run))
    try:
        store.set_status(keys.status(run), "running", 60)
        store.fail_run(keys.status(run), keys.errors(run), b'{"task": "t"}', 60, keys.channel(run))
        assert sub.get(timeout=2) == b"failed"
    finally:
        sub.close()
    assert store.get_status(keys.status(run)) == "failed"
    assert store.read_list(keys.errors(run)) == [b'{"task": "t"}']


def test_events_are_one_entry_per_batch(store: RedisStore, run: str) -> None:
    stream = keys.events(run)
    store.append_events(stream, [{"kind": "a", "t": 1.5}, {"kind": "b"}], 60)
    store.append_events(stream, [{"kind": "c"}], 60)
    assert store.client.xlen(stream) == 2
    events = store.read_events(stream)
    assert [e["kind"] for _, e in events] == ["a", "b", "c"]
    assert events[0][0] == events[1][0] != events[2][0]
    assert [e["kind"] for _, e in store.read_events(stream, after=events[0][0])] == ["c"]
    assert store.read_events(stream, after=events[2][0]) == []
    assert [e["kind"] for _, e in store.read_events(stream, count=1)] == ["a", "b"]  # whole entries only
    batches, after = store.read_event_batches(stream)
    assert [[e["kind"] for e in b] for b in batches] == [["a", "b"], ["c"]] and after == events[2][0]
    assert store.read_event_batches(stream, after) == ([], after)
    rows = EventRows([(1, 2.5, shape("task_started", ("task", "t")))], "w")
    store.append_events(stream, rows, 60)  # a worker's flush is read as the dicts it stands for
    (batch,), _ = store.read_event_batches(stream, after)
    assert batch == [{"kind": "task_started", "task": 1, "worker": "w", "t": 2.5}]


def test_a_workers_flush_is_one_packed_entry_that_every_read_gives_as_dicts(store: RedisStore, run: str) -> None:
    stream = keys.events(run)
    started, finished = (
        shape("task_started", ("task", "t")),
        shape("task_finished", ("exec_s", "in_bytes", "task", "t")),
    )
    rows = [(0, 1.25, started), (1, 1.5, started), (0.1, [8, None], 0, 1.7, finished), (0.2, [], 1, 1.9, finished)]
    store.append_events(stream, [{"kind": "prewarmed", "task": 0, "worker": "client", "t": 1.0}], 60)
    store.append_events(stream, EventRows(rows, "w1"), 60)
    (_, client), (_, worker) = store.client.xrange(stream)
    assert list(client) == [b"e"] and list(worker) == [b"r"]  # the flush as rows, not a dict per event
    expected = [
        {"kind": "prewarmed", "task": 0, "worker": "client", "t": 1.0},
        *(dict(e) for e in EventRows(rows, "w1")),
    ]
    assert [e for _, e in store.read_events(stream)] == expected
    batches, _ = store.read_event_batches(stream)
    assert [list(b) for b in batches] == [expected[:1], expected[1:]]


def test_an_event_entry_of_another_version_is_an_error_that_names_the_cause(store: RedisStore, run: str) -> None:
    stream = keys.events(run)
    store.client.xadd(stream, {"x": b"{}"})  # a field a later format might use
    with pytest.raises(StoreError, match=r"\(x\).*another fanflow version"):
        store.read_events(stream)
    with pytest.raises(StoreError, match="one version"):
        store.read_event_batches(stream)


def test_delete_exact_keys(store: RedisStore, run: str) -> None:
    store.put_many({keys.output(run, 0): store.dumps(0)[0], keys.output(run, 1): store.dumps(1)[0]}, 60)
    assert store.delete([keys.output(run, 0), keys.output(run, 1), keys.output(run, 2)]) == 2
    assert store.get_many([keys.output(run, 0)])[0] == [MISSING]


def test_the_server_keeps_the_pages_of_deleted_values_for_the_next_ones(store: RedisStore, run: str) -> None:
    """The suite's redis-server starts with SERVER_ENV: the pages of a deleted MB-sized value serve the next
    run's values without page faults (jemalloc's defaults give a value of 8 MB or more back at once: each
    round here faulted ~6,000 pages in again)."""
    info = store.client.info("server")
    if not str(store.client.info("memory").get("mem_allocator", "")).startswith("jemalloc"):
        pytest.skip("this redis-server does not use jemalloc")
    stat = Path(f"/proc/{info['process_id']}/stat")
    if not stat.exists():
        pytest.skip("no /proc to count the server's page faults in")
    stats = store.client.execute_command("MEMORY", "MALLOC-STATS").decode()
    assert "opt.dirty_decay_ms: -1" in stats and "opt.muzzy_decay_ms: -1" in stats
    value = store.dumps(np.ones(2_000_000))[0]  # 16 MB
    faults = []
    for _ in range(3):
        before = int(stat.read_text().rpartition(")")[2].split()[7])  # minflt
        store.put_many({keys.output(run, 0): value}, ttl_s=60)
        faults.append(int(stat.read_text().rpartition(")")[2].split()[7]) - before)
        assert store.delete([keys.output(run, 0)]) == 1
    assert faults[-1] < 16_000_000 // 4096 // 10, faults  # the first round grows the heap; later ones reuse it


def test_scripts_reload_after_flush(store: RedisStore, run: str) -> None:
    store.client.script_flush()
    assert store.finish({}, [Claim(keys.deps(run, 1), keys.claim(run, 1), 0, 1)], "w", 60, 5000) == [True]


def test_closed_port_gives_store_unavailable_with_masked_password() -> None:
    port = free_port()
    url = f"redis://user:hunter2@127.0.0.1:{port}/0"
    with pytest.raises(fanflow.StoreUnavailableError) as info:
        connect(url)
    message = str(info.value)
    assert "hunter2" not in message
    assert f"redis://user:***@127.0.0.1:{port}/0" in message
    assert "redis-server" in message  # says what to do
