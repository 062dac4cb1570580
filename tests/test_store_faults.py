"""A store that refuses us, is missing, or is full: a specific error within seconds, never a hang.

Each test owns a real ``redis-server`` (a password, or ``--maxmemory`` with
``noeviction``) and runs real worker processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RedisServer
from platforms_support import free_port

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


def _config(store: str, tmp_path: Path, **extra: object) -> fanflow.Config:
    return fanflow.Config(
        platform="processes",
        store=store,
        max_workers=1,
        progress=False,
        metadata=f"sqlite:///{tmp_path / 'meta.db'}",
        **extra,  # type: ignore[arg-type]
    )


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
        _one().compute(_config(url, tmp_path))
    assert time.monotonic() - began < 3.0
    assert PASSWORD not in str(info.value)
