"""The plan's extras in a worker: preloading a planned dependent's inputs, and delayed I/O.

Both are optimizations a plan asks for per task (:class:`fanflow.dag.placement.PlanView`);
a worker without a plan never starts a preload and always uploads.

- **preload**: while task ``t`` runs, the finished inputs of its planned
  dependents that will run here (marked ``preload`` and sharing ``t``'s label)
  are fetched in a background thread, so such a dependent starts without a
  fetch round trip. Inputs not finished yet are fetched as usual when it starts.
- **delayed I/O**: an output is not uploaded when the plan asks and no other
  worker can need it (:func:`fanflow.dag.placement.delayable`); its consumers
  read it from the worker's cache, and lineage recomputes it if that worker is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from fanflow.dag.graph import DAG
from fanflow.dag.placement import PlanView
from fanflow.store import keys
from fanflow.store.base import MISSING, Store

log = logging.getLogger(__name__)


class Preload:
    """A background fetch of some tasks' outputs, retried as they finish; :meth:`result` ends it."""

    POLL_S = 0.05

    def __init__(self, store: Store, output_keys: list[str], tasks: list[int]) -> None:
        self._found: dict[int, tuple[Any, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fetch, args=(store, output_keys, tasks), daemon=True)
        self._thread.start()

    def _fetch(self, store: Store, output_keys: list[str], tasks: list[int]) -> None:
        wanted = dict(zip(tasks, output_keys, strict=True))
        while wanted and not self._stop.is_set():
            try:
                values, sizes = store.get_many(list(wanted.values()))
            except Exception:  # an optimization only: the task fetches its inputs itself if this fails
                log.debug("preload failed", exc_info=True)
                return
            for u, v, n in zip(list(wanted), values, sizes, strict=True):
                if v is not MISSING:
                    self._found[u] = (v, n)
                    del wanted[u]
            self._stop.wait(self.POLL_S)

    def result(self) -> dict[int, tuple[Any, int]]:
        """Stop polling and return what arrived: task -> (value, size)."""
        self._stop.set()
        self._thread.join()
        return self._found


class PlanExtras:
    """One worker's preloads and delayed-I/O decisions (the worker records the events they lead to)."""

    def __init__(self, store: Store, dag: DAG, run_id: str, plan: PlanView) -> None:
        self._store = store
        self._dag = dag
        self._run_id = run_id
        self._plan = plan
        self._preloads: dict[int, Preload] = {}  # planned dependent -> the fetch of its other inputs

    def delays_upload(self, t: int) -> bool:
        """Delayed I/O: whether ``t``'s output skips the store (the plan asks and no other worker needs it)."""
        return self._plan.delays_upload(self._dag, t)

    def preload_for(self, t: int, cache: dict[int, Any]) -> None:
        """While ``t`` runs, start fetching the finished inputs of its planned dependents that will run here."""
        plan = self._plan
        label = plan.labels[t]
        if label is None:
            return
        dag = self._dag
        for d in dag.dependents[t]:
            if not plan.preload[d] or plan.labels[d] != label or d in self._preloads:
                continue
            others = [u for u in dag.deps[d] if u != t and u not in cache]
            if others:
                output_keys = [keys.output_of(self._run_id, dag, u) for u in others]
                self._preloads[d] = Preload(self._store, output_keys, others)

    def take_preloaded(
        self, t: int, ups: Sequence[int], missing: list[int], values: list[Any], sizes: list[int | None]
    ) -> tuple[list[int], list[int], int]:
        """Stop ``t``'s preload, if any, and fill ``values`` from it.

        Returns the positions still missing, and the inputs the preload brought with their bytes.
        """
        preload = self._preloads.pop(t, None) if self._preloads else None
        if preload is None:
            return missing, [], 0
        got = preload.result()
        still = []
        for i in missing:
            hit = got.get(ups[i])
            if hit is None:
                still.append(i)
            else:
                values[i], sizes[i] = hit
        loaded = [ups[i] for i in missing if i not in still]
        return still, loaded, sum(got[u][1] for u in loaded)

    def stop(self) -> None:
        """Stop the preloads of tasks another worker claimed (at worker exit)."""
        for preload in self._preloads.values():
            preload.result()
        self._preloads.clear()
