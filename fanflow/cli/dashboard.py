"""``fanflow dashboard``: serve the live dashboard and run replay on this machine.

It reads the run store (``--store``: live events of runs in flight; a shared
store such as Redis shows runs of other processes) and the metadata store
(``--metadata``: runs in flight and recorded history). Both default to the
effective config (``fanflow.toml`` < ``FANFLOW_*``).

It binds 127.0.0.1 unless told otherwise, and refuses any other address without
``--token``: run history holds task names, errors and tracebacks.
"""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from fanflow.cli.output import console, print_error
from fanflow.config import Config, mask_url
from fanflow.errors import FanflowError, MissingExtraError


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before the URL is printed, so a port in use fails first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise FanflowError(
            f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}. "
            "Another program (maybe another dashboard) uses that port: "
            "pass --port <other>, or --port 0 for any free one"
        ) from None
    return sock


def dashboard(
    store: Annotated[str | None, typer.Option(help="Run store URL, for live events (default: the config's).")] = None,
    metadata: Annotated[
        str | None, typer.Option(help="Metadata store URL, for runs and history (default: from the config).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to serve on.")] = 8787,
    token: Annotated[
        str | None, typer.Option(envvar="FANFLOW_DASHBOARD_TOKEN", help="Secret every request must carry.")
    ] = None,
) -> None:
    """Serve the live dashboard and run replay (Ctrl-C to stop)."""
    try:
        import uvicorn

        from fanflow.dashboard.app import LOOPBACK_NAMES, check_bind, create_app, is_loopback
        from fanflow.dashboard.source import Source
        from fanflow.store import open_store
        from fanflow.store.metadata import is_disabled, open_metadata

        check_bind(host, token)
        cfg = Config.load(**{k: v for k, v in (("store", store), ("metadata", metadata)) if v is not None})
        source = Source(open_store(cfg.store), None if is_disabled(cfg.metadata) else open_metadata(cfg.metadata))
        app = create_app(source, token=token, allowed_hosts=LOOPBACK_NAMES if is_loopback(host) else None)
        sock = _bind(host, port)
    except ImportError as exc:
        print_error(MissingExtraError("fanflow dashboard", "dashboard", exc.name))
        raise typer.Exit(1) from None
    except FanflowError as exc:
        print_error(exc)
        raise typer.Exit(1) from None
    shown = f"[{host}]" if ":" in host else host
    query = "?token=<token>" if token else ""
    console(stderr=True).print(
        f"fanflow dashboard on http://{shown}:{sock.getsockname()[1]}/{query}  (store {mask_url(cfg.store)}, "
        f"metadata {mask_url(cfg.metadata)})"
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    server.run(sockets=[sock])
