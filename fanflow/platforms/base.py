"""The :class:`Platform` protocol: how workers are invoked, and how a platform reaches the worker.

A platform only moves invocations; every one ends in the worker layer. A
platform never imports that layer (it sits above): out-of-process platforms
start workers in :data:`WORKER_ENTRY` by *name* (a process's command line, a
Ray task run in the Ray worker, a Lambda function's configured handler), and
the in-process ``threads`` platform calls the handler the worker layer
registers here when it is imported (:func:`set_local_handler`), as the api
layer registers the dag layer's runner.

Running on the caller's thread: a platform whose workers can run on the thread of
a client that only waits for its run (the in-process ``threads`` platform) also
follows :class:`RunsOnCaller`. The default, for a platform without it (every
out-of-process one): the client invokes every invocation and its thread only waits.

Optional parts, each a protocol of its own that a platform follows by defining its
methods, asked with :func:`supports`: :class:`RunsOnCaller`, :class:`ChecksServing`
(liveness: a waiting client asks every second or so whether the platform still runs
what it was given), :class:`KeepsWarmWorkers` (a pool the planner can read and
prewarm), :class:`CapsWorkers` (how many workers run at once, which runs record) and
:class:`ChecksRequirements` (the workers' packages, when they are not the client's). A
platform that refuses or loses an invocation tells the invocation's run with
:func:`fanflow.platforms.lost.fail_invocation`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from fanflow.errors import PlatformError

Handler = Callable[[Any], Any]
"""``fanflow.worker.handle``: runs one invocation to its end."""

WORKER_ENTRY = "fanflow.worker.entry"
"""The worker layer's entry points (process child main, Ray task, Lambda handler), named, never imported here."""


class Platform(Protocol):
    name: str
    in_process: bool
    """True when invocations are passed as objects within this process (no payload bytes)."""

    options: dict[str, Any]
    """What a worker on this platform needs to invoke further workers (shipped in payloads)."""

    def invoke(self, invocations: Sequence[Any]) -> None:
        """Start one worker per item, asynchronously; never blocks on the work itself."""
        ...

    def free_slots(self) -> int | None:
        """How many more workers could start right now without queueing, or None when the platform
        has no such limit or cannot tell (then every fan-out branch gets its own worker).

        Workers ask before each fan-out and between tasks, so it must be a local
        read with no round trip; it is a hint (a stale count costs one queued
        invocation, never a wrong result). See :func:`fanflow.dag.placement.spread`.
        """
        ...

    def close(self) -> None:
        """Release what the platform holds (threads, processes, connections)."""
        ...


@runtime_checkable
class RunsOnCaller(Protocol):
    """The optional part of :class:`Platform` for platforms that can run a run's workers on its client's thread."""

    def run_here(self, invocation: Any, others: Sequence[Any] = ()) -> bool:
        """Run ``invocation``, not invoked, on the calling thread, then the invocations of its run that wait to start.

        ``others`` are the run's other first invocations, not invoked either:
        the platform starts them in any case, whatever this returns, and may
        keep them for the calling thread to take while no worker of its own is
        needed. Returns False, having run nothing, when no worker slot is free:
        the caller then invokes ``invocation`` as usual. Returns when none of
        the run's invocations waits to start any more, or no slot is free; the
        run's others are running on the platform's own workers.
        """
        ...

    def runs_this_thread(self) -> bool:
        """Whether the calling thread is one of this platform's workers (a run started inside a task)."""
        ...


@runtime_checkable
class ChecksServing(Protocol):
    """The optional part of :class:`Platform` for platforms that can tell they stopped running what they were given."""

    def check_serving(self) -> None:
        """Raise :class:`fanflow.PlatformError` saying why when the platform no longer runs its invocations
        (its host stopped, its shared pool is gone); return otherwise, without a round trip."""
        ...


@runtime_checkable
class KeepsWarmWorkers(Protocol):
    """The optional part of :class:`Platform` for a pool of warm workers that the planner may read and steer."""

    def warm_memory(self) -> list[int] | None:
        """Memory sizes of the idle warm workers, least recently used first; None when it cannot tell."""
        ...

    def prewarm(self, memory_mb: int) -> bool:
        """Start an idle worker of ``memory_mb`` ahead of need; False when the pool is not this client's to steer."""
        ...


@runtime_checkable
class CapsWorkers(Protocol):
    """The optional part of :class:`Platform` for platforms that know how many workers they run at once."""

    def worker_cap(self) -> int | None:
        """Workers that run at once at most, later invocations queueing for a slot (0: no cap); None when
        this client cannot tell (a pool another process runs). Runs record it: planning takes the queue
        out of their start latencies by replaying them through it."""
        ...


@runtime_checkable
class ChecksRequirements(Protocol):
    """The optional part of :class:`Platform` for workers whose installed packages are not the client's."""

    def missing_requirements(self, specs: Sequence[str]) -> list[str]:
        """The requirement specifications of ``specs`` the workers cannot satisfy, each with the reason."""
        ...


Part = TypeVar("Part")


@functools.cache
def _follows(kind: type, part: type) -> bool:
    return issubclass(kind, part)


def supports(platform: object, part: type[Part]) -> Part | None:
    """``platform`` as the optional protocol ``part`` when it follows it, else None.

    Answered once per platform class: an ``isinstance`` against a protocol walks
    its members each time (10-30 us a call, measured on a loaded 2-core machine
    with timeit), and some of these are asked once per run.
    """
    # Typed as the part by an ignore rather than by cast(), a Python call per use (several per run).
    return platform if _follows(type(platform), part) else None  # type: ignore[return-value]


def runs_on_caller(platform: Platform) -> bool:
    """Whether ``platform`` follows :class:`RunsOnCaller`; False by default (the client's thread only waits)."""
    return supports(platform, RunsOnCaller) is not None


_local_handler: Handler | None = None


def set_local_handler(handler: Handler) -> None:
    """Called once by the worker layer: the handler in-process platforms hand invocation objects to."""
    global _local_handler
    _local_handler = handler


def local_handler() -> Handler:
    """The worker layer's handler for in-process workers; raises :class:`PlatformError` before it is loaded."""
    if _local_handler is None:
        raise PlatformError("the worker layer is not loaded: import fanflow.worker before running in-process")
    return _local_handler


P = TypeVar("P")


class InvokerCache(Generic[P]):
    """One invoker per key in a process, built once under a lock: the workers of a process share them."""

    def __init__(self) -> None:
        self._made: dict[Hashable, P] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], P]) -> P:
        """The invoker for ``key``, made with ``make()`` the first time."""
        with self._lock:
            found = self._made.get(key)
            if found is None:
                found = self._made[key] = make()
            return found
