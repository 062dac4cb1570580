"""What a run's records need of its DAG: per task its function's name and identity, and its upstream ids.

A recording client has the :class:`~fanflow.dag.graph.DAG`; a reader has only
the structure kept in the run's trace. Both become a :class:`Graph`, so one
builder (:func:`fanflow.metrics.build.build_metrics`) serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fanflow.dag.graph import DAG
from fanflow.store.metadata.trace import Trace


@dataclass(frozen=True, slots=True)
class Graph:
    functions: Sequence[tuple[str, str]]
    """``(name, identity)`` of each task function."""
    task_of: Sequence[int]
    deps: Sequence[Sequence[int]]
    """Upstream task ids of each task, in argument order."""

    def name(self, i: int) -> str:
        """The task's key, as :meth:`DAG.name` gives it: ``<function name>-<task id>``."""
        return f"{self.functions[self.task_of[i]][0]}-{i}"

    def identity(self, i: int) -> str:
        return self.functions[self.task_of[i]][1]

    @classmethod
    def of_dag(cls, dag: DAG) -> Graph:
        return cls([(t.name, t.identity) for t in dag.tasks], dag.task_of, dag.deps)

    @classmethod
    def of_trace(cls, trace: Trace) -> Graph:
        counts = trace.dag.dep_counts.tolist()
        flat = trace.dag.deps.tolist()
        deps: list[list[int]] = []
        at = 0
        for n in counts:
            deps.append(flat[at : at + n])
            at += n
        return cls(trace.dag.functions, trace.dag.task_of.tolist(), deps)
