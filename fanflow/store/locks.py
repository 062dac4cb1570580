"""A lock for the short critical sections that threads of one process enter many times per task."""

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
