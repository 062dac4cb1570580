"""Dynamic fan-outs (``fanflow.map``) in the worker: expand, run elements, collect.

A map is a task whose width is known only when its input list exists. The
worker that claims it *expands* it (:meth:`MapFanouts.expand`): it stores the
items other workers need and the element count in one round trip, runs element
0 itself and invokes one worker per other element. Each element finishes with
the same exactly-once claim as a task, on the map's set of finished elements;
the worker whose element completes the set gathers every result in order
(:meth:`MapFanouts.collect`) and completes the map node like any task, so maps
chain and feed reductions.

State, per worker: items kept here for the elements this worker runs, and the
element results made here (so the collecting worker fetches only the others').
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fanflow.errors import InputLostError, MapInputError
from fanflow.store import keys
from fanflow.store.base import MISSING, Claim

if TYPE_CHECKING:
    from fanflow.worker.loop import Item, Worker


class MapFanouts:
    """The map steps of one worker; each takes that worker (``w``), whose steps it reuses."""

    def __init__(self) -> None:
        self._items: dict[int, dict[int, Any]] = {}  # map node -> items kept here for local elements
        self._results: dict[int, dict[int, Any]] = {}  # map node -> element results made here

    def expand(self, w: Worker, m: int, values: list[Any]) -> list[Item]:
        """Turn claimed map node ``m`` into one element task per item: invoke the others, run element 0 here.

        Returns what runs here next: element 0, or (an empty list) the dependents the map claimed.
        """
        items = values[0]
        if not isinstance(items, (list, tuple)):
            raise MapInputError(
                f"task {w.dag.name(m)!r}: fanflow.map needs its input to be a list or tuple, got {type(items).__name__}"
            )
        n = len(items)
        w.emit("map_expanded", m, elements=n)
        run, ttl = w.run_id, w.settings.key_ttl_s
        puts = {keys.map_size(run, m): w.store.dumps(n)[0]}
        for i in range(1, n):
            puts[keys.element_input(run, m, i)] = w.dump(m, items[i])[0]
        w.store.put_many(puts, ttl)
        if n == 0:
            return w.continue_after(m, w.task_done(m, [], attempt=1, exec_s=0.0, fetch_s=0.0, in_bytes=[]))
        self._items[m] = {0: items[0]}
        # One worker per element whatever the free slots: a redelivered expansion then starts the
        # same branches (same ids) and those that already ran are not run again.
        w.invoke([[(m, i, n)] for i in range(1, n)])
        return [(m, 0, n)]

    def holds(self, m: int, i: int) -> bool:
        """Whether element ``i`` of map ``m`` has its item only here (not in the store): it must run here."""
        return i in self._items.get(m, {})

    def run_element(self, w: Worker, m: int, i: int, n: int) -> list[int]:
        """Element ``i`` of map ``m``: the map's function on one item, then the fan-in of all ``n``.

        Returns the dependents claimed when this element was the last (the map is then done).
        """
        run = w.run_id
        w.emit("task_started", m, element=i)
        local = self._items.get(m, {})
        began = time.perf_counter()
        others, in_bytes, fetch_s = w.inputs(m, skip_first=True)
        if i in local:
            item = local.pop(i)
        else:
            (item,), (size,) = w.store.get_many([keys.element_input(run, m, i)])
            if item is MISSING:
                raise InputLostError(f"task {w.dag.name(m)!r}: item {i} of its list is not in the store")
            in_bytes[0] = size
            fetch_s = time.perf_counter() - began
        value, attempt, exec_s = w.execute(m, [item, *others[1:]])
        stored, out_bytes = w.dump(m, value)
        claim = Claim(keys.parts(run, m), keys.collect(run, m), i, n)
        began = time.perf_counter()
        ttl, lease = w.settings.key_ttl_s, w.settings.lease_ms
        (won,) = w.store.finish({keys.element_output(run, m, i): stored}, [claim], w.owner, ttl, lease)
        w.emit(
            "task_finished",
            m,
            element=i,
            attempt=attempt,
            exec_s=exec_s,
            fetch_s=fetch_s,
            store_s=time.perf_counter() - began,
            in_bytes=in_bytes,
            out_bytes=out_bytes,
            memory_mb=w.inv.memory_mb,
        )
        w.maybe_flush()
        self._results.setdefault(m, {})[i] = value
        if not won:
            return []
        return self.collect(w, m, n)

    def collect(self, w: Worker, m: int, n: int) -> list[int]:
        """Gather every element's result (those made here from memory, the rest in one round trip)."""
        mine = self._results.pop(m, {})
        self._items.pop(m, None)
        missing = [j for j in range(n) if j not in mine]
        began = time.perf_counter()
        fetched, sizes = w.store.get_many([keys.element_output(w.run_id, m, j) for j in missing])
        results = [mine.get(j) for j in range(n)]
        for j, v in zip(missing, fetched, strict=True):
            if v is MISSING:
                raise InputLostError(f"task {w.dag.name(m)!r}: the result of element {j} is not in the store")
            results[j] = v
        w.emit("map_collected", m, elements=n, fetched=len(missing), fetch_bytes=sum(sizes))
        fetch_s = time.perf_counter() - began
        local_inputs = [None] * len(w.dag.deps[m])
        return w.task_done(m, results, attempt=1, exec_s=0.0, fetch_s=fetch_s, in_bytes=local_inputs)
