"""Dask interop: run Dask graphs on fanflow, and turn Dask collections into fanflow nodes.

Two entry points:

* :func:`get` implements Dask's scheduler ``get(dsk, keys, **kwargs)`` protocol, so
  ``dask.compute(x, scheduler=fanflow.dask.get)`` and ``x.compute(scheduler=fanflow.dask.get)``
  run any Dask collection (delayed, array, ...) as one fanflow run.
* :func:`from_dask` turns one Dask collection into a :class:`fanflow.Node` whose value is
  what ``obj.compute()`` returns, to be combined with other fanflow nodes.

How a Dask graph maps onto fanflow (graphs in the legacy tuple format are first brought to
the task-spec format with ``dask._task_spec.convert_legacy_graph``, as Dask's own
schedulers do):

* a graph key holding a ``Task`` becomes ONE fanflow node. Its :class:`fanflow.Task` wraps
  the Dask task's callable and is named after it (``dask.utils.funcname``); one fanflow task
  is made per distinct callable, so fanflow's metrics and history group by function. A fused
  task (``_execute_subgraph``, from Dask's linear fusion) stays one node, named
  ``fused-<function of its output>``, its inner graph one opaque argument (its keys, which
  may be new on every call, stay out of the DAG's signature);
* ``TaskRef``/``Alias`` arguments become the upstream node (or constant) of the key they
  name; a graph-level ``Alias`` is the same node as its target, not a new one;
* ``DataNode`` values, and keys holding them, are constants passed inline: only keys that
  hold tasks become nodes;
* ``List``/``Tuple``/``Dict`` containers in arguments become plain lists, tuples and dicts
  with nodes inside (fanflow substitutes nodes at any depth); any other inline task in an
  argument (a ``Set``, a named tuple, a nested ``Task``) becomes a node of its own.

The graph is walked iteratively from the requested keys, so a graph of any depth converts
without touching the recursion limit, and tasks the keys do not need are never converted
(the graph is culled). :func:`get` receives the graph already optimized by Dask;
:func:`from_dask` optimizes it first with ``dask.optimize``, the way ``dask.compute`` does.

Dask is an optional dependency (``pip install "fanflow[dask]"``); this module imports it
only when called, so ``import fanflow`` works without it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Hashable, Iterable, Iterator, Mapping
from types import BuiltinFunctionType, FunctionType, ModuleType
from typing import Any

from fanflow.client.session import session
from fanflow.config import Config
from fanflow.dag.graph import DAG
from fanflow.dag.nested import map_nested
from fanflow.dag.node import Node, Ref, Task
from fanflow.errors import DAGError, FanflowError, TaskFailedError
from fanflow.metrics.recorder import note_dag_build

__all__ = ["DaskGraphError", "DaskKeyError", "DaskNotInstalledError", "from_dask", "get"]

Key = Hashable
"""A Dask key: a str, bytes, int, float or a tuple of them."""


class DaskNotInstalledError(FanflowError, ImportError):
    """Dask interop was used but Dask is not installed."""


class DaskGraphError(DAGError):
    """A Dask graph or collection cannot be converted to fanflow nodes."""


class DaskKeyError(DaskGraphError, KeyError):
    """A key that was asked for, or that a task refers to, is not in the Dask graph.

    A ``KeyError`` too, as Dask's scheduler contract asks of a missing key.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # the message, not KeyError's repr of it


@functools.cache
def _task_spec() -> ModuleType:
    """``dask._task_spec``, or a :class:`DaskNotInstalledError` saying how to install it."""
    try:
        from dask import _task_spec
    except ImportError as exc:
        raise DaskNotInstalledError(
            'fanflow\'s Dask interop needs dask >= 2024.12: pip install "fanflow[dask]"'
        ) from exc
    return _task_spec


def get(dsk: Any, keys: Any, config: Config | Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """Compute ``keys`` of the Dask graph ``dsk`` as one fanflow run (Dask's scheduler ``get`` protocol).

    ``dsk`` is a mapping from keys to tasks (task-spec objects or legacy ``(func, *args)``
    tuples) or anything with ``__dask_graph__()``, such as the expression ``dask.compute``
    passes. ``keys`` is one key or a list of keys, nested to any depth; the result has the
    same shape, with lists of keys returned as tuples of values, as Dask's schedulers do.
    A key that is not in the graph raises :class:`DaskKeyError` (a ``KeyError``).

    ``config`` (a :class:`fanflow.Config` or a dict) picks where the run goes; keyword
    arguments named like fanflow config keys (``platform="threads"``) override it. Every
    other keyword argument is ignored, as Dask's schedulers ignore what they do not know
    (``num_workers``, Dask's executor ``pool``, ...), except ``cache``, whose values are
    used as already-computed keys. A task's exception is raised as itself, with the
    :class:`fanflow.TaskFailedError` (task name, run id, remote traceback) as its cause.
    Use it as ``dask.compute(x, scheduler=fanflow.dask.get)`` or, with options,
    ``x.compute(scheduler=fanflow.dask.get, platform="threads")``.
    """
    cache: Mapping[Key, Any] | None = kwargs.get("cache") or None
    overrides = {k: v for k, v in kwargs.items() if k in _CONFIG_KEYS} if kwargs else {}
    if "pool" in overrides and not isinstance(overrides["pool"], str):
        del overrides["pool"]  # Dask's executor pool; fanflow's ``pool`` is the name of a worker pool
    graph = dsk if isinstance(dsk, Mapping) else _graph_of(dsk)
    columns = _Columns()
    converter = _Converter(graph, cache, columns.add, _Out)
    wanted = _flatten(keys)
    began = time.perf_counter()
    converter.resolve(wanted)
    values = [converter.values[k] for k in wanted]
    dag = columns.dag(values)
    if dag is not None:
        note_dag_build(dag, time.perf_counter() - began)  # the conversion is this DAG's build
    try:
        results = _compute_values(values, dag, config, overrides)
    except TaskFailedError as failure:
        original = failure.__cause__
        if not isinstance(original, Exception):
            raise  # the exception did not survive the trip (unpicklable): the fanflow error says what it was
        # Dask's contract: the task's own exception. The fanflow error (task, run id, remote
        # traceback) becomes its cause, the chain turned round (and cut, so it has no cycle).
        failure.__cause__ = None
        failure.__suppress_context__ = True
        raise original from failure
    if not isinstance(keys, list):
        return results[0]
    return tuple(results) if wanted is keys else _nest(keys, iter(results))


_CONFIG_KEYS = frozenset(Config.keys())
"""The keyword arguments of :func:`get` that are fanflow config keys; Dask's others are ignored."""


def from_dask(obj: Any) -> Node:
    """The fanflow node whose value is what ``obj.compute()`` returns, for a Dask collection ``obj``.

    The collection's graph is optimized as ``dask.compute`` would (``dask.optimize``), every
    Dask task it needs becomes one fanflow node, and the collection's
    ``__dask_postcompute__`` finalizer (e.g. the concatenation of an array's blocks) becomes
    the returned node. ``fanflow.compute(from_dask(x))`` then equals ``x.compute()``.
    """
    _task_spec()  # Dask is installed, or an error saying how to install it
    import dask
    from dask.delayed import single_key

    if not dask.is_dask_collection(obj):
        raise DaskGraphError(
            f"from_dask needs a Dask collection (dask.delayed, dask.array, ...), got {type(obj).__name__}; "
            "wrap plain functions with fanflow.task instead"
        )
    (optimized,) = dask.optimize(obj)
    keys = optimized.__dask_keys__()
    finalize, extra = optimized.__dask_postcompute__()
    converter = _Converter(dict(optimized.__dask_graph__()))
    wanted = _flatten(keys)
    converter.resolve(wanted)
    parts = _nest(keys, iter([converter.values[k] for k in wanted]), list)
    if finalize is single_key and isinstance(parts[0], Node):
        return parts[0]  # a delayed: its own node already has the value, no finalizer needed
    return converter.task_for(finalize)(parts, *extra)


def _compute_values(
    values: list[Any], dag: DAG | None, config: Config | Mapping[str, Any] | None, overrides: dict[str, Any]
) -> list[Any]:
    """``values`` with every task output (:class:`_Out`) replaced by its value, ``dag`` computed in one run."""
    if dag is None:
        return values
    # The run returns the DAG's outputs in order, one per _Out among the values (repeats included).
    results = iter(session().execute(dag, Config.resolve(config, **overrides)))
    return [next(results) if type(v) is _Out else v for v in values]


def _graph_of(dsk: Any) -> Mapping[Key, Any]:
    graph_method: Callable[[], Mapping[Key, Any]] | None = getattr(dsk, "__dask_graph__", None)
    if graph_method is None:
        raise DaskGraphError(
            f"get() needs a Dask graph (a dict of keys to tasks) or an object with __dask_graph__(), "
            f"got {type(dsk).__name__}"
        )
    return graph_method()


def _flatten(keys: Any) -> list[Key]:
    """The keys in ``keys``, a key or lists of keys nested to any depth (tuples are keys), in order:
    ``keys`` itself when it is a flat list (what ``dask.compute`` passes), not to be changed."""
    if not isinstance(keys, list):
        return [keys]
    for item in keys:
        if isinstance(item, list):
            break
    else:
        return keys
    flat: list[Key] = []
    stack = [iter(keys)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _nest(keys: Any, values: Iterator[Any], container: type = tuple) -> Any:
    """``keys`` with every key replaced by the next of ``values`` (in :func:`_flatten`'s order),
    each list of keys as a ``container`` of values."""
    if isinstance(keys, list):
        return container([_nest(k, values, container) for k in keys])
    return next(values)


class _Converter:
    """Turns the Dask graph ``graph`` into fanflow tasks, key by key, on demand.

    ``values`` maps every converted key to the handle of its task's output (task keys)
    or its constant value (data keys, keys given in ``known``). ``make(task, args,
    kwargs)`` adds one task whose arguments hold such handles and returns its handle,
    an instance of ``handle``: by default a :class:`Node` (``task(*args, **kwargs)``).

    A key in the legacy tuple format is brought to the task-spec format when it is
    first needed (``dask._task_spec.convert_legacy_task``, as ``convert_legacy_graph``
    would), so keys the request does not need cost nothing, and a graph already in
    the task-spec format (what ``dask.compute`` passes) is not copied.
    """

    def __init__(
        self,
        graph: Mapping[Key, Any],
        known: Mapping[Key, Any] | None = None,
        make: Callable[[Task, list[Any], dict[str, Any]], Any] | None = None,
        handle: type = Node,
    ) -> None:
        spec = _task_spec()
        self._spec = spec
        self._subgraph = getattr(spec, "_execute_subgraph", None)  # Dask's linear fusion, where Dask has it
        self._graph = graph
        # What a legacy task's argument must be in to be a key: the graph's keys, and the known ones.
        self._all_keys: Container[Key] = graph.keys() if not known else _KeysOf(graph, known)
        self._make = make or (lambda task, args, kwargs: task(*args, **kwargs))
        self._handle = handle
        self.values: dict[Key, Any] = dict(known or {})
        # (id of the callable, name of a fused task) -> (the callable, kept alive so ids stay unique, its task)
        self._tasks: dict[tuple[int, str | None], tuple[Callable[..., Any], Task]] = {}

    # -- the graph walk ---------------------------------------------------------
    def resolve(self, wanted: Iterable[Key]) -> None:
        """Convert ``wanted`` and everything they depend on, dependencies first, without recursion."""
        values = self.values
        graph_node, task = self._spec.GraphNode, self._spec.Task
        expanding: set[Key] = set()
        # (key, None): to convert; (key, its node): its dependencies are converted, it is next.
        stack: list[tuple[Key, Any]] = [(k, None) for k in wanted]
        while stack:
            key, node = stack.pop()
            if node is not None:
                expanding.discard(key)
            elif key in values:
                continue
            else:
                node = self._lookup(key)
                if type(node) is _Call:
                    deps = node.dependencies  # in the order of its arguments already
                elif not isinstance(node, graph_node):
                    values[key] = node  # data in the legacy format: the value itself
                    continue
                else:
                    deps = node.dependencies if len(node.dependencies) < 2 else self._in_order(node)
                todo = [dep for dep in deps if dep not in values]
                if todo:
                    expanding.add(key)
                    stack.append((key, node))
                    for dep in reversed(todo):  # the first argument's converted first
                        if dep in expanding:
                            raise DaskGraphError(
                                f"the Dask graph has a cycle: {dep!r} depends on itself through {key!r}"
                            )
                        stack.append((dep, None))
                    continue
            # Its dependencies are converted; a task (the usual) without _convert's dispatch.
            values[key] = self._node(node) if isinstance(node, task) else self._convert(node)

    def _in_order(self, node: Any) -> list[Key]:
        """``node``'s dependencies in the order its arguments name them.

        A node's ``dependencies`` is a frozenset, whose order follows the keys' hashes,
        which differ from process to process (``PYTHONHASHSEED``): converted in that
        order, one graph would number its tasks, and so get a DAG signature (its run
        history's name), differently in every process.
        """
        spec = self._spec
        fused = getattr(node, "func", None) is self._subgraph
        if not fused and not getattr(node, "kwargs", True):
            ref, graph_node = spec.TaskRef, spec.GraphNode
            found: list[Key] = []
            for a in node.args:  # the usual: references and constants, walked in one pass
                if type(a) is ref:
                    found.append(a.key)
                elif isinstance(a, graph_node):
                    break
            else:
                return list(dict.fromkeys(found))
        found = []
        pending = [*reversed(_fused_args(node.args))] if fused else [node]
        while pending:
            item = pending.pop()
            if isinstance(item, spec.TaskRef):
                found.append(item.key)
            elif isinstance(item, spec.Alias):
                found.append(item.target)
            elif isinstance(item, spec.Task):
                pending.extend(reversed((*item.args, *item.kwargs.values())))
            elif isinstance(item, spec.GraphNode):
                found.extend(item.dependencies)  # a kind this walk does not know: in its own order
        found.extend(node.dependencies)  # any the walk missed, so none is left out
        return list(dict.fromkeys(found))

    def _lookup(self, key: Key) -> Any:
        """The task-spec node of ``key`` (or its value, for data in the legacy format)."""
        try:
            node = self._graph[key]
        except (KeyError, TypeError):
            raise _missing(key) from None
        kind = type(node)
        if kind is tuple:
            call = self._plain_call(node)
            if call is not None:
                return call
        elif kind in _PLAIN and (kind not in _KEY_TYPES or node not in self._all_keys):
            return node  # data that names no key: convert_legacy_task leaves it as it is
        spec = self._spec
        if isinstance(node, spec.GraphNode):
            return node
        node = spec.convert_legacy_task(key, node, self._all_keys)
        if isinstance(node, spec.Alias) and node.target == key:
            raise _missing(key)  # ``{"x": "x"}`` names no value: convert_legacy_graph drops such a key
        return node

    def _plain_call(self, task: tuple[Any, ...]) -> _Call | None:
        """The legacy task ``task`` as a :class:`_Call` if it is ``(func, *args)`` with every argument a
        plain constant (:data:`_PLAIN`), a key of the graph or not; None for any other tuple.

        What ``convert_legacy_task`` would make of it (a ``Task`` whose key arguments are
        ``Alias`` references) without the ``Task`` and its references: in a small ``get``
        those cost about as much as the rest of the conversion. Any other argument (a
        tuple, which may be a key or a task, a list, a dict, a future, ...) and a fused
        task go the legacy way.
        """
        if not task:
            return None
        func = task[0]
        if not callable(func) or func is self._subgraph or isinstance(func, self._spec.GraphNode):
            return None
        all_keys = self._all_keys
        args = task[1:]
        refs: list[int] = []
        for i, arg in enumerate(args):
            kind = type(arg)
            if kind not in _PLAIN:
                return None
            if kind in _KEY_TYPES and arg in all_keys:
                refs.append(i)
        return _Call(func, args, tuple(refs), tuple(dict.fromkeys([args[i] for i in refs])))

    def _call(self, call: _Call) -> Any:
        """The handle of the fanflow task made for ``call``, whose keys are all converted."""
        args = list(call.args)
        values = self.values
        for i in call.refs:
            args[i] = values[args[i]]
        return self._make(self.task_for(call.func), args, {})

    def _convert(self, node: Any) -> Any:
        if type(node) is _Call:
            return self._call(node)
        spec = self._spec
        if isinstance(node, spec.Task):
            return self._node(node)
        if isinstance(node, spec.DataNode):
            return node.value
        if isinstance(node, spec.Alias):
            return self.values[node.target]
        return node

    # -- one task ---------------------------------------------------------------
    def _node(self, task: Any) -> Any:
        """The handle of the fanflow task made for the Dask ``Task`` ``task``, whose dependencies are all converted."""
        func, given = task.func, task.args
        if func is self._subgraph:
            ftask = self.task_for(_run_fused, self._fused_name(task))
            given = _fused_args(given)
        else:
            ftask = self.task_for(func)
        values, ref = self.values, self._spec.TaskRef
        args = [values[a.key] if type(a) is ref else self._arg(a) for a in given]  # a reference: the usual
        kwargs = {name: self._arg(v) for name, v in task.kwargs.items()} if task.kwargs else {}
        return self._make(ftask, args, kwargs)

    def _arg(self, arg: Any) -> Any:
        """One argument of a Dask task, as fanflow takes it: handles in place of references."""
        spec = self._spec
        if isinstance(arg, spec.TaskRef):
            return self.values[arg.key]
        if not isinstance(arg, spec.GraphNode):
            return arg
        if isinstance(arg, spec.DataNode):
            return arg.value
        if isinstance(arg, spec.Alias):
            return self.values[arg.target]
        if isinstance(arg, spec.List):
            return [self._arg(a) for a in arg.args]
        if isinstance(arg, spec.Tuple):
            return tuple(self._arg(a) for a in arg.args)
        if arg.func is getattr(spec, "_identity_cast", None) and arg.kwargs.get("typ") in (list, tuple):
            return arg.kwargs["typ"](self._arg(a) for a in arg.args)  # a legacy list/tuple of references
        if isinstance(arg, spec.Dict):
            items = [self._arg(a) for a in arg.args]
            if not any(isinstance(k, self._handle) for k in items[::2]):
                return dict(zip(items[::2], items[1::2], strict=True))
        return self._node(arg)

    def _fused_name(self, task: Any) -> str:
        """``fused-<function>`` for a task made by Dask's linear fusion (``_execute_subgraph``)."""
        inner, outkey = task.args[0], task.args[1]
        out = inner.get(outkey)
        return f"fused-{_funcname(out.func)}" if isinstance(out, self._spec.Task) else "fused"

    def task_for(self, func: Callable[..., Any], name: str | None = None) -> Task:
        """The one fanflow task for ``func`` (per ``name`` for fused tasks), made on first use."""
        cached = self._tasks.get((id(func), name))
        if cached is None:
            task = _kept_task(func, name) if _long_lived(func) else Task(func, name=name or _funcname(func))
            cached = self._tasks[(id(func), name)] = (func, task)
        return cached[1]


class _Call:
    """A legacy ``(func, *args)`` task of plain arguments, some of them keys (see :meth:`_Converter._plain_call`)."""

    __slots__ = ("args", "dependencies", "func", "refs")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], refs: tuple[int, ...], deps: tuple[Key, ...]):
        self.func = func
        self.args = args
        self.refs = refs
        """Positions of the arguments that are keys."""
        self.dependencies = deps
        """The keys among the arguments, each once, in order."""


class _Subgraph:
    """The inner graph of a task made by Dask's linear fusion, passed as one opaque argument.

    As a plain dict its keys would enter the DAG's signature (the shape of a dict
    argument shows its keys), and a fused graph's keys can name the call itself
    (Dask's ``finalize-hlgfinalizecompute-<token of the call>``): every compute of one
    collection would have been a new workflow to its history.
    """

    __slots__ = ("graph",)

    def __init__(self, graph: Mapping[Key, Any]) -> None:
        self.graph = graph


def _fused_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments of a fused task (``_execute_subgraph``'s) as :func:`_run_fused` takes them.

    The inner graph wrapped, and its inputs in the order of their keys' reprs: Dask
    lists them as a set gives them, in an order that follows string hashes, seeded per
    process, and the order of a task's inputs numbers the DAG and so signs it.
    """
    inner, outkey, inkeys, *dependencies = args
    if 1 < len(inkeys) == len(dependencies):
        order = sorted(range(len(inkeys)), key=lambda i: repr(inkeys[i]))
        inkeys = tuple(inkeys[i] for i in order)
        dependencies = [dependencies[i] for i in order]
    return (_Subgraph(inner), outkey, inkeys, *dependencies)


def _run_fused(inner: _Subgraph, outkey: Key, inkeys: tuple[Key, ...], *dependencies: Any) -> Any:
    """Dask's ``_execute_subgraph`` of the graph ``inner`` holds: what a fused task runs."""
    return _task_spec()._execute_subgraph(inner.graph, outkey, inkeys, *dependencies)


def _missing(key: Key) -> DaskKeyError:
    return DaskKeyError(
        f"key {key!r} is not in the Dask graph: ask only for keys of the graph, "
        "and pass already-computed inputs as data (or in cache=...)"
    )


class _KeysOf:
    """The keys of a graph and of the already-computed values given with it (``cache=``), for ``in``."""

    __slots__ = ("_graph", "_known")

    def __init__(self, graph: Mapping[Key, Any], known: Mapping[Key, Any]) -> None:
        self._graph, self._known = graph, known

    def __contains__(self, key: object) -> bool:
        return key in self._graph or key in self._known


class _Out:
    """The output of task ``i`` of the DAG :class:`_Columns` builds (in converted arguments and values)."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None)})
"""Argument types that hold no task output and are no container: a template keeps them as they are."""

_KEY_TYPES = frozenset({int, float, str, bool})
"""Of :data:`_PLAIN`, the types whose values ``convert_legacy_task`` takes for a key when the graph has one equal."""


def _is_out(x: Any) -> bool:
    return type(x) is _Out


_refs: list[Ref] = []
"""``Ref(i)`` for i = 0, 1, ...: one object per position, shared by every template (they are never changed)."""


def _ref(i: int) -> Ref:
    while len(_refs) <= i:
        _refs.append(Ref(len(_refs)))
    return _refs[i]


def _flat_template(args: list[Any]) -> tuple[list[int], tuple[Any, ...] | None, None] | None:
    """The upstream outputs and the templates of a call whose arguments are all outputs
    (:class:`_Out`) or plain constants, in one pass; None for any other argument.

    What :func:`map_nested` would make of them, without its walk: the usual call of a Dask
    task. Every argument a distinct output, in order, is the plain ``f(a, b, ...)``: None.
    """
    deps: list[int] = []
    index: dict[int, int] = {}
    template: list[Any] = []
    for a in args:
        kind = type(a)
        if kind is _Out:
            pos = index.get(a.i)
            if pos is None:
                pos = index[a.i] = len(deps)
                deps.append(a.i)
            template.append(_ref(pos))
        elif kind in _PLAIN:
            template.append(a)
        else:
            return None
    return deps, None if len(deps) == len(args) else tuple(template), None


def _walked_template(args: list[Any], kwargs: dict[str, Any]) -> tuple[list[int], Any, Any]:
    """The upstream outputs and the templates of a call whose arguments hold :class:`_Out` handles at any depth."""
    deps: list[int] = []
    index: dict[int, int] = {}

    def to_ref(out: _Out) -> Ref:
        pos = index.get(out.i)
        if pos is None:
            pos = index[out.i] = len(deps)
            deps.append(out.i)
        return _ref(pos)

    targs = map_nested(tuple(args), to_ref, _is_out)
    tkwargs = map_nested(kwargs, to_ref, _is_out) if kwargs else None
    if tkwargs is None and len(deps) == len(args) and all(r is _ref(i) for i, r in enumerate(targs)):
        targs = None
    return deps, targs, tkwargs


class _Columns:
    """A DAG's columns built task by task as a Dask graph converts, without :class:`Node` objects.

    Tasks are added dependencies first, so their order is topological. Each task's
    arguments become the template :class:`Node` would make of them (distinct upstream
    outputs numbered in first-use order, the plain ``f(a, b, ...)`` of distinct outputs
    stored as None), so the DAG equals the one built from nodes. A node, its argument
    references and the walk from the sinks cost about 6 us per task, and objects that
    lived for the whole run (a pandas shuffle of 2,788 tasks: 2,688 nodes, 4,407
    references, on top of the promotions that set off full garbage collections).
    """

    def __init__(self) -> None:
        self.tasks: list[Task] = []
        self._index: dict[int, int] = {}  # id(task) -> its position in tasks
        self.task_of: list[int] = []
        self.args: list[Any] = []
        self.kwargs: list[Any] = []
        self.deps: list[tuple[int, ...]] = []

    def add(self, task: Task, args: list[Any], kwargs: dict[str, Any]) -> _Out:
        """Add a call of ``task``, whose arguments hold :class:`_Out` handles at any depth; its handle."""
        t = self._index.get(id(task))
        if t is None:
            t = self._index[id(task)] = len(self.tasks)
            self.tasks.append(task)
        flat = None if kwargs else _flat_template(args)
        deps, targs, tkwargs = flat if flat is not None else _walked_template(args, kwargs)
        self.task_of.append(t)
        self.args.append(targs)
        self.kwargs.append(tkwargs)
        self.deps.append(tuple(deps))
        return _Out(len(self.deps) - 1)

    def dag(self, values: list[Any]) -> DAG | None:
        """The DAG whose outputs are the task outputs among ``values`` (None when there is none)."""
        outputs = tuple(v.i for v in values if type(v) is _Out)
        if not outputs:
            return None
        return DAG(
            self.tasks, self.task_of, self.args, self.kwargs, self.deps, tuple(dict.fromkeys(outputs)), outputs=outputs
        )


KEPT_TASKS = 512
"""Tasks of module-level functions kept between calls (the least recently used go first)."""

_kept: OrderedDict[tuple[Callable[..., Any], str | None], Task] = OrderedDict()
_kept_lock = threading.Lock()


def _long_lived(func: Callable[..., Any]) -> bool:
    """A builtin, or a function defined at a module's top level: made once, not per graph, and holding no data.

    Their tasks are kept between calls: making a task (its name, its code hash for
    the DAG signature) was a tenth of the cost of a small ``get``. Closures, lambdas
    and partials are made per graph and may hold large values, so they are not kept.
    """
    kind = type(func)
    if kind is BuiltinFunctionType:
        return True
    return kind is FunctionType and func.__closure__ is None and "<" not in func.__qualname__  # type: ignore[attr-defined]


SEEDED_GENERATORS = frozenset({"dask.array.random._apply_random", "dask.array.random._apply_random_func"})
"""Dask's random-chunk makers: each chunk's seed or generator state is among its task's arguments,
so running the task again makes the same chunk."""


def _seeded(func: Callable[..., Any]) -> bool:
    """Whether ``func`` returns equal values for equal arguments by Dask's design (its random chunks).

    Only those are made ``pure``: a worker may leave a large output of a pure root
    task out of the store for a reader elsewhere to make again. A Dask graph says
    nothing of its other functions (``delayed(np.random.random)`` is one), and making
    one of those twice would give two readers different values.
    """
    return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', '')}" in SEEDED_GENERATORS


def _kept_task(func: Callable[..., Any], name: str | None) -> Task:
    key = (func, name)
    with _kept_lock:
        task = _kept.get(key)
        if task is not None:
            _kept.move_to_end(key)
            return task
    task = Task(func, name=name or _funcname(func), pure=_seeded(func))
    with _kept_lock:
        task = _kept.setdefault(key, task)  # another thread may have made it meanwhile: one task per function
        while len(_kept) > KEPT_TASKS:
            _kept.popitem(last=False)
    return task


def _funcname(func: Callable[..., Any]) -> str:
    """Dask's name for ``func``; a ``toolz.compose`` is named after its last (outermost) function."""
    from dask.utils import funcname

    funcs = getattr(func, "funcs", None)
    if type(func).__name__ == "Compose" and isinstance(funcs, tuple) and funcs:
        return _funcname(funcs[-1])
    return str(funcname(func))
