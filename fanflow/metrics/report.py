"""A one-file HTML report of a recorded run, drawn with matplotlib.

Three pictures, each a PNG embedded as base64 so the page needs nothing else:

- a timeline, one lane per worker process (a worker id names one invocation;
  its process is the id without the trailing counter), invocations as grey
  segments, each task a bar coloured by its function (legend), failed tasks
  red and marked with a cross, cold starts marked;
- transfer volumes per task function: bytes fetched, bytes taken from the
  worker's cache, bytes stored;
- the DAG, tasks placed by depth (longest path from a root) and coloured by
  duration, the actual critical path drawn in red.

Tables beside them give the run summary, the errors with their tracebacks, the
critical path and the slowest tasks, all in human units (ms, s, kB, MB).
matplotlib is imported only here, through its object API (no pyplot, no global
state), so recording runs never pays for it.
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
from fanflow.metrics.records import FAILED, UNFINISHED, RunMetrics

_PALETTE = ("#4f46e5", "#0891b2", "#ea580c", "#16a34a", "#db2777", "#9333ea", "#ca8a04", "#0d9488", "#2563eb")
_FAILED = "#dc2626"
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


def human_duration(seconds: float | None) -> str:
    """``0.000123`` -> ``123 µs``, ``0.0456`` -> ``45.6 ms``, ``75.2`` -> ``1 min 15 s``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{int(seconds // 60)} min {round(seconds % 60)} s"


def human_bytes(n: float | None) -> str:
    """``315.21`` -> ``315 B``, ``2_085_805`` -> ``2.09 MB``; ``-`` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} TB"  # pragma: no cover - the loop returns at GB


def _time_axis(ax: Any, axis: str = "x") -> None:
    """Ticks in human units (``0 ms``, ``250 ms``, ``1.5 s``) on ``axis``."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
    target.set_major_formatter(FuncFormatter(lambda v, _: "0" if v == 0 else human_duration(abs(v))))


def process_of(worker: str) -> str:
    """The process of a worker id ``<host>-<pid>-<salt>-<n>``: the id without its counter."""
    head, _, tail = worker.rpartition("-")
    return head if head and tail.isdigit() and worker.count("-") >= 3 else worker


MAX_LANES = 48


def lanes(metrics: RunMetrics) -> list[tuple[str, list[str]]]:
    """``(label, worker ids)`` per timeline lane: one per process, sub-lanes for invocations at the same time.

    A process gets at most its share of :data:`MAX_LANES` sub-lanes; past that,
    invocations share the sub-lane that frees first.
    """
    by_process: dict[str, list[Any]] = defaultdict(list)
    for w in sorted(metrics.workers, key=lambda w: w.started_at):
        by_process[process_of(w.worker)].append(w)
    cap = max(1, MAX_LANES // max(1, len(by_process)))
    out: list[tuple[str, list[str]]] = []
    for process, workers in by_process.items():
        ends: list[float] = []
        members: list[list[str]] = []
        for w in workers:
            start = w.started_at - w.latency_s
            free = next((k for k, end in enumerate(ends) if end <= start), None)
            if free is None and len(ends) < cap:
                ends.append(0.0)
                members.append([])
                free = len(ends) - 1
            if free is None:
                free = min(range(len(ends)), key=ends.__getitem__)
            ends[free] = max(ends[free], w.stopped_at)
            members[free].append(w.worker)
        for k, ids in enumerate(members):
            out.append((process + (f" #{k + 1}" if len(members) > 1 else ""), ids))
    return out


def gantt(metrics: RunMetrics) -> Any:
    """Task bars per worker process over time, coloured by function; failures in red, marked."""
    figure = _figure_class()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = lanes(metrics)
    lane_of = {w: y for y, (_, ids) in enumerate(rows) for w in ids}
    fig = figure(figsize=(11, min(14, 1.6 + 0.32 * max(1, len(rows)))))
    ax = fig.add_subplot()
    t0 = metrics.run.submitted_at
    invocations = [
        (w.started_at - t0, max(w.stopped_at - w.started_at, 1e-6), lane_of[w.worker] - 0.4, 0.8)
        for w in metrics.workers
    ]
    _bars(ax, invocations, "#e5e7eb")
    waits = [(w.started_at - w.latency_s - t0, w.latency_s, lane_of[w.worker] - 0.4, 0.8) for w in metrics.workers]
    _bars(ax, [b for b in waits if b[1] > 0], "#f1f5f9")
    functions = sorted({_function(t.identity) for t in metrics.tasks})
    color = {f: _PALETTE[k % len(_PALETTE)] for k, f in enumerate(functions)}
    bars: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    failed: list[tuple[float, float]] = []
    for t in metrics.tasks:
        if t.status == UNFINISHED or t.worker not in lane_of:
            continue
        y = lane_of[t.worker]
        key = "failed" if t.status == FAILED else _function(t.identity)
        bars[key].append((t.started_at - t0, max(t.duration_s, 1e-6), y - 0.3, 0.6))
        if t.status == FAILED:
            failed.append((t.finished_at - t0, y))
    for key, items in bars.items():
        _bars(ax, items, _FAILED if key == "failed" else color[key])
    if failed:
        xs, ys = [x for x, _ in failed], [y for _, y in failed]
        ax.scatter(xs, ys, marker="X", s=70, color=_FAILED, edgecolors="#450a0a", zorder=4)
    cold = [(w.started_at - t0, lane_of[w.worker]) for w in metrics.workers if w.cold]
    if cold:
        ax.scatter([x for x, _ in cold], [y for _, y in cold], marker="|", s=120, color="#0284c7", zorder=4)
    ax.autoscale_view()
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([label for label, _ in rows], fontsize=7 if len(rows) <= 24 else 5)
    ax.invert_yaxis()
    _time_axis(ax)
    ax.set_xlabel("time since submit")
    ax.set_title(f"Tasks per worker process ({len(metrics.workers)} invocations in {len(rows)} lanes)")
    handles = [Patch(color=color[f], label=f) for f in functions[:20]]
    handles += [
        Patch(color=_FAILED, label="failed task (✕ where it failed)"),
        Patch(color="#e5e7eb", label="worker invocation alive"),
        Patch(color="#f1f5f9", label="waiting for a worker"),
        Line2D([], [], color="#0284c7", marker="|", linestyle="none", markersize=10, label="cold start"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    return fig


def _function(identity: str) -> str:
    """``pkg.mod.f:0123abcd`` -> ``f``."""
    return identity.rsplit(":", 1)[0].rsplit(".", 1)[-1]


def transfers(metrics: RunMetrics) -> Any:
    """Bytes fetched, taken locally and stored, per task function."""
    figure = _figure_class()
    volumes: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in metrics.tasks:
        if t.status == UNFINISHED:
            continue
        v = volumes[_function(t.identity)]
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
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
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
    bar = fig.colorbar(points, ax=ax, label="task duration")
    _time_axis(bar.ax, "y")
    if any(t.status == FAILED for t in tasks):
        bad = [pos[t.task] for t in tasks if t.status == FAILED]
        ax.scatter([p[0] for p in bad], [p[1] for p in bad], marker="X", s=90, color=_FAILED, zorder=4, label="failed")
        ax.legend(loc="upper left", fontsize=7, frameon=False)
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
    predicted = human_duration(r.predicted_makespan_s)
    if r.predicted_p10_s is not None and r.predicted_p90_s is not None:
        inside = "inside" if r.predicted_p10_s <= r.makespan_s <= r.predicted_p90_s else "outside"
        band = f"{human_duration(r.predicted_p10_s)}–{human_duration(r.predicted_p90_s)}"
        predicted += f" (p10–p90 {band}: actual {inside})"
    return [
        ["run", r.run_id],
        ["status", r.status + (f" ({r.error})" if r.error else "")],
        ["submitted", when],
        ["makespan", human_duration(r.makespan_s)],
        ["predicted makespan", predicted],
        ["tasks finished", f"{r.tasks_finished} / {r.tasks}"],
        ["workers (cold)", f"{r.workers} ({r.cold_starts})"],
        ["DAG build / planning", f"{human_duration(r.dag_build_s)} / {human_duration(r.planning_s)}"],
        ["encoded DAG", human_bytes(r.encoded_size)],
        [
            "bytes fetched / local / stored",
            f"{human_bytes(r.bytes_fetched)} / {human_bytes(r.bytes_local)} / {human_bytes(r.bytes_out)}",
        ],
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
                t.status,
                t.worker,
                human_duration(t.duration_s),
                human_duration(t.exec_s),
                human_duration(t.fetch_s),
                human_duration(t.store_s),
                human_bytes(t.in_bytes),
                human_bytes(t.out_bytes),
            ]
        )
    return rows


TASK_HEADER = ["task", "status", "worker", "total", "exec", "fetch", "store", "in", "out"]


def _errors(errors: list[dict[str, Any]]) -> str:
    """Error records (task, type, message, traceback) as HTML, tracebacks verbatim."""
    if not errors:
        return ""
    items = []
    for e in errors:
        head = f"{e.get('task') or 'run'}: {(e.get('exc_type') or 'error').rsplit('.', 1)[-1]}: {e.get('message', '')}"
        where = f" (worker {e['worker']}, attempt {e.get('attempt', 1)})" if e.get("worker") else ""
        trace = e.get("traceback") or "(no traceback recorded)"
        items.append(f"<h4>{html.escape(head)}{html.escape(where)}</h4><pre>{html.escape(trace)}</pre>")
    return f"<h3>Errors ({len(errors)})</h3>" + "".join(items)


def render(metrics: RunMetrics, errors: list[dict[str, Any]] | None = None) -> str:
    """The report page for ``metrics`` as one self-contained HTML string.

    ``errors``: the run's error records (with remote tracebacks), shown first when the run failed.
    """
    r = metrics.run
    if errors is None and r.error:
        errors = [{"task": t.name, "message": t.error, "worker": t.worker} for t in metrics.tasks if t.error] or [
            {"message": r.error}
        ]
    pictures = [_png(draw(metrics)) for draw in (gantt, transfers, dag_by_duration)]
    slowest = [t.task for t in metrics.slowest(10)]
    title = html.escape(f"fanflow run {r.run_id}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>"
        "body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;margin:8px 0 24px}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:left}th{background:#f3f3f3}img{max-width:100%;display:block;margin:8px 0 24px}"
        "pre{background:#fff7f7;border:1px solid #fecaca;padding:8px;font-size:12px;overflow-x:auto}"
        "h4{color:#991b1b;margin:12px 0 4px}"
        "</style></head><body>"
        f"<h2>{title}</h2>"
        f"{_table(['field', 'value'], summary_rows(metrics))}"
        f"{_errors(errors or [])}"
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
