"""The ray platform on a local Ray instance: tasks sized from memory_mb, nested fan-out, refusals.

The DAG-shape suite runs on Ray through ``run_config`` (see conftest).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import install_hint, wait_until

import fanflow
from fanflow.store.metadata import drain, open_metadata

ray = pytest.importorskip("ray", reason=install_hint("ray"))

from fanflow.platforms.ray import MB_PER_VCPU, resources  # noqa: E402 - after the skip when Ray is absent


@fanflow.task
def where(x: int) -> tuple[int, float]:
    """This worker's pid and the CPUs Ray gave the task running it."""
    ctx = ray.get_runtime_context()
    return os.getpid(), float(ctx.get_assigned_resources().get("CPU", 0.0)) + 0 * x


@fanflow.task(memory_mb=2 * MB_PER_VCPU)
def big(x: int) -> float:
    return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)) + 0 * x


@fanflow.task(memory_mb=16 * MB_PER_VCPU)
def huge(x: int) -> int:
    return x


@fanflow.task
def pair(a: tuple[int, float], b: tuple[int, float]) -> list[tuple[int, float]]:
    return [a, b]


@pytest.fixture
def config(ray_local: None, redis_url: str) -> fanflow.Config:
    return fanflow.Config(platform="ray", store=redis_url, progress=False, metadata="none")


def test_resources_follow_memory_like_lambda() -> None:
    assert resources(MB_PER_VCPU) == {"memory": MB_PER_VCPU * 2**20, "num_cpus": 1.0}
    assert resources(MB_PER_VCPU // 2)["num_cpus"] == pytest.approx(0.5, abs=1e-3)


def test_every_invocation_is_a_ray_task_with_its_cpus(config: fanflow.Config) -> None:
    (pid_a, cpu_a), (pid_b, cpu_b) = pair(where(1), where(2)).compute(config)
    assert os.getpid() not in (pid_a, pid_b)  # ran in Ray workers, not here
    assert cpu_a == cpu_b == 1.0  # default memory_mb 1769 = 1 vCPU
    assert big(1).compute(config) == 2.0


def test_a_request_no_node_can_meet_is_refused_not_queued_forever(config: fanflow.Config) -> None:
    with pytest.raises(fanflow.PlatformError, match="more than any node has"):
        huge(1).compute(config)


@fanflow.task
def leaf(i: int) -> int:
    return i + 1


@fanflow.task
def both(a: int, b: int) -> int:
    return a + b


def test_a_tree_runs_on_about_as_many_workers_as_ray_has_cpus(ray_local: None, redis_url: str, tmp_path: Path) -> None:
    config = fanflow.Config(platform="ray", store=redis_url, progress=False, metadata=f"sqlite:///{tmp_path / 'm.db'}")
    nodes = [leaf(i) for i in range(64)]
    while len(nodes) > 1:
        nodes = [both(nodes[i], nodes[i + 1]) for i in range(0, len(nodes), 2)]
    # Tasks of earlier tests may still hold CPUs in Ray's view: with none idle, one worker would run it all.
    wait_until(lambda: ray.available_resources().get("CPU", 0.0) >= 2, 30, "Ray to show both CPUs idle")
    future = nodes[0].submit(config)
    assert future.result(timeout=120) == sum(range(1, 65))
    drain()
    events = open_metadata(config.metadata).load_run(future.run_id).events
    started = [e for e in events if e["kind"] == "worker_started"]
    # One worker per root would be 64 invocations; with Ray's 2 CPUs as the free-slot count, the client
    # starts about two and workers hand work over only when Ray reports an idle CPU (its view lags a little).
    assert 2 <= len(started) <= 16, len(started)
