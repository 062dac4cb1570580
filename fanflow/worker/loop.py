"""THE worker loop: the one scheduler of fanflow, run by every platform.

There is no central scheduler. A worker is started with a few *start tasks*
whose claims it already holds, and for each task it runs four small steps:

1. **inputs** (:meth:`Worker.inputs`): every upstream value comes from the
   worker's local cache when this worker produced it, otherwise all missing
   ones are fetched in ONE store round trip.
2. **execute** (:meth:`Worker.execute`): call the function with the upstream
   values substituted into its argument template; retry with exponential
   backoff and jitter on the exceptions the task allows (never on ``NoRetry``).
3. **output + notify** (:meth:`Worker._store_and_notify`): store the output and
   tell each dependent "this upstream is done" in ONE round trip. Telling is
   the fan-in claim: the store adds this task to the dependent's set of
   finished upstreams and, when the set is complete, grants the claim to
   exactly one caller. A re-run upstream adds itself again, which changes
   nothing, so a dependent is never triggered twice.
4. **continue** (:meth:`Worker.continue_after`): of the dependents this worker
   just claimed, it keeps what :func:`fanflow.dag.placement.continuation` says
   (without a plan: the one with most inputs already in its cache) and starts
   a new worker on the platform for each of the others (one worker per fan-out
   branch, as in WUKONG). What it keeps joins the end of its queue, except a
   join of other workers' outputs, which runs next (:meth:`Worker._enqueue`).
   Nothing claimed: the worker exits. The planner's
   simulator calls the same function, so plans predict what the loop does.

**Fan out no wider than the platform can run.** A platform that knows how
many workers could start *now* says so in ``free_slots()``, a local read with
no round trip (the processes pool shares its count with its worker processes
in memory). Invoking a worker that can only queue behind busy ones costs more
than running its task here, so then the others are spread over the idle
slots and the rest stay in this worker's ready queue
(:func:`fanflow.dag.placement.spread`); before each next task, a worker that
holds more than one hands a share of its queue to slots that freed meanwhile
(:meth:`Worker._shed`), never a task whose input only it holds, and a plan's
label only whole and before any of it ran here. Claims are unchanged by this: a queued task is claimed by this
worker's invocation, as a continued one always was, and a worker started for
shed tasks runs them as start tasks, as one started for a fan-out branch does.
A redelivered invocation (its first worker was lost) fans out to no one: it
re-enters the claims its lost incarnation took and runs them itself.

Dynamic fan-outs (``fanflow.map``) are expanded by the worker that claims
them (:mod:`fanflow.worker.maps`); a plan's preloads and delayed I/O are in
:mod:`fanflow.worker.extras`.

State of a worker, all local to it:

- ``ready``: what this worker runs next, in order (start tasks, then claimed ones).
- ``cache``: outputs this worker produced, by task id. An entry is dropped once
  every dependent of that task has run here; others may still need it locally.
- ``unshared``: tasks whose (large) output never left this worker, because it
  claimed every dependent of theirs: all of those run here.

A worker process outlives its invocations on every out-of-process platform;
what it made or fetched stays in its process-wide value cache
(:mod:`fanflow.worker.values`), so a later invocation of the same run reads
those inputs from memory instead of the store.
- ``events``: a buffer of timestamped events (the run's metrics are derived
  from them), kept as rows (:mod:`fanflow.store.events`: a tuple per event, no
  dict) and written to the run's event stream in batches as the ``metrics_upload`` strategy says: at worker exit
  (``shutdown``), at the start and end of each task (``task``), every X
  seconds (``periodic:X``) or when X events wait (``buffer:X``). Every
  strategy also writes at exit.

A task that fails for good writes its error record and the run status in one
atomic step and publishes it; workers then stop at their next status check.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import random
import socket
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from fanflow.dag.graph import DAG
from fanflow.dag.node import substitute
from fanflow.dag.placement import (
    STAY,
    STORE,
    WAIT,
    continuation,
    plan_of,
    queue_kept,
    readers_stay,
    runs_here_if_claimed,
    runs_next,
    shed_units,
    sheddable,
    spread,
)
from fanflow.errors import FanflowError, InputLostError, NoRetry, ValueTooLargeError
from fanflow.platforms.base import Platform
from fanflow.platforms.invocation import Invocation, branch_id, send
from fanflow.store import keys
from fanflow.store.base import BEGIN_RUN, MISSING, RUNNING, Claim, Store, error_record
from fanflow.store.events import EventRows, Row, shape
from fanflow.worker.extras import PlanExtras
from fanflow.worker.heartbeat import heartbeat
from fanflow.worker.maps import MapFanouts
from fanflow.worker.values import values as process_values

log = logging.getLogger(__name__)


STATUS_CHECK_S = 0.2
"""How often a worker on a remote store asks whether its run was stopped."""

LARGE_OUTPUT_BYTES = 1 << 20
"""From this size an output is worth a round trip to keep it out of the store: its worker claims
the dependents it completes before uploading anything, and uploads only if another worker may
need the value (see :meth:`Worker._store_and_notify`)."""

NOTIFY_HOLD_S = 0.05
"""Longest a worker holds the notifications of short tasks it ran while it had more queued and the
platform no idle slot, to send them in one round trip (see :meth:`Worker._may_hold`)."""

HOLD_MAX_BYTES = 64 * 1024
"""Largest output whose notification may be held: a held output is always stored, where a larger one
is kept out of the store when this worker claims its reader (store-unless-claimed)."""

RECOMPUTE_BYTES_PER_S = 100e6
"""A pure task with no inputs whose large output took less than its size at this rate to make is
cheaper to run again where it is read than to seal, upload, fetch and unseal (8 MB: 80 ms), so its
output is not uploaded (see :meth:`Worker._recomputable`)."""

FANOUT_INLINE_MAX = 16 * 1024
"""Largest encoded DAG a worker copies into the payloads it sends; larger ones go by
reference (the client stored the DAG once), so a wide fan-out does not push N copies."""


# The shapes of the events every task and worker makes, looked up once: their rows are built
# inline (a tuple, no call), the rest through :meth:`Worker.emit`. Values come in this order.
_TASK = ("task", "t")  # and the worker's id, which its every event carries (EventRows.worker)
_TASK_STARTED = shape("task_started", _TASK)
_FINISHED = ("store_s", "out_bytes", "uploaded", "memory_mb", "attempt", "exec_s", "fetch_s", "in_bytes", *_TASK)
_TASK_FINISHED = shape("task_finished", _FINISHED)
_TASK_FINISHED_HELD = shape("task_finished", (*_FINISHED, "held"))
_WORKER_STARTED = shape(
    "worker_started", ("cold", "memory_mb", "latency_s", "received_at", "verify_s", "dag_s", "begin_s", *_TASK)
)
_WORKER_STOPPED = shape("worker_stopped", ("tasks", *_TASK))


_WORKER_PREFIX = f"{socket.gethostname()[:16]}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
_worker_numbers = itertools.count(1)


def _new_worker_id() -> str:
    """Unique across hosts and processes without a uuid per worker: host, pid, salt, counter."""
    return f"{_WORKER_PREFIX}-{next(_worker_numbers)}"


@functools.lru_cache(maxsize=8)
def _flush_strategy(metrics_upload: str) -> tuple[float | None, int | None]:
    """The ``metrics_upload`` strategy as (seconds between flushes, events per flush); parsed once per value."""
    strategy, _, arg = metrics_upload.partition(":")
    every_s = float(arg) if strategy == "periodic" else None
    at_len = 1 if strategy == "task" else int(float(arg)) if strategy == "buffer" else None
    return every_s, at_len


Item = int | tuple[int, int, int]
"""A unit of work: a task id, or ``(map task, element index, element count)``."""


def _task_of(item: Item) -> int:
    return item[0] if type(item) is tuple else item  # type: ignore[index,return-value]


class _Stop(Exception):  # noqa: N818 - internal control flow, never escapes the loop
    """The run was failed or cancelled elsewhere; this worker exits quietly."""


class Worker:
    """One invocation: runs its start tasks and the chain of tasks it claims."""

    # Scalars every worker starts with, as class-level values: none is set per worker at creation.
    tasks_run = 0
    _settled: Item | None = None
    """The last item of the queue when :meth:`_shed` last found nothing to move (items are unique)."""
    _current = -1
    _held_since = 0.0

    def __init__(
        self,
        inv: Invocation,
        store: Store,
        platform: Platform,
        dag: DAG,
        *,
        secret: bytes | None = None,
        cold: bool = False,
        redelivered: bool = False,
        delivery: str | None = None,
        arrival: tuple[float, float] | None = None,
        done: Callable[[], None] | None = None,
    ) -> None:
        self.inv = inv
        self.store = store
        self.platform = platform
        self.dag = dag
        self.plan = plan_of(dag)
        self.secret = secret
        self.id = _new_worker_id()
        # Claims belong to the invocation, not to this worker: a redelivered invocation re-enters them.
        self.owner = inv.inv_id or self.id
        self.run_id = inv.run_id
        self.settings = inv.settings
        self.cache: dict[int, Any] = {}
        self.events: list[Row] = []
        self.cold = cold
        self.redelivered = redelivered
        """The platform delivers this invocation again because the worker it first went to died."""
        self.delivery = delivery or self.id
        """Names this delivery of the invocation; a platform that retries a delivery (Ray) keeps it."""
        # Neither holds the worker (no reference cycle): a finished worker and its cache go at once.
        self.maps = MapFanouts()
        self.extras = PlanExtras(store, dag, inv.run_id, self.plan)
        self._ran_here: set[int] = set()
        self.unshared: set[int] = set()
        self._unstored: set[int] = set()
        """Outputs made here and never uploaded: only this worker can run their readers."""
        self._pinned: set[int] = set()
        """Queued tasks an output kept here counts on running here (see :meth:`_readers_stay_here`): never shed."""
        self._waiting: dict[int, set[int]] = {}
        """Outputs kept here whose notification waits, with the readers' inputs not made here yet that it waits
        for (:func:`~fanflow.dag.placement.readers_stay`, ``WAIT``)."""
        self._awaited: dict[int, list[int]] = {}
        """Input -> the waiting outputs that wait for it (so a finished task updates only those)."""
        self._due: list[int] = []
        """Waiting outputs whose inputs are all made here now: :meth:`_settle` notifies them."""
        self._waiting_rows: dict[int, Row] = {}
        """Their ``task_finished`` rows: whether the output was stored is known when it notifies."""
        self._labels_here: set[Any] = set()
        """Labels of the tasks run here: their other queued tasks are not shed (see :func:`shed_units`)."""
        self._ready: deque[Item] = deque()
        self._held: list[tuple[int, tuple[int, ...]]] = []
        """Tasks run here whose dependents are not notified yet, with those dependents (see :meth:`_may_hold`)."""
        self._held_puts: dict[str, Any] = {}
        self._held_events: list[Row] = []
        """The held tasks' ``task_finished`` rows: recorded with their share of the round trip that notifies them."""
        self._held_may_move = False
        """A held notification may claim a task that an idle slot could run (see :meth:`_claims_stay`)."""
        self._taken: set[int] = set()
        """Claimed dependents this worker ran, queued or handed on (see :meth:`continue_after`)."""
        self._status_key = keys.status(inv.run_id)
        self._remote = not store.keeps_objects
        now = time.time()
        self._last_flush = now
        self._flush_every_s, self._flush_at_len = _flush_strategy(inv.settings.metrics_upload)
        self._next_status_check = now + STATUS_CHECK_S
        self.started_at = now
        self._arrival = arrival or (now, now)
        """When the invocation reached this process, and when it was verified (the DAG was loaded by now)."""
        self._done = done
        """Told that the loop is over, before its last events go (see :meth:`run`)."""

    # -- the loop ---------------------------------------------------------------
    def run(self) -> None:
        """Run the start tasks and everything this worker claims after them.

        First (:meth:`Store.begin`, one round trip): nothing runs, and nothing is
        written, for a run that is not running any more, nor for a second delivery
        of an invocation that already started (a redelivered parent starts its
        branches again with the same ids), unless this one is the platform's
        redelivery after the first one's worker died.
        """
        verdict = self.store.begin(
            self._status_key,
            keys.started(self.run_id),
            self.owner,
            self.delivery,
            self.settings.key_ttl_s,
            self.redelivered,
        )
        if verdict != BEGIN_RUN:
            log.info("run %s: invocation %s does not run (%s)", self.run_id, self.owner, verdict)
            return
        begun = time.time()
        self._next_status_check = begun + STATUS_CHECK_S
        received_at, verified_at = self._arrival
        self.events.append(
            (
                self.cold,
                self.inv.memory_mb,
                max(0.0, self.started_at - self.inv.invoked_at) if self.inv.invoked_at else 0.0,
                received_at,
                verified_at - received_at,
                self.started_at - verified_at,
                begun - self.started_at,
                -1,
                time.time(),
                _WORKER_STARTED,
            )
        )
        ready = self._ready = deque(self.inv.start)
        over = False
        try:
            while ready or self._held or self._waiting:
                if self._held and (not ready or self._notify_due(ready[0])):
                    self._notify_held(ready)
                    continue
                if not ready:  # nothing else to run here: what waits notifies now
                    self._notify_waiting(ready, list(self._waiting), last=True)
                    continue
                self._check_running()
                if len(ready) > 1:
                    self._shed(ready)
                item = ready.popleft()
                if type(item) is tuple:
                    self._current = item[0]
                    claimed = self.maps.run_element(self, *item)
                elif item in self.dag.maps:
                    self._current = item
                    ready.extend(self._run_task(item))  # what the expansion runs here
                    continue
                else:
                    self._current = item
                    claimed = self._run_task(item)
                if claimed:
                    self._enqueue(ready, self.continue_after(self._current, claimed))
                if self._due:
                    self._settle(ready)
            over = True
        except _Stop:
            over = True
        finally:
            self.extras.stop()
            self.events.append((self.tasks_run, -1, time.time(), _WORKER_STOPPED))
            # Nothing of the run is left to do here but the events: the platform may hand this process its
            # next invocation meanwhile (a pool's queued one was received 1.3-1.6 ms after the worker
            # before it stopped, median, p90 2.9-3.5 ms, this flush's round trip among them). Not after an
            # error outside a task, which the caller records after this.
            if over and self._done is not None:
                self._done()
            self._flush_events()

    def _run_task(self, t: int) -> list[Any]:
        """Run task ``t``; the dependents it claimed (for a map: what its expansion runs here)."""
        self.events.append((t, time.time(), _TASK_STARTED))
        if self._flush_at_len == 1:  # "task": a live view sees the task running, not only done
            self._flush_events()
        values, in_bytes, fetch_s = self.inputs(t)
        if t in self.dag.maps:
            return self.maps.expand(self, t, values)
        if not self._remote:  # in-process workers cannot be lost apart from their client
            value, attempt, exec_s = self.execute(t, values)
            return self.task_done(t, value, attempt, exec_s, fetch_s, in_bytes)
        self.extras.preload_for(t, self.cache)
        lease_key = keys.lease(self.run_id, t)
        token = heartbeat.track(self.store, lease_key, self.owner, self.settings.lease_ms)
        try:
            value, attempt, exec_s = self.execute(t, values)
            claimed = self.task_done(t, value, attempt, exec_s, fetch_s, in_bytes)
        finally:
            leased = heartbeat.untrack(token)
        if leased:
            self.store.end_leases([lease_key], self.settings.key_ttl_s)
        return claimed

    def task_done(
        self, t: int, value: Any, attempt: int, exec_s: float, fetch_s: float, in_bytes: Sequence[int | None]
    ) -> list[int]:
        """``t`` ran here: store its output, notify its dependents, keep it in the cache; the claimed dependents."""
        claimed, out_bytes, store_s, uploaded = self._store_and_notify(t, value, exec_s)
        self.tasks_run += 1
        self._ran_here.add(t)
        if self._awaited:
            for h in self._awaited.pop(t, ()):
                waits = self._waiting.get(h)
                if waits is not None:
                    waits.discard(t)
                    if not waits:
                        self._due.append(h)
        label = self.plan.labels[t]
        if label is not None:
            self._labels_here.add(label)
        self._release_inputs(t)
        memory = self.inv.memory_mb
        if self.dag.dependents[t]:
            self.cache[t] = value
            if self._remote:
                process_values.put(self.run_id, t, value, out_bytes, memory)
            if not uploaded:
                self._unstored.add(t)
        now = time.time()
        # A tuple of sizes keeps the row plain values, which the garbage collector stops tracking at
        # its first look: a list kept two objects per task tracked until the run was recorded (and
        # with them the next full collection near, see fanflow.dag.graph).
        sizes = tuple(in_bytes)
        if self._held and self._held[-1][0] == t:  # store_s comes when the held notifications go
            row = (0.0, out_bytes, uploaded, memory, attempt, exec_s, fetch_s, sizes, t, now, True)
            self._held_events.append((*row, _TASK_FINISHED_HELD))
        elif t in self._waiting:  # store_s and uploaded come when it notifies
            self._waiting_rows[t] = (0.0, out_bytes, False, memory, attempt, exec_s, fetch_s, sizes, t, now)
        else:
            row = (store_s, out_bytes, uploaded, memory, attempt, exec_s, fetch_s, sizes, t, now)
            self.events.append((*row, _TASK_FINISHED))
            self.maybe_flush()
        return claimed

    # -- 1. inputs ------------------------------------------------------------------
    def inputs(self, t: int, skip_first: bool = False) -> tuple[list[Any], list[int | None], float]:
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
        missing, preloaded, preloaded_bytes = self.extras.take_preloaded(t, ups, missing, values, sizes)
        if preloaded:
            self.emit("preloaded", t, inputs=preloaded, bytes=preloaded_bytes)
        run, dag = self.run_id, self.dag
        if missing and self._remote:  # this process made or fetched it for an earlier invocation
            for i in missing:
                values[i] = process_values.get(run, ups[i])
            missing = [i for i in missing if values[i] is MISSING]
        if not missing:
            return values, sizes, 0.0
        began = time.perf_counter()
        fetched, fetched_sizes = self.store.get_many([keys.output_of(run, dag, ups[i]) for i in missing])
        elapsed = time.perf_counter() - began
        memory = self.inv.memory_mb
        for i, v, n in zip(missing, fetched, fetched_sizes, strict=True):
            if v is MISSING:
                values[i] = self._recompute(t, ups[i])
            else:
                values[i] = v
                if self._remote:
                    process_values.put(run, ups[i], v, n, memory)
            sizes[i] = n
        return values, sizes, elapsed

    def _recompute(self, t: int, u: int) -> Any:
        """Lineage: run upstream ``u`` again from its own inputs, as its output is not in the store.

        That happens when ``u``'s worker kept the output local (delayed I/O) and
        was lost, or when the output expired. The value is stored again for any
        other consumer; ``u``'s dependents were notified the first time, so they
        are not notified again. Missing inputs of ``u`` are recomputed in turn,
        with an explicit stack (a chain of any length, no recursion limit): one
        fetch round trip per level, then the tasks run innermost first.
        """
        dag, cache = self.dag, self.cache
        known: dict[int, Any] = {}
        todo = [(u, t)]  # (task to recompute, the task that needs it)
        self._lost_input(t, u)
        while todo:
            v, _ = todo[-1]
            if v in known:  # needed twice on the way down; recomputed once
                todo.pop()
                continue
            need = [w for w in dag.deps[v] if w not in known and w not in cache]
            if need and self._remote:  # kept by this process for an earlier invocation
                for w in need:
                    hit = process_values.get(self.run_id, w)
                    if hit is not MISSING:
                        known[w] = hit
                need = [w for w in need if w not in known]
            if need:
                fetched, _ = self.store.get_many([keys.output_of(self.run_id, dag, w) for w in need])
                for w, value in zip(need, fetched, strict=True):
                    if value is MISSING:
                        self._lost_input(v, w)
                        todo.append((w, v))
                    else:
                        known[w] = value
                if todo[-1][0] != v:
                    continue
            todo.pop()
            values = [known[w] if w in known else cache[w] for w in dag.deps[v]]
            value, _, exec_s = self.execute(v, values)
            stored, size = self.dump(v, value)
            if not self._recomputable(v, size, exec_s):  # else any other reader makes it again, as this one did
                self.store.put_many({keys.output_of(self.run_id, dag, v): stored}, self.settings.key_ttl_s)
            if self._remote:
                process_values.put(self.run_id, v, value, size, self.inv.memory_mb)
            known[v] = value
        return known[u]

    def _lost_input(self, t: int, u: int) -> None:
        """``u``, an input of ``t``, is to be recomputed: say so, or fail if it is a map's output."""
        if u in self.dag.maps:
            raise InputLostError(
                f"task {self.dag.name(t)!r}: its input {self.dag.name(u)!r} (a fanflow.map) is not in the store "
                "(expired or lost); raise key_ttl_s if runs outlive it"
            )
        self.emit("recomputed", u, for_task=t)

    # -- 2. execute -----------------------------------------------------------------
    def execute(self, t: int, values: list[Any]) -> tuple[Any, int, float]:
        """Call ``t``'s function on its input values, with its retries; (value, attempt, seconds)."""
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
            except BaseException as exc:  # sys.exit() or KeyboardInterrupt in a task fail it too
                if isinstance(exc, NoRetry) or not isinstance(exc, task.retry_on) or attempt > task.retries:
                    self._fail(t, exc, attempt)
                    raise _Stop from exc
                delay = task.retry_backoff * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                self.emit("task_retry", t, attempt=attempt, error=f"{type(exc).__name__}: {exc}")
                time.sleep(delay)

    # -- 3. output + notify -----------------------------------------------------------------
    def _store_and_notify(self, t: int, value: Any, exec_s: float = 0.0) -> tuple[list[int], int, float, bool]:
        """Store ``t``'s output and notify its dependents in one round trip; (claimed, size, seconds, uploaded).

        An output read by one task only is stored by the claim itself, and only
        if another worker will run that task: when this worker wins the claim
        it runs the task next with the value in memory (store-unless-claimed).

        A large output (:data:`LARGE_OUTPUT_BYTES`) of a remote worker that would
        keep any dependent it claims first claims, without sending the value,
        the dependents its notification completes (``only_if_last``). When that
        is all of them the value never travels: the worker keeps them all
        (``unshared``, see :func:`~fanflow.dag.placement.continuation`).
        Otherwise a second round trip stores the value (a plain ``SET``, never
        through a script) and notifies the others, before any worker this one
        starts can look for it.
        """
        dag, store, run, remote = self.dag, self.store, self.run_id, self._remote
        dependents = dag.dependents[t]
        sink = dag.is_sink(t)
        stored, size = self.dump(t, value)
        # What only a remote worker does (keep readers here, recompute, hold) is asked only there.
        local = self.extras.delays_upload(t)
        if not local and remote:
            verdict = self._readers_stay_here(t)
            if verdict == WAIT:
                return [], size, 0.0, False
            local = verdict == STAY
        if local:
            self.emit("delayed_io", t)
        elif remote and self._recomputable(t, size, exec_s):
            local = True
        ttl, lease, memory = self.settings.key_ttl_s, self.settings.lease_ms, self.inv.memory_mb
        large = remote and size >= LARGE_OUTPUT_BYTES and not local and not sink
        if remote and not local and size < HOLD_MAX_BYTES and self._may_hold(t, exec_s):
            if not self._held:
                self._held_since = time.time()
            self._held_may_move = self._held_may_move or not self._claims_stay(t)
            self._held.append((t, dependents))
            self._held_puts[keys.output_of(run, dag, t)] = stored
            return [], size, 0.0, True
        claimed: list[int] = []
        elapsed = 0.0
        if large and dependents and all(runs_here_if_claimed(self.plan, t, d, memory) for d in dependents):
            first = [
                Claim(keys.deps(run, d), keys.claim(run, d), t, len(dag.deps[d]), only_if_last=True) for d in dependents
            ]
            began = time.perf_counter()
            won = store.finish({}, first, self.owner, ttl, lease)
            elapsed = time.perf_counter() - began
            claimed = [d for d, ok in zip(dependents, won, strict=True) if ok]
            if len(claimed) == len(dependents):
                self.unshared.add(t)
                return claimed, size, elapsed, False
            dependents = [d for d, ok in zip(dependents, won, strict=True) if not ok]
        puts: dict[str, Any] = {}
        if (
            not local
            and not large
            and len(dependents) == 1
            and not sink
            and runs_here_if_claimed(self.plan, t, dependents[0], memory)
        ):
            d = dependents[0]
            out = keys.output(run, t, d)
            claims = [Claim(keys.deps(run, d), keys.claim(run, d), t, len(dag.deps[d]), out, stored)]
        else:
            claims = [Claim(keys.deps(run, d), keys.claim(run, d), t, len(dag.deps[d])) for d in dependents]
            if not local:
                puts[keys.output_of(run, dag, t)] = stored
        publish = [(keys.channel(run), f"sink:{t}".encode())] if sink else []
        began = time.perf_counter()
        won = store.finish(puts, claims, self.owner, ttl, lease, publish)
        elapsed += time.perf_counter() - began
        stored_unless_claimed = bool(claims) and claims[0].output_key is not None
        uploaded = bool(puts) or (stored_unless_claimed and not won[0])
        return claimed + [d for d, ok in zip(dependents, won, strict=True) if ok], size, elapsed, uploaded

    def _readers_stay_here(self, t: int) -> int:
        """Delayed I/O decided at run time (:func:`~fanflow.dag.placement.readers_stay`): ``STORE``, ``STAY``
        (the output stays here and notifies now) or ``WAIT`` (it stays here, and its notification waits in
        :attr:`_waiting` until :meth:`_settle` or the end of the queue). The readers' inputs it counts on
        running here are pinned (never shed). Lineage still covers a lost worker, as for any output kept
        local.
        """
        plan, dag = self.plan, self.dag
        if plan.upload[t] or plan.labels[t] is None:
            return STORE
        # a task whose notification is held here ran here: its notification comes from this worker too
        verdict, waits = readers_stay(dag, plan, t, self._ran_here.__contains__, self._ready)
        self._pinned.update(waits)
        if verdict == WAIT:
            self._waiting[t] = set(waits)
            for u in waits:
                self._awaited.setdefault(u, []).append(t)
        return verdict

    def _settle(self, ready: deque[Item]) -> None:
        """Notify, without storing them, the waiting outputs whose readers' inputs are all made here now:
        this worker sends the last notification each reader waits for, so it claims and keeps them all."""
        done, self._due = self._due, []
        self._notify_waiting(ready, done, last=False)

    def _notify_waiting(self, ready: deque[Item], done: list[int], *, last: bool) -> None:
        """Notify the readers of the waiting outputs ``done``; continue after each.

        ``last``: this worker's queue is empty, so some inputs it waited for were made elsewhere. Each
        claim is first asked only where it completes its reader (``only_if_last``, one round trip
        without the values); an output some reader of which still waits for another input is then
        stored, and those readers notified, in a second round trip, before anyone can claim them.
        """
        run, dag, store, cache = self.run_id, self.dag, self.store, self.cache
        ttl, lease = self.settings.key_ttl_s, self.settings.lease_ms
        claims = [
            Claim(keys.deps(run, d), keys.claim(run, d), h, len(dag.deps[d]), only_if_last=last)
            for h in done
            for d in dag.dependents[h]
        ]
        began = time.perf_counter()
        won = iter(store.finish({}, claims, self.owner, ttl, lease))
        claimed = {h: [d for d in dag.dependents[h] if next(won)] for h in done}
        stored: list[int] = []
        if last:
            stored = [h for h in done if len(claimed[h]) < len(dag.dependents[h])]
        if stored:
            puts = {keys.output_of(run, dag, h): self.dump(h, cache[h])[0] for h in stored}
            rest = [(h, d) for h in stored for d in dag.dependents[h] if d not in claimed[h]]
            second = [Claim(keys.deps(run, d), keys.claim(run, d), h, len(dag.deps[d])) for h, d in rest]
            for (h, d), ok in zip(rest, store.finish(puts, second, self.owner, ttl, lease), strict=True):
                if ok:
                    claimed[h].append(d)
            self._unstored.difference_update(stored)
        share = (time.perf_counter() - began) / len(done)
        if last:  # every waiting output goes now
            self._awaited.clear()
            self._due.clear()
        for h in done:
            del self._waiting[h]
            row = self._waiting_rows.pop(h)
            uploaded = h in stored
            if not uploaded:
                self.emit("delayed_io", h)
            self.events.append((share, row[1], uploaded, *row[3:], _TASK_FINISHED))
        self.maybe_flush()
        for h in done:
            if claimed[h]:
                self._enqueue(ready, self.continue_after(h, claimed[h]))

    def _recomputable(self, t: int, size: int, exec_s: float) -> bool:
        """Whether ``t``'s output stays out of the store, made again by any reader elsewhere (lineage).

        A large output of a pure task (``fanflow.task(pure=True)``; a Dask random
        chunk) with no inputs, made faster than it moves: svd_compressed's
        8 MB random blocks each cost a seal, an upload and an UNLINK per run,
        though their second reader mostly runs in the process that made them.
        A reader elsewhere recomputes the block from its arguments alone.
        """
        dag = self.dag
        return (
            self._remote
            and size >= LARGE_OUTPUT_BYTES
            and not dag.deps[t]
            and dag.task(t).pure
            and not dag.is_sink(t)
            and t not in dag.maps
            and exec_s * RECOMPUTE_BYTES_PER_S < size
        )

    def _may_hold(self, t: int, exec_s: float) -> bool:
        """Whether ``t``'s notification may wait, to go with the next ones in one round trip.

        A worker that finishes a short task while more work waits in its queue
        and the platform has no idle slot gains nothing from notifying at once:
        what the notification claims would queue behind that work (or wait for
        a slot), and another worker could not start it sooner. Nor with an
        idle slot when what it claims stays here anyway (:meth:`_claims_stay`).
        So it holds the notification (the output stored as a plain ``SET``, the
        claims as usual) and sends all it holds in one pipeline when the queue
        empties, a slot frees (for claims that could go there), the next task
        is of another function (it may be long), or :data:`NOTIFY_HOLD_S` passed: 400 sleeps of 10 ms on 2 workers
        cost 200 round trips per worker, 40 this way. A worker lost while it
        holds them is a worker lost before notifying: its invocation runs
        again, and claims are exactly-once as ever. Asked only by a worker of a
        remote store (:meth:`_store_and_notify`): in-process runs have no round trips to save.
        """
        dag, ready = self.dag, self._ready
        return (
            bool(ready)
            and exec_s < NOTIFY_HOLD_S
            and bool(dag.dependents[t])
            and not dag.is_sink(t)
            and t not in dag.maps
            and dag.task_of[_task_of(ready[0])] == dag.task_of[t]
            and (self.free_slots() == 0 or self._claims_stay(t))
            and (not self._held or time.time() - self._held_since < NOTIFY_HOLD_S)
        )

    def _claims_stay(self, t: int) -> bool:
        """Whether what ``t``'s notification can claim runs in this worker however many slots are idle.

        Its one dependent is kept on a claim (:func:`~fanflow.dag.placement.runs_here_if_claimed`) and
        carries a label that ran here (``t``'s, or an earlier task's), which :meth:`_shed` never hands
        on. Then an idle slot gains nothing from the notification going at once. A real-size tree on
        2 workers: the worker still running when the other had ended notified each of its last tasks
        on its own (218 voluntary switches against ~15, 0.107 s of CPU against 0.059 s for the same
        1,024 tasks), and which worker ended first changed from run to run.
        """
        dependents = self.dag.dependents[t]
        if len(dependents) != 1:
            return False
        plan, d = self.plan, dependents[0]
        label = plan.labels[d]
        return (
            label is not None
            and (label == plan.labels[t] or label in self._labels_here)
            and runs_here_if_claimed(plan, t, d, self.inv.memory_mb)
        )

    def _notify_due(self, upcoming: Item) -> bool:
        """Whether the held notifications go now, before ``upcoming`` runs (see :meth:`_may_hold`)."""
        return (
            time.time() - self._held_since >= NOTIFY_HOLD_S
            or self.dag.task_of[_task_of(upcoming)] != self.dag.task_of[self._held[-1][0]]
            or (self._held_may_move and self.free_slots() != 0)
        )

    def _notify_held(self, ready: deque[Item]) -> None:
        """Store the held outputs and notify their dependents in one round trip; continue after each."""
        held, puts = self._held, self._held_puts
        self._held, self._held_puts, self._held_may_move = [], {}, False
        run, dag = self.run_id, self.dag
        claims = [Claim(keys.deps(run, d), keys.claim(run, d), t, len(dag.deps[d])) for t, ds in held for d in ds]
        began = time.perf_counter()
        won = iter(self.store.finish(puts, claims, self.owner, self.settings.key_ttl_s, self.settings.lease_ms))
        share = (time.perf_counter() - began) / len(held)
        self.events.extend((share, *row[1:]) for row in self._held_events)  # store_s is a row's first value
        self._held_events = []
        self.maybe_flush()
        for t, ds in held:
            claimed = [d for d in ds if next(won)]
            if claimed:
                self._enqueue(ready, self.continue_after(t, claimed))

    def dump(self, t: int, value: Any) -> tuple[Any, int]:
        """``t``'s output in the store's form, and its size; refuses one above ``max_value_bytes``."""
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
    def continue_after(self, t: int, claimed: list[int]) -> list[Item]:
        """Of the dependents ``t`` claimed, what runs here next (:func:`~fanflow.dag.placement.continuation`).

        A new worker is invoked for each of the others. A dependent this worker
        already took is skipped: a claim's owner re-enters it, so an invocation
        that runs again after its worker was lost, and re-notifies upstreams
        that were already members, wins the same claim once per upstream.
        """
        claimed = [d for d in claimed if d not in self._taken]
        self._taken.update(claimed)
        unshared = t in self.unshared
        self.unshared.discard(t)
        if not claimed:
            return []
        here, elsewhere = continuation(
            self.dag,
            self.plan,
            t,
            claimed,
            self.inv.memory_mb,
            self._is_here,
            unshared=unshared,
            free=self.free_slots(),
        )
        if len(here) > 1 and (unshared or self.plan.labels[t] is not None):
            self.emit("clustered", t, tasks=here)
        self.invoke(elsewhere)
        return list(here)

    def _enqueue(self, ready: deque[Item], here: list[Item]) -> None:
        """Queue what this worker continues with: joins first (see :func:`~fanflow.dag.placement.runs_next`).

        The simulator queues its claims by the same rule, so a plan predicts the order the loop runs.
        A task whose inputs are all in this worker's cache is no join: that test is a C loop and
        answers for most claims (a tree's pairs), so they make no call to ``runs_next`` nor ``_is_here``.
        """
        deps, cache = self.dag.deps, self.cache
        first: list[Item] = []
        for d in here:
            t = _task_of(d)
            ups = deps[t]
            if len(ups) > 1 and not all(map(cache.__contains__, ups)) and runs_next(t, ups, self._is_here):
                first.append(d)
        queue_kept(ready, here, first)

    def _is_here(self, u: int) -> bool:
        """Whether ``u``'s output is in this worker, or in its process from an earlier invocation."""
        return u in self.cache or (self._remote and process_values.holds(self.run_id, u))

    def _local_inputs(self, item: Item) -> int:
        return sum(map(self._is_here, self.dag.deps[_task_of(item)]))

    def free_slots(self) -> int | None:
        """The platform's idle worker slots (a local read, no round trip); None when it has no such count
        or the run fans out one worker per branch (``fanout="wukong"``).

        A redelivered invocation sees none: it re-enters the claims its lost
        incarnation took, so it runs whatever it claims itself. Handing a task to
        a new worker (a new claim owner) could strand that task's dependents,
        whose claims the lost incarnation may hold.
        """
        if self.settings.fanout != "capacity":
            return None
        return 0 if self.redelivered else self.platform.free_slots()

    def _shed(self, ready: deque[Item]) -> None:
        """Hand part of this worker's queue to new workers while the platform has idle slots.

        Work queues here when no slot was idle as it was claimed; a slot that
        frees later (another worker ended) takes a share now (:func:`spread`),
        of the items another worker can run as well as this one
        (:func:`~fanflow.dag.placement.sheddable`; map elements whose item only
        this worker holds stay too). A labelled task moves with the rest of
        its label, while none of that label ran here
        (:func:`~fanflow.dag.placement.shed_units`).
        """
        free = self.free_slots()
        if not free or ready[-1] == self._settled:
            return
        dag, unstored, maps = self.dag, self._unstored.__contains__, self.maps

        def stays(item: Item) -> bool:
            return (
                item in self._pinned
                or not sheddable(dag, _task_of(item), unstored)
                or (type(item) is tuple and maps.holds(item[0], item[1]))  # type: ignore[index]
            )

        units = shed_units(self.plan, ready, _task_of, stays, self._labels_here)
        if not units:
            # Nothing here may move, and none of it ever will: no scan again before the queue grows
            # (a scan per task of a 1,000-item queue that stays cost ~0.4 ms each).
            self._settled = ready[-1]
            return
        # What reads fewest inputs held here goes (spread gives the tail away): on a warm pool the
        # other inputs are likely in the process that made them, which a new invocation may reach.
        units.sort(key=lambda unit: sum(map(self._local_inputs, unit)), reverse=True)
        _, shares = spread(units, free)
        groups = [[item for unit in share for item in unit] for share in shares]
        moved = {item for g in groups for item in g}
        if not moved:
            return
        kept = [item for item in ready if item not in moved]
        ready.clear()
        ready.extend(kept)
        self.emit("shed", -1, items=len(moved), workers=len(groups))
        self.invoke(groups)

    def invoke(self, groups: Sequence[Sequence[Item]]) -> None:
        """Start one worker per group; a group's items run one after another in that worker."""
        if not groups:
            return
        now = time.time()
        memory = self.inv.memory_mb
        base = self.inv
        if isinstance(base.dag, bytes) and len(base.dag) > FANOUT_INLINE_MAX:
            base = base.with_start(base.start, memory, now)
            base.dag = None
        plan = self.plan
        owner = self.owner
        invs = [
            base.with_start(tuple(g), plan.memory_for(_task_of(g[0]), memory), now, branch_id(owner, tuple(g)))
            for g in groups
        ]
        send(self.platform, invs, self.secret)

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
        self.emit("task_failed", t, attempt=attempt, error=f"{type(exc).__name__}: {exc}")
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
    def emit(self, kind: str, task: int, **fields: Any) -> None:
        """Record one event, stamped now; written in batches by the flush strategy.

        The events of every task and worker are built inline instead (see ``_TASK_FINISHED``).
        """
        form = shape(kind, (*fields, *_TASK))
        self.events.append((*fields.values(), task, time.time(), form))

    def maybe_flush(self) -> None:
        """Write the buffered events if the ``metrics_upload`` strategy says it is time."""
        if (self._flush_at_len is not None and len(self.events) >= self._flush_at_len) or (
            self._flush_every_s is not None and time.time() - self._last_flush >= self._flush_every_s
        ):
            self._flush_events()

    def _flush_events(self) -> None:
        if not self.events:
            return
        batch, self.events = EventRows(self.events, self.id), []
        self._last_flush = time.time()
        try:
            self.store.append_events(keys.events(self.run_id), batch, self.settings.key_ttl_s)
        except Exception:  # events are observability; losing a batch must not fail the run
            log.warning("could not write %d events of run %s", len(batch), self.run_id, exc_info=True)
