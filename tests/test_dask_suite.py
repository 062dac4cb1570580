"""The Dask-suite comparison (scripts/dask_suite): what counts as lost on fanflow, how outcomes are recorded."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SUITE = Path(__file__).resolve().parent.parent / "scripts" / "dask_suite"


def _compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dask_suite_compare", SUITE / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _compare()


def test_a_test_that_passes_on_dask_is_lost_unless_it_passes_on_fanflow() -> None:
    outcomes = ("passed", "failed", "error", "skipped", "xfailed")
    dask_side = {f"t.py::{o}": "passed" for o in outcomes} | {"t.py::not_run": "passed"}
    fanflow_side = {f"t.py::{o}": o for o in outcomes}
    assert compare.compare(dask_side, fanflow_side) == {
        "t.py::error": "error",
        "t.py::failed": "failed",
        "t.py::not_run": "not run",
        "t.py::skipped": "skipped",
        "t.py::xfailed": "xfailed",
    }


def test_a_test_that_does_not_pass_on_dask_is_not_compared() -> None:
    dask_side = {"t.py::a": "skipped", "t.py::b": "xfailed", "t.py::c": "failed"}
    assert compare.compare(dask_side, {"t.py::a": "skipped", "t.py::b": "failed"}) == {}


def test_known_differences_and_deselected_tests_are_not_counted() -> None:
    (known,) = compare.KNOWN_DIFFERENCES
    (deselected,) = compare.DESELECT
    assert compare.compare({known: "passed", deselected: "passed"}, {known: "failed"}) == {}


def test_a_skip_on_fanflow_is_let_off_only_when_dask_skips_it_too_on_this_machine() -> None:
    asked: list[list[str]] = []

    def run_dask(tests: list[str]) -> dict[str, str]:
        asked.append(tests)
        return {"t.py::no_pyarrow": "skipped", "t.py::fanflow_only": "passed"}

    lost = {"t.py::no_pyarrow": "skipped", "t.py::fanflow_only": "skipped", "t.py::broken": "failed"}
    assert compare.skipped_on_both(lost, run_dask) == {"t.py::no_pyarrow"}
    assert asked == [["t.py::no_pyarrow", "t.py::fanflow_only"]]  # only the skips are run again
    assert compare.skipped_on_both({"t.py::broken": "failed"}, run_dask) == set()
    assert len(asked) == 1  # nothing skipped: Dask's side is not run


SAMPLE = """
import pytest

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown")

def test_passes(): pass
def test_fails(): assert False
def test_skips(): pytest.skip("no")
def test_setup_errors(broken_setup): pass
def test_teardown_errors(broken_teardown): pass
def test_fails_and_teardown_errors(broken_teardown): assert False

@pytest.mark.xfail
def test_xfails(): assert False

@pytest.mark.xfail
def test_xpasses(): pass
"""


def test_the_plugin_records_every_kind_of_outcome(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    out = tmp_path / "outcomes.json"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "fanflow_schedulers",
         "--schedulers=dask", f"--outcomes={out}", "test_sample.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(SUITE)}, capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    recorded = {test.split("::")[1]: outcome for test, outcome in json.loads(out.read_text()).items()}
    assert recorded == {
        "test_passes": "passed",
        "test_fails": "failed",
        "test_skips": "skipped",
        "test_setup_errors": "error",
        "test_teardown_errors": "error",
        "test_fails_and_teardown_errors": "failed",
        "test_xfails": "xfailed",
        "test_xpasses": "passed",
    }
