"""The in-process store of the embedded default.

Values are kept as the Python objects the tasks returned: no pickling, so the
embedded path stays as fast as a thread hand-off. One lock guards the fan-in
state; plain reads and writes of the value dict rely on dict operations being
atomic. Every ``memory://<name>`` URL names one store per process, so the
client and the worker threads of a run share it.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fanflow.store.base import FAILED, MISSING, Claim

_SWEEP_EVERY_S = 30.0


def sizeof(value: Any) -> int:
    """Bytes a value would take in a store: exact for buffers, a shallow estimate otherwise."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return sys.getsizeof(value)


class _Subscription:
    def __init__(self, store: MemoryStore, channel: str) -> None:
        self._store = store
        self._channel = channel
        self.queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def get(self, timeout: float) -> bytes | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._store._unsubscribe(self._channel, self)


class MemoryStore:
    """A :class:`fanflow.store.Store` living in this process's memory."""

    keeps_objects = True

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._values: dict[str, Any] = {}
        self._sets: dict[str, set[int]] = {}
        self._claims: dict[str, tuple[str, float]] = {}
        self._lists: dict[str, list[bytes]] = {}
        self._streams: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._expiry: dict[str, float] = {}
        self._subs: dict[str, list[_Subscription]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._next_sweep = time.monotonic() + _SWEEP_EVERY_S

    # -- values -----------------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> tuple[list[Any], list[int]]:
        values = self._values
        got = [values.get(k, MISSING) for k in keys]
        return got, [0 if v is MISSING else sizeof(v) for v in got]

    def dumps(self, value: Any) -> tuple[Any, int]:
        return value, sizeof(value)

    def put_many(self, items: Mapping[str, Any], ttl_s: int) -> None:
        self._values.update(items)
        self._expire_later(items, ttl_s)

    def finish(
        self,
        puts: Mapping[str, Any],
        claims: Sequence[Claim],
        owner: str,
        ttl_s: int,
        lease_ms: int,
        publish: Sequence[tuple[str, bytes]] = (),
    ) -> list[bool]:
        if puts:
            self.put_many(puts, ttl_s)
        won: list[bool] = []
        if claims:
            deadline = time.monotonic() + lease_ms / 1000
            with self._lock:
                sets, held = self._sets, self._claims
                for c in claims:
                    members = sets.get(c.deps_key)
                    if members is None:
                        members = sets[c.deps_key] = set()
                    members.add(c.member)
                    ok = len(members) >= c.indegree and c.claim_key not in held
                    if ok:
                        held[c.claim_key] = (owner, deadline)
                    won.append(ok)
        for channel, message in publish:
            self.publish(channel, message)
        return won

    def renew_leases(self, claim_keys: Sequence[str], owner: str, lease_ms: int) -> None:
        deadline = time.monotonic() + lease_ms / 1000
        with self._lock:
            for key in claim_keys:
                if self._claims.get(key, ("",))[0] == owner:
                    self._claims[key] = (owner, deadline)

    # -- run state ----------------------------------------------------------------
    def fail_run(self, status_key: str, errors_key: str, record: bytes, ttl_s: int, channel: str) -> None:
        with self._lock:
            self._lists.setdefault(errors_key, []).append(record)
            self._values[status_key] = FAILED
        self.publish(channel, b"failed")

    def set_status(self, status_key: str, status: str, ttl_s: int) -> None:
        self._values[status_key] = status
        self._expire_later((status_key,), ttl_s)

    def get_status(self, status_key: str) -> str | None:
        value = self._values.get(status_key)
        return value if isinstance(value, str) else None

    def read_list(self, key: str) -> list[bytes]:
        return list(self._lists.get(key, ()))

    # -- messages -------------------------------------------------------------------
    def publish(self, channel: str, message: bytes) -> None:
        for sub in self._subs.get(channel, ()):
            sub.queue.put(message)

    def subscribe(self, channel: str) -> _Subscription:
        sub = _Subscription(self, channel)
        with self._lock:
            self._subs.setdefault(channel, []).append(sub)
        return sub

    def _unsubscribe(self, channel: str, sub: _Subscription) -> None:
        with self._lock:
            subs = self._subs.get(channel, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._subs.pop(channel, None)

    def append_events(self, stream: str, events: Sequence[Mapping[str, Any]], ttl_s: int) -> None:
        with self._lock:
            entries = self._streams.setdefault(stream, [])
            entries.extend((f"{next(self._ids)}-0", dict(e)) for e in events)

    def read_events(self, stream: str, after: str = "0", count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        after_n = int(after.split("-", 1)[0])
        entries = self._streams.get(stream, [])
        out = [e for e in entries if int(e[0].split("-", 1)[0]) > after_n]
        return out[:count] if count is not None else out

    # -- lifetime -------------------------------------------------------------------
    def delete(self, keys: Sequence[str]) -> int:
        found = 0
        with self._lock:
            for key in keys:
                for table in (self._values, self._sets, self._claims, self._lists, self._streams):
                    if table.pop(key, MISSING) is not MISSING:
                        found += 1
                        break
                self._expiry.pop(key, None)
        return found

    def _expire_later(self, keys: Any, ttl_s: int) -> None:
        now = time.monotonic()
        deadline = now + ttl_s
        expiry = self._expiry
        for key in keys:
            expiry[key] = deadline
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY_S
            self.delete([k for k, d in list(expiry.items()) if d <= now])

    def key_count(self) -> int:
        """Keys currently held (used by tests to prove cleanup)."""
        return sum(len(t) for t in (self._values, self._sets, self._claims, self._lists))

    def close(self) -> None:
        """Nothing to release: the store lives as long as the process."""
