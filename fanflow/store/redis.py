"""The Redis store: run state shared by worker processes, with one round trip per step.

Design points, in the order a task meets them:

- **Values** are framed pickle-5 and, with a secret, sealed to their key by a
  MAC that is checked before anything is unpickled (:mod:`fanflow.store.codec`).
  Large buffers (numpy arrays) travel out of band and come back as views into
  the bytes Redis returned, without a copy.
- **Inputs** are one ``MGET``; **output + notify + publish** is one pipeline:
  ``SET ... EX`` per output, one ``EVALSHA`` of the claim script per dependent,
  and ``PUBLISH``. The claim script (``SADD`` the upstream, then ``SET claim NX
  PX lease`` once the set is complete) makes fan-in exactly-once: a re-run
  upstream re-adds itself (no change) and the claim is ``NX``. Each script call
  touches the keys of one task only (one hash tag), so it works on Redis Cluster.
- Scripts are loaded once per connection with ``SCRIPT LOAD`` and called with
  ``EVALSHA``; a pipeline that meets ``NOSCRIPT`` (server restarted or flushed)
  reloads them and runs again, which is safe because every step is idempotent
  (the ``NX`` claims never ran when their script was missing).
- **Events** of a worker's flush are packed into ONE stream entry, so a worker
  costs one command for its metrics, not one per event: its rows in field ``r``
  (:func:`fanflow.store.events.pack_rows`: shapes once, columns, floats as bytes),
  the client's own events as a JSON list of dicts in field ``e``. Reads give dicts.
- Every key written carries a TTL. Clients never send the commands of
  :data:`SCRIPT_ONLY_COMMANDS` directly, so ``INFO commandstats`` can tell the
  commands clients send from those the scripts run inside.

The store is synchronous: the worker loop runs blocking user code anyway, and a
sync client avoids an event loop per worker process.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import redis
from redis._parsers.encoders import Encoder
from redis.backoff import ExponentialWithJitterBackoff
from redis.client import PubSub
from redis.connection import HIREDIS_AVAILABLE, Connection, HiredisRespSerializer, PythonRespSerializer
from redis.exceptions import AuthenticationError, NoScriptError, OutOfMemoryError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from fanflow.config import mask_url
from fanflow.errors import StoreAuthError, StoreError, StoreFullError, StoreUnavailableError
from fanflow.store.base import (
    BEGIN_DUPLICATE,
    BEGIN_RUN,
    BEGIN_STOPPED,
    FAILED,
    LEASE_DONE,
    MISSING,
    RUNNING,
    Claim,
)
from fanflow.store.codec import Codec, Encoded, Sealed
from fanflow.store.events import EventRows, pack_rows, unpack_rows

__all__ = ["SERVER_ENV", "RedisStore", "connect", "store_error", "trying_once"]

CONNECT_TIMEOUT_S = 2.0
FIRST_CONNECT_S = 2.5
"""How long opening a store keeps trying before it reports the store unreachable: a
store that never answered is a wrong URL far more often than a restart."""
SOCKET_TIMEOUT_S = 30.0
"""Longest wait for one reply; blocking commands used by fanflow wait far less. A store URL may set
its own (``?socket_timeout=5``, redis-py's URL option, which wins over this)."""

SUBSCRIBE_TIMEOUT_S = 5.0

RETRY_BASE_S = 0.05
RETRY_CAP_S = 2.0

SERVER_MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
SERVER_ENV = {"MALLOC_CONF": SERVER_MALLOC_CONF, "JE_MALLOC_CONF": SERVER_MALLOC_CONF}
"""Environment for a ``redis-server`` that fanflow's runs use: its allocator keeps the pages of freed values.

A run stores MB-sized values and deletes them at its end (``UNLINK``); with
jemalloc's defaults Redis hands those pages back to the kernel within seconds
(``dirty_decay_ms`` 10 s, values of 8 MB and up at once) and the next run's values
fault them in again. On this project's 2-core test machine a gemm run of 2 MB
blocks cost ``redis-server`` ~46,000 page faults and 170-430 ms of CPU per run, on the
cores its workers share; with this setting ~30 faults and 80-120 ms, its
RSS held at the peak of the values it stored. ``MALLOC_CONF`` is read by a
Redis linked against the system's jemalloc (Debian's package), ``JE_MALLOC_CONF``
by Redis's own build (its jemalloc is built with the ``je_`` prefix, as in the
``redis`` container image). Benchmarks and tests start their servers with it;
``deploy/compose.yaml`` sets it for its ``redis`` service.
"""

# The claim, as Lua functions the claim scripts share. ``join``: add ``member`` to the
# upstream set ``deps`` (which gets its TTL when it is created, with its first
# member), then ``grant`` the claim if the set is complete. ``grant``: the claim
# is given once, to the caller that finds the set complete, and lasts as long as
# the run; its owner (an invocation id) re-enters it: a redelivered invocation
# goes on. Each answers 1 when ``owner`` holds the claim, else 0.
_CLAIM_STEPS = """
local function grant(claim, owner, ttl)
  if redis.call('SET', claim, owner, 'NX', 'EX', ttl) then return 1 end
  if redis.call('GET', claim) == owner then return 1 end
  return 0
end
local function join(deps, member, indegree, claim, owner, ttl)
  redis.call('SADD', deps, member)
  local n = redis.call('SCARD', deps)
  if n == 1 then redis.call('EXPIRE', deps, ttl) end
  if n < tonumber(indegree) then return 0 end
  return grant(claim, owner, ttl)
end
"""

# KEYS: deps, claim. ARGV: member, indegree, owner, ttl_s.
_CLAIM_LUA = _CLAIM_STEPS + "return join(KEYS[1], ARGV[1], ARGV[2], KEYS[2], ARGV[3], ARGV[4])\n"

# KEYS: the outputs to store, then the deps and claim of each claim. ARGV: owner, ttl_s, how many outputs,
# their values, then the member and indegree of each claim. What the claim script does, for each claim
# in order, after the outputs are stored: one script call for a batch of notifications instead of one
# per claim (see :data:`CLAIMS_PER_CALL`). Answers the claims' verdicts, 1 or 0, in order.
_CLAIM_MANY_LUA = (
    _CLAIM_STEPS
    + """
local owner, ttl, nputs = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 1, nputs do redis.call('SET', KEYS[i], ARGV[3 + i], 'EX', ttl) end
local won, a = {}, 3 + nputs
for i = nputs + 1, #KEYS, 2 do
  won[#won + 1] = join(KEYS[i], ARGV[a + 1], ARGV[a + 2], KEYS[i + 1], owner, ttl)
  a = a + 2
end
return won
"""
)

# KEYS: deps, claim, output. ARGV: member, indegree, owner, ttl_s, value.
# The claim script, plus: store the upstream's output unless the claim is won
# (the winner runs the dependent with the value in memory and never uploads it).
_CLAIM_OR_STORE_LUA = (
    _CLAIM_STEPS
    + """
if join(KEYS[1], ARGV[1], ARGV[2], KEYS[2], ARGV[3], ARGV[4]) == 1 then return 1 end
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[4])
return 0
"""
)

# KEYS: deps, claim. ARGV: member, indegree, owner, ttl_s.
# The claim script for a caller that joins the set only if that completes it: otherwise nothing
# changes and it answers 0 (the caller stores its output first, then notifies as usual).
_CLAIM_IF_LAST_LUA = (
    _CLAIM_STEPS
    + """
local n = redis.call('SCARD', KEYS[1])
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then n = n + 1 end
if n < tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return grant(KEYS[2], ARGV[3], ARGV[4])
"""
)

# KEYS: status, errors. ARGV: record, ttl_s, channel, failed.
# A run whose status is gone has ended (cleaned up) or lost its state: a late
# worker's failure must not bring its keys back.
_FAIL_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], 'failed')
return 1
"""

_FAIL_ALLOW_OOM_LUA = "#!lua flags=allow-oom\n" + _FAIL_LUA

# KEYS: lease. ARGV: owner, lease_ms, done.
# A heartbeat still in flight when its task ends must not overwrite ``done``.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: status, started. ARGV: inv_id, token, ttl_s, redelivered, running.
# A worker's first step: nothing runs for a run that is not running, and one
# delivery of an invocation runs (a redelivery takes over from a dead worker;
# the same delivery token is the platform retrying that delivery).
_BEGIN_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[5] then return 0 end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
else
  local held = redis.call('HGET', KEYS[2], ARGV[1])
  if not held then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  elseif held ~= ARGV[2] then
    return 2
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: stream. ARGV: packed events, ttl_s, the entry's field (see ``RedisStore.append_events``).
_EVENTS_LUA = """
redis.call('XADD', KEYS[1], '*', ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

SCRIPT_ONLY_COMMANDS = ("sadd", "scard", "expire", "xadd")
"""Commands fanflow runs only inside its scripts, never sent by a client directly.
(``SET`` is both: clients write values with it, and a claim script calls it once
per dependent whose upstream set is complete. So are ``GET``, ``HGET`` and ``HSET``,
which a worker's begin script calls once per invocation.)"""


CLAIMS_PER_CALL = 128
"""Most claims one script call of :meth:`RedisStore.finish` makes (the first call also stores the small outputs).

A worker that held the notifications of 511 short tasks (a 2,048-leaf tree's first level) sent them as
511 ``SET`` and 511 ``EVALSHA`` in one pipeline: a median 28.9 ms (p10 19.1) of the worker's CPU, packing
1,022 commands and parsing 1,022 replies, and 6.9 ms of ``redis-server``'s, for work Redis does in
microseconds a claim. In 4 calls: 11.4 ms (p10 8.2) and 5.9 ms (60 pairs taking turns, load 0.3-0.5).
Not one call: a script holds the server while it runs (~1 ms for 128 claims here), and the other
workers' commands wait behind it."""


# -- packing commands ----------------------------------------------------------------
LARGE_ARG_BYTES = 16 * 1024
"""From this size an argument is sent as it is, after its length, instead of copied into the command."""

_encoder = Encoder("utf-8", "strict", False)


class Packer:
    """Packs commands into RESP, sending large values without copying them.

    redis-py packs with hiredis when it is installed, and hiredis copies every
    argument into one buffer while it builds the command: 16 ms of CPU for an
    8 MB value, more than sealing and sending it. A command carrying a large
    value (or a :class:`~fanflow.store.codec.Sealed` value's frames) is packed
    here instead, as a list of chunks the connection sends one after another:
    an array's buffer goes from the array to the socket. Other commands go to
    redis-py's own packer.
    """

    def __init__(self) -> None:
        self._small: Any = HiredisRespSerializer() if HIREDIS_AVAILABLE else PythonRespSerializer(6000, _encoder.encode)

    def pack(self, *args: Any) -> list[Any]:
        # The set of the arguments' types answers most commands at C speed: a claim script call
        # carries hundreds of keys and numbers and no value, and calling _large on each cost ~1 us a
        # task on a tree's held notifications. Only bytes-likes are measured one by one.
        kinds = set(map(type, args))
        if Sealed not in kinds and (kinds <= _NEVER_LARGE or not any(map(_large, args))):
            return self._small.pack(*args)  # type: ignore[no-any-return]
        if isinstance(args[0], str):  # a command name of two words ("SCRIPT LOAD") is two arguments
            args = (*args[0].encode().split(), *args[1:])
        out: list[Any] = []
        head = [b"*%d\r\n" % len(args)]
        for arg in args:
            frames = arg.frames if type(arg) is Sealed else (_encoder.encode(arg),)
            size = arg.nbytes if type(arg) is Sealed else len(frames[0])
            if size < LARGE_ARG_BYTES:
                head += (b"$%d\r\n" % size, *frames, b"\r\n")
                continue
            head.append(b"$%d\r\n" % size)
            out.append(b"".join(head))
            out.extend(f for f in frames if len(f))
            head = [b"\r\n"]
        out.append(b"".join(head))
        return out


_NEVER_LARGE = frozenset({str, int, float})
"""Argument types a command packs by redis-py's packer whatever their size (see :func:`_large`)."""


def _large(arg: Any) -> bool:
    return type(arg) is Sealed or (isinstance(arg, bytes | memoryview) and len(arg) >= LARGE_ARG_BYTES)


class PackingConnection(Connection):
    """A connection packing with :class:`Packer` (for clients whose connection kwargs cannot carry it)."""

    def _construct_command_packer(self, packer: Any) -> Any:
        return packer or Packer()


# -- errors -------------------------------------------------------------------------
P = ParamSpec("P")
R = TypeVar("R")


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    """Turn redis-py exceptions into fanflow store errors that name the (masked) URL.

    The store's own methods; code that sends commands on the store's client itself uses
    :class:`translating`, the same translation (a plain ``try`` here: these methods are the
    worker loop's per-task round trips, where a context manager's two calls would add up)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except RedisError as exc:
            raise store_error(args[0].url, exc) from exc  # type: ignore[attr-defined]

    return wrapper


def translating(url: str) -> _Translating:
    """``with translating(url):`` raises the fanflow error of a redis-py error of the store at ``url``
    (:func:`store_error`), for code that sends commands on the store's client itself (a pool's queue)."""
    return _Translating(url)


class _Translating:
    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, trace: object) -> None:
        if isinstance(exc, RedisError):
            raise store_error(self.url, exc) from exc


def store_error(url: str, exc: RedisError) -> StoreError:
    """The fanflow error for a redis-py error of the store at ``url`` (named with its password masked)."""
    if isinstance(exc, AuthenticationError):
        return _refused(url, exc)
    if isinstance(exc, OutOfMemoryError):
        return _full(url, exc)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return _unavailable(url, exc)
    return StoreError(f"Redis store {mask_url(url)}: {exc}")


def _full(url: str, exc: BaseException) -> StoreFullError:
    return StoreFullError(
        f"the Redis store at {mask_url(url)} is full: it reached its maxmemory and refuses writes ({exc}). "
        "Raise maxmemory or free memory there; keep the policy noeviction (an evicting policy would drop "
        "the state of running runs)"
    )


def _refused(url: str, exc: BaseException) -> StoreAuthError:
    missing = "NOAUTH" in str(exc) or "Authentication required" in str(exc)
    what = "requires a password and the URL gives none" if missing else "refused the user or password in the URL"
    return StoreAuthError(
        f"the Redis store at {mask_url(url)} {what} ({exc}); put them in the URL: "
        "redis://[user]:PASSWORD@host:port/db (or ?password=...)"
    )


def _unavailable(url: str, exc: BaseException) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"cannot reach the Redis store at {mask_url(url)} ({type(exc).__name__}: {exc}). Check that "
        "redis-server runs there and accepts connections, or pass another store URL "
        "(store='redis://[user:password@]host:port/db', 'rediss://' for TLS)"
    )


# -- subscriptions -----------------------------------------------------------------------
class RedisSubscription:
    """One channel subscription on its own connection; confirmed before it is returned."""

    def __init__(self, pubsub: PubSub, url: str) -> None:
        self._pubsub = pubsub
        self._url = url

    def get(self, timeout: float) -> bytes | None:
        """The next message on the channel, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
                if message is not None and message["type"] == "message":
                    data: bytes = message["data"]
                    return data
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return None
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise _unavailable(self._url, exc) from exc

    def close(self) -> None:
        """Unsubscribe and give the connection back."""
        with contextlib.suppress(RedisError):  # a lost connection has nothing left to release
            self._pubsub.close()


# -- the store ---------------------------------------------------------------------------
class RedisStore:
    """A :class:`fanflow.store.Store` on one Redis server (``redis://`` or ``rediss://``).

    With ``secret``, every value is sealed to its key when written and verified
    before it is unpickled when read (:class:`fanflow.store.codec.Codec`).
    """

    keeps_objects = False
    batches_claims = True
    """Whether :meth:`finish` sends many plain claims in one script call; not on a Redis Cluster, where a
    script touches one hash slot and each claim's keys have a slot of their own."""

    def __init__(self, url: str, client: redis.Redis, secret: bytes | None = None) -> None:
        self.url = url
        self.client = client
        """The redis-py client (thread-safe; a connection pool), for platforms built on Redis."""
        self._codec = Codec(secret)
        self._claim = client.register_script(_CLAIM_LUA)
        self._claim_or_store = client.register_script(_CLAIM_OR_STORE_LUA)
        self._claim_if_last = client.register_script(_CLAIM_IF_LAST_LUA)
        self._claim_many = client.register_script(_CLAIM_MANY_LUA)
        self._fail = client.register_script(_FAIL_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._begin = client.register_script(_BEGIN_LUA)
        self._events = client.register_script(_EVENTS_LUA)

    @_translated
    def load_scripts(self) -> None:
        """Load the Lua scripts into the server's script cache (done on connect and after NOSCRIPT)."""
        pipe = self.client.pipeline(transaction=False)
        for script in (
            self._claim,
            self._claim_or_store,
            self._claim_if_last,
            self._claim_many,
            self._fail,
            self._renew,
            self._begin,
            self._events,
        ):
            pipe.script_load(script.script)
        pipe.execute()

    def with_secret(self, secret: bytes | None) -> RedisStore:
        """This store (same connections) sealing and verifying values with ``secret``."""
        other = copy.copy(self)
        other._codec = Codec(secret)
        return other

    def _execute(self, fill: Callable[[Any], None]) -> list[Any]:
        """Fill and run a pipeline of idempotent commands; on NOSCRIPT load the scripts and run it again."""
        pipe = self.client.pipeline(transaction=False)
        fill(pipe)
        try:
            return pipe.execute()  # type: ignore[no-any-return]
        except NoScriptError:
            self.load_scripts()
            pipe = self.client.pipeline(transaction=False)  # execute() emptied the first one
            fill(pipe)
            return pipe.execute()  # type: ignore[no-any-return]

    def _evalsha(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.load_scripts()
            return self.client.evalsha(script.sha, len(keys), *keys, *args)

    # -- values -------------------------------------------------------------------------
    @_translated
    def get_many(self, keys: Sequence[str]) -> tuple[list[Any], list[int]]:
        """Values (``MISSING`` where absent) and their stored sizes, with one ``MGET``."""
        if not keys:
            return [], []
        raw = self.client.mget(keys)
        decode = self._codec.decode
        values = [MISSING if data is None else decode(key, data) for key, data in zip(keys, raw, strict=True)]
        return values, [0 if data is None else len(data) for data in raw]

    def dumps(self, value: Any) -> tuple[Encoded, int]:
        """The frames of ``value`` (sealed to their key when stored) and their stored size."""
        encoded = self._codec.encode(value)
        return encoded, encoded.nbytes

    @_translated
    def put_many(self, items: Mapping[str, Any], ttl_s: int) -> None:
        """``SET ... EX`` every item, in one pipeline."""
        if not items:
            return
        seal = self._codec.seal_frames
        pipe = self.client.pipeline(transaction=False)
        for key, value in items.items():
            pipe.set(key, seal(key, value), ex=ttl_s)
        pipe.execute()

    @_translated
    def finish(
        self,
        puts: Mapping[str, Any],
        claims: Sequence[Claim],
        owner: str,
        ttl_s: int,
        lease_ms: int,
        publish: Sequence[tuple[str, bytes]] = (),
    ) -> list[bool]:
        """Outputs, fan-in claims and messages in ONE pipeline; per claim, whether ``owner`` won it.

        Two or more plain claims (a worker's held notifications) go in one script call per
        :data:`CLAIMS_PER_CALL`, not one each (:meth:`_finish_batched`)."""
        if not (puts or claims or publish):
            return []
        seal = self._codec.seal_frames
        sealed = {key: seal(key, value) for key, value in puts.items()}
        if self.batches_claims and len(claims) > 1 and all(c.output_key is None and not c.only_if_last for c in claims):
            return self._finish_batched(sealed, claims, owner, ttl_s, publish)
        sha, sha_or_store, sha_if_last = self._claim.sha, self._claim_or_store.sha, self._claim_if_last.sha
        outputs = [None if c.output_key is None else seal(c.output_key, c.output) for c in claims]

        def fill(pipe: Any) -> None:
            for key, value in sealed.items():
                pipe.set(key, value, ex=ttl_s)
            for c, output in zip(claims, outputs, strict=True):
                if c.output_key is None:
                    script = sha_if_last if c.only_if_last else sha
                    pipe.evalsha(script, 2, c.deps_key, c.claim_key, c.member, c.indegree, owner, ttl_s)
                else:
                    pipe.evalsha(
                        sha_or_store,
                        3,
                        c.deps_key,
                        c.claim_key,
                        c.output_key,
                        c.member,
                        c.indegree,
                        owner,
                        ttl_s,
                        output,
                    )
            for channel, message in publish:
                pipe.publish(channel, message)

        replies = self._execute(fill)
        first = len(puts)
        return [bool(r) for r in replies[first : first + len(claims)]]

    def _finish_batched(
        self,
        sealed: Mapping[str, Sealed],
        claims: Sequence[Claim],
        owner: str,
        ttl_s: int,
        publish: Sequence[tuple[str, bytes]],
    ) -> list[bool]:
        """:meth:`finish` of plain claims (no output stored by the claim, none only if last): a script call
        per :data:`CLAIMS_PER_CALL` claims, the small outputs stored by the first call, before any claim
        (up to :data:`LARGE_ARG_BYTES` each and 1 MB in all; the others by a plain ``SET`` before it)."""
        small: dict[str, bytes] = {}
        room = 1 << 20
        for key, value in sealed.items():
            if value.nbytes < LARGE_ARG_BYTES and value.nbytes <= room:
                small[key] = b"".join(value.frames)
                room -= value.nbytes
        sha = self._claim_many.sha
        calls = range(0, len(claims), CLAIMS_PER_CALL)

        def fill(pipe: Any) -> None:
            for key, value in sealed.items():
                if key not in small:
                    pipe.set(key, value, ex=ttl_s)
            for start in calls:
                batch = claims[start : start + CLAIMS_PER_CALL]
                keys_: list[Any] = list(small) if start == 0 else []
                args: list[Any] = [owner, ttl_s, len(keys_), *(small.values() if start == 0 else ())]
                for c in batch:
                    keys_ += (c.deps_key, c.claim_key)
                    args += (c.member, c.indegree)
                pipe.evalsha(sha, len(keys_), *keys_, *args)
            for channel, message in publish:
                pipe.publish(channel, message)

        replies = self._execute(fill)
        first = len(sealed) - len(small)
        return [bool(won) for reply in replies[first : first + len(calls)] for won in reply]

    @_translated
    def renew_leases(self, lease_keys: Sequence[str], owner: str, lease_ms: int) -> None:
        """Set each lease to ``owner`` for ``lease_ms`` unless it is ``done``, in one pipeline."""
        if lease_keys:
            sha = self._renew.sha
            self._execute(lambda pipe: [pipe.evalsha(sha, 1, key, owner, lease_ms, LEASE_DONE) for key in lease_keys])

    @_translated
    def end_leases(self, lease_keys: Sequence[str], ttl_s: int) -> None:
        """Mark leases ``done`` for the rest of the run, in one pipeline."""
        if lease_keys:
            self._execute(lambda pipe: [pipe.set(key, LEASE_DONE, ex=ttl_s) for key in lease_keys])

    @_translated
    def read_leases(self, lease_keys: Sequence[str]) -> list[str | None]:
        """Each lease's owner (or ``done``), None where absent, with one ``MGET``."""
        if not lease_keys:
            return []
        return [None if v is None else v.decode() for v in self.client.mget(lease_keys)]

    @_translated
    def take_claim(self, claim_key: str, owner: str, ttl_s: int) -> None:
        self.client.set(claim_key, owner, ex=ttl_s)

    # -- run state ---------------------------------------------------------------------------
    @_translated
    def fail_run(self, status_key: str, errors_key: str, record: bytes, ttl_s: int, channel: str) -> None:
        """Append the error record and set status ``failed`` in one script, which then publishes.

        Nothing is written when the run's status is gone: the run ended or lost its state.
        """
        args = (record, ttl_s, channel, FAILED)
        try:
            self._evalsha(self._fail, (status_key, errors_key), args)
        except OutOfMemoryError:
            # A full store must still hear why a run fails: the record is small, so it may go over
            # maxmemory (the allow-oom flag, Redis 7+). Otherwise the run would wait forever.
            self.client.eval(_FAIL_ALLOW_OOM_LUA, 2, status_key, errors_key, *args)

    @_translated
    def set_status(self, status_key: str, status: str, ttl_s: int) -> None:
        self.client.set(status_key, status, ex=ttl_s)

    @_translated
    def begin(self, status_key: str, started_key: str, inv_id: str, token: str, ttl_s: int, redelivered: bool) -> str:
        """The run's status check and the invocation's start mark, in one script."""
        args = (inv_id, token, ttl_s, "1" if redelivered else "0", RUNNING)
        answer = self._evalsha(self._begin, (status_key, started_key), args)
        return (BEGIN_STOPPED, BEGIN_RUN, BEGIN_DUPLICATE)[int(answer)]

    @_translated
    def get_status(self, status_key: str) -> str | None:
        value = self.client.get(status_key)
        return None if value is None else value.decode()

    @_translated
    def read_list(self, key: str) -> list[bytes]:
        return list(self.client.lrange(key, 0, -1))

    # -- messages -----------------------------------------------------------------------------
    @_translated
    def publish(self, channel: str, message: bytes) -> None:
        self.client.publish(channel, message)

    @_translated
    def subscribe(self, channel: str) -> RedisSubscription:
        """Subscribe on a dedicated connection and wait for the server's confirmation."""
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(channel)
            deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreUnavailableError(
                        f"Redis store {mask_url(self.url)} did not confirm a subscription within "
                        f"{SUBSCRIBE_TIMEOUT_S:.0f} s; check the server's load and network"
                    )
                message = pubsub.get_message(timeout=remaining)
                if message is not None and message["type"] == "subscribe":
                    return RedisSubscription(pubsub, self.url)
        except BaseException:
            pubsub.close()
            raise

    @_translated
    def append_events(self, stream: str, events: Sequence[Mapping[str, Any]], ttl_s: int) -> None:
        """All ``events`` as ONE stream entry, with the stream's TTL, in one script call.

        A worker's flush (:class:`~fanflow.store.events.EventRows`) goes as its rows,
        packed (:func:`~fanflow.store.events.pack_rows`), in the entry's field ``r``;
        other events (the client's own, a few dicts) as a JSON list of dicts in ``e``.
        """
        if not events:
            return
        if type(events) is EventRows:
            field, packed = "r", pack_rows(events)
        else:
            field, packed = "e", json.dumps(list(events), separators=(",", ":"), default=repr)
        self._evalsha(self._events, (stream,), (packed, ttl_s, field))

    @_translated
    def read_events(self, stream: str, after: str = "0", count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Events of the entries after entry id ``after``; each event carries its entry's id.

        ``count`` limits the number of *entries* read, never splitting one, so
        passing the last id returned as ``after`` never skips an event.
        """
        low = "-" if after in ("0", "0-0") else f"({after}"
        entries = self.client.xrange(stream, low, "+", count=count)
        out: list[tuple[str, dict[str, Any]]] = []
        for entry_id, fields in entries:
            eid = entry_id.decode()
            out.extend((eid, event) for event in _entry_events(fields))
        return out

    @_translated
    def read_event_batches(self, stream: str, after: str = "0") -> tuple[list[Sequence[Mapping[str, Any]]], str]:
        low = "-" if after in ("0", "0-0") else f"({after}"
        entries = self.client.xrange(stream, low, "+")
        batches = [_entry_events(fields) for _, fields in entries]
        return batches, entries[-1][0].decode() if entries else after

    # -- lifetime -----------------------------------------------------------------------------
    @_translated
    def delete(self, keys: Sequence[str]) -> int:
        """``UNLINK`` exactly these keys (freed in the background); returns how many existed."""
        if not keys:
            return 0
        return int(self.client.unlink(*keys))

    def close(self) -> None:
        """Close every pooled connection."""
        self.client.close()


def _entry_events(fields: Mapping[bytes, bytes]) -> list[dict[str, Any]]:
    """The events of one stream entry: a worker's packed rows (``r``) or a JSON list of dicts (``e``)."""
    rows = fields.get(b"r")
    if rows is not None:
        return unpack_rows(rows)
    listed = fields.get(b"e")
    if listed is None:  # written by another version's worker: say so, rather than a bare KeyError
        names = ", ".join(sorted(f.decode(errors="replace") for f in fields))
        raise StoreError(
            f"an event stream entry holds fields this fanflow cannot read ({names}): the run's workers "
            "run another fanflow version; run clients and workers on one version (docs/deploy.md)"
        )
    return json.loads(listed)


_calls = threading.local()
"""``deadline``: when the outermost store call in progress on this thread stops retrying (redis-py
nests a connect's retries inside a command's, and both must end by the same time); ``budgeted``:
whether that call had the full budget (not one try); ``once``: inside :func:`trying_once`."""


class _Retry(Retry):
    """Retries lost connections until a deadline; once a call ran out of it, calls try once for a while.

    The deadline is ``budget_s`` after the outermost call began, however long each attempt
    takes: a count of retries would multiply by the connect timeout (a host that stopped
    answering) and by the nesting of a connect's retries in a command's. A store that is gone
    costs the budget once: the calls of the next ``budget_s`` (of any thread, on any connection
    of the client) get one attempt each, so a client's cleanup, a pool's shutdown or a worker's
    exit after an outage take seconds, not a budget per command. (A time, not "until a call is
    answered": redis-py's connect of a connection it already holds succeeds without the server.)
    When that call ran out of it waiting for a reply (a server that accepts connections but does
    not answer: stopped, or its host unreachable), those calls are not even tried: one try would
    wait out the socket timeout, each. A refused password is never retried: that answer does not
    change by waiting.
    """

    def __init__(self, budget_s: float, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        super().__init__(ExponentialWithJitterBackoff(base=RETRY_BASE_S, cap=RETRY_CAP_S), _steps(budget_s))
        self.budget_s = budget_s
        self.socket_timeout_s = socket_timeout_s
        self.once_until = 0.0
        """Calls that begin before this time try once: a call ran out of its budget just before."""
        self.unanswered = False
        """That call ran out of it on a timeout: the calls until ``once_until`` fail without a try."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Retry:
        return self  # redis-py copies it into each connection: they share whether the store answers

    def call_with_retry(
        self,
        do: Callable[[], R],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> R:
        outer: float | None = getattr(_calls, "deadline", None)
        if outer is None:
            now = time.monotonic()
            window = now < self.once_until
            _calls.budgeted = not window and not getattr(_calls, "once", False)
            if window and self.unanswered:
                raise RedisTimeoutError(
                    f"the server did not answer within the socket timeout ({self.socket_timeout_s:g} s) "
                    f"{now - self.once_until + self.budget_s:.0f} s ago; not asked again for "
                    f"{self.once_until - now:.0f} s"
                )
            _calls.deadline = now + self.budget_s if _calls.budgeted else now
        deadline: float = _calls.deadline
        try:
            self._backoff.reset()
            failures = 0
            while True:
                try:
                    return do()
                except AuthenticationError:  # a ConnectionError to redis-py
                    raise
                except self._supported_errors as error:
                    if is_retryable is not None and not is_retryable(error):
                        raise
                    failures += 1
                    if with_failure_count:
                        fail(error, failures)
                    else:
                        fail(error)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        if _calls.budgeted:  # also when nested: the outer call's fail() re-raises what this raises
                            self.once_until = time.monotonic() + self.budget_s
                            self.unanswered = isinstance(error, RedisTimeoutError | socket.timeout)
                        raise
                    time.sleep(min(self._backoff.compute(failures), left))  # the last try at the deadline
        finally:
            if outer is None:
                _calls.deadline = None


@contextlib.contextmanager
def trying_once() -> Iterator[None]:
    """Store calls of this thread inside the block try once, whatever the retry budget.

    For calls whose caller tries again anyway (a pool's loop), or need not succeed and must not
    wait (a pool that stops hands back what it held; a reaper reclaims it otherwise).
    """
    outer = getattr(_calls, "once", False)
    _calls.once = True
    try:
        yield
    finally:
        _calls.once = outer


def _steps(budget_s: float) -> int:
    """Retries whose backoffs add up to ``budget_s``: the count a Redis Cluster client goes by."""
    steps, waited, delay = 0, 0.0, RETRY_BASE_S
    while waited < budget_s:
        waited += min(delay, RETRY_CAP_S)
        delay *= 2
        steps += 1
    return steps


def retry_policy(budget_s: float, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> Retry:
    """Exponential backoff with jitter, retried until ``budget_s`` seconds have passed (see :class:`_Retry`).

    Every command fanflow sends is safe to repeat (idempotent writes, NX claims,
    re-entrant for their owner), so a dropped connection or a restarting server
    costs a pause, not a run; past the budget the error reaches the caller.
    Authentication errors are never retried.
    """
    return _Retry(budget_s, socket_timeout_s)


def first_ping(client: Any, url: str) -> None:
    """Ping until the store answers, for at most :data:`FIRST_CONNECT_S`; raise a specific error.

    The client's own retries are for connections that worked once; a first
    connection gets this short window instead, so a wrong host, port or password
    is reported within seconds.
    """
    deadline = time.monotonic() + FIRST_CONNECT_S
    delay = RETRY_BASE_S
    while True:
        try:
            client.ping()
            return
        except AuthenticationError as exc:
            raise _refused(url, exc) from exc
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if time.monotonic() + delay >= deadline:
                raise _unavailable(url, exc) from exc
        except RedisError as exc:  # the server answered, with an error
            raise StoreUnavailableError(
                f"the Redis store at {mask_url(url)} refused the connection ({exc}); check the URL"
            ) from exc
        time.sleep(delay)
        delay *= 2


def connect(url: str, retry_s: float = 10.0, secret: bytes | None = None) -> RedisStore:
    """Open the store at ``url`` and check that it answers, within a few seconds.

    Raises :class:`StoreAuthError` for a missing or wrong password and
    :class:`StoreUnavailableError` when nothing answers (see :func:`first_ping`).
    Values are sealed with ``secret`` and verified against it (see :class:`RedisStore`).
    Connections lost later are retried for about ``retry_s`` seconds (see :func:`retry_policy`).
    """
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=30,
            retry=_Retry(0.0),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            command_packer=Packer(),
        )
    except ValueError as exc:
        raise StoreUnavailableError(
            f"bad Redis store URL {mask_url(url)}: {exc}; use redis://[user:password@]host:port/db"
        ) from exc
    try:
        first_ping(client, url)
    except StoreUnavailableError:
        client.close()
        raise
    client.set_retry(retry_policy(retry_s, client.connection_pool.connection_kwargs["socket_timeout"]))
    store = RedisStore(url, client, secret)
    store.load_scripts()
    return store
