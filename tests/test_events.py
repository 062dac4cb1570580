"""Worker events as rows: read as the dicts they stand for, grouped into the same table as dicts.

A worker buffers its events as tuples under a shared shape (fanflow.store.events)
and the memory store keeps its flushes as they are; every reader still sees dicts,
and recording builds its columns from the rows. These tests hold the two forms to
the same result.
"""

from __future__ import annotations

import gc
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fanflow
from fanflow.metrics.digest import digest
from fanflow.metrics.records import RunRecord
from fanflow.store import keys, open_store
from fanflow.store.events import EventRows, as_dict, pack_rows, shape, unpack_rows
from fanflow.store.metadata import open_metadata
from fanflow.store.metadata.trace import DagArrays, EventLog, EventTable, IntLists, Strings, decode_trace, encode_trace

STARTED = shape("task_started", ("task", "t"))
FINISHED = shape("task_finished", ("exec_s", "in_bytes", "task", "t"))


def _batches(n: int) -> list[EventRows]:
    """``n`` tasks' started and finished rows as workers flush them: a task per flush, two workers."""
    return [
        EventRows([(i, 1.0 + i, STARTED), (0.5 * i, [i, None], i, 1.5 + i, FINISHED)], f"w{i % 2}") for i in range(n)
    ]


def _log(batches: list[Any]) -> EventLog:
    log = EventLog()
    log.add(batches)
    return log


def _dag(n: int) -> DagArrays:
    """``n`` tasks of one function, none with inputs."""
    none = np.zeros(n, dtype=np.int64)
    return DagArrays([("f", "m.f:1")], none, none, np.zeros(0, dtype=np.int64), [], [])


def test_rows_read_as_the_events_they_stand_for() -> None:
    assert shape("task_started", ("task", "t")) == STARTED  # one number per shape
    assert shape("shed", ("task", "t")) != STARTED  # same fields, another kind
    batch = EventRows([*_batches(2)[1].rows, *_batches(4)[3].rows], "w1")
    expected = [
        {"kind": "task_started", "task": 1, "worker": "w1", "t": 2.0},
        {"kind": "task_finished", "exec_s": 0.5, "in_bytes": [1, None], "task": 1, "worker": "w1", "t": 2.5},
        {"kind": "task_started", "task": 3, "worker": "w1", "t": 4.0},
        {"kind": "task_finished", "exec_s": 1.5, "in_bytes": [3, None], "task": 3, "worker": "w1", "t": 4.5},
    ]
    assert list(batch) == expected and len(batch) == 4
    assert batch[1] == expected[1] and batch[-1] == expected[-1] and batch[1:3] == expected[1:3]
    event = {"kind": "prewarmed", "task": 3}
    assert as_dict(event) is event
    assert _log([batch, [event]]).events() == [*expected, event]


def test_the_memory_store_keeps_a_flush_as_rows_and_reads_it_as_dicts() -> None:
    store = open_store("memory://test-events")
    stream = keys.events("run-rows")
    for batch in _batches(3):
        store.append_events(stream, batch, 60)
    store.append_events(stream, [{"kind": "prewarmed", "task": 0, "worker": "client", "t": 0.5}], 60)
    batches, after = store.read_event_batches(stream)
    assert type(batches[0]) is EventRows and len(batches) == 4 and after == "4-0"
    events = [e for _, e in store.read_events(stream)]
    assert events[:6] == [e for b in _batches(3) for e in b] and events[6]["kind"] == "prewarmed"
    assert store.read_event_batches(stream, after) == ([], after)
    store.delete([stream])


def test_packed_rows_unpack_to_the_dicts_they_stand_for_in_their_order() -> None:
    odd = shape("odd", ("value", "mixed", "flag", "task", "t"))
    rows = [
        (0, 0.1 + 0.2, STARTED),  # a float's every bit survives the packing
        (object, 1, True, -1, 1e300, odd),  # no JSON value: written as its repr, as the dicts were
        (0.5, [1, None], 0, float("inf"), FINISHED),
        (None, 2.5, False, 3, 7.0, odd),  # ints and floats in one column stay what they were
        (1, -0.0, STARTED),
    ]
    batch = EventRows(rows, "w7")
    events = unpack_rows(pack_rows(batch))
    assert events == json.loads(json.dumps(list(batch), default=repr))
    assert [type(e["mixed"]) for e in events if e["kind"] == "odd"] == [int, float]
    assert [list(e) for e in events[:2]] == [
        ["kind", "task", "t", "worker"],
        ["kind", "value", "mixed", "flag", "task", "t", "worker"],
    ]
    assert str(events[-1]["t"]) == "-0.0" and events[0]["t"] == 0.1 + 0.2
    assert unpack_rows(pack_rows(EventRows([], "w"))) == []


def _same(a: EventTable, b: EventTable) -> None:
    assert a.events() == b.events()
    assert a.group_of.tolist() == b.group_of.tolist()
    for x, y in zip(a.groups, b.groups, strict=True):
        assert set(x.keys) == set(y.keys) and x.size == y.size
        for key in x.keys:
            assert type(x.columns[key]) is type(y.columns[key]), key
            assert x.values(key) == y.values(key), key


@pytest.mark.parametrize("n", [3, 200])
def test_rows_give_the_table_their_dicts_give(n: int) -> None:
    log = _log(_batches(n))
    from_rows, from_dicts = log.table(), EventTable.of(log.events())
    _same(from_rows, from_dicts)
    assert len(from_rows.groups) == 2 and from_rows.kinds() == {"task_started", "task_finished"}
    assert from_rows.workers() == {"w0", "w1"} if n > 1 else {"w0"}
    assert decode_trace(encode_trace(_dag(n), from_rows)).table.events() == from_dicts.events()
    # rows and dicts of one kind in one stream: a group each, the stream's order kept
    client = {"kind": "task_started", "task": n, "worker": "client", "t": 0.0}
    mixed = _log([*_batches(n), [client]])
    table = mixed.table()
    assert table.events() == [*log.events(), client] == mixed.events()
    assert len(table.of_kind("task_started")) == 2 and table.workers() == {"w0", "w1", "client"}


def test_building_a_large_table_sets_off_no_garbage_collection() -> None:
    """A table of 40k rows makes a handful of container objects, not one per row.

    ``zip(*rows)`` made an iterator per row; counted by the collector, they set
    off full collections of the whole process in every other recording of a
    TR-8192 (about 60 ms each, more than the rest of recording).
    """
    log = _log(_batches(20_000))
    table, collections = _collections_during(log.table)
    assert len(table) == 40_000
    assert len(collections) <= 2, collections  # zip(*rows) set off about 57


def _collections_during(make: Callable[[], EventTable]) -> tuple[EventTable, list[int]]:
    """What ``make()`` returns, and the generation of each garbage collection it set off."""
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        return make(), collections
    finally:
        gc.callbacks.remove(count)


def test_a_recorded_run_has_every_field_its_workers_emitted(tmp_path: Path) -> None:
    @fanflow.task
    def one(x: int) -> int:
        return x + 1

    @fanflow.task
    def two(a: int, b: int) -> int:
        return a + b

    config = fanflow.Config(progress=False, metadata=f"sqlite:///{tmp_path}/m.db")
    future = fanflow.submit(two(one(1), one(2)), config=config)
    assert future.result() == (5,)
    events = open_metadata(config.metadata).load_run(future.run_id).events
    by_kind: dict[str, set[str]] = {}
    for e in events:
        by_kind.setdefault(e["kind"], set()).update(e)
    common = {"kind", "task", "worker", "t"}
    assert by_kind["task_started"] == common
    assert by_kind["task_finished"] == common | {
        "store_s",
        "out_bytes",
        "uploaded",
        "memory_mb",
        "attempt",
        "exec_s",
        "fetch_s",
        "in_bytes",
    }
    assert by_kind["worker_started"] == common | {
        "cold",
        "memory_mb",
        "latency_s",
        "received_at",
        "verify_s",
        "dag_s",
        "begin_s",
    }
    assert by_kind["worker_stopped"] == common | {"tasks"}


def test_string_columns_share_one_table_kept_once_in_the_trace() -> None:
    table = _log(_batches(100)).table()
    started, finished = table.of_kind("task_started")[0], table.of_kind("task_finished")[0]
    a, b = started.columns["worker"], finished.columns["worker"]
    assert isinstance(a, Strings) and isinstance(b, Strings) and a.values is b.values
    assert started.distinct("worker") == {"w0", "w1"} and table.workers() == {"w0", "w1"}
    dag = DagArrays(
        [("f", "m.f:1")],
        np.zeros(100, dtype=np.int64),
        np.zeros(100, dtype=np.int64),
        np.zeros(0, dtype=np.int64),
        [],
        [],
    )
    back = decode_trace(encode_trace(dag, table)).table
    assert back.events() == table.events() and back.workers() == {"w0", "w1"}
    x, y = back.of_kind("task_started")[0].columns["worker"], back.of_kind("task_finished")[0].columns["worker"]
    assert isinstance(x, Strings) and isinstance(y, Strings) and x.values is y.values and len(x.values) == 2
    # a table whose columns index different string tables (one per group) is encoded as well
    other = EventTable.of(_log(_batches(100)).events()[1::2]).groups[0]
    mixed = EventTable([started, other], table.group_of[:200].copy())
    assert decode_trace(encode_trace(dag, mixed)).table.events() == mixed.events()


def test_digest_refuses_a_worker_that_started_twice() -> None:
    start = shape("worker_started", ("cold", "memory_mb", "task", "worker", "t"))
    stop = shape("worker_stopped", ("tasks", "task", "worker", "t"))
    finished = shape("task_finished", ("memory_mb", "exec_s", "out_bytes", "in_bytes", "task", "worker", "t"))
    n = 80
    rows: list[tuple[Any, ...]] = []
    for i in range(n):
        worker = f"w{min(i, n - 2)}"  # the last two workers' ids are one: it started twice
        rows += [(True, 1769, -1, worker, 1.0, start), (1769, 0.1, 8, [], i, worker, 1.1, finished)]
        rows.append((1, -1, worker, 1.2, stop))
    dag = DagArrays(
        [("f", "m.f:1")], np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(0, dtype=np.int64), [], []
    )
    header = RunRecord("r", "s", "f", "succeeded", "none", "threads", "shutdown", 1769, 1.0, 2.0, 1.0)
    assert digest(dag, EventTable.of(rows), header) is None
    unique = [(*r[:3], f"v{i}", *r[4:]) if r[-1] == start else r for i, r in enumerate(rows)]
    assert digest(dag, EventTable.of(unique), header) is not None


def test_a_workers_rows_are_left_alone_by_the_garbage_collector() -> None:
    """A row of plain values and a shape number is untracked at the collector's first pass (a row
    holding an object would be visited by every full collection while the run's events live)."""
    rows = [(i, 1.0 + i, STARTED) for i in range(3)]
    gc.collect()
    assert not any(map(gc.is_tracked, rows))


def test_rows_leave_the_process_as_the_dicts_they_stand_for() -> None:
    batch = _batches(2)[1]
    assert pickle.loads(pickle.dumps(batch)) == list(batch)  # shape numbers mean nothing elsewhere


def test_events_read_back_from_redis_are_grouped_without_an_object_per_event() -> None:
    """The Redis store gives dicts (its JSON): their labels are their kinds, not a tuple per event."""
    batches = [list(b) for b in _batches(20_000)]  # what RedisStore.read_event_batches returns

    def read() -> EventTable:
        log = _log(batches)
        return log.table(log.grouping())

    table, collections = _collections_during(read)
    assert len(table) == 40_000 and table.kinds() == {"task_started", "task_finished"}
    assert len(collections) <= 2, collections


def test_a_dict_whose_kind_is_a_number_is_not_read_as_a_shape() -> None:
    odd = {"kind": STARTED, "task": 9, "worker": "client", "t": 0.5}  # the kind equals a shape's number
    log = _log([_batches(1)[0], [odd]])
    table = log.table(log.grouping())
    assert table.events() == [*list(_batches(1)[0]), odd]
    assert len(table.groups) == 3


@pytest.mark.parametrize(
    ("odd", "kept"),
    [
        (None, "int_lists"),  # sizes and Nones only
        ([-1, None, -5], "int_lists"),  # a -1 and a negative item beside a None
        ([-1, None], "int_lists"),  # a -1 that is not a None
        ([2**70], "json"),  # beyond 64 bits
        ([True], "json"),  # a bool would come back as 1
        ([1.5], "json"),
        ((1, 2), "int_lists"),  # a tuple (as workers write them) among lists
    ],
)
def test_columns_of_int_lists_round_trip(odd: Any, kept: str) -> None:
    values: list[Any] = [[i, None] if i % 3 else [] for i in range(100)]
    if odd is not None:
        values[50] = odd
    events = [{"kind": "task_finished", "task": i, "in_bytes": v} for i, v in enumerate(values)]
    table = EventTable.of(events)
    column = table.groups[0].columns["in_bytes"]
    assert isinstance(column, IntLists) == (kept == "int_lists")
    back = decode_trace(encode_trace(_dag(100), table)).table
    assert back.events() == json.loads(json.dumps(events))  # a tuple comes back a list, as JSON has it
    assert {type(e["in_bytes"]) for e in back.events()} == {list}  # tuples too, as JSON has them
