"""Small helpers for tests whose tasks run in other processes."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path


def bump(path: str, by: int = 1) -> int:
    """Add ``by`` to the integer in file ``path`` (created at 0) under a lock; the new value."""
    file = Path(path)
    file.touch(exist_ok=True)
    with file.open("r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        value = int(f.read() or 0) + by
        f.seek(0)
        f.truncate()
        f.write(str(value))
    return value


def wait_for_file(path: Path, timeout: float) -> None:
    """Block until ``path`` exists; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)
