"""The Redis Cluster store: ``store="redis+cluster://host:port"``.

It is the Redis store (:class:`fanflow.store.redis.RedisStore`) on a
cluster-aware client, not a second implementation: the worker loop keeps its
Lua scripts, because fanflow's key layout already fits a cluster, and its
round-trip budget but for one step (a shared output is stored before it is
announced, below). Each fan-in step's keys (a task's output,
dependency set and claim) share one hash tag, ``{<run>:<task>}``, and the
run-level keys share ``{<run>}`` (see :mod:`fanflow.store.keys`), so

- every Lua call touches ONE slot: the claim script (deps + claim of one task),
  the failure script (status + errors of one run), lease renewals and event
  appends (one key each) run on the node that owns that slot;
- a run's keys spread over all the masters, one slot per task (an output read
  by one task only lives in that reader's slot, beside its fan-in keys).

What a cluster changes is how multi-key commands travel, which the client
class below takes care of, so the store's methods run unchanged:

- ``MGET`` of a task's inputs is split by hash slot, and the per-slot ``MGET``
  commands go out as ONE cluster pipeline (one round trip per master, sent to
  every master before any reply is read);
- ``UNLINK`` at cleanup is likewise one pipelined ``UNLINK`` per slot;
- a finish that stores shared outputs and also claims or publishes is two
  round trips, outputs first: one pipeline's commands to different masters
  run in no set order, so a claim (or a sink's message) could otherwise be
  seen before the output it tells of is stored;
- pipelines (outputs + claims + publish, lease renewals) accept ``EVALSHA``
  and ``PUBLISH``, which redis-py refuses in cluster pipelines by default: an
  ``EVALSHA`` with keys is routed by its first key's slot like any keyed
  command, and a ``PUBLISH`` reaches every subscriber whichever master gets it
  (cluster pub/sub is broadcast over the cluster bus);
- scripts are loaded on every master (``SCRIPT LOAD`` to all primaries), on
  connect and again when a node answers ``NOSCRIPT`` (e.g. after a failover).

Only database 0 exists on a cluster, and the URL names one reachable node; the
client discovers the others from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fanflow.config import mask_url
from fanflow.errors import StoreUnavailableError
from fanflow.store.base import Claim
from fanflow.store.redis import (
    CONNECT_TIMEOUT_S,
    SOCKET_TIMEOUT_S,
    PackingConnection,
    RedisStore,
    _translated,
    _unavailable,
    retry_policy,
)

__all__ = ["ClusterClient", "RedisClusterStore", "connect"]

SCHEME = "redis+cluster"


class _SlotPipeline:
    """A cluster pipeline that also takes ``EVALSHA`` and ``PUBLISH`` (routed by key slot / to any master).

    An ``EVALSHA`` goes to the master of its first key's slot, named here: left to
    redis-py, a pipelined script's keys are asked of the cluster's default node
    (``COMMAND GETKEYS``, a round trip per script call), which made every claim
    two round trips and put a third of all commands on that one master.
    """

    def __init__(self, pipe: Any, client: RedisCluster) -> None:
        self._pipe = pipe
        self._client = client

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> _SlotPipeline:
        node = self._client.get_node_from_key(keys_and_args[0])
        self._pipe.execute_command("EVALSHA", sha, numkeys, *keys_and_args, target_nodes=node)
        return self

    def publish(self, channel: str, message: Any) -> _SlotPipeline:
        self._pipe.execute_command("PUBLISH", channel, message)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


class ClusterClient(RedisCluster):
    """``RedisCluster`` speaking the subset of ``redis.Redis`` the Redis store uses, across slots.

    It remembers the scripts registered on it, so the store can load all of them
    on every master.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scripts: list[Script] = []

    def register_script(self, script: Any) -> Script:
        registered = super().register_script(script)
        self.scripts.append(registered)
        return registered

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        return _SlotPipeline(super().pipeline(transaction=transaction, shard_hint=shard_hint), self)

    def mget(self, keys: Any, *args: Any) -> list[Any]:  # type: ignore[override]
        """One ``MGET`` per hash slot, all in one pipeline; values in the order of ``keys``."""
        return self.mget_nonatomic(keys, *args)


class RedisClusterStore(RedisStore):
    """A :class:`fanflow.store.Store` on a Redis Cluster (``redis+cluster://host:port``)."""

    client: ClusterClient
    batches_claims = False  # a script touches one slot; each claim's keys have a slot of their own

    def finish(
        self,
        puts: Mapping[str, Any],
        claims: Sequence[Claim],
        owner: str,
        ttl_s: int,
        lease_ms: int,
        publish: Sequence[tuple[str, bytes]] = (),
    ) -> list[bool]:
        """Outputs first, then the claims and messages that tell of them: two round trips when there are both.

        One pipeline's commands to different masters run in no set order: a claim
        or a sink's message on one master could be seen, and the output read from
        another, before that master stored it (a run's sink output was then read
        as missing). What a claim stores itself is in the claim's own slot.
        """
        if puts and (claims or publish):
            super().finish(puts, (), owner, ttl_s, lease_ms)
            return super().finish({}, claims, owner, ttl_s, lease_ms, publish)
        return super().finish(puts, claims, owner, ttl_s, lease_ms, publish)

    @_translated
    def load_scripts(self) -> None:
        """Load every registered script on every master (``SCRIPT LOAD`` goes to all primaries)."""
        for script in self.client.scripts:
            self.client.script_load(script.script)


def connect(url: str, retry_s: float = 10.0, secret: bytes | None = None) -> RedisClusterStore:
    """Open the cluster one of whose nodes is at ``url`` and check that it answers.

    Lost connections are retried for about ``retry_s`` seconds, as on one server
    (see :func:`fanflow.store.redis.retry_policy`).

    Raises :class:`StoreUnavailableError` when no node answers or the URL is malformed.
    """
    parts = urlsplit(url)
    if parts.scheme != SCHEME or not parts.hostname:
        raise StoreUnavailableError(f"bad Redis Cluster store URL {mask_url(url)}: use redis+cluster://host:port")
    if parts.path not in ("", "/", "/0"):
        raise StoreUnavailableError(
            f"bad Redis Cluster store URL {mask_url(url)}: a cluster has only database 0; drop {parts.path!r}"
        )
    node_url = parts._replace(scheme="redis", path="").geturl()
    try:
        client = ClusterClient.from_url(
            node_url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            retry=retry_policy(retry_s),
            connection_class=PackingConnection,
        )
    except (RedisClusterException, RedisConnectionError, RedisTimeoutError) as exc:
        raise _unavailable(url, exc) from exc
    except RedisError as exc:  # e.g. wrong password: a node answered, with an error
        raise StoreUnavailableError(
            f"the Redis Cluster at {mask_url(url)} refused the connection ({exc}); check the user and password"
        ) from exc
    store = RedisClusterStore(url, client, secret)
    store.load_scripts()
    return store
