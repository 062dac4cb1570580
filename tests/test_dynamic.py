"""Dynamic fan-outs: fanflow.map over lists whose length is known only at run time."""

from __future__ import annotations

from pathlib import Path

import pytest

import fanflow
from fanflow.dag import DAG


@fanflow.task
def split(n: int) -> list[int]:
    return list(range(n))


@fanflow.task
def square(x: int) -> int:
    return x * x


@fanflow.task
def total(xs: list[int]) -> int:
    return sum(xs)


@fanflow.task
def ordered(xs: list[int]) -> list[int]:
    return list(xs)


def shift(x: int, by: int, *, scale: int = 1) -> int:
    return (x + by) * scale


def test_map_then_reduce(run_config: fanflow.Config) -> None:
    assert total(fanflow.map(square, split(50))).compute(run_config) == sum(i * i for i in range(50))


def test_reduce_gets_the_list_in_order(run_config: fanflow.Config) -> None:
    assert ordered(fanflow.map(square, split(40))).compute(run_config) == [i * i for i in range(40)]


def test_map_of_a_map(run_config: fanflow.Config) -> None:
    twice = fanflow.map(square, fanflow.map(square, split(12)))
    assert twice.compute(run_config) == [i**4 for i in range(12)]


def test_map_with_extra_arguments_and_plain_function(run_config: fanflow.Config) -> None:
    offset = square(3)  # a node passed to every element
    node = fanflow.map(shift, split(5), offset, scale=2)
    assert node.compute(run_config) == [(i + 9) * 2 for i in range(5)]


def test_empty_and_single_lists(run_config: fanflow.Config) -> None:
    assert fanflow.map(square, split(0)).compute(run_config) == []
    assert total(fanflow.map(square, split(1))).compute(run_config) == 0


def test_map_beside_static_tasks_and_as_a_shared_input(run_config: fanflow.Config) -> None:
    squares = fanflow.map(square, split(6))
    both = fanflow.compute(total(squares), ordered(squares), square(7), config=run_config)
    assert both == (55, [0, 1, 4, 9, 16, 25], 49)


def test_map_over_a_non_list_fails_clearly(run_config: fanflow.Config) -> None:
    with pytest.raises(fanflow.MapInputError, match="list or tuple, got int"):
        fanflow.map(square, square(3)).compute(run_config)


def test_error_inside_an_element_names_the_task(run_config: fanflow.Config) -> None:
    @fanflow.task
    def fragile(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(fanflow.TaskFailedError, match="fragile"):
        total(fanflow.map(fragile, split(6))).compute(run_config)


def test_map_needs_a_node() -> None:
    with pytest.raises(fanflow.DAGError, match="for x in items"):
        fanflow.map(square, [1, 2, 3])  # type: ignore[arg-type]
    items = split(3)
    with pytest.raises(fanflow.DAGError, match="once"):
        fanflow.map(shift, items, items)


def test_map_is_one_node_in_the_static_dag() -> None:
    dag = DAG.from_sinks([total(fanflow.map(square, split(10)))])
    assert len(dag) == 3 and dag.maps == frozenset({1})


def test_elements_are_recorded_as_tasks(tmp_path: Path) -> None:
    from fanflow.store.metadata import open_metadata

    meta = f"sqlite:///{tmp_path / 'meta.db'}"
    cfg = fanflow.Config(progress=False, metadata=meta, metrics_upload="task")
    fut = total(fanflow.map(square, split(8))).submit(cfg)
    assert fut.result(timeout=30) == sum(i * i for i in range(8))
    stored = open_metadata(meta).load_run(fut.run_id)
    events = [(None, e) for e in stored.events]
    finished = [e for _, e in events if e["kind"] == "task_finished" and "element" in e]
    assert sorted(e["element"] for e in finished) == list(range(8))
    assert any(e["kind"] == "map_expanded" and e["elements"] == 8 for _, e in events)
