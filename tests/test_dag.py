"""The DAG model: structure, signature, run ids, encoding, sub-DAG views, errors."""

from __future__ import annotations

import re
import threading

import pytest
from support import add, inc

import fanflow
from fanflow.dag import DAG
from fanflow.dag.encoding import decode, encode


def diamond() -> fanflow.Node:
    top = inc(1)
    return add(inc(top), add(top, 10))


def test_structure_of_a_diamond() -> None:
    dag = DAG.from_sinks([diamond()])
    assert len(dag) == 4
    assert dag.roots == (0,)
    assert dag.sinks == (3,)
    assert sorted(dag.edges) == [(0, 1), (0, 2), (1, 3), (2, 3)]
    assert [dag.indegree(i) for i in range(4)] == [0, 1, 1, 2]
    assert dag.dependents[0] == (1, 2)


def test_topological_order_holds_for_every_edge() -> None:
    nodes = [inc(i) for i in range(50)]
    sink = add(add(nodes[3], nodes[7]), add(nodes[7], inc(nodes[0])))
    dag = DAG.from_sinks([sink])
    assert all(u < d for u, d in dag.edges)


def test_signature_is_stable_across_builds() -> None:
    assert DAG.from_sinks([diamond()]).signature == DAG.from_sinks([diamond()]).signature


def test_signature_changes_with_structure_and_code() -> None:
    base = DAG.from_sinks([diamond()]).signature
    assert DAG.from_sinks([add(inc(1), inc(1))]).signature != base

    @fanflow.task(name="inc")
    def inc_changed(x: int) -> int:
        return x + 2

    top = inc_changed(1)
    assert DAG.from_sinks([add(inc_changed(top), add(top, 10))]).signature != base


def test_signature_ignores_constant_values_but_not_their_types() -> None:
    assert DAG.from_sinks([inc(1)]).signature == DAG.from_sinks([inc(2)]).signature
    assert DAG.from_sinks([inc(1)]).signature != DAG.from_sinks([inc(1.0)]).signature


def test_signature_and_roots_are_computed_once_per_dag(monkeypatch: pytest.MonkeyPatch) -> None:
    from fanflow.dag import graph

    dag = DAG.from_sinks([diamond()])
    shapes: list[object] = []
    shape = graph._shape
    monkeypatch.setattr(graph, "_shape", lambda t: shapes.append(t) or shape(t))
    first = dag.signature
    # Each task's arguments then keyword arguments; None (a plain call, no keywords) is "-" without a call.
    templates = [t for i in range(len(dag)) for t in (dag.args[i], dag.kwargs[i]) if t is not None]
    assert shapes == templates
    assert dag.signature is first and dag.roots is dag.roots and shapes == templates


def test_run_id_format() -> None:
    dag = DAG.from_sinks([diamond()])
    run_id = dag.new_run_id()
    assert re.fullmatch(r"\d{8}T\d{6}_add_[0-9a-f]{8}_" + dag.signature[:8], run_id)
    assert run_id != dag.new_run_id()


def test_run_ids_differ_in_a_forked_child_and_after_random_seed() -> None:
    import os
    import random

    dag = DAG.from_sinks([diamond()])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its id, then out without running the parent's exit handlers
        os.write(write, dag.new_run_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    parent = dag.new_run_id()
    assert child.split("_")[2] != parent.split("_")[2]  # a fork does not repeat the parent's random part
    random.seed(1)
    first = dag.new_run_id()
    random.seed(1)
    assert dag.new_run_id().split("_")[2] != first.split("_")[2]  # a task's random.seed() cannot repeat ids


def test_encode_decode_round_trip() -> None:
    x = inc(1)
    sink = add(x, add(inc(x), 5))
    nested = fanflow.task(lambda d, k=0: sum(d["a"]) + k, name="nested")({"a": [x, sink]}, k=sink)
    dag = DAG.from_sinks([nested, sink])
    back = decode(encode(dag))
    assert back.deps == dag.deps
    assert back.sinks == dag.sinks
    assert back.task_of == dag.task_of
    assert back.args == dag.args
    assert back.kwargs == dag.kwargs
    assert back.signature == dag.signature
    assert [t.name for t in back.tasks] == [t.name for t in dag.tasks]


def test_encoding_ships_each_function_once() -> None:
    leaves = [inc(i) for i in range(64)]
    small = len(encode(DAG.from_sinks([add(leaves[0], leaves[1])])))
    level = leaves
    while len(level) > 1:
        level = [add(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    big = len(encode(DAG.from_sinks(level)))
    # 124 more tasks cost a few bytes each, not a function pickle each.
    assert big - small < 124 * 40


def test_decode_rejects_foreign_bytes() -> None:
    import pickle

    with pytest.raises(fanflow.DAGError, match="not a fanflow DAG"):
        decode(pickle.dumps(("something", 1)))


def test_unpicklable_argument_names_the_task() -> None:
    lock = threading.Lock()
    node = fanflow.task(lambda _lock: 1, name="uses_lock")(lock)
    with pytest.raises(fanflow.SerializationError, match="uses_lock-0"):
        encode(DAG.from_sinks([node]))


def test_nodes_are_immutable() -> None:
    node = inc(1)
    with pytest.raises(fanflow.DAGError, match="immutable"):
        node.task = add  # type: ignore[misc]


def test_mutated_node_cycle_is_detected() -> None:
    a = inc(1)
    b = inc(a)
    object.__setattr__(a, "deps", (b,))  # what a mutation after use would do
    with pytest.raises(fanflow.DAGCycleError, match="inc"):
        DAG.from_sinks([b])


def test_node_args_and_kwargs_give_back_the_nodes() -> None:
    x = inc(1)
    node = fanflow.task(lambda a, b=None: a, name="f")([x, {"k": x}], b=(x, 3))
    assert node.args == ([x, {"k": x}],)
    assert node.kwargs == {"b": (x, 3)}
    assert node.deps == (x,)


def test_lazy_nodes_refuse_iteration_and_truth() -> None:
    with pytest.raises(TypeError, match="lazy"):
        list(inc(1))
    with pytest.raises(TypeError, match="lazy"):
        bool(inc(1))


def test_task_keeps_plain_function() -> None:
    assert inc.func(1) == 2
    assert inc.__name__ == "inc"
    assert isinstance(inc(1), fanflow.Node)


def test_bad_task_options() -> None:
    with pytest.raises(fanflow.DAGError, match="retries"):
        fanflow.task(retries=-1)(lambda: 1)
    with pytest.raises(fanflow.DAGError, match="memory_mb"):
        fanflow.task(memory_mb=10)(lambda: 1)


def test_compute_needs_nodes() -> None:
    with pytest.raises(fanflow.DAGError, match="expected fanflow nodes"):
        fanflow.compute(3)  # type: ignore[arg-type]
