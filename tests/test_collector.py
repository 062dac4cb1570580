"""While invocations run, the collector's young generation is collected less often (fanflow.platforms.collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import fanflow
from fanflow.platforms.collector import YOUNG_EVERY, RelaxedCollector


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield 700, 10, 10
    gc.set_threshold(*before)


def test_relaxed_from_the_first_invocation_to_the_last_ones_end(thresholds: tuple[int, int, int]) -> None:
    collector = RelaxedCollector()
    collector.enter()
    collector.enter()  # a second, overlapping
    assert gc.get_threshold() == (YOUNG_EVERY, 10, 10)
    collector.leave()
    assert gc.get_threshold() == (YOUNG_EVERY, 10, 10)
    collector.leave()
    assert gc.get_threshold() == thresholds


def test_thresholds_set_meanwhile_are_kept_and_higher_ones_left_alone(thresholds: tuple[int, int, int]) -> None:
    collector = RelaxedCollector()
    collector.enter()
    gc.set_threshold(5000, 20, 10)  # the program's own choice while a run was going
    collector.leave()
    assert gc.get_threshold() == (5000, 20, 10)
    for own in ((50_000, 10, 10), (0, 10, 10)):  # already rarer than ours; automatic collection off
        gc.set_threshold(*own)
        collector.enter()
        assert gc.get_threshold() == own
        collector.leave()
        assert gc.get_threshold() == own


@fanflow.task
def young_threshold(_: int) -> int:
    return gc.get_threshold()[0]


def test_tasks_on_the_embedded_default_run_with_the_relaxed_collector(thresholds: tuple[int, int, int]) -> None:
    config = {"progress": False, "metadata": "none"}
    assert young_threshold(1).compute(config) == YOUNG_EVERY
    assert gc.get_threshold() == thresholds
