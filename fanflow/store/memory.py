"""The in-process store of the embedded default.

Values are kept as the Python objects the tasks returned: no pickling, so the
embedded path costs a dict write rather than a serialization. Like Redis, one
keyspace holds every kind of entry (values, fan-in sets, claims, lists,
streams), so deleting a run's keys is one pop per key. One lock guards the
compound fan-in step; plain reads and writes rely on dict operations being
atomic. Every ``memory://<name>`` URL names one store per process, so the client
and the worker threads of a run share it.

Sizes feed metrics only, so they are estimates that cost O(1) per value and are
taken once, by :meth:`MemoryStore.dumps`: the stored form is a :class:`_Sized`
holding the object and its size, and reads hand both back without measuring
again. :func:`sizeof` never walks an object's contents (``sys.getsizeof`` of a
DataFrame measures every string in it).

A run keeps an entry or three per task here until it ends (its output, the
fan-in set of a dependent, the claim on it), so they are kept out of the
garbage collector's sight where they can be: a number, a string or bytes is
stored as itself (measured again on a read, in O(1)), a claim or lease is a
plain ``(owner, deadline)`` tuple, and the fan-in set of a task with few
dependencies a tuple of its members; the collector stops tracking tuples of
such atomic items. Every tracked object that outlives the young generations
brings the next full collection nearer (CPython runs one when they reach a
quarter of the long-lived objects): a tree reduction of 16,383 tasks left
24,600 such objects here per run, about a third of its share, and ran one or
two full collections of 20-50 ms each.
"""

from __future__ import annotations

import bisect
import itertools
import queue
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fanflow.store.base import BEGIN_DUPLICATE, BEGIN_RUN, BEGIN_STOPPED, FAILED, LEASE_DONE, MISSING, RUNNING, Claim
from fanflow.store.locks import YieldingLock

_SWEEP_EVERY_S = 30.0
_FIXED_SIZE = (int, float, bool, type(None), complex)
_STORED_AS_IS = frozenset((*_FIXED_SIZE, str, bytes))
"""Values stored without a :class:`_Sized` (not tracked by the garbage collector; :func:`sizeof` is O(1))."""
_SMALL_FAN_IN = 16
"""Fan-in sets of up to this many members are tuples (untracked, and a lookup is a short scan)."""


def sizeof(value: Any) -> int:
    """Bytes a value takes, in O(1): exact for buffers and arrays, a shallow estimate otherwise.

    bytes-likes count their length, a str its length (in characters: encoding it
    would be O(n)), numpy arrays and pandas Series/Index their ``nbytes``, a pandas
    DataFrame the ``nbytes`` of its columns' buffers (object columns count 8
    bytes per pointer, not the objects), a dict subclass with a ``__sizeof__`` of
    its own (which may walk its contents) itself plus its values by these rules,
    anything else ``sys.getsizeof``.
    """
    kind = type(value)
    if kind in _FIXED_SIZE:
        return sys.getsizeof(value)
    if kind is bytes or kind is bytearray or kind is str:
        return len(value)
    if kind is memoryview:
        return value.nbytes
    # Asked of the class first: a pandas DataFrame has no ``nbytes``, and asking the instance
    # goes through its ``__getattr__``, a column lookup (4-5 us, more than the sizing itself).
    if getattr(kind, "nbytes", None) is not None:
        nbytes = value.nbytes
        if isinstance(nbytes, int):
            return nbytes
    columns = getattr(value, "_mgr", None)
    if columns is not None:
        return _frame_nbytes(value)
    if isinstance(value, dict) and kind.__sizeof__ is not dict.__sizeof__:
        # A dict whose own __sizeof__ walks its values deeply (Dask's shuffle groups of
        # frames: about 5 ms each): the dict, plus each value sized by these rules.
        return dict.__sizeof__(value) + sum(map(sizeof, value.values()))
    return sys.getsizeof(value)


def _frame_nbytes(frame: Any) -> int:
    """Shallow bytes of a pandas DataFrame: its columns' buffers and its index (``memory_usage(deep=False)``).

    Summed from the block manager's arrays: ``memory_usage`` builds a Series per
    call, 0.3-1 ms in pandas 3, which was most of a shuffle's CPU (a few thousand
    frames). Same numbers; ``memory_usage`` where the manager has no ``arrays``.
    """
    try:
        arrays = frame._mgr.arrays
        return sum(a.nbytes for a in arrays) + int(frame.index.nbytes)
    except (AttributeError, TypeError, ValueError):
        pass
    try:
        return int(frame.memory_usage(index=True, deep=False).sum())
    except (AttributeError, TypeError, ValueError):
        return object.__sizeof__(frame)


class _Sized:
    """A stored value with the size :meth:`MemoryStore.dumps` measured, so reads never measure."""

    __slots__ = ("size", "value")

    def __init__(self, value: Any, size: int) -> None:
        self.value = value
        self.size = size


class _Members(set[int]):
    """A fan-in set of more than ``_SMALL_FAN_IN`` members: the upstream tasks that reported done."""


def _is_lease(entry: Any) -> bool:
    """Whether ``entry`` is a claim or lease: an exact ``(owner, deadline)`` tuple (see the module docstring)."""
    return type(entry) is tuple


class _List(list[bytes]):
    """An append-only list (error records)."""


class EventStream:
    """Event batches with increasing sequence numbers (ids ``<seq>-0``)."""

    __slots__ = ("batches", "seqs")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.batches: list[Sequence[Mapping[str, Any]]] = []


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
        self._data: dict[str, Any] = {}
        self._expiry: dict[str, float] = {}
        self._subs: dict[str, list[_Subscription]] = {}
        self._lock = YieldingLock()  # worker threads take it several times per task
        self._seq = itertools.count(1)
        self._next_sweep = time.monotonic() + _SWEEP_EVERY_S

    # -- values -----------------------------------------------------------------
    def dumps(self, value: Any) -> tuple[Any, int]:
        size = sizeof(value)
        if type(value) in _STORED_AS_IS:
            return value, size
        return _Sized(value, size), size

    def get_many(self, keys: Sequence[str]) -> tuple[list[Any], list[int]]:
        data = self._data
        values: list[Any] = []
        sizes: list[int] = []
        for key in keys:
            got = data.get(key, MISSING)
            if type(got) is _Sized:
                values.append(got.value)
                sizes.append(got.size)
            else:  # MISSING, a number or string (see dumps), or a value put without dumps (allowed for plain objects)
                values.append(got)
                sizes.append(0 if got is MISSING else sizeof(got))
        return values, sizes

    def put_many(self, items: Mapping[str, Any], ttl_s: int) -> None:
        self._data.update(items)
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
            # Claims and fan-in sets last the run: the client deletes them by name, and they live
            # and die with this process anyway, so only values carry an expiry here.
            deadline = float("inf")
            deadline_ttl = time.monotonic() + ttl_s
            data = self._data
            with self._lock:
                for c in claims:
                    members = data.get(c.deps_key, ())
                    if c.member not in members:
                        if c.only_if_last and len(members) + 1 < c.indegree:
                            won.append(False)
                            continue
                        if type(members) is tuple and len(members) < _SMALL_FAN_IN:
                            members = data[c.deps_key] = (*members, c.member)
                        else:
                            if type(members) is tuple:
                                members = data[c.deps_key] = _Members(members)
                            members.add(c.member)
                    held = data.get(c.claim_key)
                    ok = len(members) >= c.indegree and (held is None or held[0] == owner)
                    if ok:
                        if held is None:
                            data[c.claim_key] = (owner, deadline)
                    elif c.output_key is not None:
                        data[c.output_key] = c.output
                        self._expiry[c.output_key] = deadline_ttl
                    won.append(ok)
        for channel, message in publish:
            self.publish(channel, message)
        return won

    def renew_leases(self, lease_keys: Sequence[str], owner: str, lease_ms: int) -> None:
        deadline = time.monotonic() + lease_ms / 1000
        with self._lock:
            for key in lease_keys:
                held = self._data.get(key)
                if not (_is_lease(held) and held[0] == LEASE_DONE):  # a late beat never undoes done
                    self._data[key] = (owner, deadline)

    def end_leases(self, lease_keys: Sequence[str], ttl_s: int) -> None:
        for key in lease_keys:
            self._data[key] = (LEASE_DONE, float("inf"))
        self._expire_later(lease_keys, ttl_s)

    def read_leases(self, lease_keys: Sequence[str]) -> list[str | None]:
        now = time.monotonic()
        out: list[str | None] = []
        for key in lease_keys:
            lease = self._data.get(key)
            out.append(lease[0] if _is_lease(lease) and lease[1] > now else None)
        return out

    def take_claim(self, claim_key: str, owner: str, ttl_s: int) -> None:
        self._data[claim_key] = (owner, float("inf"))
        self._expiry[claim_key] = time.monotonic() + ttl_s

    # -- run state ----------------------------------------------------------------
    def fail_run(self, status_key: str, errors_key: str, record: bytes, ttl_s: int, channel: str) -> None:
        with self._lock:
            if status_key not in self._data:
                return  # the run ended or lost its state: a late failure brings nothing back
            records = self._data.get(errors_key)
            if not isinstance(records, _List):
                records = self._data[errors_key] = _List()
            records.append(record)
            self._data[status_key] = FAILED
        self._expire_later((status_key, errors_key), ttl_s)
        self.publish(channel, b"failed")

    def set_status(self, status_key: str, status: str, ttl_s: int) -> None:
        self._data[status_key] = status
        self._expiry[status_key] = time.monotonic() + ttl_s

    def begin(self, status_key: str, started_key: str, inv_id: str, token: str, ttl_s: int, redelivered: bool) -> str:
        # No lock: each step is one dict operation, atomic under the GIL. Of two deliveries of an
        # invocation, the one whose setdefault comes first records its token; the other finds it.
        data = self._data
        if data.get(status_key) != RUNNING:
            return BEGIN_STOPPED
        started = data.get(started_key)
        if started is None:  # the run's first invocation: its entry expires with the other run keys
            started = data.setdefault(started_key, {})
            self._expiry[started_key] = time.monotonic() + ttl_s
        if started.setdefault(inv_id, token) != token:
            if not redelivered:
                return BEGIN_DUPLICATE
            started[inv_id] = token
        return BEGIN_RUN

    def get_status(self, status_key: str) -> str | None:
        value = self._data.get(status_key)
        return value if isinstance(value, str) else None

    def read_list(self, key: str) -> list[bytes]:
        value = self._data.get(key)
        return list(value) if isinstance(value, _List) else []

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
        # The batch is kept as the worker built it (no copy): it is never mutated after a flush.
        with self._lock:
            entry = self._data.get(stream)
            if not isinstance(entry, EventStream):
                entry = self._data[stream] = EventStream()
            entry.seqs.append(next(self._seq))
            entry.batches.append(events)
        self._expiry[stream] = time.monotonic() + ttl_s

    def read_events(self, stream: str, after: str = "0", count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        entry = self._data.get(stream)
        if not isinstance(entry, EventStream):
            return []
        start = bisect.bisect_right(entry.seqs, int(after.split("-", 1)[0]))
        out = [
            (f"{seq}-0", event)
            for seq, batch in zip(entry.seqs[start:], entry.batches[start:], strict=True)
            for event in batch
        ]
        return out[:count] if count is not None else out

    def read_event_batches(self, stream: str, after: str = "0") -> tuple[list[Sequence[Mapping[str, Any]]], str]:
        entry = self._data.get(stream)
        if not isinstance(entry, EventStream):
            return [], after
        with self._lock:  # a sequence number and its batch are appended together
            if after == "0" and entry.seqs:  # from the start (a tiny run's recording reads it once): no search
                return list(entry.batches), f"{entry.seqs[-1]}-0"
            start = bisect.bisect_right(entry.seqs, int(after.split("-", 1)[0]))
            seqs, batches = entry.seqs[start:], entry.batches[start:]
        if not seqs:
            return [], after
        return batches, f"{seqs[-1]}-0"

    def take_stream(self, stream: str) -> EventStream | None:
        """Remove the event stream ``stream`` and return it (None if there is none).

        A read of every batch and the stream's delete under one lock: a tiny run's
        recording reads its events once and keeps them for the history writer (two
        calls and four lock entries cost about 2 us of a 1-task call).
        :meth:`put_back_stream` undoes it.
        """
        with self._lock:
            entry = self._data.pop(stream, None)
            deadline = self._expiry.pop(stream, None)
            if type(entry) is EventStream or entry is None:
                return entry
            self._data[stream] = entry  # not a stream: left as it was
            if deadline is not None:
                self._expiry[stream] = deadline
        return None

    def put_back_stream(self, stream: str, entry: EventStream, ttl_s: int) -> None:
        """Put a stream taken by :meth:`take_stream` back, before any batch appended to it since (their
        sequence numbers come later), so readers find every batch under the ids they had."""
        with self._lock:
            later = self._data.get(stream)
            if type(later) is EventStream:
                entry.seqs += later.seqs
                entry.batches += later.batches
            self._data[stream] = entry
        self._expiry[stream] = time.monotonic() + ttl_s

    # -- lifetime -------------------------------------------------------------------
    def delete(self, keys: Sequence[str]) -> int:
        if len(keys) == 1:  # a run's event stream once read: the C loops below cost 2 us in a call's loop
            key = keys[0]
            with self._lock:
                found = self._data.pop(key, MISSING)
                self._expiry.pop(key, None)
            return int(found is not MISSING)
        # The pops run as C loops (map): a run's cleanup deletes a dozen keys or thousands.
        missing = itertools.repeat(MISSING)
        with self._lock:
            gone = list(map(self._data.pop, keys, missing))
            deque(map(self._expiry.pop, keys, missing), maxlen=0)
        return len(gone) - gone.count(MISSING)

    def _expire_later(self, keys: Iterable[str], ttl_s: int) -> None:
        """Give ``keys`` an expiry ``ttl_s`` from now, and sweep the expired keys every ``_SWEEP_EVERY_S``.

        A write of one key sets its expiry itself (a call, a tuple and a loop less, four
        times per small run); the sweep then waits for the next write of values (every
        task's), of several keys or of a failure.
        """
        now = time.monotonic()
        deadline = now + ttl_s
        expiry = self._expiry
        for key in keys:
            expiry[key] = deadline
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY_S
            self.delete([k for k, d in list(expiry.items()) if d <= now])

    def stored_keys(self) -> list[str]:
        """Every key currently held (tests use it to prove cleanup)."""
        return list(self._data)

    def close(self) -> None:
        """Nothing to release: the store lives as long as the process."""
