"""The cyclic garbage collector while worker threads run invocations: fewer young collections, fewer promotions.

CPython's collector looks at its youngest generation every 700 allocations (less
deallocations) of tracked objects, moves what survives into the middle
generation and, every 10 of those collections, the middle generation's
survivors into the oldest; once the objects moved there since the last full
collection exceed a quarter of it, it walks the whole heap. A run on the
embedded default keeps objects alive for its length (the DAG's argument
templates, the store's claims and values, the events) and the tasks keep
theirs alive while they run (a pandas frame is a dozen tracked objects), so
at every 700 allocations a good share of the young objects are alive, and
survive: a pandas shuffle of 2,788 tasks moved enough of them to set off one
full collection per run, 0.09-0.11 s of CPU of a 0.62-0.65 s run, which Dask's
synchronous scheduler, with fewer live objects, did not pay
(``benchmarks/dask_overhead.py --only shuffle``, ``gc.callbacks``).

So while at least one invocation runs, the youngest generation is collected
every :data:`YOUNG_EVERY` allocations instead: most objects then die (by their
reference count, as ever) before a collection looks at them. Same process,
old and new thresholds taking turns, load average 6-7: the shuffle set off
no full collection in 5 runs (5 of 5 before) and used 0.529 s of CPU against
0.639 s; TR-8192 1 in 11 runs (12 of 11 before), 0.263 s against 0.331 s (since
6592cc2 TR-8192 sets off none either way: 0.227 s against 0.226 s).
Garbage in reference cycles waits for at most 7,000 allocations instead of
700 before it is freed. The thresholds are restored when no invocation runs,
unless something else changed them meanwhile.
"""

from __future__ import annotations

import gc

from fanflow.store.locks import YieldingLock

__all__ = ["YOUNG_EVERY", "RelaxedCollector", "relaxed"]

YOUNG_EVERY = 7000
"""Allocations (less deallocations) of tracked objects per young collection while invocations run (CPython: 700)."""


class RelaxedCollector:
    """Raises the collector's young threshold while invocations run, from the first collection on.

    :meth:`enter` and :meth:`leave` only count the running invocations; the
    thresholds change at the first collection that starts while one runs (a
    ``gc.callbacks`` entry, added by the first :meth:`enter`), so a run too small
    to set off a collection costs two counter updates and no threshold change
    (a 1-task ``fanflow.dask.get`` paid 2.7 us of CPU, 3%, when every invocation
    set and restored them). The last :meth:`leave` puts them back. The count is
    a list's length, one ``append`` or ``pop`` per invocation (atomic under the
    GIL): the lock is taken only to install the callback and to restore.
    """

    __slots__ = ("_installed", "_lock", "_restore", "_running", "_set")

    def __init__(self) -> None:
        self._lock = YieldingLock()
        self._running: list[None] = []
        """One entry per running invocation."""
        self._installed = False
        self._restore: tuple[int, int, int] | None = None
        """The thresholds to put back."""
        self._set = (0, 0, 0)
        """The thresholds set: put back only if they are still these."""

    def enter(self) -> None:
        """An invocation starts running."""
        self._running.append(None)
        if not self._installed:
            with self._lock:
                if not self._installed:
                    self._installed = True
                    gc.callbacks.append(self._collecting)

    def leave(self) -> None:
        """An invocation ended."""
        running = self._running
        running.pop()
        if running or self._restore is None:
            return
        with self._lock:
            if self._running or self._restore is None:  # one started meanwhile, or another leave restored
                return
            restore, self._restore = self._restore, None
            if gc.get_threshold() == self._set:  # else the program set its own meanwhile: keep it
                gc.set_threshold(*restore)

    def _collecting(self, phase: str, info: dict[str, int]) -> None:
        """A collection starts or stops, in whichever thread allocated: relax the thresholds if invocations run.

        Takes no lock: the collection may start inside :meth:`enter` or :meth:`leave`
        on this very thread. The thresholds are set before ``_restore`` says so,
        so a :meth:`leave` that ends the last invocation in between leaves them
        relaxed only until the next invocation ends, never for good.
        """
        if phase != "start" or not self._running or self._restore is not None:
            return
        young, middle, old = gc.get_threshold()
        if 0 < young < YOUNG_EVERY:  # 0: the program disabled automatic collection; leave it so
            relaxed_to = (YOUNG_EVERY, middle, old)
            gc.set_threshold(*relaxed_to)
            self._set = relaxed_to
            self._restore = (young, middle, old)


relaxed = RelaxedCollector()
"""The process's one: the thresholds are the process's, whichever platform runs the invocations."""
