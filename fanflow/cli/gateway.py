"""``fanflow gateway``: serve the worker over HTTP, for Knative, OpenFaaS, Cloud Run or plain hosts.

The listening port is ``--port``, else ``$PORT`` (set by Knative and Cloud Run),
else 8080. Payloads are verified with ``FANFLOW_SECRET`` (or ``secret`` in
``fanflow.toml``), which clients must share; it is never printed. SIGTERM and
Ctrl-C drain the gateway: health checks turn 503, the server stops and running
workers get a grace period.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Annotated

import typer
from rich.console import Console

from fanflow.cli.output import print_error
from fanflow.config import Config, check_pool_name
from fanflow.errors import ConfigError, FanflowError, MissingExtraError


def gateway(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",
    port: Annotated[int | None, typer.Option(help="Port (default: $PORT, else 8080).")] = None,
    pool: Annotated[str | None, typer.Option(help="Queue name; gateways given the same one share their work.")] = None,
    max_workers: Annotated[int | None, typer.Option(help="Worker processes at most (default: CPU count).")] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="Seconds before an idle worker process exits.")] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="redis://... whose queue to serve from the start (default: the config's Redis store, if any), so "
            "a gateway started again runs what it held; other stores are served as payloads name them."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log requests and worker starts.")] = False,
) -> None:
    """Serve workers over HTTP: POST /invoke (signed payload, answers 202), GET /healthz."""
    err = Console(stderr=True)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if pool is not None:
            check_pool_name(pool, "--pool")
        try:  # here, not at the top: `fanflow --help` must work without the http extra
            from fanflow.platforms.http.gateway import Gateway
        except ModuleNotFoundError as exc:
            raise MissingExtraError("fanflow gateway", "http", exc.name) from exc
        overrides = {"max_workers": max_workers, "idle_timeout_s": idle_timeout, "store": store}
        cfg = Config.load(**{k: v for k, v in overrides.items() if v is not None})
        if cfg.secret is None:
            raise ConfigError(
                "the gateway verifies payloads with a secret: set FANFLOW_SECRET (or `secret` in fanflow.toml) "
                "here and in the clients"
            )
        server = Gateway(
            cfg.secret.encode(),
            host=host,
            port=port if port is not None else int(os.environ.get("PORT", "8080")),
            pool=pool,
            max_workers=cfg.max_workers,
            idle_timeout_s=cfg.idle_timeout_s,
            stores=[cfg.store] if cfg.shared_store else [],
            bind_cpus=cfg.bind_cpus,
        )
        server.open_stores()
    except (FanflowError, OSError, ValueError) as exc:
        print_error(exc)
        raise typer.Exit(1) from None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    err.print(f"fanflow gateway on {host}:{server.port}, queue {server.pool!r}; Ctrl-C to stop", highlight=False)
    server.serve()
    err.print(f"stopped after accepting {server.accepted} invocations", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``gateway`` to the ``fanflow`` command."""
    app.command("gateway")(gateway)
