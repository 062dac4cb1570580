"""A tiny run kept *raw*: its run document, DAG lists and event rows packed as they are, expanded when read.

Recording a run of a few tasks (``dask.compute`` of one delayed call) used to
cost a third of the call: the events turned into dicts, the trace encoded as
JSON (a float's text is most of it), the run document as JSON, each in the
background writer, with the run's objects kept alive until its batch and
promoted through the garbage collector's generations meanwhile. A run of
fewer than :data:`fanflow.store.metadata.trace.SMALL_COLUMN` events that ended
well is instead packed on the client's thread right after it ends: one
``marshal`` call over its run document, its DAG's lists and the worker's event
rows (tuples of numbers and strings; each row's last item is its
:class:`~fanflow.store.events.Shape` number, and the blob carries those shapes'
kinds and field names, since the numbers mean nothing in another process).
The blob is bytes, which the garbage collector never tracks, and is written as
the run's ``events`` column.

Reading builds what recording would have stored (:func:`expand`): the run
document as it was packed and the trace :func:`~fanflow.store.metadata.trace.encode_small_trace`
writes, byte for byte. A store does it in its read path, so no reader of
history knows raw runs exist.

``marshal`` only builds numbers, strings, bytes, tuples, lists and dicts here:
loading runs no code (a code object would be rejected by the shape checks
below, and nothing here calls one). Its format may change between Python
versions: a blob written by another version that cannot be read is reported as
damaged, as a trace is (:class:`~fanflow.store.metadata.base.MetadataError`).
"""

from __future__ import annotations

import itertools
import logging
import marshal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from fanflow.store.events import SHAPES
from fanflow.store.metadata.base import MetadataError
from fanflow.store.metadata.trace import small_trace

log = logging.getLogger(__name__)

MAGIC = b"FFRAW%d." % sys.version_info[1]
"""First bytes of a raw run of the first layout (:func:`pack`): ``FFRAW``, the minor version of the Python that
packed it, and a dot. Any version reads it: marshal's format for the types packed here has not changed since
Python 3.4; a blob it cannot read is reported as damaged."""

MAGIC_VALUES = b"FFRAW%d:" % sys.version_info[1]
"""First bytes of a raw run of the second layout (:func:`pack_values`), which ends with a colon."""

_PREFIX = b"FFRAW"

MARSHAL_VERSION = 2
"""The ``marshal`` format :func:`pack_values` writes (any is read): version 2 writes each object in full, later
ones look every object up in a table of those written, to refer back to repeats, which made them 2-4 times
slower for a tiny run's few values (and the blob a fifth smaller)."""

_FIRST_FIELDS = (
    "run_id",
    "signature",
    "sink",
    "status",
    "planner",
    "platform",
    "metrics_upload",
    "memory_mb",
    "submitted_at",
    "finished_at",
    "makespan_s",
    "dag_build_s",
    "planning_s",
    "encoded_size",
    "predicted_makespan_s",
    "predicted_p10_s",
    "predicted_p90_s",
    "plan_kind",
    "calibration",
    "error",
    "tasks",
    "tasks_finished",
    "workers",
    "cold_starts",
    "bytes_fetched",
    "bytes_local",
    "bytes_out",
    "record_s",
    "workflow",
)
_CLIENT_END = _FIRST_FIELDS.index("tasks")
"""The client knows the fields before this one when the run ends; the rest are counted from its events."""

DOC_FIELDS: dict[int, tuple[str, ...]] = {
    1: _FIRST_FIELDS,
    2: (*_FIRST_FIELDS[:_CLIENT_END], "max_workers", *_FIRST_FIELDS[_CLIENT_END:]),  # the run's worker cap
}
"""The run document's fields, in order, per version: :func:`pack_values` stores the values only (the names were
two fifths of a tiny run's row), and the blob says which version they follow. A field added to the run
document (:class:`fanflow.metrics.records.RunRecord`, which a test compares with the newest) needs a new
version: runs stored with an older one keep reading as they were written."""

DOC_VERSION = max(DOC_FIELDS)
"""The version :func:`pack_values` writes."""


def is_raw(blob: bytes | None) -> bool:
    """True when ``blob`` is a raw run (by any Python version)."""
    return blob is not None and blob[: len(_PREFIX)] == _PREFIX


def pack(
    doc: Mapping[str, Any],
    functions: Sequence[tuple[str, str]],
    task_of: Sequence[int],
    deps: Sequence[Sequence[int]],
    sinks: Sequence[int],
    batches: Sequence[tuple[str, list[tuple[Any, ...]]]],
) -> bytes:
    """The raw blob of a run without dynamic fan-outs: ``batches`` are ``(worker, rows)`` as workers flushed them.

    The first layout, read still (:func:`pack_values` writes the second). Raises ``ValueError`` when a
    value is of a type ``marshal`` does not write. The sequences may be lists or tuples: they are read
    back as whichever they were.
    """
    return MAGIC + marshal.dumps((doc, functions, task_of, deps, sinks, _shapes_of(batches), batches))


def pack_values(
    values: Sequence[Any],
    functions: Sequence[tuple[str, str]],
    task_of: Sequence[int],
    deps: Sequence[Sequence[int]],
    sinks: Sequence[int],
    batches: Sequence[tuple[str, Sequence[tuple[Any, ...]]]],
    packed_batches: bytes,
) -> bytes:
    """:func:`pack` with the run document's values in :data:`DOC_FIELDS` order and the batches as they were
    marshalled already (``packed_batches``, ``marshal.dumps(batches, MARSHAL_VERSION)``): the second layout."""
    numbers = tuple({row[-1]: None for _, rows in batches for row in rows})
    shapes = _packed_shapes.get(numbers)
    if shapes is None:
        shapes = _packed_shapes[numbers] = marshal.dumps(_shapes_of(batches), MARSHAL_VERSION)
    return _joined(DOC_VERSION, values, functions, task_of, deps, sinks, shapes, packed_batches)


def _joined(
    version: int,
    values: Sequence[Any],
    functions: Sequence[tuple[str, str]],
    task_of: Sequence[int],
    deps: Sequence[Sequence[int]],
    sinks: Sequence[int],
    shapes: bytes,
    packed_batches: bytes,
) -> bytes:
    """The second layout of a run whose shapes and batches are marshalled already."""
    # Format 2 writes a tuple as its length and its items one after the other, so the shapes, the same
    # for most runs, are marshalled once and joined in: the bytes marshal.dumps would write for all seven.
    six = marshal.dumps((version, values, functions, task_of, deps, sinks), MARSHAL_VERSION)
    size = (len(six) + len(shapes)).to_bytes(4, "little")
    return b"".join((MAGIC_VALUES, size, _SEVEN, six[len(_SEVEN) :], shapes, packed_batches))


_SEVEN = b"(" + (7).to_bytes(4, "little")
"""A tuple of seven items in ``marshal`` format 2 (the same bytes start one of six, but for the length)."""

_packed_shapes: dict[tuple[int, ...], bytes] = {}
"""The marshalled ``(kind, names)`` of the shape numbers of a run's rows, per those numbers in order: a few
combinations of the same shapes, each about 400 bytes, recur run after run."""


def _shapes_of(batches: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]) -> dict[int, tuple[str, tuple[str, ...]]]:
    """``(kind, names)`` of each shape number the rows of ``batches`` end with."""
    shapes: dict[int, tuple[str, tuple[str, ...]]] = {}
    for _, rows in batches:
        for row in rows:
            number = row[-1]
            if number not in shapes:
                shapes[number] = _shapes[number] if number in _shapes else _shape(number)
    return shapes


_shapes: dict[int, tuple[str, tuple[str, ...]]] = {}
"""``(kind, names)`` of each shape number packed so far in this process."""


def _shape(number: int) -> tuple[str, tuple[str, ...]]:
    form = SHAPES[number]
    found = _shapes[number] = (form.kind, form.names)
    return found


RawParts = tuple[tuple[Any, ...], tuple[int, int, int, int, int]]
"""A tiny run as a batch holds it (:func:`pack_batch`): the tuple the client kept, as it kept it, and the totals
of its rows (workers, cold starts, bytes fetched, local and out). The client's tuple holds the run document's
values up to "tasks" (in ``DOC_FIELDS[DOC_VERSION]`` order), the DAG's entry (its first item the six DAG lists:
names, identities, task_of, upstream counts, upstream ids, sinks; its second the workflow; the rest not read
here), the seconds the client took, the retention asked for, then each flush's worker id followed by its rows.
The DAG's entry is the same object run after run, written once per batch."""

BATCH_MAGIC = b"FFBATCH2:"
"""First bytes of a batch of raw runs (:func:`pack_batch`): its runs are :data:`RawParts`."""

_BATCH_MAGIC_1 = b"FFBATCH1:"
"""First bytes of a batch of the first layout (schema 6), still read: each run its document's values in full, the
DAG's lists and its rows grouped per flush, marshalled apart (format 2)."""


def pack_batch(runs: Sequence[RawParts]) -> bytes:
    """The raw runs of one writer batch in one blob: their parts and the kinds and field names of the shapes
    their rows may use, in one ``marshal`` call.

    Nothing is packed per run: the SQLite store writes a batch as one row, which a read expands into a
    raw blob per run (:func:`unpack_batch`). A row per run cost more than the rest of a tiny run's
    write (its insert, and twice the bytes: every run repeated the shapes); so did a run's values put
    together anew, its rows regrouped per flush and marshalled apart (4.6 us a run against 1.9 us,
    and 18.8 KB against 16.0 KB for 40 runs of a 1-task DAG). A run holding a value ``marshal`` does
    not write is left out, logged (fanflow's workers write none).
    """
    head = (DOC_VERSION, _process_shapes())
    try:
        return BATCH_MAGIC + marshal.dumps((*head, runs), BATCH_MARSHAL_VERSION)
    except ValueError:
        kept = []
        for run in runs:
            try:
                marshal.dumps(run, BATCH_MARSHAL_VERSION)
                kept.append(run)
            except ValueError as exc:
                log.warning("run %s left out of the history: %s", run[0][0][0], exc)
        return BATCH_MAGIC + marshal.dumps((*head, kept), BATCH_MARSHAL_VERSION)


BATCH_MARSHAL_VERSION = 4
"""The ``marshal`` format of a batch: unlike a single run (:data:`MARSHAL_VERSION`), a batch repeats the same
objects run after run (the DAG's lists, function names and identities, worker ids), which later formats write once
and refer back to: 40 runs of one task, 24 KB in format 2, 16 KB in 4, in about the same time."""


_all_shapes: tuple[int, dict[int, tuple[str, tuple[str, ...]]]] = (0, {})
"""How many shapes this process had, and ``(kind, names)`` of each, by number: a batch carries them all
(five in a process that ran a few tasks), made again only when a shape is added."""


def _process_shapes() -> dict[int, tuple[str, tuple[str, ...]]]:
    global _all_shapes
    count, shapes = _all_shapes
    if count != len(SHAPES):
        forms = list(SHAPES)  # a snapshot: another thread may add one meanwhile
        shapes = {form.number: (form.kind, form.names) for form in forms}
        _all_shapes = (len(forms), shapes)
    return shapes


def _load_batch(blob: bytes) -> tuple[bytes, int, dict[int, tuple[str, tuple[str, ...]]], list[Any]]:
    """The magic (which says the layout), document version, shapes and runs of a batch."""
    magic = blob[: len(BATCH_MAGIC)]
    if magic not in (BATCH_MAGIC, _BATCH_MAGIC_1):
        raise MetadataError(f"not a batch of raw runs ({blob[:9]!r}); delete the history file")
    try:
        version, shapes, runs = marshal.loads(blob[len(magic) :])
    except (ValueError, EOFError, TypeError) as exc:
        raise MetadataError(f"a stored batch of raw runs is damaged ({exc}); delete the history file") from exc
    if version not in DOC_FIELDS or type(shapes) is not dict or type(runs) not in (list, tuple):
        raise MetadataError("a stored batch of raw runs is damaged (not a batch); delete the history file")
    return magic, version, shapes, list(runs)


def unpack_batch(blob: bytes) -> list[tuple[str, str, float, list[str], bytes]]:
    """``(run_id, signature, submitted_at, identities, raw blob)`` of each run of a batch, in the order saved;
    the blob is what :func:`pack_values` makes of the run."""
    magic, version, shapes, runs = _load_batch(blob)
    fields = DOC_FIELDS[version]
    at_id, at_signature, at_time = (fields.index(f) for f in ("run_id", "signature", "submitted_at"))
    found: list[tuple[str, str, float, list[str], bytes]] = []
    try:
        for kept, totals in runs if magic == BATCH_MAGIC else map(_as_parts, runs):
            head, ((names, identities, task_of, dep_counts, dep_flat, sinks), workflow, *_), record_s = kept[:3]
            values = (*head, len(task_of), len(task_of), *totals, record_s, workflow)
            flushed = flushes_of(kept[4:])
            rows = marshal.dumps(flushed, MARSHAL_VERSION)
            numbers = {row[-1]: None for _, rows_ in flushed for row in rows_}
            used = marshal.dumps({number: shapes[number] for number in numbers}, MARSHAL_VERSION)
            ends = list(itertools.accumulate(dep_counts))
            deps = [tuple(dep_flat[end - count : end]) for count, end in zip(dep_counts, ends, strict=True)]
            functions = list(zip(names, identities, strict=True))
            packed = _joined(version, values, functions, task_of, deps, sinks, used, rows)
            found.append((values[at_id], values[at_signature], values[at_time], list(identities), packed))
    except (ValueError, EOFError, TypeError, KeyError, IndexError) as exc:
        raise MetadataError(f"a stored batch of raw runs is damaged ({exc}); delete the history file") from exc
    return found


def _as_parts(run: Sequence[Any]) -> RawParts:
    """A run of a first-layout batch as :data:`RawParts` (its values cut back to the head and totals)."""
    values, names, identities, task_of, dep_counts, dep_flat, sinks, rows = run
    at = len(values) - 9  # tasks, tasks_finished, the five totals, record_s and workflow follow the head
    dag = ((names, identities, task_of, dep_counts, dep_flat, sinks), values[at + 8])
    tail = itertools.chain.from_iterable((worker, *rows_) for worker, rows_ in marshal.loads(rows))
    return (values[:at], dag, values[at + 7], None, *tail), values[at + 2 : at + 7]


def flushes_of(flat: Sequence[Any]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The ``(worker, rows)`` of each flush of rows kept flat: each flush's worker id followed by its rows."""
    flushed: list[tuple[str, list[tuple[Any, ...]]]] = []
    rows: list[tuple[Any, ...]] = []
    for item in flat:
        if type(item) is str:
            rows = []
            flushed.append((item, rows))
        else:
            rows.append(item)
    return flushed


def batch_run_ids(blob: bytes) -> list[str]:
    """The run ids of a batch of raw runs, in the order saved."""
    magic, version, _, runs = _load_batch(blob)
    return _ids_of(magic, version, runs)


def drop_oldest(blob: bytes, count: int) -> tuple[list[str], bytes]:
    """The ids of the first ``count`` runs of a batch, and the batch without them (in its layout)."""
    magic, version, shapes, runs = _load_batch(blob)
    rest = magic + marshal.dumps((version, shapes, runs[count:]), BATCH_MARSHAL_VERSION)
    return _ids_of(magic, version, runs[:count]), rest


def _ids_of(magic: bytes, version: int, runs: Sequence[Any]) -> list[str]:
    at = DOC_FIELDS[version].index("run_id")
    try:
        if magic == BATCH_MAGIC:
            return [run[0][0][at] for run in runs]  # the client's tuple, its values
        return [run[0][at] for run in runs]
    except (TypeError, IndexError, KeyError) as exc:
        raise MetadataError(f"a stored batch of raw runs is damaged ({exc}); delete the history file") from exc


def _load(blob: bytes, head_only: bool = False) -> tuple[Any, ...]:
    """The parts of either layout, as :func:`pack` writes them (the batches None with ``head_only``)."""
    end = len(_PREFIX)
    while blob[end : end + 1].isdigit():
        end += 1
    mark = blob[end : end + 1]
    if end == len(_PREFIX) or mark not in (b".", b":"):
        raise MetadataError(f"not a raw run ({blob[:8]!r}); delete the run or the history file")
    try:
        if mark == b".":
            parts = marshal.loads(blob[end + 1 :])
        else:
            size = int.from_bytes(blob[end + 1 : end + 5], "little")
            head = marshal.loads(blob[end + 5 : end + 5 + size])
            version, values, *rest = head
            doc = dict(zip(DOC_FIELDS[version], values, strict=True))
            batches = None if head_only else marshal.loads(blob[end + 5 + size :])
            parts = (doc, *rest, batches)
    except (ValueError, EOFError, TypeError, KeyError) as exc:
        raise MetadataError(f"a stored raw run is damaged ({exc}); delete the run or the history file") from exc
    if type(parts) is not tuple or len(parts) != 7 or type(parts[0]) is not dict:
        raise MetadataError("a stored raw run is damaged (not a run); delete the run or the history file")
    return parts


def doc_of(blob: bytes) -> dict[str, Any]:
    """The run document of a raw run."""
    doc: dict[str, Any] = _load(blob, head_only=True)[0]
    return doc


def expand(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """The run document and the trace of a raw run, as recording them eagerly would have stored them."""
    doc, functions, task_of, deps, sinks, shapes, batches = _load(blob)
    try:
        events: list[dict[str, Any]] = []
        for worker, rows in batches:
            for row in rows:
                kind, names = shapes[row[-1]]
                event = {"kind": kind}
                event.update(zip(names, row, strict=False))  # stops at the names: the shape is no value
                event["worker"] = worker
                events.append(event)
        trace = small_trace(
            [[str(name), str(identity)] for name, identity in functions],
            list(task_of),
            [len(d) for d in deps],
            list(itertools.chain.from_iterable(deps)),
            [],
            list(sinks),
            events,
        )
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise MetadataError(f"a stored raw run is damaged ({exc}); delete the run or the history file") from exc
    return doc, trace
