"""The gateway: fanflow's worker served over HTTP, with the invocation contract of HTTP FaaS platforms.

Knative Serving, OpenFaaS and Cloud Run all expect the same of a container:
listen on ``$PORT`` (default 8080) on every interface, answer each request
quickly, answer health checks, and stop cleanly on SIGTERM. The gateway does:

- ``POST /invoke``: the body is ONE signed invocation payload. The gateway
  checks its signature (403 if it does not match: nothing unverified is queued,
  let alone unpickled), queues it and answers ``202 Accepted`` at once, so the
  caller never waits for the work (the asynchronous-invocation contract). A
  store it cannot reach answers 503, a full one 507, with the store's error; a
  payload that names no gateway for its fan-outs, 400 (its worker could not post them).
- ``GET /healthz``: 200 while serving, 503 once draining, so a load balancer
  stops sending work to a gateway that is shutting down.
- ``POST /requirements``: a JSON list of requirement strings; answers which
  ones the workers here lack (the workers run in the gateway's environment),
  checked by the leaf module :mod:`fanflow.requirements`, as a Lambda function does.

Behind the HTTP front sits the processes platform's pool host, reused as it is
(:class:`fanflow.platforms.processes.PoolHost`): warm worker processes per
memory class, cold starts, cgroup CPU/memory limits, crash reporting and
redelivery of invocations whose worker died. The gateway feeds the pool the
way every pool is fed, by pushing the entry onto the pool's Redis queue in the
run's own store, and only then answers 202. So *accepted* means *durably
queued*: an invocation accepted by a gateway that is then stopped is not lost
(the pool returns unrun entries to the queue at shutdown), and gateways that
share a queue (``--pool NAME``) share the work, any replica running what any
replica accepted. Without ``--pool`` each gateway has its own queue, named after
its host and port so that a restarted gateway finds what it left.

One pool host runs per store URL seen in payloads (normally one): the payload
is signed, so the store it names is trusted. A gateway given stores at start
(``--store``, or ``store`` in its config) serves their queues at once, so one
started again after a crash (same host and port, or the same ``--pool``) runs
what it and its dead predecessor held before any new post arrives.

Each pool host holds what it took in its held list in the store and beats
there (see :mod:`fanflow.platforms.processes.pool`): when a gateway dies, a
live host of the same pool (another gateway with the same ``--pool``, or the
gateway started again) hands its invocations back to the queue and runs them,
and the runs' clients, which watch the pool's ``alive`` key, fail their runs
with :class:`fanflow.PoolGoneError` if nobody does within seconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fanflow.config import mask_url
from fanflow.errors import FanflowError, PayloadRejectedError, StoreFullError, StoreUnavailableError
from fanflow.platforms.http.protocol import BATCH_TYPE, unframe
from fanflow.platforms.invocation import verify
from fanflow.platforms.processes.pool import PoolHost, pack_entries, push
from fanflow.requirements import missing_of_specs
from fanflow.store import open_store
from fanflow.store.redis import RedisStore

__all__ = ["Gateway", "default_pool_name"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest payload accepted (the DAG travels inline only below ``inline_dag_max_bytes``)."""


def default_pool_name(port: int) -> str:
    """The queue of a gateway started without ``--pool``: stable across restarts of the same host and port."""
    return f"gateway-{socket.gethostname()}-{port}"


class Gateway:
    """An HTTP server that queues signed invocations for its own warm pool of worker processes."""

    def __init__(
        self,
        secret: bytes,
        *,
        host: str = "0.0.0.0",
        port: int = 8080,
        pool: str | None = None,
        max_workers: int | None = None,
        idle_timeout_s: float = 60.0,
        stores: Sequence[str] = (),
        bind_cpus: bool = True,
    ) -> None:
        self._secret = secret
        self._stores = list(stores)
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.gateway = self  # type: ignore[attr-defined]
        self.port = int(self._server.server_address[1])
        self.pool = pool or default_pool_name(self.port)
        self._max_workers = max_workers
        self._idle_timeout_s = idle_timeout_s
        self._bind_cpus = bind_cpus
        self._hosts: dict[str, tuple[RedisStore, PoolHost]] = {}
        self._lock = threading.Lock()
        self.draining = False
        self.accepted = 0

    # -- requests ----------------------------------------------------------------------
    def accept(self, payload: bytes) -> tuple[int, dict[str, Any]]:
        """Verify and queue one payload; the HTTP status and JSON body to answer."""
        return self.accept_batch([payload])

    def accept_batch(self, payloads: list[bytes]) -> tuple[int, dict[str, Any]]:
        """Verify every payload, then queue them all (one push per store); nothing is queued unless all verify.

        The answer carries ``free``, the pool's idle slots, so invokers learn the
        platform's capacity with no request of their own.
        """
        try:
            invs = [verify(p, self._secret) for p in payloads]
        except PayloadRejectedError as exc:
            return HTTPStatus.FORBIDDEN, {"error": str(exc)}
        # Its worker would post its fan-outs to these: without any, it could only crash.
        bare = sorted({i.run_id for i in invs if i.platform == "http" and not i.platform_options.get("endpoints")})
        if bare:
            return HTTPStatus.BAD_REQUEST, {
                "error": f"the invocations of run {', '.join(bare)} name no gateway URL for their fan-outs, so "
                "nothing was queued: their client must set config.endpoints (or FANFLOW_ENDPOINTS)"
            }
        if self.draining:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "this gateway is shutting down; try another"}
        by_store: dict[str, list[int]] = {}
        for i, inv in enumerate(invs):
            by_store.setdefault(inv.store_url, []).append(i)
        try:
            for url, members in by_store.items():
                store, _ = self._pool_for(url)
                entries = pack_entries([invs[i].memory_mb for i in members], [payloads[i] for i in members])
                push(store, self.pool, entries)
        except StoreUnavailableError as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)}
        except StoreFullError as exc:  # not this gateway's fault, and no other gateway's store has room either
            return HTTPStatus.INSUFFICIENT_STORAGE, {"error": str(exc)}
        except FanflowError as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        self.accepted += len(payloads)
        return HTTPStatus.ACCEPTED, {"accepted": len(payloads), "run_id": invs[0].run_id, "free": self.free_slots()}

    def free_slots(self) -> int:
        """Idle worker slots of this gateway's pools (all of ``max_workers`` before the first invocation)."""
        hosts = [host for _, host in self._hosts.values()]
        if not hosts:
            return self._max_workers or os.cpu_count() or 1
        return sum(host.free_slots() for host in hosts)

    def health(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {
            "status": "draining" if self.draining else "ok",
            "pool": self.pool,
            "accepted": self.accepted,
            "free": self.free_slots(),
            # Anyone who reaches the port sees this: store URLs without their passwords.
            "workers": {mask_url(url): host.stats for url, (_, host) in self._hosts.items()},
        }
        return (HTTPStatus.SERVICE_UNAVAILABLE if self.draining else HTTPStatus.OK), body

    def missing(self, specs: Any) -> tuple[int, dict[str, Any]]:
        """Which of ``specs`` (requirement strings) the workers here lack."""
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            return HTTPStatus.BAD_REQUEST, {"error": "expected a JSON list of requirement strings"}
        try:
            return HTTPStatus.OK, {"missing": missing_of_specs(specs)}
        except FanflowError as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}

    def _pool_for(self, store_url: str) -> tuple[RedisStore, PoolHost]:
        found = self._hosts.get(store_url)
        if found is not None:
            return found
        with self._lock:
            found = self._hosts.get(store_url)
            if found is None:
                store = open_store(store_url)
                if not isinstance(store, RedisStore):
                    raise FanflowError(
                        "a gateway queues invocations in the run's store, which must be Redis "
                        "(store='redis://...' or 'redis+cluster://...')"
                    )
                host = PoolHost(
                    store,
                    self.pool,
                    self._secret,
                    max_workers=self._max_workers,
                    idle_timeout_s=self._idle_timeout_s,
                    advertise=True,  # the runs' clients watch the pool (HttpPlatform.check_serving)
                    bind_cpus=self._bind_cpus,
                )
                host.start()
                found = self._hosts[store_url] = (store, host)
        return found

    # -- lifetime -----------------------------------------------------------------------
    def serve(self) -> None:
        """Serve until :meth:`stop`; then stop the pools, waiting for running workers."""
        try:
            self.open_stores()
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()
            for _, host in list(self._hosts.values()):
                host.close()

    def open_stores(self) -> None:
        """Serve the queues of the stores given at start now (once); raises :class:`FanflowError`."""
        for url in self._stores:
            self._pool_for(url)

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, benchmarks)."""
        thread = threading.Thread(target=self.serve, name=f"fanflow-gateway-{self.port}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Drain: refuse new invocations (health turns 503) and stop serving. Safe from a signal handler."""
        self.draining = True
        threading.Thread(target=self._server.shutdown, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: invokers reuse connections
    # An answer goes out as two writes (headers, then body): with Nagle's algorithm the body waits
    # for the client's delayed ACK of the headers, 40 ms on Linux, on every request.
    disable_nagle_algorithm = True
    server_version = "fanflow-gateway"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] in ("/healthz", "/"):
            self._answer(*self._gateway.health())
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "unknown path; use POST /invoke or GET /healthz"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/invoke", "/requirements"):
            self._answer(HTTPStatus.NOT_FOUND, {"error": "unknown path; use POST /invoke or GET /healthz"})
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._answer(HTTPStatus.LENGTH_REQUIRED, {"error": "send the payload with a Content-Length"})
            return
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"payloads are limited to {MAX_BODY_BYTES}"})
            return
        body = self.rfile.read(int(length))
        if path == "/invoke":
            if self.headers.get("Content-Type", "").startswith(BATCH_TYPE):
                payloads = unframe(body)
                if payloads is None:
                    self._answer(HTTPStatus.BAD_REQUEST, {"error": f"a {BATCH_TYPE} body is malformed"})
                    return
                self._answer(*self._gateway.accept_batch(payloads))
                return
            self._answer(*self._gateway.accept(body))
            return
        try:
            specs = json.loads(body)
        except ValueError:
            specs = None
        self._answer(*self._gateway.missing(specs))

    @property
    def _gateway(self) -> Gateway:
        return self.server.gateway  # type: ignore[attr-defined,no-any-return]

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
