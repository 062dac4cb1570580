"""A Redis store that goes away: pools stop within seconds, runs fail with a specific error within seconds.

Each test owns a real ``redis-server`` and kills it (SIGKILL: nothing answers afterwards, as when
its host is gone), with real pools, gateways and worker processes around it. The store retries a
lost connection for ``store_retry_s`` (10 s by default) in case Redis is restarting; after that,
nothing may cost that budget again: a pool's shutdown tries the store once, and a client's cleanup
after its run failed takes seconds.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import RedisServer, start_serving, wait_until

import fanflow
from fanflow.store import keys
from fanflow.store.redis import connect, trying_once

SECRET = "store-gone-secret"
LIVENESS_S = 15.0
"""A run whose store is gone fails within this (the store's 10 s retry budget, then a specific error)."""
STOP_S = 6.0
"""A pool or gateway whose store is gone exits within this after SIGTERM (it holds nothing to wait for)."""


@fanflow.task
def nap(started: str, seconds: float) -> int:
    Path(started).touch()
    time.sleep(seconds)
    return 1


@fanflow.task
def inc(x: int) -> int:
    return x + 1


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path, "--save", "", "--appendonly", "no").start()
    yield started
    started.kill()


def _start(procs: list[subprocess.Popen[str]], command: str, url: str) -> subprocess.Popen[str]:
    return start_serving(procs, command, url, SECRET, str(Path(__file__).parent))


def _stop_within(proc: subprocess.Popen[str], seconds: float) -> str:
    """SIGTERM ``proc``; its stderr, once it exited within ``seconds``."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - began
    assert took < seconds, f"it took {took:.1f} s to exit:\n{err}"
    assert proc.returncode == 0, err
    return err


@pytest.mark.parametrize("command", ["gateway", "worker-pool"])
def test_a_pool_whose_store_is_gone_stops_within_seconds_and_says_so(
    server: RedisServer, serving_procs: list[subprocess.Popen[str]], command: str
) -> None:
    proc = _start(serving_procs, command, server.url)
    server.kill()
    time.sleep(2.5)  # the pool tries its store every second meanwhile: it says so once, with no traceback
    err = _stop_within(proc, STOP_S)
    assert "stopped without reaching its store" in err and "it held no invocation" in err
    assert err.count("its store does not answer") == 1 and "Traceback" not in err, err


def test_a_shared_pool_stopped_with_a_run_in_flight_after_its_store_went_fails_the_run_within_seconds(
    server: RedisServer, serving_procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    proc = _start(serving_procs, "worker-pool", server.url)
    started = tmp_path / "started"
    config = fanflow.Config(
        platform="processes", store=server.url, pool="gone", secret=SECRET, progress=False, metadata="none"
    )
    future = inc(nap(str(started), 30.0)).submit(config)
    wait_until(started.exists, 30, "the task to start")
    server.kill()
    began = time.monotonic()
    err = _stop_within(proc, STOP_S)  # the busy worker gets its grace period, then goes
    assert "stopped without reaching its store" in err and "its 1 unfinished invocations stay in its held list" in err
    with pytest.raises(fanflow.StoreUnavailableError, match="cannot reach the Redis store"):
        future.result(timeout=60)
    assert time.monotonic() - began < LIVENESS_S


def _own_pool(url: str) -> fanflow.Config:
    return fanflow.Config(platform="processes", store=url, max_workers=2, progress=False, metadata="none")


def test_a_run_whose_store_goes_fails_within_seconds_cleanup_included(server: RedisServer, tmp_path: Path) -> None:
    """The run's client, its own pool and the worker all find the store gone; after the first finds out,
    the others (cleanup, the pool's stop, the worker's report) take no retry budget of their own."""
    started = tmp_path / "started"
    future = inc(nap(str(started), 3.0)).submit(_own_pool(server.url))
    wait_until(started.exists, 30, "the task to start")
    server.kill()
    began = time.monotonic()
    with pytest.raises(fanflow.StoreUnavailableError, match="cannot reach the Redis store"):
        future.result(timeout=120)
    assert time.monotonic() - began < LIVENESS_S


FROZEN_TIMEOUT_S = 5.0
"""The socket timeout the frozen store's URL sets (``?socket_timeout=``): the default's 30 s made the test
below the suite's longest."""


def test_a_run_whose_store_stops_answering_fails_after_one_socket_timeout_cleanup_included(
    server: RedisServer, tmp_path: Path
) -> None:
    """A frozen Redis (SIGSTOP: connections open, no reply) costs the first call its retry budget, then every
    other call of the process fails without a try: each try would wait out the socket timeout (with the
    default 30 s timeout one call took ~31 s, and a try per call >120 s). The URL sets a 5 s timeout here
    (the first call times out twice in its 10 s budget); a try per call would add 4 timeouts or more."""
    started = tmp_path / "started"
    url = f"{server.url}?socket_timeout={FROZEN_TIMEOUT_S:g}"
    future = inc(nap(str(started), 3.0)).submit(_own_pool(url))
    wait_until(started.exists, 30, "the task to start")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    began = time.monotonic()
    try:
        with pytest.raises(fanflow.StoreUnavailableError, match="cannot reach the Redis store"):
            future.result(timeout=180)
        assert time.monotonic() - began < FROZEN_TIMEOUT_S + LIVENESS_S
    finally:
        server.proc.send_signal(signal.SIGCONT)


def test_a_run_submitted_after_its_store_went_fails_within_seconds(server: RedisServer) -> None:
    config = _own_pool(server.url)
    assert inc(1).compute(config) == 2  # the store is open in this process: no fresh connect to fail fast
    server.kill()
    began = time.monotonic()
    with pytest.raises(fanflow.StoreUnavailableError, match="cannot reach the Redis store"):
        inc(2).compute(config)
    assert time.monotonic() - began < LIVENESS_S


def test_a_warm_pool_whose_store_went_while_it_was_idle_closes_within_seconds(server: RedisServer) -> None:
    """Nothing failed before (no budget spent): the pool's stop and the client's removal of its queue each
    try once (the queue expires anyway), so the client's exit is not held up by the budget."""
    from fanflow.client.session import session

    assert inc(1).compute(_own_pool(server.url).replace(keep_alive_s=600)) == 2
    server.kill()
    began = time.monotonic()
    session().close()
    assert time.monotonic() - began < STOP_S


def test_after_a_call_ran_out_of_its_budget_the_next_ones_try_once(server: RedisServer) -> None:
    store = connect(server.url, retry_s=2.0)
    status = keys.status("budget")
    store.set_status(status, "running", 60)
    server.kill()
    began = time.monotonic()
    with pytest.raises(fanflow.StoreUnavailableError):
        store.get_status(status)
    assert 1.0 < time.monotonic() - began < 4.0  # about the budget, however many retries fit in it
    for _ in range(3):
        began = time.monotonic()
        with pytest.raises(fanflow.StoreUnavailableError):
            store.get_status(status)
        assert time.monotonic() - began < 0.5
    store.close()


def test_a_store_restarting_within_the_budget_is_waited_for_but_not_inside_trying_once(
    server: RedisServer,
) -> None:
    store = connect(server.url, retry_s=10.0)
    status = keys.status("restart")
    server.kill()
    began = time.monotonic()
    with trying_once(), pytest.raises(fanflow.StoreUnavailableError):
        store.get_status(status)
    assert time.monotonic() - began < 0.5
    restart = threading.Timer(1.0, server.start)  # on the same port, a moment later
    restart.start()
    began = time.monotonic()
    assert store.get_status(status) is None
    assert 0.9 < time.monotonic() - began < 8.0
    restart.join()
    store.close()
