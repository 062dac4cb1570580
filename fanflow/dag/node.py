"""Tasks and nodes: the lazy call graph users build.

A :class:`Task` wraps a plain function. Calling it returns a :class:`Node`, one
lazy call whose arguments may hold other nodes at any depth. A node keeps its
arguments as a *template*: every upstream node is replaced by a :class:`Ref` to
its position in ``node.deps``, so shipping and substituting never need the node
objects again.

Running a node is not this layer's job: ``compute``/``submit`` go through the
runner that the API layer registers (:func:`set_runner`), so imports stay
one-way from the top layer down.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
import weakref
from collections.abc import Callable, Iterator, Sequence
from types import CodeType
from typing import Any, Protocol

from fanflow.dag.nested import collect, map_nested
from fanflow.errors import DAGError

_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


class Ref:
    """Placeholder for the value of upstream dependency number ``i`` of a node."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self) -> tuple[type[Ref], tuple[int]]:
        return (Ref, (self.i,))

    def __repr__(self) -> str:
        return f"Ref({self.i})"

    def __eq__(self, other: object) -> bool:
        return type(other) is Ref and other.i == self.i

    def __hash__(self) -> int:
        return hash(("Ref", self.i))


def is_ref(x: Any) -> bool:
    return type(x) is Ref


def is_node(x: Any) -> bool:
    return isinstance(x, Node)


def substitute(template: Any, values: Sequence[Any]) -> Any:
    """Fill a template's :class:`Ref` placeholders with upstream values."""
    return map_nested(template, lambda r: values[r.i], is_ref)


class Task:
    """A function made into a DAG task by :func:`fanflow.task`.

    Calling it returns a :class:`Node`; the plain function stays reachable as
    ``.func``. Options: ``name``, ``retries``, ``retry_backoff`` (seconds, doubled
    per attempt, with jitter), ``retry_on`` (exception types worth a retry),
    ``memory_mb`` (the resource request), ``requirements`` (pip specifiers the
    workers must already have) and ``pure`` (the function returns equal values for
    equal arguments and has no side effects, so fanflow may run it again instead of
    moving its output: a worker keeps a large output of a cheap pure task with no
    inputs in memory, and a reader elsewhere recomputes it, as lineage recovery does).
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        retries: int = 0,
        retry_backoff: float = 0.1,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        memory_mb: int | None = None,
        requirements: Sequence[str] = (),
        pure: bool = False,
    ) -> None:
        if not callable(func):
            raise DAGError(f"@fanflow.task needs a callable, got {type(func).__name__}")
        if not isinstance(retries, int) or retries < 0:
            raise DAGError(f"task {name or _func_name(func)!r}: retries must be an int >= 0, got {retries!r}")
        if memory_mb is not None and (not isinstance(memory_mb, int) or memory_mb < 128):
            raise DAGError(f"task {name or _func_name(func)!r}: memory_mb must be an int >= 128, got {memory_mb!r}")
        if retry_backoff < 0:
            raise DAGError(f"task {name or _func_name(func)!r}: retry_backoff must be >= 0")
        self.func = func
        self.name = _NAME_RE.sub("_", name or _func_name(func))
        self.retries = retries
        self.retry_backoff = float(retry_backoff)
        self.retry_on = tuple(retry_on)
        self.memory_mb = memory_mb
        self.requirements = tuple(requirements)
        self.pure = bool(pure)
        self._code_hash: str | None = None
        self._identity: str | None = None
        functools.update_wrapper(self, func, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Node:
        return Node(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<fanflow.task {self.name}>"

    @property
    def code_hash(self) -> str:
        """A hash of the function's code and the task options, stable across processes."""
        if self._code_hash is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(self.name.encode())
            digest.update(_code_fingerprint(self.func))
            digest.update(repr((self.retries, self.memory_mb, self.requirements)).encode())
            self._code_hash = digest.hexdigest()
        return self._code_hash

    @property
    def identity(self) -> str:
        """Stable identity of the task function, used to key its run history (made once: recording reads it
        per run)."""
        if self._identity is None:
            module = getattr(self.func, "__module__", None) or "?"
            self._identity = f"{module}.{getattr(self.func, '__qualname__', self.name)}:{self.code_hash[:12]}"
        return self._identity

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("__wrapped__", None)
        state.pop("_identity", None)  # each process makes its own, as before it was kept
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._identity = None


def _func_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__name__", None)
    if name is None and isinstance(func, functools.partial):
        name = getattr(func.func, "__name__", None)
    return name or type(func).__name__


def _code_fingerprint(func: Any) -> bytes:
    if isinstance(func, functools.partial):
        return _code_fingerprint(func.func) + repr((func.args, func.keywords)).encode("utf-8", "replace")
    code = getattr(func, "__code__", None)
    if code is None:
        qual = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', type(func).__qualname__)}"
        return qual.encode()
    found = _fingerprints.get(code)
    if found is None:
        found = _fingerprints[code] = _code_bytes(code)
    return found


_fingerprints: weakref.WeakKeyDictionary[CodeType, bytes] = weakref.WeakKeyDictionary()
"""Per code object: the same function is made a task again on every call of ``fanflow.dask.get``."""


def _code_bytes(code: CodeType) -> bytes:
    parts: list[bytes] = []
    stack = [code]
    while stack:
        co = stack.pop()
        parts.append(co.co_code)
        parts.append(repr(co.co_names).encode())
        for const in co.co_consts:
            if inspect.iscode(const):
                stack.append(const)
            else:
                parts.append(repr(const).encode("utf-8", "replace"))
    return b"\0".join(parts)


class Runner(Protocol):
    """What the API layer provides so that nodes can run themselves."""

    def compute(self, nodes: Sequence[Node], config: Any, **options: Any) -> tuple[Any, ...]: ...

    def submit(self, nodes: Sequence[Node], config: Any, **options: Any) -> Any: ...

    def visualize(self, nodes: Sequence[Node], path: str, **options: Any) -> str: ...


_runner: Runner | None = None


def set_runner(runner: Runner) -> None:
    """Register the object that runs nodes (done once by ``fanflow.api``)."""
    global _runner
    _runner = runner


def _get_runner() -> Runner:
    if _runner is None:  # pragma: no cover - any API name taken from `fanflow` imports fanflow.api
        raise DAGError("no runner registered: import fanflow.api (or use fanflow.task) before computing nodes")
    return _runner


class Node:
    """One lazy call of a task. Build a DAG by passing nodes to other tasks.

    ``deps`` holds the distinct upstream nodes in first-use order; the same node
    passed twice is one dependency. Nodes are immutable once made.
    """

    __slots__ = ("__weakref__", "_args", "_kwargs", "deps", "task")

    task: Task
    deps: tuple[Node, ...]
    _args: Any
    _kwargs: Any

    def __init__(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        object.__setattr__(self, "task", task)
        if not kwargs:
            # The two common calls need no walk (a third of the cost of a small DAG's build):
            # f(a, b) of distinct upstream nodes, and f(1, "x") of flat constants.
            if all(isinstance(a, Node) for a in args):
                if len({id(a) for a in args}) == len(args):
                    self._set(args, None, None)
                    return
            elif not any(isinstance(a, _WALKED) for a in args):
                self._set((), args, None)
                return
        index: dict[int, int] = {}
        deps: list[Node] = []

        def to_ref(node: Node) -> Ref:
            pos = index.get(id(node))
            if pos is None:
                pos = index[id(node)] = len(deps)
                deps.append(node)
            return Ref(pos)

        targs = map_nested(args, to_ref, is_node)
        tkwargs = map_nested(kwargs, to_ref, is_node) if kwargs else None
        # The common shape f(a, b, ...) with distinct upstream nodes and nothing
        # else is stored as None, so it costs nothing to ship or to fill in.
        if tkwargs is None and len(deps) == len(args) and all(type(r) is Ref and r.i == i for i, r in enumerate(targs)):
            targs = None
        self._set(tuple(deps), targs, tkwargs)

    def _set(self, deps: tuple[Node, ...], targs: Any, tkwargs: Any) -> None:
        object.__setattr__(self, "deps", deps)
        object.__setattr__(self, "_args", targs)
        object.__setattr__(self, "_kwargs", tkwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise DAGError(f"node of task {self.task.name!r} is immutable: build a new node instead")

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def args(self) -> tuple[Any, ...]:
        """The call's positional arguments, with upstream nodes in place."""
        if self._args is None:
            return self.deps
        return substitute(self._args, self.deps)  # type: ignore[no-any-return]

    @property
    def kwargs(self) -> dict[str, Any]:
        """The call's keyword arguments, with upstream nodes in place."""
        if self._kwargs is None:
            return {}
        return substitute(self._kwargs, self.deps)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<fanflow.Node {self.task.name} deps={len(self.deps)}>"

    def __getitem__(self, key: Any) -> Node:
        """A node for ``value[key]`` of this node's value (e.g. one part of a tuple)."""
        return _getitem(self, key)

    def __iter__(self) -> Iterator[Any]:
        raise TypeError(
            f"node of task {self.task.name!r} is lazy and cannot be iterated; "
            "index it (node[i]) or use fanflow.map over it"
        )

    def __bool__(self) -> bool:
        raise TypeError(f"node of task {self.task.name!r} is lazy and has no truth value; compute it first")

    def compute(self, config: Any = None, **options: Any) -> Any:
        """Run the DAG that ends in this node and return its value."""
        return _get_runner().compute([self], config, **options)[0]

    def submit(self, config: Any = None, **options: Any) -> Any:
        """Start the DAG in the background; returns a ``concurrent.futures.Future``."""
        return _get_runner().submit([self], config, **options)

    def visualize(self, path: str = "dag.svg", **options: Any) -> str:
        """Draw the DAG (SVG/PNG via graphviz when ``dot`` exists, else HTML); returns the path."""
        return _get_runner().visualize([self], path, **options)


_WALKED = (Node, list, tuple, dict)
"""What :func:`map_nested` looks into (or replaces) in a node's arguments."""


class MapNode(Node):
    """A dynamic fan-out: ``task`` applied to every item of a list known only at run time.

    ``deps[0]`` is the node producing the list; its value is expanded by the
    worker that claims this node into one element task per item, and the
    node's own value is the list of their results, in order. Further arguments
    (constants or nodes) are passed to every element after the item.
    """

    __slots__ = ()

    def __init__(self, task: Task, items: Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not isinstance(items, Node):
            raise DAGError(
                f"fanflow.map({task.name}, ...) needs a node whose value is a list; for a list known now, "
                f"write [{task.name}(x) for x in items]"
            )
        if any(n is items for n in collect(list(args) + list(kwargs.values()), is_node)):
            raise DAGError(f"fanflow.map({task.name}, ...): pass the list node once, not again as an argument")
        super().__init__(task, (items, *args), kwargs)
        if self._args is None:  # keep the item slot explicit: element calls substitute it
            object.__setattr__(self, "_args", tuple(Ref(i) for i in range(len(self.deps))))

    def __repr__(self) -> str:
        return f"<fanflow.MapNode {self.task.name} over {self.deps[0].task.name}>"


def map_task(func: Callable[..., Any], items: Node, *args: Any, **kwargs: Any) -> MapNode:
    """``fanflow.map``: a node whose value is ``[func(x, *args, **kwargs) for x in items]``.

    ``items`` is a node whose value (a list or tuple) is known only at run time;
    the worker that finishes it creates one task per item. Maps chain: the
    result of a map can feed another ``fanflow.map`` or any task, which then
    gets the results as a list in item order.
    """
    task = func if isinstance(func, Task) else Task(func)
    return MapNode(task, items, args, kwargs)


def _getitem_func(value: Any, key: Any) -> Any:
    return value[key]


_getitem = Task(_getitem_func, name="getitem")
