"""Locks for the short critical sections that threads of one process enter many times per task."""

from __future__ import annotations

import threading
import time


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
    """A counting semaphore whose own lock is a :class:`YieldingLock`.

    ``threading.Semaphore`` guards its count with a plain lock, taken twice per
    acquire-and-release, so threads that take a slot per task (the threads
    platform's worker slots) convoy on it as on any plain lock: a thread
    switched out inside ``release`` (which calls Python code, ``notify``, with
    the lock held) leaves the other to sleep on the lock, and from then on
    every slot taken hands the GIL over. Here only a thread that finds no slot
    free sleeps, on a lock of its own (``threading.Condition``'s waiter), until
    a release wakes it.
    """

    __slots__ = ("_free", "_value")

    def __init__(self, value: int) -> None:
        self._free = threading.Condition(YieldingLock())  # type: ignore[arg-type]
        self._value = value

    def acquire(self, blocking: bool = True) -> bool:
        """Take a slot, waiting for one if ``blocking``; whether one was taken."""
        with self._free:
            while not self._value:
                if not blocking:
                    return False
                self._free.wait()
            self._value -= 1
            return True

    def release(self) -> None:
        """Give a slot back, waking one thread waiting for it."""
        with self._free:
            self._value += 1
            self._free.notify()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
