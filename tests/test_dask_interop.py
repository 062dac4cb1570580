"""Dask interop: ``fanflow.dask.get`` as a Dask scheduler, and ``fanflow.from_dask``.

Every result is checked against Dask's own synchronous scheduler.
"""

from __future__ import annotations

import functools
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import install_hint

import fanflow
import fanflow.dask as ffdask
from fanflow.dag.graph import DAG

dask = pytest.importorskip("dask", reason=install_hint("dask"))
da = pytest.importorskip("dask.array", reason=install_hint("dask"))
task_spec = pytest.importorskip("dask._task_spec", reason=install_hint("dask"))
GetFunctionTestMixin = pytest.importorskip("dask.utils_test", reason=install_hint("dask")).GetFunctionTestMixin


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int = 0) -> int:
    return a + b


def deep_sum(data: Any, extra: Any = None) -> int:
    """Sum every number in nested lists/tuples/dicts/sets, plus ``extra`` (same rule)."""
    total = 0
    stack = [data, extra]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
        elif item is not None:
            total += item
    return total


def scheduler(config: fanflow.Config) -> Any:
    """``fanflow.dask.get`` bound to ``config``, to pass as ``scheduler=``."""

    def get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return ffdask.get(dsk, keys, config=config, **kwargs)

    return get


def sync(*collections: Any) -> tuple[Any, ...]:
    return dask.compute(*collections, scheduler="sync")  # type: ignore[no-any-return]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


# -- delayed ----------------------------------------------------------------------


def test_delayed_nested_containers_and_kwargs(run_config: fanflow.Config) -> None:
    delayed = dask.delayed
    x = delayed(inc)(1)
    y = delayed(add)(x, b=x)
    z = delayed(deep_sum)([x, (y, 3), {"a": x, "b": [y, {"c": 5}]}], extra={"k": delayed(add)(y, b=10)})
    assert dask.compute(z, y, scheduler=scheduler(run_config)) == sync(z, y)
    assert z.compute(scheduler=ffdask.get, config=run_config) == sync(z)[0]


def test_delayed_compute_passes_config_keys_and_ignores_dask_kwargs(run_config: fanflow.Config) -> None:
    x = dask.delayed(add)(dask.delayed(inc)(1), 2)
    config = {k: getattr(run_config, k) for k in ("platform", "store", "progress", "metadata")}
    with ThreadPoolExecutor(1) as pool:
        got = x.compute(scheduler=ffdask.get, config=config, platform=run_config.platform, num_workers=2, pool=pool)
    assert got == 4
    # Dask's schedulers ignore keywords they do not know; so does get (fanflow.compute does not)
    assert x.compute(scheduler=ffdask.get, config=run_config, no_such_option=1) == 4
    with pytest.raises(fanflow.ConfigError, match="unknown config key"):
        fanflow.compute(ffdask.from_dask(x), config=run_config, no_such_option=1)


def test_delayed_as_default_scheduler(run_config: fanflow.Config) -> None:
    parts = [dask.delayed(inc)(i) for i in range(10)]
    total = dask.delayed(sum)(parts)
    with dask.config.set(scheduler=scheduler(run_config)):
        assert total.compute() == sum(range(1, 11))


# -- get on raw graphs ------------------------------------------------------------------


def test_get_legacy_graph_nested_keys(run_config: fanflow.Config) -> None:
    dsk = {
        "a": 1,
        "b": (inc, "a"),
        "c": (add, "a", "b"),
        "d": (sum, ["a", "b", (inc, "c")]),
        "e": [(sum, ["c", "d"]), 2],
        "f": "b",
    }
    get = ffdask.get
    assert get(dsk, "d", config=run_config) == 1 + 2 + 4
    assert get(dsk, ["a", ["c", ["d", "f"]], []], config=run_config) == (1, (3, (7, 2)), ())
    assert get(dsk, [["e"], "a"], config=run_config) == (([10, 2],), 1)  # "e" holds a list: a value, not keys
    assert get(dsk, ["c"], config=run_config, cache={"b": 100}) == (101,)


def test_get_task_spec_graph(run_config: fanflow.Config) -> None:
    ts = task_spec
    x, y = ts.DataNode("x", 1), ts.DataNode("y", 2)
    z = ts.Task("z", add, x.ref(), y.ref())
    w = ts.Task("w", sum, ts.List(x.ref(), y.ref(), z.ref()))
    dsk = {
        "x": x,
        "y": y,
        "z": z,
        "w": w,
        "v": ts.List(ts.Task(None, sum, ts.List(w.ref(), z.ref())), 2),
        "s": ts.Task("s", deep_sum, ts.Set(x.ref(), z.ref()), extra=ts.Dict(k=ts.Tuple(w.ref(), 1))),
        "alias": ts.Alias("alias", "z"),
        ("tuple-key", 0): ts.Task(("tuple-key", 0), inc, ts.TaskRef("alias")),
    }
    keys = [["w", "v"], ("tuple-key", 0), "s", "alias", "x"]
    assert ffdask.get(dsk, keys, config=run_config) == ((6, [9, 2]), 4, 1 + 3 + 6 + 1, 3, 1)


def _input(ins: list[str], ref: Any) -> str:
    return ins[ref.i]


def _canonical(dag: DAG) -> list[str]:
    """Every task of ``dag`` as a string naming its function, its argument template and its inputs' strings,
    the inputs' at any depth: two DAGs of the same calls give the same sorted list whatever their numbering."""
    from fanflow.dag.nested import map_nested
    from fanflow.dag.node import is_ref

    made: list[str] = []
    for i, ups in enumerate(dag.deps):  # topological: every input is made before
        ins = [made[u] for u in ups]
        name = dag.task(i).name
        if dag.args[i] is None:
            made.append(f"{name}([{', '.join(ins)}])")
            continue
        args = map_nested(dag.args[i], functools.partial(_input, ins), is_ref)
        kwargs = map_nested(dag.kwargs[i], functools.partial(_input, ins), is_ref)
        made.append(f"{name}({args!r}, {kwargs!r}, [{', '.join(ins)}])")
    return sorted(made) + [f"sink {made[s]}" for s in dag.outputs]


def test_get_builds_the_dag_the_nodes_would_give_without_making_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same calls, arguments and inputs as ``DAG.from_sinks`` of ``from_dask``'s nodes, but no Node objects."""
    from fanflow.dag.node import Node

    ts = task_spec
    x, y = ts.DataNode("x", 1), ts.DataNode("y", 2)
    z = ts.Task("z", add, x.ref(), y.ref())
    w = ts.Task("w", sum, ts.List(x.ref(), y.ref(), z.ref(), z.ref()))
    dsk = {
        "x": x,
        "y": y,
        "z": z,
        "w": w,
        "zz": ts.Task("zz", add, z.ref(), z.ref()),
        "s": ts.Task("s", deep_sum, ts.Set(x.ref(), z.ref()), extra=ts.Dict(k=ts.Tuple(w.ref(), 1))),
        "t": ts.Task("t", add, ts.TaskRef("w"), b=ts.TaskRef("zz")),
    }
    keys = ["s", "t", "w"]
    by_nodes = ffdask._Converter(dsk)
    by_nodes.resolve(keys)
    expected = DAG.from_sinks([by_nodes.values[k] for k in keys])
    made: list[int] = []
    original = Node.__init__

    def counting(self: Node, *args: Any, **kwargs: Any) -> None:
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Node, "__init__", counting)
    columns = ffdask._Columns()
    direct = ffdask._Converter(dsk, None, columns.add, ffdask._Out)
    direct.resolve(keys)
    got = columns.dag([direct.values[k] for k in keys])
    assert got is not None and not made
    assert len(got) == len(expected) == 6  # x and y are constants; the Set in s is a task of its own
    assert _canonical(got) == _canonical(expected)
    assert ffdask.get(dsk, keys, config={"progress": False, "metadata": "none"}) == (1 + 3 + 9 + 1, 9 + 6, 9)


SIGNATURES = """
import sys
import dask, dask.array as da
sys.path.insert(0, {tests!r})
import fanflow.dask as ffdask
from fanflow.dag.graph import DAG
from test_dask_interop import add, inc
made = []
original = DAG.__init__
def keep(self, *args, **kwargs):
    original(self, *args, **kwargs)
    made.append(self)
DAG.__init__ = keep
x = dask.delayed(inc)(1)
fan_in = dask.delayed(add)(dask.delayed(add)(x, dask.delayed(inc)(2)), dask.delayed(inc)(x))
config = {{"metadata": "none", "progress": False}}
dask.compute(fan_in, scheduler=ffdask.get, config=config)
legacy = {{"a": 1, "b": (inc, "a"), "c": (add, "a", "b"), "d": (sum, ["c", "b", (inc, "a")])}}
ffdask.get(legacy, ["d"], config=config)
fused = (da.ones((8, 8), chunks=2) + 1).sum(axis=0)  # fused tasks, inputs listed from a set
mean = (da.arange(100, chunks=10) ** 2).mean()  # a fused task whose inner keys name the call
for collection in (fused, fused, mean, mean):
    collection.compute(scheduler=ffdask.get, config=config)
print(" ".join(d.signature for d in made))
"""


def test_a_dask_graph_gets_the_same_signature_in_every_process(tmp_path: Any) -> None:
    """Dependencies are converted in their arguments' order, not in a frozenset's (which follows string
    hashes, seeded per process), a fused task's inputs in the order of their keys, and its inner graph
    is no dict argument (whose keys the signature shows): the DAG's numbering and signature, its
    history's name, stay, from call to call and from process to process."""
    import subprocess

    script = SIGNATURES.format(tests=str(Path(__file__).parent))
    got = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(got) == 1, got
    signatures = got.pop().split()
    assert len(signatures) == 6 and signatures[2] == signatures[3] and signatures[4] == signatures[5]


def test_get_converts_legacy_keys_when_needed(run_config: fanflow.Config) -> None:
    """Only the keys asked for (and theirs) are converted; cache keys are values; ``{"x": "x"}`` names no value."""
    dsk = {"a": 1, "b": (inc, "a"), "c": (add, "a", "b"), "unused": (fails, "a"), "self": "self"}
    assert ffdask.get(dsk, "c", config=run_config) == 3
    assert ffdask.get(dsk, ["c", ["b"]], cache={"a": 10}, config=run_config) == (21, (11,))
    assert ffdask.get({"b": (inc, "a")}, "b", cache={"a": 5}, config=run_config) == 6
    with pytest.raises(KeyError, match="'self' is not in the Dask graph"):
        ffdask.get(dsk, "self", config=run_config)


def args_of(*args: Any) -> tuple[Any, ...]:
    return args


@pytest.mark.parametrize(
    ("dsk", "key"),
    [
        ({"a": 1, "b": (args_of, "a", "a", "z", 2.5, None, b"a", 3j, False)}, "b"),  # keys and constants
        ({1: 10, 2: (args_of, 1, 1.0, True, 3, "1")}, 2),  # 1.0 and True equal the key 1: Dask reads them as it
        ({"a": 5, "b": "a", "c": (args_of, "b", "a")}, "c"),  # a key's value naming another key: its alias
        ({("x", 0): 1, "y": (args_of, ("x", 0), [("x", 0)], (inc, ("x", 0)), {"k": ("x", 0)})}, "y"),  # the legacy way
        ({"a": 1, "f": (args_of, "a"), "g": ((lambda *a: a), "f", "a")}, "g"),  # a callable made per graph
    ],
)
def test_plain_legacy_tasks_convert_as_dask_converts_them(
    dsk: dict[Any, Any], key: Any, run_config: fanflow.Config
) -> None:
    """A legacy task of plain arguments is converted without Dask's Task objects, to the same values."""
    assert ffdask.get(dsk, [key], config=run_config) == dask.get(dsk, [key])


def test_get_deep_chain_beyond_recursion_limit(run_config: fanflow.Config) -> None:
    depth = sys.getrecursionlimit() + 500
    dsk: dict[str, Any] = {"x0": 0}
    for i in range(1, depth):
        dsk[f"x{i}"] = (inc, f"x{i - 1}")
    assert ffdask.get(dsk, f"x{depth - 1}", config=run_config) == depth - 1


def test_get_errors() -> None:
    with pytest.raises(ffdask.DaskGraphError, match="not in the Dask graph"):
        ffdask.get({"a": task_spec.Task("a", inc, task_spec.TaskRef("missing"))}, "a")
    with pytest.raises(KeyError, match="'nope' is not in the Dask graph"):
        ffdask.get({"a": 1, "b": (inc, "a")}, [["nope"], "b"])
    with pytest.raises(ffdask.DaskGraphError, match="cycle"):
        ffdask.get({"a": (inc, "b"), "b": (inc, "a")}, "a")
    with pytest.raises(ffdask.DaskGraphError, match="Dask graph"):
        ffdask.get(42, "a")


def fails(x: int) -> int:
    raise ValueError(f"bad input {x}")


def test_get_raises_the_task_exception_with_the_fanflow_error_as_cause(run_config: fanflow.Config) -> None:
    x = dask.delayed(fails)(dask.delayed(inc)(1))
    with pytest.raises(ValueError, match=r"^bad input 2$") as info:
        x.compute(scheduler=ffdask.get, config=run_config)
    cause = info.value.__cause__
    assert isinstance(cause, fanflow.TaskFailedError)
    assert cause.task.startswith("fails") and "raise ValueError" in cause.remote_traceback
    assert cause.__cause__ is None  # the chain is turned round, not a cycle
    with pytest.raises(fanflow.TaskFailedError, match=r"task .fails-?[0-9]*. failed") as own:
        fanflow.compute(ffdask.from_dask(x), config=run_config)  # fanflow.compute keeps its own error
    assert isinstance(own.value.__cause__, ValueError)


class TestGetFunctionContract(GetFunctionTestMixin):
    """Dask's own checks of a scheduler ``get``, on the embedded default with history off."""

    get = staticmethod(functools.partial(ffdask.get, config=fanflow.Config(progress=False, metadata="none")))


# -- dask.array -----------------------------------------------------------------------


def test_array_sum_and_matmul(run_config: fanflow.Config, rng: np.random.Generator) -> None:
    a = da.from_array(rng.random((60, 40)), chunks=(20, 20))
    b = da.from_array(rng.random((40, 30)), chunks=(20, 15))
    got = dask.compute(a.sum(), a @ b, (a @ b).sum(axis=0), scheduler=scheduler(run_config))
    for mine, theirs in zip(got, sync(a.sum(), a @ b, (a @ b).sum(axis=0)), strict=True):
        np.testing.assert_allclose(mine, theirs)
    np.testing.assert_allclose((a @ b).compute(scheduler=ffdask.get, config=run_config), a.compute() @ b.compute())


def test_array_tsqr(run_config: fanflow.Config, rng: np.random.Generator) -> None:
    a = da.from_array(rng.random((120, 6)), chunks=(20, 6))
    q, r = da.linalg.tsqr(a)
    got_q, got_r = dask.compute(q, r, scheduler=scheduler(run_config))
    want_q, want_r = sync(q, r)
    np.testing.assert_allclose(got_q, want_q)
    np.testing.assert_allclose(got_r, want_r)
    np.testing.assert_allclose(got_q @ got_r, a.compute(), atol=1e-12)


def test_array_svd(run_config: fanflow.Config, rng: np.random.Generator) -> None:
    a = da.from_array(rng.random((120, 6)), chunks=(20, 6))
    u, s, v = da.linalg.svd(a)
    got = dask.compute(u, s, v, scheduler=scheduler(run_config))
    for mine, theirs in zip(got, sync(u, s, v), strict=True):
        np.testing.assert_allclose(mine, theirs)
    np.testing.assert_allclose(got[1], np.linalg.svd(a.compute(), compute_uv=False))


def test_array_svd_compressed(run_config: fanflow.Config, rng: np.random.Generator) -> None:
    a = da.from_array(rng.random((60, 60)), chunks=(20, 20))
    u, s, v = da.linalg.svd_compressed(a, k=4, n_power_iter=2, seed=7)
    got = dask.compute(u, s, v, scheduler=scheduler(run_config))
    for mine, theirs in zip(got, sync(u, s, v), strict=True):
        np.testing.assert_allclose(mine, theirs)


# -- from_dask --------------------------------------------------------------------------


def test_from_dask_delayed(run_config: fanflow.Config) -> None:
    x = dask.delayed(inc)(1)
    y = dask.delayed(add)(dask.delayed(add)(x, 2), b=x)
    node = fanflow.from_dask(y)
    assert isinstance(node, fanflow.Node)
    assert node.name == "add"
    dag = DAG.from_sinks([node])
    assert len(dag) == 3  # one node per Dask task, no finalizer for a delayed
    assert sorted(t.name for t in dag.tasks) == ["add", "inc"]  # one fanflow task per callable
    assert fanflow.compute(node, config=run_config) == (y.compute(scheduler="sync"),)
    assert fanflow.from_dask(dask.delayed(5)).compute(run_config) == 5


def test_only_dasks_seeded_random_chunks_are_pure() -> None:
    """A pure root's large output may be made again where read: only for what Dask makes the same way twice."""
    seeded = [da.random.random((4, 4), chunks=2), da.random.default_rng(1).random((4, 4), chunks=2)]
    for x in seeded:
        roots = [t for t in DAG.from_sinks([fanflow.from_dask(x)]).tasks if "random" in t.name]
        assert roots and all(t.pure for t in roots), [t.name for t in roots]
    unseeded = DAG.from_sinks([fanflow.from_dask(dask.delayed(np.random.random)(4))])
    assert not any(t.pure for t in unseeded.tasks)  # a different array each time it runs
    assert not any(t.pure for t in DAG.from_sinks([fanflow.from_dask(dask.delayed(inc)(1))]).tasks)


def test_from_dask_array_mixes_with_fanflow_nodes(run_config: fanflow.Config, rng: np.random.Generator) -> None:
    a = da.from_array(rng.random((40, 40)), chunks=(10, 20))
    expr = (a @ a.T + 1).sum(axis=1)
    node = fanflow.from_dask(expr)
    dag = DAG.from_sinks([node])
    names = Counter(dag.task(i).name for i in range(len(dag)))
    assert names["finalize"] == 1
    assert len(dag.tasks) == len({(id(t.func), t.name) for t in dag.tasks})
    (got,) = fanflow.compute(node, config=run_config)
    np.testing.assert_allclose(got, expr.compute(scheduler="sync"))
    doubled = fanflow.task(np.multiply, name="double")(node, 2)
    np.testing.assert_allclose(doubled.compute(run_config), 2 * expr.compute(scheduler="sync"))


def test_tasks_of_module_level_functions_are_kept_between_calls_and_closures_are_not(
    run_config: fanflow.Config,
) -> None:
    def local_inc(x: int) -> int:
        return x + 1

    first, again = fanflow.from_dask(dask.delayed(inc)(1)), fanflow.from_dask(dask.delayed(inc)(2))
    assert first.task is again.task  # made once: its name and code hash are not computed per call
    assert first.task.func is inc and first.task.name == "inc"
    mine, theirs = fanflow.from_dask(dask.delayed(local_inc)(1)), fanflow.from_dask(dask.delayed(local_inc)(2))
    assert mine.task is not theirs.task  # a closure may hold data: not kept past its graph
    shared = fanflow.from_dask(dask.delayed(functools.partial(add, b=1))(1))
    assert shared.task is not fanflow.from_dask(dask.delayed(functools.partial(add, b=1))(1)).task
    assert fanflow.compute(first, again, mine, shared, config=run_config) == (2, 3, 2, 2)
    for n in range(ffdask.KEPT_TASKS + 10):  # bounded: functions of many modules do not pile up
        ffdask._kept_task(inc, f"fused-{n}")
    assert len(ffdask._kept) == ffdask.KEPT_TASKS


def test_from_dask_rejects_non_collections() -> None:
    with pytest.raises(ffdask.DaskGraphError, match="needs a Dask collection"):
        fanflow.from_dask(42)


def test_missing_dask_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask", None)
    ffdask._task_spec.cache_clear()
    try:
        with pytest.raises(ffdask.DaskNotInstalledError, match=r'pip install "fanflow\[dask\]"') as info:
            fanflow.from_dask(object())
        assert isinstance(info.value, fanflow.FanflowError)
    finally:
        ffdask._task_spec.cache_clear()


CALL_BUDGET = {"config given": 180, "config from the environment": 184}
"""Calls of fanflow's own Python functions per ``get`` of a 1-task graph, history off (see docs/dask.md,
"Cost per call"): 172 and 176 when set (181 and 185 before a run of a config that plans nothing skipped
planning and a 1-root run's invocation its context switch count, 183 and 187 before the session made a
run's platform key once, about 185 and 189 before an unannotated DAG shared its plan view, 190 and 194
before the recorder's and getpath's last cuts, 232 and 236 before a run that ends on its caller's thread skipped its
subscription, 242 and 251 before the conversion and config load were trimmed; 257 and 343 when the
config was built per call).
A change that needs more should say why in its commit."""


@pytest.mark.parametrize("where", CALL_BUDGET)
def test_a_one_task_get_stays_within_its_budget_of_python_calls(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FANFLOW_METADATA", "none")
    monkeypatch.setenv("FANFLOW_PROGRESS", "false")
    config = fanflow.Config(progress=False, metadata="none") if where == "config given" else None
    graph = {"x": 1, "y": (inc, "x")}
    for _ in range(5):  # imports, the platform, the kept task of inc
        assert ffdask.get(graph, "y", config=config) == 2
    root = fanflow.__file__.rsplit("/", 1)[0]
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event == "call" and frame.f_code.co_filename.startswith(root)

    sys.setprofile(count)  # this thread only: a 1-task run runs on the caller's thread
    try:
        for _ in range(5):
            ffdask.get(graph, "y", config=config)
    finally:
        sys.setprofile(None)
    assert calls / 5 <= CALL_BUDGET[where], f"{calls / 5:.0f} calls of fanflow functions per get"
