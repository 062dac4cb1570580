"""The lambda platform without AWS: the handler on real payloads, the invoker's requests with botocore's Stubber.

``emulated_lambda`` stands in for the Lambda service: its ``invoke`` takes the
event the invoker built and runs the real :func:`handler` on it in a thread,
so whole runs go client -> event -> handler -> worker -> event -> handler.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from typing import Any

import pytest
import redis
from support import inc, install_hint
from typer.testing import CliRunner

import fanflow

pytest.importorskip("boto3", reason=install_hint("aws"))

import boto3
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from fanflow.cli.main import app
from fanflow.platforms import aws_lambda
from fanflow.platforms.aws_lambda import EVENT_LIMIT_BYTES, LambdaPlatform, event_for
from fanflow.platforms.base import InvokerCache
from fanflow.platforms.invocation import Invocation, WorkerSettings, sign, verify
from fanflow.store import keys
from fanflow.worker.entry import lambda_handler as handler

SECRET = "lambda-test-secret"
SETTINGS = WorkerSettings(key_ttl_s=60, lease_ms=30_000, max_value_bytes=1 << 20)


@fanflow.task
def total(values: list[int]) -> int:
    return sum(values)


class _EmulatedLambda:
    """What the invoker sees of Lambda: ``invoke`` queues the event and answers 202; a thread runs the handler."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:  # noqa: N803
        assert InvocationType == "Event" and len(Payload) <= EVENT_LIMIT_BYTES
        event = json.loads(Payload)
        self.events.append(event)
        thread = threading.Thread(target=handler, args=(event, None), daemon=True)
        self.threads.append(thread)
        thread.start()
        return {"StatusCode": 202}


@pytest.fixture
def emulated_lambda(monkeypatch: pytest.MonkeyPatch) -> _EmulatedLambda:
    fake = _EmulatedLambda()
    monkeypatch.setenv("FANFLOW_SECRET", SECRET)
    monkeypatch.setattr(aws_lambda, "_invokers", InvokerCache())
    monkeypatch.setattr(aws_lambda.boto3, "client", lambda *a, **kw: fake)
    return fake


@pytest.fixture
def stubbed() -> tuple[Any, Stubber]:
    client = boto3.client("lambda", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    return client, Stubber(client)


def _payload(redis_url: str, dag: bytes | None = None) -> bytes:
    inv = Invocation(
        run_id="run-l",
        start=(0,),
        memory_mb=1769,
        store_url=redis_url,
        platform="lambda",
        platform_options={"function": "fn"},
        settings=SETTINGS,
        dag=dag,
        invoked_at=time.time(),
    )
    return sign(inv, SECRET.encode())


def test_whole_runs_go_through_the_handler(emulated_lambda: _EmulatedLambda, redis_url: str) -> None:
    config = fanflow.Config(
        platform="lambda", store=redis_url, endpoints="fanflow-worker", secret=SECRET, progress=False, metadata="none"
    )
    assert total([inc(i) for i in range(30)]).compute(config) == sum(range(1, 31))
    assert len(emulated_lambda.events) >= 30  # 30 roots, plus fan-ins' workers when any
    assert all(set(e) == {"payload"} for e in emulated_lambda.events)


def test_handler_refuses_a_forged_payload_without_raising(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("FANFLOW_SECRET", "another-secret")
    reply = handler(json.loads(event_for(_payload(redis_url))), None)
    assert "signature" in reply["refused"]


def test_handler_reports_missing_requirements() -> None:
    reply = handler({"requirements": ["cloudpickle", "no-such-package-fanflow-test"]}, None)
    assert reply == {"missing": ["no-such-package-fanflow-test (not installed)"]}


def test_invoker_sends_one_async_event_per_payload(stubbed: tuple[Any, Stubber], redis_url: str) -> None:
    client, stub = stubbed
    payloads = [_payload(redis_url) for _ in range(3)]
    for p in payloads:
        expected = {"FunctionName": "fn", "InvocationType": "Event", "Payload": event_for(p)}
        stub.add_response("invoke", {"StatusCode": 202}, expected)
    with stub:
        platform = LambdaPlatform("fn", secret=SECRET.encode(), client=client, max_in_flight=1)
        platform.invoke(payloads)
        platform.close()
    stub.assert_no_pending_responses()


def test_large_dags_go_by_reference_never_inline(stubbed: tuple[Any, Stubber], redis_url: str) -> None:
    client, stub = stubbed
    dag = os.urandom(300 * 1024)  # stands in for an encoded DAG above the event limit
    payload = _payload(redis_url, dag)
    assert len(event_for(payload)) > EVENT_LIMIT_BYTES
    stub.add_response("invoke", {"StatusCode": 202}, {"FunctionName": "fn", "InvocationType": "Event", "Payload": ANY})
    platform = LambdaPlatform("fn", secret=SECRET.encode(), client=client)
    event = platform.event(payload)
    assert len(event) <= EVENT_LIMIT_BYTES
    sent = verify(base64.b64decode(json.loads(event)["payload"]), SECRET.encode())
    assert sent.dag is None and sent.start == (0,) and sent.run_id == "run-l"
    stored = redis.Redis.from_url(redis_url).get(keys.dag("run-l"))
    assert stored is not None and dag in stored
    with stub:
        platform.invoke([payload])
    platform.close()
    stub.assert_no_pending_responses()


def test_a_large_payload_without_the_secret_is_refused(redis_url: str) -> None:
    platform = LambdaPlatform("fn", secret=None, client=object())
    with pytest.raises(fanflow.PlatformError, match="FANFLOW_SECRET"):
        platform.event(_payload(redis_url, os.urandom(300 * 1024)))


def test_lambda_errors_say_what_to_check(stubbed: tuple[Any, Stubber], redis_url: str) -> None:
    client, stub = stubbed
    stub.add_client_error("invoke", service_error_code="ResourceNotFoundException", http_status_code=404)
    with stub:
        platform = LambdaPlatform("fn", secret=SECRET.encode(), client=client)
        with pytest.raises(fanflow.PlatformError, match="lambda:InvokeFunction"):
            platform.invoke([_payload(redis_url)])
        platform.close()


def test_requirements_are_asked_of_the_function(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    body = json.dumps({"missing": ["scipy (not installed)"]}).encode()
    question = json.dumps({"requirements": ["scipy"]}).encode()
    stub.add_response(
        "invoke",
        {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(body), len(body))},
        {
            "FunctionName": "fn",
            "InvocationType": "RequestResponse",
            "Payload": question,
        },
    )
    with stub:
        assert LambdaPlatform("fn", secret=None, client=client).missing_requirements(["scipy"]) == [
            "scipy (not installed)"
        ]


def test_client_needs_the_function_and_the_secret(redis_url: str) -> None:
    with pytest.raises(fanflow.ConfigError, match="endpoints"):
        inc(1).compute(platform="lambda", store=redis_url, secret=SECRET, progress=False, metadata="none")
    with pytest.raises(fanflow.ConfigError, match="secret"):
        inc(1).compute(platform="lambda", store=redis_url, endpoints="fn", progress=False, metadata="none")


def test_deploy_dry_run_prints_layout_and_iam() -> None:
    result = CliRunner().invoke(app, ["deploy", "lambda", "--dry-run", "--function", "ff", "--region", "eu-west-1"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["package"]["handler"] == "fanflow.worker.entry.lambda_handler"
    assert any(d.startswith("cloudpickle==") for d in plan["package"]["distributions"])
    fan_out = plan["iam"]["function_role_policy"]["Statement"][1]
    assert fan_out["Action"] == "lambda:InvokeFunction" and fan_out["Resource"].endswith(":function:ff")
    assert CliRunner().invoke(app, ["deploy", "lambda"]).exit_code == 1
