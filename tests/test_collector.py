"""While invocations run, the collector's young generation is collected less often (fanflow.platforms.collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import fanflow
from fanflow.platforms.collector import YOUNG_EVERY, RelaxedCollector


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before, callbacks = gc.get_threshold(), list(gc.callbacks)
    gc.set_threshold(700, 10, 10)
    yield 700, 10, 10
    gc.set_threshold(*before)
    gc.callbacks[:] = callbacks  # the collectors made here added theirs; the process's one stays


def test_relaxed_from_the_first_invocation_to_the_last_ones_end(thresholds: tuple[int, int, int]) -> None:
    collector = RelaxedCollector()
    collector.enter()
    assert gc.get_threshold() == thresholds  # nothing changes before a collection starts
    collector.enter()  # a second, overlapping
    gc.collect(0)
    assert gc.get_threshold() == (YOUNG_EVERY, 10, 10)
    collector.leave()
    assert gc.get_threshold() == (YOUNG_EVERY, 10, 10)
    collector.leave()
    assert gc.get_threshold() == thresholds


def test_thresholds_set_meanwhile_are_kept_and_higher_ones_left_alone(thresholds: tuple[int, int, int]) -> None:
    collector = RelaxedCollector()
    collector.enter()
    gc.collect(0)
    gc.set_threshold(5000, 20, 10)  # the program's own choice while a run was going
    collector.leave()
    assert gc.get_threshold() == (5000, 20, 10)
    for own in ((50_000, 10, 10), (0, 10, 10)):  # already rarer than ours; automatic collection off
        gc.set_threshold(*own)
        collector.enter()
        gc.collect(0)
        assert gc.get_threshold() == own
        collector.leave()
        assert gc.get_threshold() == own


@fanflow.task
def young_threshold(_: int) -> int:
    gc.collect(0)  # as a task allocating more than a few hundred objects would set off
    return gc.get_threshold()[0]


def test_tasks_on_the_embedded_default_run_with_the_relaxed_collector(thresholds: tuple[int, int, int]) -> None:
    config = {"progress": False, "metadata": "none"}
    assert young_threshold(1).compute(config) == YOUNG_EVERY
    assert gc.get_threshold() == thresholds
