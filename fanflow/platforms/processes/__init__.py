"""The ``processes`` platform: a FaaS emulator on one machine.

Invoking a worker is one ``RPUSH`` of its signed payload to the Redis queue of a
pool (see :mod:`.pool`); a pool host runs it on a warm worker process, or
cold-starts one. The same invoker serves the client (starting the roots) and
the workers (starting fan-out branches), so every invocation goes the same way.

By default each client starts its own pool host in background threads, shared
by all its runs in flight and closed when the last one ends (``keep_warm =
False``); its workers check payloads with the client's secret. With
``config.pool = "NAME"`` the client starts nothing and queues to the long-lived
pool of ``fanflow worker-pool --name NAME``, which must share its secret.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from fanflow.config import Config, mask_url, signing_secret
from fanflow.errors import ConfigError, PlatformError, PoolGoneError
from fanflow.platforms.base import InvokerCache
from fanflow.platforms.invocation import peek
from fanflow.platforms.processes import capacity
from fanflow.platforms.processes.pool import PoolHost, alive_key, pack_entries, pool_state, push, queue_key
from fanflow.store import open_store
from fanflow.store.redis import RedisStore, trying_once

__all__ = ["PoolHost", "ProcessesPlatform", "client_platform", "worker_platform"]

POOL_GONE_S = 8.0
"""How long a shared pool may show no live host before its clients' runs fail: enough for a
supervisor to start it again (its ``alive`` key lives 3 s after a host was killed)."""


def _redis_store(url: str) -> RedisStore:
    store = open_store(url)
    if not isinstance(store, RedisStore):
        raise ConfigError(
            f"platform 'processes' queues invocations in Redis: pass store='redis://host:port/db', not {url!r}"
        )
    return store


class ProcessesPlatform:
    """Queues invocations for a pool; owns the pool's host when the client started it."""

    name = "processes"
    in_process = False
    keep_warm = False

    def __init__(self, store_url: str, pool: str, host: PoolHost | None = None) -> None:
        self.options: dict[str, Any] = {"store": store_url, "pool": pool}
        self.pool = pool
        self.host = host
        self._store = _redis_store(store_url)
        self._gone_since: float | None = None

    def invoke(self, invocations: Sequence[Any]) -> None:
        """Queue signed payloads, routed by the memory class each one carries; one round trip."""
        if not invocations:
            return
        payloads = [bytes(p) for p in invocations]
        push(self._store, self.pool, pack_entries([peek(p).memory_mb for p in payloads], payloads))
        if self.host is None:
            capacity.spend(len(payloads))

    def free_slots(self) -> int | None:
        """Idle worker slots of the pool: the host's count in the client that runs it (a worker still
        busy with a run that has ended counts as idle: it is sending that run's last events), the
        count it shares with its worker processes in theirs (:mod:`.capacity`).

        A client of a shared pool cannot see its count: it gets 1, so its run's roots start in
        one worker, whose process reads the count and hands shares of them to the idle slots
        (:meth:`fanflow.worker.Worker._shed`). One invocation per root instead cost each task a
        pool dispatch, a begin and an events write of its own: 400 sleeps of 10 ms on 2
        workers ran at 81% parallel efficiency that way, 88% grouped."""
        if self.host is not None:
            return self.host.free_slots(ending=True)
        shared = capacity.free_slots()
        return 1 if shared is None else shared

    def worker_cap(self) -> int | None:
        """The pool's ``max_workers`` when this client runs it; None for a shared pool (its hosts say, not here)."""
        return None if self.host is None else self.host.max_workers

    def warm_memory(self) -> list[int] | None:
        """Memory sizes of the worker processes of the pool this client runs, least recently used first
        (:meth:`PoolHost.process_memory`); None for a shared pool (it does not say)."""
        return None if self.host is None else self.host.process_memory()

    def prewarm(self, memory_mb: int) -> bool:
        """Start an idle worker of ``memory_mb`` ahead of need; False for a shared pool (not ours to steer)."""
        if self.host is None:
            return False
        self.host.prewarm(memory_mb)
        return True

    def check_serving(self) -> None:
        """Liveness: raise :class:`PlatformError` when the pool no longer runs invocations
        (:class:`PoolGoneError` for a shared pool).

        The client's own pool: its host stopped or its dispatcher broke. A shared
        pool: no host of it has been alive (its ``alive`` key) for ``POOL_GONE_S``.
        A shared pool's dead hosts are reaped here too, so what a SIGKILLed host
        held goes back to the queue for the pool's other hosts (or the next one
        started) even when none of them is left to reap it.
        """
        if self.host is not None:
            if not self.host.serving():
                raise PlatformError(f"the worker pool {self.pool!r} this client started has stopped")
            return
        alive, _ = pool_state(self._store, self.pool)
        if alive:
            self._gone_since = None
            return
        now = time.monotonic()
        if self._gone_since is None:
            self._gone_since = now
        if now - self._gone_since >= POOL_GONE_S:
            raise PoolGoneError(
                f"the worker pool {self.pool!r} on {mask_url(self._store.url)} is gone (stopped or killed) with "
                f"invocations in flight; start `fanflow worker-pool --name {self.pool}` again and re-run"
            )

    def close(self) -> None:
        """Stop the pool host this client started (a shared pool keeps running)."""
        if self.host is not None:
            self.host.close()
            self.host = None
            with trying_once():  # it expires anyway: a store that is gone must not hold up the client's exit
                self._store.delete([queue_key(self.pool)])  # invocations of failed runs nobody will take


def client_platform(config: Config) -> ProcessesPlatform:
    """The platform of a client: its own pool host, or the shared pool ``config.pool``."""
    store = _redis_store(config.store)
    if config.pool:
        if config.secret is None:
            raise ConfigError(
                f"config.pool={config.pool!r} runs workers with the pool's secret: set config.secret "
                "(or FANFLOW_SECRET) to the secret the pool was started with"
            )
        if not store.client.exists(alive_key(config.pool)):
            raise PlatformError(
                f"no worker pool named {config.pool!r} is running on {mask_url(store.url)}: "
                f"start one with `fanflow worker-pool --name {config.pool} --store <url>`"
            )
        return ProcessesPlatform(config.store, config.pool)

    pool = f"client-{uuid.uuid4().hex[:12]}"
    secret = signing_secret(config)
    host = PoolHost(
        store,
        pool,
        secret,
        max_workers=config.max_workers,
        idle_timeout_s=config.idle_timeout_s,
        bind_cpus=config.bind_cpus,
    )
    host.start()
    return ProcessesPlatform(config.store, pool, host)


_invokers: InvokerCache[ProcessesPlatform] = InvokerCache()


def worker_platform(options: dict[str, Any]) -> ProcessesPlatform:
    """The invoker a worker uses for fan-out: the same queue its own invocation came from."""
    store, pool = options["store"], options["pool"]
    return _invokers.get((store, pool), lambda: ProcessesPlatform(store, pool))
