"""The SQLite history's own guarantees: compact runs, retention on save, a file that shrinks, old files read.

What every metadata store guarantees is tested in test_metrics.py; this file holds
what only the embedded SQLite store promises (see its module docstring).
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path

import fanflow
from fanflow.store.metadata import drain, open_metadata
from fanflow.store.metadata.base import gc_every


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


def _file_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


def test_runs_are_stored_compactly_and_retention_keeps_the_file_bounded(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    config = fanflow.Config(progress=False, metadata=f"sqlite:///{db}", retention_runs=2)
    tree(512).compute(config)
    drain()
    raw = sqlite3.connect(db)  # another connection sees the run once drain() returned
    assert raw.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    # one row per function for 1,023 tasks, one for the workers: no row per task or worker
    assert raw.execute("SELECT count(*) FROM task_groups").fetchone() == (2,)
    assert raw.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
    assert raw.execute("SELECT count(*) FROM worker_docs").fetchone() == (1,)
    (stored,) = raw.execute(
        "SELECT (SELECT sum(length(doc) + length(events)) FROM runs) + (SELECT sum(length(docs)) FROM task_groups)"
        " + (SELECT sum(length(docs)) FROM worker_docs)"
    ).fetchone()
    assert stored < 1023 * 250, f"{stored} bytes for one run of 1,023 tasks"  # a row per task took 1.1 KB each
    one_run = _file_bytes(db)

    for _ in range(6):
        tree(512).compute(config)
    drain()
    assert raw.execute("SELECT count(*) FROM runs").fetchone()[0] <= 2 + gc_every(2)
    assert _file_bytes(db) < 4 * one_run  # freed pages go back (auto_vacuum) and the log is truncated
    loaded = open_metadata(config.metadata).load_run(open_metadata(config.metadata).runs()[0]["run_id"])
    assert len(loaded.tasks) == 1023 and [t["task"] for t in loaded.tasks] == list(range(1023))
    assert loaded.workers and loaded.events
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
    assert stored.tasks == [task] and stored.workers == [{"worker": "w"}] and stored.events == []
    assert store.task_history(["m.f:1"], memory_mb=512) == [task]
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)
    assert store.gc(0) == ["r1"] and raw.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
    raw.close()
