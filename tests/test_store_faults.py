"""A store that refuses us, is missing, or is full: a specific error within seconds, never a hang.

Each test owns a real ``redis-server`` (a password, or ``--maxmemory`` with
``noeviction``) and runs real worker processes.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import (
    RedisServer,
    free_port,
    gateway_payload,
    processes_config,
    start_gateways,
    start_serving,
    stop,
    wait_until,
)

import fanflow

PASSWORD = "store-faults-password"


@fanflow.task
def _one() -> int:
    return 1


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("locked"), "--save", "", "--requirepass", PASSWORD).start()
    yield server
    server.kill()


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("missing password", fanflow.StoreAuthError, "requires a password"),
        ("wrong password", fanflow.StoreAuthError, "refused the user or password"),
        ("nothing listening", fanflow.StoreUnavailableError, "cannot reach"),
    ],
)
def test_a_store_that_refuses_or_is_absent_is_reported_within_3_s(
    locked_redis: RedisServer, tmp_path: Path, case: str, error: type[Exception], match: str
) -> None:
    url = {
        "missing password": locked_redis.url,
        "wrong password": f"redis://:not-{PASSWORD}@127.0.0.1:{locked_redis.port}/0",
        "nothing listening": f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0",
    }[case]
    began = time.monotonic()
    with pytest.raises(error, match=match) as info:
        _one().compute(processes_config(url, tmp_path, workers=1))
    assert time.monotonic() - began < 3.0
    assert PASSWORD not in str(info.value)


# -- a full store ---------------------------------------------------------------------------------
@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of 2 MB that refuses writes once full (``noeviction``), as Redis does by default."""
    server = RedisServer(tmp_path, "--save", "", "--maxmemory", "2mb", "--maxmemory-policy", "noeviction").start()
    yield server
    server.kill()


@fanflow.task
def _gated(started: str, gate: str) -> int:
    Path(started).touch()
    wait_until(Path(gate).exists, 60, "the gate to open")
    return 1


@fanflow.task
def _inc(x: int) -> int:
    return x + 1


def _fill(url: str) -> None:
    """Fill the store as another tenant would, then keep it over its limit (writes are refused)."""
    client = redis.Redis.from_url(url)
    with contextlib.suppress(redis.exceptions.OutOfMemoryError):
        for i in range(1000):
            client.set(f"filler:{i}", b"x" * 20_000)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 200_000)
    client.close()


def test_a_store_that_fills_up_mid_run_fails_the_run_within_seconds(full_redis: RedisServer, tmp_path: Path) -> None:
    """The task's output write is refused, and so would be the failure record, a write too."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    future = _inc(_gated(str(started), str(gate))).submit(processes_config(full_redis.url, tmp_path, workers=1))
    wait_until(started.exists, 60, "the task to start")
    _fill(full_redis.url)
    gate.touch()
    began = time.monotonic()
    with pytest.raises(fanflow.StoreFullError, match="maxmemory"):
        future.result(timeout=30)
    assert time.monotonic() - began < 15


def test_a_full_store_refuses_a_new_run_at_once(full_redis: RedisServer, tmp_path: Path) -> None:

    _fill(full_redis.url)
    began = time.monotonic()
    with pytest.raises(fanflow.StoreFullError, match="maxmemory"):
        _one().compute(processes_config(full_redis.url, tmp_path, workers=1))
    assert time.monotonic() - began < 15


def test_a_gateway_whose_store_is_full_refuses_invocations_saying_so(full_redis: RedisServer) -> None:
    """Its pool's queue push is refused: 507 with the store's error, and the invoker raises StoreFullError
    at once (it was a crashed request handler, which invokers retried as a dead gateway)."""
    from fanflow.platforms.http import HttpPlatform

    urls, procs = start_gateways(1, 1, "--store", full_redis.url)
    platform = HttpPlatform(urls, retries=3)
    try:
        _fill(full_redis.url)
        began = time.monotonic()
        with pytest.raises(fanflow.StoreFullError, match="is full: it reached its maxmemory"):
            platform.invoke([gateway_payload(full_redis.url)])
        assert time.monotonic() - began < 5
    finally:
        platform.close()
        stop(procs)


def test_a_store_that_fills_up_under_a_shared_pool_fails_the_run_with_store_full_error(
    full_redis: RedisServer, tmp_path: Path, serving_procs: list[subprocess.Popen[str]]
) -> None:
    """The client's liveness check of the pool is refused (its reap is a script that may write): it
    raised redis-py's OutOfMemoryError, not a fanflow error."""
    start_serving(serving_procs, "worker-pool", full_redis.url, PASSWORD, str(Path(__file__).parent))
    started, gate = tmp_path / "started", tmp_path / "gate"
    config = fanflow.Config(
        platform="processes", store=full_redis.url, pool="gone", secret=PASSWORD, progress=False, metadata="none"
    )
    future = _gated(str(started), str(gate)).submit(config)  # the task waits: nothing else meets the full store
    wait_until(started.exists, 60, "the task to start")
    _fill(full_redis.url)
    began = time.monotonic()
    with pytest.raises(fanflow.StoreFullError, match="maxmemory"):
        future.result(timeout=30)
    assert time.monotonic() - began < 15
    gate.touch()
