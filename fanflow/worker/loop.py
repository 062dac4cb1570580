"""THE worker loop: the one scheduler of fanflow, run by every platform.

There is no central scheduler. A worker is started with a few *start tasks*
whose claims it already holds, and for each task it runs four small steps:

1. **inputs** (:meth:`Worker._inputs`): every upstream value comes from the
   worker's local cache when this worker produced it, otherwise all missing
   ones are fetched in ONE store round trip.
2. **execute** (:meth:`Worker._execute`): call the function with the upstream
   values substituted into its argument template; retry with exponential
   backoff and jitter on the exceptions the task allows (never on ``NoRetry``).
3. **output + notify** (:meth:`Worker._finish`): store the output and tell each
   dependent "this upstream is done" in ONE round trip. Telling is the fan-in
   claim: the store adds this task to the dependent's set of finished upstreams
   and, when the set is complete, grants the claim to exactly one caller. A
   re-run upstream adds itself again, which changes nothing, so a dependent is
   never triggered twice.
4. **continue** (:meth:`Worker._continue`): of the dependents this worker just
   claimed, it keeps one to run next, the one with most inputs already in its
   cache, and starts a new worker on the platform for each of the others (one
   worker per fan-out branch, as in WUKONG). Nothing claimed: the worker exits.

A dynamic fan-out (``fanflow.map``) is a task whose width is known only when
its input list exists. The worker that claims it *expands* it
(:meth:`Worker._expand`): it stores the items other workers need and the
element count in one round trip, runs element 0 itself and invokes one worker
per other element. Each element finishes with the same exactly-once claim, on
the map's set of finished elements; the worker whose element completes the set
gathers every result in order (:meth:`Worker._collect`) and completes the map
node like any task, so maps chain and feed reductions.

State of a worker, all local to it:

- ``cache``: outputs this worker produced, by task id. An entry is dropped once
  every dependent of that task has run here; others may still need it locally.
- ``events``: a buffer of timestamped events (the run's metrics are derived
  from them), written to the run's event stream in batches as the
  ``metrics_upload`` strategy says: at worker exit (``shutdown``), at the start
  and end of each task (``task``), every X seconds (``periodic:X``) or when X
  events wait (``buffer:X``). Every strategy also writes at exit.

A task that fails for good writes its error record and the run status in one
atomic step and publishes it; workers then stop at their next status check.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import socket
import threading
import time
import traceback
import uuid
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

from fanflow.dag.graph import DAG
from fanflow.dag.node import substitute
from fanflow.dag.placement import anchored_tasks, delayable
from fanflow.errors import (
    FanflowError,
    InputLostError,
    MapInputError,
    NoRetry,
    ValueTooLargeError,
)
from fanflow.platforms.base import Platform
from fanflow.platforms.invocation import Invocation, sign
from fanflow.store import keys
from fanflow.store.base import MISSING, RUNNING, Claim, Store, error_record
from fanflow.worker.heartbeat import heartbeat

log = logging.getLogger(__name__)


STATUS_CHECK_S = 0.2
"""How often a worker on a remote store asks whether its run was stopped."""

FANOUT_INLINE_MAX = 16 * 1024
"""Largest encoded DAG a worker copies into the payloads it sends; larger ones go by
reference (the client stored the DAG once), so a wide fan-out does not push N copies."""


_WORKER_PREFIX = f"{socket.gethostname()[:16]}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
_worker_numbers = itertools.count(1)


def _new_worker_id() -> str:
    """Unique across hosts and processes without a uuid per worker: host, pid, salt, counter."""
    return f"{_WORKER_PREFIX}-{next(_worker_numbers)}"


_placements: weakref.WeakKeyDictionary[DAG, tuple[list[Any], frozenset[int]]] = weakref.WeakKeyDictionary()


def _placement(dag: DAG) -> tuple[list[Any], frozenset[int]]:
    """The plan's label per task and its anchored tasks, worked out once per DAG in a process."""
    found = _placements.get(dag)
    if found is None:
        labels = [dag.annotations.get(t, {}).get("worker") for t in range(len(dag))]
        found = _placements[dag] = (labels, anchored_tasks(dag, labels))
    return found


class _Preload:
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


Item = int | tuple[int, int, int]
"""A unit of work: a task id, or ``(map task, element index, element count)``."""


def _task_of(item: Item) -> int:
    return item[0] if type(item) is tuple else item  # type: ignore[index,return-value]


class _Stop(Exception):  # noqa: N818 - internal control flow, never escapes the loop
    """The run was failed or cancelled elsewhere; this worker exits quietly."""


class Worker:
    """One invocation: runs its start tasks and the chain of tasks it claims."""

    def __init__(
        self,
        inv: Invocation,
        store: Store,
        platform: Platform,
        dag: DAG,
        *,
        secret: bytes | None = None,
        cold: bool = False,
    ) -> None:
        self.inv = inv
        self.store = store
        self.platform = platform
        self.dag = dag
        self.secret = secret
        self.id = _new_worker_id()
        # Claims belong to the invocation, not to this worker: a redelivered invocation re-enters them.
        self.owner = inv.inv_id or self.id
        self.run_id = inv.run_id
        self.settings = inv.settings
        self.cache: dict[int, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.tasks_run = 0
        self.cold = cold
        self._ran_here: set[int] = set()
        self._elements: dict[int, dict[int, Any]] = {}  # map node -> items kept here for local elements
        self._results: dict[int, dict[int, Any]] = {}  # map node -> element results made here
        self._preloads: dict[int, _Preload] = {}  # planned dependent -> the fetch of its other inputs
        self._current = -1
        self._status_key = keys.status(inv.run_id)
        self._remote = not store.keeps_objects
        now = time.time()
        self._last_flush = now
        strategy, _, arg = inv.settings.metrics_upload.partition(":")
        self._flush_every_s = float(arg) if strategy == "periodic" else None
        self._flush_at_len = 1 if strategy == "task" else int(float(arg)) if strategy == "buffer" else None
        self._next_status_check = now + STATUS_CHECK_S
        self.started_at = now

    # -- the loop ---------------------------------------------------------------
    def run(self) -> None:
        """Run the start tasks and everything this worker claims after them."""
        self._emit(
            "worker_started",
            -1,
            cold=self.cold,
            memory_mb=self.inv.memory_mb,
            latency_s=max(0.0, self.started_at - self.inv.invoked_at) if self.inv.invoked_at else 0.0,
        )
        ready: deque[Item] = deque(self.inv.start)
        try:
            while ready:
                self._check_running()
                item = ready.popleft()
                claimed = self._run_element(*item) if type(item) is tuple else self._run_task(item)
                if claimed:
                    ready.extend(self._continue(self._current, claimed))
        except _Stop:
            pass
        finally:
            for preload in self._preloads.values():  # for tasks another worker claimed
                preload.result()
            self._emit("worker_stopped", -1, tasks=self.tasks_run)
            self._flush_events()

    def _run_task(self, t: int) -> list[Item]:
        self._current = t
        started = time.time()
        self.events.append({"kind": "task_started", "task": t, "worker": self.id, "t": started})
        if self._flush_at_len == 1:  # "task": a live view sees the task running, not only done
            self._flush_events()
        values, in_bytes, fetch_s = self._inputs(t)
        if t in self.dag.maps:
            return self._expand(t, values)
        if not self._remote:  # in-process workers cannot be lost apart from their client
            value, attempt, exec_s = self._execute(t, values)
            return self._complete(t, value, attempt=attempt, exec_s=exec_s, fetch_s=fetch_s, in_bytes=in_bytes)
        self._preload_for(t)
        lease_key = keys.lease(self.run_id, t)
        token = heartbeat.track(self.store, lease_key, self.owner, self.settings.lease_ms)
        try:
            value, attempt, exec_s = self._execute(t, values)
            claimed = self._complete(t, value, attempt=attempt, exec_s=exec_s, fetch_s=fetch_s, in_bytes=in_bytes)
        finally:
            leased = heartbeat.untrack(token)
        if leased:
            self.store.end_leases([lease_key], self.settings.key_ttl_s)
        return claimed

    def _complete(self, t: int, value: Any, **fields: Any) -> list[Item]:
        """Store ``t``'s output, notify its dependents, keep it in the cache; the claimed dependents."""
        claimed, out_bytes, store_s, uploaded = self._finish(t, value)
        self.tasks_run += 1
        self._ran_here.add(t)
        self._release_inputs(t)
        if self.dag.dependents[t]:
            self.cache[t] = value
        memory = self.inv.memory_mb
        self._emit(
            "task_finished", t, store_s=store_s, out_bytes=out_bytes, uploaded=uploaded, memory_mb=memory, **fields
        )
        self._maybe_flush()
        return claimed  # type: ignore[return-value]

    # -- dynamic fan-outs (fanflow.map) ---------------------------------------------
    def _expand(self, m: int, values: list[Any]) -> list[Item]:
        """Turn a claimed map node into one element task per item: run one here, invoke the rest.

        The items other workers need are stored in one round trip with the
        element count; the last element to finish gathers the results in order.
        """
        items = values[0]
        if not isinstance(items, (list, tuple)):
            raise MapInputError(
                f"task {self.dag.name(m)!r}: fanflow.map needs its input to be a list or tuple, "
                f"got {type(items).__name__}"
            )
        n = len(items)
        self._emit("map_expanded", m, elements=n)
        run, ttl = self.run_id, self.settings.key_ttl_s
        puts = {keys.map_size(run, m): self.store.dumps(n)[0]}
        for i in range(1, n):
            puts[keys.element_input(run, m, i)] = self._dump(m, items[i])[0]
        self.store.put_many(puts, ttl)
        if n == 0:
            return self._complete(m, [], attempt=1, exec_s=0.0, fetch_s=0.0, in_bytes=[])
        self._elements[m] = {0: items[0]}
        self._invoke([(m, i, n) for i in range(1, n)])
        return [(m, 0, n)]

    def _run_element(self, m: int, i: int, n: int) -> list[Item]:
        """Element ``i`` of map ``m``: the map's function on one item, then the fan-in of all ``n``."""
        self._current = m
        run = self.run_id
        self.events.append({"kind": "task_started", "task": m, "element": i, "worker": self.id, "t": time.time()})
        local = self._elements.get(m, {})
        began = time.perf_counter()
        others, in_bytes, fetch_s = self._inputs(m, skip_first=True)
        if i in local:
            item = local.pop(i)
        else:
            (item,), (size,) = self.store.get_many([keys.element_input(run, m, i)])
            if item is MISSING:
                raise InputLostError(f"task {self.dag.name(m)!r}: item {i} of its list is not in the store")
            in_bytes[0] = size
            fetch_s = time.perf_counter() - began
        value, attempt, exec_s = self._execute(m, [item, *others[1:]])
        stored, out_bytes = self._dump(m, value)
        claim = Claim(keys.parts(run, m), keys.collect(run, m), i, n)
        began = time.perf_counter()
        ttl, lease = self.settings.key_ttl_s, self.settings.lease_ms
        (won,) = self.store.finish({keys.element_output(run, m, i): stored}, [claim], self.owner, ttl, lease)
        self._emit(
            "task_finished",
            m,
            element=i,
            attempt=attempt,
            exec_s=exec_s,
            fetch_s=fetch_s,
            store_s=time.perf_counter() - began,
            in_bytes=in_bytes,
            out_bytes=out_bytes,
            memory_mb=self.inv.memory_mb,
        )
        self._maybe_flush()
        self._results.setdefault(m, {})[i] = value
        if not won:
            return []
        return self._collect(m, n)

    def _collect(self, m: int, n: int) -> list[Item]:
        """Gather every element's result (those made here from memory, the rest in one round trip)."""
        mine = self._results.pop(m, {})
        self._elements.pop(m, None)
        missing = [j for j in range(n) if j not in mine]
        began = time.perf_counter()
        fetched, sizes = self.store.get_many([keys.element_output(self.run_id, m, j) for j in missing])
        results = [mine.get(j) for j in range(n)]
        for j, v in zip(missing, fetched, strict=True):
            if v is MISSING:
                raise InputLostError(f"task {self.dag.name(m)!r}: the result of element {j} is not in the store")
            results[j] = v
        self._emit("map_collected", m, elements=n, fetched=len(missing), fetch_bytes=sum(sizes))
        fetch_s = time.perf_counter() - began
        local_inputs = [None] * len(self.dag.deps[m])
        return self._complete(m, results, attempt=1, exec_s=0.0, fetch_s=fetch_s, in_bytes=local_inputs)

    # -- 1. inputs ------------------------------------------------------------------
    def _inputs(self, t: int, skip_first: bool = False) -> tuple[list[Any], list[int | None], float]:
        """Upstream values in dependency order; sizes are None for local (cached) inputs.

        ``skip_first`` leaves out ``deps[0]`` (an element of a map needs its item, not the whole list).
        """
        ups = self.dag.deps[t]
        if not ups:
            return [], [], 0.0
        cache = self.cache
        values = [cache.get(u, MISSING) for u in ups]
        sizes: list[int | None] = [None] * len(ups)
        missing = [i for i, v in enumerate(values) if v is MISSING and not (skip_first and i == 0)]
        if self._preloads and t in self._preloads:
            missing = self._take_preloaded(t, ups, missing, values, sizes)
        if not missing:
            return values, sizes, 0.0
        began = time.perf_counter()
        run, dag = self.run_id, self.dag
        fetched, fetched_sizes = self.store.get_many([keys.output_of(run, dag, ups[i]) for i in missing])
        elapsed = time.perf_counter() - began
        for i, v, n in zip(missing, fetched, fetched_sizes, strict=True):
            values[i] = self._recompute(t, ups[i]) if v is MISSING else v
            sizes[i] = n
        return values, sizes, elapsed

    def _preload_for(self, t: int) -> None:
        """Preload: while ``t`` runs, fetch the finished inputs of the planned dependents that will run here.

        A dependent marked ``preload`` in the plan and sharing ``t``'s label is
        expected to be claimed by this worker when ``t`` finishes; its other
        inputs that are already in the store are fetched in a background thread
        now, so it starts without a fetch round trip. Inputs not finished yet are
        fetched as usual when it starts.
        """
        annotations = self.dag.annotations
        label = annotations.get(t, {}).get("worker") if annotations else None
        if label is None:
            return
        dag, run, cache = self.dag, self.run_id, self.cache
        for d in dag.dependents[t]:
            note = annotations.get(d, {})
            if not note.get("preload") or note.get("worker") != label or d in self._preloads:
                continue
            others = [u for u in dag.deps[d] if u != t and u not in cache]
            if others:
                self._preloads[d] = _Preload(self.store, [keys.output_of(run, dag, u) for u in others], others)

    def _take_preloaded(
        self, t: int, ups: Sequence[int], missing: list[int], values: list[Any], sizes: list[int | None]
    ) -> list[int]:
        """Stop ``t``'s preload and fill ``values`` from it; the positions still missing."""
        got = self._preloads.pop(t).result()
        still = []
        for i in missing:
            hit = got.get(ups[i])
            if hit is None:
                still.append(i)
            else:
                values[i], sizes[i] = hit
        if len(still) < len(missing):
            loaded = [ups[i] for i in missing if i not in still]
            self._emit("preloaded", t, inputs=loaded, bytes=sum(got[u][1] for u in loaded))
        return still

    def _recompute(self, t: int, u: int) -> Any:
        """Lineage: run upstream ``u`` again from its own inputs, as its output is not in the store.

        That happens when ``u``'s worker kept the output local (delayed I/O) and
        was lost, or when the output expired. The value is stored again for any
        other consumer; ``u``'s dependents were notified the first time, so they
        are not notified again. Recursion follows missing outputs only, one
        level per lost producer.
        """
        if u in self.dag.maps:
            raise InputLostError(
                f"task {self.dag.name(t)!r}: its input {self.dag.name(u)!r} (a fanflow.map) is not in the store "
                "(expired or lost); raise key_ttl_s if runs outlive it"
            )
        self._emit("recomputed", u, for_task=t)
        values, _, _ = self._inputs(u)
        value, _, _ = self._execute(u, values)
        self.store.put_many(
            {keys.output_of(self.run_id, self.dag, u): self._dump(u, value)[0]}, self.settings.key_ttl_s
        )
        return value

    # -- 2. execute -----------------------------------------------------------------
    def _execute(self, t: int, values: list[Any]) -> tuple[Any, int, float]:
        dag = self.dag
        task = dag.task(t)
        func = task.func
        targs, tkwargs = dag.args[t], dag.kwargs[t]
        attempt = 0
        while True:
            attempt += 1
            began = time.perf_counter()
            try:
                if targs is None:
                    value = func(*values)
                elif not values:
                    value = func(*targs, **tkwargs) if tkwargs else func(*targs)
                else:
                    args = substitute(targs, values)
                    value = func(*args, **substitute(tkwargs, values)) if tkwargs else func(*args)
                return value, attempt, time.perf_counter() - began
            except Exception as exc:
                if isinstance(exc, NoRetry) or not isinstance(exc, task.retry_on) or attempt > task.retries:
                    self._fail(t, exc, attempt)
                    raise _Stop from exc
                delay = task.retry_backoff * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                self._emit("task_retry", t, attempt=attempt, error=f"{type(exc).__name__}: {exc}")
                time.sleep(delay)

    # -- 3. output + notify -----------------------------------------------------------------
    def _finish(self, t: int, value: Any) -> tuple[list[Item], int, float, bool]:
        """Store ``t``'s output and notify its dependents in one round trip; the ones it claimed.

        An output read by one task only is stored by the claim itself, and only
        if another worker will run that task: when this worker wins the claim
        it runs the task next with the value in memory (store-unless-claimed).
        """
        dag, store, run = self.dag, self.store, self.run_id
        dependents = dag.dependents[t]
        stored, size = self._dump(t, value)
        local = self._keep_local(t)
        puts: dict[str, Any] = {}
        if not local and len(dependents) == 1 and not dag.is_sink(t) and self._would_keep(t, dependents[0]):
            d = dependents[0]
            out = keys.output(run, t, d)
            claims = [Claim(keys.deps(run, d), keys.claim(run, d), t, len(dag.deps[d]), out, stored)]
        else:
            claims = [Claim(keys.deps(run, d), keys.claim(run, d), t, len(dag.deps[d])) for d in dependents]
            if not local:
                puts[keys.output_of(run, dag, t)] = stored
        publish = [(keys.channel(run), f"sink:{t}".encode())] if dag.is_sink(t) else []
        began = time.perf_counter()
        won = store.finish(puts, claims, self.owner, self.settings.key_ttl_s, self.settings.lease_ms, publish)
        elapsed = time.perf_counter() - began
        stored_unless_claimed = bool(claims) and claims[0].output_key is not None
        uploaded = bool(puts) or (stored_unless_claimed and not won[0])
        return [d for d, ok in zip(dependents, won, strict=True) if ok], size, elapsed, uploaded

    def _dump(self, t: int, value: Any) -> tuple[Any, int]:
        try:
            stored, size = self.store.dumps(value)
        except FanflowError as exc:
            raise type(exc)(f"task {self.dag.name(t)!r}: its output cannot be stored: {exc}") from exc
        if self._remote and size > self.settings.max_value_bytes:
            raise ValueTooLargeError(
                f"task {self.dag.name(t)!r}: output is {size:,} bytes, more than max_value_bytes="
                f"{self.settings.max_value_bytes:,}; split the work into smaller tasks or raise the limit"
            )
        return stored, size

    def _release_inputs(self, t: int) -> None:
        dependents, cache, ran = self.dag.dependents, self.cache, self._ran_here
        for u in self.dag.deps[t]:
            if u in cache and all(d in ran for d in dependents[u]):
                del cache[u]

    # -- 4. continue -----------------------------------------------------------------
    def _keep_local(self, t: int) -> bool:
        """Delayed I/O: skip the upload when the plan asks and no other worker can need the output.

        The rule (:func:`fanflow.dag.placement.delayable`) is shared with the
        planner's simulator, so plans predict what the loop does.
        """
        plan = self.dag.annotations.get(t)
        if not plan or plan.get("upload", True):
            return False
        labels, anchored = _placement(self.dag)
        ok = delayable(self.dag, t, labels, anchored)
        if ok:
            self._emit("delayed_io", t)
        return ok

    def _would_keep(self, t: int, d: int) -> bool:
        """Whether :meth:`_continue` would run ``d`` here if ``t`` claimed it (alone)."""
        annotations = self.dag.annotations
        if not annotations:
            return True
        fits = annotations.get(d, {}).get("memory_mb", self.inv.memory_mb) == self.inv.memory_mb
        label = annotations.get(t, {}).get("worker")
        return fits or (label is not None and annotations.get(d, {}).get("worker") == label)

    def _continue(self, t: int, claimed: list[Item]) -> list[Item]:
        """Choose what runs here next among the dependents ``t`` just claimed; invoke workers for the rest.

        When the plan gives ``t`` a placement label, the dependents sharing it
        stay here (clustering) and each other label gets one new worker; if
        none shares it, the label group with most inputs in the cache stays
        instead (the plan's guess of who finishes a fan-in last was wrong).
        Without labels one dependent stays, the one with most inputs in the
        cache, as in WUKONG. Either way only at this worker's memory size.
        """
        annotations = self.dag.annotations
        label = annotations.get(t, {}).get("worker") if annotations else None
        memory = self.inv.memory_mb
        if label is not None:
            groups: dict[Any, list[Item]] = {}
            for d in claimed:
                groups.setdefault(annotations.get(_task_of(d), {}).get("worker") or ("solo", d), []).append(d)
            here = groups.pop(label, [])
            if not here:
                # The plan guessed another input would finish last. Its worker may be gone, and a new
                # one would fetch every input: continue here, as WUKONG does, if the memory fits.
                deps, cache = self.dag.deps, self.cache
                fits = [
                    k
                    for k, g in groups.items()
                    if annotations.get(_task_of(g[0]), {}).get("memory_mb", memory) == memory
                ]
                if fits:
                    best = max(fits, key=lambda k: sum(u in cache for d in groups[k] for u in deps[_task_of(d)]))
                    here = groups.pop(best)
            if len(here) > 1:
                self._emit("clustered", t, tasks=[_task_of(d) for d in here])
            self._invoke_groups(list(groups.values()))
            return here
        fits = [d for d in claimed if annotations.get(_task_of(d), {}).get("memory_mb", memory) == memory]
        if not fits:
            self._invoke(claimed)
            return []
        deps, cache = self.dag.deps, self.cache
        keep = fits[0] if len(fits) == 1 else max(fits, key=lambda d: sum(u in cache for u in deps[_task_of(d)]))
        self._invoke([d for d in claimed if d != keep])
        return [keep]

    def _invoke(self, items: Sequence[Item]) -> None:
        self._invoke_groups([[d] for d in items])

    def _invoke_groups(self, groups: Sequence[Sequence[Item]]) -> None:
        """Start one worker per group; a group's tasks run one after another in that worker."""
        if not groups:
            return
        now = time.time()
        memory = self.inv.memory_mb
        base = self.inv
        if isinstance(base.dag, bytes) and len(base.dag) > FANOUT_INLINE_MAX:
            base = base.with_start(base.start, memory, now)
            base.dag = None
        invs = [base.with_start(tuple(g), self._memory_for(_task_of(g[0]), memory), now) for g in groups]
        if self.platform.in_process:
            self.platform.invoke(invs)
            return
        if self.secret is None:
            raise FanflowError("a worker without a secret cannot invoke other workers")
        self.platform.invoke([sign(i, self.secret) for i in invs])

    def _memory_for(self, t: int, fallback: int) -> int:
        planned = self.dag.annotations.get(t, {}).get("memory_mb")
        if planned:
            return int(planned)
        return self.dag.task(t).memory_mb or fallback

    # -- run state -----------------------------------------------------------------
    def _check_running(self) -> None:
        if self._remote:
            now = time.time()
            if now < self._next_status_check:
                return
            self._next_status_check = now + STATUS_CHECK_S
        # No status at all means the client already cleaned up, or the store lost the run; either
        # way nobody waits for this worker, and the client reports a loss itself.
        if self.store.get_status(self._status_key) != RUNNING:
            raise _Stop

    def _fail(self, t: int, exc: BaseException, attempt: int) -> None:
        """Record a failure for good: error record + run status, atomically, then publish."""
        run = self.run_id
        name = self.dag.name(t) if t >= 0 else "<worker>"
        exc_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
        trace = "".join(traceback.format_exception(exc))
        record = error_record(run, name, t, exc_type, str(exc), self.id, attempt, trace)
        self._emit("task_failed", t, attempt=attempt, error=f"{type(exc).__name__}: {exc}")
        try:
            stored, _ = self.store.dumps(exc)
            self.store.put_many({keys.error_object(run): stored}, self.settings.key_ttl_s)
        except Exception:  # the record below still carries the type, message and traceback
            log.debug("could not store the exception object of %s", name, exc_info=True)
        self.store.fail_run(
            self._status_key,
            keys.errors(run),
            record,
            self.settings.key_ttl_s,
            keys.channel(run),
        )

    def fail_outside_task(self, exc: BaseException) -> None:
        """A failure of the worker itself (store, serialization, lost input) fails the run."""
        self._fail(self._current, exc, 1)
        self._flush_events()

    # -- events -----------------------------------------------------------------
    def _maybe_flush(self) -> None:
        if (self._flush_at_len is not None and len(self.events) >= self._flush_at_len) or (
            self._flush_every_s is not None and time.time() - self._last_flush >= self._flush_every_s
        ):
            self._flush_events()

    def _emit(self, kind: str, task: int, **fields: Any) -> None:
        fields["kind"] = kind
        fields["task"] = task
        fields["worker"] = self.id
        fields["t"] = time.time()
        self.events.append(fields)

    def _flush_events(self) -> None:
        if not self.events:
            return
        batch, self.events = self.events, []
        self._last_flush = time.time()
        try:
            self.store.append_events(keys.events(self.run_id), batch, self.settings.key_ttl_s)
        except Exception:  # events are observability; losing a batch must not fail the run
            log.warning("could not write %d events of run %s", len(batch), self.run_id, exc_info=True)
