"""The :class:`Platform` protocol: how workers are invoked.

A platform only moves invocations; every platform ends in a call of
:func:`fanflow.worker.handle`. In-process platforms (``threads``) get invocation
objects and hand them over as they are; the others get signed payload bytes.

Liveness: a platform that can tell it no longer runs what it was given (its
host stopped, its shared pool is gone) may define ``check_serving()``, which
raises :class:`fanflow.PlatformError` saying so; a waiting client calls it
every second or so. A platform that refuses or loses an invocation tells the
invocation's run with :func:`fanflow.platforms.lost.fail_invocation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

Handler = Callable[[Any], Any]
"""``fanflow.worker.handle``: given to platforms by the layer above, never imported up."""


class Platform(Protocol):
    name: str
    in_process: bool
    """True when invocations are passed as objects within this process (no payload bytes)."""

    options: dict[str, Any]
    """What a worker on this platform needs to invoke further workers (shipped in payloads)."""

    def invoke(self, invocations: Sequence[Any]) -> None:
        """Start one worker per item, asynchronously; never blocks on the work itself."""
        ...

    def close(self) -> None:
        """Release what the platform holds (threads, processes, connections)."""
        ...
