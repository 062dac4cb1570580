"""``fanflow dashboard``: serve the live dashboard and run replay on this machine.

It reads the run store (``--store``: live events of runs in flight; a shared
store such as Redis shows runs of other processes) and the metadata store
(``--metadata``: runs in flight and recorded history). Both default to the
effective config (``fanflow.toml`` < ``FANFLOW_*``).

It binds 127.0.0.1 unless told otherwise, and refuses any other address without
``--token``: run history holds task names, errors and tracebacks.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from fanflow.config import Config, mask_url
from fanflow.errors import FanflowError


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
    err = Console(stderr=True)
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
    except ImportError as exc:
        err.print(f"[bold red]error:[/] the dashboard needs its extra: pip install 'fanflow[dashboard]' ({exc})")
        raise typer.Exit(1) from None
    except FanflowError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    shown = f"[{host}]" if ":" in host else host
    query = "?token=<token>" if token else ""
    err.print(
        f"fanflow dashboard on http://{shown}:{port}/{query}  (store {mask_url(cfg.store)}, "
        f"metadata {mask_url(cfg.metadata)})",
        highlight=False,
        markup=False,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="off")
