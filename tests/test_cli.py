"""The fanflow command line: run, config, --version."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fanflow

SCRIPT = """
import fanflow

@fanflow.task
def square(x):
    return x * x

@fanflow.task
def total(xs):
    return sum(xs)

def main(argv):
    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 4
    return total([square(i) for i in range(n)])
"""


def fanflow_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "FANFLOW_METADATA": "none", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fanflow.cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_version(tmp_path: Path) -> None:
    done = fanflow_cli("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert fanflow.__version__ in done.stdout


def test_run_script_with_arguments(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(SCRIPT)
    done = fanflow_cli("run", "flow.py", "--no-progress", "--", "--n", "10", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sum(i * i for i in range(10)))


def test_run_reports_bad_scripts_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "empty.py").write_text("x = 1\n")
    done = fanflow_cli("run", "empty.py", cwd=tmp_path)
    assert done.returncode == 1
    assert "must define main" in done.stderr
    assert "Traceback" not in done.stderr
    missing = fanflow_cli("run", "nope.py", cwd=tmp_path)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_run_rejects_bad_options(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(SCRIPT)
    done = fanflow_cli("run", "flow.py", "--platform", "lambada", cwd=tmp_path)
    assert done.returncode == 1
    assert "did you mean 'lambda'" in done.stderr


def test_config_masks_secrets(tmp_path: Path) -> None:
    (tmp_path / "fanflow.toml").write_text('store = "redis://app:pa55word@localhost:6390/0"\n')
    done = fanflow_cli("config", cwd=tmp_path, env={"FANFLOW_SECRET": "very-secret-key", "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "pa55word" not in done.stdout and "very-secret-key" not in done.stdout
    assert "app:***@localhost:6390" in done.stdout


def test_run_checks_the_requirements_file_beside_the_script(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(SCRIPT)
    (tmp_path / "requirements.txt").write_text("numpy>=1.20\nno-such-package-fanflow-test>=1\n")
    done = fanflow_cli("run", "flow.py", "--no-progress", cwd=tmp_path)
    assert done.returncode == 1
    assert "no-such-package-fanflow-test>=1 (not installed)" in done.stderr
    (tmp_path / "requirements.txt").write_text("numpy>=1.20\n")
    assert fanflow_cli("run", "flow.py", "--no-progress", cwd=tmp_path).returncode == 0


def test_script_tasks_keep_their_identity_across_processes(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(SCRIPT)
    probe = (
        "from fanflow.cli.script import load_sinks; sinks, _ = load_sinks('flow.py', []); print(sinks[0].task.identity)"
    )
    first, second = (
        subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        for _ in range(2)
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and "total" in first.stdout


SLOW_SCRIPT = """
import time
import fanflow

@fanflow.task
def slow(x):
    time.sleep(1.3)
    return x

def main(argv):
    return slow(7)
"""


def test_progress_bar_goes_to_stderr_for_long_runs_and_is_off_on_request(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW_SCRIPT)
    # The three runs side by side: each waits 1.3 s, past the bar's 1 s, and need not wait for the others.
    with ThreadPoolExecutor(3) as pool:
        shown, hidden, piped = pool.map(
            lambda flag: fanflow_cli("run", "slow.py", *flag, cwd=tmp_path), [["--progress"], ["--no-progress"], []]
        )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "7"  # the result alone on stdout
    assert "slow" in shown.stderr and "1/1" in shown.stderr
    assert hidden.returncode == 0 and hidden.stdout.strip() == "7" and "1/1" not in hidden.stderr
    assert piped.returncode == 0 and "1/1" not in piped.stderr  # not a terminal: off by default


def test_pool_names_that_would_break_the_pools_redis_keys_are_refused(tmp_path: Path) -> None:
    """`{` and `}` would end the Redis Cluster hash tag of the pool's keys early; nothing starts."""
    for args in (("worker-pool", "--name", "team{a}"), ("gateway", "--port", "0", "--pool", "team}")):
        done = fanflow_cli(*args, cwd=tmp_path, env={"FANFLOW_SECRET": "s" * 32})
        assert done.returncode == 1
        said = " ".join(done.stderr.split())  # the message may be wrapped
        assert f"{args[-2]}='{args[-1]}'" in said and "letters, digits, '.', '_' and '-' only" in said
