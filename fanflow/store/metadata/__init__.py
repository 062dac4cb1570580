"""Metadata stores: run history and running summaries, opened by URL with :func:`open_metadata`.

``sqlite:///path.db`` (the embedded default, ``.fanflow/metadata.db``) or
``redis://host:port/db``; ``none`` turns recording off. Opened stores are
shared per process and per URL, like run stores.

Writes can be deferred with :func:`defer`: one background thread runs them in
order, so recording a run's history never delays ``compute()``. Every read
through :func:`open_metadata` first waits for the deferred writes (so this
process always reads what it wrote), and the interpreter waits for them at
exit (so no history is lost). The SQLite store also holds saves in memory for
a moment, to write several in one transaction; :func:`drain` and exit write
them.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
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
"""How long the writer lets deferred writes gather after the first one, before it runs them as one batch."""

HANDOFF_S = 0.005
"""Longest wait of the thread that woke the idle writer for it to take the GIL and go back to sleep (it took
44 us median, 212 us at most, of 200 on a quiet 2-core machine): a caller's wall time pays at most this per
batch of :data:`BATCH_S` when no core is free for the writer."""


class _Writer:
    """One daemon thread running deferred jobs in submission order, in batches.

    Submitting a job only appends it to a queue. The thread is woken by the
    first job after it went idle, waits :data:`BATCH_S` for more, runs every
    job queued, then has the stores write what they hold (:func:`_flush_stores`):
    a stream of small runs costs one wake-up and one transaction per batch,
    not a hand-off between threads per run. :meth:`drain` cuts the wait short.

    The thread that wakes it waits (at most :data:`HANDOFF_S`) until it is past
    its wake-up and asleep again for the batch: woken, it needs the GIL, and a
    caller running call after call (``dask.compute`` in a loop) holds it but
    for short releases; each of those woke the waiting thread in vain (one to
    two per 1-task call) until the next forced switch, 50 ms later under the
    threads platform, which cost 25-35 us of the writer's CPU and about as
    much of the caller's per call of such a burst.
    """

    def __init__(self) -> None:
        self._jobs: collections.deque[Callable[[], None] | threading.Event] = collections.deque()
        self._wake = threading.Event()
        self._idle = False  # the thread waits for a first job, with no deadline
        self._busy = False  # the thread runs a batch (from its first job until its stores are written)
        self._draining = 0  # callers of drain() waiting: run the batch without waiting for more
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._awake: threading.Event | None = None  # set once the thread woken from idle is past its wake-up

    def submit(self, job: Callable[[], None] | threading.Event) -> None:
        """Queue ``job``; an Event is set once every job queued before it ran and its batch was written."""
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
        while True:
            awake = self._awake = threading.Event()
            self._idle = True
            if not jobs:
                self._wake.wait()
            self._idle = False
            self._busy = True
            self._wake.clear()
            awake.set()
            if not self._draining:
                self._wake.wait(BATCH_S)  # let a batch gather; a drain sets the event
            done: list[threading.Event] = []
            while jobs:
                job = jobs.popleft()
                if isinstance(job, threading.Event):
                    done.append(job)
                    continue
                try:
                    job()
                except Exception:  # a job reports its own failures; this guards the thread
                    log.exception("a deferred metadata write failed")
            try:
                _flush_stores()
            except Exception:
                log.exception("writing the metadata stores' held saves failed")
            finally:
                self._busy = False
                for event in done:
                    event.set()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted so far ran and its batch was written; False if ``timeout`` passed first."""
        if self._thread is None or threading.current_thread() is self._thread:
            return True
        if not self._jobs and not self._busy:
            return True
        done = threading.Event()
        with self._lock:
            self._draining += 1
        try:
            self.submit(done)
            self._wake.set()
            finished = done.wait(timeout)
        finally:
            with self._lock:
                self._draining -= 1
        if not finished:
            log.warning("gave up waiting for deferred history writes after %.0f s", timeout or 0)
        return finished

    def forget_parent(self) -> None:
        """In a child made by ``fork``: start afresh. The parent's thread did not come along (a drain would
        wait for it in vain, 60 s at exit), its queued jobs are the parent's to run (here they would
        record its runs twice), and its locks may have been held by a thread that is gone."""
        self._jobs.clear()
        self._wake = threading.Event()
        self._idle = self._busy = False
        self._draining = 0
        self._lock = threading.Lock()
        self._thread = None
        self._awake = None

    def runs_here(self) -> bool:
        """Whether the calling thread is the writer's (its batch's stores are written when the batch ends)."""
        return threading.current_thread() is self._thread


_writer = _Writer()


def _flush_stores() -> None:
    """Have the stores that batch their writes (SQLite) write what they hold."""
    for store in list(_open.values()):
        flush = getattr(store, "flush", None)
        if flush is not None:
            flush()


def in_writer() -> bool:
    """Whether the calling thread is the background writer, which has the stores write after each batch."""
    return _writer.runs_here()


def defer(job: Callable[[], None]) -> None:
    """Run ``job`` (a write to a metadata store) in the background, in submission order, within about BATCH_S."""
    _writer.submit(job)


def drain(timeout: float | None = None) -> bool:
    """Wait for every deferred write, and have the stores write what they hold back; True when none is left."""
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
