"""A pool's idle capacity, published to its worker processes in one shared memory word.

A worker that claims several dependents asks the platform how many workers
could start *now* (see :func:`fanflow.dag.placement.spread`), and asks again
between tasks while it holds more than one. That question must cost nothing
next to a task, so it is no round trip: the pool host writes its count of idle
slots (``max_workers`` minus busy workers minus invocations waiting in its
inbox) into a memory page it shares with every worker process it starts
(``memfd``, passed as a file descriptor like the pipe), and a worker reads it
with one ``struct.unpack_from``. A worker that invokes others takes the slots
it used off the count at once, so workers reading it meanwhile do not all
spend the same slot; the host writes the true count at its next step.

The count is a hint: a stale or racy read costs one invocation that waits in
the queue, never a wrong result. Where ``memfd_create`` is missing (not Linux)
there is no count, and workers fan out one worker per branch as before.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct

_WORD = struct.Struct("<i")


class Capacity:
    """The host's side: owns the page and writes the count."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("fanflow-capacity")
        os.ftruncate(self.fd, mmap.PAGESIZE)
        self._page = mmap.mmap(self.fd, mmap.PAGESIZE)

    def publish(self, free: int) -> None:
        _WORD.pack_into(self._page, 0, max(0, free))

    def close(self) -> None:
        self._page.close()
        os.close(self.fd)


def open_capacity() -> Capacity | None:
    """A new shared count, or None where the system cannot share one."""
    if not hasattr(os, "memfd_create"):
        return None
    try:
        return Capacity()
    except OSError:
        return None


_page: mmap.mmap | None = None


def attach(fd: int) -> None:
    """In a worker process: map the count its pool host publishes (``fd`` came over the pipe's setup)."""
    global _page
    with contextlib.suppress(OSError, ValueError):
        _page = mmap.mmap(fd, mmap.PAGESIZE)


def free_slots() -> int | None:
    """Idle slots of the pool this process works for; None outside a pool's worker process."""
    return None if _page is None else int(_WORD.unpack_from(_page, 0)[0])


def spend(slots: int) -> None:
    """Take ``slots`` off the count now; the host writes the true count at its next step."""
    if _page is not None and slots > 0:
        left = _WORD.unpack_from(_page, 0)[0] - slots
        _WORD.pack_into(_page, 0, max(0, left))
