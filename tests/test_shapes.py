"""DAG shapes every platform must compute exactly."""

from __future__ import annotations

import operator
from pathlib import Path

import pytest
from support import add, inc

import fanflow


@fanflow.task
def total(values: list[int]) -> int:
    return sum(values)


@fanflow.task
def nested_sum(data: object) -> int:
    """Sum every int found in nested lists/tuples/dicts."""
    if isinstance(data, dict):
        return sum(nested_sum.func(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return sum(nested_sum.func(v) for v in data)
    return int(data)  # type: ignore[call-overload]


@fanflow.task
def nothing(*_: object) -> None:
    return None


@fanflow.task
def boom(x: int) -> int:
    raise ValueError(f"boom at {x}")


def test_single_node(run_config: fanflow.Config) -> None:
    assert inc(41).compute(run_config) == 42


def test_diamond(run_config: fanflow.Config) -> None:
    top = inc(1)
    assert add(inc(top), inc(top)).compute(run_config) == 6


def test_wide_fan_out(run_config: fanflow.Config) -> None:
    root = inc(0)
    leaves = [add(root, i) for i in range(1000)]
    assert total(leaves).compute(run_config) == sum(1 + i for i in range(1000))


def test_fan_in_of_1000(run_config: fanflow.Config) -> None:
    assert total([inc(i) for i in range(1000)]).compute(run_config) == sum(range(1, 1001))


def test_deep_chain_has_no_recursion_limit(run_config: fanflow.Config) -> None:
    node = inc(0)
    for _ in range(9_999):
        node = inc(node)
    assert node.compute(run_config) == 10_000


def test_same_node_twice_in_one_call(run_config: fanflow.Config) -> None:
    x = inc(4)
    assert add(x, x).compute(run_config) == 10
    assert len(add(x, x).deps) == 1


def test_one_node_in_args_of_every_shape(run_config: fanflow.Config) -> None:
    x = inc(1)  # 2
    shapes = ([x, [x, (x,)]], {"a": x, "b": [x, {"c": x}]}, ({"k": [x]}, x))
    assert nested_sum(shapes).compute(run_config) == 2 * 8


def test_list_of_lists_and_dict_of_nodes(run_config: fanflow.Config) -> None:
    grid = [[inc(i * 3 + j) for j in range(3)] for i in range(3)]
    named = {f"k{i}": inc(i) for i in range(4)}
    assert nested_sum([grid, named]).compute(run_config) == sum(range(1, 10)) + sum(range(1, 5))


def test_kwargs_hold_nodes(run_config: fanflow.Config) -> None:
    @fanflow.task
    def combine(a: int, *, b: list[int], c: dict[str, int]) -> int:
        return a + sum(b) + sum(c.values())

    x = inc(0)
    assert combine(x, b=[x, inc(x)], c={"z": inc(5)}).compute(run_config) == 1 + 1 + 2 + 6


def test_multiple_sinks_share_parts_in_one_run(run_config: fanflow.Config, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"  # a file, so executions count on every platform, in any process

    @fanflow.task
    def counted(x: int) -> int:
        with log.open("a") as f:
            f.write(f"{x}\n")
        return x * 10

    shared = counted(7)
    a, b, c = fanflow.compute(inc(shared), add(shared, 1), shared, config=run_config)
    assert (a, b, c) == (71, 71, 70)
    assert log.read_text().split() == ["7"]


def test_repeated_sinks_give_one_value_each(run_config: fanflow.Config) -> None:
    a, b = inc(1), inc(5)
    assert fanflow.compute(a, a, config=run_config) == (2, 2)
    assert fanflow.compute(a, b, a, config=run_config) == (2, 6, 2)


def test_constants_only(run_config: fanflow.Config) -> None:
    assert total([1, 2, 3]).compute(run_config) == 6


def test_none_results(run_config: fanflow.Config) -> None:
    assert nothing(nothing(), nothing(1)).compute(run_config) is None


def test_exception_in_a_middle_task(run_config: fanflow.Config) -> None:
    middle = boom(inc(1))
    with pytest.raises(fanflow.TaskFailedError) as info:
        add(middle, inc(3)).compute(run_config)
    assert "boom" in info.value.task
    assert "boom at 2" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_getitem_node(run_config: fanflow.Config) -> None:
    pair = fanflow.task(divmod)(17, 5)
    assert add(pair[0], pair[1]).compute(run_config) == 5


def test_submit_and_gather(run_config: fanflow.Config) -> None:
    futures = [add(inc(i), inc(i)).submit(run_config) for i in range(5)]
    assert fanflow.gather(futures) == [2 * (i + 1) for i in range(5)]


def test_plain_builtin_as_task(run_config: fanflow.Config) -> None:
    mul = fanflow.task(operator.mul, name="mul")
    assert mul(inc(2), 4).compute(run_config) == 12


def test_a_failed_task_is_never_completed(run_config: fanflow.Config) -> None:
    from fanflow.store.metadata import open_metadata

    future = add(boom(1), 1).submit(run_config)
    with pytest.raises(fanflow.TaskFailedError):
        future.result(timeout=60)
    events = open_metadata(run_config.metadata).load_run(future.run_id).events
    assert [e["kind"] for e in events if e["task"] == 0 and e["kind"].startswith("task_")] == [
        "task_started",
        "task_failed",
    ]
    assert not any(e["kind"] == "task_started" and e["task"] == 1 for e in events)
