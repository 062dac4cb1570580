"""How the ``fanflow`` command prints: user text verbatim, tables full width when piped, JSON for any result.

Rich is used for layout only. Text that comes from users or their code (task
names, messages, tracebacks, results) is never read as Rich markup, so
``return xs[i]`` prints as written, not as ``return xs``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape

PIPED_WIDTH = 1000
"""Width of a console writing to a pipe or file: wide enough that no table is cut or wrapped."""


def console(stderr: bool = False) -> Console:
    """A console that prints text as given (no markup, no highlighting), full width when not a terminal."""
    stream: TextIO = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH
    return Console(stderr=stderr, markup=False, highlight=False, width=width)


def print_error(message: object) -> None:
    """``error: <message>`` on stderr, the label in bold red and the message verbatim."""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(str(message))}", soft_wrap=True)


def iso_time(t: float | None) -> str:
    """Unix time as local ISO 8601 to the second (``2026-11-30T01:23:45+00:00``); ``-`` for none."""
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def to_json_value(value: Any) -> Any:
    """``value`` as plain JSON data: numpy arrays and scalars, pandas objects, sets, bytes and the like.

    numpy and pandas are used only when the value is one of theirs (never imported here).
    Anything else that JSON cannot hold becomes its ``repr``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    module = type(value).__module__.split(".")[0]
    if module == "pandas":
        if hasattr(value, "to_dict") and hasattr(value, "columns"):  # DataFrame: a list of records
            return to_json_value(value.to_dict(orient="records"))
        if hasattr(value, "to_dict"):  # Series
            return to_json_value(value.to_dict())
        if hasattr(value, "isoformat"):  # Timestamp
            return value.isoformat()
    if module == "numpy" and hasattr(value, "tolist"):  # ndarray and numpy scalars
        return to_json_value(value.tolist())
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return to_json_value(dataclasses.asdict(value))
    return repr(value)


def dumps(value: Any) -> str:
    """``value`` as indented JSON (see :func:`to_json_value`)."""
    return json.dumps(to_json_value(value), indent=2)
