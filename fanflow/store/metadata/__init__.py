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
import logging
import os
import queue
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


class _Writer:
    """One daemon thread running deferred jobs in submission order."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="fanflow-metadata-writer", daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # a job reports its own failures; this guards the thread
                log.exception("a deferred metadata write failed")
            finally:
                self._jobs.task_done()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job ran; False if ``timeout`` passed first."""
        if self._thread is None or threading.current_thread() is self._thread:
            return True
        done = threading.Event()

        def wait_all() -> None:
            self._jobs.join()
            done.set()

        threading.Thread(target=wait_all, daemon=True).start()
        finished = done.wait(timeout)
        if not finished:
            log.warning("gave up waiting for deferred history writes after %.0f s", timeout or 0)
        return finished


_writer = _Writer()


def defer(job: Callable[[], None]) -> None:
    """Run ``job`` (a write to a metadata store) in the background, in submission order."""
    _writer.submit(job)


def drain(timeout: float | None = None) -> bool:
    """Wait for every deferred write, and have the stores write what they hold back; True when none is left."""
    done = _writer.drain(timeout)
    for store in list(_open.values()):
        flush = getattr(store, "flush", None)  # stores that batch their writes (SQLite)
        if flush is not None:
            flush()
    return done


atexit.register(drain, EXIT_DRAIN_S)  # registered first, so it runs last: after anything that records a run


def is_disabled(url: str) -> bool:
    """True for the URLs that turn history recording off (``none``, ``none://``)."""
    return url in ("none", "none://")


def open_metadata(url: str) -> MetadataStore:
    """The metadata store at ``url``, opened once per process (SQLite files by absolute path)."""
    if is_disabled(url):
        raise MetadataError("metadata='none' turns run history off; pass a sqlite:/// or redis:// URL to read it")
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
