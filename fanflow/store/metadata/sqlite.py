"""The embedded metadata store: one SQLite file, ``sqlite:///.fanflow/metadata.db`` by default.

One table per kind of document (``runs``, ``tasks``, ``workers``) holds each
document as JSON beside the columns it is looked up by; ``summaries`` holds one
row per ``(identity, memory_mb)``; ``started`` the started document of each
recent run, with its expiry. A run's events are one zlib-compressed JSON
blob in its ``runs`` row: they are only ever read whole (replay, export), and
compressed they take a few bytes per event.

Every save is one ``BEGIN IMMEDIATE`` transaction: documents, summary merges
(read, merge, write) and all, so concurrent clients, in this process or in
others, never lose a summary update. The file is in WAL mode so readers (the
CLI, a dashboard) do not block a recording client.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fanflow.store.metadata.base import MetadataError, RunNotFoundError, StoredRun, Summary, SummaryKey

SCHEMA_VERSION = 1
_SUMMARY_COLUMNS = tuple(Summary.__dataclass_fields__)
_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, signature TEXT NOT NULL, submitted_at REAL NOT NULL,
    doc TEXT NOT NULL, events BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (submitted_at);
CREATE INDEX IF NOT EXISTS runs_by_signature ON runs (signature, submitted_at);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL, task INTEGER NOT NULL, identity TEXT NOT NULL, memory_mb INTEGER NOT NULL,
    doc TEXT NOT NULL, PRIMARY KEY (run_id, task)
);
CREATE INDEX IF NOT EXISTS tasks_by_function ON tasks (identity, memory_mb);
CREATE TABLE IF NOT EXISTS workers (
    run_id TEXT NOT NULL, worker TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (run_id, worker)
);
CREATE TABLE IF NOT EXISTS started (
    run_id TEXT PRIMARY KEY, submitted_at REAL NOT NULL, expires_at REAL NOT NULL, doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS summaries (
    identity TEXT NOT NULL, memory_mb INTEGER NOT NULL,
    {", ".join(f"{c} REAL NOT NULL" for c in _SUMMARY_COLUMNS)},
    PRIMARY KEY (identity, memory_mb)
);
"""


def path_of(url: str) -> Path:
    """The file of a ``sqlite:///relative/path`` or ``sqlite:////absolute/path`` URL."""
    scheme, _, rest = url.partition("://")
    if scheme != "sqlite" or not rest.startswith("/") or len(rest) < 2:
        raise MetadataError(
            f"metadata URL {url!r} is not a SQLite file URL; use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    return Path(rest[1:]).expanduser().resolve()


class SQLiteMetadataStore:
    """A :class:`fanflow.store.metadata.MetadataStore` in one SQLite file (created with its directory)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_of(url)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            found = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if found is None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(found[0]) != SCHEMA_VERSION:
                raise MetadataError(
                    f"{self.path} has metadata schema {found[0]}, this fanflow reads {SCHEMA_VERSION}; "
                    "move the file away to start a new history"
                )
        except (sqlite3.Error, OSError) as exc:
            raise MetadataError(f"cannot open the metadata store {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise MetadataError(f"writing the metadata store {self.path} failed: {exc}") from exc

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise MetadataError(f"reading the metadata store {self.path} failed: {exc}") from exc

    # -- writing ---------------------------------------------------------------------
    def save_run(
        self,
        run: Mapping[str, Any],
        tasks: Sequence[Mapping[str, Any]],
        workers: Sequence[Mapping[str, Any]],
        events: Sequence[Mapping[str, Any]],
        summaries: Mapping[SummaryKey, Summary],
    ) -> None:
        run_id = run["run_id"]
        blob = zlib.compress(_dumps(list(events)).encode(), 6)
        with self._write() as db:
            self._delete_runs(db, [run_id])
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
                (run_id, run["signature"], run["submitted_at"], _dumps(run), blob),
            )
            db.executemany(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, ?)",
                [(run_id, t["task"], t["identity"], t["memory_mb"], _dumps(t)) for t in tasks],
            )
            db.executemany("INSERT INTO workers VALUES (?, ?, ?)", [(run_id, w["worker"], _dumps(w)) for w in workers])
            for (identity, memory_mb), part in summaries.items():
                row = db.execute(
                    f"SELECT {', '.join(_SUMMARY_COLUMNS)} FROM summaries WHERE identity = ? AND memory_mb = ?",
                    (identity, memory_mb),
                ).fetchone()
                merged = Summary.from_dict(dict(zip(_SUMMARY_COLUMNS, row, strict=True))).merge(part) if row else part
                values = merged.to_dict()
                db.execute(
                    f"INSERT OR REPLACE INTO summaries VALUES (?, ?, {', '.join('?' * len(_SUMMARY_COLUMNS))})",
                    (identity, memory_mb, *(values[c] for c in _SUMMARY_COLUMNS)),
                )

    @staticmethod
    def _delete_runs(db: sqlite3.Connection, run_ids: Sequence[str]) -> None:
        args = [(r,) for r in run_ids]
        for table in ("runs", "tasks", "workers"):
            db.executemany(f"DELETE FROM {table} WHERE run_id = ?", args)

    def gc(self, keep_runs: int) -> list[str]:
        with self._write() as db:
            doomed = [
                r[0]
                for r in db.execute(
                    "SELECT run_id FROM runs ORDER BY submitted_at DESC, run_id DESC LIMIT -1 OFFSET ?", (keep_runs,)
                )
            ]
            if doomed:
                self._delete_runs(db, doomed)
                db.executemany("DELETE FROM started WHERE run_id = ?", [(r,) for r in doomed])
        return doomed

    def save_started(self, doc: Mapping[str, Any], ttl_s: int) -> None:
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM started WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT OR REPLACE INTO started VALUES (?, ?, ?, ?)",
                (doc["run_id"], doc["submitted_at"], now + ttl_s, _dumps(doc)),
            )

    def started_runs(self, limit: int | None = None) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT doc FROM started s WHERE expires_at >= ? AND NOT EXISTS "
            "(SELECT 1 FROM runs r WHERE r.run_id = s.run_id) ORDER BY submitted_at DESC LIMIT ?",
            (time.time(), -1 if limit is None else limit),
        )
        return [json.loads(r[0]) for r in rows]

    def load_started(self, run_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT doc FROM started WHERE run_id = ? AND expires_at >= ?", (run_id, time.time()))
        return json.loads(rows[0][0]) if rows else None

    # -- reading ---------------------------------------------------------------------
    def runs(self, signature: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE signature = ?", [signature]) if signature else ("", [])
        rows = self._read(
            f"SELECT doc FROM runs {where} ORDER BY submitted_at DESC, run_id DESC LIMIT ?",
            [*args, -1 if limit is None else limit],
        )
        return [json.loads(r[0]) for r in rows]

    def load_run(self, run_id: str) -> StoredRun:
        found = self._read("SELECT doc, events FROM runs WHERE run_id = ?", (run_id,))
        if not found:
            raise RunNotFoundError(
                f"run {run_id!r} is not in the metadata store {self.url} "
                "(see `fanflow runs list`; old runs are removed by retention)"
            )
        doc, events = found[0]
        tasks = self._read("SELECT doc FROM tasks WHERE run_id = ? ORDER BY task", (run_id,))
        workers = self._read("SELECT doc FROM workers WHERE run_id = ?", (run_id,))
        return StoredRun(
            json.loads(doc),
            [json.loads(r[0]) for r in tasks],
            sorted((json.loads(r[0]) for r in workers), key=lambda w: w.get("started_at", 0.0)),
            json.loads(zlib.decompress(events)),
        )

    def task_history(
        self, identities: Iterable[str] | None = None, memory_mb: int | None = None
    ) -> list[dict[str, Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if identities is not None:
            wanted = sorted(set(identities))
            if not wanted:
                return []
            clauses.append(f"t.identity IN ({', '.join('?' * len(wanted))})")
            args.extend(wanted)
        if memory_mb is not None:
            clauses.append("t.memory_mb = ?")
            args.append(memory_mb)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(
            f"SELECT t.doc FROM tasks t JOIN runs r ON r.run_id = t.run_id {where} ORDER BY r.submitted_at, t.task",
            args,
        )
        return [json.loads(r[0]) for r in rows]

    def summaries(self, identities: Iterable[str] | None = None) -> dict[SummaryKey, Summary]:
        rows = self._read(f"SELECT identity, memory_mb, {', '.join(_SUMMARY_COLUMNS)} FROM summaries")
        wanted = None if identities is None else set(identities)
        return {
            (r[0], int(r[1])): Summary.from_dict(dict(zip(_SUMMARY_COLUMNS, r[2:], strict=True)))
            for r in rows
            if wanted is None or r[0] in wanted
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
