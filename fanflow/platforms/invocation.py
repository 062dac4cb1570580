"""What a worker is started with, and its signed payload form.

An :class:`Invocation` names the run, the start tasks (whose claims the worker
already holds), the resource config, where the store is and how to invoke more
workers, and the DAG: inline (object in-process, encoded bytes when small) or
``None`` meaning "fetch it from the store by run id".

Payload bytes are ``MAGIC | HMAC-SHA256(secret, body) | body``. The signature is
checked before anything is unpickled, so a forged or tampered payload never
reaches pickle.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import uuid
from dataclasses import dataclass, field
from typing import Any

from fanflow.errors import PayloadRejectedError

MAGIC = b"FFP1"
_SIG_LEN = 32


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Run-wide knobs every worker of the run obeys."""

    key_ttl_s: int
    lease_ms: int
    max_value_bytes: int
    metrics_upload: str = "shutdown"
    max_recoveries: int = 3
    store_retry_s: float = 10.0


@dataclass(slots=True)
class Invocation:
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

    def with_start(
        self, start: tuple[Any, ...], memory_mb: int, invoked_at: float, inv_id: str | None = None
    ) -> Invocation:
        """A new invocation of the same run, with id ``inv_id`` (default: a new random one)."""
        return Invocation(
            self.run_id,
            start,
            memory_mb,
            self.store_url,
            self.platform,
            self.platform_options,
            self.settings,
            self.dag,
            invoked_at,
            self.runtime,
            inv_id or new_invocation_id(),
        )


def new_invocation_id() -> str:
    return uuid.uuid4().hex[:16]


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
    body = pickle.dumps(
        (
            inv.run_id,
            inv.start,
            inv.memory_mb,
            inv.store_url,
            inv.platform,
            inv.platform_options,
            inv.settings,
            inv.dag,
            inv.invoked_at,
            None,
            inv.inv_id,
        ),
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    return MAGIC + hmac.new(secret, body, hashlib.sha256).digest() + body


def verify(payload: bytes, secret: bytes | None) -> Invocation:
    """Check the signature, then decode. Raises :class:`PayloadRejectedError`."""
    if secret is None:
        raise PayloadRejectedError("this worker has no secret: set FANFLOW_SECRET to the client's secret")
    view = memoryview(payload)
    if len(view) < len(MAGIC) + _SIG_LEN or bytes(view[: len(MAGIC)]) != MAGIC:
        raise PayloadRejectedError("payload is not a signed fanflow invocation")
    sig = bytes(view[len(MAGIC) : len(MAGIC) + _SIG_LEN])
    body = view[len(MAGIC) + _SIG_LEN :]
    if not hmac.compare_digest(sig, hmac.new(secret, body, hashlib.sha256).digest()):
        raise PayloadRejectedError(
            "payload signature does not match: it was tampered with or signed with another secret"
        )
    fields = pickle.loads(body)
    return Invocation(*fields)


def peek(payload: bytes) -> Invocation:
    """Decode a payload WITHOUT checking its signature.

    Only for payloads this process signed itself, e.g. so a platform can route an
    invocation by its ``memory_mb``; anything received from elsewhere goes through
    :func:`verify`.
    """
    return Invocation(*pickle.loads(memoryview(payload)[len(MAGIC) + _SIG_LEN :]))
