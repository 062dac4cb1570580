"""The dashboard inside a user's process, for ``compute(..., dashboard=True)`` and ``submit``.

One server per process, started on first use in a daemon thread and kept for
the life of the process, so several runs share one page. It binds loopback
only (no token needed, ``Host`` checked), on :data:`PORT` when free, else on
any free port. It reads the store and metadata store of the run it was first
opened for; runs opened on it are also kept in memory
(:data:`fanflow.dashboard.tracking.LOCAL`) with their own store objects, so a
``memory://`` run shows live.

Opening a browser is best effort: on a machine without one the URL is still
printed, and nothing here ever fails the run.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
import webbrowser
from typing import TYPE_CHECKING

from fanflow.dashboard.tracking import LOCAL
from fanflow.errors import MissingExtraError

if TYPE_CHECKING:
    from fanflow.client.run import Run
    from fanflow.config import Config

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PORT = 8787
START_TIMEOUT_S = 10.0

_lock = threading.Lock()
_url: str | None = None


def _socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    return sock


def ensure_server(config: Config) -> str:
    """The base URL of this process's dashboard, started on the stores of ``config`` if none runs yet."""
    global _url
    with _lock:
        if _url is not None:
            return _url
        try:
            import uvicorn

            from fanflow.dashboard.app import LOOPBACK_NAMES, create_app
        except ModuleNotFoundError as exc:
            raise MissingExtraError("the dashboard (dashboard=True)", "dashboard", exc.name) from exc
        from fanflow.dashboard.source import Source
        from fanflow.store import open_store
        from fanflow.store.metadata import is_disabled, open_metadata

        metadata = None if is_disabled(config.metadata) else open_metadata(config.metadata)
        app = create_app(Source(open_store(config.store), metadata, LOCAL), allowed_hosts=LOOPBACK_NAMES)
        try:
            sock = _socket(PORT)
        except OSError:
            sock = _socket(0)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fanflow-dashboard", daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        _url = f"http://{HOST}:{sock.getsockname()[1]}/"
        return _url


def open_for_run(run: Run) -> None:
    """Register ``run``, make sure the server is up, print the run's URL and try to open a browser."""
    try:
        LOCAL.add(run)
        url = f"{ensure_server(run.config)}#/run/{run.run_id}"
    except Exception as exc:
        log.warning("could not start the fanflow dashboard: %s", exc)
        return
    sys.stderr.write(f"fanflow dashboard: {url}\n")
    try:
        webbrowser.open(url)
    except Exception as exc:
        log.info("could not open a browser on the dashboard: %s", exc)
