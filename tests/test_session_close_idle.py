"""Session.close_idle: every platform no run uses is closed, so the next run starts with nothing of the earlier runs."""

from __future__ import annotations

import threading
import time

import fanflow
from fanflow.client.session import session


@fanflow.task
def spin(_: int) -> int:
    end = time.perf_counter() + 0.003
    while time.perf_counter() < end:
        pass
    return threading.get_ident()


@fanflow.task
def idents(*values: int) -> set[int]:
    return set(values)


def test_after_close_idle_the_embedded_default_spreads_again_however_serial_it_had_become() -> None:
    config = {"progress": False, "metadata": "none"}
    me = threading.get_ident()
    runs = 0
    while runs < 12 and idents(*(spin(i) for i in range(100))).compute(config) != {me}:
        runs += 1
    assert runs < 12  # GIL-bound work ended up on the caller's thread: the platform learnt to keep runs serial
    before = session().acquire(fanflow.Config(**config))
    session().release(fanflow.Config(**config), before)
    session().close_idle()
    after = session().acquire(fanflow.Config(**config))
    session().release(fanflow.Config(**config), after)
    assert after is not before
    assert after.free_slots() is None  # a new platform spreads until it has measured otherwise
