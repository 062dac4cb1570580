"""The embedded metadata store: one SQLite file, ``sqlite:///.fanflow/metadata.db`` by default.

``runs`` holds each run's document as JSON beside the columns it is looked up
by, and its trace (events and DAG structure, :mod:`fanflow.store.metadata.trace`)
as one blob: a run costs one row, however many tasks it had. ``run_functions``
indexes runs by the function identities their tasks call, which is how
history is read for planning. ``summaries`` holds one row per ``(identity,
memory_mb)``, ``started`` the started document of each recent run, with its
expiry. ``raw_runs`` holds tiny runs saved raw (:mod:`fanflow.store.metadata.raw`)
that nobody has read yet, without indexes: the first read moves them into
``runs`` (see :meth:`SQLiteMetadataStore.save_raw`).

Older files are upgraded in place and their runs stay readable until retention
removes them: schema 1 kept a ``tasks`` row per task and a ``workers`` row per
worker, schema 2 a ``task_groups`` row per (run, function, memory) and a
``worker_docs`` row per run (compressed JSON lists), both with the events as
JSON in ``runs.events``, where schema 3 keeps the trace; schema 4 adds
``raw_runs`` (a file of schema 4 has runs with an empty ``doc``, which older
versions cannot read, so they refuse it); schema 5 adds a second layout of raw
runs, which schema 4 versions cannot read; schema 6 keeps a writer batch's raw
runs in one ``raw_batches`` row, and schema 7 a second layout of those rows
(:data:`fanflow.store.metadata.raw.BATCH_MAGIC`), which schema 6 versions
cannot read.

Every save is one ``BEGIN IMMEDIATE`` transaction: documents, summary merges
(read, merge, write) and all, so concurrent clients, in this process or in
others, never lose a summary update. The file is in WAL mode so readers (the
CLI, a dashboard) do not block a recording client.

What keeps history close to free (its cost is paid by the background writer,
in the same process as the run):

* no record per task is built or stored when a run is saved (see
  :mod:`fanflow.store.metadata.base`);
* saved runs and started documents wait in memory, encoded, and go out in
  one transaction: a commit costs more than a small run's documents. Saves
  from the background writer are written when its batch ends; others within
  :data:`FLUSH_S`. :data:`MAX_PENDING_RUNS` runs or :data:`MAX_PENDING_BYTES`
  of traces waiting are written at once. Any read here,
  :func:`fanflow.store.metadata.drain`, ``close`` and interpreter exit write
  them first, so this process reads what it wrote;
* retention is applied in the save's own transaction, every
  :func:`gc_every` saves (so the newest ``keep_runs`` plus at most a tenth more
  are kept between passes); expired started documents go then too;
* the file does not keep what retention deleted: ``auto_vacuum=INCREMENTAL``
  hands freed pages back (and the write-ahead log is truncated) after a
  retention pass that left :data:`VACUUM_SHARE` of the file free; fewer free
  pages are reused by the next saves, which is cheaper than returning them
  (a history of small runs deletes as many rows per pass as it added). The log is
  truncated to :data:`WAL_LIMIT_BYTES` after automatic checkpoints.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import operator
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fanflow.store.metadata import BATCH_S, defer, in_writer, raw
from fanflow.store.metadata.base import (
    MetadataError,
    RawRun,
    RunNotFoundError,
    StoredRun,
    Summary,
    SummaryKey,
    gc_every,
    summary_values,
)
from fanflow.store.metadata.trace import is_trace

log = logging.getLogger(__name__)

SCHEMA_VERSION = 7
"""7: a batch's tiny runs as the client copied them (:data:`fanflow.store.metadata.raw.RawParts`); 6 (the tiny
runs of a writer batch wait in one ``raw_batches`` row, :func:`fanflow.store.metadata.raw.pack_batch`), 5 (raw runs
of the second layout, :func:`fanflow.store.metadata.raw.pack_values`), 4 (tiny runs wait raw in ``raw_runs``, a row
each, until read), 3 (a trace per run), 2 (task documents grouped per function) and 1 (a row per task) are upgraded
in place."""

FLUSH_S = BATCH_S
"""Longest time a saved run or started document waits in memory before it is written (the writer's batch)."""

_IDS_PER_QUERY = 500
"""Run ids per ``IN (...)`` query (SQLite limits the parameters of one statement)."""

MAX_PENDING_RUNS = 512
"""Runs waiting in memory that make a save write them at once."""

MAX_PENDING_BYTES = 8 << 20
"""Bytes of traces waiting in memory that make a save write them at once (raw runs, fewer than
``SMALL_COLUMN`` events each, are bounded by :data:`MAX_PENDING_RUNS`)."""

VACUUM_SHARE = 0.5
"""Share of the file's pages left free by retention that makes it hand them back to the file system."""

WAL_LIMIT_BYTES = 4 << 20
"""Size the write-ahead log is truncated to after a checkpoint."""

_LEGACY_TABLES = ("tasks", "task_groups", "workers", "worker_docs")
"""Per-task and per-worker rows of schema 1 and 2 files."""

_SUMMARY_COLUMNS = tuple(Summary.__dataclass_fields__)
_MERGED = {
    "count": "count + excluded.count",
    "mean": "CASE WHEN count = 0 THEN excluded.mean "
    "ELSE mean + (excluded.mean - mean) * excluded.count / (count + excluded.count) END",
    "m2": "CASE WHEN count = 0 THEN excluded.m2 ELSE m2 + excluded.m2 "
    "+ (excluded.mean - mean) * (excluded.mean - mean) * count * excluded.count / (count + excluded.count) END",
    "min": 'min("min", excluded."min")',
    "max": 'max("max", excluded."max")',
}
_MERGE_SUMMARY = (
    f"INSERT INTO summaries VALUES (?, ?, {', '.join('?' * len(_SUMMARY_COLUMNS))}) "
    "ON CONFLICT (identity, memory_mb) DO UPDATE SET "
    + ", ".join(f'"{c}" = {_MERGED.get(c, f"{c} + excluded.{c}")}' for c in _SUMMARY_COLUMNS)
)
"""A summary increment merged into its row in one statement, as :meth:`Summary.merge` merges (the same operations
in the same order on the same doubles: the same bits): a ``SELECT``, the merge in Python and an upsert cost about
twice as much. The row is written in place (``INSERT OR REPLACE`` deleted and inserted it: a new rowid, so its
key's index page was written too)."""
_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, signature TEXT NOT NULL, submitted_at REAL NOT NULL,
    doc TEXT NOT NULL, events BLOB NOT NULL
);
DROP INDEX IF EXISTS runs_by_time;
CREATE INDEX IF NOT EXISTS runs_by_time_and_id ON runs (submitted_at, run_id);
CREATE INDEX IF NOT EXISTS runs_by_signature ON runs (signature, submitted_at);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL, task INTEGER NOT NULL, identity TEXT NOT NULL, memory_mb INTEGER NOT NULL,
    doc TEXT NOT NULL, PRIMARY KEY (run_id, task)
);
CREATE INDEX IF NOT EXISTS tasks_by_function ON tasks (identity, memory_mb);
CREATE TABLE IF NOT EXISTS task_groups (
    run_id TEXT NOT NULL, identity TEXT NOT NULL, memory_mb INTEGER NOT NULL, docs BLOB NOT NULL,
    PRIMARY KEY (run_id, identity, memory_mb)
);
CREATE INDEX IF NOT EXISTS task_groups_by_function ON task_groups (identity, memory_mb);
CREATE TABLE IF NOT EXISTS run_functions (
    identity TEXT NOT NULL, run_id TEXT NOT NULL, PRIMARY KEY (identity, run_id)
);
CREATE INDEX IF NOT EXISTS run_functions_by_run ON run_functions (run_id);
CREATE TABLE IF NOT EXISTS worker_docs (run_id TEXT PRIMARY KEY, docs BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    run_id TEXT NOT NULL, worker TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (run_id, worker)
);
CREATE TABLE IF NOT EXISTS raw_runs (
    run_id TEXT NOT NULL, signature TEXT NOT NULL, submitted_at REAL NOT NULL, functions TEXT NOT NULL,
    events BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS raw_batches (runs INTEGER NOT NULL, events BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS started (
    run_id TEXT PRIMARY KEY, submitted_at REAL NOT NULL, expires_at REAL NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS started_by_expiry ON started (expires_at);
CREATE TABLE IF NOT EXISTS summaries (
    identity TEXT NOT NULL, memory_mb INTEGER NOT NULL,
    {", ".join(f"{c} REAL NOT NULL" for c in _SUMMARY_COLUMNS)},
    PRIMARY KEY (identity, memory_mb)
);
"""


def _unpack(blob: bytes) -> Any:
    """Schema 1-2 JSON (a list or an object) as it is, or zlib-compressed (its header byte is never ``[`` or ``{``)."""
    return json.loads(blob if blob[:1] in (b"[", b"{") else zlib.decompress(blob))


@dataclass(slots=True)
class _PendingRun:
    """A saved run, encoded, waiting for the next transaction."""

    run_id: str
    row: tuple[Any, ...]
    functions: list[tuple[str, str]]
    summaries: dict[SummaryKey, Summary]
    keep_runs: int | None


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
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            self._db.executescript(_SCHEMA)
            found = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if found is None or int(found[0]) in (1, 2, 3, 4, 5, 6):  # the new tables exist now; old rows stay readable
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(found[0]) != SCHEMA_VERSION:
                raise MetadataError(
                    f"{self.path} has metadata schema {found[0]}, this fanflow reads {SCHEMA_VERSION}; "
                    "move the file away to start a new history"
                )
            # Only files upgraded from schema 1-2 hold rows in these tables: retention need not look elsewhere.
            self._legacy = [t for t in _LEGACY_TABLES if self._db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]
        except (sqlite3.Error, OSError) as exc:
            raise MetadataError(f"cannot open the metadata store {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        self._started: dict[str, tuple[Mapping[str, Any], float]] = {}  # run id -> (doc, expiry), not written yet
        self._runs: list[_PendingRun] = []  # encoded runs, not written yet
        self._raw: list[RawRun] = []  # raw runs, not written yet
        self._pending_bytes = 0  # their traces' bytes
        self._flush_queued = False  # a job waits in the writer's queue, whose batch will write what waits here
        self._saves = 0  # saves since the last retention pass in this process
        self._closed = False

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, which first writes what waits in memory (started documents, runs)."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    doomed = self._write_pending(db)
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise MetadataError(f"writing the metadata store {self.path} failed: {exc}") from exc
            if doomed and self._worth_vacuuming():
                self._vacuum()

    def _write_pending(self, db: sqlite3.Connection) -> bool:
        """Write the started documents and runs waiting in memory; True when retention deleted runs.

        On a rollback they are lost, as a failed save would lose them (history is observability).
        """
        started, runs, raws = self._started, self._runs, self._raw
        self._started, self._runs, self._raw, self._pending_bytes = {}, [], [], 0
        if started:
            db.executemany(
                "INSERT OR REPLACE INTO started VALUES (?, ?, ?, ?)",
                [(d["run_id"], d["submitted_at"], expires_at, _dumps(d)) for d, expires_at in started.values()],
            )
        keep_runs: int | None = None
        increments: dict[SummaryKey, Summary] = {}  # merged in memory first: one read and write per key
        if runs:  # a batch of tiny runs has none: skipping the statements is 25 us of a 40-run batch's 340
            self._insert_runs(db, {run.run_id: (run.row, run.functions) for run in runs})  # saved again: its last
        if raws:
            db.execute("INSERT INTO raw_batches VALUES (?, ?)", (len(raws), raw.pack_batch([r[0] for r in raws])))
        for run in runs:
            keep_runs = run.keep_runs if run.keep_runs is not None else keep_runs
            for key, part in run.summaries.items():
                found = increments.get(key)
                increments[key] = part if found is None else found.merge(part)
        if raws:  # the last retention a raw run asked for, if any (C-level: no bytecode per run)
            keep_runs = next(filter(_is_set, map(_keep_of, reversed(raws))), keep_runs)
        for key, column in _columns_of(raws).items():
            part = Summary.of_columns(*column)
            found = increments.get(key)
            increments[key] = part if found is None else found.merge(part)
        self._merge_summaries(db, increments)
        self._saves += len(runs) + len(raws)
        if keep_runs is not None and self._saves >= gc_every(keep_runs):
            return self._retain(db, keep_runs, named=False)[0] > 0
        return False

    def flush(self) -> None:
        """Write what waits in memory now (the writer's batch, reads, :func:`fanflow.store.metadata.drain`, close)."""
        with self._lock:
            self._flush_queued = False
            pending = bool(self._started or self._runs or self._raw) and not self._closed
        if not pending:
            return
        try:
            with self._write():
                pass
        except MetadataError as exc:
            log.warning("could not save run history: %s", exc)

    def _flush_later(self) -> None:
        """Have the pending writes flushed within :data:`FLUSH_S` (call holding the lock).

        The background writer has the stores write after each batch: a save
        made outside it queues an empty job, which wakes it if it is idle (a
        timer thread per batch cost more than a tiny run's recording).
        """
        if not self._flush_queued and not in_writer():
            self._flush_queued = True
            defer(_nothing)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._started or self._runs or self._raw:
            self.flush()  # this process reads what it wrote
        self._move_raw_runs()
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise MetadataError(f"reading the metadata store {self.path} failed: {exc}") from exc

    # -- writing ---------------------------------------------------------------------
    def save_run(
        self,
        run: Mapping[str, Any],
        trace: bytes,
        functions: Iterable[str],
        summaries: Mapping[SummaryKey, Summary],
        keep_runs: int | None = None,
    ) -> None:
        """Save one run (see :class:`MetadataStore`), in the next transaction (module docstring).

        With ``keep_runs``, every :func:`gc_every` saves delete the runs past the
        newest ``keep_runs`` in that transaction.
        """
        run_id = run["run_id"]
        pending = _PendingRun(
            run_id=run_id,
            row=(run_id, run["signature"], run["submitted_at"], _dumps(run), trace),
            functions=[(identity, run_id) for identity in set(functions)],
            summaries=dict(summaries),
            keep_runs=keep_runs,
        )
        with self._lock:
            self._runs.append(pending)
            self._pending_bytes += len(trace)
            full = len(self._runs) + len(self._raw) >= MAX_PENDING_RUNS or self._pending_bytes >= MAX_PENDING_BYTES
            if not full:
                self._flush_later()
        if full:
            self.flush()

    def save_raw(self, runs: Sequence[RawRun]) -> None:
        """Save raw runs (:class:`fanflow.store.metadata.base.SavesRaw`), in the next transaction.

        The raw runs of a transaction go into one ``raw_batches`` row
        (:func:`fanflow.store.metadata.raw.pack_batch`), a table without
        indexes, until this store is next read: then each of its runs moves
        into ``runs`` with an empty ``doc`` and its raw blob as ``events``
        (:meth:`_move_raw_runs`), which every read expands (:func:`_stored`,
        :func:`_doc`). A ``runs`` row costs three indexes and a function index
        entry, and a row per run (schema 5's ``raw_runs``) was still most of a
        tiny run's write: a stream of tiny runs nobody reads is written, and
        deleted by retention, a batch at a time.
        """
        with self._lock:
            self._raw.extend(runs)
            full = len(self._runs) + len(self._raw) >= MAX_PENDING_RUNS or self._pending_bytes >= MAX_PENDING_BYTES
            if not full:
                self._flush_later()
        if full:
            self.flush()

    def _move_raw_runs(self) -> None:
        """Move the raw runs waiting in ``raw_batches`` and ``raw_runs`` (this process's or another's) into
        ``runs``, for a read.

        A run saved again replaces its earlier row. A batch that cannot be read
        is deleted (its runs are lost, logged); on a failure of the store they
        stay where they are and the read goes on without them (logged).
        """
        with self._lock:
            if (
                self._closed
                or not self._db.execute(
                    "SELECT EXISTS (SELECT 1 FROM raw_runs) OR EXISTS (SELECT 1 FROM raw_batches)"
                ).fetchone()[0]
            ):
                return
        try:
            with self._write() as db:
                moved = db.execute("SELECT run_id, functions FROM raw_runs").fetchall()
                db.execute(
                    "INSERT OR REPLACE INTO runs SELECT run_id, signature, submitted_at, '', events "
                    "FROM raw_runs ORDER BY rowid"
                )
                db.execute("DELETE FROM raw_runs")
                functions = [(identity, run_id) for run_id, names in moved for identity in names.split("\n")]
                for rowid, blob in db.execute("SELECT rowid, events FROM raw_batches ORDER BY rowid").fetchall():
                    try:
                        runs = raw.unpack_batch(blob)
                    except MetadataError as exc:
                        log.warning("deleting a batch of tiny runs from the history: %s", exc)
                        runs = []
                    db.executemany(
                        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, '', ?)",
                        [(run_id, signature, at, packed) for run_id, signature, at, _, packed in runs],
                    )
                    functions += [(identity, run[0]) for run in runs for identity in dict.fromkeys(run[3])]
                    db.execute("DELETE FROM raw_batches WHERE rowid = ?", (rowid,))
                db.executemany("INSERT OR IGNORE INTO run_functions VALUES (?, ?)", functions)
        except MetadataError as exc:
            log.warning("reading run history without its latest tiny runs: %s", exc)

    def _insert_runs(
        self, db: sqlite3.Connection, latest: Mapping[str, tuple[tuple[Any, ...], list[tuple[str, str]]]]
    ) -> None:
        """Insert the rows and function index entries of ``latest`` (by run id), replacing earlier saves."""
        ids = list(latest)
        saved: list[str] = []
        for at in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[at : at + _IDS_PER_QUERY]
            query = f"SELECT run_id FROM runs WHERE run_id IN ({', '.join('?' * len(chunk))})"
            saved += [row[0] for row in db.execute(query, chunk)]
        if saved:
            self._delete_runs(db, saved)
        db.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?)", [row for row, _ in latest.values()])
        db.executemany("INSERT INTO run_functions VALUES (?, ?)", [f for _, fs in latest.values() for f in fs])

    @staticmethod
    def _merge_summaries(db: sqlite3.Connection, increments: Mapping[SummaryKey, Summary]) -> None:
        db.executemany(
            _MERGE_SUMMARY,
            [
                (identity, memory_mb, *summary_values(part))
                for (identity, memory_mb), part in increments.items()
                if part.count
            ],
        )

    def _delete_runs(self, db: sqlite3.Connection, run_ids: Sequence[str]) -> None:
        args = [(r,) for r in run_ids]
        for table in ("runs", "run_functions", *self._legacy):
            db.executemany(f"DELETE FROM {table} WHERE run_id = ?", args)

    def _retain(self, db: sqlite3.Connection, keep_runs: int, named: bool = True) -> tuple[int, list[str]]:
        """Delete the runs past the newest ``keep_runs`` and expired started documents: how many runs went, and
        their ids. Without ``named``, the ids of whole batches of raw runs are left out unless started
        documents need them: reading them was most of a pass (a batch of 40 tiny runs is 20 KB)."""
        self._saves = 0
        started = db.execute("SELECT 1 FROM started LIMIT 1").fetchone() is not None
        # Raw runs count as the newest (they were saved after every run in ``runs``), in the order saved:
        # schema 5's rows first, then the batches.
        (single,) = db.execute("SELECT count(*) FROM raw_runs").fetchone()
        (batched,) = db.execute("SELECT coalesce(sum(runs), 0) FROM raw_batches").fetchone()
        waiting = single + batched
        doomed: list[str] = []
        excess = waiting - keep_runs
        deleted = 0
        if excess > 0 and single:
            gone = db.execute("SELECT rowid, run_id FROM raw_runs ORDER BY rowid LIMIT ?", (excess,)).fetchall()
            db.execute("DELETE FROM raw_runs WHERE rowid <= ?", (gone[-1][0],))
            doomed += [run_id for _, run_id in gone]
            excess -= len(gone)
            deleted += len(gone)
        if excess > 0:
            deleted += self._retain_batches(db, excess, doomed if named or started else None)
        older = [
            r[0]
            for r in db.execute(
                "SELECT run_id FROM runs ORDER BY submitted_at DESC, run_id DESC LIMIT -1 OFFSET ?",
                (keep_runs - min(waiting, keep_runs),),
            )
        ]
        if older:
            self._delete_runs(db, older)
        doomed += older
        if doomed and started:
            db.executemany("DELETE FROM started WHERE run_id = ?", [(r,) for r in doomed])
        db.execute("DELETE FROM started WHERE expires_at < ?", (time.time(),))
        return deleted + len(older), doomed

    @staticmethod
    def _retain_batches(db: sqlite3.Connection, excess: int, doomed: list[str] | None) -> int:
        """Delete the oldest ``excess`` runs waiting in ``raw_batches``, adding their ids to ``doomed`` unless
        None (a damaged batch's are unknown); how many went."""
        deleted = 0
        for rowid, count in db.execute("SELECT rowid, runs FROM raw_batches ORDER BY rowid").fetchall():
            if excess <= 0:
                break
            if count <= excess:
                if doomed is not None:
                    (blob,) = db.execute("SELECT events FROM raw_batches WHERE rowid = ?", (rowid,)).fetchone()
                    try:
                        doomed += raw.batch_run_ids(blob)
                    except MetadataError as exc:
                        log.warning("deleted a batch of tiny runs from the history: %s", exc)
                db.execute("DELETE FROM raw_batches WHERE rowid = ?", (rowid,))
                deleted += count
            else:  # the batch's newest runs are kept
                (blob,) = db.execute("SELECT events FROM raw_batches WHERE rowid = ?", (rowid,)).fetchone()
                try:
                    gone, rest = raw.drop_oldest(blob, excess)
                except MetadataError as exc:
                    log.warning("keeping a batch of tiny runs that cannot be read: %s", exc)
                    break
                db.execute("UPDATE raw_batches SET runs = ?, events = ? WHERE rowid = ?", (count - excess, rest, rowid))
                if doomed is not None:
                    doomed += gone
                deleted += excess
            excess -= count
        return deleted

    def _worth_vacuuming(self) -> bool:
        """Whether free pages make up :data:`VACUUM_SHARE` of the file (lock held); fewer are reused by later saves."""
        try:
            (free,) = self._db.execute("PRAGMA freelist_count").fetchone()
            (pages,) = self._db.execute("PRAGMA page_count").fetchone()
        except sqlite3.Error:
            return False
        return bool(free) and free >= VACUUM_SHARE * pages

    def _vacuum(self) -> None:
        """Hand the pages retention freed back to the file system, and truncate the log (lock held)."""
        try:
            # executescript steps the pragma to the end; execute() frees a single page
            self._db.executescript("PRAGMA incremental_vacuum;")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass  # a reader holds the log: the next pass will do it

    def gc(self, keep_runs: int) -> list[str]:
        doomed: list[str] = []
        with self._write() as db:
            doomed = self._retain(db, keep_runs)[1]
        if doomed:
            with self._lock:
                self._vacuum()
        return doomed

    def save_started(self, doc: Mapping[str, Any], ttl_s: int) -> None:
        with self._lock:
            self._started[doc["run_id"]] = (doc, time.time() + ttl_s)
            self._flush_later()

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
            f"SELECT doc, CASE doc WHEN '' THEN events END FROM runs {where} "
            "ORDER BY submitted_at DESC, run_id DESC LIMIT ?",
            [*args, -1 if limit is None else limit],
        )
        return [found for doc, blob in rows if (found := _doc(doc, blob)) is not None]

    def load_run(self, run_id: str) -> StoredRun:
        found = self._read("SELECT doc, events FROM runs WHERE run_id = ?", (run_id,))
        if not found:
            raise RunNotFoundError(
                f"run {run_id!r} is not in the metadata store {self.url} "
                "(see `fanflow runs list`; old runs are removed by retention)"
            )
        doc, blob = found[0]
        if is_trace(blob) or not doc:
            return _stored(doc, blob)
        tasks = [d for _, _, d in self._task_docs("WHERE t.run_id = ?", [run_id])]
        workers = [json.loads(r[0]) for r in self._read("SELECT doc FROM workers WHERE run_id = ?", (run_id,))]
        for (blob_,) in self._read("SELECT docs FROM worker_docs WHERE run_id = ?", (run_id,)):
            workers.extend(_unpack(blob_))
        workers.sort(key=lambda w: w.get("started_at", 0.0))
        return StoredRun(json.loads(doc), tasks=tasks, workers=workers, events=_unpack(blob))

    def task_runs(self, identities: Iterable[str] | None = None) -> list[StoredRun]:
        chosen = _of_functions(identities)
        if chosen is None:
            return []
        where, args = chosen
        found: list[tuple[float, str, StoredRun]] = []
        rows = self._read(
            "SELECT r.submitted_at, r.run_id, r.doc, r.events FROM runs r WHERE r.run_id IN "
            f"(SELECT t.run_id FROM run_functions t {where})",
            args,
        )
        for at, run_id, doc, blob in rows:
            try:
                found.append((at, run_id, _stored(doc, blob)))
            except MetadataError as exc:  # one damaged run does not hide the others' history
                log.warning("run %s left out of the history read: %s", run_id, exc)
        older: dict[str, list[dict[str, Any]]] = {}
        for _, run_id, doc in self._task_docs(where, args):
            older.setdefault(run_id, []).append(doc)
        if older:
            marks = ", ".join("?" * len(older))
            for at, run_id, doc in self._read(
                f"SELECT submitted_at, run_id, doc FROM runs WHERE run_id IN ({marks})", list(older)
            ):
                found.append((at, run_id, StoredRun(json.loads(doc), tasks=older[run_id])))
        found.sort(key=lambda f: (f[0], f[1]))
        return [stored for _, _, stored in found]

    def task_run_ids(self, identities: Iterable[str] | None = None) -> list[str]:
        chosen = _of_functions(identities)
        if chosen is None:
            return []
        where, args = chosen
        sources = [f"SELECT t.run_id FROM run_functions t {where}"]
        sources += [f"SELECT t.run_id FROM {t} t {where}" for t in ("task_groups", "tasks") if t in self._legacy]
        rows = self._read(
            f"SELECT run_id FROM runs WHERE run_id IN ({' UNION '.join(sources)}) "
            "ORDER BY submitted_at DESC, run_id DESC",
            args * len(sources),
        )
        return [r[0] for r in rows]

    def _task_docs(self, where: str, args: list[Any]) -> list[tuple[float, str, dict[str, Any]]]:
        """``(submitted_at, run_id, doc)`` of the schema 1-2 task documents ``where`` selects (alias ``t``).

        Ordered by run time, then task id.
        """
        found: list[tuple[float, str, dict[str, Any]]] = []
        join = "JOIN runs r ON r.run_id = t.run_id"
        for at, run_id, blob in self._read(
            f"SELECT r.submitted_at, r.run_id, t.docs FROM task_groups t {join} {where}", args
        ):
            found.extend((at, run_id, d) for d in _unpack(blob))
        for at, run_id, doc in self._read(f"SELECT r.submitted_at, r.run_id, t.doc FROM tasks t {join} {where}", args):
            found.append((at, run_id, json.loads(doc)))
        found.sort(key=lambda f: (f[0], f[2]["task"]))
        return found

    def summaries(self, identities: Iterable[str] | None = None) -> dict[SummaryKey, Summary]:
        rows = self._read(f"SELECT identity, memory_mb, {', '.join(_SUMMARY_COLUMNS)} FROM summaries")
        wanted = None if identities is None else set(identities)
        return {
            (r[0], int(r[1])): Summary.from_dict(dict(zip(_SUMMARY_COLUMNS, r[2:], strict=True)))
            for r in rows
            if wanted is None or r[0] in wanted
        }

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closed = True
            self._db.close()


_keep_of = operator.itemgetter(2)
_is_set = functools.partial(operator.is_not, None)
_identity_of = operator.itemgetter(0)
_memory_of = operator.itemgetter(1)
_columns = tuple(map(operator.itemgetter, (2, 3, 4)))


def _columns_of(
    raws: Sequence[RawRun],
) -> Mapping[SummaryKey, tuple[Sequence[float], Sequence[float], Sequence[float]]]:
    """The executions of raw runs as columns (exec_s, in_bytes, out_bytes) per function and memory size.

    A batch of one graph's calls has one function at one size: its columns are taken by C-level getters (no
    bytecode per execution, where the loop over executions was a third of the writer's per run).
    """
    executions = list(itertools.chain.from_iterable(map(operator.itemgetter(1), raws)))
    identities, sizes = set(map(_identity_of, executions)), set(map(_memory_of, executions))
    if len(identities) == 1 and len(sizes) == 1:
        # A column per getter: no key tuple per execution, nor zip's iterator per execution (tracked objects
        # enough to set off a young collection in a batch of 40 tiny runs).
        exec_s, in_bytes, out_bytes = (list(map(get, executions)) for get in _columns)
        return {(identities.pop(), sizes.pop()): (exec_s, in_bytes, out_bytes)}
    columns: dict[SummaryKey, tuple[list[float], list[float], list[float]]] = {}
    for identity, memory_mb, exec_s, in_bytes, out_bytes in executions:
        column = columns.get((identity, memory_mb))
        if column is None:
            column = columns[(identity, memory_mb)] = ([], [], [])
        column[0].append(exec_s)
        column[1].append(in_bytes)
        column[2].append(out_bytes)
    return columns


def _doc(doc: str, blob: bytes | None) -> dict[str, Any] | None:
    """A run document from its row: the JSON in ``doc``, or for a raw run (``doc`` empty) the one in its blob.

    None, logged, for a raw run that cannot be read: a listing of runs goes on without it.
    """
    if doc or blob is None:
        found: dict[str, Any] = json.loads(doc)
        return found
    try:
        return raw.doc_of(blob)
    except MetadataError as exc:
        log.warning("a run left out of the runs listed: %s", exc)
        return None


def _of_functions(identities: Iterable[str] | None) -> tuple[str, list[str]] | None:
    """The WHERE clause (on a table aliased ``t`` with an ``identity`` column) and its arguments that keep
    the rows of ``identities`` (all rows when None); None when ``identities`` is empty: nothing matches."""
    if identities is None:
        return "", []
    wanted = sorted(set(identities))
    if not wanted:
        return None
    return f"WHERE t.identity IN ({', '.join('?' * len(wanted))})", wanted


def _stored(doc: str, blob: bytes) -> StoredRun:
    """The run of a row of this schema: its document and trace, or a raw run's (``doc`` empty), expanded."""
    return StoredRun(json.loads(doc), blob) if doc else StoredRun(*raw.expand(blob))


def _nothing() -> None:
    """The job that has the writer run a batch, after which it writes the stores' pending saves."""
