"""The :class:`Platform` protocol: how workers are invoked.

A platform only moves invocations; every platform ends in a call of
:func:`fanflow.worker.handle`. In-process platforms (``threads``) get invocation
objects and hand them over as they are; the others get signed payload bytes.
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
