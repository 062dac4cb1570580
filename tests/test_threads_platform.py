"""The threads platform: numeric thread pools capped, the caller's thread used as a worker when it only waits."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import fanflow


@fanflow.task
def blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_blas_runs_one_thread_per_worker_thread_at_most() -> None:
    import numpy as np

    np.linalg.qr(np.ones((4, 4)))  # make sure the BLAS library is loaded
    seen = blas_threads().compute(fanflow.Config(progress=False, metadata="none", max_workers=4))
    cap = max(1, (os.cpu_count() or 1) // 4)
    assert seen and all(n <= cap for n in seen)


def test_the_gil_switch_interval_is_raised_while_the_platform_runs_and_restored_after() -> None:
    from fanflow.platforms.threads import SWITCH_INTERVAL_S, ThreadsPlatform

    before = sys.getswitchinterval()
    seen: list[float] = []
    platform = ThreadsPlatform(lambda _: seen.append(sys.getswitchinterval()), max_workers=2)
    platform.invoke([object()])
    platform.close()
    assert seen == [pytest.approx(max(before, SWITCH_INTERVAL_S), abs=1e-5)]  # kept in microseconds
    assert sys.getswitchinterval() == pytest.approx(before, abs=1e-5)


@fanflow.task
def thread_of(_: int) -> int:
    return threading.get_ident()


_QUIET = {"progress": False, "metadata": "none"}


def test_a_run_the_caller_only_waits_for_runs_its_first_worker_on_the_callers_thread() -> None:
    (ident,) = fanflow.compute(thread_of(1), config=_QUIET)
    assert ident == threading.get_ident()


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(lambda node: fanflow.compute(node, config={**_QUIET, "timeout_s": 60})[0], id="timeout_s"),
        pytest.param(lambda node: fanflow.submit(node, config=_QUIET).result(timeout=30)[0], id="submit"),
        pytest.param(lambda node: fanflow.compute(node, config={**_QUIET, "progress": True})[0], id="progress"),
    ],
)
def test_a_run_the_caller_must_watch_runs_on_worker_threads(how: Callable[[fanflow.Node], int]) -> None:
    """A timeout, a cancellable future or a progress bar need the waiting loop, so no task runs on its thread."""
    assert how(thread_of(2)) != threading.get_ident()


def test_max_workers_bounds_the_tasks_running_at_once_with_the_callers_thread_among_them() -> None:
    running = [0]
    most = [0]
    lock = threading.Lock()

    @fanflow.task
    def busy(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)  # long enough for a pool thread to start one alongside, even on a loaded machine
        with lock:
            running[0] -= 1
        return i

    @fanflow.task
    def total(*parts: int) -> int:
        return sum(parts)

    for cap in (1, 2):
        most[0] = 0
        assert total(*(busy(i) for i in range(6))).compute({**_QUIET, "max_workers": cap}) == 15
        assert most[0] == cap


class Inv:
    """An invocation as the threads platform sees one: only its run matters to it."""

    def __init__(self, run_id: str, n: int = 0) -> None:
        self.run_id, self.n = run_id, n


def test_run_here_refuses_when_every_slot_is_taken_and_after_close() -> None:
    from fanflow.platforms.threads import ThreadsPlatform

    release = threading.Event()
    ran: list[int] = []
    platform = ThreadsPlatform(lambda inv: ran.append(inv.n) if inv.run_id != "hold" else release.wait(10), 1)
    try:
        platform.invoke([Inv("hold")])
        deadline = time.monotonic() + 10
        while platform.run_here(Inv("probe", -1)):  # until the pool thread holds the only slot
            assert time.monotonic() < deadline
            ran.remove(-1)
        assert not platform.run_here(Inv("here", 1))
        release.set()
        while not platform.run_here(Inv("here", 1)):
            assert time.monotonic() < deadline
        assert ran == [1]
    finally:
        release.set()
        platform.close()
    assert not platform.run_here(Inv("here", 2))
    assert ran == [1]


def test_invocations_taken_back_by_their_runs_caller_run_exactly_once() -> None:
    """The caller and the pool threads race for the queued invocations: each runs once, never twice, never lost."""
    from fanflow.platforms.threads import ThreadsPlatform

    ran: list[tuple[str, int, bool]] = []
    lock = threading.Lock()
    caller = threading.get_ident()

    def handler(inv: Inv) -> None:
        with lock:
            ran.append((inv.run_id, inv.n, threading.get_ident() == caller))

    platform = ThreadsPlatform(handler, max_workers=3)
    taken_back = 0
    try:
        for _ in range(200):
            ran.clear()
            platform.invoke([Inv("other", i) for i in range(3)] + [Inv("mine", i) for i in range(5)])
            mine = Inv("mine", 5)
            if not platform.run_here(mine):  # every slot taken by a pool thread (a loaded machine): as the client
                platform.invoke([mine])
            deadline = time.monotonic() + 10
            while len(ran) < 9:
                assert time.monotonic() < deadline, f"invocations lost: {sorted(ran)}"
                time.sleep(0.001)
            time.sleep(0.002)  # a second run of any of them would show here
            expected = [("mine", i) for i in range(6)] + [("other", i) for i in range(3)]
            assert sorted((r, n) for r, n, _ in ran) == expected
            assert not any(here for r, _, here in ran if r == "other")  # another run's work is not taken
            taken_back += sum(here for r, n, here in ran if n != 5)
    finally:
        platform.close()
    assert taken_back  # the caller does take its run's work back (it holds the GIL as the pool threads wake)
    assert not platform._waiting  # a run's entry goes with its last waiting invocation


def test_a_platform_without_run_here_leaves_the_callers_thread_waiting() -> None:
    from fanflow.platforms.base import runs_on_caller
    from fanflow.platforms.threads import ThreadsPlatform

    class Elsewhere:
        name, in_process, options = "elsewhere", False, {}

        def invoke(self, invocations: object) -> None: ...

    platform = ThreadsPlatform(lambda _: None, 1)
    assert runs_on_caller(platform) and not runs_on_caller(Elsewhere())
    platform.close()


def test_the_yielding_lock_excludes_like_a_lock() -> None:
    """Four threads each add to a shared total 20,000 times in a read-then-write section: none is lost,
    and the lock is free afterwards (the store's and the platform's waiters yield the GIL instead of
    sleeping on the lock, which must not cost mutual exclusion)."""
    from fanflow.store.locks import YieldingLock

    lock = YieldingLock()
    state = {"total": 0}

    def add() -> None:
        for _ in range(20_000):
            with lock:
                seen = state["total"]
                if seen % 997 == 0:
                    time.sleep(0)  # give the GIL away inside the section, now and then
                state["total"] = seen + 1

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert state["total"] == 80_000
    assert lock._lock.acquire(False)


def test_the_yielding_semaphore_bounds_its_holders_and_wakes_every_waiter() -> None:
    """Six threads take one of two slots 1,000 times each, some without blocking (as a run's caller does):
    never more than two hold one, and every blocked thread gets a slot (none waits forever)."""
    from fanflow.store.locks import YieldingSemaphore

    slots = YieldingSemaphore(2)
    held, most, taken = [0], [0], [0]
    count = threading.Lock()

    def hold() -> None:
        with count:
            held[0] += 1
            most[0] = max(most[0], held[0])
            taken[0] += 1
        time.sleep(0)  # give the GIL away while holding the slot
        with count:
            held[0] -= 1

    def blocking() -> None:
        for _ in range(1_000):
            with slots:
                hold()

    def polling() -> None:
        done = 0
        while done < 1_000:
            if not slots.acquire(blocking=False):
                time.sleep(0)  # let a holder run on to its release
                continue
            try:
                hold()
            finally:
                slots.release()
            done += 1

    threads = [threading.Thread(target=blocking if i % 3 else polling, daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread still waits for a slot"
    assert taken[0] == 6_000 and most[0] == 2
    assert slots.acquire(blocking=False) and slots.acquire(blocking=False) and not slots.acquire(blocking=False)


@pytest.mark.parametrize("kind", ["lock", "semaphore"])
def test_a_released_yielding_lock_stays_with_the_thread_holding_the_gil(kind: str) -> None:
    """The convoy's first step does not happen: a thread waiting for the lock never takes it while it waits
    for the GIL. The test thread releases the lock and takes it again without giving the GIL up in between;
    a waiter sleeping on a plain lock (``threading.Lock``, or the one inside ``threading.Semaphore``) is woken
    by the release and holds the lock by then, so the holder would have to block on it and hand the GIL over.
    The semaphore's waiter, woken by the token given back, finds it taken and waits again."""
    from fanflow.store.locks import YieldingLock, YieldingSemaphore

    lock: Any = YieldingLock() if kind == "lock" else YieldingSemaphore(1)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)  # nobody takes the GIL from this thread while it runs Python below
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        with lock:
            pass

    lock.acquire()
    thread = threading.Thread(target=waiter, daemon=True)
    try:
        thread.start()
        waiting.wait(10)
        time.sleep(0.05)  # the waiter is in its acquire now
        lock.release()
        until = time.monotonic() + 0.2  # long enough for a woken waiter to be scheduled, even at load
        while time.monotonic() < until:
            pass
        taken_again = lock.acquire(False)
    finally:
        sys.setswitchinterval(interval)
    assert taken_again
    lock.release()
    thread.join(10)
    assert not thread.is_alive()


def _short_streak(platform: Any) -> None:
    """Run enough short invocations on the caller's thread that the platform holds roots back for callers
    (of a DAG without a signature, as these invocations carry none)."""
    from fanflow.platforms.threads import STREAK

    for _ in range(STREAK):
        assert platform.run_here(Inv("warm"))
    assert platform._streaks[None] >= STREAK


def test_a_runs_other_roots_wait_for_its_caller_after_short_invocations_and_wake_no_pool_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held back, the other roots of 200 small runs all run on the caller's thread, and no pool thread is
    started or woken for them (before: one queue put per run, a pool thread woken ~7 times a call). The
    hold is long here, so that a loaded machine's preemptions do not send a root to the pool."""
    from fanflow.platforms import threads
    from fanflow.platforms.threads import ThreadsPlatform

    monkeypatch.setattr(threads, "HOLD_S", 30.0)

    ran: list[tuple[str, int, bool]] = []
    caller = threading.get_ident()
    platform = ThreadsPlatform(lambda inv: ran.append((inv.run_id, inv.n, threading.get_ident() == caller)), 4)
    queued = [0]
    queue_up = platform._queue_up
    platform._queue_up = lambda invs: (queued.__setitem__(0, queued[0] + len(invs)), queue_up(invs))  # type: ignore[method-assign]
    try:
        _short_streak(platform)
        ran.clear()
        for run in range(200):
            assert platform.run_here(Inv(f"r{run}", 0), [Inv(f"r{run}", 1), Inv(f"r{run}", 2)])
        assert sorted((r, n) for r, n, _ in ran) == sorted((f"r{run}", n) for run in range(200) for n in range(3))
        assert all(here for _, _, here in ran)
        assert queued[0] == 0 and not platform._threads
        assert not platform._waiting
    finally:
        platform.close()


def test_roots_held_for_a_caller_busy_with_a_long_task_go_to_a_pool_thread() -> None:
    """The caller's root waits for its other root (a barrier): held back for ever, this would never end. The
    watcher hands the held root to a pool thread once its hold is up, and the DAG's streak of short invocations
    ends, so the next run's roots are not held. Who queued the root says it was held (the watcher), not invoked
    at once (the caller): a bound on the time it took would depend on the machine's load."""
    from fanflow.platforms.threads import ThreadsPlatform

    other_ran = threading.Event()
    ran: dict[int, bool] = {}
    caller = threading.get_ident()

    def handler(inv: Inv) -> None:
        ran[inv.n] = threading.get_ident() == caller
        if inv.run_id == "long" and inv.n == 0:
            assert other_ran.wait(30), "the held root never started"
        elif inv.run_id == "long":
            other_ran.set()

    platform = ThreadsPlatform(handler, 4)
    queued_by: list[tuple[str, list[int]]] = []
    queue_up = platform._queue_up
    platform._queue_up = lambda invs: (  # type: ignore[method-assign]
        queued_by.append((threading.current_thread().name, [inv.n for inv in invs])),
        queue_up(invs),
    )
    try:
        _short_streak(platform)
        assert platform.run_here(Inv("long", 0), [Inv("long", 1)])
        assert ran == {0: True, 1: False}
        assert queued_by == [("fanflow-held", [1])]  # held, then queued by the watcher: not invoked at once
        assert platform._streaks[None] == 0
    finally:
        platform.close()


def test_the_other_roots_of_a_caller_with_no_free_slot_are_invoked() -> None:
    from fanflow.platforms.threads import ThreadsPlatform

    release = threading.Event()
    ran: list[int] = []
    done = threading.Semaphore(0)

    def handler(inv: Inv) -> None:
        if inv.run_id == "hold":
            release.wait(10)
        else:
            ran.append(inv.n)
            done.release()

    platform = ThreadsPlatform(handler, 1)
    try:
        platform.invoke([Inv("hold")])
        deadline = time.monotonic() + 10
        while platform._slots.acquire(blocking=False):  # until the pool thread holds the only slot
            platform._slots.release()
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert not platform.run_here(Inv("r", 0), [Inv("r", 1), Inv("r", 2)])
        release.set()
        assert done.acquire(timeout=10) and done.acquire(timeout=10)
        assert sorted(ran) == [1, 2]
    finally:
        release.set()
        platform.close()


def test_only_the_invocations_of_dags_with_several_roots_keep_a_streak() -> None:
    """run_here holds back only a run's other roots, so the streak of a 1-root DAG would never be read: its
    invocations keep none (and skip the context switch count their verdict needs)."""
    from fanflow.dag.graph import DAG
    from fanflow.platforms.threads import ThreadsPlatform

    one = DAG.from_sinks([fanflow.task(abs)(-1)])
    two = DAG.from_sinks([fanflow.task(max)(fanflow.task(abs)(-1), fanflow.task(abs)(-2))])
    assert len(one.roots) == 1 and len(two.roots) == 2
    ran: list[str] = []
    platform = ThreadsPlatform(lambda inv: ran.append(inv.run_id), 2)
    try:
        for dag in (one, two):
            inv = Inv(dag.signature)
            inv.dag = dag  # type: ignore[attr-defined]
            assert platform.run_here(inv)
        assert ran == [one.signature, two.signature]
        assert set(platform._streaks) == {two.signature}
    finally:
        platform.close()


def _root_invocations(dag: Any, run_id: str) -> list[Any]:
    """One real invocation per root of ``dag`` (the platform merges only those), as a client starts them."""
    from fanflow.platforms.invocation import Invocation, WorkerSettings

    settings = WorkerSettings(key_ttl_s=60, lease_ms=1000, max_value_bytes=1 << 20)
    return [
        Invocation(
            run_id=run_id,
            start=(r,),
            memory_mb=128 * (i + 1),
            store_url="memory://",
            platform="threads",
            platform_options={},
            settings=settings,
            dag=dag,
            inv_id=f"{run_id}-{i}",
        )
        for i, r in enumerate(dag.roots)
    ]


def test_after_held_runs_whose_caller_took_every_root_a_runs_roots_share_the_callers_invocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A held root whose caller takes it still costs a worker of its own; once MERGE_AFTER held runs of a DAG
    had every root taken by their caller, the roots join the caller's invocation (one worker, its claims'
    owner the caller's invocation, as large as the largest)."""
    from fanflow.dag.graph import DAG
    from fanflow.platforms import threads
    from fanflow.platforms.threads import MERGE_AFTER, STREAK, ThreadsPlatform

    monkeypatch.setattr(threads, "HOLD_S", 30.0)  # a loaded machine's preemption must not send a root to the pool
    dag = DAG.from_sinks([fanflow.task(max)(fanflow.task(abs)(-1), fanflow.task(abs)(-2))])
    caller = threading.get_ident()
    ran: list[tuple[str, tuple[int, ...], int, str, bool]] = []
    platform = ThreadsPlatform(
        lambda inv: ran.append((inv.run_id, inv.start, inv.memory_mb, inv.inv_id, threading.get_ident() == caller)),
        4,
    )
    try:
        run = 0
        while platform._streaks.get(dag.signature, 0) < STREAK:  # spread: the other root goes to the pool
            first, *others = _root_invocations(dag, f"s{run}")
            assert platform.run_here(first, others)
            run += 1
            assert run < 10 * STREAK
        deadline = time.monotonic() + 10
        while len(ran) < 2 * run:  # the pool's roots ran
            assert time.monotonic() < deadline
            time.sleep(0.001)
        ran.clear()
        for run in range(MERGE_AFTER):  # held: separate invocations, all on the caller's thread
            first, *others = _root_invocations(dag, f"h{run}")
            assert platform.run_here(first, others)
        expected = [(f"h{run}", (t,)) for run in range(MERGE_AFTER) for t in dag.roots]
        assert sorted((r, s) for r, s, *_ in ran) == sorted(expected)
        assert all(here for *_, here in ran)
        ran.clear()
        first, *others = _root_invocations(dag, "merged")
        assert platform.run_here(first, others)
        assert ran == [("merged", tuple(dag.roots), 256, "merged-0", True)]
        assert not platform._waiting and not platform._held
    finally:
        platform.close()


def test_a_merged_invocation_that_is_not_short_ends_the_merging_and_the_hold() -> None:
    """A merged run whose worker ran long (a 5 ms sleep) keeps its other roots behind it once; the DAG's
    next run spreads again (its other root invoked at once, not held, not merged)."""
    from fanflow.dag.graph import DAG
    from fanflow.platforms.threads import MERGE_AFTER, STREAK, ThreadsPlatform

    dag = DAG.from_sinks([fanflow.task(max)(fanflow.task(abs)(-1), fanflow.task(abs)(-2))])
    ran: list[tuple[str, tuple[int, ...]]] = []

    def handler(inv: Any) -> None:
        if inv.run_id == "long":
            time.sleep(0.005)
        ran.append((inv.run_id, inv.start))

    platform = ThreadsPlatform(handler, 4)
    try:
        platform._streaks[dag.signature] = STREAK
        platform._merging[dag.signature] = MERGE_AFTER
        first, *others = _root_invocations(dag, "long")
        assert platform.run_here(first, others)
        assert ran == [("long", tuple(dag.roots))]
        assert platform._streaks[dag.signature] == 0 and dag.signature not in platform._merging
        invoked: list[Any] = []
        invoke = platform.invoke
        platform.invoke = lambda invs: (invoked.extend(invs), invoke(invs))  # type: ignore[method-assign]
        first, *others = _root_invocations(dag, "next")
        assert platform.run_here(first, others)
        assert [inv.start for inv in invoked] == [(dag.roots[1],)]
    finally:
        platform.close()


@fanflow.task
def checked_inc(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x + 1


@fanflow.task
def pair_sum(a: int, b: int) -> int:
    return a + b


def test_merged_runs_give_the_results_and_errors_of_separate_invocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end on the embedded default, through fanflow.compute and fanflow.dask.get: a 2-root DAG run
    until its roots merge gives the same values, and a task's failure in a merged run (same DAG, a
    constant that makes it fail: constants are not in the signature) raises as in a run of separate
    invocations."""
    from fanflow.platforms import threads

    monkeypatch.setattr(threads, "HOLD_S", 30.0)
    monkeypatch.setattr(threads, "STREAK", 2)
    monkeypatch.setattr(threads, "MERGE_AFTER", 2)
    merged: list[tuple[int, ...]] = []
    real = threads._merged

    def spy(first: Any, others: Any) -> Any:
        inv = real(first, others)
        merged.append(inv.start)
        return inv

    monkeypatch.setattr(threads, "_merged", spy)
    config = fanflow.Config(progress=False, metadata="none", max_workers=3)  # a platform of its own
    for i in range(40):
        assert fanflow.compute(pair_sum(checked_inc(i), checked_inc(2 * i)), config=config) == (3 * i + 2,)
    assert merged, "the roots never merged"
    with pytest.raises(fanflow.TaskFailedError) as failed:
        fanflow.compute(pair_sum(checked_inc(1), checked_inc(-5)), config=config)
    assert isinstance(failed.value.__cause__, ValueError)
    assert "negative: -5" in str(failed.value)

    dask = pytest.importorskip("dask")
    import fanflow.dask as ffdask

    @dask.delayed
    def dinc(x: int) -> int:
        return checked_inc.func(x)

    merged.clear()
    for i in range(40):
        (got,) = dask.compute(dask.delayed(pair_sum.func)(dinc(i), dinc(1)), scheduler=ffdask.get, config=config)
        assert got == i + 3
    assert merged, "the Dask graph's roots never merged"
    with pytest.raises(ValueError, match="negative: -3"):
        dask.compute(dask.delayed(pair_sum.func)(dinc(1), dinc(-3)), scheduler=ffdask.get, config=config)
