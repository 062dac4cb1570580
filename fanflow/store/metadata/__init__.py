"""Metadata stores: run history and running summaries, opened by URL with :func:`open_metadata`.

``sqlite:///path.db`` (the embedded default, ``.fanflow/metadata.db``) or
``redis://host:port/db``; ``none`` turns recording off. Opened stores are
shared per process and per URL, like run stores.

Writes can be deferred with :func:`defer`: one background thread runs them in
order, in batches, so recording a run's history never delays ``compute()``.
Every read through :func:`open_metadata` first runs the deferred writes (so
this process always reads what it wrote), and so does the interpreter at exit
(so no history is lost), in the reading or exiting thread itself. The SQLite
store also holds saves in memory for a moment, to write several in one
transaction; :func:`drain` and exit write them.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
from collections.abc import Callable

from fanflow.config import mask_url
from fanflow.store.metadata.base import (
    MetadataError,
    MetadataStore,
    RunNotFoundError,
    StoredRun,
    Summary,
    SummaryKey,
)

__all__ = [
    "MetadataError",
    "MetadataStore",
    "RunNotFoundError",
    "StoredRun",
    "Summary",
    "SummaryKey",
    "defer",
    "drain",
    "is_disabled",
    "open_metadata",
]

_open: dict[str, MetadataStore] = {}
_by_url: dict[tuple[str, str], MetadataStore] = {}  # (url, working directory when relative) -> store
_lock = threading.Lock()
log = logging.getLogger(__name__)

EXIT_DRAIN_S = 60.0
"""Longest wait at interpreter exit for deferred history writes."""


BATCH_S = 0.2
"""How long the writer lets deferred writes gather before it runs them as one batch."""

IDLE_AFTER_S = 5.0
"""How long the writer goes on waking every :data:`BATCH_S` without finding a job before it sleeps until one is
submitted (which then wakes it)."""

HANDOFF_S = 0.005
"""Longest wait of the thread that woke the idle writer for it to take the GIL and go back to sleep (it took
44 us median, 212 us at most, of 200 on a quiet 2-core machine): a caller's wall time pays at most this per
wake-up when no core is free for the writer."""


class _Writer:
    """One daemon thread running deferred jobs in submission order, in batches.

    Submitting a job only appends it to a queue. While jobs come, the thread
    wakes every :data:`BATCH_S`, runs every job queued, then has the stores
    write what they hold (:func:`_flush_stores`): a stream of small runs costs
    one transaction per batch and no hand-off between threads at all. After
    :data:`IDLE_AFTER_S` without a job it sleeps until the next one wakes it.

    :meth:`drain` runs the jobs queued in the calling thread (a batch runs in
    one thread at a time: a drain that finds the writer's batch running waits
    for it): waking the writer and waiting for it cost a caller that drains
    after a few calls (a reader, ``drain()`` in a loop, exit) two thread
    switches per batch, about 40 us of CPU, more than the batch's own writes.

    The thread that wakes a sleeping writer waits (at most :data:`HANDOFF_S`)
    until it is past its wake-up and asleep again for the batch: woken, it
    needs the GIL, and a caller running call after call (``dask.compute`` in a
    loop) holds it but for short releases; each of those woke the waiting
    thread in vain (one to two per 1-task call) until the next forced switch,
    50 ms later under the threads platform, which cost 25-35 us of the
    writer's CPU and about as much of the caller's per call of such a burst.
    """

    def __init__(self) -> None:
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._wake = threading.Event()
        self._idle = False  # the thread waits for a first job, with no deadline
        self._batch = threading.Lock()  # held by the thread running a batch: the writer's, or a draining one
        self._runner: threading.Thread | None = None  # the thread running a batch now
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._awake: threading.Event | None = None  # set once the thread woken from idle is past its wake-up

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``, to run within about :data:`BATCH_S` (or at the next :meth:`drain`)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._serve, name="fanflow-metadata-writer", daemon=True)
                    thread.start()
                    self._thread = thread
        self._jobs.append(job)
        awake = self._awake  # read before _idle: an event of an earlier idle spell is set already
        if self._idle:  # the thread sets it before it looks at the queue a last time: no job is left waiting
            self._wake.set()
            if awake is not None and not self.runs_here():
                awake.wait(HANDOFF_S)

    def _serve(self) -> None:
        jobs = self._jobs
        quiet_since = time.monotonic()
        while True:
            if not jobs and time.monotonic() - quiet_since >= IDLE_AFTER_S:
                awake = self._awake = threading.Event()
                self._idle = True
                if not jobs:
                    self._wake.wait()
                self._idle = False
                self._wake.clear()
                awake.set()
            self._wake.wait(BATCH_S)  # let a batch gather
            if jobs:
                with self._batch:
                    self._run_batch()
                quiet_since = time.monotonic()

    def _run_batch(self) -> None:
        """Run every job queued, then have the stores write what they hold (``_batch`` held)."""
        jobs = self._jobs
        if not jobs:
            return
        self._runner = threading.current_thread()
        try:
            while jobs:
                job = jobs.popleft()
                try:
                    job()
                except Exception:  # a job reports its own failures; this guards the thread
                    log.exception("a deferred metadata write failed")
            try:
                _flush_stores()
            except Exception:
                log.exception("writing the metadata stores' held saves failed")
        finally:
            self._runner = None

    def drain(self, timeout: float | None = None) -> bool:
        """Run every job submitted so far and write its batch, here; False if ``timeout`` passed first (while
        the writer's batch ran)."""
        if self._thread is None or self.runs_here():
            return True
        if not self._batch.acquire(timeout=-1 if timeout is None else timeout):
            log.warning("gave up waiting for deferred history writes after %.0f s", timeout or 0)
            return False
        try:
            self._run_batch()
        finally:
            self._batch.release()
        return True

    def forget_parent(self) -> None:
        """In a child made by ``fork``: start afresh. The parent's thread did not come along, its queued jobs
        are the parent's to run (here they would record its runs twice), and its locks may have been held by
        a thread that is gone."""
        self._jobs.clear()
        self._wake = threading.Event()
        self._idle = False
        self._batch = threading.Lock()
        self._runner = None
        self._lock = threading.Lock()
        self._thread = None
        self._awake = None

    def runs_here(self) -> bool:
        """Whether the calling thread runs a batch now (its stores are written when the batch ends)."""
        return self._runner is threading.current_thread()


_writer = _Writer()


def _flush_stores() -> None:
    """Have the stores that batch their writes (SQLite) write what they hold."""
    for store in list(_open.values()):
        flush = getattr(store, "flush", None)
        if flush is not None:
            flush()


def in_writer() -> bool:
    """Whether the calling thread runs a batch of deferred writes, after which the stores write what they hold."""
    return _writer.runs_here()


def defer(job: Callable[[], None]) -> None:
    """Run ``job`` (a write to a metadata store) in the background, in submission order, within about BATCH_S."""
    _writer.submit(job)


def drain(timeout: float | None = None) -> bool:
    """Run every deferred write here (after a batch the writer runs now), and have the stores write what they
    hold back; True when none is left."""
    done = _writer.drain(timeout)
    _flush_stores()  # saves made outside the writer (a direct save_run) are held too
    return done


_inherited: list[MetadataStore] = []


def _forget_parent() -> None:
    """After ``fork``, in the child: a writer of its own, and stores opened anew (a SQLite connection must
    not be used by two processes). The parent's stores are kept, unused: closing one here could check
    point or remove files the parent still writes."""
    global _lock
    _writer.forget_parent()
    _lock = threading.Lock()
    _inherited.extend(_open.values())
    _open.clear()
    _by_url.clear()


os.register_at_fork(after_in_child=_forget_parent)
atexit.register(drain, EXIT_DRAIN_S)  # registered first, so it runs last: after anything that records a run


def is_disabled(url: str) -> bool:
    """True for the URLs that turn history recording off (``none``, ``none://``)."""
    return url in ("none", "none://")


def open_metadata(url: str, wait: bool = True) -> MetadataStore:
    """The metadata store at ``url``, opened once per process (SQLite files by absolute path).

    First waits for the deferred writes (so this process reads what it wrote),
    unless ``wait`` is False: a caller that only saves need not.
    """
    if is_disabled(url):
        raise MetadataError("metadata='none' turns run history off; pass a sqlite:/// or redis:// URL to read it")
    if wait:
        _writer.drain()
    # Resolving a relative SQLite path stats every directory above it: look the URL up first.
    by_url = (url, os.getcwd() if url.startswith("sqlite:///") and not url.startswith("sqlite:////") else "")
    found = _by_url.get(by_url)
    if found is not None:
        return found
    scheme = url.split("://", 1)[0]
    if scheme == "sqlite":
        from fanflow.store.metadata.sqlite import SQLiteMetadataStore, path_of

        key = f"sqlite:///{path_of(url)}"
    elif scheme in ("redis", "rediss"):
        key = url
    else:
        raise MetadataError(
            f"unknown metadata URL {mask_url(url)!r}; use sqlite:///path.db, redis://host:port/db or none"
        )
    store = _open.get(key)
    if store is not None:
        _by_url[by_url] = store
        return store
    with _lock:
        store = _open.get(key)
        if store is None:
            if scheme == "sqlite":
                store = SQLiteMetadataStore(url)
            else:
                from fanflow.store.metadata.redis import RedisMetadataStore

                store = RedisMetadataStore(url)
            _open[key] = store
    _by_url[by_url] = store
    return store
