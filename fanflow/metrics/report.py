"""A one-file HTML report of a recorded run, drawn with matplotlib.

Three pictures, each a PNG embedded as base64 so the page needs nothing else:

- a Gantt chart, one row per worker, each task split into its fetch, execute
  and store phases (phases are laid end to end from the task's start: the
  records hold their durations, not their timestamps);
- transfer volumes per task function: bytes fetched, bytes taken from the
  worker's cache, bytes stored;
- the DAG, tasks placed by depth (longest path from a root) and coloured by
  duration, the actual critical path drawn in red.

Tables beside them give the run summary, the critical path and the slowest
tasks. matplotlib is imported only here, through its object API (no pyplot, no
global state), so recording runs never pays for it.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from fanflow.errors import FanflowError
from fanflow.metrics.records import UNFINISHED, RunMetrics

_PHASES = (("fetch", "#8ecae6"), ("execute", "#fb8500"), ("store", "#90be6d"))
_LABEL_MAX_TASKS = 60


class ReportError(FanflowError):
    """The report could not be drawn."""


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ReportError("fanflow report draws with matplotlib: pip install 'fanflow[dashboard]'") from exc
    return Figure


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _bars(ax: Any, bars: list[tuple[float, float, float, float]], color: str) -> None:
    """Draw ``(x, width, y, height)`` rectangles as ONE collection (thousands of patches are slow)."""
    from matplotlib.collections import PolyCollection

    verts = [((x, y), (x + w, y), (x + w, y + h), (x, y + h)) for x, w, y, h in bars]
    ax.add_collection(PolyCollection(verts, facecolors=color, edgecolors="none"))


def gantt(metrics: RunMetrics) -> Any:
    """Tasks per worker over time, split into fetch / execute / store."""
    figure = _figure_class()
    from matplotlib.patches import Patch

    workers = metrics.workers
    fig = figure(figsize=(11, min(16, 1.2 + 0.35 * max(1, len(workers)))))
    ax = fig.add_subplot()
    t0 = metrics.run.submitted_at
    label = len(metrics.tasks) <= _LABEL_MAX_TASKS
    row = {w.worker: y for y, w in enumerate(workers)}
    lifetimes = [
        (w.started_at - t0, max(w.stopped_at - w.started_at, 1e-6), y - 0.4, 0.8) for y, w in enumerate(workers)
    ]
    _bars(ax, lifetimes, "#eeeeee")
    phases: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for t in metrics.tasks:
        if t.status == UNFINISHED or t.worker not in row:
            continue
        x, y = t.started_at - t0, row[t.worker]
        for (phase, _), width in zip(_PHASES, (t.fetch_s, t.exec_s, t.store_s), strict=True):
            phases[phase].append((x, max(width, 1e-6), y - 0.3, 0.6))
            x += width
        if label:
            ax.text(t.started_at - t0, y - 0.31, t.name, fontsize=6, va="bottom")
    for phase, color in _PHASES:
        _bars(ax, phases[phase], color)
    ax.autoscale_view()
    if len(workers) <= _LABEL_MAX_TASKS:
        ax.set_yticks(range(len(workers)))
        ax.set_yticklabels([f"{w.worker} ({'cold' if w.cold else 'warm'})" for w in workers], fontsize=7)
    else:
        ax.set_ylabel(f"{len(workers)} workers, in start order")
    ax.invert_yaxis()
    ax.set_xlabel("seconds since submit")
    ax.set_title("Tasks per worker")
    handles = [Patch(color=color, label=phase) for phase, color in _PHASES]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    return fig


def transfers(metrics: RunMetrics) -> Any:
    """Bytes fetched, taken locally and stored, per task function."""
    figure = _figure_class()
    volumes: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in metrics.tasks:
        if t.status == UNFINISHED:
            continue
        v = volumes[t.name.rsplit("-", 1)[0]]
        v[0] += t.fetched_bytes
        v[1] += t.in_bytes - t.fetched_bytes
        v[2] += t.out_bytes
    names = sorted(volumes)
    fig = figure(figsize=(11, 1.5 + 0.3 * max(1, len(names))))
    ax = fig.add_subplot()
    height = 0.27
    for k, (kind, color) in enumerate((("fetched", "#219ebc"), ("local", "#adb5bd"), ("stored", "#90be6d"))):
        ys = [i + (k - 1) * height for i in range(len(names))]
        ax.barh(ys, [volumes[n][k] for n in names], height=height, color=color, label=kind)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("bytes")
    ax.set_title("Transfer volumes per task function")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    return fig


def dag_by_duration(metrics: RunMetrics) -> Any:
    """The DAG by depth, each task coloured by its duration; the critical path in red."""
    figure = _figure_class()
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import MaxNLocator

    tasks = metrics.tasks
    depth = [0] * len(tasks)
    for t in tasks:  # task ids are topological: upstream depths are final
        if t.deps:
            depth[t.task] = 1 + max(depth[d] for d in t.deps)
    rows: dict[int, int] = defaultdict(int)
    pos: list[tuple[float, float]] = []
    for d in depth:
        pos.append((float(d), float(rows[d])))
        rows[d] += 1
    tallest = max(rows.values(), default=1)
    pos = [(x, y - (rows[int(x)] - 1) / 2) for x, y in pos]  # centre each column
    critical = metrics.critical_path()
    on_path = set(pairwise(critical))
    fig = figure(figsize=(11, min(14, 1.5 + 0.3 * tallest)))
    ax = fig.add_subplot()
    edges = [(pos[u], pos[t.task]) for t in tasks for u in t.deps]
    colors = ["#d62828" if (u, t.task) in on_path else "#bbbbbb" for t in tasks for u in t.deps]
    ax.add_collection(LineCollection(edges, colors=colors, linewidths=[2.0 if c != "#bbbbbb" else 0.6 for c in colors]))
    points = ax.scatter(
        [p[0] for p in pos],
        [p[1] for p in pos],
        c=[t.duration_s for t in tasks],
        cmap="viridis",
        s=90 if len(tasks) <= 200 else 20,
        edgecolors="#333333",
        linewidths=0.5,
        zorder=3,
    )
    if len(tasks) <= _LABEL_MAX_TASKS:
        for t, (x, y) in zip(tasks, pos, strict=True):
            ax.annotate(t.name, (x, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=6)
    fig.colorbar(points, ax=ax, label="task duration (s)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("depth")
    ax.set_yticks([])
    ax.set_title("DAG coloured by duration (critical path in red)")
    ax.margins(0.05, 0.1)
    return fig


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_rows(metrics: RunMetrics) -> list[list[Any]]:
    """``[field, value]`` rows describing a run, shared by the CLI and the report."""
    r = metrics.run
    when = datetime.fromtimestamp(r.submitted_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    predicted = "-" if r.predicted_makespan_s is None else f"{r.predicted_makespan_s:.4f} s"
    return [
        ["run", r.run_id],
        ["status", r.status + (f" ({r.error})" if r.error else "")],
        ["submitted", when],
        ["makespan", f"{r.makespan_s:.4f} s"],
        ["predicted makespan", predicted],
        ["tasks finished", f"{r.tasks_finished} / {r.tasks}"],
        ["workers (cold)", f"{r.workers} ({r.cold_starts})"],
        ["DAG build / planning", f"{r.dag_build_s * 1e3:.2f} ms / {r.planning_s * 1e3:.2f} ms"],
        ["encoded DAG", f"{r.encoded_size:,} B"],
        ["bytes fetched / local / stored", f"{r.bytes_fetched:,} / {r.bytes_local:,} / {r.bytes_out:,}"],
        ["platform / planner / upload", f"{r.platform} / {r.planner} / {r.metrics_upload}"],
        ["signature", r.signature],
    ]


def task_rows(metrics: RunMetrics, ids: list[int]) -> list[list[Any]]:
    """Rows of per-task figures for the given task ids."""
    rows = []
    for i in ids:
        t = metrics.tasks[i]
        rows.append(
            [
                t.name,
                t.worker,
                f"{t.duration_s * 1e3:.2f}",
                f"{t.exec_s * 1e3:.2f}",
                f"{t.fetch_s * 1e3:.2f}",
                f"{t.store_s * 1e3:.2f}",
                f"{t.in_bytes:,}",
                f"{t.out_bytes:,}",
            ]
        )
    return rows


TASK_HEADER = ["task", "worker", "total ms", "exec ms", "fetch ms", "store ms", "in B", "out B"]


def render(metrics: RunMetrics) -> str:
    """The report page for ``metrics`` as one self-contained HTML string."""
    r = metrics.run
    pictures = [_png(draw(metrics)) for draw in (gantt, transfers, dag_by_duration)]
    slowest = [t.task for t in metrics.slowest(10)]
    title = html.escape(f"fanflow run {r.run_id}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>"
        "body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;margin:8px 0 24px}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:left}th{background:#f3f3f3}img{max-width:100%;display:block;margin:8px 0 24px}"
        "</style></head><body>"
        f"<h2>{title}</h2>"
        f"{_table(['field', 'value'], summary_rows(metrics))}"
        "<h3>Timeline</h3>"
        f"{pictures[0]}"
        "<h3>Critical path (actual)</h3>"
        f"{_table(TASK_HEADER, task_rows(metrics, metrics.critical_path()))}"
        "<h3>Slowest tasks</h3>"
        f"{_table(TASK_HEADER, task_rows(metrics, slowest))}"
        "<h3>Transfers</h3>"
        f"{pictures[1]}"
        "<h3>DAG</h3>"
        f"{pictures[2]}"
        "<p style='font-size:12px;color:#666'>fetch = one round trip for every non-local input; "
        "store = one round trip uploading the output and notifying dependents.</p>"
        "</body></html>"
    )
