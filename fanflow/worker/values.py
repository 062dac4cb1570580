"""Values a warm worker process keeps between invocations, as a Dask worker keeps its data.

A FaaS platform sends a warm process invocation after invocation, mostly of
the same run. The outputs that process made, and the inputs it fetched, stay
here, keyed by run and task, so the next invocation's inputs come from memory
rather than from the store: on GEMM 2000² in 500² blocks every block is read by
8 tasks, and without this each of them fetched its two blocks again.

- A run's values never change: a task's output is the same whichever attempt
  made it, so an entry never goes stale while its run lasts.
- The cache holds at most a share of the worker's memory
  (:data:`MEMORY_SHARE` of ``memory_mb``), least recently used out first, and
  the values of the last :data:`RUNS` runs only; the first invocation of a new
  run in the process drops the runs that have ended
  (:func:`fanflow.worker.drop_ended_runs`).
- In-process workers do not use it: their store keeps the objects already.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from fanflow.store.base import MISSING

__all__ = ["MEMORY_SHARE", "RUNS", "ValueCache", "values"]

MEMORY_SHARE = 0.25
"""Share of a worker's ``memory_mb`` the cache may hold; the rest is the tasks'."""

RUNS = 2
"""Runs whose values are kept; a third run's first value drops the oldest run's. A finished run's values are
never read again, so this is for runs sharing a pool at once. Each run kept is memory a warm process must
touch for the first time while the cache fills (a page fault, and on a virtual machine a host fault too):
with 4, a warm gemm 512/256 worker took 3,400-3,800 faults per run over its first 4 runs, its CPU falling
from 35 to 27 ms per run only by run 7; with 2, 3,600 then 1,600, 530, 140, steady from run 2. Runs that
ended are dropped before that (:func:`fanflow.worker.drop_ended_runs`), so a re-run reuses the memory of
the run before."""


class ValueCache:
    """Task outputs by ``(run, task)``, bounded in bytes, least recently used out first."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, int], tuple[Any, int]] = OrderedDict()
        self._runs: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        """Bytes held (the values' stored sizes)."""

    def get(self, run_id: str, task: int) -> Any:
        """The value, or ``MISSING``."""
        with self._lock:
            entry = self._entries.get((run_id, task))
            if entry is None:
                return MISSING
            self._entries.move_to_end((run_id, task))
            return entry[0]

    def holds(self, run_id: str, task: int) -> bool:
        """Whether the value is here (no change to its recency: a placement question, not a read)."""
        return (run_id, task) in self._entries

    def put(self, run_id: str, task: int, value: Any, size: int, memory_mb: int) -> None:
        """Keep ``value`` (``size`` bytes stored) within the share of ``memory_mb``; a larger value is not kept."""
        budget = int(memory_mb * 2**20 * MEMORY_SHARE)
        if size > budget:
            return
        key = (run_id, task)
        with self._lock:
            if run_id not in self._runs:
                self._runs[run_id] = None
                while len(self._runs) > RUNS:
                    self._drop_run(self._runs.popitem(last=False)[0])
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (value, size)
            self.bytes += size
            while self.bytes > budget:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped

    def runs(self) -> list[str]:
        """Runs with values kept, oldest first."""
        with self._lock:
            return list(self._runs)

    def drop(self, run_id: str) -> None:
        """Forget every value of ``run_id``."""
        with self._lock:
            if run_id in self._runs:
                del self._runs[run_id]
                self._drop_run(run_id)

    def _drop_run(self, run_id: str) -> None:
        for key in [k for k in self._entries if k[0] == run_id]:
            self.bytes -= self._entries.pop(key)[1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._runs.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


values = ValueCache()
"""This process's cache."""
