"""Metadata stores: run history and running summaries, opened by URL with :func:`open_metadata`.

``sqlite:///path.db`` (the embedded default, ``.fanflow/metadata.db``) or
``redis://host:port/db``; ``none`` turns recording off. Opened stores are
shared per process and per URL, like run stores.
"""

from __future__ import annotations

import threading

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
    "is_disabled",
    "open_metadata",
]

_open: dict[str, MetadataStore] = {}
_lock = threading.Lock()


def is_disabled(url: str) -> bool:
    """True for the URLs that turn history recording off (``none``, ``none://``)."""
    return url in ("none", "none://")


def open_metadata(url: str) -> MetadataStore:
    """The metadata store at ``url``, opened once per process (SQLite files by absolute path)."""
    if is_disabled(url):
        raise MetadataError("metadata='none' turns run history off; pass a sqlite:/// or redis:// URL to read it")
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
    return store
