"""A finished worker is freed at once, with what its cache holds, without waiting for the cycle collector."""

from __future__ import annotations

import gc

import fanflow
from fanflow.worker.loop import Worker


@fanflow.task
def part(i: int) -> list[int]:
    return [i] * 1000


@fanflow.task
def total(*parts: list[int]) -> int:
    return sum(map(sum, parts))


def live_workers() -> int:
    return sum(isinstance(o, Worker) for o in gc.get_objects())


def test_workers_hold_no_reference_cycle() -> None:
    config = fanflow.Config(progress=False, metadata="none")
    total(*[part(i) for i in range(8)]).compute(config)  # warm up the platform
    gc.collect()
    gc.disable()
    try:
        before = live_workers()
        assert total(*[part(i) for i in range(20)]).compute(config) == 1000 * sum(range(20))
        assert live_workers() == before
    finally:
        gc.enable()
