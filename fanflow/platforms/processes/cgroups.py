"""CPU and memory limits for worker processes, the way a FaaS platform sizes them.

On AWS Lambda a function's CPU share grows with its memory: 1769 MB buys one
vCPU. The pool emulates that with Linux control groups, one cgroup per worker
process (a class-wide group would make the workers of one memory class share
one vCPU and one memory limit, which no FaaS platform does):

- cgroup v2: ``cpu.max = "<quota> <period>"`` and ``memory.max``;
- cgroup v1: ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` and ``memory.limit_in_bytes``.

A worker below one vCPU gets a 10 ms period (:data:`SHORT_PERIOD_US`), not the
kernel's 100 ms, so that its fraction of a vCPU is a steady fraction of the speed
rather than bursts and stalls; one with a whole vCPU or more keeps 100 ms
(:func:`cpu_period_us`).

Groups are made under the cgroup this process already lives in, never at the
root, so the limits of whoever started fanflow still apply to its workers. The
pool's groups sit under one parent per pool (``fanflow-<pool>-<pid>``), removed
when the pool closes. A pool that is SIGKILLed never closes them, so every pool
removes, when it starts, the empty groups of pools whose process is gone
(:func:`remove_stale`), among those of its own prefix (``fanflow`` unless given:
a test of that cleanup names its pools apart, so that no other pool starting on
the machine cleans up first). Where cgroups are not writable (no root, read-only
mount, v2 without delegated controllers) workers run unthrottled, and the first
pool of the process logs ONE warning saying so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fanflow.platforms.sizing import MB_PER_VCPU

log = logging.getLogger(__name__)

PREFIX = "fanflow"
PERIOD_US = 100_000
"""The CFS bandwidth period of a worker with one vCPU or more (the kernel's default)."""
SHORT_PERIOD_US = 10_000
"""The period of a worker below one vCPU. With 100 ms such a worker runs a short task at full speed
until its quota for the period is spent, then stalls for the rest of the period: the same 20 ms task
at 512 MB took anything from 20 to 91 ms depending on where it fell in the period; with 10 ms, 62-74 ms.
Not for a whole vCPU or more: the kernel hands quota to each CPU in 5 ms slices, and a 10 ms quota
split over two CPUs ran out while one thread still ran (1769 MB workers were throttled in gemm and
svd1 runs, never with 100 ms). See docs/platforms.md, "Run-to-run variance"."""
MIN_QUOTA_US = 1_000
"""The kernel's smallest quota: below about 180 MB a worker gets this (0.1 vCPU), not less."""
ROOT = Path("/sys/fs/cgroup")

_warned = False


def cpu_period_us(memory_mb: int) -> int:
    """The CFS period of a worker of ``memory_mb``: short below one vCPU (:data:`SHORT_PERIOD_US`)."""
    return SHORT_PERIOD_US if memory_mb < MB_PER_VCPU else PERIOD_US


def cpu_quota_us(memory_mb: int) -> int:
    """CPU time per period of :func:`cpu_period_us` for ``memory_mb`` (1769 MB = one full period, i.e. 1 vCPU)."""
    return max(MIN_QUOTA_US, cpu_period_us(memory_mb) * memory_mb // MB_PER_VCPU)


def nice_weight(nice: int) -> int:
    """The scheduler's weight of one process at ``nice`` (1024 at 0, 1.25 times more per step down)."""
    return round(1024 * 1.25**-nice)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where to make groups and which files set the limits."""

    cpu_dir: Path
    memory_dir: Path
    v2: bool


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per controller (``""`` for the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path.lstrip("/")
    return paths


def _detect() -> _Layout:
    """The directories under which this process may make cgroups; raises OSError where it may not."""
    paths = _own_paths()
    unified = ROOT / "cgroup.controllers"
    if unified.is_file():
        own = ROOT / paths.get("", "")
        if not {"cpu", "memory"} <= set((own / "cgroup.controllers").read_text().split()):
            raise OSError(f"the cpu and memory controllers are not delegated to {own}")
        return _Layout(own, own, v2=True)
    dirs = []
    for controller in ("cpu", "memory"):
        if controller not in paths:
            raise OSError(f"no cgroup v1 {controller} controller for this process")
        mount = next((ROOT / n for n in (controller, "cpu,cpuacct") if (ROOT / n).is_dir()), None)
        if mount is None:
            raise OSError(f"the cgroup v1 {controller} hierarchy is not mounted under {ROOT}")
        dirs.append(mount / paths[controller])
    return _Layout(dirs[0], dirs[1], v2=False)


class Cgroups:
    """The cgroups of one pool: a parent group, and one group per worker process.

    The parent's CPU weight is ``processes`` times the weight of one process at
    the pool's own nice value (v1 ``cpu.shares``, v2 ``cpu.weight``): under
    contention a group competes as ONE entity with every process beside it, and
    the nice values of the processes inside it no longer count against those
    outside. At the default weight all of a pool's workers together would get
    the share of a single process, and a pool started with ``nice -n -10`` would
    get no more than one at nice 0. The groups are named ``<prefix>-<pool>-<pid>``;
    starting, it removes stale groups of that prefix.
    """

    def __init__(self, pool: str, processes: int = 1, prefix: str = PREFIX) -> None:
        self._groups: list[Path] = []
        self._lock = threading.Lock()
        """The pool places and removes groups from several threads at once (its launches and reaps)."""
        self.available = False
        try:
            layout = _detect()
            remove_stale((layout.cpu_dir, layout.memory_dir), prefix)
            name = f"{prefix}-{pool}-{os.getpid()}"
            weight = processes * nice_weight(os.getpriority(os.PRIO_PROCESS, 0))
            if layout.v2:
                self._parents = [_mkdir(layout.cpu_dir / name)]
                if not {"cpu", "memory"} <= set((self._parents[0] / "cgroup.controllers").read_text().split()):
                    raise OSError(f"{layout.cpu_dir} does not enable the cpu and memory controllers for its children")
                (self._parents[0] / "cgroup.subtree_control").write_text("+cpu +memory")
                (self._parents[0] / "cpu.weight").write_text(str(min(10_000, max(1, round(weight * 100 / 1024)))))
            else:
                self._parents = [_mkdir(layout.cpu_dir / name), _mkdir(layout.memory_dir / name)]
                (self._parents[0] / "cpu.shares").write_text(str(min(262_144, max(2, weight))))
            self._layout = layout
            self.available = True
        except OSError as exc:
            self._parents = []
            self.close()
            _warn_once(exc)

    def place(self, pid: int, child: str, memory_mb: int) -> None:
        """Put process ``pid`` in a new group ``child`` limited to ``memory_mb`` and its CPU share."""
        if not self.available:
            return
        period, quota = cpu_period_us(memory_mb), cpu_quota_us(memory_mb)
        limit = str(memory_mb * 1024 * 1024)
        try:
            if self._layout.v2:
                group = _mkdir(self._parents[0] / child)
                with self._lock:
                    self._groups.append(group)
                (group / "cpu.max").write_text(f"{quota} {period}")
                (group / "memory.max").write_text(limit)
                (group / "cgroup.procs").write_text(str(pid))
                return
            cpu = _mkdir(self._parents[0] / child)
            with self._lock:
                self._groups.append(cpu)
            (cpu / "cpu.cfs_period_us").write_text(str(period))
            (cpu / "cpu.cfs_quota_us").write_text(str(quota))
            memory = _mkdir(self._parents[1] / child)
            with self._lock:
                self._groups.append(memory)
            (memory / "memory.limit_in_bytes").write_text(limit)
            (cpu / "cgroup.procs").write_text(str(pid))
            (memory / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            log.warning("could not limit worker process %d to %d MB with cgroups: %s", pid, memory_mb, exc)

    def remove(self, child: str) -> None:
        """Remove the groups of a worker process that has exited."""
        for parent in self._parents:
            group = parent / child
            with self._lock:
                if group not in self._groups:
                    continue
                self._groups.remove(group)
            with contextlib.suppress(OSError):
                group.rmdir()

    def close(self) -> None:
        """Remove every group this pool made (its processes must have exited)."""
        for group in self._groups:
            with contextlib.suppress(OSError):
                group.rmdir()
        self._groups = []
        for parent in self._parents:
            with contextlib.suppress(OSError):
                parent.rmdir()
        self._parents = []
        self.available = False


def remove_stale(dirs: Iterable[Path], prefix: str = PREFIX) -> int:
    """Remove the groups of pools whose process is gone (``<prefix>-<pool>-<pid>``); how many went.

    Only empty groups can be removed (the kernel refuses a group with processes
    or children), so a live pool's groups stay even where its pid is not visible
    from here; a pid that is alive, whatever it runs now, keeps its groups.
    """
    removed = 0
    for base in dict.fromkeys(dirs):
        try:
            parents = [p for p in base.glob(f"{prefix}-*") if p.is_dir()]
        except OSError:
            continue
        for parent in parents:
            pid = parent.name.rpartition("-")[2]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                for child in [c for c in parent.iterdir() if c.is_dir()]:
                    child.rmdir()
                parent.rmdir()
                removed += 1
    if removed:
        log.info("removed %d cgroups left by worker pools that were killed", removed)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _mkdir(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


def _warn_once(exc: OSError) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "cgroups are not writable here (%s): worker processes run without CPU and memory limits, "
            "so memory_mb does not size them. Run the pool as root on a host with cgroup v1, or with "
            "the cpu and memory controllers delegated (cgroup v2), to emulate FaaS sizing.",
            exc,
        )
