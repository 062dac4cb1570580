"""The :class:`Store` protocol: what the worker loop and the client need of a store.

Every method that touches several keys does it in one round trip. A store
implementation is one module behind this protocol (``memory``, ``redis``), opened
from its URL by :func:`fanflow.store.open_store`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Returned by :meth:`Store.get_many` for a key that does not exist."""

RUNNING = "running"
FAILED = "failed"
CANCELLED = "cancelled"
"""A run's status in its store while it lives (``running``, then ``failed`` or ``cancelled``)."""
SUCCEEDED = "succeeded"
TIMEOUT = "timeout"
ENDED = (SUCCEEDED, FAILED, CANCELLED, TIMEOUT)
"""How a run ended, as its history records it (:func:`fanflow.metrics.recorder.status_of`)."""

BEGIN_RUN = "run"
BEGIN_STOPPED = "stopped"
BEGIN_DUPLICATE = "duplicate"
"""What :meth:`Store.begin` tells a worker: run, the run is not running, or another delivery of
this invocation already started."""
LEASE_DONE = "done"
"""A lease's value once its task finished."""


def error_record(
    run_id: str,
    task: str,
    task_id: int,
    exc_type: str,
    message: str,
    worker: str,
    attempt: int,
    traceback: str = "",
) -> bytes:
    """The JSON record of a failure for good, as :meth:`Store.fail_run` stores it and clients read it."""
    return json.dumps(
        {
            "run_id": run_id,
            "task": task,
            "task_id": task_id,
            "exc_type": exc_type,
            "message": message,
            "traceback": traceback or f"{message}\n",
            "worker": worker,
            "attempt": attempt,
            "time": time.time(),
        }
    ).encode()


class Claim(NamedTuple):
    """Tell dependent task ``task`` that upstream ``member`` is done, and try to claim it.

    The claim succeeds exactly once per task, for the caller whose notification
    completes the dependency set (``indegree`` distinct members), and lasts as
    long as the run. Repeated notifications from a re-run upstream are
    idempotent; the owner itself (a redelivered invocation) re-enters its claim.
    """

    deps_key: str
    claim_key: str
    member: int
    indegree: int
    output_key: str | None = None
    """With ``output``: the upstream's output, stored only if this claim is NOT won (if it is,
    the caller runs the dependent itself with the value in memory). Same hash tag as the claim."""
    output: Any = None
    only_if_last: bool = False
    """Join the dependency set only if that completes it (and then claim); otherwise change
    nothing and report the claim not won. A worker holding a large output asks this first: when
    it wins, it runs the dependent with the value in memory and the value never travels; when it
    does not, it stores the value and then notifies as usual, so nobody can claim the dependent
    before the value is in the store."""


class Subscription(Protocol):
    def get(self, timeout: float) -> bytes | None:
        """The next message, or None after ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


class Store(Protocol):
    """Outputs, fan-in state, errors, events and messages of runs."""

    url: str
    keeps_objects: bool
    """True when values are kept as Python objects (no serialization): in-process only."""

    def get_many(self, keys: Sequence[str]) -> tuple[list[Any], list[int]]:
        """Values (``MISSING`` where absent) and their stored sizes in bytes, in one round trip."""
        ...

    def dumps(self, value: Any) -> tuple[Any, int]:
        """The form ``value`` is stored in, and its size in bytes.

        Raises :class:`fanflow.SerializationError` when it cannot be stored. Values
        given to :meth:`put_many` and :meth:`finish` are in this form.
        """
        ...

    def put_many(self, items: Mapping[str, Any], ttl_s: int) -> None:
        """Store dumped values with a TTL in one round trip."""
        ...

    def finish(
        self,
        puts: Mapping[str, Any],
        claims: Sequence[Claim],
        owner: str,
        ttl_s: int,
        lease_ms: int,
        publish: Sequence[tuple[str, bytes]] = (),
    ) -> list[bool]:
        """Store dumped outputs, notify dependents and publish, all in one round trip.

        Returns, per claim, whether ``owner`` now holds it.
        """
        ...

    def renew_leases(self, lease_keys: Sequence[str], owner: str, lease_ms: int) -> None:
        """Set each lease to ``owner`` for ``lease_ms`` more (a heartbeat), in one round trip."""
        ...

    def end_leases(self, lease_keys: Sequence[str], ttl_s: int) -> None:
        """Mark leases ``done``: their tasks finished, nobody needs to watch them."""
        ...

    def read_leases(self, lease_keys: Sequence[str]) -> list[str | None]:
        """Each lease's owner (or ``done``), None where it expired or never existed; one round trip."""
        ...

    def take_claim(self, claim_key: str, owner: str, ttl_s: int) -> None:
        """Give a task's claim to ``owner`` (recovery hands a lost task to a new invocation)."""
        ...

    def fail_run(self, status_key: str, errors_key: str, record: bytes, ttl_s: int, channel: str) -> None:
        """Atomically append an error record and set the run status to failed, then publish."""
        ...

    def set_status(self, status_key: str, status: str, ttl_s: int) -> None: ...

    def get_status(self, status_key: str) -> str | None: ...

    def begin(self, status_key: str, started_key: str, inv_id: str, token: str, ttl_s: int, redelivered: bool) -> str:
        """A worker's first step, one round trip: may invocation ``inv_id`` run now?

        ``BEGIN_STOPPED`` unless the run's status is running (it ended, failed, was
        cancelled or lost its state). ``BEGIN_DUPLICATE`` when another delivery of the
        same invocation already started (its id is recorded in the run's ``started_key``
        hash with the ``token`` of its delivery), unless this one is ``redelivered``
        by a platform that saw the first one's worker die (it takes the invocation
        over), or carries the same ``token`` (the platform retrying that delivery,
        e.g. a Ray task after its process died). Else ``BEGIN_RUN``.
        """
        ...

    def read_list(self, key: str) -> list[bytes]: ...

    def publish(self, channel: str, message: bytes) -> None: ...

    def subscribe(self, channel: str) -> Subscription:
        """Start listening on ``channel``; messages published after this returns are kept."""
        ...

    def append_events(self, stream: str, events: Sequence[Mapping[str, Any]], ttl_s: int) -> None:
        """Add events to a stream in one round trip."""
        ...

    def read_events(self, stream: str, after: str = "0", count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Events after id ``after``, oldest first, as ``(id, fields)``."""
        ...

    def read_event_batches(self, stream: str, after: str = "0") -> tuple[list[Sequence[Mapping[str, Any]]], str]:
        """Events after id ``after`` as the batches they were appended in, oldest first, and the id to
        read after next time (``after`` if none).

        :meth:`read_events` without a tuple per event, and without a dict per event where the batch
        holds rows (:class:`fanflow.store.events.EventRows`): recording reads every event of a run,
        tens of thousands for a large DAG.
        """
        ...

    def delete(self, keys: Sequence[str]) -> int:
        """Delete exactly these keys; returns how many existed."""
        ...

    def close(self) -> None: ...
