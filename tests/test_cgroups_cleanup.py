"""Cgroups left by a SIGKILLed pool are removed by the next pool that starts (real cgroups, real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from support import wait_until

from fanflow.platforms.processes.cgroups import Cgroups, remove_stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def writable() -> None:
    probe = Cgroups(f"probe-{uuid.uuid4().hex[:6]}")
    available = probe.available
    probe.close()
    if not available:
        pytest.skip("cgroups are not writable here")


def test_a_killed_pools_cgroups_are_removed_when_a_pool_starts(writable: None) -> None:
    pool = f"killed-{uuid.uuid4().hex[:6]}"
    # Every pool starting on this machine removes the stale "fanflow-" groups: under a prefix of its own,
    # the killed pool's groups are still there when this test's fresh pool starts, whoever else runs pools.
    prefix = f"fanflowtest{uuid.uuid4().hex[:6]}"
    # A pool process that limits one worker process, then is SIGKILLed with it: nothing closes its groups.
    script = textwrap.dedent(
        f"""
        import subprocess, sys
        from fanflow.platforms.processes.cgroups import Cgroups
        groups = Cgroups({pool!r}, prefix={prefix!r})
        worker = subprocess.Popen(["sleep", "300"])
        groups.place(worker.pid, "w-1", 256)
        print(worker.pid, *groups._parents, sep="\\n", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    parents = [Path(proc.stdout.readline().strip()) for _ in range(2)]
    parents = [p for p in parents if str(p)]
    os.kill(worker, signal.SIGKILL)
    proc.kill()
    proc.wait(timeout=10)
    try:
        # reaped by init once its parent is gone
        wait_until(lambda: not _alive(worker), 10, "the killed worker process to go away")
        assert all(p.is_dir() and (p / "w-1").is_dir() for p in parents)  # left behind

        fresh = Cgroups(f"fresh-{uuid.uuid4().hex[:6]}", prefix=prefix)  # what a pool does when it starts
        try:
            assert fresh.available
            assert not any(p.exists() for p in parents)
            assert all(p.is_dir() for p in fresh._parents)  # its own groups are made as usual
        finally:
            fresh.close()
    finally:
        remove_stale({p.parent for p in parents}, prefix)  # no later pool looks for this prefix: clean up
