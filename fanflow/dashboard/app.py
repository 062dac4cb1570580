"""The dashboard's web app (FastAPI): one static page, a JSON API, and a server-sent event stream per run.

The page is hand-written HTML/JS/CSS under ``static/`` plus vendored graph
libraries, so it works offline and loads nothing from the network. It routes
with the URL fragment (``#/run/<id>``), so the server has one page to serve.

Live updates flow one way: workers append events to the run's stream in the
run store; :func:`stream` polls that stream every :data:`POLL_S` seconds and
pushes each new batch to the browser as an SSE message whose id is the stream
id, so a reconnecting browser (``Last-Event-ID``) resumes where it stopped.
When the run store stops saying "running", the stream waits for the run's
records to reach the metadata store and sends ``end``; the page then reloads
the run as a finished one (critical path, errors, replay). SSE rather than
websockets: one direction is all that is needed, and it reconnects by itself.

Security: the server binds to loopback by default. A loopback server checks the
``Host`` header (so a web page cannot reach it by DNS rebinding); binding any
other address needs a token (:func:`check_bind`), and every request must then
carry it: ``Authorization: Bearer``, ``X-Fanflow-Token``, ``?token=`` or the
cookie the page sets when it is opened with ``?token=``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from fanflow.dashboard.source import DEFAULT_LIMIT, STATUSES, LiveFeed, NotFoundError, Source
from fanflow.errors import FanflowError

STATIC = Path(__file__).parent / "static"
POLL_S = 0.2
"""How often a live stream reads the run's event stream."""
STATUS_EVERY_S = 1.0
"""How often a live stream checks whether the run ended."""
HEARTBEAT_S = 15.0
UNRECORDED_AFTER_S = 20.0
"""A run that stopped running and is still not recorded after this long is reported as ``unrecorded``."""
COOKIE = "fanflow_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class DashboardError(FanflowError):
    """The dashboard cannot start as asked."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise DashboardError(
            f"refusing to serve the dashboard on {host}: anyone who can reach that address could read your runs. "
            "Pass --token <secret> (every request must then carry it), or bind 127.0.0.1"
        )


def _json(content: Any, status: int = 200) -> Response:
    return Response(json.dumps(content, default=str), status_code=status, media_type="application/json")


def _token_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-fanflow-token") or request.query_params.get("token") or request.cookies.get(COOKIE)


def create_app(source: Source, token: str | None = None, allowed_hosts: Iterable[str] | None = None) -> FastAPI:
    """The dashboard app over ``source``.

    ``token``: when set, every request must carry it. ``allowed_hosts``: host
    names the ``Host`` header may name (None: any), e.g. the loopback names.
    """
    app = FastAPI(title="fanflow dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if hosts is not None:
            name = (request.url.hostname or "").lower().strip("[]")
            if name not in hosts:
                return _json({"detail": f"host {name!r} is not served here; open the dashboard by its address"}, 400)
        if token is not None:
            given = _token_of(request)
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                return _json(
                    {"detail": "this dashboard needs its token: open it as /?token=<token> or send a Bearer token"},
                    401,
                )
        response = await call_next(request)
        if token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health")
    def health() -> Response:
        """What this dashboard reads."""
        return _json({"ok": True, "store": source.store_url, "metadata": source.metadata_url, "time": time.time()})

    @app.get("/api/runs")
    def runs(
        dag: str | None = None,
        signature: str | None = None,
        status: str | None = None,
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=10_000),
    ) -> Response:
        """Runs in flight and recorded, newest first, filtered by DAG (sink) name, signature prefix, status."""
        if status and status not in STATUSES:
            return _json({"detail": f"unknown status {status!r}; use one of {', '.join(STATUSES)}"}, 400)
        return _json({"runs": source.runs(dag=dag, signature=signature, status=status, limit=limit)})

    @app.get("/api/runs/{run_id}")
    def run(run_id: str) -> Response:
        """A run's header, DAG, critical path, task figures and errors."""
        payload = source.run(run_id)
        payload["now"] = time.time()
        return _json(payload)

    @app.get("/api/runs/{run_id}/events")
    def events(run_id: str, after: str = "0", limit: int | None = Query(None, ge=1)) -> Response:
        """Events after ``after`` (a stream id, or a position for a recorded run); ``limit`` caps a recorded run's."""
        return _json(source.events(run_id, after, limit))

    @app.get("/api/runs/{run_id}/errors")
    def errors(run_id: str) -> Response:
        """Error records of a run, tracebacks included."""
        return _json({"errors": source.run(run_id)["errors"]})

    @app.get("/api/runs/{run_id}/stream")
    async def stream(run_id: str, request: Request, after: str = "0") -> StreamingResponse:
        """Server-sent events: ``events`` batches while the run is in flight, then ``end``."""
        feed = await asyncio.to_thread(source.live_feed, run_id)  # raises NotFoundError: a 404 before streaming
        start = request.headers.get("last-event-id") or after

        async def messages() -> AsyncIterator[str]:
            yield "retry: 1000\n\n"
            if feed is None:
                yield _sse("end", {"status": await asyncio.to_thread(source.status, run_id)})
                return
            cursor, next_check, last_sent = start, 0.0, time.monotonic()
            stopped_at: float | None = None
            while True:
                batch = await asyncio.to_thread(feed.read, cursor)
                if batch:
                    cursor = batch[-1][0]
                    last_sent = time.monotonic()
                    yield _sse("events", {"events": [e for _, e in batch], "now": time.time()}, cursor)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + STATUS_EVERY_S
                    if not await asyncio.to_thread(feed.running):
                        stopped_at = stopped_at or now
                        ended = await _ended(source, feed, now - stopped_at)
                        if ended is not None:
                            yield _sse("end", {"status": ended})
                            return
                if now - last_sent >= HEARTBEAT_S:
                    last_sent = now
                    yield _sse("tick", {"now": time.time()})
                await asyncio.sleep(POLL_S)

        return StreamingResponse(
            messages(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @app.get("/api/functions")
    def functions() -> Response:
        """Per task function, its running summaries by memory size."""
        return _json({"functions": source.functions()})

    @app.get("/api/functions/executions")
    def executions(identity: str) -> Response:
        """Kept executions of one function: time, input bytes, memory, run (the page draws its plots)."""
        return _json({"identity": identity, "executions": source.executions(identity)})

    return app


async def _ended(source: Source, feed: LiveFeed, stopped_for: float) -> str | None:
    """The final status once a run that stopped running is over for the dashboard, else None (keep waiting).

    A run whose store this dashboard cannot see is followed until it is recorded, however long that takes.
    """
    if await asyncio.to_thread(source.is_recorded, feed.run_id):
        return await asyncio.to_thread(source.status, feed.run_id)
    if source.metadata is None and feed.ended_unrecorded():
        return await asyncio.to_thread(source.status, feed.run_id)
    if feed.store is not None and stopped_for >= UNRECORDED_AFTER_S:
        return "unrecorded"
    return None


def _sse(event: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"
