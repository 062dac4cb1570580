"""Leases of long-running tasks, refreshed by one heartbeat thread per process.

A task's lease (``keys.lease``) tells the client that the task's worker is
alive. Writing a lease for every task would cost a store command per task, so
the heartbeat writes one only for tasks still running ``lease_ms / 3`` after
they started, and then every ``lease_ms / 3``. When such a task finishes, its
worker marks the lease ``done``. The client re-invokes a task whose lease it saw
and that then expired without ``done``: its worker died in the middle of it.
Short tasks lost with their worker are redelivered by the platform instead
(see docs/reliability.md).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass

from fanflow.store.base import Store

log = logging.getLogger(__name__)

TICK_S = 0.05


@dataclass(slots=True)
class _Entry:
    store: Store
    lease_key: str
    owner: str
    lease_ms: int
    next_beat: float
    beats: int = 0


class Heartbeat:
    """Tracks running tasks and renews the leases of the long ones."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def track(self, store: Store, lease_key: str, owner: str, lease_ms: int) -> int:
        """Start watching a task; returns the token to :meth:`untrack` it with."""
        token = next(self._ids)
        entry = _Entry(store, lease_key, owner, lease_ms, time.monotonic() + lease_ms / 3000)
        with self._lock:
            self._entries[token] = entry
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="fanflow-heartbeat", daemon=True)
                self._thread.start()
        return token

    def untrack(self, token: int) -> bool:
        """Stop watching; True if a lease was written or is being written (the caller then marks it done)."""
        with self._lock:
            entry = self._entries.pop(token, None)
        return entry is not None and entry.beats > 0

    def _beat(self) -> None:
        while True:
            time.sleep(TICK_S)
            now = time.monotonic()
            with self._lock:
                due = [e for e in self._entries.values() if e.next_beat <= now]
                for entry in due:
                    # Counted before the write: a task that ends while it is in flight still marks
                    # its lease done (and the store never lets a late renewal undo done).
                    entry.beats += 1
            for entry in due:
                try:
                    entry.store.renew_leases([entry.lease_key], entry.owner, entry.lease_ms)
                except Exception:  # the store may be away for a moment; the next beat tries again
                    log.warning("could not renew the lease %s", entry.lease_key, exc_info=True)
                entry.next_beat = now + entry.lease_ms / 3000


heartbeat = Heartbeat()
"""The process's heartbeat."""
