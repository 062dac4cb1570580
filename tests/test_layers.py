"""Imports go one way, down the layers of docs/architecture.md, and a worker process loads only its own layers."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import fanflow

ROOT = Path(fanflow.__file__).parent

LAYERS = ["dag", "store", "platforms", "worker", "metrics", "planning", "dashboard", "client", "api"]
"""Bottom to top, as in docs/architecture.md; leaf modules (errors, config, requirements) are below all,
and the cli is a front end beside the api (it runs workflows through it)."""

LEAVES = {"fanflow.errors", "fanflow.config", "fanflow.requirements"}


def layer_of(module: str) -> int:
    """The layer index of a fanflow module; -1 for leaves; ``fanflow`` itself, ``dask`` and the cli count as api."""
    if module in LEAVES:
        return -1
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("api", "dask", "cli"):
        return LAYERS.index("api")
    return LAYERS.index(parts[1])


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def runtime_imports(path: Path) -> set[str]:
    """The fanflow modules ``path`` imports at run time (outside ``if TYPE_CHECKING:`` blocks)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fanflow"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fanflow") and node.level == 0:
            # ``from fanflow import errors`` imports the submodule; ``from fanflow import compute`` the api.
            submodules = [f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")]
            found.update(submodules or [node.module])
    return found


def test_no_runtime_import_goes_up_a_layer() -> None:
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        for target in runtime_imports(path):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_a_worker_loads_no_layer_above_its_own() -> None:
    """What a worker process imports: the worker layer and below, never client, planning, metrics or dashboard."""
    code = (
        "import json, sys, fanflow.worker, fanflow.worker.entry\n"
        "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules if m.startswith('fanflow.')})))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60)
    loaded = set(json.loads(out.stdout))
    assert "worker" in loaded
    assert not loaded & {"client", "planning", "metrics", "dashboard", "cli", "api", "dask"}, loaded
