"""What a worker is started with, and its signed payload form.

An :class:`Invocation` names the run, the start tasks (whose claims the worker
already holds), the resource config, where the store is and how to invoke more
workers, and the DAG: inline (object in-process, encoded bytes when small) or
``None`` meaning "fetch it from the store by run id".

Payload bytes are ``MAGIC | HMAC-SHA256(secret, signed) | signed`` where
``signed = run_len:u16 | run_id | body``. The signature is checked before
anything is unpickled, so a forged or tampered payload never reaches pickle.
The run id is in clear so a platform can tell a run about a payload it refuses
(:func:`run_id_of`) without trusting the rest. A payload older than the run's
``key_ttl_s`` is refused: every key of its run has expired by then, so only a
replay can carry it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import random
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fanflow.config import mask_url
from fanflow.errors import FanflowError, PayloadRejectedError
from fanflow.platforms.base import Platform

MAGIC = b"FFP2"
_SIG_LEN = 32
_RUN_LEN = struct.Struct("<H")
_SIGNED_AT = len(MAGIC) + _SIG_LEN


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Run-wide knobs every worker of the run obeys."""

    key_ttl_s: int
    lease_ms: int
    max_value_bytes: int
    metrics_upload: str = "shutdown"
    max_recoveries: int = 3
    store_retry_s: float = 10.0
    fanout: str = "capacity"
    """``wukong``: one new worker per fan-out branch, whatever the platform's free slots say."""


@dataclass(slots=True, kw_only=True)
class Invocation:
    """One worker's start: built by keyword, shipped as signed bytes (:func:`sign`) unless in-process."""

    run_id: str
    start: tuple[int, ...]
    memory_mb: int
    store_url: str
    platform: str
    platform_options: dict[str, Any]
    settings: WorkerSettings
    dag: Any = None
    """A DAG object (in-process), its encoded bytes (inline), or None (fetch from the store)."""
    invoked_at: float = 0.0
    runtime: Any = field(default=None, compare=False)
    """In-process only: the (store, platform) objects to use; never shipped."""
    inv_id: str = ""
    """Names this invocation; it owns the claims its worker takes, so a redelivered
    invocation (same payload, after its worker died) re-enters them."""

    def __repr__(self) -> str:
        # Logged and shown in errors: the store URL may carry the Redis password.
        options = {k: mask_url(v) if isinstance(v, str) and "://" in v else v for k, v in self.platform_options.items()}
        return (
            f"Invocation(run_id={self.run_id!r}, start={self.start!r}, memory_mb={self.memory_mb}, "
            f"store_url={mask_url(self.store_url)!r}, platform={self.platform!r}, platform_options={options!r}, "
            f"inv_id={self.inv_id!r})"
        )

    def with_start(
        self, start: tuple[Any, ...], memory_mb: int, invoked_at: float, inv_id: str | None = None
    ) -> Invocation:
        """A new invocation of the same run, with id ``inv_id`` (default: a new random one)."""
        return Invocation(
            run_id=self.run_id,
            start=start,
            memory_mb=memory_mb,
            store_url=self.store_url,
            platform=self.platform,
            platform_options=self.platform_options,
            settings=self.settings,
            dag=self.dag,
            invoked_at=invoked_at,
            runtime=self.runtime,
            inv_id=inv_id or new_invocation_id(),
        )


_SHIPPED = (
    "run_id",
    "start",
    "memory_mb",
    "store_url",
    "platform",
    "platform_options",
    "settings",
    "dag",
    "invoked_at",
    "inv_id",
)
"""The fields a payload carries (``runtime`` never leaves its process)."""


_ids = random.Random()
"""Seeded from ``os.urandom`` (again in a forked child), and its own: a task's ``random.seed()`` cannot repeat ids."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


def new_invocation_id() -> str:
    """16 random hex digits, unique across processes and hosts; no system call (``os.urandom`` is one per id)."""
    return f"{_ids.getrandbits(64):016x}"


def branch_id(parent: str, start: tuple[Any, ...]) -> str:
    """The id of the invocation that invocation ``parent`` starts for ``start`` (tasks or map elements).

    The same every time: when a platform redelivers ``parent`` after its worker
    died, the branches it starts again carry the ids of the first ones, so a
    branch that already started is not run a second time (see ``Store.begin``).
    """
    return hashlib.blake2b(f"{parent}/{start!r}".encode(), digest_size=8).hexdigest()


def sign(inv: Invocation, secret: bytes) -> bytes:
    """Serialize and sign an invocation; the DAG must be bytes or None by now."""
    if not isinstance(inv.dag, (bytes, type(None))):
        raise TypeError("encode the DAG before signing a payload")
    body = pickle.dumps(tuple(getattr(inv, f) for f in _SHIPPED), protocol=pickle.HIGHEST_PROTOCOL)
    run = inv.run_id.encode()
    signed = _RUN_LEN.pack(len(run)) + run + body
    return MAGIC + hmac.new(secret, signed, hashlib.sha256).digest() + signed


def run_id_of(payload: bytes) -> str | None:
    """The run id a payload names, read WITHOUT checking its signature; None if it is not a payload.

    Only to tell that run about a payload refused here: never trust it for more.
    """
    view = memoryview(payload)
    if len(view) < _SIGNED_AT + _RUN_LEN.size or bytes(view[: len(MAGIC)]) != MAGIC:
        return None
    (n,) = _RUN_LEN.unpack_from(view, _SIGNED_AT)
    start = _SIGNED_AT + _RUN_LEN.size
    try:
        return bytes(view[start : start + n]).decode()
    except UnicodeDecodeError:
        return None


def send(platform: Platform, invocations: Sequence[Invocation], secret: bytes | None) -> None:
    """Invoke one worker per invocation: the objects themselves in-process, else signed payloads."""
    if platform.in_process:
        platform.invoke(invocations)
        return
    if secret is None:
        raise FanflowError("cannot sign invocations without a secret: set FANFLOW_SECRET for this worker")
    platform.invoke([sign(inv, secret) for inv in invocations])


def verify(payload: bytes, secret: bytes | None) -> Invocation:
    """Check the signature and the age, then decode. Raises :class:`PayloadRejectedError`."""
    if secret is None:
        raise PayloadRejectedError("this worker has no secret: set FANFLOW_SECRET to the client's secret")
    view = memoryview(payload)
    if len(view) < _SIGNED_AT + _RUN_LEN.size or bytes(view[: len(MAGIC)]) != MAGIC:
        raise PayloadRejectedError("payload is not a signed fanflow invocation (of this fanflow version)")
    sig = bytes(view[len(MAGIC) : _SIGNED_AT])
    signed = view[_SIGNED_AT:]
    if not hmac.compare_digest(sig, hmac.new(secret, signed, hashlib.sha256).digest()):
        raise PayloadRejectedError(
            "payload signature does not match: it was tampered with or signed with another secret"
        )
    inv = _decode(signed)
    if inv.invoked_at and time.time() - inv.invoked_at > inv.settings.key_ttl_s:
        raise PayloadRejectedError(
            f"payload of run {inv.run_id} was signed {time.time() - inv.invoked_at:,.0f} s ago, longer than its "
            f"key_ttl_s={inv.settings.key_ttl_s}: its run is over, so this is a replay"
        )
    return inv


def _decode(signed: memoryview) -> Invocation:
    (n,) = _RUN_LEN.unpack_from(signed, 0)
    return Invocation(**dict(zip(_SHIPPED, pickle.loads(signed[_RUN_LEN.size + n :]), strict=True)))


def peek(payload: bytes) -> Invocation:
    """Decode a payload WITHOUT checking its signature.

    Only for payloads this process signed itself, e.g. so a platform can route an
    invocation by its ``memory_mb``; anything received from elsewhere goes through
    :func:`verify`.
    """
    return _decode(memoryview(payload)[_SIGNED_AT:])
