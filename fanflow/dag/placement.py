"""Placement rules shared by the worker loop and the planner's simulator.

A plan gives tasks *labels*: tasks with one label should run in one worker.
The loop honours labels where it can (a worker keeps the dependents it claims
that share its task's label; the client starts a label's roots together), and
the simulator must predict exactly what the loop will do, so the one rule that
decides whether an output may stay out of the store lives here.

A label is **closed** when each of its tasks is a root or has all its inputs
under the same label (and none is a dynamic fan-out, whose elements fan out).
All roots of a closed label start in one worker, and every other task of it is
claimed by whoever finishes its last input, so by induction one worker runs the
whole label and holds every output of it in memory.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from fanflow.dag.graph import DAG


def closed_labels(dag: DAG, labels: Sequence[Hashable | None]) -> frozenset[Hashable]:
    """The labels one worker is sure to run entirely (see the module docstring)."""
    seen: set[Hashable] = set()
    broken: set[Hashable] = set()
    deps, maps = dag.deps, dag.maps
    for t, label in enumerate(labels):
        if label is None:
            continue
        seen.add(label)
        if t in maps or any(labels[u] != label for u in deps[t]):
            broken.add(label)
    return frozenset(seen - broken)


def delayable(dag: DAG, t: int, labels: Sequence[Hashable | None], closed: frozenset[Hashable]) -> bool:
    """True when no other worker can need ``t``'s output, so delayed I/O may skip its upload.

    Either every dependent shares ``t``'s closed label, or every dependent has
    ``t`` as its only input and shares its label (it is claimed, and kept, by
    ``t``'s worker the moment ``t`` finishes). A sink's output is always stored.
    """
    label = labels[t]
    dependents = dag.dependents[t]
    if label is None or dag.is_sink(t) or not dependents:
        return False
    if not all(labels[d] == label for d in dependents):
        return False
    return label in closed or all(len(dag.deps[d]) == 1 for d in dependents)
