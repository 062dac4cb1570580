"""What the pool and its worker processes say over their pipe, and how a worker process is started.

The pool starts each worker as a fresh interpreter (a cold start, as on a FaaS
platform) running :data:`CHILD_MAIN` with one argument, the file descriptor of
its pipe. A fresh interpreter rather than ``multiprocessing``'s spawn, because
spawn re-imports the user's ``__main__`` in every child: a script that calls
``compute()`` at top level without a ``__main__`` guard would run again in each
worker. The process's main is the worker layer's entry point, named here and
never imported (this layer sits below the worker).

Messages (length-framed, :mod:`multiprocessing.connection`):

- pool -> worker, once: the pickled setup (``secret``, ``log_level``,
  ``prewarmed``, ``capacity_fd``); the secret travels here, never on the
  command line or in the environment; a prewarmed worker's first invocation is
  a warm start; ``capacity_fd`` (inherited like the pipe) is the page holding
  the pool's free-slot count (:mod:`.capacity`), or None;
- worker -> pool: :data:`READY` once imported and ready;
- pool -> worker: one signed invocation payload, after :data:`REDELIVERED` when
  the pool delivers it again because the worker it first went to died (the new
  worker then takes the invocation over); worker -> pool, once per payload:
  :data:`DONE` (as soon as the worker's loop is over, before it writes its last
  events: the pool may send the next payload meanwhile, which waits in the pipe),
  :data:`REFUSED` (bad signature) or :data:`CRASHED` + traceback (the worker
  itself crashed before it could record the failure; the pool fails the run);
- pool -> worker, while the whole pool is idle: :data:`GROW` + the bytes to
  grow by (:func:`grow_message`), no reply: the worker touches that much more
  heap and frees it (:func:`grow_heap`), stopping as soon as a message waits;
- pool -> worker: an empty message, or end of file: exit.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fanflow.platforms.base import WORKER_ENTRY

POOL_PID_ENV = "FANFLOW_POOL_PID"
"""The environment variable that tells a worker process its pool host's pid (see :func:`die_with_pool`)."""

CHILD_MAIN = (
    f"from fanflow.platforms.processes.protocol import die_with_pool; die_with_pool(); "
    f"from {WORKER_ENTRY} import process_main; process_main()"
)
"""The ``python -c`` program of a worker process; its pipe's file descriptor follows as ``argv[1]``."""

_PARENT_POLL_S = 0.5

MALLOC_MMAP_MAX = "0"
"""``MALLOC_MMAP_MAX_`` of a worker process: glibc serves every block from its heap, none with ``mmap``."""
TRIM_SHARE = 0.25
"""Share of a worker's ``memory_mb`` that glibc may keep as free heap before it gives the top back."""


def malloc_env(memory_mb: int) -> dict[str, str]:
    """glibc allocator settings of a worker process of ``memory_mb``, where the pool's environment sets none.

    A warm worker should reuse the pages it already has, run after run: a page
    the process gives back to the kernel and touches again costs a page fault,
    and on a virtual machine whose host reclaims the guest's free memory
    (Firecracker here) the kernel time of that fault varied 7x for the same
    fault count. By default glibc serves a block above its adaptive threshold
    (128 KB, raised up to 32 MB) with a fresh ``mmap`` and unmaps it when freed,
    and gives the top of its heap back once 2x that threshold is free there.
    So ``MALLOC_MMAP_MAX_=0`` (every block from the heap, so also a
    100 MB numpy temporary, which a threshold cannot keep: glibc caps it at
    32 MB) and ``MALLOC_TRIM_THRESHOLD_`` at :data:`TRIM_SHARE` of the worker's
    memory (at least 64 MB). The cost: a worker keeps that much freed heap,
    within its ``memory_mb`` (which a FaaS bill charges in full anyway).
    """
    trim = max(64 << 20, int(memory_mb * 2**20 * TRIM_SHARE))
    return {"MALLOC_MMAP_MAX_": MALLOC_MMAP_MAX, "MALLOC_TRIM_THRESHOLD_": str(trim)}


GROW_CHUNK_BYTES = 1 << 20
"""What :func:`grow_heap` touches between two looks at its pipe: ~256 page faults, a few ms at most
before a waiting invocation is read."""
GROW_MIN_BYTES = 8 << 20
"""A worker whose peak falls short of its pool's by less than this is not asked to grow."""
_GROW = struct.Struct("<Q")


def grow_message(size: int) -> bytes:
    """The pool's message asking an idle worker to grow its heap by ``size`` bytes."""
    return GROW + _GROW.pack(size)


def grow_size(message: bytes) -> int:
    """The bytes a :func:`grow_message` asks for."""
    (size,) = _GROW.unpack_from(message, len(GROW))
    return size


def grow_heap(size: int, pending: Callable[[], bool]) -> int:
    """Touch up to ``size`` bytes of new heap, then free it; stop early once ``pending()``; returns bytes touched.

    The processes of one pool are interchangeable, but which one takes the
    biggest share of a run is a race: gemm 2000² in 500² blocks gives one process
    65 tasks (every sum, the 32 MB assembly, 64 MB fetched: 275 MB resident) and
    the other 48 (151 MB), and the first run in which the smaller one takes the
    big share faulted in 24,000-58,000 pages, 180-250 ms of CPU on this VM,
    inside that run. The pool asks its idle processes to grow to the peak of the
    largest of their size while no invocation is running (:data:`GROW`), so that
    cost falls between runs. Freed, the chunks stay in the heap (glibc keeps free
    heap up to ``MALLOC_TRIM_THRESHOLD_``, see :func:`malloc_env`), so the next
    run reuses the pages. Only where no block is ``mmap``-ed (``MALLOC_MMAP_MAX_``
    as the pool sets it; a chunk mmapped would be unmapped when freed), and at
    most half the trim threshold, so freeing it never gives the top back.
    """
    if os.environ.get("MALLOC_MMAP_MAX_") != MALLOC_MMAP_MAX:
        return 0
    size = min(size, int(os.environ.get("MALLOC_TRIM_THRESHOLD_", "0")) // 2)
    chunks = []
    while len(chunks) * GROW_CHUNK_BYTES < size and not pending():
        chunks.append(bytearray(GROW_CHUNK_BYTES))  # zero-filled: every page written
    return len(chunks) * GROW_CHUNK_BYTES


def memory_bytes(pid: int) -> tuple[int, int]:
    """Resident memory of process ``pid`` now and at its peak (``VmRSS``, ``VmHWM``); zeros where they cannot
    be read (no ``/proc``)."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line[:5]] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found.get("VmRSS", 0), found.get("VmHWM", 0)


def die_with_pool() -> None:
    """End this worker process when its pool host dies, however it dies (SIGKILL included).

    A host's held entries are handed back as redeliveries once it is dead
    (:mod:`.pool`); a worker of the dead host still running one of them would
    run it twice. A daemon thread waits for the host's exit: on a pidfd where
    the system has them (Linux 5.3+: no polling, no delay), else by polling the
    parent pid. (Not ``PR_SET_PDEATHSIG``: it fires when the *thread* that
    started the process ends, and the host starts workers from short-lived
    helper threads.)
    """
    pool_pid = int(os.environ.get(POOL_PID_ENV, "0"))
    if pool_pid:
        threading.Thread(target=_watch_pool, args=(pool_pid,), name="fanflow-pool-watch", daemon=True).start()


def _watch_pool(pool_pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pool_pid)
    except (AttributeError, OSError):  # no pidfds here, or the host is gone already
        pidfd = None
    if pidfd is not None and os.getppid() == pool_pid:
        select.select([pidfd], [], [])  # readable once the host has exited
    else:
        while os.getppid() == pool_pid:
            time.sleep(_PARENT_POLL_S)
    os._exit(1)


READY = b"R"
DONE = b"D"
REFUSED = b"X"
CRASHED = b"E"
REDELIVERED = b"!"
"""Prefix of a payload the pool delivers again (payloads themselves start with their magic, ``FF``)."""
GROW = b"G"
"""Prefix of the pool's request that an idle worker grow its heap (:func:`grow_message`)."""
