"""Placement rules shared by the worker loop and the planner's simulator.

A plan gives tasks *labels*: tasks with one label should run in one worker.
The loop honours labels where it can (a worker keeps the dependents it claims
that share its task's label; the client starts a label's roots together), and
the simulator must predict exactly what the loop will do, so the one rule that
decides whether an output may stay out of the store lives here.

A task is **anchored** when it is certain to run in the worker that starts its
label's roots: it is such a root, or every input of it is an anchored task of
the same label (and it is not a dynamic fan-out, whose elements fan out). By
induction that one worker produces all of an anchored task's inputs, so it is
the one to finish the last of them, claims the task and, the label matching,
keeps it. An output whose consumers are all anchored in its label never needs
the store.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from fanflow.dag.graph import DAG


def anchored_tasks(dag: DAG, labels: Sequence[Hashable | None]) -> frozenset[int]:
    """The tasks certain to run in their label's root worker (see the module docstring)."""
    anchored: set[int] = set()
    deps, maps = dag.deps, dag.maps
    for t, label in enumerate(labels):  # topological order: inputs are decided first
        if label is None or t in maps:
            continue
        if all(u in anchored and labels[u] == label for u in deps[t]):
            anchored.add(t)
    return frozenset(anchored)


def delayable(dag: DAG, t: int, labels: Sequence[Hashable | None], anchored: frozenset[int]) -> bool:
    """True when no other worker can need ``t``'s output, so delayed I/O may skip its upload.

    Every dependent shares ``t``'s label and either is anchored, or has ``t``
    as its only input (it is claimed, and kept, by ``t``'s worker the moment
    ``t`` finishes). A sink's output is always stored.
    """
    label = labels[t]
    dependents = dag.dependents[t]
    if label is None or dag.is_sink(t) or not dependents:
        return False
    if not all(labels[d] == label for d in dependents):
        return False
    return all(d in anchored or len(dag.deps[d]) == 1 for d in dependents)
