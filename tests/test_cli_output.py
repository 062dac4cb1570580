"""What the ``fanflow`` command prints: user text verbatim, JSON, ISO times, clear errors, report and plan pictures."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import install_hint

from fanflow.cli.output import to_json_value
from fanflow.metrics.records import RunMetrics
from fanflow.store.metadata import open_metadata

FAILING = """
import fanflow

def helper(xs, i):
    return xs[i]

@fanflow.task
def pick(i):
    return helper([1, 2], i)

@fanflow.task
def slow_ok(x):
    import time
    time.sleep(0.3)
    return x

@fanflow.task
def join(a, b):
    return a + b

def main():
    return join(pick(5), slow_ok(1))
"""

ARRAYS = """
import fanflow, numpy, pandas

@fanflow.task
def grid(n):
    return numpy.arange(n * n).reshape(n, n)

@fanflow.task
def frame(g):
    return pandas.DataFrame({"row": range(len(g)), "total": g.sum(axis=1)})

def main():
    return [grid(2), frame(grid(2))]
"""

FLOW = """
import fanflow

@fanflow.task
def load(i):
    return list(range(i))

@fanflow.task
def total(*xs):
    return sum(len(x) for x in xs)

def main():
    return total(*[load(i) for i in range(3)])
"""


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess (its output is a pipe, as in scripts and CI)."""
    full = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    full.update({"FANFLOW_PROGRESS": "false", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "fanflow.cli", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A failed run of a script (IndexError in a helper, a slower sibling branch that succeeded), recorded."""
    where = tmp_path_factory.mktemp("failing")
    (where / "failing.py").write_text(FAILING)
    metadata = f"sqlite:///{where / 'runs.db'}"
    done = cli("run", "failing.py", cwd=where, env={"FANFLOW_METADATA": metadata})
    assert done.returncode == 1
    return where, metadata


def test_user_text_is_printed_verbatim(failed_run: tuple[Path, str]) -> None:
    where, metadata = failed_run
    done = cli("run", "failing.py", cwd=where, env={"FANFLOW_METADATA": metadata})
    assert done.returncode == 1
    assert "return xs[i]" in done.stderr, done.stderr  # Rich markup used to eat "[i]"
    errors = cli("runs", "errors", "last", "--metadata", metadata, cwd=where)
    assert errors.returncode == 0, errors.stderr
    assert "return xs[i]" in errors.stdout and "IndexError" in errors.stdout
    assert re.search(r"time: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", errors.stdout), errors.stdout  # ISO, not epoch


def test_runs_list_json_and_full_width_when_piped(failed_run: tuple[Path, str]) -> None:
    where, metadata = failed_run
    listed = cli("runs", "list", "--json", "--metadata", metadata, cwd=where)
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert len(runs) == 2 and {r["status"] for r in runs} == {"failed"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", runs[0]["submitted"])
    assert runs[0]["platform"] == "threads" and "IndexError" in runs[0]["error"]
    assert runs[0]["workflow"] == "failing.py"  # the script, not the sink's name
    table = cli("runs", "list", "--metadata", metadata, cwd=where)
    row = next(line for line in table.stdout.splitlines() if runs[0]["run_id"] in line)  # one line, not cut at 80
    assert "failed" in row and "threads" in row and "IndexError" in row and "failing.py" in row and len(row) > 80


def test_run_json_prints_numpy_and_pandas_as_values(tmp_path: Path) -> None:
    (tmp_path / "arrays.py").write_text(ARRAYS)
    done = cli("run", "arrays.py", "--json", cwd=tmp_path, env={"FANFLOW_METADATA": "none"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[[0, 1], [2, 3]], [{"row": 0, "total": 1}, {"row": 1, "total": 5}]]


def test_json_values() -> None:
    np = pytest.importorskip("numpy")
    assert to_json_value({"a": np.float32(1.5), "b": (np.int64(2), float("nan")), 3: b"x"}) == {
        "a": 1.5,
        "b": [2, None],
        "3": "x",
    }
    assert to_json_value(object).startswith("<class")


def test_script_syntax_error_is_one_clear_message(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import fanflow\n\ndef main(:\n    pass\n")
    done = cli("run", "broken.py", cwd=tmp_path, env={"FANFLOW_METADATA": "none"})
    assert done.returncode == 1
    assert "broken.py, line 3: SyntaxError" in done.stderr and "def main(:" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 3, done.stderr


def test_dashboard_fails_before_printing_a_url_when_the_port_is_taken(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn", reason=install_hint("dashboard"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = cli("dashboard", "--port", port, "--metadata", "none", "--store", "memory://", cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot serve the dashboard" in done.stderr and "--port" in done.stderr
    assert "http://" not in done.stderr + done.stdout


def test_report_of_a_failed_run(failed_run: tuple[Path, str]) -> None:
    pytest.importorskip("matplotlib", reason=install_hint("dashboard"))
    where, metadata = failed_run
    store = open_metadata(metadata)
    metrics = RunMetrics.from_stored(store.load_run(store.runs(limit=1)[0]["run_id"]))
    failed = next(t.task for t in metrics.tasks if t.status == "failed")
    assert metrics.critical_path()[-1] == failed  # not the slower branch that succeeded
    out = where / "report.html"
    done = cli("report", "last", "-o", str(out), "--metadata", metadata, cwd=where)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert "Errors (1)" in page and "Traceback" in page and "IndexError" in page
    assert "return xs[i]" in page  # the source line of a script function shipped by value
    assert page.count("data:image/png;base64,") == 3
    summary = page.split("<h3>", 1)[0]
    assert re.search(r"makespan</td><td>[\d.]+ (ms|s)</td>", summary), summary
    assert not re.search(r"\d\.\d{5,}", summary)  # human units, no raw floats


def test_plan_output_always_draws(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    for planner, color in (("wukong", "memory"), ("uniform", "worker")):
        out = tmp_path / f"{planner}.html"
        done = cli(
            "plan",
            "flow.py",
            "--planner",
            planner,
            "--color",
            color,
            "-o",
            str(out),
            "--metadata",
            "none",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        page = out.read_text()
        assert "→" in page and "predicted critical path" in page  # predicted times, legend
        assert ("1769 MB" if color == "memory" else "worker w0") in page
        assert ("makes no plan" in done.stdout) == (planner == "wukong")


def test_tracebacks_from_other_processes_show_source_lines(tmp_path: Path, redis_url: str) -> None:
    """Script functions reach worker processes by value, as ``<dynamic-code>``; the client puts the file back."""
    (tmp_path / "failing.py").write_text(FAILING)
    done = cli(
        "run",
        "failing.py",
        "--platform",
        "processes",
        "--store",
        redis_url,
        cwd=tmp_path,
        env={"FANFLOW_METADATA": "none"},
    )
    assert done.returncode == 1
    assert "<dynamic-code>" not in done.stderr, done.stderr
    assert re.search(r'failing\.py", line 5, in helper\n\s+return xs\[i\]', done.stderr), done.stderr
