"""``fanflow plan FILE.py``: plan a workflow script without running it, print the plan, draw the DAG.

The plan is what a run with the same config would use: the same planner, the
same history (``config.metadata``), the same worker cap. Small DAGs get one row
per task; DAGs over :data:`PER_TASK_ROWS` tasks get one row per function.

With no planner (``none``, or ``wukong`` without optimizations) runs follow the
worker loop's own policy and nothing is planned; the command then predicts that
policy (default memory, one worker per fan-out branch) from the history, so
``-o`` always draws the DAG with predicted times. The picture has a legend and
the predicted critical path in red.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from fanflow.cli.output import console as make_console
from fanflow.cli.output import print_error
from fanflow.cli.script import load_sinks
from fanflow.config import Config
from fanflow.dag import draw
from fanflow.dag.graph import DAG
from fanflow.errors import FanflowError
from fanflow.metrics.report import human_bytes, human_duration

if TYPE_CHECKING:
    from fanflow.planning import Plan

PER_TASK_ROWS = 40
"""Above this many tasks the table summarizes per function."""

_MEMORY_COLORS = {512: "#d8f3dc", 1024: "#95d5b2", 1769: "#52b788", 3008: "#1b4332"}
_WORKER_PALETTE = ("#8ecae6", "#ffb703", "#90be6d", "#f28482", "#b8b8ff", "#f4a261", "#84a59d", "#e5989b")


def _memory_color(memory_mb: int) -> str:
    if memory_mb in _MEMORY_COLORS:
        return _MEMORY_COLORS[memory_mb]
    nearest = min(_MEMORY_COLORS, key=lambda m: abs(m - memory_mb))
    return _MEMORY_COLORS[nearest]


def _seconds(s: float) -> str:
    return f"{s * 1e3:.3g}ms" if s < 1 else f"{s:.3g}s"


def colors_of(dag: DAG, plan: Plan, by: str) -> tuple[dict[int, str], dict[int, str], dict[str, str]]:
    """Per-task fill colours and labels for drawing the plan, ``by`` "memory" or "worker", and the legend.

    Labels carry the predicted start and finish: ``name 1769MB 0.12s→0.31s``.
    """
    colors: dict[int, str] = {}
    labels: dict[int, str] = {}
    legend: dict[str, str] = {}
    memory = plan.assignment.memory_mb if plan.assignment else [0] * len(dag)
    sim = plan.simulation
    workers = sim.worker if sim else [0] * len(dag)
    for t in range(len(dag)):
        when = f" {_seconds(sim.start[t])}→{_seconds(sim.finish[t])}" if sim else ""
        if by == "memory":
            colors[t] = _memory_color(memory[t])
            labels[t] = f"{dag.name(t)} {memory[t]}MB{when}"
            shade = "" if memory[t] in _MEMORY_COLORS else " (nearest shade)"
            legend[f"{memory[t]} MB{shade}"] = colors[t]
        else:
            colors[t] = _WORKER_PALETTE[workers[t] % len(_WORKER_PALETTE)]
            labels[t] = f"{dag.name(t)} w{workers[t]}{when}"
            if len(legend) < len(_WORKER_PALETTE):
                legend[f"worker w{workers[t]}"] = colors[t]
    if by == "worker" and len(set(workers)) > len(_WORKER_PALETTE):
        legend[f"(colours repeat every {len(_WORKER_PALETTE)} workers)"] = "#ffffff"
    legend["predicted critical path (outline)"] = "#d62828"
    legend["labels: task, memory or worker, predicted start→finish"] = "#ffffff"
    return colors, labels, dict(sorted(legend.items(), key=lambda kv: kv[0].startswith(("predicted", "labels", "("))))


def _with_interval(plan: Plan) -> str:
    """``0.42 s (p10–p90 0.38 s–0.51 s)``: the prediction and the interval the actual makespan should fall in."""
    text = human_duration(plan.predicted_makespan_s)
    if plan.predicted_p10_s is not None and plan.predicted_p90_s is not None:
        text += f" (p10–p90 {human_duration(plan.predicted_p10_s)}–{human_duration(plan.predicted_p90_s)})"
    return text


def _upload(dag: DAG, up_bytes: float, t: int, asked: bool) -> str:
    """The upload column: ``no`` where the simulated run keeps the output out of the store, ``if needed``
    where the plan asks for delayed I/O that only the worker can decide (it may claim every reader), else
    ``yes``."""
    if up_bytes <= 0 and not dag.is_sink(t):
        return "no"
    return "if needed" if asked else "yes"


def _tables(dag: DAG, plan: Plan) -> list[Table]:
    sim, costs, assignment = plan.simulation, plan.costs, plan.assignment
    assert sim is not None and costs is not None and assignment is not None
    defaults = set(plan.defaults)
    if len(dag) <= PER_TASK_ROWS:
        tasks = Table(
            "task",
            Column("memory", justify="right"),
            "worker",
            Column("start", justify="right"),
            Column("finish", justify="right"),
            "upload",
            "from",
            title="Tasks",
            title_justify="left",
        )
        for t in range(len(dag)):
            note = plan.annotations.get(t, {})
            tasks.add_row(
                dag.name(t),
                f"{assignment.memory_mb[t]} MB",
                f"w{sim.worker[t]} ({note.get('worker', '-')})",
                human_duration(sim.start[t]),
                human_duration(sim.finish[t]),
                _upload(dag, sim.up_bytes[t], t, note.get("upload") is False),
                "defaults" if t in defaults else "history",
            )
    else:
        by_function: dict[str, list[int]] = defaultdict(list)
        for t in range(len(dag)):
            by_function[dag.task(t).name].append(t)
        tasks = Table(
            "function",
            Column("tasks", justify="right"),
            "memory (tasks)",
            Column("workers", justify="right"),
            Column("mean duration", justify="right"),
            Column("from defaults", justify="right"),
            title="Per function",
            title_justify="left",
        )
        for name, ids in by_function.items():
            mems = Counter(assignment.memory_mb[t] for t in ids)
            tasks.add_row(
                name,
                str(len(ids)),
                ", ".join(f"{m} MB ({c})" for m, c in sorted(mems.items())),
                str(len({sim.worker[t] for t in ids})),
                human_duration(sum(sim.duration[t] for t in ids) / len(ids)),
                str(sum(t in defaults for t in ids)),
            )
    summary = Table("field", Column("value", overflow="fold"), title="Plan", title_justify="left")
    summary.add_row("planner", plan.planner)
    summary.add_row("tasks / workers", f"{len(dag)} / {sim.workers}")
    summary.add_row("predicted makespan", _with_interval(plan))
    if plan.calibration != 1.0:
        summary.add_row("calibration from past runs", f"×{plan.calibration:.3g} ({plan.kind} plans)")
    if plan.best_makespan_s is not None and plan.target_makespan_s is not None:
        summary.add_row(
            "best case / target", f"{human_duration(plan.best_makespan_s)} / {human_duration(plan.target_makespan_s)}"
        )
    summary.add_row("predicted cost", f"{plan.predicted_gb_s:.4g} GB-s")
    if plan.uniform_makespan_s is not None and plan.uniform_gb_s is not None:
        summary.add_row(
            "uniform at the largest size",
            f"{human_duration(plan.uniform_makespan_s)}, {plan.uniform_gb_s:.4g} GB-s (the plan stays within +5%)",
        )
    summary.add_row("predicted bytes moved", human_bytes(sim.bytes_moved))
    summary.add_row("history", "used" if plan.used_history else "none (defaults)")
    summary.add_row("tasks predicted from defaults", f"{len(defaults)} / {len(dag)}")
    summary.add_row("planning time", human_duration(plan.planning_s))
    path = " -> ".join(dag.name(t) for t in sim.critical_path[:20])
    more = f" ... ({len(sim.critical_path)} tasks)" if len(sim.critical_path) > 20 else ""
    summary.add_row("critical path", path + more)
    return [summary, tasks]


def plan_command(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="Workflow script defining main() -> node(s).")],
    planner: Annotated[str | None, typer.Option(help="none | wukong | uniform | critical-path")] = None,
    sla: Annotated[str | None, typer.Option(help="mean | p50..p99")] = None,
    slack: Annotated[float | None, typer.Option(help="critical-path: allowed makespan over the best case")] = None,
    optimizations: Annotated[str | None, typer.Option(help="clustering,delayed-io,preload,prewarm or none")] = None,
    platform: Annotated[str | None, typer.Option(help="platform the plan is for (sets the worker cap)")] = None,
    store: Annotated[str | None, typer.Option(help="store URL (needed with --platform processes)")] = None,
    metadata: Annotated[str | None, typer.Option(help="metadata store URL with the history")] = None,
    color: Annotated[str, typer.Option(help="colour the picture by memory or worker")] = "memory",
    output: Annotated[str | None, typer.Option("-o", "--output", help="DAG picture (.svg/.png/.html)")] = None,
) -> None:
    """Plan a workflow script (no run) and print it; arguments after `--` go to the script's main(argv)."""
    from fanflow.planning import make_plan  # here: the planners are not loaded for other commands or --help

    console = make_console()
    try:
        if color not in ("memory", "worker"):
            raise FanflowError(f"--color {color!r}: use memory or worker")
        options = dict(
            planner=planner,
            sla=sla,
            slack=slack,
            optimizations=optimizations,
            platform=platform,
            store=store,
            metadata=metadata,
        )
        cfg = Config.load(**{k: v for k, v in options.items() if v is not None})
        sinks, _ = load_sinks(file, list(ctx.args))
        dag = DAG.from_sinks(sinks)
        plan = make_plan(dag, cfg)
        if plan.simulation is None and len(dag):
            console.print(
                f"planner {cfg.planner!r} makes no plan: workers follow WUKONG's defaults. "
                "Predicted for those defaults:"
            )
            # "uniform" without optimizations simulates exactly that policy at the default memory
            plan = make_plan(dag, cfg.replace(planner="uniform", optimizations="none"))
            plan.planner = f"{cfg.planner} (predicted with WUKONG's defaults)"
        for table in _tables(dag, plan):
            console.print(table)
        if output:
            colors, labels, legend = colors_of(dag, plan, color)
            critical = plan.simulation.critical_path if plan.simulation else []
            written = draw.write(dag, output, colors=colors, labels=labels, legend=legend, critical=critical)
            console.print(f"wrote {written}")
    except FanflowError as exc:
        print_error(exc)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add ``plan`` to the ``fanflow`` command."""
    app.command("plan", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(plan_command)
