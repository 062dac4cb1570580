"""A plain install: ``import fanflow`` and the CLI load no optional extra, and a missing extra says what to install.

Each check runs in a fresh interpreter, so what an earlier test imported does not count. Missing extras are
simulated with an import hook that refuses their packages, the way a plain ``pip install fanflow`` lacks them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

OPTIONAL = (
    *("httpx", "ray", "boto3", "botocore", "dask", "distributed"),
    *("fastapi", "uvicorn", "matplotlib", "playwright"),
)
"""Top-level packages that only fanflow's extras bring."""

HEAVY_LAYERS = ("fanflow.client", "fanflow.planning", "fanflow.metrics", "fanflow.dashboard", "fanflow.worker")

_PRELUDE = """
import importlib.abc, json, runpy, sys

BLOCKED = set(sys.argv[1].split(",")) - {""}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Refuse())

def cli(*args):
    sys.argv = ["fanflow", *args]
    try:
        runpy.run_module("fanflow.cli", run_name="__main__")
    except SystemExit as exc:
        return exc.code
    return 0

def report(**extra):
    print(json.dumps({"modules": sorted(sys.modules), **extra}))
"""


def _python(code: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PRELUDE + code, ",".join(blocked)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FANFLOW_METADATA": "none"},
    )


def _report(code: str, blocked: tuple[str, ...] = ()) -> tuple[dict[str, object], str]:
    done = _python(code, blocked)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _optional_in(modules: object) -> list[str]:
    assert isinstance(modules, list)
    return sorted({m.partition(".")[0] for m in modules} & set(OPTIONAL))


def test_import_fanflow_loads_no_extra_and_no_heavy_layer() -> None:
    got, _ = _report("import fanflow\nreport()")
    assert _optional_in(got["modules"]) == []
    loaded = got["modules"]
    assert isinstance(loaded, list)
    assert [m for m in loaded if m.startswith(HEAVY_LAYERS)] == []


def test_help_loads_no_extra_and_works_without_them() -> None:
    got, _ = _report("report(status=cli('--help'))", blocked=OPTIONAL)
    assert got["status"] == 0
    assert _optional_in(got["modules"]) == []


def test_the_embedded_default_computes_without_any_extra() -> None:
    code = (
        "import fanflow\n"
        "@fanflow.task\n"
        "def inc(x):\n"
        "    return x + 1\n"
        "report(value=fanflow.compute(inc(inc(1)), config=fanflow.Config(progress=False))[0])"
    )
    got, _ = _report(code, blocked=OPTIONAL)
    assert got["value"] == 3
    assert _optional_in(got["modules"]) == []


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("gateway", "--port", "0"), "http"),
        (("deploy", "lambda", "--dry-run"), "aws"),
        (("dashboard", "--port", "0"), "dashboard"),
    ],
)
def test_a_command_whose_extra_is_missing_names_it(args: tuple[str, ...], extra: str) -> None:
    got, err = _report(f"report(status=cli(*{args!r}))", blocked=OPTIONAL)
    assert got["status"] == 1
    assert f'pip install "fanflow[{extra}]"' in " ".join(err.split())
    assert "Traceback" not in err


@pytest.mark.parametrize(("platform", "extra"), [("http", "http"), ("ray", "ray"), ("lambda", "aws")])
def test_a_platform_whose_extra_is_missing_names_it(platform: str, extra: str) -> None:
    code = (
        "import fanflow\n"
        "@fanflow.task\n"
        "def inc(x):\n"
        "    return x + 1\n"
        "try:\n"
        f"    inc(1).compute(fanflow.Config(platform={platform!r}, store='redis://127.0.0.1:9/0', progress=False))\n"
        "except fanflow.MissingExtraError as exc:\n"
        "    report(error=str(exc), extra=exc.extra)\n"
    )
    got, _ = _report(code, blocked=OPTIONAL)
    assert got["extra"] == extra
    assert f'pip install "fanflow[{extra}]"' in str(got["error"])
