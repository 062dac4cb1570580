"""Keep-alive: a client-started pool stays warm after its last run, for ``keep_alive_s``, and never leaks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import wait_until

import fanflow
from fanflow.client.session import IDLE_MAX, session
from fanflow.platforms.processes import ProcessesPlatform


@fanflow.task
def pid_of(x: int) -> int:
    return os.getpid()


@fanflow.task
def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


def _config(redis_url: str, **overrides: object) -> fanflow.Config:
    options: dict[str, object] = {
        "platform": "processes",
        "store": redis_url,
        "max_workers": 1,
        "progress": False,
        "metadata": "none",
        **overrides,
    }
    return fanflow.Config(**options)  # type: ignore[arg-type]


def _platform(config: fanflow.Config) -> ProcessesPlatform:
    """The session's platform for ``config`` (taken and given back, so no run is counted)."""
    platform = session().acquire(config)
    session().release(config, platform)
    assert isinstance(platform, ProcessesPlatform)
    return platform


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes: it runs nothing
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_second_compute_runs_on_the_warm_workers_of_the_first(redis_url: str) -> None:
    config = _config(redis_url, keep_alive_s=30)
    first = pid_of(1).compute(config)
    platform = _platform(config)
    assert platform.host is not None
    cold_starts = platform.host.stats["cold_starts"]
    second = pid_of(2).compute(config)
    assert second == first  # the same worker process ran both runs
    assert _platform(config) is platform
    assert platform.host.stats["cold_starts"] == cold_starts
    assert _alive(first)


def test_an_idle_pool_closes_when_its_keep_alive_ends(redis_url: str) -> None:
    config = _config(redis_url, keep_alive_s=0.5)
    worker = pid_of(1).compute(config)
    platform = _platform(config)  # re-arms the keep-alive: the pool has been idle since now
    wait_until(lambda: platform.host is None, 20, "the idle pool to close")
    wait_until(lambda: not _alive(worker), 20, "its worker process to exit")
    assert _platform(config) is not platform  # the next run gets a new pool
    session().close_idle()


def test_keep_alive_zero_stops_the_pool_with_its_run(redis_url: str) -> None:
    config = _config(redis_url, keep_alive_s=0)
    worker = pid_of(1).compute(config)
    wait_until(lambda: not _alive(worker), 20, "the worker process to exit with the run")


def test_a_pool_halted_by_a_failed_run_is_not_reused(redis_url: str) -> None:
    config = _config(redis_url, keep_alive_s=30)
    worker = pid_of(1).compute(config)
    with pytest.raises(fanflow.TaskFailedError, match="boom"):
        boom(1).compute(config)
    wait_until(lambda: not _alive(worker), 20, "the halted pool's worker to exit")
    assert pid_of(2).compute(config) != worker  # a fresh pool, not the closed one


def test_at_most_idle_max_pools_stay_warm(redis_url: str) -> None:
    configs = [_config(redis_url, keep_alive_s=30, max_workers=n) for n in range(1, IDLE_MAX + 2)]
    workers = [pid_of(i).compute(c) for i, c in enumerate(configs)]
    wait_until(lambda: not _alive(workers[0]), 20, "the oldest idle pool to be closed")
    assert all(_alive(w) for w in workers[1:])


SCRIPT = """
import sys
import fanflow

@fanflow.task
def pid_of(x):
    import os
    return os.getpid()

config = fanflow.Config(platform="processes", store=sys.argv[1], max_workers=1, progress=False,
                        metadata="none", keep_alive_s=600)
print(pid_of(1).compute(config), flush=True)
"""


def test_interpreter_exit_closes_a_warm_pool(redis_url: str, tmp_path: Path) -> None:
    script = tmp_path / "once.py"
    script.write_text(SCRIPT)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), redis_url], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - began < 30  # exit does not wait for the 600 s keep-alive
    worker = int(done.stdout.strip())
    wait_until(lambda: not _alive(worker), 10, "the script's worker process to exit with it")
