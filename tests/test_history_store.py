"""History's own guarantees: compact runs, retention on save, a file that shrinks, old files read, traces.

What every metadata store guarantees is tested in test_metrics.py; this file holds
what only the embedded SQLite store promises (see its module docstring), the trace
codec, and that recording's column-wise totals and summaries equal the records'.
"""

from __future__ import annotations

import json
import marshal
import random
import sqlite3
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fanflow
from fanflow.metrics import RunMetrics, summaries_of, task_records
from fanflow.metrics.digest import digest, digest_events
from fanflow.metrics.graph import Graph
from fanflow.metrics.records import RunRecord
from fanflow.store.metadata import MetadataError, StoredRun, drain, open_metadata
from fanflow.store.metadata.base import Summary, gc_every
from fanflow.store.metadata.raw import BATCH_MAGIC, batch_run_ids
from fanflow.store.metadata.sqlite import SCHEMA_VERSION, SQLiteMetadataStore
from fanflow.store.metadata.trace import DagArrays, EventTable, decode_trace, encode_trace


@fanflow.task
def leaf(i: int) -> int:
    return i + 1


@fanflow.task
def pair(a: int, b: int) -> int:
    return a + b


def tree(n: int) -> fanflow.Node:
    level = [leaf(i) for i in range(n)]
    while len(level) > 1:
        level = [pair(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _kept(db: sqlite3.Connection) -> int:
    """Runs kept in the file: in ``runs``, and tiny ones waiting raw in ``raw_batches`` until the store is read."""
    query = "SELECT (SELECT count(*) FROM runs) + (SELECT coalesce(sum(runs), 0) FROM raw_batches)"
    found: int = db.execute(query).fetchone()[0]
    return found


def _file_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


def test_runs_are_stored_compactly_and_retention_keeps_the_file_bounded(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}", retention_runs=2)
    tree(512).compute(config)
    drain()
    raw = sqlite3.connect(db)  # another connection sees the run once drain() returned
    assert raw.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    # 1,023 tasks: one run row and one index row per function, nothing per task or worker
    assert raw.execute("SELECT count(*) FROM run_functions").fetchone() == (2,)
    for table in ("tasks", "task_groups", "workers", "worker_docs"):
        assert raw.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    (stored,) = raw.execute("SELECT sum(length(doc) + length(events)) FROM runs").fetchone()
    # schema 1 took 1.1 KB per task, schema 2 about 250 bytes
    assert stored < 1023 * 80, f"{stored} bytes for one run of 1,023 tasks"
    one_run = _file_bytes(db)

    for _ in range(6):
        tree(512).compute(config)
    drain()
    assert raw.execute("SELECT count(*) FROM runs").fetchone()[0] <= 2 + gc_every(2)
    assert _file_bytes(db) < 4 * one_run  # freed pages go back (auto_vacuum) and the log is truncated
    stored_run = open_metadata(config.metadata).load_run(open_metadata(config.metadata).runs()[0]["run_id"])
    loaded = RunMetrics.from_stored(stored_run)
    assert [t.task for t in loaded.tasks] == list(range(1023)) and {t.status for t in loaded.tasks} == {"finished"}
    assert loaded.workers and len(stored_run.events) == len(loaded.events) > 2 * 1023
    raw.close()


def test_gc_shrinks_the_file(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}", retention_runs=100)
    for _ in range(5):
        tree(512).compute(config)
    drain()
    before = _file_bytes(db)
    assert len(open_metadata(config.metadata).gc(1)) == 4
    assert _file_bytes(db) < before / 2


def test_a_schema_1_file_is_read_and_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    raw = sqlite3.connect(db)
    raw.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, signature TEXT NOT NULL, submitted_at REAL NOT NULL,
                           doc TEXT NOT NULL, events BLOB NOT NULL);
        CREATE TABLE tasks (run_id TEXT NOT NULL, task INTEGER NOT NULL, identity TEXT NOT NULL,
                            memory_mb INTEGER NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (run_id, task));
        CREATE TABLE workers (run_id TEXT NOT NULL, worker TEXT NOT NULL, doc TEXT NOT NULL,
                              PRIMARY KEY (run_id, worker));
        """
    )
    task = {"run_id": "r1", "task": 0, "identity": "m.f:1", "memory_mb": 512}
    run = (json.dumps({"run_id": "r1"}), zlib.compress(b"[]"))
    raw.execute("INSERT INTO runs VALUES ('r1', 'sig', 1.0, ?, ?)", run)
    raw.execute("INSERT INTO tasks VALUES ('r1', 0, 'm.f:1', 512, ?)", (json.dumps(task),))
    raw.execute("INSERT INTO workers VALUES ('r1', 'w', ?)", (json.dumps({"worker": "w"}),))
    raw.commit()
    store = open_metadata(f"sqlite:///{db}")
    stored = store.load_run("r1")
    assert stored.trace is None and stored.tasks == [task] and stored.workers == [{"worker": "w"}]
    assert stored.events == []
    assert [r.tasks for r in store.task_runs(["m.f:1"])] == [[task]] and store.task_runs(["m.g:1"]) == []
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)
    assert store.gc(0) == ["r1"] and raw.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
    raw.close()


def test_a_schema_6_file_reads_its_batches_of_the_first_layout_as_they_were_written(tmp_path: Path) -> None:
    """Schema 6 batches held each run's values in full, the DAG's lists and its rows grouped per flush and
    marshalled apart: such a batch gives the same runs as one of this layout, and is moved on the first read."""
    from fanflow.store.metadata import raw

    db = tmp_path / "old.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}")
    assert concat(sized(3), sized(4)).compute(config) == b"xxxxxxx"
    assert leaf(1).compute(config) == 2
    drain()
    peek = sqlite3.connect(db)
    expected: dict[str, tuple[dict[str, Any], bytes]] = {}
    for rowid, batch in peek.execute("SELECT rowid, events FROM raw_batches").fetchall():  # one, or two if slow
        assert batch.startswith(raw.BATCH_MAGIC)
        version, shapes, runs = marshal.loads(batch[len(raw.BATCH_MAGIC) :])
        old = []
        for kept, totals in runs:  # the client's tuple: values, the DAG's entry, seconds, retention, rows
            (lists, workflow, *_), record_s = kept[1], kept[2]
            values = (*kept[0], len(lists[2]), len(lists[2]), *totals, record_s, workflow)
            rows = marshal.dumps(raw.flushes_of(kept[4:]), raw.MARSHAL_VERSION)
            old.append((values, *lists, rows))
        first = b"FFBATCH1:" + marshal.dumps((version, shapes, old), 4)
        assert raw.unpack_batch(first) == raw.unpack_batch(batch)
        assert raw.batch_run_ids(first) == raw.batch_run_ids(batch)
        ids, rest = raw.drop_oldest(first, 1)
        assert ids == raw.batch_run_ids(first)[:1] and rest.startswith(b"FFBATCH1:")
        assert raw.unpack_batch(rest) == raw.unpack_batch(batch)[1:]
        peek.execute("UPDATE raw_batches SET events = ? WHERE rowid = ?", (first, rowid))
        expected |= {run_id: raw.expand(blob) for run_id, _, _, _, blob in raw.unpack_batch(batch)}
    assert len(expected) == 2
    peek.execute("UPDATE meta SET value = '6' WHERE key = 'schema'")
    peek.commit()
    store = SQLiteMetadataStore(f"sqlite:///{db}")
    assert peek.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)
    assert {d["run_id"]: d for d in store.runs()} == {run_id: doc for run_id, (doc, _) in expected.items()}
    for run_id, (doc, trace) in expected.items():
        stored = store.load_run(run_id)
        assert stored.run == doc and stored.trace == trace
    assert peek.execute("SELECT count(*) FROM raw_batches").fetchone() == (0,)
    store.close()


def test_a_schema_5_file_reads_the_tiny_runs_waiting_in_its_old_table(tmp_path: Path) -> None:
    """Schema 5 kept a ``raw_runs`` row per tiny run: those are read, counted by retention and moved on the
    first read, beside the batches of runs saved since."""
    from fanflow.store.metadata import raw

    db = tmp_path / "old.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}")
    assert leaf(1).compute(config) == 2
    drain()
    peek = sqlite3.connect(db)
    (batch,) = peek.execute("SELECT events FROM raw_batches").fetchone()
    ((run_id, signature, at, identities, blob),) = raw.unpack_batch(batch)
    peek.execute("DELETE FROM raw_batches")
    peek.execute("DROP TABLE raw_batches")  # as a schema 5 file holds the run
    peek.execute("INSERT INTO raw_runs VALUES (?, ?, ?, ?, ?)", (run_id, signature, at, "\n".join(identities), blob))
    peek.execute("UPDATE meta SET value = '5' WHERE key = 'schema'")
    peek.commit()
    store = SQLiteMetadataStore(f"sqlite:///{db}")
    assert peek.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)
    assert [d["run_id"] for d in store.runs()] == [run_id] and store.task_run_ids([leaf.identity]) == [run_id]
    assert store.load_run(run_id).run["tasks"] == 1
    assert peek.execute("SELECT count(*) FROM raw_runs").fetchone() == (0,)
    store.close()


def test_a_summary_merged_by_the_store_has_the_bits_summary_merge_gives(tmp_path: Path) -> None:
    """The store merges an increment into its row in SQL: the same doubles as :meth:`Summary.merge`, exactly
    (a product and a quotient taken in another order differ in about one merge of these 200)."""
    rng = random.Random(7)
    store = SQLiteMetadataStore(f"sqlite:///{tmp_path / 'merge.db'}")
    key = ("m.f:1", 512)
    expected = Summary()
    for i in range(200):
        part = Summary.of(
            (rng.random(), float(rng.randrange(0, 10**9)), float(rng.randrange(0, 10**6)))
            for _ in range(rng.randrange(1, 6))
        )
        expected = expected.merge(part)
        store.save_run({"run_id": f"r{i}", "signature": "s", "submitted_at": 1.0}, b"", [], {key: part})
        store.save_run({"run_id": f"e{i}", "signature": "s", "submitted_at": 1.0}, b"", [], {key: Summary()})
        assert store.summaries() == {key: expected}  # read: written in one transaction, merged into the row
    store.close()


def test_summaries_of_columns_equal_those_added_one_by_one() -> None:
    executions = [(0.5, 10.0, 3.0), (0.25, 0.0, 1.0), (1e-6, 1e6, 0.0), (0.75, 20.0, 5.0)]
    expected = Summary.of(executions)
    got = Summary.of_columns(*map(list, zip(*executions, strict=True)))
    for name, value in got.to_dict().items():
        assert value == pytest.approx(expected.to_dict()[name], rel=1e-12), name
    assert Summary.of_columns([], [], []) == Summary()


def test_raw_runs_summaries_are_the_same_whether_a_batch_has_one_function_or_several(tmp_path: Path) -> None:
    """A writer batch of one function at one size is split into columns by zip, any other grouped one by
    one: the summaries the store holds after either equal those of the executions added one by one."""
    from fanflow.store.metadata.sqlite import _columns_of

    one = [("m.f:1", 1769, 0.5, 10.0, 3.0), ("m.f:1", 1769, 0.25, 0.0, 1.0)]
    several = [*one, ("m.g:2", 1769, 1e-6, 1e6, 0.0), ("m.f:1", 512, 0.75, 20.0, 5.0), ("m.f:1", 1769, 2.0, 1.0, 1.0)]
    for executions in (one, several):
        parts = (((), (((),) * 6, ""), 0.0, None), ())  # no run to read back: only the summaries are
        raws = [(parts, (execution,), None) for execution in executions]
        expected: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for identity, memory_mb, *values in executions:
            expected.setdefault((identity, memory_mb), []).append(tuple(values))
        columns = _columns_of(raws)
        assert {key: list(zip(*column, strict=True)) for key, column in columns.items()} == expected
        db = tmp_path / f"{len(executions)}.db"
        store = SQLiteMetadataStore(f"sqlite:///{db}")
        store.save_raw([*raws[:1]])  # a first batch, then the rest merged into what it stored
        store.flush()
        store.save_raw(raws[1:])
        store.flush()
        summaries = store.summaries()
        assert summaries.keys() == expected.keys()
        for key, triples in expected.items():
            want = Summary.of(triples).to_dict()
            for name, value in summaries[key].to_dict().items():
                assert value == pytest.approx(want[name], rel=1e-12), (key, name)
        store.close()


def test_a_schema_2_file_reads_its_runs_beside_new_ones(tmp_path: Path) -> None:
    """Schema 2 kept task documents grouped per function: the same records come back, new runs get traces."""
    source = tmp_path / "new.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{source}")
    tree(8).compute(config)
    drain()
    store = open_metadata(config.metadata)
    fresh = RunMetrics.from_stored(store.load_run(store.runs()[0]["run_id"]))
    run_doc, task_docs, worker_docs = fresh.to_docs()

    db = tmp_path / "old.db"
    raw = sqlite3.connect(db)
    raw.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '2');
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, signature TEXT NOT NULL, submitted_at REAL NOT NULL,
                           doc TEXT NOT NULL, events BLOB NOT NULL);
        CREATE TABLE task_groups (run_id TEXT NOT NULL, identity TEXT NOT NULL, memory_mb INTEGER NOT NULL,
                                  docs BLOB NOT NULL, PRIMARY KEY (run_id, identity, memory_mb));
        CREATE TABLE worker_docs (run_id TEXT PRIMARY KEY, docs BLOB NOT NULL);
        """
    )
    run_id = run_doc["run_id"]
    raw.execute(
        "INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
        (run_id, run_doc["signature"], run_doc["submitted_at"], json.dumps(run_doc), json.dumps(fresh.events).encode()),
    )
    for identity in {t["identity"] for t in task_docs}:
        docs = [t for t in task_docs if t["identity"] == identity]
        raw.execute(
            "INSERT INTO task_groups VALUES (?, ?, ?, ?)",
            (run_id, identity, 1769, zlib.compress(json.dumps(docs).encode())),
        )
    raw.execute("INSERT INTO worker_docs VALUES (?, ?)", (run_id, json.dumps(worker_docs).encode()))
    raw.commit()

    old_config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}")
    old = open_metadata(old_config.metadata)
    stored = old.load_run(run_id)
    assert stored.trace is None and RunMetrics.from_stored(stored).to_docs() == fresh.to_docs()
    tree(8).compute(old_config)  # a new run in the upgraded file
    drain()
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)
    records = task_records(old, [pair.identity])
    assert [r.run_id for r in records].count(run_id) == 7 and len(records) == 14
    assert {r.status for r in records} == {"finished"}
    raw.close()


def _recorded(config: fanflow.Config) -> tuple[StoredRun, RunMetrics]:
    drain()
    store = open_metadata(config.metadata)
    stored = store.load_run(store.runs(limit=1)[0]["run_id"])
    return stored, RunMetrics.from_stored(stored)


@fanflow.task
def sized(n: int) -> bytes:
    return b"x" * n


@fanflow.task
def concat(*parts: bytes) -> bytes:
    return b"".join(parts)


def _chain(n: int) -> fanflow.Node:
    node = sized(10)
    for i in range(n):
        node = concat(node, sized(i))
    return node


@pytest.mark.parametrize("shape", ["tree", "fan-in", "chain", "small"])
def test_recorded_totals_and_summaries_equal_the_records(tmp_path: Path, shape: str) -> None:
    """What recording computes column-wise (digest) is what the records built from the trace say.

    A small run (columns under ``SMALL_COLUMN`` values) is recorded through its records instead.
    """
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{tmp_path / 'meta.db'}")
    nodes = {
        "tree": lambda: tree(64),
        "fan-in": lambda: concat(*[sized(100 * (i + 1)) for i in range(80)]),
        "chain": lambda: _chain(40),
        "small": lambda: concat(sized(3), sized(4)),
    }
    nodes[shape]().compute(config)
    stored, metrics = _recorded(config)
    trace = decode_trace(stored.trace or b"")
    arrays = trace.dag
    header = RunRecord.from_doc(stored.run)
    assert stored.run == metrics.run.to_doc()
    assert metrics.run.bytes_out > 0 and metrics.run.tasks_finished == len(metrics.tasks)
    digested = digest(arrays, EventTable.of(stored.events), header)
    if shape == "small":
        assert digested is None
        # recorded from its event dicts (digest_events): the same totals and summaries as its records
        graph = Graph.of_trace(trace)
        identities = [graph.identity(i) for i in range(len(graph.deps))]
        small = digest_events(identities, graph.deps, stored.events, RunRecord.from_doc(stored.run))
        assert small is not None and small[0].to_doc() == stored.run == metrics.run.to_doc()
        assert small[1] == summaries_of(metrics.tasks) and sum(s.count for s in small[1].values()) == 3
        assert metrics.run.bytes_local + metrics.run.bytes_fetched == 7
        rerun = [e for e in stored.events if e.get("kind") == "task_finished"][:1]  # a task ending twice
        assert digest_events(identities, graph.deps, stored.events + rerun, header) is None
        return
    assert digested is not None, "a plain run of finished tasks is digested column-wise"
    run, summaries = digested
    assert run.to_doc() == stored.run
    expected = summaries_of(metrics.tasks)
    assert summaries.keys() == expected.keys()
    for key, summary in summaries.items():
        for name, value in summary.to_dict().items():
            assert value == pytest.approx(expected[key].to_dict()[name], rel=1e-9, abs=1e-15), (key, name)


def test_runs_digest_refuses_are_recorded_through_their_records(tmp_path: Path) -> None:
    """A failed run is not a common one: its totals come from the records, and match them."""
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{tmp_path / 'meta.db'}")
    with pytest.raises(fanflow.TaskFailedError):
        concat(sized(3), explode(sized(4))).compute(config)
    stored, metrics = _recorded(config)
    trace = decode_trace(stored.trace or b"")
    arrays = trace.dag
    assert digest(arrays, EventTable.of(stored.events), RunRecord.from_doc(stored.run)) is None
    graph = Graph.of_trace(trace)
    identities = [graph.identity(i) for i in range(len(graph.deps))]
    assert digest_events(identities, graph.deps, stored.events, RunRecord.from_doc(stored.run)) is None
    assert stored.run == metrics.run.to_doc() and stored.run["status"] == "failed"
    assert {t.status for t in metrics.tasks} >= {"failed", "unfinished"}


@fanflow.task
def explode(data: bytes) -> bytes:
    raise ValueError("no")


def _without_record_s(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "record_s"}


@pytest.mark.parametrize("refused", [False, True])
def test_a_tiny_run_recorded_raw_reads_back_as_one_recorded_the_usual_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: bool
) -> None:
    """A tiny run is saved raw: its row holds its packed rows and no document. Every read expands it to what
    the usual recording (in the background, through dicts and JSON) stores for the same run: the same
    document but for the time recording took, the same trace byte for byte, the same records and
    summaries. Each run here is recorded both ways, into two files. ``refused``: rows the row-wise digest
    refuses in the writer's batch (a task that ended twice...) are recorded from them as the usual way
    records the run's events: the same document, trace, records and summaries, in ``runs``."""
    from fanflow.metrics import recorder
    from fanflow.store import keys

    urls = {way: f"sqlite:///{tmp_path / way}.db" for way in ("raw", "usual")}
    saved_raw = recorder._record_raw

    def both_ways(run: Any) -> bool:
        stream = keys.events(run.run_id)
        batches, _ = run.store.read_event_batches(stream)
        assert saved_raw(run), "a tiny run that ended well is kept for the writer"
        assert not run.store.read_event_batches(stream)[0]  # its events are freed at once
        for batch in batches:
            run.store.append_events(stream, batch, 60)
        run.config = run.config.replace(metadata=urls["usual"])
        assert recorder._record(run, None) is not None
        return True

    monkeypatch.setattr(recorder, "_record_raw", both_ways)
    if refused:
        monkeypatch.setattr(recorder, "digest_rows", lambda *args: None)
    config = fanflow.Config(progress=False, metadata=urls["raw"])
    assert concat(sized(3), sized(4)).compute(config) == b"xxxxxxx"
    assert leaf(1).compute(config) == 2
    assert _chain(4).compute(config) == b"x" * 16
    drain()
    peek = sqlite3.connect(tmp_path / "raw.db")
    batches = peek.execute("SELECT runs, substr(events, 1, 9) FROM raw_batches").fetchall()
    assert sum(n for n, _ in batches) == 3 * (not refused) and {m for _, m in batches} <= {BATCH_MAGIC}
    assert peek.execute("SELECT count(*) FROM runs").fetchone() == (3 * refused,)  # no index holds raw runs
    raw, usual = (open_metadata(urls[way]) for way in ("raw", "usual"))
    docs = raw.runs()  # the first read moves them into ``runs``, still raw
    if not refused:
        assert peek.execute("SELECT doc, substr(events, 1, 5) FROM runs").fetchall() == [("", b"FFRAW")] * 3
    assert peek.execute("SELECT count(*) FROM raw_batches").fetchone() == (0,)
    assert [_without_record_s(d) for d in docs] == [_without_record_s(d) for d in usual.runs()]
    assert [list(d) for d in docs] == [list(RunRecord.__dataclass_fields__)] * 3  # the fields in their order
    for doc in docs:
        a, b = raw.load_run(doc["run_id"]), usual.load_run(doc["run_id"])
        assert a.trace == b.trace and _without_record_s(a.run) == _without_record_s(b.run)
        got, expected = RunMetrics.from_stored(a).to_docs(), RunMetrics.from_stored(b).to_docs()
        assert (_without_record_s(got[0]), *got[1:]) == (_without_record_s(expected[0]), *expected[1:])
    assert [(s.run["run_id"], s.trace) for s in raw.task_runs([sized.identity])] == [
        (s.run["run_id"], s.trace) for s in usual.task_runs([sized.identity])
    ]
    assert raw.task_run_ids() == usual.task_run_ids()
    assert raw.runs(docs[0]["signature"]) == [docs[0]]
    expected_summaries = usual.summaries()
    got_summaries = raw.summaries()
    assert got_summaries.keys() == expected_summaries.keys() and len(got_summaries) == 3
    for key, summary in got_summaries.items():
        for name, value in summary.to_dict().items():
            assert value == pytest.approx(expected_summaries[key].to_dict()[name], rel=1e-9, abs=1e-15), (key, name)


@fanflow.task
def numbers(n: int) -> list[int]:
    return list(range(n))


@fanflow.task
def twin_a(x: int) -> int:
    return x + 1


@fanflow.task
def twin_b(x: int) -> int:
    return x + 1


def test_a_tiny_run_whose_worker_has_not_stopped_is_left_to_the_usual_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client keeps a tiny run for the writer only when every worker seen has flushed its ``worker_stopped``
    (the digest that checked it runs in the writer's batch now): else its events stay in the run store, and
    the usual way, which waits for the last events, records it into ``runs``."""
    from fanflow.metrics import recorder
    from fanflow.store import keys
    from fanflow.store.events import EventRows

    saved_raw = recorder._record_raw
    kept: list[bool] = []

    def unstopped(run: Any) -> bool:
        stream = keys.events(run.run_id)
        batches, _ = run.store.read_event_batches(stream)
        run.store.delete([stream])
        for batch in batches:  # the worker's last event, worker_stopped, not flushed yet
            run.store.append_events(stream, EventRows(list(batch.rows[:-1]), batch.worker), 60)
        kept.append(saved_raw(run))
        assert run.store.read_event_batches(stream)[0], "its events are left for the usual way"
        return kept[-1]

    monkeypatch.setattr(recorder, "_record_raw", unstopped)
    monkeypatch.setattr(recorder, "SETTLE_S", 0.01)  # the usual way waits no longer for the missing event
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{tmp_path / 'meta.db'}")
    assert leaf(1).compute(config) == 2
    drain()
    assert kept == [False]
    peek = sqlite3.connect(tmp_path / "meta.db")
    assert peek.execute("SELECT count(*) FROM raw_batches").fetchone() == (0,)
    assert peek.execute("SELECT count(*), min(doc != '') FROM runs").fetchone() == (1, 1)  # its document as JSON


def test_tiny_runs_of_functions_with_the_same_code_keep_their_own_names(tmp_path: Path) -> None:
    """The DAG lists the recorder keeps per DAG (signature, task functions, task-to-function map) are each
    run's own."""
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{tmp_path / 'meta.db'}")
    assert [twin_a(1).compute(config), twin_b(1).compute(config), twin_a(2).compute(config)] == [2, 2, 3]
    store = open_metadata(config.metadata)
    docs = store.runs()
    names = [decode_trace(store.load_run(d["run_id"]).trace or b"").dag.functions for d in reversed(docs)]
    assert names == [[("twin_a", twin_a.identity)], [("twin_b", twin_b.identity)], [("twin_a", twin_a.identity)]]


def test_runs_that_are_not_tiny_are_recorded_the_usual_way(tmp_path: Path) -> None:
    """A failed run, a run of 64 events or more and a dynamic fan-out are recorded from their records."""
    db = tmp_path / "meta.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}")
    with pytest.raises(fanflow.TaskFailedError):
        concat(sized(3), explode(sized(4))).compute(config)
    tree(16).compute(config)  # 31 tasks: more than 64 events
    assert fanflow.map(leaf, numbers(3)).compute(config) == [1, 2, 3]
    assert leaf(2).compute(config) == 3
    drain()
    peek = sqlite3.connect(db)
    assert peek.execute("SELECT doc != '' FROM runs ORDER BY submitted_at").fetchall() == [(1,)] * 3
    assert peek.execute("SELECT sum(runs) FROM raw_batches").fetchone() == (1,)  # the last one, tiny


def _flat(flushed: list[tuple[str, list[tuple[Any, ...]]]]) -> list[Any]:
    """Rows as a tiny run's recording keeps them: each flush's worker id, then its rows."""
    return [item for worker, rows in flushed for item in (worker, *rows)]


def test_digest_rows_gives_what_digest_events_gives(tmp_path: Path) -> None:
    """The row-wise digest of a tiny run equals the dict-wise one, and refuses what it refuses."""
    from fanflow.metrics.digest import digest_rows
    from fanflow.store.events import SHAPES, EventRows, shape

    config = fanflow.Config(progress=False, metadata=f"sqlite:///{tmp_path / 'meta.db'}")
    concat(sized(3), sized(4)).compute(config)
    stored, _ = _recorded(config)
    graph = Graph.of_trace(decode_trace(stored.trace or b""))
    identities = [graph.identity(i) for i in range(len(graph.deps))]
    batches: dict[str, list[tuple[Any, ...]]] = {}
    forms: dict[tuple[str, tuple[str, ...]], int] = {}
    for event in stored.events:
        fields = {k: v for k, v in event.items() if k not in ("kind", "worker")}
        number = forms.setdefault((event["kind"], tuple(fields)), shape(event["kind"], tuple(fields)))
        batches.setdefault(event["worker"], []).append((*fields.values(), number))
    flushed = list(batches.items())
    assert [e for w, rows in flushed for e in EventRows(rows, w)] == sorted(
        stored.events, key=lambda e: list(batches).index(e["worker"])
    )
    header = RunRecord.from_doc(stored.run)
    expected = digest_events(identities, graph.deps, stored.events, header)
    got = digest_rows(identities, graph.deps, _flat(flushed))
    assert expected is not None and got is not None
    run, summaries = expected
    totals, executions = got
    assert totals == (run.workers, run.cold_starts, run.bytes_fetched, run.bytes_local, run.bytes_out)
    counted: dict[tuple[str, int], Summary] = {}
    for identity, memory_mb, *execution in executions:
        counted.setdefault((identity, memory_mb), Summary()).add(*execution)
    assert counted == summaries and len(executions) == 3
    worker, ended = next((w, r) for w, rows in flushed for r in rows if SHAPES[r[-1]].kind == "task_finished")
    assert digest_rows(identities, graph.deps, _flat([*flushed, (worker, [ended])])) is None  # a task ending twice
    names = SHAPES[ended[-1]].names
    for name, value in (("out_bytes", 1.5), ("memory_mb", 0), ("memory_mb", True), ("exec_s", "1"), ("in_bytes", 3)):
        changed = (
            tuple(value if field == name else v for field, v in zip(names, ended, strict=False)) + ended[len(names) :]
        )
        odd = [(w, [changed if r is ended else r for r in rows]) for w, rows in flushed]
        assert digest_rows(identities, graph.deps, _flat(odd)) is None, (name, value)  # a value the records convert
    stop = shape("worker_stopped", ("tasks", "task", "t"))
    unstopped = [(w, [r for r in rows if r[-1] != stop]) for w, rows in flushed]
    assert digest_rows(identities, graph.deps, _flat(unstopped)) is None  # a worker yet to flush its last events
    assert digest_rows(identities, graph.deps, _flat(flushed)[1:]) is None  # rows before any worker id


def test_digest_rows_by_plan_gives_what_it_gives_row_by_row() -> None:
    """One worker's rows are digested by a plan kept per sequence of shapes: the same answers as row by row,
    for runs it takes and runs it refuses, run after run of one plan."""
    from fanflow.metrics.digest import _digest_flushes, digest_rows
    from fanflow.store.events import shape

    started = shape("worker_started", ("cold", "memory_mb", "task", "t"))
    task_started = shape("task_started", ("task", "t"))
    fields = ("store_s", "out_bytes", "uploaded", "memory_mb", "attempt", "exec_s", "fetch_s", "in_bytes", "task", "t")
    finished = shape("task_finished", fields)
    stopped = shape("worker_stopped", ("tasks", "task", "t"))
    other = shape("task_retried", ("task", "t"))

    def end(task: int, sizes: tuple[Any, ...], exec_s: Any = 0.5, out: Any = 10, memory: Any = 512) -> tuple[Any, ...]:
        return (0.0, out, False, memory, 1, exec_s, 0.0, sizes, task, 1.0, finished)

    identities, deps = ["m.f:1", "m.g:2"], [(), (0,)]
    good = ["w-1", (True, 512, -1, 0.5, started), (0, 0.6, task_started), end(0, ()), (1, 0.7, task_started)]
    good += [end(1, (None,)), (2, -1, 1.0, stopped)]
    cases = {
        "good": good,
        "warm": [good[0], *good[2:]],
        "two flushes": [*good[:3], "w-1", *good[3:]],
        "two workers": [*good[:4], "w-2", *good[4:], (1, -1, 1.0, stopped)],
        "started twice": [*good[:2], *good[1:]],
        "cold not a flag": [good[0], (1, 512, -1, 0.5, started), *good[2:]],
        "not stopped": good[:-1],
        "a task twice": [*good[:-1], end(1, (None,)), good[-1]],
        "a task missing": [good[0], good[1], good[3], good[-1]],
        "a task out of range": [*good[:-1], end(2, ()), good[-1]],
        "seconds as text": [*good[:3], end(0, (), exec_s="0.5"), *good[4:]],
        "a fetched size": [*good[:5], end(1, (30,)), good[-1]],
        "a size as a float": [*good[:5], end(1, (3.0,)), good[-1]],
        "a shape not digested": [*good[:-1], (1, 2.0, other), good[-1]],
        "no worker id": good[1:],
    }
    for name, flat in cases.items():
        for _ in range(2):  # the plan made, then the plan kept
            assert digest_rows(identities, deps, flat) == _digest_flushes(identities, deps, flat), name
    taken = {name for name, flat in cases.items() if digest_rows(identities, deps, flat) is not None}
    assert taken == {"good", "warm", "two flushes", "a fetched size"}


def test_a_damaged_raw_run_is_an_error_that_says_so_and_listings_go_on_without_it(tmp_path: Path) -> None:
    from fanflow.store.metadata import raw

    assert raw.DOC_FIELDS[raw.DOC_VERSION] == tuple(RunRecord.__dataclass_fields__)  # else a new version
    blob = raw.pack({"run_id": "r"}, [("f", "m.f:1")], [0], [()], [0], [])
    doc, trace = raw.expand(blob)
    assert doc == {"run_id": "r"} and decode_trace(trace).dag.functions == [("f", "m.f:1")]
    values = tuple(range(len(RunRecord.__dataclass_fields__)))
    second = raw.pack_values(values, [("f", "m.f:1")], [0], [()], [0], [], marshal.dumps([]))
    assert raw.expand(second) == (dict(zip(RunRecord.__dataclass_fields__, values, strict=True)), trace)
    assert raw.doc_of(second) == raw.expand(second)[0]
    from fanflow.store.events import shape

    rows = [("w", [(1, 2.5, shape("task_started", ("task", "t"))), (0, shape("worker_stopped", ("tasks",)))])]
    packed = raw.pack_values(values, [("f", "m.f:1")], [0], [()], [0], rows, marshal.dumps(rows))
    assert raw.pack_values(values, [("f", "m.f:1")], [0], [()], [0], rows, marshal.dumps(rows)) == packed  # kept
    assert raw.expand(packed)[0] == raw.expand(second)[0]
    assert [e["kind"] for e in decode_trace(raw.expand(packed)[1]).table.events()] == ["task_started", "worker_stopped"]
    with pytest.raises(MetadataError, match="damaged"):
        raw.expand(second[:-1])
    assert raw.expand(b"FFRAW13." + blob[len(raw.MAGIC) :])[0] == doc  # packed by another Python: read alike
    with pytest.raises(MetadataError, match="damaged"):
        raw.expand(blob[:-3])
    with pytest.raises(MetadataError, match="not a raw run"):
        raw.expand(b"FFRAWx." + blob[len(raw.MAGIC) :])

    db = tmp_path / "meta.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}")
    for i in range(3):
        assert leaf(i).compute(config) == i + 1
        drain()  # a batch each
    peek = sqlite3.connect(db)
    (damaged,) = peek.execute("SELECT events FROM raw_batches ORDER BY rowid LIMIT 1").fetchone()
    (lost,) = raw.batch_run_ids(damaged)
    peek.execute("UPDATE raw_batches SET events = substr(events, 1, 40) WHERE rowid = 1")
    peek.commit()
    with pytest.raises(MetadataError, match="damaged"):
        raw.unpack_batch(damaged[:40])
    store = open_metadata(config.metadata)
    assert len(store.runs()) == 2 and lost not in {d["run_id"] for d in store.runs()}
    assert len(store.task_runs([leaf.identity])) == 2
    assert peek.execute("SELECT count(*) FROM raw_batches").fetchone() == (0,)  # read once: gone, logged
    with pytest.raises(MetadataError, match="not in the metadata store"):
        store.load_run(lost)
    (moved,) = peek.execute("SELECT run_id FROM runs ORDER BY submitted_at LIMIT 1").fetchone()
    peek.execute("UPDATE runs SET events = substr(events, 1, 40) WHERE run_id = ?", (moved,))
    peek.commit()
    assert len(store.runs()) == 1  # a moved run's blob damaged: left out of the listings
    with pytest.raises(MetadataError, match="damaged"):
        store.load_run(moved)


def test_a_raw_run_of_the_first_document_version_reads_without_a_worker_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny runs packed before runs recorded their worker cap keep their fields; the cap reads as not recorded."""
    from fanflow.store.metadata import raw

    fields = raw.DOC_FIELDS[1]
    assert "max_workers" not in fields and set(raw.DOC_FIELDS[raw.DOC_VERSION]) - set(fields) == {"max_workers"}
    values = tuple(range(len(fields)))
    monkeypatch.setattr(raw, "DOC_VERSION", 1)  # what an older version packed
    packed = raw.pack_values(values, [("f", "m.f:1")], [0], [()], [0], [], marshal.dumps([]))
    doc = raw.expand(packed)[0]
    assert doc == dict(zip(fields, values, strict=True))
    assert RunRecord.from_doc(doc).max_workers is None


def test_trace_round_trips_any_events() -> None:
    events = [
        {"kind": "worker_started", "task": -1, "worker": "w1", "t": 1.5, "cold": True, "memory_mb": 512},
        {"kind": "task_started", "task": 0, "worker": "w1", "t": 1.6},
        {"kind": "task_started", "task": 1, "worker": "w1", "t": 1.7, "element": 3},  # same kind, more fields
        {"kind": "task_finished", "task": 0, "worker": "wé", "t": 1.8, "in_bytes": [None, 5], "out_bytes": 10},
        {"kind": "task_finished", "task": 1, "worker": "w1", "t": 1.9, "in_bytes": [], "out_bytes": 2**70},
        {"kind": "task_failed", "task": 2, "worker": "w1", "t": 2.0, "error": None},
        {"kind": "task_failed", "task": 3, "worker": "w2", "t": 2.1, "error": "ValueError: x"},
        {"task": 4, "worker": 7, "t": 2.2},  # no kind at all, a number for a worker
        {"kind": "task_started", "t": 2.3, "worker": "w1", "task": 5},  # same fields, another order
        {"kind": "worker_stopped", "task": -1, "worker": "w1", "t": 2.4, "tasks": 3},
        {"kind": "worker_stopped", "task": -1, "worker": "w2", "t": 2.5, "tasks": 0},
    ]
    functions = [("f", "m.f:1"), ("g", "m.g:2")]
    task_of, counts, deps = np.array([0, 0, 1]), np.array([0, 0, 2]), np.array([0, 1])
    blob = encode_trace(DagArrays(functions, task_of, counts, deps, [], [2]), EventTable.of(events))
    trace = decode_trace(blob)
    assert trace.table.events() == events
    assert trace.dag.functions == functions and trace.dag.sinks == [2] and trace.dag.maps == []
    assert trace.dag.task_of.tolist() == [0, 0, 1] and trace.dag.dep_counts.tolist() == [0, 0, 2]
    assert trace.dag.deps.tolist() == [0, 1]
    assert StoredRun({"run_id": "r"}, blob).events == events
    # a small run's events and DAG are kept as JSON lists (what recording does below 64 events)
    listed = decode_trace(encode_trace(DagArrays(functions, task_of, counts, deps, [], [2]), events))
    assert listed.table.events() == events and len(listed.table) == len(events)
    assert listed.dag.task_of.tolist() == [0, 0, 1] and listed.dag.dep_counts.tolist() == [0, 0, 2]
    assert listed.dag.deps.tolist() == [0, 1] and listed.dag.functions == functions and listed.dag.sinks == [2]
    assert EventTable.of([]).events() == []
    # a column mixing ints and floats comes back as floats, as documented
    mixed = [{"kind": "k", "x": 1}, {"kind": "k", "x": 2.5}]
    assert decode_trace(
        encode_trace(DagArrays([], task_of, counts, deps, [], []), EventTable.of(mixed))
    ).table.events() == [
        {"kind": "k", "x": 1.0},
        {"kind": "k", "x": 2.5},
    ]
    # long columns become arrays and string tables; values a column cannot hold keep it a list
    long = [
        {
            "kind": "task_finished",
            "task": i,
            "t": 1.0 + i / 7,
            "cold": i % 2 == 0,
            "worker": f"w{i % 5}",
            "exec_s": None if i == 50 else 0.5 * i,
            "out_bytes": "1.5" if i == 60 else i,
            "huge": 2**70 + i,
            "mixed": 1 if i % 3 else 2.5,
        }
        for i in range(100)
    ]
    table = EventTable.of(long)
    columns = table.groups[0].columns
    assert isinstance(columns["t"], np.ndarray) and isinstance(columns["cold"], np.ndarray)
    assert isinstance(columns["exec_s"], list) and isinstance(columns["out_bytes"], list)
    back = decode_trace(encode_trace(DagArrays(functions, task_of, counts, deps, [], []), table)).table.events()
    assert back == long  # 1 == 1.0: the mixed column comes back as floats
    assert {type(e["mixed"]) for e in back} == {float} and back[60]["out_bytes"] == "1.5"
    with pytest.raises(MetadataError, match="damaged"):
        decode_trace(blob[:-10])
    with pytest.raises(MetadataError, match="not a run trace"):
        decode_trace(b"[]")


def test_the_writer_runs_jobs_in_order_in_batches_and_drain_waits_for_them() -> None:
    """Deferred jobs run in submission order; one submitted while the writer is idle is not left waiting."""
    from fanflow.store.metadata import BATCH_S, defer

    drain()
    ran: list[int] = []
    first = threading.Event()
    defer(lambda: (ran.append(0), first.set()))  # the writer is idle: this job must wake it
    assert first.wait(10 * BATCH_S + 5), "a job deferred to an idle writer never ran"
    for i in range(1, 200):
        defer(lambda i=i: ran.append(i))
    assert drain(30)
    assert ran == list(range(200))

    threads_before = threading.active_count()
    late: list[int] = []

    def submit_and_drain(k: int) -> None:
        for i in range(20):
            defer(lambda i=i: late.append(k * 100 + i))
        assert drain(30)
        assert {k * 100 + i for i in range(20)} <= set(late)  # drain returned after this thread's own jobs

    workers = [threading.Thread(target=submit_and_drain, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert len(late) == 80 and threading.active_count() == threads_before


def test_the_thread_waking_the_idle_writer_returns_once_it_sleeps_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job submitted to an idle writer returns after the writer took the GIL and went back to its batch wait."""
    import time

    import fanflow.store.metadata as metadata

    monkeypatch.setattr(metadata, "HANDOFF_S", 30.0)  # a loaded machine may take more than 5 ms to run the writer
    monkeypatch.setattr(metadata, "IDLE_AFTER_S", 0.0)  # it sleeps until woken as soon as it finds no job
    writer = metadata._Writer()
    ran = threading.Event()
    for _ in range(3):
        writer.submit(ran.set)  # the first starts the thread
        assert writer.drain(30) and ran.is_set()
        ran.clear()
        deadline = time.monotonic() + 10
        while not writer._idle and time.monotonic() < deadline:  # the thread finishes its batch, then idles
            time.sleep(0.001)
        assert writer._idle
        awake = writer._awake
        writer.submit(ran.set)
        assert awake is not None and awake.is_set(), "submit returned while the woken writer still waited for the GIL"
        assert not writer._idle
    assert writer.drain(30) and ran.is_set()


def test_a_drain_runs_the_queued_jobs_in_its_own_thread_after_a_running_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``drain`` runs what is queued in the calling thread (no wake-up of the writer and wait for it), as a
    batch: a save in it is written when the batch ends. A batch another thread is running is waited for (a
    drain with a timeout gives up, False), and a job nobody drains runs in the writer thread."""
    import fanflow.store.metadata as metadata

    monkeypatch.setattr(metadata, "BATCH_S", 60.0)  # the writer thread waits: every batch here is a drain's
    writer = metadata._Writer()
    where: list[tuple[str, threading.Thread, bool]] = []

    def note(name: str) -> Callable[[], None]:
        return lambda: where.append((name, threading.current_thread(), writer.runs_here()))

    writer.submit(note("drained"))  # starts the writer thread
    assert writer.drain(30) and where == [("drained", threading.current_thread(), True)]
    assert not writer.runs_here()

    running, release = threading.Event(), threading.Event()
    writer.submit(lambda: (running.set(), release.wait(30)))
    other = threading.Thread(target=writer.drain)  # another thread's batch, held open
    other.start()
    assert running.wait(30)
    writer.submit(note("after"))
    assert not writer.drain(0.2)  # that batch still runs
    release.set()
    assert writer.drain(30) and [w[0] for w in where] == ["drained", "after"]
    assert where[1][1] in (threading.current_thread(), other)
    other.join(30)

    monkeypatch.setattr(metadata, "BATCH_S", 0.05)
    alone = metadata._Writer()
    done = threading.Event()
    alone.submit(lambda: (where.append(("alone", threading.current_thread(), alone.runs_here())), done.set()))
    assert done.wait(30) and where[-1] == ("alone", alone._thread, True)  # nobody drained: the writer ran it


def test_small_runs_are_written_without_started_documents_and_kept_at_exit(tmp_path: Path) -> None:
    """A burst of tiny runs: every one recorded, none leaves a started row; a process that exits keeps its runs."""
    db = tmp_path / "meta.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}")
    for i in range(30):
        assert leaf(i).compute(config) == i + 1
    drain()
    raw = sqlite3.connect(db)
    assert _kept(raw) == 30
    assert raw.execute("SELECT count(*) FROM started").fetchone() == (0,)  # each ended before the writer came
    summary = open_metadata(config.metadata).summaries([leaf.identity])
    assert [s.count for s in summary.values()] == [30]

    script = (
        "import fanflow\n"
        "@fanflow.task\n"
        "def inc(i):\n    return i + 1\n"
        f"config = fanflow.Config(progress=False, metadata={config.metadata!r})\n"
        "for i in range(25):\n    assert inc(i).compute(config) == i + 1\n"
    )  # no drain(): interpreter exit writes what the writer holds
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _kept(raw) == 55
    raw.close()


def test_a_forked_child_records_its_own_runs_and_exits_without_waiting(tmp_path: Path) -> None:
    """A process that recorded runs forks; the child records one and exits normally: within seconds (it once
    waited 60 s at exit for the parent's writer thread, which a fork does not copy), and with its run kept,
    the parent's not recorded twice."""
    db = tmp_path / "meta.db"
    script = (
        "import os, sys, time\n"
        "import fanflow\n"
        "from fanflow.store.metadata import drain\n"
        "@fanflow.task\n"
        "def inc(i):\n    return i + 1\n"
        f"config = fanflow.Config(progress=False, metadata={f'sqlite:///{db}'!r})\n"
        "assert inc(1).compute(config) == 2\n"
        "assert inc(2).compute(config) == 3\n"  # queued for the writer's batch when the fork comes
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    assert inc(3).compute(config) == 4\n"
        "    sys.exit(0)\n"  # normal interpreter exit: atexit drains the child's writer
        "began = time.monotonic()\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), round(time.monotonic() - began, 1))\n"
        "drain()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    code, waited = done.stdout.split()
    assert code == "0" and float(waited) < 20, done.stdout
    raw = sqlite3.connect(db)
    assert _kept(raw) == 3
    raw.close()


def test_nothing_of_a_tiny_run_waits_for_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once ``compute()`` returned, no object of a tiny run is kept for the history writer's batch (up to 0.2 s
    later): a run kept that long outlived two young collections and went to the oldest generation, whose
    collections then walked every object of the process. What the writer gets instead, a copy, is tuples of
    numbers and strings, which the collector stops tracking. Its started document is not saved either."""
    import gc
    import weakref

    from fanflow.client.hooks import RunHook
    from fanflow.metrics import recorder

    session = sys.modules["fanflow.client.session"]  # the package's ``session`` is the function of that name

    runs: list[weakref.ref[Any]] = []

    class Watch(RunHook):
        def planned(self, run: Any) -> None:
            runs.append(weakref.ref(run))

    monkeypatch.setattr(session, "STANDARD_HOOKS", (*session.STANDARD_HOOKS, Watch()))
    jobs: list[Any] = []
    monkeypatch.setattr(recorder, "defer", jobs.append)  # the writer's batch comes when the test says
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{tmp_path / 'meta.db'}")
    drain()
    for i in range(20):
        assert concat(sized(i), sized(1)).compute(config) == b"x" * (i + 1)
    gc.collect()
    assert len(runs) == 20 and [r() for r in runs] == [None] * 20
    for _ in range(3):  # a pass stops tracking tuples of untracked values: one level of nesting per pass
        gc.collect()
    waiting = [c for q in recorder._tiny.values() for c in q]
    assert len(waiting) == 20 and not [p for c in waiting for p in _parts(c) if gc.is_tracked(p)]
    assert len(jobs) == 1  # one job saves them all
    jobs[0]()
    drain()
    store = open_metadata(config.metadata)
    assert len(store.runs()) == 20 and store.started_runs() == []


def _parts(value: Any) -> list[Any]:
    """``value`` and, for a tuple or list, every part of its items, nested."""
    found = [value]
    if isinstance(value, (tuple, list)):
        for item in value:
            found += _parts(item)
    return found


def test_retention_counts_the_tiny_runs_waiting_raw(tmp_path: Path) -> None:
    """Tiny runs nobody read yet count as the newest: retention deletes the oldest of them, then older runs;
    their executions stay in the summaries, and ``gc`` names every run it deleted."""
    db = tmp_path / "meta.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}", retention_runs=5)
    tree(16).compute(config)  # recorded the usual way, into ``runs``
    drain()
    for i in range(30):
        assert leaf(i).compute(config) == i + 1
    drain()
    peek = sqlite3.connect(db)
    assert 5 <= _kept(peek) <= 5 + gc_every(5)
    assert peek.execute("SELECT count(*) FROM runs").fetchone() == (0,)  # the tree was older than them all
    order = [i for (b,) in peek.execute("SELECT events FROM raw_batches ORDER BY rowid") for i in batch_run_ids(b)]
    order.reverse()
    store = open_metadata(config.metadata)
    assert sorted(store.gc(2)) == sorted(order[2:])  # before any read: the runs are still raw
    assert [d["run_id"] for d in store.runs()] == order[:2]
    assert peek.execute("SELECT count(*) FROM raw_batches").fetchone() == (0,)
    assert [s.count for s in store.summaries([leaf.identity]).values()] == [16 + 30]
