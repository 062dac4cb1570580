"""Key names of a run in a store.

Keys of one fan-in step share a hash tag, ``{<run>:<task>}``, so a Lua script
touching a task's dependency set and claim works on Redis Cluster, and a run's
keys spread across slots. Run-level keys use the tag ``{<run>}``. The client
derives every key of a run from the DAG, so cleanup never needs SCAN.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from fanflow.dag.graph import DAG

PREFIX = "ff"


def output(run_id: str, task: int, consumer: int | None = None) -> str:
    """Where ``task``'s output is stored.

    An output read by one task only (``consumer``) lives under that consumer's
    hash tag, beside its fan-in keys, so one script can notify the consumer and
    store the output only when another worker will need it.
    """
    if consumer is None:
        return f"{PREFIX}:{{{run_id}:{task}}}:out"
    return f"{PREFIX}:{{{run_id}:{consumer}}}:in:{task}"


def output_of(run_id: str, graph: DAG, task: int) -> str:
    """``task``'s output key in ``graph``: under its sole consumer's tag unless it is a sink or has several."""
    dependents = graph.dependents[task]
    sole = len(dependents) == 1 and not graph.is_sink(task)
    return output(run_id, task, dependents[0] if sole else None)


def deps(run_id: str, task: int) -> str:
    return f"{PREFIX}:{{{run_id}:{task}}}:deps"


def claim(run_id: str, task: int) -> str:
    return f"{PREFIX}:{{{run_id}:{task}}}:claim"


def element_input(run_id: str, task: int, index: int) -> str:
    """Item ``index`` of a dynamic fan-out (``fanflow.map``) node, as its element task gets it."""
    return f"{PREFIX}:{{{run_id}:{task}.{index}}}:in"


def element_output(run_id: str, task: int, index: int) -> str:
    return f"{PREFIX}:{{{run_id}:{task}.{index}}}:out"


def map_size(run_id: str, task: int) -> str:
    """How many elements a dynamic fan-out got (the client reads it to clean up)."""
    return f"{PREFIX}:{{{run_id}:{task}}}:n"


def parts(run_id: str, task: int) -> str:
    """The fan-in set of a dynamic fan-out's finished elements."""
    return f"{PREFIX}:{{{run_id}:{task}}}:parts"


def collect(run_id: str, task: int) -> str:
    """The claim of gathering a dynamic fan-out's element results."""
    return f"{PREFIX}:{{{run_id}:{task}}}:collect"


def lease(run_id: str, task: int) -> str:
    """Liveness of a long-running task: refreshed by its worker's heartbeat, ``done`` at the end."""
    return f"{PREFIX}:{{{run_id}:{task}}}:lease"


def status(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:status"


def errors(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:errors"


def error_object(run_id: str) -> str:
    """The first failure's exception object (pickled where the store serializes)."""
    return f"{PREFIX}:{{{run_id}}}:exc"


def started(run_id: str) -> str:
    """The invocations of a run that started, by id (a hash): a second delivery of one does not run it again."""
    return f"{PREFIX}:{{{run_id}}}:started"


def dag(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:dag"


def channel(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:done"


def events(run_id: str) -> str:
    """The run's event stream: kept with its metadata, not deleted at cleanup."""
    return f"{PREFIX}:{{{run_id}}}:events"


def run_keys(run_id: str, graph: DAG, map_sizes: Mapping[int, int], leases: bool = True) -> Iterator[str]:
    """Every key a run may write, except its event stream.

    ``map_sizes`` gives the element count of each dynamic fan-out that expanded
    (read from its ``map_size`` key); the keys of its elements follow from it.
    ``leases=False`` leaves out the tasks' leases: workers in the client's own
    process take none (they cannot be lost apart from it).
    """
    for task, n in map_sizes.items():
        yield map_size(run_id, task)
        yield parts(run_id, task)
        yield collect(run_id, task)
        for i in range(n):
            yield element_input(run_id, task, i)
            yield element_output(run_id, task, i)
    yield status(run_id)
    yield errors(run_id)
    yield error_object(run_id)
    yield dag(run_id)
    yield started(run_id)
    for task, ups in enumerate(graph.deps):
        yield output_of(run_id, graph, task)
        if leases:
            yield lease(run_id, task)
        if ups:
            yield deps(run_id, task)
            yield claim(run_id, task)
