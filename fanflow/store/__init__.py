"""Store layer: the :class:`Store` protocol, key names, and stores opened by URL."""

from __future__ import annotations

import threading

from fanflow.errors import ConfigError
from fanflow.store.base import CANCELLED, FAILED, MISSING, RUNNING, Claim, Store, Subscription

__all__ = ["CANCELLED", "FAILED", "MISSING", "RUNNING", "Claim", "Store", "Subscription", "open_store"]

_open: dict[tuple[str, bytes | None], Store] = {}
_lock = threading.Lock()


def open_store(url: str, retry_s: float = 10.0, secret: bytes | None = None) -> Store:
    """The store for ``url``, shared per process: ``memory://[name]``, ``redis://``, ``rediss://``.

    ``retry_s`` bounds how long a lost connection is retried (set by the first opener).
    Stores that serialize seal every value with ``secret`` and verify it before
    unpickling; openers with different secrets share the connections (and a
    store of objects, ``memory://``, is the same one whatever the secret).
    """
    store = _open.get((url, secret))
    if store is not None:
        return store
    with _lock:
        store = _open.get((url, secret))
        if store is None:
            same_url = next((s for (u, _), s in _open.items() if u == url), None)
            if same_url is None:
                store = _new_store(url, retry_s, secret)
            elif hasattr(same_url, "with_secret"):
                store = same_url.with_secret(secret)
            else:  # a store of objects has nothing to seal: one per URL
                store = same_url
            _open[(url, secret)] = store
    return store


def _new_store(url: str, retry_s: float, secret: bytes | None) -> Store:
    scheme = url.split("://", 1)[0]
    if scheme == "memory":
        from fanflow.store.memory import MemoryStore

        return MemoryStore(url)
    if scheme == "redis+cluster":
        from fanflow.store import redis_cluster

        return redis_cluster.connect(url, retry_s, secret)
    if scheme in ("redis", "rediss"):
        from fanflow.store import redis as redis_store

        return redis_store.connect(url, retry_s, secret)
    raise ConfigError(f"unknown store URL scheme {scheme!r}; use memory://, redis://, rediss:// or redis+cluster://")
