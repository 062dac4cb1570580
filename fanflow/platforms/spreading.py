"""Whether spreading work over the threads platform's threads pays: measured, as the GIL decides it.

Worker threads run in parallel only while their tasks release the GIL (numpy,
BLAS, I/O, sleeps). Tasks that hold it (pure Python, and most of pandas' small
operations) run one at a time whatever the number of threads, and spreading them
costs more than it gives: every time one thread releases the GIL in a C call
the other takes it, and the first waits to get it back, two context switches
per release. A pandas shuffle-then-groupby Dask graph of 2,788 tasks made
2,000-12,000 context switches and used 20-40% more CPU on the embedded
default's threads than on the calling thread alone (fanflow's shuffle
benchmark, ``benchmarks/dask_overhead.py --only shuffle``).

:class:`Spreading` watches the platform's busy time (at least one invocation
running) in windows of :data:`WINDOW_S` and measures, per window: how many
invocations ran at once (*overlap*), how many cores their threads used at once
(*cores*: their CPU time in invocations over the busy wall time), and how many
wanted a core at once (*runnable*: each thread's CPU time over its share of
runnable time spent on a core, from ``/proc/self/task/<tid>/schedstat`` on
Linux; a thread waiting for the GIL or a sleep is not runnable, one waiting for
a core behind other processes is). Then:

- *spread* (the default): invocations go to as many threads as there are
  branches (the platform's ``free_slots()`` is None, as before). A window with an
  overlap of at least :data:`OVERLAP` whose threads mostly computed (runnable
  at least :data:`BUSY`) but used fewer than :data:`SERIAL_BELOW` cores took
  turns: the GIL, or a machine with no core to spare, kept them from running
  side by side. The next window is a *serial trial*.
- *serial*: ``free_slots()`` is 0, so a run starts as one invocation and its
  workers keep every branch (on the embedded default the caller's thread runs
  the whole run). A serial window whose thread was runnable at least
  :data:`BUSY` of the time (it computed, or waited for a core) stays serial;
  one that mostly waited on something else (sleeps, I/O, where threads help)
  spreads again, and the next serial trial waits twice as many windows as the
  last (up to :data:`MAX_BACKOFF`). Every :data:`PROBE_EVERY` serial windows
  one window spreads, so work that changed, or a machine whose other load went
  away, is seen again.

Numeric work that releases the GIL uses about as many cores as threads run it
(when the machine has them) and stays spread. Shown on the shuffle above (2
cores, load average 5-7): spread windows overlapped 5.8-5.9 invocations on
0.8-0.95 cores, then every window was serial; 200 sleeps of 10 ms used 0.05
cores and stayed spread. Tasks of one run that wait for each other (a barrier
between two tasks) can no longer count on running at once: serially, a task
waiting for one queued behind it in the same worker waits for ever, as on any
platform whose idle slots are full.

:meth:`Spreading.leave` also says whether the invocation was *short*: less
than :data:`SHORT_S` of CPU time, and less than that of wall time too unless
its thread only waited for a core (no voluntary context switch: no sleep, I/O
or lock wait. On a loaded machine, at load 14 on 2 cores, 1 in 100 small
invocations took over 6 ms of wall time; tasks that sleep 5 ms are not short).
The threads platform holds a run's other roots back for its caller after a
streak of short ones (:meth:`fanflow.platforms.threads.ThreadsPlatform.run_here`).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

from fanflow.store.locks import YieldingLock

try:
    import resource

    _RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)  # Linux
except ImportError:  # Windows
    _RUSAGE_THREAD = None

__all__ = [
    "BUSY",
    "OVERLAP",
    "PROBE_EVERY",
    "SERIAL_BELOW",
    "SHORT_S",
    "WINDOW_S",
    "Spreading",
    "Window",
    "judge",
]

WINDOW_S = 0.25
"""Busy wall time per judgment: long enough that a window holds many tasks, short enough to adapt within a run."""

OVERLAP = 1.5
"""Threads running at once, on average, before a spread window says anything about parallelism."""

SERIAL_BELOW = 1.4
"""Cores used, under which overlapping threads are judged to take turns (two GIL-free threads: close to 2)."""

BUSY = 0.6
"""Threads runnable at once, on average, above which a window's threads mostly computed
(below: they mostly waited on sleeps or I/O, where more threads help)."""

PROBE_EVERY = 16
"""Serial windows between two spread probes."""

MAX_BACKOFF = 64
"""Most windows between a failed serial trial and the next."""

SHORT_S = 0.002
"""CPU and wall time under which an invocation counts as short (a small Dask call's invocations: 0.1-0.3 ms)."""


@dataclass
class Window:
    """What the threads did in one window of busy time."""

    wall: float = 0.0
    """Seconds during which at least one invocation ran."""
    thread_seconds: float = 0.0
    """Seconds of invocations, summed over threads (over ``wall``: how many ran at once)."""
    cpu_seconds: float = 0.0
    """CPU seconds the threads used in invocations."""
    runnable_seconds: float = 0.0
    """``cpu_seconds`` plus the time the threads waited for a core meanwhile (CPU over the share on a core)."""

    @property
    def overlap(self) -> float:
        """Invocations running at once, on average."""
        return self.thread_seconds / self.wall if self.wall > 0 else 0.0

    @property
    def cores(self) -> float:
        """Cores the threads used at once, on average."""
        return self.cpu_seconds / self.wall if self.wall > 0 else 0.0

    @property
    def runnable(self) -> float:
        """Threads that wanted a core at once, on average: computing or waiting for a core, not sleeping."""
        return self.runnable_seconds / self.wall if self.wall > 0 else 0.0


def judge(window: Window, serial: bool) -> bool | None:
    """Whether the next window runs serially, from this window (run ``serial`` or not); None: cannot tell.

    Serially, the one thread's :attr:`Window.runnable` says whether it computed
    (waiting for a core counts: that is other processes' load) or slept. Spread,
    :attr:`Window.cores` says whether overlapping threads computed side by side,
    whatever kept them from it: the GIL, or a machine with no core to spare (one
    thread then gets as much done, without the threads' hand-offs); threads that
    mostly slept (:attr:`Window.runnable` below :data:`BUSY`) gain from spreading.
    A window in which invocations hardly overlapped says nothing.
    """
    if serial:
        return window.runnable >= BUSY
    if window.overlap < OVERLAP:
        return None
    return window.runnable >= BUSY and window.cores < SERIAL_BELOW


@dataclass
class _Thread:
    """Per thread within a window: CPU used in invocations, and its schedstat when first seen."""

    native_id: int
    sched: tuple[int, int] | None
    cpu: float = 0.0


def _schedstat(native_id: int) -> tuple[int, int] | None:
    """(ns on a core, ns waiting for one) of a thread of this process, or None where the kernel does not say."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as f:
            on_cpu, waiting, _ = f.read().split(maxsplit=2)
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return None


@dataclass
class Spreading:
    """The threads platform's choice between spreading invocations and keeping a run on one thread.

    Call :meth:`enter` when a thread starts an invocation and :meth:`leave` with
    the value ``enter`` returned when it ends. :attr:`serial` is the choice. A
    few microseconds per invocation (two lock round trips, two thread CPU clock
    reads, one or two of the thread's context switch count when the verdict is
    wanted), and two small file reads per thread and window.
    """

    serial: bool = False
    _lock: YieldingLock = field(default_factory=YieldingLock)
    _busy: int = 0
    _since: float = 0.0
    _window: Window = field(default_factory=Window)
    _threads: dict[int, _Thread] = field(default_factory=dict)
    _serial_windows: int = 0
    _probing: bool = False
    _backoff: int = 1
    _wait: int = 0
    """Spread windows left before the next serial trial may start."""

    def enter(self, switches: bool = True) -> tuple[float, float, int]:
        """A thread starts an invocation; returns what :meth:`leave` needs.

        ``switches``: read the thread's count of voluntary context switches, which
        :meth:`leave` needs to tell a short invocation that was only preempted from
        one that slept. A caller that will not read the verdict passes False and
        saves the system call (about 1.7 us with what it costs the code after it).
        """
        tid = threading.get_ident()
        if tid in self._threads:
            first = None
        else:  # a file read: not under the lock
            native = threading.get_native_id()
            first = _Thread(native, _schedstat(native))
        now = time.perf_counter()
        with self._lock:
            if self._busy:
                self._window.wall += now - self._since
            self._since = now
            self._busy += 1
            if first is not None:
                self._threads.setdefault(tid, first)
            elif tid not in self._threads:  # the window closed since: this thread is new to the next one
                self._threads[tid] = _Thread(threading.get_native_id(), None)
        return now, time.thread_time(), _voluntary_switches() if switches else -1

    def leave(self, entered: tuple[float, float, int]) -> bool:
        """The invocation started by :meth:`enter` (which returned ``entered``) ended on this thread; whether it
        was short (see the module's docstring; entered without ``switches``, one that took :data:`SHORT_S` of
        wall time or more is not)."""
        cpu = time.thread_time() - entered[1]
        now = time.perf_counter()
        tid = threading.get_ident()
        wall = now - entered[0]
        short = cpu < SHORT_S and (wall < SHORT_S or (entered[2] >= 0 and _only_preempted(entered[2])))
        with self._lock:
            window = self._window
            window.wall += now - self._since
            self._since = now
            self._busy -= 1
            window.thread_seconds += wall
            self._threads[tid].cpu += cpu  # entered in this window: a window closes only when none runs
            if self._busy == 0 and window.wall >= WINDOW_S:
                self._judge()
        return short

    def _judge(self) -> None:
        """Close the window (lock held): scale each thread's CPU by its wait for a core, then decide."""
        window = self._window
        for mine in self._threads.values():
            window.cpu_seconds += mine.cpu
            window.runnable_seconds += mine.cpu / _on_core_share(mine.sched, _schedstat(mine.native_id))
        self._window, self._threads = Window(), {}
        self.decide(judge(window, self.serial))

    def decide(self, verdict: bool | None) -> None:
        """Set :attr:`serial` for the next window from the last window's ``verdict`` (:func:`judge`)."""
        if verdict is None:
            return
        if self.serial:
            if not verdict:  # it waited: spread, and try serial again later than last time
                self.serial, self._wait = False, self._backoff
                self._backoff = min(MAX_BACKOFF, self._backoff * 2)
                return
            self._serial_windows += 1
            self._backoff = 1
            if self._serial_windows % PROBE_EVERY == 0:
                self.serial, self._probing = False, True
            return
        if self._probing:  # it was serial before the probe: its verdict stands without a trial
            self._probing = False
            self.serial = verdict
            return
        if self._wait > 0:
            self._wait -= 1
            return
        self.serial = verdict


def _voluntary_switches() -> int:
    """This thread's count of voluntary context switches (sleeps, I/O, lock waits); 0 where the kernel won't say."""
    return 0 if _RUSAGE_THREAD is None else resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


def _only_preempted(switches_before: int) -> bool:
    """Whether this thread made no voluntary context switch since :func:`_voluntary_switches` said
    ``switches_before``: it only waited for a core, if at all (False where the kernel does not say)."""
    return _RUSAGE_THREAD is not None and _voluntary_switches() == switches_before


def _on_core_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """Of the time a thread was runnable between two schedstat readings, the share it spent on a core."""
    if before is None or after is None:
        return 1.0
    on_cpu, waiting = after[0] - before[0], after[1] - before[1]
    if on_cpu <= 0:
        return 1.0
    return max(0.05, on_cpu / (on_cpu + max(0, waiting)))
