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

Numeric libraries (OpenBLAS, MKL, OpenMP) start their own thread per core for
each call; with several worker threads calling them at once the cores are
oversubscribed many times over (a QR-heavy workload ran 16x slower). While the
platform is open it caps those pools, through threadpoolctl, at each worker
thread's share of the cores (:func:`fanflow.platforms.sizing.blas_threads`, the
rule out-of-process workers follow with their memory's vCPU share).

Worker threads running small pure-Python tasks fight over the GIL: at
CPython's default switch interval (5 ms) two threads on two cores hand the GIL
back and forth so often that a tree reduction ran 2x slower than on one thread.
While the platform is open, the interval is at least ``SWITCH_INTERVAL_S``
(measured: 65 -> 33 us per task at 16,383 tasks; a 15-task run's latency
unchanged). Both settings are restored when the platform closes.

Two more are measured or scoped per invocation. Whether to spread a run over the
threads at all: GIL-bound work is kept on one thread (``free_slots()`` 0), see
:mod:`fanflow.platforms.spreading`. And while invocations run, the cyclic
garbage collector's young generation is collected less often, so a run's
live objects set off no full collection: :mod:`fanflow.platforms.collector`.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Sequence
from typing import Any

from threadpoolctl import threadpool_limits

from fanflow.config import Config
from fanflow.errors import PlatformError
from fanflow.platforms.base import Handler, local_handler
from fanflow.platforms.collector import relaxed
from fanflow.platforms.lost import fail_invocation
from fanflow.platforms.sizing import blas_threads
from fanflow.platforms.spreading import Spreading
from fanflow.store.locks import YieldingLock, YieldingSemaphore

log = logging.getLogger(__name__)
_STOP = object()
_here = threading.local()

SWITCH_INTERVAL_S = 0.05
"""Least GIL switch interval while worker threads run (see the module docstring)."""


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
        put, waiting = self._queue.put, self._waiting
        with self._taking:
            for inv in invocations:
                # The queue holds it until taken, so its id stays its own.
                waiting.setdefault(getattr(inv, "run_id", None), {})[id(inv)] = inv
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

    def run_here(self, invocation: Any) -> bool:
        """Run ``invocation`` (not given to :meth:`invoke`) on the calling thread, then its run's waiting ones.

        Returns False, having run nothing, when ``max_workers`` invocations are
        running already (then :meth:`invoke` it). After ``invocation``, the
        invocations of its run that wait in the queue are taken back, one after
        another, each only if no pool thread has taken it yet and only while a
        worker slot is free; those that the ones run here start are taken in
        turn. Returns when none of the run's invocations waits any more (or no
        slot is free): the others are running on pool threads.

        While it runs, the calling thread is one of this platform's workers: a
        task on it that starts a run on this platform gets
        :class:`fanflow.NestedRunError`, as on a pool thread.
        """
        if self._closed or not self._slots.acquire(blocking=False):
            return False
        self._run_on_caller(invocation)
        run_id = getattr(invocation, "run_id", None)
        while not self._closed and self._slots.acquire(blocking=False):
            taken = self._take(run_id)
            if taken is None:
                self._slots.release()
                return True
            self._run_on_caller(taken)
        return True

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
        entered = spreading.enter()
        relaxed.enter()
        try:
            self._handler(item)
        except guarded as exc:  # the handler reports task errors itself; this is a bug guard
            log.exception("fanflow worker crashed outside of a task")
            self._tell_run(item, exc)
        finally:
            relaxed.leave()
            spreading.leave(entered)

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
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)


def client_platform(config: Config) -> ThreadsPlatform:
    """The platform a client uses for ``platform="threads"``: workers run the worker layer's handler here."""
    return ThreadsPlatform(local_handler(), config.max_workers)


def worker_platform(options: dict[str, Any]) -> ThreadsPlatform:
    """Threads workers get invocation objects, so they never rebuild a platform from a payload."""
    raise NotImplementedError("the threads platform passes invocation objects, not payloads")
