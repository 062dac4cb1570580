"""The ``lambda`` platform: workers as AWS Lambda invocations.

Two halves, one module, so the function's package and the invoker agree on
one event format:

- the event format (:func:`event_for`, :func:`payload_of`):
  ``{"payload": "<base64 of the signed payload>"}``. The function's handler is
  the worker layer's entry point ``fanflow.worker.entry.lambda_handler``, which
  verifies the signature with the function's ``FANFLOW_SECRET`` before
  anything is unpickled, and answers a bad signature rather than raising:
  Lambda would retry a raised error, and a forged payload fails the same way
  every time.
- :class:`LambdaPlatform` invokes the function with boto3 ``invoke(InvocationType="Event")``,
  Lambda's asynchronous invocation: Lambda queues the event and answers 202
  before the function runs. The client invokes the roots and every worker
  invokes its fan-out branches the same way (workers need
  ``lambda:InvokeFunction`` on their own function).

**The payload limit.** Lambda refuses asynchronous events above 256 KB, and
base64 grows a payload by a third. A payload is sent inline when its event
fits; otherwise its DAG goes *by reference*: the invoker stores the encoded
DAG once per run under the run's ``dag`` key (where workers already look for a
DAG that was not shipped inline, and which the client deletes with the run),
and re-signs the payload without it. Re-signing needs the secret: the client's
``config.secret`` or, in a worker, its ``FANFLOW_SECRET``. A payload too large
even without its DAG is refused with :class:`fanflow.PlatformError`; nothing
is ever sent inline above the limit.

``invoke`` sends the events concurrently (bounded thread pool; boto3 clients are
thread-safe) and returns once Lambda accepted each one: a worker must not end
with invocations unsent, because Lambda freezes its container when the handler
returns. Throttling and 5xx answers are retried by botocore (``standard`` mode).

Lambda itself retries an asynchronous invocation whose function failed (twice
by default): a worker that crashed or timed out is redelivered with the same
payload, which fanflow's re-entrant claims make safe.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from fanflow.config import Config
from fanflow.errors import ConfigError, PlatformError
from fanflow.platforms.base import InvokerCache
from fanflow.platforms.invocation import sign, verify
from fanflow.store import keys, open_store

__all__ = ["EVENT_LIMIT_BYTES", "LambdaPlatform", "client_platform", "event_for", "payload_of", "worker_platform"]

log = logging.getLogger(__name__)

EVENT_LIMIT_BYTES = 256 * 1024
"""Largest asynchronous invocation event Lambda accepts."""

MAX_IN_FLIGHT = 16
"""Invoke calls in flight at once, per invoker."""

_STORED_RUNS = 64
"""Runs whose DAG this process remembers having stored (so it stores each once)."""


# -- the event ------------------------------------------------------------------------------
def event_for(payload: bytes) -> bytes:
    """The JSON event that carries ``payload`` to the function."""
    return json.dumps({"payload": base64.b64encode(payload).decode("ascii")}).encode()


def payload_of(event: dict[str, Any]) -> bytes:
    """The signed payload an event from :func:`event_for` carries."""
    return base64.b64decode(event["payload"])


# -- the invoker ----------------------------------------------------------------------------
class LambdaPlatform:
    """Invokes a Lambda function asynchronously, one event per signed payload."""

    name = "lambda"
    in_process = False

    def __init__(
        self,
        function: str,
        *,
        secret: bytes | None,
        region: str | None = None,
        client: Any = None,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.function = function
        self.options: dict[str, Any] = {"function": function, "region": region}
        self._secret = secret
        if client is None:
            retries = BotoConfig(retries={"mode": "standard", "max_attempts": 6}, max_pool_connections=max_in_flight)
            try:
                client = boto3.client("lambda", region_name=region, config=retries)
            except NoRegionError as exc:
                raise ConfigError(
                    "platform 'lambda' needs an AWS region: give the function's ARN in config.endpoints, "
                    "or set AWS_REGION"
                ) from exc
        self.client = client
        self._threads = ThreadPoolExecutor(max_in_flight, thread_name_prefix="fanflow-lambda")
        self._stored: OrderedDict[str, None] = OrderedDict()
        self._stored_lock = threading.Lock()

    def free_slots(self) -> int | None:
        """No count: every fan-out branch gets its own worker."""
        return None

    def invoke(self, invocations: Sequence[Any]) -> None:
        """Send one event per payload; returns once Lambda accepted all. Raises :class:`PlatformError`."""
        events = [self.event(bytes(p)) for p in invocations]
        futures = [self._threads.submit(self._send, e) for e in events]
        errors = [exc for exc in (f.exception() for f in futures) if exc is not None]
        if errors:
            if len(errors) > 1:
                raise PlatformError(f"{len(errors)} of {len(events)} Lambda invocations failed; first: {errors[0]}")
            raise errors[0]

    def event(self, payload: bytes) -> bytes:
        """The event for ``payload``, with its DAG sent by reference when inline would exceed the limit."""
        event = event_for(payload)
        if len(event) <= EVENT_LIMIT_BYTES:
            return event
        event = event_for(self._by_reference(payload))
        if len(event) > EVENT_LIMIT_BYTES:
            raise PlatformError(
                f"a Lambda invocation is {len(event)} bytes even without its DAG, above Lambda's "
                f"{EVENT_LIMIT_BYTES}-byte event limit; this is a fanflow bug, please report it"
            )
        return event

    def _by_reference(self, payload: bytes) -> bytes:
        if self._secret is None:
            raise PlatformError(
                "a payload exceeds Lambda's event limit and must ship its DAG by reference, which needs the "
                "secret to re-sign it: set FANFLOW_SECRET in the function's environment"
            )
        inv = verify(payload, self._secret)
        if isinstance(inv.dag, bytes):
            self._store_dag(inv.run_id, inv.store_url, inv.dag, inv.settings.key_ttl_s)
            inv.dag = None
        return sign(inv, self._secret)

    def _store_dag(self, run_id: str, store_url: str, dag: bytes, ttl_s: int) -> None:
        """Store the run's encoded DAG under its ``dag`` key, once per run per process."""
        with self._stored_lock:
            if run_id in self._stored:
                return
        store = open_store(store_url, secret=self._secret)  # sealed, as workers verify what they read
        store.put_many({keys.dag(run_id): store.dumps(dag)[0]}, ttl_s)
        with self._stored_lock:
            self._stored[run_id] = None
            while len(self._stored) > _STORED_RUNS:
                self._stored.popitem(last=False)

    def _send(self, event: bytes) -> None:
        try:
            reply = self.client.invoke(FunctionName=self.function, InvocationType="Event", Payload=event)
        except (ClientError, BotoCoreError) as exc:
            raise PlatformError(
                f"Lambda refused to invoke {self.function!r} ({exc}); check the function name, the region and "
                "that the caller may lambda:InvokeFunction (see `fanflow deploy lambda --dry-run`)"
            ) from exc
        if reply.get("StatusCode") != 202:
            raise PlatformError(
                f"Lambda answered {reply.get('StatusCode')} to an asynchronous invoke of {self.function!r}"
            )

    def missing_requirements(self, specs: Sequence[str]) -> list[str]:
        """Ask the function (a synchronous invoke) which of ``specs`` its environment lacks."""
        try:
            reply = self.client.invoke(
                FunctionName=self.function,
                InvocationType="RequestResponse",
                Payload=json.dumps({"requirements": list(specs)}).encode(),
            )
        except (ClientError, BotoCoreError) as exc:
            raise PlatformError(f"could not ask Lambda function {self.function!r} for its packages ({exc})") from exc
        answer = json.loads(reply["Payload"].read())
        if "FunctionError" in reply or "missing" not in answer:
            raise PlatformError(f"Lambda function {self.function!r} could not check requirements: {answer}")
        return list(answer["missing"])

    def close(self) -> None:
        """Stop the sending threads."""
        self._threads.shutdown(wait=True)


def _region_of(function: str) -> str | None:
    """The region in a function ARN (``arn:aws:lambda:<region>:<account>:function:<name>``), else None."""
    parts = function.split(":")
    return parts[3] if len(parts) >= 7 and parts[0] == "arn" else None


def client_platform(config: Config) -> LambdaPlatform:
    """The platform of a client: ``config.endpoints`` names the function (name or ARN)."""
    if not config.endpoints:
        raise ConfigError(
            "platform 'lambda' needs the function to invoke: set config.endpoints (or FANFLOW_ENDPOINTS) to its "
            "name or ARN (see `fanflow deploy lambda --dry-run`)"
        )
    if config.secret is None:
        raise ConfigError(
            "platform 'lambda': the function verifies payloads with its FANFLOW_SECRET, so set config.secret "
            "(or FANFLOW_SECRET) to the same secret here"
        )
    function = config.endpoints.strip()
    return LambdaPlatform(function, secret=config.secret.encode(), region=_region_of(function))


_invokers: InvokerCache[LambdaPlatform] = InvokerCache()


def worker_platform(options: dict[str, Any]) -> LambdaPlatform:
    """The invoker a worker uses for fan-out: its own function, re-signing with its ``FANFLOW_SECRET``."""
    function, region = options["function"], options.get("region")

    def make() -> LambdaPlatform:
        secret = os.environ.get("FANFLOW_SECRET")
        return LambdaPlatform(function, secret=secret.encode() if secret else None, region=region)

    return _invokers.get((function, region), make)
