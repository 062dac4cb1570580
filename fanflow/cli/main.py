"""The ``fanflow`` command.

``fanflow run FILE.py [options] [-- script args]`` runs a workflow script. The
script defines ``main(argv)`` (or ``main()``) returning the sink node, or a
list/tuple of sink nodes; they are computed in one run and the result printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import fanflow
from fanflow.cli.dashboard import dashboard
from fanflow.cli.deploy import register as register_deploy
from fanflow.cli.gateway import register as register_gateway
from fanflow.cli.output import dumps, print_error
from fanflow.cli.plan import register as register_plan
from fanflow.cli.pool import register as register_pool
from fanflow.cli.runs import register as register_runs
from fanflow.cli.script import load_sinks
from fanflow.config import Config
from fanflow.errors import FanflowError

app = typer.Typer(
    name="fanflow",
    help="Run Python DAG workflows on short-lived workers with decentralized scheduling.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
register_runs(app)
register_plan(app)
app.command("dashboard")(dashboard)
register_pool(app)
register_gateway(app)
register_deploy(app)
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"fanflow {fanflow.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """fanflow command line."""


def config_from_options(**options: Any) -> Config:
    """The effective config: fanflow.toml < env < the options given on the command line."""
    return Config.load(**{k: v for k, v in options.items() if v is not None})


def fail(exc: FanflowError) -> None:
    """Print a fanflow error (verbatim: tracebacks hold brackets) without a Python traceback and exit with status 1."""
    print_error(exc)
    raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="Workflow script defining main() -> node(s).")],
    platform: Annotated[str | None, typer.Option(help="threads | processes | http | ray | lambda")] = None,
    store: Annotated[str | None, typer.Option(help="memory:// | redis://host:port/db")] = None,
    planner: Annotated[str | None, typer.Option(help="none | wukong | uniform | critical-path")] = None,
    max_workers: Annotated[int | None, typer.Option(help="Concurrent workers.")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bar.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    requirements: Annotated[
        str | None, typer.Option(help="The workflow's requirements.txt (default: one beside FILE, if any).")
    ] = None,
) -> None:
    """Run a workflow script; arguments after `--` go to the script's main(argv)."""
    beside = Path(file).parent / "requirements.txt"
    if requirements is None and beside.is_file():
        requirements = str(beside)
    try:
        cfg = config_from_options(
            platform=platform,
            store=store,
            planner=planner,
            max_workers=max_workers,
            progress=progress,
            requirements=requirements,
        )
        sinks, single = load_sinks(file, list(ctx.args))
        values = fanflow.compute(*sinks, config=cfg)
    except FanflowError as exc:
        fail(exc)
        return
    result = values[0] if single else list(values)
    if json_output:
        typer.echo(dumps(result))
    else:
        console.print(repr(result) if not isinstance(result, str) else result, highlight=False, markup=False)


@app.command("config")
def show_config() -> None:
    """Print the effective config (fanflow.toml < env), with secrets masked."""
    try:
        cfg = Config.load()
    except FanflowError as exc:
        fail(exc)
        return
    table = Table("key", "value", "meaning")
    docs = cfg.describe()
    for key, value in cfg.display().items():
        table.add_row(key, repr(value), docs[key])
    console.print(table)


def main() -> None:  # pragma: no cover - console script entry
    app()
