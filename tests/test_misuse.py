"""Misuse a new user may try: a malformed ``fanflow.toml``, a NaN timeout, a run started inside a task.

Each ends in a specific :class:`fanflow.FanflowError` that says what to do, never a raw
``TypeError`` or a silent hang.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fanflow
from fanflow.config import Config


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"fanflow = 3\n", "'fanflow' must be a table"),
        (b'fanflow = "threads"\n', "'fanflow' must be a table"),
        (b"[fanflow]\nplatform = 'thr\xe9ads'\n", "not UTF-8"),
        (b"[fanflow\n", "not valid TOML"),
    ],
)
def test_a_malformed_fanflow_toml_is_a_config_error(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "fanflow.toml").write_bytes(content)
    with pytest.raises(fanflow.ConfigError, match=match):
        Config.load(cwd=tmp_path, environ={})


def test_the_cli_reports_a_malformed_fanflow_toml_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "fanflow.toml").write_bytes(b"fanflow = 3\n")
    out = subprocess.run(
        [sys.executable, "-m", "fanflow.cli", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "must be a table" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("value", [float("nan"), "nan", float("inf"), "-inf"])
def test_a_timeout_must_be_a_finite_number(value: object) -> None:
    with pytest.raises(fanflow.ConfigError, match="finite"):
        Config(timeout_s=value)  # type: ignore[arg-type]


@fanflow.task
def _inner(x: int) -> int:
    return x + 1


_THREADS = {"platform": "threads", "store": "memory://", "max_workers": 2, "progress": False, "metadata": "none"}


@fanflow.task
def _starts_a_run(x: int, inner_config: dict[str, object]) -> int:
    return _inner(x).compute(Config(**inner_config))  # type: ignore[arg-type,no-any-return]


def _run_in_a_process(inner: dict[str, object]) -> str:
    script = textwrap.dedent(
        """
        import fanflow, sys
        sys.path.insert(0, {tests!r})
        from test_misuse import _THREADS, _starts_a_run
        try:
            print("result:", fanflow.compute(*[_starts_a_run(i, {inner!r}) for i in range(4)], config=_THREADS))
        except fanflow.NestedRunError as exc:
            print("refused:", exc)
        """
    ).format(tests=str(Path(__file__).parent), inner=inner)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr[-2000:]


def test_compute_inside_a_task_on_its_own_threads_platform_is_refused_not_a_hang() -> None:
    """Both worker threads inside such a task: the inner runs would wait forever for a thread."""
    assert "refused: compute() or submit() was called inside a task" in _run_in_a_process(_THREADS)


def test_compute_inside_a_task_with_a_config_of_its_own_runs() -> None:
    assert "result: (1, 2, 3, 4)" in _run_in_a_process({**_THREADS, "max_workers": 3})
