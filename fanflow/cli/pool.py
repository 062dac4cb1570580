"""``fanflow worker-pool``: a long-lived pool of worker processes that clients share.

Clients reach it by name (``Config(platform="processes", pool=NAME, secret=...)``)
and queue invocations in Redis; the pool runs them on warm worker processes. It
verifies payloads with the secret from ``FANFLOW_SECRET`` (or ``fanflow.toml``),
so clients must sign with the same one; the secret is never printed.
"""

from __future__ import annotations

import logging
import signal
from typing import Annotated

import typer
from rich.console import Console

from fanflow.cli.output import print_error
from fanflow.config import Config, check_pool_name, mask_url
from fanflow.errors import ConfigError, FanflowError


def worker_pool(
    name: Annotated[str, typer.Option(help="Pool name; clients use it as config.pool.")] = "default",
    store: Annotated[str | None, typer.Option(help="redis://host:port/db (default: from fanflow.toml / env).")] = None,
    max_workers: Annotated[int | None, typer.Option(help="Worker processes at most (default: CPU count).")] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="Seconds before an idle worker process exits.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every worker start and stop.")] = False,
) -> None:
    """Run a shared pool of worker processes until interrupted (Ctrl-C or SIGTERM)."""
    from fanflow.platforms.processes import PoolHost  # here, so that other commands do not load the pool
    from fanflow.platforms.processes.pool import queue_key
    from fanflow.store import open_store
    from fanflow.store.redis import RedisStore

    err = Console(stderr=True)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        check_pool_name(name, "--name")
        overrides = {"store": store, "max_workers": max_workers, "idle_timeout_s": idle_timeout}
        cfg = Config.load(**{k: v for k, v in overrides.items() if v is not None})
        if cfg.secret is None:
            raise ConfigError(
                "the pool needs a secret to verify payloads: set FANFLOW_SECRET (or `secret` in fanflow.toml) "
                "here and in the clients that use it"
            )
        redis_store = open_store(cfg.store)
        if not isinstance(redis_store, RedisStore):
            raise ConfigError(f"a worker pool takes invocations from Redis: pass --store redis://..., not {cfg.store}")
        host = PoolHost(
            redis_store,
            name,
            cfg.secret.encode(),
            max_workers=cfg.max_workers,
            idle_timeout_s=cfg.idle_timeout_s,
            advertise=True,
            bind_cpus=cfg.bind_cpus,
        )
    except FanflowError as exc:
        print_error(exc)
        raise typer.Exit(1) from None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: host.stop())
    err.print(
        f"fanflow worker pool {name!r}: up to {host.max_workers} worker processes, queue "
        f"{queue_key(name)} on {mask_url(cfg.store)}; Ctrl-C to stop",
        highlight=False,
    )
    host.serve()
    err.print(f"stopped; {host.stats}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``worker-pool`` to the ``fanflow`` command."""
    app.command("worker-pool")(worker_pool)
