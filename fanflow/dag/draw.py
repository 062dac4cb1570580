"""Drawing a DAG: SVG/PNG through graphviz ``dot`` when it is installed, else a self-contained HTML page.

The HTML fallback lays tasks out left to right by depth (longest path from a
root) and embeds the picture as inline SVG, so the page needs nothing else.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections.abc import Collection, Mapping
from pathlib import Path

from fanflow.dag.graph import DAG
from fanflow.errors import DAGError

_PALETTE = ("#8ecae6", "#ffb703", "#90be6d", "#f28482", "#b8b8ff", "#f4a261", "#84a59d", "#e5989b")


CRITICAL = "#d62828"


def to_dot(
    dag: DAG,
    colors: Mapping[int, str] | None = None,
    labels: Mapping[int, str] | None = None,
    legend: Mapping[str, str] | None = None,
    critical: Collection[int] = (),
) -> str:
    """The DAG in graphviz DOT, left to right; ``colors``/``labels`` override per task.

    ``legend``: label -> colour entries drawn in a box beside the graph.
    ``critical``: tasks on the critical path, outlined (and their edges drawn) in red.
    """
    colors = colors or {}
    labels = labels or {}
    path = set(critical)
    lines = ["digraph fanflow {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for i in range(len(dag)):
        color = colors.get(i, _PALETTE[dag.task_of[i] % len(_PALETTE)])
        label = labels.get(i, dag.name(i))
        extra = ", penwidth=2.5" if dag.is_sink(i) else ""
        if i in path:
            extra = f', penwidth=3, color="{CRITICAL}"'
        lines.append(f'  t{i} [label="{_dot_escape(label)}", fillcolor="{color}"{extra}];')
    for u, d in dag.edges:
        style = f' [color="{CRITICAL}", penwidth=2.5]' if u in path and d in path else ""
        lines.append(f"  t{u} -> t{d}{style};")
    if legend:
        rows = "".join(
            f'<TR><TD BGCOLOR="{html.escape(c)}" WIDTH="18"></TD><TD ALIGN="LEFT">{html.escape(k)}</TD></TR>'
            for k, c in legend.items()
        )
        table = f'<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">{rows}</TABLE>'
        lines.append('  subgraph cluster_legend { label="legend"; fontname="Helvetica";')
        lines.append(f'    legend [shape=plain, style="", label=<{table}>]; }}')
    lines.append("}")
    return "\n".join(lines)


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def write(
    dag: DAG,
    path: str,
    colors: Mapping[int, str] | None = None,
    labels: Mapping[int, str] | None = None,
    legend: Mapping[str, str] | None = None,
    critical: Collection[int] = (),
) -> str:
    """Write the picture to ``path`` and return the path actually written.

    ``.svg``/``.png``/``.pdf`` use ``dot`` when it is on PATH; without it (or for
    ``.html``) the file becomes a self-contained HTML page with the suffix ``.html``.
    ``legend`` (label -> colour) and ``critical`` (task ids) as in :func:`to_dot`.
    """
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower()
    dot = shutil.which("dot")
    if fmt in ("svg", "png", "pdf") and dot:
        source = to_dot(dag, colors, labels, legend, critical)
        done = subprocess.run([dot, f"-T{fmt}", "-o", str(target)], input=source.encode(), capture_output=True)
        if done.returncode != 0:
            raise DAGError(f"graphviz dot failed to draw {target}: {done.stderr.decode(errors='replace')[:500]}")
        return str(target)
    if fmt != "html":
        target = target.with_suffix(".html")
    target.write_text(to_html(dag, colors, labels, legend, critical))
    return str(target)


def to_html(
    dag: DAG,
    colors: Mapping[int, str] | None = None,
    labels: Mapping[int, str] | None = None,
    legend: Mapping[str, str] | None = None,
    critical: Collection[int] = (),
) -> str:
    """The DAG as a self-contained HTML page with inline SVG (see :func:`to_dot` for the options)."""
    colors = colors or {}
    labels = labels or {}
    path = set(critical)
    depth = [0] * len(dag)
    for i, ups in enumerate(dag.deps):  # topological order: upstream depths are final
        if ups:
            depth[i] = 1 + max(depth[u] for u in ups)
    rows: dict[int, int] = {}
    pos: list[tuple[int, int]] = []
    for d in depth:
        row = rows.get(d, 0)
        rows[d] = row + 1
        pos.append((d, row))
    col_w, row_h, box_w, box_h = 170, 44, 140, 28
    width = (max(depth, default=0) + 1) * col_w + 20
    height = max(rows.values(), default=1) * row_h + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="Helvetica" font-size="11">'
    ]
    for u, d in dag.edges:
        (cu, ru), (cd, rd) = pos[u], pos[d]
        x1, y1 = 10 + cu * col_w + box_w, 10 + ru * row_h + box_h / 2
        x2, y2 = 10 + cd * col_w, 10 + rd * row_h + box_h / 2
        on_path = u in path and d in path
        stroke = f'stroke="{CRITICAL}" stroke-width="2.5"' if on_path else 'stroke="#888" stroke-width="1"'
        parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" {stroke}/>')
    for i, (c, r) in enumerate(pos):
        x, y = 10 + c * col_w, 10 + r * row_h
        fill = colors.get(i, _PALETTE[dag.task_of[i] % len(_PALETTE)])
        stroke = CRITICAL if i in path else "#222" if dag.is_sink(i) else "#555"
        label = html.escape(labels.get(i, dag.name(i)))
        parts.append(
            f'<g><title>{label}</title><rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" '
            f'fill="{fill}" stroke="{stroke}"/><text x="{x + 8}" y="{y + 18}">{label[:22]}</text></g>'
        )
    parts.append("</svg>")
    title = html.escape(f"fanflow DAG: {dag.sink_name} ({len(dag)} tasks)")
    swatch = "display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:5px"
    key = "".join(
        f"<span style='margin-right:14px'><i style='{swatch};background:{html.escape(c)}'></i>{html.escape(k)}</span>"
        for k, c in (legend or {}).items()
    )
    key = f"<p style='font-family:Helvetica;font-size:12px'>{key}</p>" if key else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h3 style='font-family:Helvetica'>{title}</h3>{key}{''.join(parts)}</body></html>"
    )
