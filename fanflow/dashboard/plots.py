"""Per-function plots across runs, drawn server-side with matplotlib as PNG.

Server-side images keep the page free of a second JS library: the page only
asks for ``<img src=...>``. Two views of one function's kept executions:

- execution time against input bytes, one colour per memory size (does the
  time grow with the input, and how noisy is it?);
- execution time against memory size, each execution a dot and the mean a line
  (does more memory buy speed?).

matplotlib is used through its object API (no pyplot, no global state), so
plots drawn in server threads at once do not interfere.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence

_PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777")
KINDS = ("input", "memory")


def _style(ax: object) -> None:
    ax.grid(True, color="#e5e7eb", linewidth=0.8)  # type: ignore[attr-defined]
    ax.set_axisbelow(True)  # type: ignore[attr-defined]
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)  # type: ignore[attr-defined]


def function_plot(name: str, points: Sequence[dict[str, float]], kind: str) -> bytes:
    """A PNG of ``points`` (``exec_s``, ``in_bytes``, ``memory_mb``): ``kind`` is ``input`` or ``memory``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.4), dpi=100)
    ax = fig.add_subplot()
    _style(ax)
    by_memory: dict[int, list[dict[str, float]]] = defaultdict(list)
    for p in points:
        by_memory[int(p["memory_mb"])].append(p)
    sizes = sorted(by_memory)
    if kind == "input":
        for k, memory in enumerate(sizes):
            pts = by_memory[memory]
            ax.scatter(
                [p["in_bytes"] for p in pts],
                [p["exec_s"] * 1e3 for p in pts],
                s=18,
                alpha=0.75,
                color=_PALETTE[k % len(_PALETTE)],
                label=f"{memory} MB",
                edgecolors="none",
            )
        ax.set_xlabel("input bytes")
        ax.set_title(f"{name}: time vs input size", fontsize=10)
        if sizes:
            ax.legend(fontsize=8, frameon=False)
    else:
        for k, memory in enumerate(sizes):
            ys = [p["exec_s"] * 1e3 for p in by_memory[memory]]
            ax.scatter([memory] * len(ys), ys, s=18, alpha=0.5, color=_PALETTE[k % len(_PALETTE)], edgecolors="none")
        if sizes:
            means = [sum(p["exec_s"] for p in by_memory[m]) / len(by_memory[m]) * 1e3 for m in sizes]
            ax.plot(sizes, means, color="#111827", linewidth=1.5, marker="o", markersize=4, label="mean")
            ax.legend(fontsize=8, frameon=False)
            ax.set_xticks(sizes)
        ax.set_xlabel("memory (MB)")
        ax.set_title(f"{name}: time vs memory", fontsize=10)
    ax.set_ylabel("execution time (ms)")
    if not points:
        ax.text(0.5, 0.5, "no executions kept", transform=ax.transAxes, ha="center", color="#6b7280")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
