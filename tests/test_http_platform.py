"""The http platform: gateways' HTTP contract, retries and failover, invocations posted by workers.

The DAG-shape suite runs on http through ``run_config`` (2 gateways on
localhost, see conftest); these tests check what is specific to HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from support import (
    GATEWAY_SECRET,
    bump,
    free_port,
    gateway_payload,
    inc,
    install_hint,
    start_gateways,
    stop,
    wait_until,
)

import fanflow
from fanflow.store import keys

pytest.importorskip("httpx", reason=install_hint("http"))

import httpx

from fanflow.platforms.http import HttpPlatform, parse_endpoints


@fanflow.task
def total(values: list[int]) -> int:
    return sum(values)


@fanflow.task
def slow_inc(x: int) -> int:
    time.sleep(0.2)
    return x + 1


@fanflow.task
def needs_missing_package(x: int) -> int:
    return x


@fanflow.task
def counted_nap(x: int, marks: str, seconds: float, gate: str | None = None) -> int:
    """Counts its start and its end in ``marks``; waits for the file ``gate`` first, if given."""
    bump(os.path.join(marks, f"start-{x}"))
    if gate is not None:
        wait_until(lambda: os.path.exists(gate), 60, "the test to open the gate")
    time.sleep(seconds)
    bump(os.path.join(marks, f"done-{x}"))
    return x


def _config(redis_url: str, urls: list[str], **kw: Any) -> fanflow.Config:
    return fanflow.Config(
        platform="http",
        store=redis_url,
        endpoints=",".join(urls),
        secret=GATEWAY_SECRET,
        progress=False,
        metadata="none",
        **kw,
    )


def test_invoke_answers_202_and_health_200(gateway_urls: list[str], redis_url: str) -> None:
    for url in gateway_urls:
        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
    reply = httpx.post(f"{gateway_urls[0]}/invoke", content=gateway_payload(redis_url))
    assert reply.status_code == 202 and reply.json()["accepted"] == 1


def test_gateway_refuses_bad_signatures_and_bad_requests(gateway_urls: list[str], redis_url: str) -> None:
    url = gateway_urls[0]
    assert httpx.post(f"{url}/invoke", content=gateway_payload(redis_url, "another-secret")).status_code == 403
    assert httpx.post(f"{url}/invoke", content=b"not a payload").status_code == 403
    assert httpx.post(f"{url}/nowhere", content=b"").status_code == 404
    assert httpx.get(f"{url}/invoke").status_code == 404


def test_both_gateways_take_work(gateway_urls: list[str], redis_url: str) -> None:
    before = [httpx.get(f"{u}/healthz").json()["accepted"] for u in gateway_urls]
    assert total([inc(i) for i in range(60)]).compute(_config(redis_url, gateway_urls)) == sum(range(1, 61))
    after = [httpx.get(f"{u}/healthz").json()["accepted"] for u in gateway_urls]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def test_a_dead_gateway_in_the_list_costs_a_retry_not_the_run(gateway_urls: list[str], redis_url: str) -> None:
    dead = "http://127.0.0.1:9"  # discard port: connection refused

    def accepted() -> int:
        return int(httpx.get(f"{gateway_urls[0]}/healthz").json()["accepted"])

    before = accepted()
    platform = HttpPlatform([dead, gateway_urls[0]], retries=3)
    try:
        platform.invoke([gateway_payload(redis_url) for _ in range(8)])  # raises unless every payload is accepted
    finally:
        platform.close()
    assert accepted() - before == 8  # all of them by the live gateway, some after failing over from the dead one


def test_no_gateway_url_is_refused_up_front_and_nothing_is_left_running(
    gateway_urls: list[str], redis_url: str
) -> None:
    """A worker used to crash on a payload naming no gateway (ValueError from picking one of none)."""
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(fanflow.ConfigError, match=r"no gateway URL.*config\.endpoints"):
        HttpPlatform([])
    assert {t.ident for t in threading.enumerate()} <= before  # no invoker thread started for it
    bare = gateway_payload(redis_url, endpoints=())
    reply = httpx.post(f"{gateway_urls[0]}/invoke", content=bare)
    assert reply.status_code == 400 and "no-such-run" in reply.json()["error"], reply.text
    assert "config.endpoints" in reply.json()["error"]
    platform = HttpPlatform(gateway_urls, retries=3)
    try:  # a client posting it is told at once: a 400 is not retried
        with pytest.raises(fanflow.PlatformError, match=r"HTTP 400.*name no gateway URL"):
            platform.invoke([gateway_payload(redis_url), bare])
    finally:
        platform.close()


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first ``fail`` posts, then 202."""

    protocol_version = "HTTP/1.1"
    fail = 2
    posts = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts += 1
        status = 503 if type(self).posts <= type(self).fail else 202
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    _Flaky.posts = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_5xx_is_retried_with_backoff(flaky: str) -> None:
    platform = HttpPlatform([flaky], retries=3)
    try:
        platform.invoke([b"payload"])
    finally:
        platform.close()
    assert _Flaky.posts == 3


def test_retries_run_out_with_an_error_that_says_what_to_check(flaky: str) -> None:
    _Flaky.fail = 100
    platform = HttpPlatform([flaky], retries=2)
    try:
        with pytest.raises(fanflow.PlatformError, match="no gateway accepted"):
            platform.invoke([b"payload"])
    finally:
        platform.close()
        _Flaky.fail = 2


def test_client_needs_endpoints_secret_and_a_live_gateway(redis_url: str) -> None:
    with pytest.raises(fanflow.ConfigError, match="endpoints"):
        parse_endpoints(None)
    with pytest.raises(fanflow.ConfigError, match="gateway URLs"):
        parse_endpoints("ftp://x")
    config = fanflow.Config(platform="http", store=redis_url, endpoints="http://127.0.0.1:9", progress=False)
    with pytest.raises(fanflow.ConfigError, match="secret"):
        inc(1).compute(config)
    with pytest.raises(fanflow.PlatformError, match="no fanflow gateway is healthy"):
        inc(1).compute(config.replace(secret=GATEWAY_SECRET))


def test_requirements_are_checked_on_the_gateway(gateway_urls: list[str], redis_url: str, tmp_path: Any) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("cloudpickle\nno-such-package-fanflow-test>=1\n")
    config = _config(redis_url, gateway_urls, requirements=str(reqs))
    with pytest.raises(fanflow.FanflowError, match="no-such-package-fanflow-test"):
        needs_missing_package(1).compute(config)


def test_workers_post_fan_outs_to_the_gateways(gateway_urls: list[str], redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queues_before = {k for k in client.scan_iter("ff:pool:gateway-*:queue")}
    before = httpx.get(f"{gateway_urls[0]}/healthz").json()["accepted"]
    root = inc(0)
    assert total([slow_inc(root) for _ in range(8)]).compute(_config(redis_url, gateway_urls[:1])) == 8 * 2
    accepted = httpx.get(f"{gateway_urls[0]}/healthz").json()["accepted"] - before
    assert accepted >= 2  # the client posted the root; its worker posted a share of the fan-out to the idle slot
    assert {k for k in client.scan_iter("ff:pool:gateway-*:queue")} >= queues_before


# -- liveness: a gateway killed with invocations in flight ------------------------------------
def _done_counts(marks: Any, xs: list[int]) -> list[int]:
    return [int((marks / f"done-{x}").read_text()) if (marks / f"done-{x}").exists() else 0 for x in xs]


def _forget_pool(redis_url: str, pool: str) -> None:
    """Delete what a killed gateway's pool left in the session's Redis (its queue, for no one)."""
    client = redis.Redis.from_url(redis_url)
    stale = [*client.scan_iter(match=f"ff:pool:{pool}:*"), *client.scan_iter(match=f"{{ff:pool:{pool}:queue}}:*")]
    if stale:
        client.delete(*stale)


def _all_in_hand(redis_url: str, pool: str, runs: list[fanflow.RunFuture]) -> bool:
    """Whether the gateway's pool took every run's roots (queued, held, or begun by a worker), and holds three."""
    client = redis.Redis.from_url(redis_url)
    lists = [f"ff:pool:{pool}:queue", *client.scan_iter(match=f"{{ff:pool:{pool}:queue}}:held:*")]
    entries = [e for k in lists for e in client.lrange(k, 0, -1)]
    if len(entries) < 3:
        return False
    # a future's run_id is "" until its run is planned, and b"" is in every entry: such a run is not in hand
    return all(
        f.run_id and (client.exists(keys.started(f.run_id)) or any(f.run_id.encode() in e for e in entries))
        for f in runs
    )


def _gated_runs(redis_url: str, urls: list[str], marks: Any, runs: int) -> list[fanflow.RunFuture]:
    """``runs`` runs of three short tasks, the last of each waiting for the file ``gate`` in ``marks``: on
    one-worker gateways one invocation per gateway runs (until the test opens the gate), the others wait."""
    marks.mkdir()
    config = _config(redis_url, urls)
    gate = str(marks / "gate")
    return [
        total([counted_nap(10 * r + i, str(marks), 0.1, gate if i == 2 else None) for i in range(3)]).submit(config)
        for r in range(runs)
    ]


def test_a_killed_gateway_fails_its_runs_within_seconds(redis_url: str, tmp_path: Any) -> None:
    urls, procs = start_gateways(1, 1)
    pool = httpx.get(f"{urls[0]}/healthz").json()["pool"]
    try:
        runs = _gated_runs(redis_url, urls, tmp_path / "marks", 3)
        wait_until(lambda: _all_in_hand(redis_url, pool, runs), 30, "every run's invocations to reach the gateway")
        procs[0].send_signal(signal.SIGKILL)
        began = time.monotonic()
        for future in runs:
            with pytest.raises(fanflow.PoolGoneError, match="queue 'gateway-") as caught:
                future.result(timeout=30)
            assert urls[0] in str(caught.value)
        assert time.monotonic() - began < 15.0  # the bound: 4 s to hand back, 8 s of grace
    finally:
        stop(procs)
        _forget_pool(redis_url, pool)


def test_a_gateway_started_again_runs_what_the_killed_one_held(redis_url: str, tmp_path: Any) -> None:
    port = free_port()
    pool = f"gateway-{socket.gethostname()}-{port}"
    urls, procs = start_gateways(1, 1, "--store", redis_url, ports=[port])
    try:
        runs = _gated_runs(redis_url, urls, tmp_path / "marks", 3)
        wait_until(lambda: _all_in_hand(redis_url, pool, runs), 30, "every run's invocations to reach the gateway")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=10)
        _, again = start_gateways(1, 1, "--store", redis_url, ports=[port])  # same host and port: same queue
        procs += again
        (tmp_path / "marks" / "gate").touch()
        assert [f.result(timeout=60) for f in runs] == [sum(10 * r + i for i in range(3)) for r in range(3)]
        done = _done_counts(tmp_path / "marks", [10 * r + i for r in range(3) for i in range(3)])
        assert min(done) == 1 and sum(done) <= 9 + 2  # at most the killed invocation's finished tasks ran again
    finally:
        stop(procs)
        _forget_pool(redis_url, pool)


def test_a_gateway_sharing_its_pool_takes_over_from_a_killed_one(redis_url: str, tmp_path: Any) -> None:
    pool = f"shared-{os.getpid()}"
    urls, procs = start_gateways(2, 1, "--pool", pool)
    client = redis.Redis.from_url(redis_url)

    def held_by_first() -> int:
        found = client.scan_iter(match=f"{{ff:pool:{pool}:queue}}:held:*-{procs[0].pid}-*")
        return sum(int(client.llen(k)) for k in found)

    try:
        marks = tmp_path / "marks"
        runs = _gated_runs(redis_url, urls, marks, 4)
        wait_until(lambda: held_by_first() >= 2, 30, "the first gateway to hold invocations")
        procs[0].send_signal(signal.SIGKILL)
        (marks / "gate").touch()
        assert [f.result(timeout=60) for f in runs] == [sum(10 * r + i for i in range(3)) for r in range(4)]
        done = _done_counts(marks, [10 * r + i for r in range(4) for i in range(3)])
        assert min(done) == 1 and sum(done) <= 12 + 2  # at most the killed invocation's finished tasks ran again
    finally:
        stop(procs)
        _forget_pool(redis_url, pool)
