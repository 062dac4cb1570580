"""The DAG: an immutable, column-oriented view of the graph reachable from sinks.

Tasks are numbered in topological order (upstream before downstream), and every
per-task fact is a column indexed by that number: which :class:`Task` runs it
(``task_of``), its argument templates, its upstream ids (``deps``) and its
downstream ids (``dependents``). The same columns come out of
:meth:`DAG.from_sinks` on the client and out of decoding on a worker, so the
worker loop never needs node objects.

"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from fanflow.dag.nested import map_nested
from fanflow.dag.node import MapNode, Node, Ref, Task, is_ref
from fanflow.errors import DAGCycleError, DAGError

if TYPE_CHECKING:
    from fanflow.dag.placement import PlanView


R = TypeVar("R")


class _computed_once(Generic[R]):  # noqa: N801 - used as a decorator, like the property it stands for
    """``functools.cached_property`` without its lock: the value is computed on first read and kept
    in the instance, after which reads never reach this descriptor.

    Python 3.11's ``cached_property`` takes a lock on every first read, about three
    times the cost of reading the value (a DAG made per small run pays it for its
    roots and signature). Both are pure functions of an immutable DAG: two threads
    computing one at once get the same value.
    """

    def __init__(self, func: Callable[[Any], R]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _computed_once[R]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> R: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> R | _computed_once[R]:
        if instance is None:
            return self
        value: R = self.func(instance)
        instance.__dict__[self.name] = value
        return value


class DAG:
    """A full DAG. Build it with :meth:`from_sinks`; workers get it from decoding."""

    def __init__(
        self,
        tasks: list[Task],
        task_of: list[int],
        args: list[Any],
        kwargs: list[Any],
        deps: list[tuple[int, ...]],
        sinks: tuple[int, ...],
        nodes: list[Node] | None = None,
        annotations: dict[int, dict[str, Any]] | None = None,
        outputs: tuple[int, ...] | None = None,
        maps: frozenset[int] = frozenset(),
    ) -> None:
        self.tasks = tasks
        self.task_of = task_of
        self.args = args
        self.kwargs = kwargs
        self.deps = deps
        self.sinks = sinks
        # The sinks as the caller asked for them, repeats included: compute(a, a) gives two values.
        self.outputs = outputs if outputs is not None else sinks
        self.nodes = nodes
        # Dynamic fan-outs (fanflow.map): expanded into element tasks by the worker that claims them.
        self.maps = maps
        # Per-task plan decisions (resources, placement, optimizations), sparse.
        self.annotations: dict[int, dict[str, Any]] = annotations or {}
        # No edges (a lone task, independent ones): nothing to count.
        self.dependents: list[tuple[int, ...]] = _dependents(deps) if any(deps) else [()] * len(deps)
        self._sink_set = frozenset(sinks)
        self.plan_view: PlanView | None = None
        """The plan's columns, kept here by :func:`fanflow.dag.placement.plan_of` (which builds them)."""
        self.build_s = 0.0
        """Seconds building it took, for its runs' records (:func:`fanflow.metrics.recorder.note_dag_build`; a
        ``WeakKeyDictionary`` entry per call cost a weak reference and its callback)."""

    # -- building -------------------------------------------------------------
    @classmethod
    def from_sinks(cls, sinks: Sequence[Node]) -> DAG:
        """Collect every node reachable from ``sinks`` and number them topologically.

        Iterative, so a chain of any depth builds without touching the recursion
        limit. Raises :class:`DAGCycleError` if the graph loops back on itself.
        """
        if not sinks:
            raise DAGError("nothing to compute: pass at least one node")
        for s in sinks:
            if not isinstance(s, Node):
                raise DAGError(f"expected fanflow nodes to compute, got {type(s).__name__}: {s!r:.80}")
        order: dict[int, int] = {}  # id(node) -> topological index
        nodes: list[Node] = []
        on_path: set[int] = set()
        for sink in sinks:
            if id(sink) in order:
                continue
            stack: list[tuple[Node, int]] = [(sink, 0)]
            on_path.add(id(sink))
            while stack:
                node, pos = stack[-1]
                deps = node.deps
                if pos < len(deps):
                    stack[-1] = (node, pos + 1)
                    up = deps[pos]
                    key = id(up)
                    if key in order:
                        continue
                    if key in on_path:
                        raise DAGCycleError(
                            f"task {up.task.name!r} depends on itself through {node.task.name!r}: "
                            "the graph is not a DAG (was a node mutated after use?)"
                        )
                    on_path.add(key)
                    stack.append((up, 0))
                else:
                    stack.pop()
                    on_path.discard(id(node))
                    order[id(node)] = len(nodes)
                    nodes.append(node)
        task_index: dict[int, int] = {}
        tasks: list[Task] = []
        task_of: list[int] = []
        for node in nodes:
            t = task_index.get(id(node.task))
            if t is None:
                t = task_index[id(node.task)] = len(tasks)
                tasks.append(node.task)
            task_of.append(t)
        deps_ids = [tuple(order[id(u)] for u in n.deps) for n in nodes]
        outputs = tuple(order[id(s)] for s in sinks)
        sink_ids = tuple(dict.fromkeys(outputs))
        return cls(
            tasks,
            task_of,
            [n._args for n in nodes],
            [n._kwargs for n in nodes],
            deps_ids,
            sink_ids,
            nodes=nodes,
            outputs=outputs,
            maps=frozenset(i for i, n in enumerate(nodes) if isinstance(n, MapNode)),
        )

    # -- structure ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.deps)

    def task(self, i: int) -> Task:
        return self.tasks[self.task_of[i]]

    def name(self, i: int) -> str:
        """Readable task key: ``<task name>-<index>``."""
        return f"{self.tasks[self.task_of[i]].name}-{i}"

    def indegree(self, i: int) -> int:
        return len(self.deps[i])

    def is_sink(self, i: int) -> bool:
        return i in self._sink_set

    @_computed_once
    def roots(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.deps) if not d)

    @_computed_once
    def roots_by_readers(self) -> tuple[int, ...]:
        """The roots, those with a dependent in common next to each other (connected groups, in order of
        their first root): see :func:`fanflow.dag.placement.by_shared_readers`, which a planner asks for
        every set of labels it simulates."""
        roots = self.roots
        parent = {r: r for r in roots}

        def find(r: int) -> int:
            while parent[r] != r:
                parent[r] = parent[parent[r]]
                r = parent[r]
            return r

        first_reader_of: dict[int, int] = {}
        for r in roots:
            for d in self.dependents[r]:
                other = first_reader_of.setdefault(d, r)
                a, b = find(r), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        members: dict[int, list[int]] = {}
        for r in roots:
            members.setdefault(find(r), []).append(r)
        return tuple(r for group in members.values() for r in group)

    @property
    def edges(self) -> Iterator[tuple[int, int]]:
        for i, ups in enumerate(self.deps):
            for u in ups:
                yield (u, i)

    @property
    def sink_name(self) -> str:
        return self.tasks[self.task_of[self.sinks[0]]].name

    @_computed_once
    def signature(self) -> str:
        """Hash of structure and task code; the same DAG built twice gets the same one.

        Constant argument values are not part of it (only their types), so one
        workflow run on different data keeps one signature and one history.
        """
        codes = [t.code_hash for t in self.tasks]
        task_of, args, kwargs = self.task_of, self.args, self.kwargs
        lines = [
            f"{codes[task_of[i]]}|{ups}|{'-' if args[i] is None else _shape(args[i])}|"
            f"{'-' if kwargs[i] is None else _shape(kwargs[i])}"  # None, the usual: _shape's "-" without the call
            for i, ups in enumerate(self.deps)
        ]
        lines.append(repr(self.sinks))
        lines.append(repr(sorted(self.maps)))
        digest = hashlib.blake2b("\n".join(lines).encode(), digest_size=16)
        return digest.hexdigest()

    def new_run_id(self) -> str:
        """``<utc yyyymmddThhmmss>_<sink name>_<random8>_<signature8>`` (random: 8 hex digits)."""
        return f"{_utc_stamp()}_{self.sink_name}_{_run_random.getrandbits(32):08x}_{self.signature[:8]}"


def _dependents(deps: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Each task's downstream ids, from each task's upstream ids.

    Counted, then laid end to end in one list and cut into tuples: a list per task, alive
    while every task is visited, was promoted by the garbage collector's young passes (16,383
    for a tree of 8,192 leaves), and CPython runs a full collection once promotions reach a
    quarter of the long-lived objects: one in every compute() of such a tree, 25-35 ms.
    """
    ends = [0] * (len(deps) + 1)
    for ups in deps:
        for u in ups:
            ends[u + 1] += 1
    ends = list(accumulate(ends))  # task u's dependents are flat[ends[u]:ends[u + 1]]
    flat = [0] * ends[-1]
    fill = ends[:-1]
    for i, ups in enumerate(deps):
        for u in ups:
            flat[fill[u]] = i
            fill[u] += 1
    return [tuple(flat[ends[u] : ends[u + 1]]) for u in range(len(deps))]


_run_random = random.Random()
"""Run ids' random part, without a system call per run (``os.urandom`` is one): seeded from
``os.urandom``, again in a forked child, and its own, so a task's ``random.seed()`` cannot repeat ids."""
os.register_at_fork(after_in_child=_run_random.seed)

_stamp: tuple[int, str] = (-1, "")


def _utc_stamp() -> str:
    """The UTC time to the second, formatted once per second (runs of small DAGs start thousands a second)."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, datetime.fromtimestamp(second, UTC).strftime("%Y%m%dT%H%M%S"))
    return _stamp[1]


def _shape(template: Any) -> str:
    if template is None:
        return "-"
    if type(template) is tuple:  # flat constants, the usual: their types' names, in one pass
        names = []
        for x in template:
            if isinstance(x, (list, tuple, dict, Ref)):
                break
            names.append(type(x).__name__)
        else:
            return ",".join(names)
    return repr(
        map_nested(
            template,
            lambda x: f"@{x.i}" if is_ref(x) else type(x).__name__,
            lambda x: not isinstance(x, (list, tuple, dict)),
        )
    )
