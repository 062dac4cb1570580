"""Client layer: build, ship, start, wait, fetch and clean up runs."""

from fanflow.client.run import Run
from fanflow.client.session import RunFuture, Session, gather, session

__all__ = ["Run", "RunFuture", "Session", "gather", "session"]
