"""Locks for the short critical sections that threads of one process enter many times per task."""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable


class YieldingLock:
    """A mutual-exclusion lock whose waiters yield the GIL instead of sleeping on the lock.

    With a plain ``threading.Lock`` taken several times per task by two worker
    threads, a thread switched out while holding it makes the other block on
    it; from then on each release wakes the waiter, which takes the GIL from
    the holder, and the two hand the GIL over at every acquisition (a lock
    convoy). A tree reduction of 16,383 tasks on the embedded default made
    20,000-45,000 context switches and used twice the CPU in about two runs of
    three, against 60 switches in the others. A waiter here tries the lock, and
    while it is held gives the GIL up (``time.sleep(0)``) and tries again once it
    has it back: the holder is never woken by a release and runs on to its next
    switch interval. Meant for critical sections of a few dict operations,
    never one that blocks: a waiter spins while the holder runs.

    ``acquire``/``release`` make it usable as the lock of a ``threading.Condition``.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        acquire = self._lock.acquire
        while not acquire(False):
            time.sleep(0)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (without ``blocking``: only if it is free); whether it was taken."""
        if not blocking:
            return self._lock.acquire(False)
        self.__enter__()
        return True

    def release(self) -> None:
        self._lock.release()


class YieldingSemaphore:
    """A counting semaphore whose free slots are tokens in a ``queue.SimpleQueue``.

    ``threading.Semaphore`` guards its count with a plain lock, taken twice per
    acquire-and-release, so threads that take a slot per task (the threads
    platform's worker slots) convoy on it as on any plain lock: a thread
    switched out inside ``release`` (which calls Python code, ``notify``, with
    the lock held) leaves the other to sleep on the lock, and from then on
    every slot taken hands the GIL over. A ``SimpleQueue`` takes and gives a
    token in one C call under the GIL, with no lock of its own unless a thread
    waits for a token (then only that thread sleeps, until a release wakes it).
    That is also cheaper: a 1-task run on the caller takes and gives back a slot
    twice, 8 entries into Python lock code and a ``Condition.notify`` before.
    """

    __slots__ = ("_tokens", "release")

    def __init__(self, value: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(value):
            self._tokens.put(None)
        self.release: Callable[[], None] = functools.partial(self._tokens.put, None)
        """Give a slot back, waking one thread waiting for it (a C call: no Python frame)."""

    def acquire(self, blocking: bool = True) -> bool:
        """Take a slot, waiting for one if ``blocking``; whether one was taken."""
        try:
            self._tokens.get(blocking)
        except queue.Empty:
            return False
        return True

    def __enter__(self) -> None:
        self._tokens.get()

    def __exit__(self, *exc: object) -> None:
        self._tokens.put(None)
