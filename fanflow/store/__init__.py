"""Store layer: the :class:`Store` protocol, key names, and stores opened by URL."""

from __future__ import annotations

import threading

from fanflow.errors import ConfigError
from fanflow.store.base import CANCELLED, FAILED, MISSING, RUNNING, Claim, Store, Subscription

__all__ = ["CANCELLED", "FAILED", "MISSING", "RUNNING", "Claim", "Store", "Subscription", "open_store"]

_open: dict[str, Store] = {}
_lock = threading.Lock()


def open_store(url: str, retry_s: float = 10.0) -> Store:
    """The store for ``url``, shared per process: ``memory://[name]``, ``redis://``, ``rediss://``.

    ``retry_s`` bounds how long a lost connection is retried (set by the first opener).
    """
    store = _open.get(url)
    if store is not None:
        return store
    with _lock:
        store = _open.get(url)
        if store is None:
            store = _new_store(url, retry_s)
            _open[url] = store
    return store


def _new_store(url: str, retry_s: float) -> Store:
    scheme = url.split("://", 1)[0]
    if scheme == "memory":
        from fanflow.store.memory import MemoryStore

        return MemoryStore(url)
    if scheme == "redis+cluster":
        from fanflow.store import redis_cluster

        return redis_cluster.connect(url, retry_s)
    if scheme in ("redis", "rediss"):
        from fanflow.store import redis as redis_store

        return redis_store.connect(url, retry_s)
    raise ConfigError(f"unknown store URL scheme {scheme!r}; use memory://, redis://, rediss:// or redis+cluster://")
