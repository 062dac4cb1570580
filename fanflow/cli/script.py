"""Loading workflow scripts for ``fanflow run``.

A script is a Python file with a ``main`` function. ``main(argv)`` receives the
arguments given after ``--`` (``main()`` with no parameter is fine too) and
returns the sink node, or a list/tuple of sink nodes. The script's module is
registered with cloudpickle to be pickled by value, so its tasks reach workers
in other processes without the file being importable there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import cloudpickle

from fanflow.dag.node import Node
from fanflow.errors import FanflowError
from fanflow.metrics.recorder import SCRIPT_MODULE


class ScriptError(FanflowError):
    """A workflow script could not be loaded or did not return nodes."""


def load_module(path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise ScriptError(f"workflow script {path!r} does not exist")
    # Named after the file's absolute path, so its tasks keep one identity (and one run
    # history) from one process to the next.
    digest = hashlib.blake2b(str(file.resolve()).encode(), digest_size=4).hexdigest()
    name = f"{SCRIPT_MODULE}{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ScriptError(f"cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        where = f"{exc.filename or path}, line {exc.lineno}" if exc.lineno else str(exc.filename or path)
        source = f"\n    {exc.text.rstrip()}" if exc.text else ""
        raise ScriptError(f"workflow script {where}: {type(exc).__name__}: {exc.msg}{source}") from None
    cloudpickle.register_pickle_by_value(module)
    return module


def load_sinks(path: str, argv: list[str]) -> tuple[list[Node], bool]:
    """The sink nodes a script's ``main`` returns, and whether it returned a single node."""
    module = load_module(path)
    main = getattr(module, "main", None)
    if not callable(main):
        raise ScriptError(f"{path} must define main(argv) returning the sink node(s)")
    takes_args = bool(inspect.signature(main).parameters)
    result = main(argv) if takes_args else main()
    if isinstance(result, Node):
        return [result], True
    if isinstance(result, (list, tuple)) and result and all(isinstance(n, Node) for n in result):
        return list(result), False
    raise ScriptError(f"{path}: main() must return a fanflow node or a list of nodes, got {type(result).__name__}")
