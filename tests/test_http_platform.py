"""The http platform: gateways' HTTP contract, retries and failover, invocations posted by workers.

The DAG-shape suite runs on http through ``run_config`` (2 gateways on
localhost, see conftest); these tests check what is specific to HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from support import GATEWAY_SECRET, gateway_payload, inc, install_hint

import fanflow

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
