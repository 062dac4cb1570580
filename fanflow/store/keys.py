"""Key names of a run in a store.

Keys of one fan-in step share a hash tag, ``{<run>:<task>}``, so a Lua script
touching a task's dependency set and claim works on Redis Cluster, and a run's
keys spread across slots. Run-level keys use the tag ``{<run>}``. The client
derives every key of a run from the DAG, so cleanup never needs SCAN.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

PREFIX = "ff"


def output(run_id: str, task: int) -> str:
    return f"{PREFIX}:{{{run_id}:{task}}}:out"


def deps(run_id: str, task: int) -> str:
    return f"{PREFIX}:{{{run_id}:{task}}}:deps"


def claim(run_id: str, task: int) -> str:
    return f"{PREFIX}:{{{run_id}:{task}}}:claim"


def status(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:status"


def errors(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:errors"


def error_object(run_id: str) -> str:
    """The first failure's exception object (pickled where the store serializes)."""
    return f"{PREFIX}:{{{run_id}}}:exc"


def dag(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:dag"


def channel(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}:done"


def events(run_id: str) -> str:
    """The run's event stream: kept with its metadata, not deleted at cleanup."""
    return f"{PREFIX}:{{{run_id}}}:events"


def run_keys(run_id: str, deps_of: Sequence[Sequence[int]]) -> Iterator[str]:
    """Every key a run may write, except its event stream."""
    yield status(run_id)
    yield errors(run_id)
    yield error_object(run_id)
    yield dag(run_id)
    for task, ups in enumerate(deps_of):
        yield output(run_id, task)
        if ups:
            yield deps(run_id, task)
            yield claim(run_id, task)
