"""Source lines for worker tracebacks of functions shipped by value.

A script's tasks (and tasks defined in ``__main__``) reach workers in other
processes pickled by value; cloudpickle rebuilds their code with the file name
``<dynamic-code>``, so the worker's traceback names no file and shows no source
line. The client still has the functions: :func:`with_source_lines` puts back
each such frame's file and source line, matching frames by function name among
the DAG's task functions and the module-level functions of their modules (line
numbers survive pickling).
"""

from __future__ import annotations

import linecache
import re
import sys
import types
from collections.abc import Iterable

from fanflow.dag.graph import DAG

DYNAMIC = "<dynamic-code>"
_FRAME = re.compile(r'^(\s*)File "<dynamic-code>", line (\d+), in (.+)$')


def _code_files(functions: Iterable[object]) -> dict[str, str]:
    """Function name -> file, for the given functions and the functions defined beside them."""
    files: dict[str, str] = {}
    for func in functions:
        code = getattr(func, "__code__", None)
        if code is None:
            continue
        files.setdefault(code.co_name, code.co_filename)
        module = sys.modules.get(getattr(func, "__module__", "") or "")
        for value in vars(module).values() if module is not None else ():
            inner = getattr(value, "__wrapped__", value)
            inner = getattr(inner, "func", inner)  # a fanflow task: its function
            if isinstance(inner, types.FunctionType) and inner.__code__.co_filename == code.co_filename:
                files.setdefault(inner.__code__.co_name, code.co_filename)
    return files


def with_source_lines(trace: str, dag: DAG) -> str:
    """``trace`` with its ``<dynamic-code>`` frames naming their file and showing their source line."""
    if DYNAMIC not in trace:
        return trace
    files = _code_files(task.func for task in dag.tasks)
    lines = trace.splitlines()
    out: list[str] = []
    for k, line in enumerate(lines):
        match = _FRAME.match(line)
        path = files.get(match.group(3)) if match else None
        if match is None or path is None:
            out.append(line)
            continue
        indent, number = match.group(1), int(match.group(2))
        out.append(f'{indent}File "{path}", line {number}, in {match.group(3)}')
        source = linecache.getline(path, number).strip()
        following = lines[k + 1] if k + 1 < len(lines) else ""
        if source and following.strip() != source:
            out.append(f"{indent}  {source}")
    return "\n".join(out) + ("\n" if trace.endswith("\n") else "")
