"""What someone who can write to Redis, or call a gateway, can and cannot do (docs/reliability.md, "Security").

Every test here runs against a real ``redis-server``; the end-to-end ones on the
processes platform. "Runs code" is observed as a marker file that a planted pickle
creates when it is unpickled.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import GATEWAY_SECRET, RedisServer, free_port, install_hint, start_gateways, stop, wait_until

import fanflow
from fanflow.dag.encoding import encode
from fanflow.dag.graph import DAG
from fanflow.dashboard.source import Source
from fanflow.platforms.invocation import Invocation, WorkerSettings, run_id_of, sign, verify
from fanflow.store import keys, open_store
from fanflow.store.codec import Codec
from fanflow.store.redis import RedisStore, connect
from fanflow.worker import handle

SECRET = b"the-clients-secret"


class _Planted:
    """Unpickling this creates a file: what an attacker's pickle would do, made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _plain(value: Any) -> bytes:
    """A value framed as fanflow stores it, without a seal (what a writer without the secret can make)."""
    return b"\x00" + pickle.dumps(value)


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    s = connect(redis_url, secret=SECRET)
    yield s
    s.close()


def test_a_value_without_the_secrets_mac_is_never_unpickled(store: RedisStore, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    key = keys.output("run_plain", 3)
    store.client.set(key, _plain(_Planted(marker)), ex=60)
    with pytest.raises(fanflow.ValueRejectedError, match="not sealed"):
        store.get_many([key])
    other = Codec(b"another-secret")  # sealed, but by someone with another secret
    store.client.set(key, other.seal(key, other.encode(_Planted(marker))), ex=60)
    with pytest.raises(fanflow.ValueRejectedError, match="fails its MAC"):
        store.get_many([key])
    assert not marker.exists()


def test_a_sealed_value_copied_to_another_key_is_refused(store: RedisStore, tmp_path: Path) -> None:
    """The MAC covers the key name, so a value of one run (or task, or role) cannot stand in for another."""
    source, target = keys.output("run_a", 1), keys.dag("run_b")
    store.put_many({source: store.dumps(b"a task's output")[0]}, 60)
    assert store.get_many([source])[0] == [b"a task's output"]
    store.client.set(target, store.client.get(source), ex=60)
    with pytest.raises(fanflow.ValueRejectedError, match="fails its MAC"):
        store.get_many([target])
    flipped = bytearray(store.client.get(source))
    flipped[-1] ^= 1  # one bit of the pickle
    store.client.set(source, bytes(flipped), ex=60)
    with pytest.raises(fanflow.ValueRejectedError):
        store.get_many([source])


@fanflow.task
def _evil(path: str) -> int:
    Path(path).write_text("ran")
    return 0


@fanflow.task
def _honest() -> int:
    return 1


def _invocation(run_id: str, store_url: str, dag: Any = None, invoked_at: float | None = None) -> Invocation:
    return Invocation(
        run_id=run_id,
        start=(0,),
        memory_mb=512,
        store_url=store_url,
        platform="processes",
        platform_options={"store": store_url, "pool": "security-test"},
        settings=WorkerSettings(key_ttl_s=600, lease_ms=5000, max_value_bytes=1 << 20),
        dag=dag,
        invoked_at=time.time() if invoked_at is None else invoked_at,
        inv_id="inv-replayed",
    )


def test_a_signed_payload_replayed_against_a_planted_dag_runs_nothing(
    store: RedisStore, redis_url: str, tmp_path: Path
) -> None:
    """A captured queue entry (DAG by reference) plus a DAG planted under its run's key."""
    honest_run = DAG.from_sinks([_honest()]).new_run_id()
    payload = sign(_invocation(honest_run, redis_url), SECRET)  # as the client signed it
    marker = tmp_path / "ran"
    planted = encode(DAG.from_sinks([_evil(str(marker))]))  # an attacker's own DAG, in the right format
    store.client.set(keys.status(honest_run), "running", ex=60)
    for value in (_plain(planted), _plain(_Planted(marker))):
        store.client.set(keys.dag(honest_run), value, ex=60)
        with pytest.raises(fanflow.ValueRejectedError):
            handle(payload, secret=SECRET)
    # An honestly sealed DAG of ANOTHER run, copied under this run's key, is refused as well.
    other_run = DAG.from_sinks([_evil(str(marker))]).new_run_id()
    store.put_many({keys.dag(other_run): store.dumps(planted)[0]}, 60)
    store.client.set(keys.dag(honest_run), store.client.get(keys.dag(other_run)), ex=60)
    with pytest.raises(fanflow.ValueRejectedError):
        handle(payload, secret=SECRET)
    assert not marker.exists()


def test_a_payload_older_than_its_runs_keys_is_a_replay(redis_url: str) -> None:
    stale = sign(_invocation("run_over", redis_url, invoked_at=time.time() - 601), SECRET)
    with pytest.raises(fanflow.PayloadRejectedError, match="replay"):
        verify(stale, SECRET)
    fresh = sign(_invocation("run_live", redis_url), SECRET)
    assert verify(fresh, SECRET).run_id == "run_live"
    assert run_id_of(fresh) == "run_live"  # readable without the secret, to tell the run about a refusal
    assert run_id_of(b"junk") is None


@fanflow.task
def _quick() -> int:
    return 1


@fanflow.task
def _gated(gate: str) -> int:
    wait_until(Path(gate).exists, 60, "the gate to open")
    return 2


@fanflow.task
def _add(a: Any, b: int) -> int:
    return a + b  # type: ignore[no-any-return]


def test_a_planted_task_output_fails_the_run_without_running_code(redis_url: str, tmp_path: Path) -> None:
    """On real worker processes: an output overwritten in Redis mid-run is refused by the task that reads it."""
    gate, marker = tmp_path / "gate", tmp_path / "ran"
    config = fanflow.Config(
        platform="processes",
        store=redis_url,
        secret=SECRET.decode(),
        max_workers=2,
        progress=False,
        metadata=f"sqlite:///{tmp_path / 'meta.db'}",
    )
    raw = open_store(redis_url).client  # type: ignore[attr-defined]
    before = set(raw.keys("ff:*:in:*"))
    future = _add(_quick(), _gated(str(gate))).submit(config)
    # _quick's output, waiting for _gated
    (key,) = wait_until(lambda: set(raw.keys("ff:*:in:*")) - before, 60, "the first input to be stored")
    raw.set(key, _plain(_Planted(marker)), keepttl=True)
    gate.touch()
    with pytest.raises(fanflow.ValueRejectedError, match="not sealed"):
        future.result(timeout=60)
    assert not marker.exists()


# -- passwords in store URLs --------------------------------------------------------------------
PASSWORD = "hunter2-sec"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that requires a password."""
    server = RedisServer(tmp_path_factory.mktemp("locked"), "--save", "", "--requirepass", PASSWORD).start()
    yield server
    server.kill()


def test_a_password_in_the_url_query_is_masked_everywhere(locked_redis: RedisServer) -> None:
    url = f"{locked_redis.url}?password={PASSWORD}"  # redis-py reads the password from the query too
    store = connect(url, secret=SECRET)
    try:
        store.put_many({"ff:{masked}:status": store.dumps(1)[0]}, 10)  # the URL works
        shown = [
            repr(fanflow.Config(store=url, platform="processes")),
            str(fanflow.Config(store=url).display()),
            repr(_invocation("run_masked", url)),
            str(Source(store, None).store_url),  # what the dashboard shows
        ]
    finally:
        store.close()
    closed = f"redis://127.0.0.1:{free_port()}/0?password={PASSWORD}"
    with pytest.raises(fanflow.StoreUnavailableError) as info:
        connect(closed, retry_s=0.2)
    shown.append(str(info.value))
    for text in shown:
        assert PASSWORD not in text
        assert "password=***" in text


def test_gateway_health_never_shows_a_store_password(locked_redis: RedisServer) -> None:
    """``GET /healthz`` answers anyone who reaches the port: the store URLs it lists are masked."""
    httpx = pytest.importorskip("httpx", reason=install_hint("http"))
    url = f"redis://:{PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    (gateway,), procs = start_gateways(1)
    try:
        payload = sign(_invocation(DAG.from_sinks([_honest()]).new_run_id(), url), GATEWAY_SECRET.encode())
        assert httpx.post(f"{gateway}/invoke", content=payload, timeout=30).status_code == 202
        health = httpx.get(f"{gateway}/healthz", timeout=10)
        assert health.status_code == 200
        assert PASSWORD not in health.text
        assert f":***@127.0.0.1:{locked_redis.port}" in health.text  # still says which store
    finally:
        stop(procs)


def test_a_captured_payload_posted_to_a_gateway_after_its_run_ended_runs_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """A gateway caller replays a payload it captured: signed, so accepted (202), but its run is over."""
    httpx = pytest.importorskip("httpx", reason=install_hint("http"))
    raw = open_store(redis_url).client  # type: ignore[attr-defined]
    replayed, live = tmp_path / "replayed", tmp_path / "live"
    ended = _invocation("run_ended", redis_url, dag=encode(DAG.from_sinks([_evil(str(replayed))])))
    running = _invocation("run_running", redis_url, dag=encode(DAG.from_sinks([_evil(str(live))])))
    raw.set(keys.status("run_running"), "running", ex=60)  # "run_ended" has no status any more: cleaned up
    (gateway,), procs = start_gateways(1, max_workers=1)  # one worker process: invocations run in order
    try:
        for inv in (ended, running):
            answer = httpx.post(f"{gateway}/invoke", content=sign(inv, GATEWAY_SECRET.encode()), timeout=30)
            assert answer.status_code == 202
        wait_until(live.exists, 60, "the live run's task to run")
        assert not replayed.exists()
    finally:
        stop(procs)
        raw.delete(*raw.keys("ff:{run_running*"), *raw.keys("ff:{run_ended*"))
