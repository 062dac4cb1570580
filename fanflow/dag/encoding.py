"""Compact encoding of a DAG for shipping to workers.

Layout (one cloudpickle, protocol 5): a format tag, the distinct tasks (each
function pickled once), then one column per per-task fact: ``task_of`` as a
byte string of fixed-width ints, upstream ids, and argument templates. The
common call shape ``f(a, b)`` has the template ``None`` and costs nothing. Downstream
ids are recomputed on decode rather than shipped.
"""

from __future__ import annotations

import pickle
from array import array

import cloudpickle

from fanflow.dag.graph import DAG
from fanflow.dag.node import Task
from fanflow.errors import DAGError, SerializationError

FORMAT = "fanflow-dag/1"


def encode(dag: DAG) -> bytes:
    """Serialize ``dag``; raises :class:`SerializationError` naming the bad task."""
    task_of = array("I", dag.task_of).tobytes()
    body = (FORMAT, dag.tasks, task_of, dag.deps, dag.args, dag.kwargs, dag.sinks, dag.annotations, dag.maps)
    try:
        return cloudpickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise _find_unpicklable(dag, exc) from exc


def decode(data: bytes) -> DAG:
    """Rebuild a :class:`DAG` from :func:`encode`'s bytes."""
    try:
        body = pickle.loads(data)
    except Exception as exc:
        raise DAGError(f"cannot decode DAG ({len(data)} bytes): {exc}") from exc
    if not isinstance(body, tuple) or not body or body[0] != FORMAT:
        raise DAGError(f"not a fanflow DAG encoding (expected format {FORMAT!r})")
    _, tasks, task_of_bytes, deps, args, kwargs, sinks, annotations, maps = body
    task_of = array("I")
    task_of.frombytes(task_of_bytes)
    return DAG(tasks, task_of.tolist(), args, kwargs, deps, sinks, annotations=annotations, maps=maps)


def _find_unpicklable(dag: DAG, exc: Exception) -> SerializationError:
    """Pin a pickling failure on the first task whose function or arguments fail."""
    for i in range(len(dag)):
        task: Task = dag.task(i)
        for what, obj in (("function", task.func), ("arguments", (dag.args[i], dag.kwargs[i]))):
            try:
                cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as inner:
                return SerializationError(
                    f"task {dag.name(i)!r}: its {what} cannot be serialized for this platform "
                    f"({type(inner).__name__}: {inner}). Pass picklable values, or build the "
                    "object inside the task; the threads platform with the memory store needs no pickling."
                )
    return SerializationError(f"the DAG cannot be serialized: {type(exc).__name__}: {exc}")
