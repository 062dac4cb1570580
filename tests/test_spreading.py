"""The threads platform spreads a run over its threads only while that pays (fanflow.platforms.spreading)."""

from __future__ import annotations

import threading
import time

import pytest

import fanflow
from fanflow.platforms import spreading
from fanflow.platforms.spreading import BUSY, MAX_BACKOFF, PROBE_EVERY, SERIAL_BELOW, Spreading, Window, judge


def _window(overlap: float, cores: float, runnable: float) -> Window:
    return Window(wall=1.0, thread_seconds=overlap, cpu_seconds=cores, runnable_seconds=runnable)


def test_overlapping_threads_that_computed_on_about_one_core_took_turns() -> None:
    assert judge(_window(overlap=5.9, cores=0.9, runnable=1.0), serial=False) is True  # the GIL
    assert judge(_window(overlap=5.9, cores=0.6, runnable=5.0), serial=False) is True  # no core to spare


def test_threads_that_computed_side_by_side_or_mostly_slept_stay_spread() -> None:
    assert judge(_window(overlap=4.0, cores=1.9, runnable=2.0), serial=False) is False  # numpy, BLAS
    assert judge(_window(overlap=5.9, cores=0.05, runnable=0.07), serial=False) is False  # sleeps, I/O
    assert judge(_window(overlap=1.0, cores=1.0, runnable=1.0), serial=False) is None  # one at a time: no evidence


def test_a_serial_thread_stays_serial_while_it_computes_or_waits_for_a_core_not_while_it_sleeps() -> None:
    assert judge(_window(overlap=1.0, cores=0.95, runnable=1.0), serial=True) is True
    assert judge(_window(overlap=1.0, cores=0.4, runnable=1.0), serial=True) is True  # other processes' load
    assert judge(_window(overlap=1.0, cores=0.3, runnable=0.3), serial=True) is False  # half its time asleep
    assert BUSY < 1.0 < SERIAL_BELOW < 2.0


def test_a_failed_serial_trial_is_tried_again_later_each_time_and_serial_work_probes_spreading() -> None:
    s = Spreading()
    s.decide(True)
    assert s.serial  # the trial
    s.decide(False)
    assert not s.serial
    s.decide(True)  # waits one window before the next trial
    assert not s.serial
    s.decide(True)
    assert s.serial
    s.decide(False)
    for _ in range(2):  # then two
        s.decide(True)
        assert not s.serial
    s.decide(True)
    assert s.serial
    for _ in range(PROBE_EVERY - 1):
        s.decide(True)
        assert s.serial
    s.decide(True)
    assert not s.serial  # the probe spreads one window
    s.decide(None)
    assert not s.serial  # a window that says nothing changes nothing
    s.decide(True)
    assert s.serial  # the probe confirmed it: serial again at once
    waits = []
    for _ in range(10):  # backing off is bounded
        s.decide(False)
        waits.append(0)
        while not s.serial:
            s.decide(True)
            waits[-1] += 1
    assert waits == [w + 1 for w in (1, 2, 4, 8, 16, 32, 64, 64, 64, 64)] and MAX_BACKOFF == 64  # +1: the trial


def _spin(seconds: float) -> int:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return threading.get_ident()


@fanflow.task
def spin(_: int) -> int:
    return _spin(0.003)


@fanflow.task
def nap(_: int) -> int:
    time.sleep(0.005)
    return threading.get_ident()


_pairs = threading.Barrier(2, timeout=30)


@fanflow.task
def paired_nap(_: int) -> int:
    """Sleeps, then waits for another one to do so on another thread: only a spread run gets past it."""
    time.sleep(0.005)
    _pairs.wait()
    return threading.get_ident()


@fanflow.task
def threads_used(*idents: int) -> set[int]:
    return set(idents)


def test_gil_bound_work_ends_up_on_the_callers_thread_and_sleeps_stay_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pure-Python tasks cannot run side by side: once measured, a run of them is one worker on the caller.

    Each config has a max_workers no other test uses, so it gets a platform of its own, with no
    measurements of earlier tests. On a loaded machine a spread window may show too little
    overlap to judge (the pool's threads wait for a core): a few more runs then.

    The sleeping tasks meet in pairs, so a run kept spread uses two threads at least, however
    late the pool's threads wake (the caller takes back what none took yet). Their windows are
    judged as on an idle machine: on a loaded one the kernel rightly says their threads wait for
    a core (no core to spare: serial pays), which ``judge``'s own tests check with set figures.
    """
    me = threading.get_ident()
    gil_bound = {"progress": False, "metadata": "none", "max_workers": 7}
    seen = []
    while len(seen) < 12 and (not seen or seen[-1] != {me}):
        seen.append(threads_used(*(spin(i) for i in range(100))).compute(gil_bound))
    assert seen[-1] == {me}, seen
    monkeypatch.setattr(spreading, "_schedstat", lambda native_id: None)  # as where the kernel does not say
    sleepy = {"progress": False, "metadata": "none", "max_workers": 9}
    used = [len(threads_used(*(paired_nap(i) for i in range(100))).compute(sleepy)) for _ in range(4)]
    assert all(n > 1 for n in used), used


def test_one_worker_keeps_every_branch() -> None:
    """With max_workers=1 a branch handed on would only wait for the one slot: every run is one worker."""
    me = threading.get_ident()
    one = {"progress": False, "metadata": "none", "max_workers": 1}
    assert threads_used(*(nap(i) for i in range(20))).compute(one) == {me}


def test_without_the_switch_count_an_invocation_longer_than_short_is_not_short() -> None:
    from fanflow.platforms.spreading import SHORT_S

    s = Spreading()
    entered = s.enter(switches=False)
    assert entered[2] == -1
    time.sleep(2 * SHORT_S)  # asleep: little CPU, but the wall time says nothing without the count
    assert not s.leave(entered)
