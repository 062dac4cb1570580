"""The ``ray`` platform: every invocation is a Ray task, sized like a FaaS function.

Ray already schedules tasks over a cluster, so fanflow brings no scheduler of
its own here either: each invocation (a worker with its start tasks) becomes
one Ray task running the worker layer's ``ray_task`` entry point, and a worker's fan-out
branches are Ray tasks it submits itself (nested tasks), exactly as it would
post them to a gateway. Results stay in fanflow's store, not in Ray's object
store, so the ``ObjectRef`` of a task is dropped at once; Ray still runs a task
whose reference was dropped.

Resources follow the invocation's ``memory_mb``, with AWS Lambda's rule that
1769 MB buys one vCPU: ``memory = memory_mb MiB`` and ``num_cpus = memory_mb /
1769`` (fractional below one CPU). A request no node can ever satisfy would sit
in Ray's queue forever, so the invoker refuses it with an error instead.

The signing secret reaches the tasks through the ``runtime_env`` of the root
tasks (``FANFLOW_SECRET``), which nested tasks inherit, so it is never a task
argument. Anyone who may submit Ray tasks can run code on the cluster anyway:
on Ray the signature guards against tampering, not against the cluster's users.

A Ray task whose process dies (e.g. killed at its memory limit) is retried by
Ray up to the run's ``max_recoveries`` times with the same payload, which is
the redelivery fanflow's claims are built for. Ray is reached through
``config.endpoints`` (a Ray address such as ``ray://head:10001``), else
``RAY_ADDRESS``, else a local Ray instance is started.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Sequence
from typing import Any

import ray

from fanflow.config import Config, signing_secret
from fanflow.errors import PlatformError
from fanflow.platforms.base import WORKER_ENTRY, InvokerCache
from fanflow.platforms.invocation import peek
from fanflow.platforms.sizing import MB_PER_VCPU, vcpus

__all__ = ["MB_PER_VCPU", "RayPlatform", "client_platform", "resources", "worker_platform"]


FREE_SLOTS_TTL_S = 0.05
"""How long one read of Ray's idle CPUs serves: a worker asks before each task, and Ray itself
refreshes its cluster-wide view only every 100 ms or so."""


def resources(memory_mb: int) -> dict[str, float]:
    """The Ray resource request of an invocation with ``memory_mb``."""
    return {"memory": float(memory_mb * 1024 * 1024), "num_cpus": vcpus(memory_mb)}


def _run(payload: bytes) -> dict[str, Any]:
    """The Ray task, run in a Ray worker process: hands the payload to the worker layer's entry point.

    The entry is resolved by name there, as a process's command line or a
    Lambda function's handler names it: this module never imports the worker.
    """
    return importlib.import_module(WORKER_ENTRY).ray_task(payload)  # type: ignore[no-any-return]


_task = ray.remote(_run)


class RayPlatform:
    """Submits each signed payload as a Ray task sized from its ``memory_mb``."""

    name = "ray"
    in_process = False

    def __init__(self, runtime_env: dict[str, Any] | None = None) -> None:
        self.options: dict[str, Any] = {}
        self._runtime_env = runtime_env
        self._largest: tuple[float, float] | None = None
        self._free = 0
        self._free_until = 0.0

    def free_slots(self) -> int | None:
        """Whole idle CPUs of the Ray cluster (``ray.available_resources()``), read at most every
        :data:`FREE_SLOTS_TTL_S`, less the invocations submitted since. A hint, as on every platform:
        Ray's view lags, and a stale count costs an invocation that waits in Ray's queue."""
        now = time.monotonic()
        if now >= self._free_until:
            self._free = int(ray.available_resources().get("CPU", 0.0))
            self._free_until = now + FREE_SLOTS_TTL_S
        return self._free

    def invoke(self, invocations: Sequence[Any]) -> None:
        """Submit one Ray task per payload; returns once they are submitted (never waits for them)."""
        for payload in invocations:
            inv = peek(bytes(payload))
            wanted = resources(inv.memory_mb)
            self._check_fits(inv.memory_mb, wanted)
            options: dict[str, Any] = {**wanted, "max_retries": inv.settings.max_recoveries}
            if self._runtime_env is not None:
                options["runtime_env"] = self._runtime_env
            _task.options(**options).remote(bytes(payload))
        self._free = max(0, self._free - len(invocations))

    def _check_fits(self, memory_mb: int, wanted: dict[str, float]) -> None:
        if self._largest is None:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            self._largest = (
                max((r.get("memory", 0.0) for r in nodes), default=0.0),
                max((r.get("CPU", 0.0) for r in nodes), default=0.0),
            )
        memory, cpus = self._largest
        if wanted["memory"] > memory or wanted["num_cpus"] > cpus:
            raise PlatformError(
                f"an invocation asks Ray for memory_mb={memory_mb} ({wanted['num_cpus']:.2f} CPUs), more than any "
                f"node has ({memory / 2**20:.0f} MB, {cpus:g} CPUs): lower the task's memory_mb or add larger nodes"
            )

    def close(self) -> None:
        """Nothing to release: the Ray connection outlives runs (``ray.shutdown()`` is the caller's)."""


def client_platform(config: Config) -> RayPlatform:
    """Connect to Ray (``config.endpoints``, ``RAY_ADDRESS`` or a new local instance) unless already connected."""
    if not ray.is_initialized():
        try:
            ray.init(address=config.endpoints, ignore_reinit_error=True, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = config.endpoints or os.environ.get("RAY_ADDRESS") or "a new local instance"
            raise PlatformError(
                f"cannot connect to Ray at {where} ({exc}); start it with `ray start --head` or fix "
                "config.endpoints / RAY_ADDRESS"
            ) from exc
    return RayPlatform({"env_vars": {"FANFLOW_SECRET": signing_secret(config).decode()}})


_invokers: InvokerCache[RayPlatform] = InvokerCache()


def worker_platform(options: dict[str, Any]) -> RayPlatform:
    """Inside a Ray task: nested tasks inherit this task's runtime env, secret included."""
    return _invokers.get("ray", RayPlatform)
