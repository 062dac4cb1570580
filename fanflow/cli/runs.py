"""``fanflow runs list|show|export|gc`` and ``fanflow report``: the recorded history of runs.

Every command reads the metadata store named by ``--metadata`` (default: the
``metadata`` key of the effective config, i.e. ``fanflow.toml`` < ``FANFLOW_*``).
A run id may be given in full, as a unique prefix, or as ``last`` for the
newest run. Nothing here imports matplotlib until ``report`` draws.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Column, Table
from rich.text import Text

from fanflow.cli.output import console, dumps, iso_time, print_error
from fanflow.config import Config
from fanflow.errors import FanflowError
from fanflow.metrics.records import RunMetrics, TaskRecord
from fanflow.store.metadata import MetadataStore, RunNotFoundError, open_metadata

runs_app = typer.Typer(help="Recorded runs: list, show, export, gc.", no_args_is_help=True)


def _console(stderr: bool = False) -> Console:
    """A console made per command, so it sizes itself to the terminal (or ``COLUMNS``) of that call."""
    return console(stderr)


MetadataOption = Annotated[
    str | None, typer.Option("--metadata", help="Metadata store URL (default: from fanflow.toml / env).")
]
RunIdArgument = Annotated[str, typer.Argument(help="Run id, a unique prefix of one, or 'last'.")]


def _fail(exc: FanflowError) -> None:
    print_error(exc)
    raise typer.Exit(1)


def _store(metadata: str | None) -> MetadataStore:
    return open_metadata(metadata or Config.load().metadata)


def _resolve(store: MetadataStore, run_id: str) -> str:
    """The full id of the run ``run_id`` names (full id, unique prefix, or ``last``)."""
    if run_id == "last":
        newest = store.runs(limit=1)
        if not newest:
            raise RunNotFoundError("no runs are recorded yet; run a workflow first")
        return str(newest[0]["run_id"])
    matches = [r["run_id"] for r in store.runs() if r["run_id"].startswith(run_id)]
    if run_id in matches or len(matches) == 1:
        return run_id if run_id in matches else str(matches[0])
    if matches:
        raise RunNotFoundError(f"{run_id!r} matches {len(matches)} runs; give more of the id")
    raise RunNotFoundError(f"no recorded run matches {run_id!r}; see `fanflow runs list`")


def load(metadata: str | None, run_id: str) -> RunMetrics:
    """The metrics of the run ``run_id`` names, from the store ``metadata`` (or the config's)."""
    store = _store(metadata)
    return RunMetrics.from_stored(store.load_run(_resolve(store, run_id)))


@runs_app.command("list")
def list_runs(
    metadata: MetadataOption = None,
    limit: Annotated[int, typer.Option(help="Show at most this many runs, newest first.")] = 20,
    signature: Annotated[str | None, typer.Option(help="Only runs of the DAG with this signature.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the run records as JSON.")] = False,
) -> None:
    """List recorded runs, newest first."""
    from fanflow.metrics.report import human_duration

    try:
        docs = _store(metadata).runs(signature=signature, limit=limit)
    except FanflowError as exc:
        _fail(exc)
        return
    if json_output:
        typer.echo(dumps([{**d, "submitted": iso_time(d["submitted_at"])} for d in docs]))
        return
    widest = max((len(d["run_id"]) for d in docs), default=6)
    table = Table(
        Column("run id", no_wrap=True, min_width=widest),
        "workflow",
        "status",
        "platform",
        Column("submitted", no_wrap=True),
        Column("makespan", justify="right"),
        Column("tasks", justify="right"),
        Column("workers", justify="right"),
        "error",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for d in docs:
        table.add_row(
            d["run_id"],
            d.get("workflow") or d["sink"],
            d["status"],
            d.get("platform") or "-",
            iso_time(d["submitted_at"]),
            human_duration(d["makespan_s"]),
            f"{d['tasks_finished']}/{d['tasks']}",
            str(d["workers"]),
            (d.get("error") or "").split("\n")[0][:80],
        )
    _console().print(table)


@runs_app.command("show")
def show(
    run_id: RunIdArgument,
    metadata: MetadataOption = None,
    top: Annotated[int, typer.Option(help="How many of the slowest tasks to show.")] = 10,
) -> None:
    """Summary of a run, its actual critical path and its slowest tasks."""
    from fanflow.metrics.report import TASK_HEADER, summary_rows, task_rows

    try:
        metrics = load(metadata, run_id)
    except FanflowError as exc:
        _fail(exc)
        return
    summary = Table("field", Column("value", overflow="fold"), title="Run", title_justify="left")
    for field, value in summary_rows(metrics):
        summary.add_row(field, str(value))
    _console().print(summary)
    for title, ids in (
        ("Critical path (actual)", metrics.critical_path()),
        (f"Slowest {top} tasks", [t.task for t in metrics.slowest(top)]),
    ):
        table = Table(*(Column(h, overflow="fold") for h in TASK_HEADER), title=title, title_justify="left")
        for row in task_rows(metrics, ids):
            table.add_row(*row)
        _console().print(table)


@runs_app.command("errors")
def errors(
    run_id: RunIdArgument,
    metadata: MetadataOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:
    """The error records of a failed run: task, exception, message, remote traceback, worker, attempt."""
    try:
        store = _store(metadata)
        full_id = _resolve(store, run_id)
    except FanflowError as exc:
        _fail(exc)
        return
    started = store.load_started(full_id) or {}
    records = started.get("errors") or []
    if not records:
        run = {r["run_id"]: r for r in store.runs()}.get(full_id, {})
        if run.get("error"):
            records = [{"task": None, "exc_type": "", "message": run["error"], "traceback": ""}]
    if json_output:
        typer.echo(json.dumps(records, indent=2))
        return
    if not records:
        _console().print(f"run {full_id} has no error records (it did not fail, or they expired with key_ttl_s)")
        return
    for record in records:
        title = Text(f"{record.get('task') or 'run'}: {record.get('exc_type') or 'error'}")
        details = [f"message: {record.get('message', '')}"]
        for key in ("worker", "attempt", "time"):
            if record.get(key) is not None:
                value = iso_time(float(record[key])) if key == "time" else record[key]
                details.append(f"{key}: {value}")
        body = "\n".join(details) + ("\n\n" + record["traceback"].rstrip() if record.get("traceback") else "")
        _console().print(Panel(body, title=title, title_align="left", border_style="red"))


@runs_app.command("export")
def export(
    run_id: RunIdArgument,
    metadata: MetadataOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Everything, events included, as JSON (default).")] = True,
    csv_output: Annotated[bool, typer.Option("--csv", help="One CSV row per task instead.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file, not stdout.")] = None,
) -> None:
    """Export what was recorded of a run: JSON (run, tasks, workers, events) or a CSV of tasks."""
    try:
        metrics = load(metadata, run_id)
    except FanflowError as exc:
        _fail(exc)
        return
    text = _tasks_csv(metrics) if csv_output or not json_output else metrics.to_json()
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text)
        _console(stderr=True).print(f"wrote {output}")


def _tasks_csv(metrics: RunMetrics) -> str:
    """Task records as CSV; inputs become their total, fetched and local byte counts."""
    buf = io.StringIO()
    columns = [f.name for f in dataclasses.fields(TaskRecord) if f.name not in ("inputs", "deps")]
    writer = csv.writer(buf)
    writer.writerow([*columns, "deps", "in_bytes", "fetched_bytes", "duration_s"])
    for t in metrics.tasks:
        deps = " ".join(map(str, t.deps))
        writer.writerow([*(getattr(t, c) for c in columns), deps, t.in_bytes, t.fetched_bytes, t.duration_s])
    return buf.getvalue()


@runs_app.command("gc")
def gc(
    metadata: MetadataOption = None,
    keep: Annotated[
        int | None, typer.Option(min=0, help="Runs to keep (default: retention_runs from the config).")
    ] = None,
) -> None:
    """Delete all but the newest runs (running summaries are kept)."""
    try:
        keep_runs = keep if keep is not None else Config.load().retention_runs
        removed = _store(metadata).gc(keep_runs)
    except FanflowError as exc:
        _fail(exc)
        return
    _console().print(f"removed {len(removed)} run(s), kept the newest {keep_runs}")


def report(
    run_id: RunIdArgument,
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path("report.html"),
    metadata: MetadataOption = None,
) -> None:
    """Write a self-contained HTML report of a run: errors, timeline per process, transfers, DAG by duration."""
    from fanflow.metrics.report import render

    try:
        store = _store(metadata)
        full_id = _resolve(store, run_id)
        metrics = RunMetrics.from_stored(store.load_run(full_id))
        page = render(metrics, (store.load_started(full_id) or {}).get("errors") or None)
    except FanflowError as exc:
        _fail(exc)
        return
    output.write_text(page)
    _console().print(f"wrote {output}")


def register(app: typer.Typer) -> None:
    """Add ``runs`` and ``report`` to the ``fanflow`` command."""
    app.add_typer(runs_app, name="runs")
    app.command("report")(report)
