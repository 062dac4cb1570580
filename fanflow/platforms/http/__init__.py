"""The ``http`` platform: workers behind HTTP gateways, the way Knative, OpenFaaS and Cloud Run run functions.

A gateway (``fanflow gateway``, :mod:`.gateway`) takes one signed payload per
``POST /invoke`` and answers ``202 Accepted`` at once; the work runs later on
the gateway's warm pool. This module is the invoker: the client posts the roots
and every worker posts its fan-out branches to the same gateway URLs
(``config.endpoints``, shipped to workers in the payload options), so there is
no central scheduler here either: a gateway only queues.

Design choices:

- **async, bounded**: posts go out concurrently on one event loop in a
  background thread (``httpx.AsyncClient``, kept-alive connections), at most
  :data:`MAX_IN_FLIGHT` at a time, so a 1000-way fan-out costs a few round
  trips, not 1000 sequential ones, and never floods a gateway;
- **retries with failover**: a connection error, a timeout, a 5xx or a 429 is
  retried with exponential backoff and jitter, each attempt on the next gateway
  in the list (round robin), so one gateway down costs a retry, not a run.
  Posting twice is safe: a worker re-run notifies idempotently and claims are
  exactly-once. Other 4xx answers (a bad signature, a malformed payload) are
  not retried: they would fail again;
- :meth:`HttpPlatform.invoke` returns once every payload is *accepted*, which a
  gateway answers before any work starts: it never waits for the work, but a
  worker does not end (and a client does not wait) with invocations that no
  gateway took, and a gateway nobody can reach fails the run with a clear error
  instead of hanging it.

Gateways verify payloads with their own ``FANFLOW_SECRET``, so the client must
sign with that secret: ``config.secret`` is required.

**Liveness** (:meth:`HttpPlatform.check_serving`, asked by the waiting client
every 0.5 s). A gateway queues what it accepts in the run's store, and its
pool host holds what it takes in a held list there (see
:mod:`fanflow.platforms.processes.pool`), so the client judges gateways by the
store, not by HTTP: it learns each gateway's pool from ``GET /healthz``, hands
back what dead hosts held (``reap``), and fails the run with
:class:`fanflow.PoolGoneError` once a pool has had no live host for
``POOL_GONE_S`` (8 s) while invocations wait in its queue. A gateway that
comes back in time (started with ``--store``, it serves the queue at once),
or another gateway sharing its ``--pool``, runs them instead; a dead gateway
whose queue is empty costs nothing, as the others take new posts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from fanflow.config import Config, mask_url
from fanflow.errors import ConfigError, PlatformError, PoolGoneError, StoreFullError
from fanflow.platforms.base import InvokerCache
from fanflow.platforms.http.protocol import BATCH_TYPE, frame
from fanflow.platforms.processes import POOL_GONE_S, capacity
from fanflow.platforms.processes.pool import pool_state
from fanflow.store import open_store
from fanflow.store.redis import RedisStore

__all__ = ["HttpPlatform", "client_platform", "parse_endpoints", "worker_platform"]

MAX_IN_FLIGHT = 32
"""Posts in flight at once, per invoker."""

RETRIES = 5
"""Attempts after the first, spread over the gateways."""

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0
REQUEST_TIMEOUT_S = 30.0
HEALTH_TIMEOUT_S = 0.5
"""How long the liveness check waits for a gateway's ``GET /healthz`` while it learns its pool."""

BATCH_MAX_BYTES = 4 * 1024 * 1024
"""Payload bytes per batched request at most (well below the gateway's body limit)."""

_RETRYABLE = frozenset({429, 502, 503, 504})


def parse_endpoints(value: str | Sequence[str] | None) -> list[str]:
    """Gateway base URLs from ``config.endpoints`` (comma-separated) or a list; raises :class:`ConfigError`."""
    if value is None:
        raise ConfigError(
            "platform 'http' posts invocations to gateways: set config.endpoints (or FANFLOW_ENDPOINTS) to "
            "their URLs, comma-separated, e.g. 'http://10.0.0.5:8080,http://10.0.0.6:8080'"
        )
    items = value.split(",") if isinstance(value, str) else list(value)
    urls = [u.strip().rstrip("/") for u in items if u.strip()]
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if not urls or bad:
        raise ConfigError(
            f"config endpoints={value!r}: expected gateway URLs such as 'http://host:8080', comma-separated"
            + (f" ({', '.join(bad)} is not one)" if bad else "")
        )
    return urls


def _batches(payloads: list[bytes], gateways: int) -> list[list[bytes]]:
    """One batch per gateway (contiguous runs), each cut further at :data:`BATCH_MAX_BYTES`."""
    parts = min(len(payloads), gateways)
    out: list[list[bytes]] = []
    for i in range(parts):
        batch: list[bytes] = []
        size = 0
        for p in payloads[i * len(payloads) // parts : (i + 1) * len(payloads) // parts]:
            if batch and size + len(p) > BATCH_MAX_BYTES:
                out.append(batch)
                batch, size = [], 0
            batch.append(p)
            size += len(p)
        out.append(batch)
    return out


def _error_of(response: httpx.Response) -> str:
    """What a gateway's error answer says (its JSON ``error``), else the start of its body."""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(response.json()["error"])[:500]
    return response.text.strip()[:300]


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


class HttpPlatform:
    """Posts signed payloads to gateways, concurrently, with retries and failover."""

    name = "http"
    in_process = False

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        retries: int = RETRIES,
        store: RedisStore | None = None,
    ) -> None:
        if not endpoints:  # checked before the invoker's thread starts: nothing is left running
            raise ConfigError(
                "the http platform got no gateway URL to post invocations to: set config.endpoints (or "
                "FANFLOW_ENDPOINTS) to the gateways' URLs, comma-separated, e.g. 'http://10.0.0.5:8080'"
            )
        self.endpoints = list(endpoints)
        self._store = store
        """The runs' store, where gateways queue: the client's liveness check reads it (None in workers)."""
        self._pools: dict[str, str] = {}
        """Each gateway's pool (queue) name, by base URL, as its ``/healthz`` says."""
        self._gone_since: dict[str, float] = {}
        self.options: dict[str, Any] = {"endpoints": self.endpoints}
        self._retries = retries
        self._max_in_flight = max_in_flight
        self._turn = itertools.count(random.randrange(len(self.endpoints)))
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fanflow-http-invoker", daemon=True)
        self._thread.start()

    # -- invoking -------------------------------------------------------------------
    def invoke(self, invocations: Sequence[Any]) -> None:
        """Post every payload; returns once each is accepted (202). Raises :class:`PlatformError`.

        Several payloads go as batches (one request per gateway, :data:`~.protocol.BATCH_TYPE`),
        spread over the gateways in turn.
        """
        if invocations:
            payloads = [bytes(p) for p in invocations]
            self._call(self._post_all(_batches(payloads, len(self.endpoints))))
            capacity.spend(len(payloads))

    def free_slots(self) -> int | None:
        """Idle worker slots: in a gateway's worker process, its own pool's shared count (no request);
        elsewhere the sum of the ``free`` every gateway reports on ``GET /healthz``, None if none does."""
        local = capacity.free_slots()
        if local is not None:
            return local
        return self._call(self._free())  # type: ignore[no-any-return]

    async def _free(self) -> int | None:
        client, _ = self._session()

        async def one(base: str) -> int | None:
            try:
                response = await client.get(f"{base}/healthz", timeout=5.0)
                return int(response.json()["free"]) if response.status_code == 200 else None
            except (httpx.TransportError, ValueError, KeyError, TypeError):
                return None

        found = [f for f in await asyncio.gather(*(one(b) for b in self.endpoints)) if f is not None]
        return sum(found) if found else None

    def _call(self, coro: Any) -> Any:
        if self._loop.is_closed():
            raise PlatformError("the http platform was closed; start a new run to get a new one")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        if self._client is None or self._slots is None:
            limits = httpx.Limits(max_connections=self._max_in_flight, max_keepalive_connections=self._max_in_flight)
            self._client = httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S)
            self._slots = asyncio.Semaphore(self._max_in_flight)
        return self._client, self._slots

    async def _post_all(self, batches: list[list[bytes]]) -> None:
        results = await asyncio.gather(*(self._post(b) for b in batches), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = errors[0]
            if len(errors) > 1 and isinstance(first, PlatformError):
                raise PlatformError(f"{len(errors)} of {len(batches)} batches were not accepted; first: {first}")
            raise first

    async def _post(self, batch: list[bytes]) -> None:
        client, slots = self._session()
        turn = next(self._turn)
        if len(batch) == 1:
            body, headers = batch[0], {"content-type": "application/octet-stream"}
        else:
            body, headers = frame(batch), {"content-type": BATCH_TYPE}
        last = ""
        async with slots:
            for attempt in range(self._retries + 1):
                base = self.endpoints[(turn + attempt) % len(self.endpoints)]
                try:
                    response = await client.post(f"{base}/invoke", content=body, headers=headers)
                except httpx.TransportError as exc:
                    last = f"{base}: {type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 202:
                        return
                    if response.status_code == 507:  # the gateway's store is full: a retry meets it again
                        raise StoreFullError(f"gateway {base}: {_error_of(response)}")
                    if response.status_code < 500 and response.status_code not in _RETRYABLE:
                        raise PlatformError(
                            f"gateway {base} refused an invocation (HTTP {response.status_code}: "
                            f"{response.text.strip()[:300]}); a 403 means the gateway's FANFLOW_SECRET differs "
                            "from config.secret"
                        )
                    last = f"{base}: HTTP {response.status_code}: {_error_of(response)}"
                if attempt < self._retries:
                    await asyncio.sleep(_backoff(attempt))
        raise PlatformError(
            f"no gateway accepted an invocation after {self._retries + 1} attempts (last: {last}); check that "
            f"`fanflow gateway` runs at {', '.join(self.endpoints)} and answers GET /healthz"
        )

    # -- what the client asks before a run -----------------------------------------------
    def check_health(self) -> None:
        """Raise :class:`PlatformError` unless at least one gateway answers ``GET /healthz``."""
        self._call(self._check_health())

    async def _check_health(self) -> None:
        client, _ = self._session()

        async def one(base: str) -> str | None:
            try:
                response = await client.get(f"{base}/healthz", timeout=5.0)
            except httpx.TransportError as exc:
                return f"{base}: {type(exc).__name__}"
            if response.status_code != 200:
                return f"{base}: HTTP {response.status_code}"
            self._learn_pool(base, response)
            return None

        problems = await asyncio.gather(*(one(b) for b in self.endpoints))
        if any(p is None for p in problems):
            return
        raise PlatformError(
            f"no fanflow gateway is healthy ({'; '.join(p for p in problems if p)}): start one with "
            "`fanflow gateway` (same FANFLOW_SECRET as the client) or fix config.endpoints"
        )

    def _learn_pool(self, base: str, health: httpx.Response) -> None:
        """Note the pool a gateway's ``/healthz`` names, for the liveness check."""
        with contextlib.suppress(ValueError, KeyError, TypeError):  # not a gateway's answer: asked again later
            self._pools[base] = str(health.json()["pool"])

    def check_serving(self) -> None:
        """Liveness: raise :class:`PoolGoneError` when a gateway's pool has had no live host for
        ``POOL_GONE_S`` while invocations wait in its queue (see the module doc)."""
        if self._store is None:
            return
        if len(self._pools) < len(self.endpoints):
            self._call(self._learn_pools())
        now = time.monotonic()
        for pool in sorted(set(self._pools.values())):
            alive, queued = pool_state(self._store, pool)
            if alive:
                self._gone_since.pop(pool, None)
                continue
            since = self._gone_since.setdefault(pool, now)
            if queued and now - since >= POOL_GONE_S:
                gateways = ", ".join(base for base, p in self._pools.items() if p == pool)
                raise PoolGoneError(
                    f"the gateway at {gateways} (queue {pool!r}) has been gone for {now - since:.0f} s with "
                    f"{queued} invocations queued in {mask_url(self._store.url)}: start it again (with --store, "
                    "so that it serves its queue at once) or give gateways a shared --pool so that another "
                    "takes them over, then re-run"
                )

    async def _learn_pools(self) -> None:
        client, _ = self._session()

        async def one(base: str) -> None:
            with contextlib.suppress(httpx.TransportError):  # not up (yet): asked again at the next check
                self._learn_pool(base, await client.get(f"{base}/healthz", timeout=HEALTH_TIMEOUT_S))

        await asyncio.gather(*(one(b) for b in self.endpoints if b not in self._pools))

    def missing_requirements(self, specs: Sequence[str]) -> list[str]:
        """Ask a gateway which of ``specs`` its workers lack (they run in the gateway's environment)."""
        return self._call(self._missing(list(specs)))  # type: ignore[no-any-return]

    async def _missing(self, specs: list[str]) -> list[str]:
        client, _ = self._session()
        last = ""
        for base in self.endpoints:
            try:
                response = await client.post(f"{base}/requirements", json=specs)
            except httpx.TransportError as exc:
                last = f"{base}: {type(exc).__name__}"
                continue
            if response.status_code == 200:
                return list(response.json()["missing"])
            last = f"{base}: HTTP {response.status_code}: {response.text.strip()[:200]}"
        raise PlatformError(f"no gateway could check the workflow's requirements (last: {last})")

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connections and stop the event loop."""
        if self._loop.is_closed():
            return
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=10)
            self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def client_platform(config: Config) -> HttpPlatform:
    """The platform of a client: checks the secret and that a gateway is up before the run starts."""
    if config.secret is None:
        raise ConfigError(
            "platform 'http': the gateways verify payloads with their FANFLOW_SECRET, so set config.secret "
            "(or FANFLOW_SECRET) to the same secret here"
        )
    store = open_store(config.store)
    platform = HttpPlatform(parse_endpoints(config.endpoints), store=store if isinstance(store, RedisStore) else None)
    try:
        platform.check_health()
    except PlatformError:
        platform.close()
        raise
    return platform


_invokers: InvokerCache[HttpPlatform] = InvokerCache()


def worker_platform(options: dict[str, Any]) -> HttpPlatform:
    """The invoker a worker uses for fan-out: the gateways its own invocation names, one per process."""
    endpoints = tuple(options["endpoints"])
    return _invokers.get(endpoints, lambda: HttpPlatform(endpoints))
