"""The ``threads`` platform: workers are threads of this process.

A small pool of daemon threads takes invocation objects from one queue, so an
invocation costs a queue put rather than a thread start. Threads are started as
invocations arrive, up to ``max_workers``, and stay for the life of the platform.

A client that would only wait for its run may instead run invocations on its own
thread (:meth:`ThreadsPlatform.run_here`, the optional part of the platform
protocol, :class:`fanflow.platforms.base.RunsOnCaller`): one it has not invoked,
then those of its run still waiting in the queue, which it takes back before a
pool thread does (the run's other roots, its fan-outs). Waiting invocations are
kept by run, so taking one back costs the same however many other runs queue.
A small run then costs no hand-off to a worker thread and back (thread wake-ups
were about a third of the fixed cost of a 1-task run). The calling thread counts
as one of the ``max_workers`` while it runs one, so ``max_workers`` still bounds
how many tasks run at once.

The caller may also hold its run's other roots back (``run_here``'s ``others``):
once :data:`STREAK` invocations in a row of runs of the same DAG (its signature)
were short (:meth:`Spreading.leave`), they wait for the caller instead of waking
a pool thread. A woken pool thread that found its invocation taken back still
needed the GIL to go back to sleep, and every short release of the GIL by the
caller (a file check, ``os.urandom``) woke it in vain: a 3-task ``dask.compute``
made ~7 context switches a call. Held roots the caller has not taken within
:data:`HOLD_S` go to the pool (a watcher thread waits on a kernel timer, set
and cleared by the caller without waking it), and that ends the DAG's streak,
so work that does run long spreads as before. Linux only (``timerfd``);
elsewhere the other roots are invoked at once, as before.

Once :data:`MERGE_AFTER` held runs in a row of a DAG had every held root taken
by their caller (none went to the pool), the next runs' roots are not separate
invocations at all: they join the caller's own, one worker runs them one after
another (:func:`_merged`). A held root still cost a worker of its own (its
invocation, its store ``begin``, its events, the platform's bookkeeping): about
80 us of a 3-task ``dask.compute``'s 400 us in fanflow. The evidence is the
hold's: the caller ran those roots itself, within :data:`HOLD_S`, in every one
of the last runs. A merged invocation that is not short ends both streaks, so
the next runs spread again; until then a merged root that runs long keeps the
others behind it, where a held one would have let them go to the pool after
:data:`HOLD_S` (and roots of one run that wait for each other, which never
make held runs short, never merge).
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from threadpoolctl import threadpool_limits

from fanflow.config import Config
from fanflow.errors import PlatformError
from fanflow.platforms.base import Handler, local_handler
from fanflow.platforms.collector import relaxed
from fanflow.platforms.invocation import Invocation
from fanflow.platforms.lost import fail_invocation
from fanflow.platforms.sizing import blas_threads
from fanflow.platforms.spreading import Spreading
from fanflow.store.locks import YieldingLock, YieldingSemaphore

log = logging.getLogger(__name__)
_STOP = object()
_here = threading.local()

SWITCH_INTERVAL_S = 0.05
"""Least GIL switch interval while worker threads run (see the module docstring)."""

HOLD_S = 0.005
"""How long a root held back for its run's caller waits for it before it goes to the pool."""

STREAK = 16
"""Short invocations in a row of runs of one DAG after which its runs' other roots are held for the caller."""

MERGE_AFTER = 8
"""Held runs of one DAG in a row whose caller took every held root, after which its runs' roots share one invocation."""

_SIGNATURES = 1024
"""DAG signatures whose streaks are kept; more, and all are forgotten."""


def default_max_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


class ThreadsPlatform:
    """Runs each invocation on one of up to ``max_workers`` threads."""

    name = "threads"
    in_process = True

    def __init__(self, handler: Handler, max_workers: int | None = None) -> None:
        self.options: dict[str, Any] = {}
        self._handler = handler
        self._max = max_workers or default_max_workers()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # One per running invocation, on a pool thread or a caller's (run_here): max_workers at a time.
        # Taken and given back per invocation by the caller and the pool, so its lock yields too.
        self._slots = YieldingSemaphore(self._max)
        # Queued invocations no thread has taken yet, by run, then by id: whoever pops one here
        # (a pool thread, or its run's caller in run_here) runs it, so exactly once. Pops and
        # puts hold _taking: a run's entry goes when it empties, and a put must not land in a
        # dict that is no longer the run's.
        self._waiting: dict[str | None, dict[int, Any]] = {}
        self._taking = YieldingLock()  # taken per invocation by the caller and the pool (see YieldingLock)
        self._lock = threading.Lock()
        self._closed = False
        self._blas_limit: threadpool_limits | None = None
        self._switch_interval: float | None = None
        self._spreading = Spreading()
        # Roots held back for their run's caller (run_here's others), in _waiting but not queued, by run:
        # the time they go to the pool unless taken, and the invocations. Changed under _taking, as is
        # the alarm, which is set for the earliest of those times while any run holds roots.
        self._held: dict[str | None, tuple[float, list[Any]]] = {}
        self._alarm = _Alarm.make()
        self._watcher: threading.Thread | None = None
        self._streaks: dict[str | None, int] = {}  # by DAG signature: short invocations in a row
        # By DAG signature: held runs in a row whose caller took every held root (see MERGE_AFTER).
        self._merging: dict[str | None, int] = {}

    def worker_cap(self) -> int:
        """``max_workers``: invocations beyond it wait in the queue for a thread."""
        return self._max

    def free_slots(self) -> int | None:
        """None (every fan-out branch gets its own worker) while spreading pays; 0 while it does not.

        0 keeps a run on the thread that runs it: its client starts it as one
        invocation and its workers keep every branch. See
        :mod:`fanflow.platforms.spreading` for how that is measured. With
        ``max_workers=1`` it is always 0: the one slot is the running worker's,
        and a branch handed on would only wait for it (and for a thread hand-off).
        """
        return 0 if self._max == 1 or self._spreading.serial else None

    def invoke(self, invocations: Sequence[Any]) -> None:
        waiting = self._waiting
        with self._taking:
            for inv in invocations:
                # The queue holds it until taken, so its id stays its own.
                waiting.setdefault(getattr(inv, "run_id", None), {})[id(inv)] = inv
        self._queue_up(invocations)

    def _queue_up(self, invocations: Sequence[Any]) -> None:
        """Put waiting invocations in the queue, starting pool threads for them up to ``max_workers``."""
        put = self._queue.put
        for inv in invocations:
            put(inv)
        if len(self._threads) >= self._max:
            return
        with self._lock:
            self._limit()
            for _ in range(min(self._max - len(self._threads), len(invocations))):
                t = threading.Thread(target=self._serve, name=f"fanflow-worker-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()

    def _limit(self) -> None:
        """Cap numeric thread pools and raise the switch interval, once, as worker threads start (lock held)."""
        if self._blas_limit is None and self._max > 1:
            self._blas_limit = threadpool_limits(limits=blas_threads((os.cpu_count() or 1) / self._max))
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(max(self._switch_interval, SWITCH_INTERVAL_S))

    def run_here(self, invocation: Any, others: Sequence[Any] = ()) -> bool:
        """Run ``invocation`` (not given to :meth:`invoke`) on the calling thread, then its run's waiting ones.

        ``others``: more invocations of its run to start (its other roots). They
        are invoked, or, after :data:`STREAK` short invocations in a row of runs
        of the same DAG (see the module's docstring), held back for this thread:
        no pool thread is woken for them unless this thread has not taken them
        within :data:`HOLD_S`; after :data:`MERGE_AFTER` held runs whose others
        this thread all took, merged into ``invocation`` (one worker runs them all).

        Returns False, having run nothing, when ``max_workers`` invocations are
        running already (then :meth:`invoke` it; ``others`` are invoked). After
        ``invocation``, the invocations of its run that wait in the queue are
        taken back, one after another, each only if no pool thread has taken it
        yet and only while a worker slot is free; those that the ones run here
        start are taken in turn. Returns when none of the run's invocations
        waits any more (or no slot is free: then those it held go to the pool):
        the others are running on pool threads.

        While it runs, the calling thread is one of this platform's workers: a
        task on it that starts a run on this platform gets
        :class:`fanflow.NestedRunError`, as on a pool thread.
        """
        if self._closed or not self._slots.acquire(blocking=False):
            if others:
                self.invoke(others)
            return False
        run_id = getattr(invocation, "run_id", None)
        signature = _signature(invocation) if others else None
        if others and self._merging.get(signature, 0) >= MERGE_AFTER and isinstance(invocation, Invocation):
            invocation, others = _merged(invocation, others), ()
        held = bool(others) and self._alarm is not None and self._streaks.get(signature, 0) >= STREAK
        if held:
            self._hold(run_id, others)
        elif others:
            self.invoke(others)
        try:
            self._run_on_caller(invocation)
            waiting = self._waiting
            # Looked at without _taking first (one dict read): mostly nothing of the run waits, and then
            # no slot is taken and given back for it. What is queued after this look goes to the pool,
            # as after a look under the lock.
            while waiting.get(run_id) and not self._closed and self._slots.acquire(blocking=False):
                taken = self._take(run_id)
                if taken is None:
                    self._slots.release()
                    return True
                self._run_on_caller(taken)
            return True
        finally:
            if held:
                if self._let_go(run_id):
                    _count(self._merging, signature, self._merging.get(signature, 0) + 1)
                else:
                    self._merging.pop(signature, None)

    def _hold(self, run_id: str | None, invocations: Sequence[Any]) -> None:
        """Make ``invocations`` wait for their run's caller; the watcher queues them if still waiting in ``HOLD_S``."""
        assert self._alarm is not None
        with self._taking:
            for inv in invocations:
                self._waiting.setdefault(run_id, {})[id(inv)] = inv
            if not self._held:
                self._alarm.set(HOLD_S)
            self._held[run_id] = (time.monotonic() + HOLD_S, list(invocations))
        if self._watcher is None:
            with self._lock:
                if self._watcher is None:
                    self._watcher = threading.Thread(target=self._watch_held, name="fanflow-held", daemon=True)
                    self._watcher.start()

    def _let_go(self, run_id: str | None) -> bool:
        """The caller of ``run_id`` takes no more: queue what it held and did not take (none, usually).
        Whether it took them all."""
        assert self._alarm is not None
        with self._taking:
            entry = self._held.pop(run_id, None)
            if entry is None:  # the watcher queued them
                return False
            if not self._held:
                self._alarm.set(0.0)  # disarmed: the watcher sleeps on
            left = [inv for inv in entry[1] if self._waits(inv)]
        if left:
            self._queue_up(left)
        return not left

    def _waits(self, inv: Any) -> bool:
        """Whether ``inv`` still waits to be taken (``_taking`` held)."""
        return self._waiting.get(getattr(inv, "run_id", None), {}).get(id(inv)) is inv

    def _watch_held(self) -> None:
        """The watcher: when the alarm goes off, queue the held roots whose time is up, and end their DAGs' streaks.

        Setting and clearing the alarm wakes nobody, so a caller that takes its
        roots back in time costs this thread nothing (a thread that woke on a
        timer would wait for the GIL, woken by each of the caller's releases).
        """
        assert self._alarm is not None
        while True:
            self._alarm.wait()
            if self._closed:
                return
            now = time.monotonic()
            late: list[Any] = []
            with self._taking:
                for run_id, (due, invs) in list(self._held.items()):
                    if due <= now:
                        del self._held[run_id]
                        late.extend(inv for inv in invs if self._waits(inv))
                if self._held:
                    self._alarm.set(max(1e-4, min(due for due, _ in self._held.values()) - now))
            for inv in late:
                self._streaks[_signature(inv)] = 0
                self._merging.pop(_signature(inv), None)
            if late:
                self._queue_up(late)

    def _take(self, run_id: str | None, inv: Any = None) -> Any:
        """Claim a waiting invocation of ``run_id`` (``inv``, or any): it, or None when it is not waiting."""
        with self._taking:
            mine = self._waiting.get(run_id)
            if not mine:
                return None
            taken = mine.popitem()[1] if inv is None else mine.pop(id(inv), None)
            if not mine:
                del self._waiting[run_id]
            return taken

    def _run_on_caller(self, invocation: Any) -> None:
        """Run ``invocation`` on the calling thread; a slot is held, and released here."""
        try:
            if self._blas_limit is None:
                with self._lock:
                    self._limit()  # the caller's thread is a worker like the pool's, with the same caps
            outer = getattr(_here, "platform", None)
            _here.platform = self
            try:
                # A Ctrl-C outside the tasks reaches the caller as itself: its run handles it (cancels).
                self._handle(invocation, Exception)
            finally:
                _here.platform = outer
        finally:
            self._slots.release()

    def _serve(self) -> None:
        _here.platform = self
        get, slots, take = self._queue.get, self._slots, self._take
        while True:
            item = get()
            if item is _STOP:
                return
            if take(getattr(item, "run_id", None), item) is None:
                continue  # its run's caller took it back and ran it (run_here)
            with slots:
                self._handle(item, BaseException)

    def _handle(self, item: Any, guarded: type[BaseException]) -> None:
        spreading = self._spreading
        # Only a DAG of several roots has others for run_here to hold back, so only its streak is
        # ever read: for the others the verdict (and its context switch count) is not needed.
        roots = getattr(getattr(item, "dag", None), "roots", None)
        streaked = roots is None or len(roots) > 1
        entered = spreading.enter(streaked)
        relaxed.enter()
        try:
            self._handler(item)
        except guarded as exc:  # the handler reports task errors itself; this is a bug guard
            log.exception("fanflow worker crashed outside of a task")
            self._tell_run(item, exc)
        finally:
            relaxed.leave()
            short = spreading.leave(entered)
            if streaked:
                streaks, signature = self._streaks, _signature(item)
                _count(streaks, signature, streaks.get(signature, 0) + 1 if short else 0)
                if not short:
                    self._merging.pop(signature, None)  # its runs spread again, then are held, before any merges

    def _tell_run(self, inv: Any, exc: BaseException) -> None:
        """The invocation is lost with its thread's crash: fail its run, so its client does not wait forever."""
        runtime = getattr(inv, "runtime", None)
        if runtime is None:
            return
        store, _ = runtime
        why = f"the worker thread crashed outside of its tasks: {type(exc).__name__}: {exc}"
        fail_invocation(
            store, inv.run_id, inv.start, why, threading.current_thread().name, ttl_s=inv.settings.key_ttl_s
        )

    def runs_this_thread(self) -> bool:
        """Whether the calling thread is one of this platform's workers (a task calling ``compute()``)."""
        return getattr(_here, "platform", None) is self

    def check_serving(self) -> None:
        """Raise :class:`PlatformError` once the platform is closed: nothing it was given runs any more."""
        if self._closed:
            raise PlatformError("the threads platform was closed while the run was in flight")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._alarm.set(1e-6)  # type: ignore[union-attr]  # wakes the watcher, which sees _closed
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in (*self._threads, *([self._watcher] if self._watcher else [])):
            if t is not threading.current_thread():
                t.join(timeout=5)
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
        if self._alarm is not None and (self._watcher is None or not self._watcher.is_alive()):
            self._alarm.close()


class _Alarm:
    """A one-shot timer a thread waits on (Linux ``timerfd``): setting or clearing it wakes no thread."""

    class _Spec(ctypes.Structure):
        _fields_ = [
            ("interval_s", ctypes.c_long),
            ("interval_ns", ctypes.c_long),
            ("value_s", ctypes.c_long),
            ("value_ns", ctypes.c_long),
        ]

    def __init__(self, libc: Any, fd: int) -> None:
        self._settime, self._fd = libc.timerfd_settime, fd
        self._off = ctypes.byref(self._Spec(0, 0, 0, 0))
        self._hold = ctypes.byref(self._spec(HOLD_S))  # built once: a caller sets it per run (3 us each)

    @classmethod
    def make(cls) -> _Alarm | None:
        """An alarm, or None where the system has no ``timerfd``."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.PyDLL(None)  # keeps the GIL: each call is one short system call
            fd = libc.timerfd_create(1, os.O_CLOEXEC)  # CLOCK_MONOTONIC
        except (OSError, AttributeError):
            return None
        return cls(libc, fd) if fd >= 0 else None

    @classmethod
    def _spec(cls, seconds: float) -> _Alarm._Spec:
        whole = int(seconds)
        return cls._Spec(0, 0, whole, int((seconds - whole) * 1e9))

    def set(self, seconds: float) -> None:
        """Go off in ``seconds`` (0: never, until set again)."""
        spec = self._off if seconds == 0 else self._hold if seconds == HOLD_S else ctypes.byref(self._spec(seconds))
        self._settime(self._fd, 0, spec, None)

    def wait(self) -> None:
        """Block until it goes off."""
        os.read(self._fd, 8)

    def close(self) -> None:
        os.close(self._fd)


def _merged(first: Invocation, others: Sequence[Any]) -> Invocation:
    """One invocation of ``first``'s run starting ``first``'s tasks, then those of ``others`` (its run's other
    roots, not invoked), as large as the largest; claims are ``first``'s (roots need none)."""
    start = first.start + tuple(item for inv in others for item in inv.start)
    memory = max(first.memory_mb, *(inv.memory_mb for inv in others))
    return first.with_start(start, memory, first.invoked_at, first.inv_id)


def _count(counts: dict[str | None, int], signature: str | None, value: int) -> None:
    """Set a DAG's count, forgetting every count first when :data:`_SIGNATURES` DAGs have one already."""
    if len(counts) >= _SIGNATURES and signature not in counts:
        counts.clear()
    counts[signature] = value


def _signature(invocation: Any) -> str | None:
    """The signature of the DAG an invocation runs (in-process invocations carry the DAG), if any."""
    return getattr(getattr(invocation, "dag", None), "signature", None)


def client_platform(config: Config) -> ThreadsPlatform:
    """The platform a client uses for ``platform="threads"``: workers run the worker layer's handler here."""
    return ThreadsPlatform(local_handler(), config.max_workers)


def worker_platform(options: dict[str, Any]) -> ThreadsPlatform:
    """Threads workers get invocation objects, so they never rebuild a platform from a payload."""
    raise NotImplementedError("the threads platform passes invocation objects, not payloads")
