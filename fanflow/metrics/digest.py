"""What recording computes of a run, column-wise: its totals and its summary increments.

Recording keeps a run as its trace (:mod:`fanflow.store.metadata.trace`) and
builds task records only when history is read. It still needs, at once, what
the run document lists (tasks finished, workers, cold starts, bytes) and the
increments of the running summaries, which must be merged before retention can
delete the run. :func:`digest` computes both with numpy over the event table's
columns, without a record per task.

It covers the common run: every task finished exactly once, no dynamic fan-out,
no failure. For any other run it returns None and the recorder builds the
records (:func:`fanflow.metrics.build.build_metrics`); both give the same
numbers (tests compare them).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from itertools import chain, product
from typing import Any

import numpy as np

from fanflow.metrics.records import RunRecord
from fanflow.store.events import SHAPES
from fanflow.store.metadata.base import Execution, Summary, SummaryKey
from fanflow.store.metadata.trace import DagArrays, EventTable, IntLists, Strings

_KNOWN = frozenset({"worker_started", "worker_stopped", "task_started", "task_finished"})

_SIZES = (list, tuple)
"""What a task_finished event's ``in_bytes`` may be: workers write tuples, JSON gives lists."""


def digest(dag: DagArrays, table: EventTable, header: RunRecord) -> tuple[RunRecord, dict[SummaryKey, Summary]] | None:
    """``header`` with the run's totals, and its summary increments; None when the run is not a common one."""
    n = len(dag.task_of)
    if dag.maps or not table.kinds() <= _KNOWN or any("element" in g.columns for g in table.groups):
        return None
    ended = table.of_kind("task_finished")
    if len(ended) != 1 or ended[0].size != n:
        return None
    cols = ended[0].columns
    task, memory = cols.get("task"), cols.get("memory_mb")
    exec_s, out, sizes = cols.get("exec_s"), cols.get("out_bytes"), cols.get("in_bytes")
    arrays = (task, memory, exec_s, out)
    if not all(isinstance(a, np.ndarray) for a in arrays) or not isinstance(sizes, (IntLists, list)):
        return None
    assert isinstance(task, np.ndarray) and isinstance(memory, np.ndarray)  # for the type checker
    assert isinstance(exec_s, np.ndarray) and isinstance(out, np.ndarray)
    if task.dtype.kind not in "iu" or memory.dtype.kind not in "iu" or not (memory > 0).all():
        return None
    if task.min() < 0 or task.max() >= n or (np.bincount(task, minlength=n) != 1).any():
        return None  # a task missing, or ending twice (re-run after a lost lease)
    counts = dag.dep_counts[task]
    if isinstance(sizes, IntLists):
        lengths, flat = sizes.lengths, sizes.floats()
    else:
        try:
            lengths = np.fromiter(map(len, sizes), dtype=np.int64, count=n)
            flat = np.array(list(chain.from_iterable(sizes)), dtype=np.float64)
        except (TypeError, ValueError):
            return None
    if (lengths != counts).any():
        return None
    workers = _workers(table)
    if workers is None:
        return None
    n_workers, cold_starts = workers

    # each input slot of each task, in the event's order: its upstream, its size (NaN when local)
    starts = np.concatenate(([0], np.cumsum(dag.dep_counts)[:-1]))[task]
    row = np.repeat(np.arange(n), counts)
    slot = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    upstream = dag.deps[starts[row] + slot]
    out_of = np.zeros(n, dtype=np.float64)
    out_of[task] = out
    local = np.isnan(flat)
    slot_bytes = np.where(local, out_of[upstream], flat)
    in_bytes = np.bincount(row, weights=slot_bytes, minlength=n)
    run = dataclasses.replace(
        header,
        tasks=n,
        tasks_finished=n,
        workers=n_workers,
        cold_starts=cold_starts,
        bytes_fetched=int(flat[~local].sum()),
        bytes_local=int(slot_bytes[local].sum()),
        bytes_out=int(out.sum()),
    )
    return run, _summaries(dag.functions, dag.task_of[task], memory, exec_s.astype(np.float64), in_bytes, out)


def _workers(table: EventTable) -> tuple[int, int] | None:
    """(workers seen, cold starts) as the records count them; None when a worker started twice."""
    cold = 0
    for g in table.of_kind("worker_started"):
        flags, ids = g.columns.get("cold"), g.columns.get("worker")
        if isinstance(flags, np.ndarray) and flags.dtype.kind == "b" and isinstance(ids, Strings):
            if ids.used().size != g.size:  # a worker started twice
                return None
            cold += int(flags.sum())
            continue
        flags, names = g.values("cold"), g.values("worker")  # a short column is a list
        if set(map(type, flags)) - {bool} or len(set(names)) != len(names) or len(names) != g.size:
            return None
        cold += sum(flags)
    return len(table.workers()), cold


def _summaries(
    functions: Sequence[tuple[str, str]],
    function: np.ndarray,
    memory: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    out: np.ndarray,
) -> dict[SummaryKey, Summary]:
    """Summary increments per (identity, memory) of executions ``y`` (seconds) on ``x`` input bytes."""
    index: dict[str, int] = {}
    codes = [index.setdefault(identity, len(index)) for _, identity in functions]  # two functions may share one
    ident = np.asarray(codes, dtype=np.int64)[function]
    names = list(index)
    keys, group = np.unique(ident.astype(np.int64) * (1 << 32) + memory.astype(np.int64), return_inverse=True)
    k = len(keys)
    o = out.astype(np.float64)
    count = np.bincount(group, minlength=k)
    mean = np.bincount(group, weights=y, minlength=k) / count
    m2 = np.bincount(group, weights=(y - mean[group]) ** 2, minlength=k)
    low = np.full(k, np.inf)
    np.minimum.at(low, group, y)
    high = np.zeros(k)
    np.maximum.at(high, group, y)
    sums = [np.bincount(group, weights=w, minlength=k) for w in (x, x * x, x * y, o, x * o)]
    out_summaries: dict[SummaryKey, Summary] = {}
    for g, key in enumerate(keys.tolist()):
        out_summaries[(names[key >> 32], key & 0xFFFFFFFF)] = Summary(
            int(count[g]),
            float(mean[g]),
            float(m2[g]),
            float(low[g]),
            float(high[g]),
            *(float(s[g]) for s in sums),
        )
    return out_summaries


def digest_events(
    identities: Sequence[str], deps: Sequence[Sequence[int]], events: Sequence[dict[str, Any]], header: RunRecord
) -> tuple[RunRecord, dict[SummaryKey, Summary]] | None:
    """:func:`digest` for a small run, on its event dicts: ``header`` with its totals filled in, and its increments.

    ``identities[i]`` and ``deps[i]`` are task ``i``'s function identity and upstream
    ids. Small runs are recorded with their events as a list, never grouped into
    columns: this pass costs a few microseconds where the records took tens. It
    takes only values of the types workers write (the records would convert
    others) and returns None for anything else, as :func:`digest` does.
    """
    n = len(deps)
    ends: list[dict[str, Any] | None] = [None] * n
    workers: set[str] = set()
    started: set[str] = set()
    cold_starts = 0
    for e in events:
        kind, worker = e.get("kind"), e.get("worker", "")
        if kind not in _KNOWN or "element" in e or type(worker) is not str:
            return None
        workers.add(worker)
        if kind == "worker_started":
            cold = e.get("cold")
            if worker in started or type(cold) is not bool:
                return None  # a worker started twice: the records keep its last start
            started.add(worker)
            cold_starts += cold
        elif kind == "task_finished":
            task = e.get("task")
            if type(task) is not int or not 0 <= task < n or ends[task] is not None:
                return None  # a task ending twice (re-run after a lost lease)
            ends[task] = e
    out_bytes = [0] * n
    for i, e in enumerate(ends):
        if e is None:
            return None
        out, memory, exec_s, sizes = e.get("out_bytes"), e.get("memory_mb"), e.get("exec_s"), e.get("in_bytes")
        if type(out) is not int or type(memory) is not int or memory <= 0 or type(exec_s) not in (float, int):
            return None
        if type(sizes) not in _SIZES or len(sizes) != len(deps[i]):
            return None
        out_bytes[i] = out
    inputs = _inputs(deps, [e["in_bytes"] for e in ends if e is not None], out_bytes)  # none is None: checked above
    if inputs is None:
        return None
    read, fetched, local = inputs
    summaries: dict[SummaryKey, Summary] = {}
    for i, e in enumerate(ends):
        assert e is not None  # checked above
        key = (identities[i], e["memory_mb"])
        summary = summaries.get(key)
        if summary is None:
            summary = summaries[key] = Summary()
        summary.add(float(e["exec_s"]), read[i], out_bytes[i])
    header.tasks = header.tasks_finished = n
    header.workers, header.cold_starts = len(workers), cold_starts
    header.bytes_fetched, header.bytes_local, header.bytes_out = fetched, local, sum(out_bytes)
    return header, summaries


Totals = tuple[int, int, int, int, int]
"""What :func:`digest_rows` fills in of a run's record: workers, cold starts, bytes fetched, local and out."""

_STARTED, _STOPPED, _OTHER, _FINISHED = range(4)
_END_TYPES = frozenset(product((float, int), (int,), (int,), _SIZES))
"""The types of a finished task's exec_s, out_bytes, memory_mb and in_bytes that :func:`digest_rows` reads (one
set lookup per task: the records would convert others)."""
_FINISHED_FIELDS = ("exec_s", "out_bytes", "memory_mb", "in_bytes")
_Reader = tuple[int, int, Callable[[tuple[Any, ...]], tuple[Any, ...]] | None]
_readers: dict[int, _Reader | None] = {}
"""Per event shape number: its kind's code, the position of its task (or cold flag) and a getter of the
fields :func:`digest_rows` reads of a finished task; None for a shape it does not digest."""


def _reader(number: int) -> _Reader | None:
    form = SHAPES[number]
    names = form.names
    found: _Reader | None = None
    if {"element", "worker", "kind"} & set(names):
        pass  # an element, or a field the event's dict would not keep
    elif form.kind == "task_finished" and {"task", *_FINISHED_FIELDS} <= set(names):
        found = (_FINISHED, names.index("task"), operator.itemgetter(*map(names.index, _FINISHED_FIELDS)))
    elif form.kind == "worker_started" and "cold" in names:
        found = (_STARTED, names.index("cold"), None)
    elif form.kind in ("worker_stopped", "task_started"):
        found = (_STOPPED if form.kind == "worker_stopped" else _OTHER, 0, None)
    _readers[number] = found
    return found


def digest_rows(
    identities: Sequence[str], deps: Sequence[Sequence[int]], flat: Sequence[Any]
) -> tuple[Totals, tuple[Execution, ...]] | None:
    """:func:`digest_events` on a finished run's event rows as a tiny run's recording keeps them: each flush's
    worker id (a string) followed by its rows (tuples).

    Also checks that the run is complete: every worker seen stopped. Gives
    what :func:`digest_events` gives for the same events (tests compare them)
    without making a dict per event, which cost more than the rest of
    recording a tiny run: its :data:`Totals` and, per task, the execution its
    summary increments count (in task order), or None for anything else.

    The rows of one worker's flushes are read by a plan kept per sequence of
    row shapes (:func:`_plan`): a stream of calls of one graph repeats it, and
    finding each row's kind was most of the digest.
    """
    try:
        key = tuple(map(_last, flat))  # the shape numbers, and the last character of each worker id
    except (IndexError, TypeError):
        return None  # an empty row, or an item that is neither a worker id nor a row
    plan = _plans.get(key, _UNSEEN)
    if plan is _UNSEEN:
        plan = _plan(key)
    if plan is None:
        return _digest_flushes(identities, deps, flat)
    if not plan:
        return None  # refused whatever the values: a shape not digested, a worker started twice or never stopped
    finished, started = plan
    if type(flat[0]) is not str:
        return None
    n = len(deps)
    ends: list[tuple[Any, ...] | None] = [None] * n
    for at, task_at, fields in finished:
        row = flat[at]
        task = row[task_at]
        if type(task) is not int or not 0 <= task < n or ends[task] is not None:
            return None  # a task ending twice (re-run after a lost lease)
        ends[task] = fields(row)
    cold_starts = 0
    if started is not None:
        cold = flat[started[0]][started[1]]
        if type(cold) is not bool:
            return None
        cold_starts = int(cold)
    return _executions(identities, deps, ends, 1, cold_starts)


_last = operator.itemgetter(-1)

_Plan = tuple[tuple[tuple[int, int, Callable[[tuple[Any, ...]], tuple[Any, ...]]], ...], tuple[int, int] | None]
"""Where one worker's rows hold what the digest reads: per finished task, the row's position, the position of
its task id and the getter of its fields; the position of the ``worker_started`` row and of its cold flag (None
when the worker did not start in the run). An empty tuple: a run refused whatever its values."""

_plans: dict[tuple[Any, ...], _Plan | tuple[()] | None] = {}
"""The plan of each sequence of row shapes after a worker id (ending in its last character), None for flushes of
several workers (read row by row)."""

_PLANS_KEPT = 256

_UNSEEN = object()


def _plan(key: tuple[Any, ...]) -> _Plan | tuple[()] | None:
    found: _Plan | tuple[()] | None = None
    if not key or type(key[0]) is not str or any(type(number) is not int for number in key[1:]):
        pass  # several workers' flushes (or rows of none): None
    else:
        finished: list[tuple[int, int, Callable[[tuple[Any, ...]], tuple[Any, ...]]]] = []
        started: list[tuple[int, int]] = []
        stops = 0
        for at, number in enumerate(key[1:], start=1):
            read = _readers[number] if number in _readers else _reader(number)
            if read is None:
                break
            code, field_at, fields = read
            if code == _FINISHED:
                finished.append((at, field_at, fields))  # type: ignore[arg-type]  # a finished reader has its getter
            elif code == _STARTED:
                started.append((at, field_at))
            elif code == _STOPPED:
                stops += 1
        else:
            if stops and len(started) <= 1:
                found = (tuple(finished), started[0] if started else None)
        if found is None:
            found = ()
    if len(_plans) >= _PLANS_KEPT:  # shapes without end (workers with new ids)
        _plans.clear()
    _plans[key] = found
    return found


def _digest_flushes(
    identities: Sequence[str], deps: Sequence[Sequence[int]], flat: Sequence[Any]
) -> tuple[Totals, tuple[Execution, ...]] | None:
    """:func:`digest_rows` row by row: flushes of several workers."""
    n = len(deps)
    ends: list[tuple[Any, ...] | None] = [None] * n
    workers: set[str] = set()
    started: set[str] = set()
    stopped: set[str] = set()
    cold_starts = 0
    readers = _readers
    if flat and type(flat[0]) is not str:
        return None  # rows of no worker
    worker = ""
    for row in flat:
        if type(row) is str:
            worker = row
            workers.add(row)
            continue
        try:
            code, at, fields = readers[row[-1]]
        except KeyError:  # a shape met for the first time
            read = _reader(row[-1])
            if read is None:
                return None
            code, at, fields = read
        except TypeError:  # None: a shape the digest does not read
            return None
        if code == _FINISHED:
            task = row[at]
            if type(task) is not int or not 0 <= task < n or ends[task] is not None:
                return None  # a task ending twice (re-run after a lost lease)
            ends[task] = fields(row)  # type: ignore[misc]  # a finished task's reader has its getter
        elif code == _STARTED:
            cold = row[at]
            if worker in started or type(cold) is not bool:
                return None  # a worker started twice: the records keep its last start
            started.add(worker)
            cold_starts += cold
        elif code == _STOPPED:
            stopped.add(worker)
    if stopped != workers:
        return None  # a worker has events to flush yet
    return _executions(identities, deps, ends, len(workers), cold_starts)


def _executions(
    identities: Sequence[str],
    deps: Sequence[Sequence[int]],
    ends: Sequence[tuple[Any, ...] | None],
    workers: int,
    cold_starts: int,
) -> tuple[Totals, tuple[Execution, ...]] | None:
    """The totals and executions of a run whose finished tasks gave ``ends`` (exec_s, out_bytes, memory_mb,
    in_bytes, by task); None when a task did not finish or a value is of a type the records would convert."""
    # One pass in task order, which is topological: an upstream's output size is known before its
    # dependents read it (what _inputs does for digest_events, without its lists: this is per call).
    fetched = local = total_out = 0
    executions: list[Execution] = []
    for i, end in enumerate(ends):
        if end is None:
            return None
        exec_s, out, memory, sizes = end
        upstreams = deps[i]
        if (type(exec_s), type(out), type(memory), type(sizes)) not in _END_TYPES or memory <= 0:
            return None
        if len(sizes) != len(upstreams):
            return None
        in_bytes = 0
        if upstreams:  # a source skips zip's keyword parsing
            for upstream, size in zip(upstreams, sizes, strict=True):
                if size is None:  # a local input: its upstream's output size
                    size = executions[upstream][4]
                    local += size
                elif type(size) is int:
                    fetched += size
                else:
                    return None
                in_bytes += size
        total_out += out
        executions.append((identities[i], memory, float(exec_s), in_bytes, out))
    return (workers, cold_starts, fetched, local, total_out), tuple(executions)


def _inputs(
    deps: Sequence[Sequence[int]], sizes: Sequence[Sequence[int | None]], out_bytes: Sequence[int]
) -> tuple[list[int], int, int] | None:
    """Per task, the bytes it read, and the run's bytes fetched and read locally, from each task's input
    sizes as workers write them (None: a local input, the upstream's output size); None for another type."""
    fetched = local = 0
    read: list[int] = []
    for i, task_sizes in enumerate(sizes):
        in_bytes = 0
        for upstream, size in zip(deps[i], task_sizes, strict=True):
            if size is None:
                local += out_bytes[upstream]
                in_bytes += out_bytes[upstream]
            elif type(size) is int:
                fetched += size
                in_bytes += size
            else:
                return None
        read.append(in_bytes)
    return read, fetched, local
