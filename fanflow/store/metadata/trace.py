"""A run's *trace*: its events and its DAG's structure, in one compact binary blob.

A metadata store keeps a run as its run document plus this blob, and nothing
per task: task and worker records are built from it when history is read
(:mod:`fanflow.metrics`), which is far rarer than recording. What recording
pays is one pass that turns the event dicts into columns and one compression.

Events are grouped by kind (and, when events of one kind carry different
fields, by their field names too), so a group's ``kind`` is one value; each
group keeps one column per field:

- numbers or booleans as a little-endian numpy array (a column of floats that
  holds ints or bools gives them back as floats, a column of ints its bools as
  ints; a float among ints keeps the column a list);
- strings as a list of the distinct values plus an index per event;
- anything else (lists, ``None``, mixed types) as a JSON list.

An index per event names its group, so decoding restores the events in the
stream's order. The DAG part holds each task function once (``[name,
identity]``), per task its function index, and the upstream ids as counts plus
one flat array.

A run of fewer than :data:`SMALL_COLUMN` events (a call of a few tasks) keeps
its events as one JSON list and its DAG arrays as JSON lists: grouping them
into columns cost more than the run itself, and every column would stay a list
anyway.

Layout: ``MAGIC``; ``z`` and a zlib-compressed body, or ``r`` and the body
itself when it is small, after its 4-byte little-endian length; then the float
arrays, uncompressed: zlib spent half its time on them (a TR-8192 run's 850 KB
of floats would shrink to 220 KB; recording cost matters more than that). The
body is a 4-byte header length, the JSON header, then the other arrays. The
header names every array's dtype, buffer and length, so nothing here unpickles
or evaluates stored bytes.
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fanflow.dag.graph import DAG
from fanflow.store.events import SHAPES, EventRows, Row, Shape, as_dict, label_of
from fanflow.store.metadata.base import MetadataError

MAGIC = b"FFTRACE1"
"""First bytes of every trace; older stores' JSON blobs start with ``[`` or zlib's header."""

COMPRESS_LEVEL = 1
"""zlib level: the blob is written once per run and read rarely; level 6 took 3x as long for 20% less."""

SMALL_BYTES = 4096
"""Bodies shorter than this are stored as they are: setting zlib up costs more (0.1-0.3 ms) than they save."""

_RAW, _ZLIB = b"r", b"z"

SMALL_COLUMN = 64
"""Columns of fewer values stay lists."""

_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False, default=repr).encode


def is_trace(blob: bytes | None) -> bool:
    """True when ``blob`` was written by :func:`encode_trace`."""
    return blob is not None and blob[: len(MAGIC)] == MAGIC


@dataclass(slots=True)
class Strings:
    """A column of strings: a table of strings and, per event, the index of its value in it.

    The table may hold strings other columns use: every string column of an
    :class:`EventTable` built by :meth:`EventTable.of` or decoded shares one, so
    worker ids, which recur in every group, are kept and encoded once.
    """

    values: list[str]
    codes: np.ndarray

    def tolist(self) -> list[str]:
        return list(map(self.values.__getitem__, self.codes.tolist()))

    def used(self) -> np.ndarray:
        """The indexes of the column's distinct values, ascending."""
        return _present(self.codes)

    def distinct(self) -> set[str]:
        return set(map(self.values.__getitem__, self.used().tolist()))


class _StringTable:
    """The one table of strings an :class:`EventTable`'s string columns index, filled as they are built."""

    __slots__ = ("index", "values")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.values: list[str] = []

    def column(self, values: Sequence[str], distinct: dict[str, None]) -> Strings:
        """The :class:`Strings` of ``values``, whose distinct values are ``distinct``."""
        index = self.index
        if len(index) != len(self.values):  # values came in without it (owners' first batch)
            index.update(zip(self.values[len(index) :], range(len(index), len(self.values)), strict=True))
        if not distinct.keys() <= index.keys():
            new = [v for v in distinct if v not in index]
            index.update(zip(new, range(len(self.values), len(self.values) + len(new)), strict=True))
            self.values.extend(new)
        return Strings(self.values, np.fromiter(map(index.__getitem__, values), dtype=np.int32, count=len(values)))

    def owners(self, workers: list[str | None], sizes: list[int]) -> np.ndarray:
        """Per row, the code of its batch's worker (-1 for a batch of dicts): ``sizes`` rows per batch."""
        distinct = dict.fromkeys(workers)
        if not self.values and len(distinct) == len(workers) and None not in distinct:
            # a flush per worker (the default): the table's first strings, in batch order; no index yet
            self.values.extend(distinct)
            codes = np.arange(len(workers), dtype=np.int32)
        else:
            distinct.pop(None, None)
            self.column([], distinct)
            index = self.index
            codes = np.fromiter(map(index.get, workers, itertools.repeat(-1)), dtype=np.int32, count=len(workers))
        return np.repeat(codes, np.array(sizes, dtype=np.int64))


Owners = tuple[list[str | None], list[int]]
"""Per batch of a run's events, the worker all its rows belong to (None for a batch of dicts), and its length."""


class EventLog:
    """A run's event batches as read so far: their rows and labels in one list each, and who owns which.

    What :meth:`EventTable.of` takes, gathered without a Python call per row.
    """

    __slots__ = ("labels", "only_rows", "rows", "sizes", "workers")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.labels: list[Any] = []
        """Each row's :func:`~fanflow.store.events.label_of`."""
        self.workers: list[str | None] = []
        self.sizes: list[int] = []
        self.only_rows = True
        """No dict among the events: every label is a shape's number."""

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, batches: Sequence[Sequence[Any]]) -> None:
        """Append the rows of ``batches`` (each a worker's :class:`EventRows`, or a sequence of dicts)."""
        if set(map(type, batches)) == {EventRows}:  # only workers' rows: no Python call per batch or row
            lists = list(map(operator.attrgetter("rows"), batches))
            start = len(self.rows)
            functools.reduce(operator.iadd, lists, self.rows)  # a list extended by each: no iterator per batch
            self.labels.extend(map(operator.itemgetter(-1), self.rows[start:]))
            self.workers.extend(map(operator.attrgetter("worker"), batches))
            self.sizes.extend(map(len, lists))
            return
        for batch in batches:
            rows = batch.rows if type(batch) is EventRows else list(batch)
            self.only_rows = self.only_rows and type(batch) is EventRows
            self.rows.extend(rows)
            self.labels.extend(map(label_of, rows))
            self.workers.append(batch.worker if type(batch) is EventRows else None)
            self.sizes.append(len(rows))

    def events(self) -> list[dict[str, Any]]:
        """The events as dicts."""
        rows = iter(self.rows)
        return [
            as_dict(row, worker)
            for worker, size in zip(self.workers, self.sizes, strict=True)
            for row in itertools.islice(rows, size)
        ]

    def grouping(self) -> Labels:
        """:func:`labels_of` the events: what :meth:`table` groups them by."""
        return _shape_codes(self.labels) if self.only_rows and self.labels else labels_of(self.labels)

    def table(self, labels: Labels | None = None) -> EventTable:
        """The events' :class:`EventTable` (``labels``: :meth:`grouping`, when the caller has it)."""
        return EventTable.of(self.rows, labels, (self.workers, self.sizes))


@dataclass(slots=True)
class IntLists:
    """A column of lists of ints (or None): every list's length, and their items end to end.

    A task's ``in_bytes`` is one: a size per input, None for an input that was
    local. Written as JSON it cost as much as a third of the trace's encoding,
    and the digest turned it into these arrays anyway.
    """

    lengths: np.ndarray
    items: np.ndarray
    """The items as int64, 0 where an item is None."""
    missing: np.ndarray
    """Per item, True where it is None."""

    def tolist(self) -> list[list[int | None]]:
        flat = [None if gone else item for item, gone in zip(self.items.tolist(), self.missing.tolist(), strict=True)]
        ends = np.cumsum(self.lengths).tolist()
        return [flat[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]

    def floats(self) -> np.ndarray:
        """The items as float64, NaN where an item is None."""
        return np.where(self.missing, np.nan, self.items.astype(np.float64))

    @classmethod
    def of(cls, values: Sequence[Any]) -> IntLists | None:
        """``values`` as :class:`IntLists` when every one is a list or tuple of ints (not bools) and Nones
        (workers write tuples, untracked by the garbage collector; they come back as lists, as from JSON);
        else None."""
        kinds = set(map(type, values))
        if not kinds or not kinds <= {list, tuple}:
            return None
        flat: list[Any] = functools.reduce(operator.iadd, values, [])  # no iterator per list
        if not set(map(type, flat)) <= {int, type(None)}:
            return None
        try:
            items = _ints(list(map(_NONE_AS_MINUS_1.get, flat, flat)))  # an item, or -1 for None
        except (struct.error, OverflowError):  # an int beyond 64 bits
            return None
        if items.size and items.min() < -1:  # a negative item: -1 cannot stand for None
            missing = np.frombuffer(struct.pack(f"{len(flat)}?", *map(operator.is_, flat, itertools.repeat(None))), "?")
        else:  # sizes and counts: none below 0, so -1 is a None (or a -1 among them, told apart below)
            missing = items == -1
            if missing.any() and flat.count(None) != int(missing.sum()):
                missing = np.array([item is None for item in flat], dtype=np.bool_)
        return cls(_ints(list(map(len, values))), np.where(missing, 0, items), missing)


_NONE_AS_MINUS_1: dict[Any, int] = {None: -1}


Column = np.ndarray | Strings | IntLists | list[Any]
"""A numeric column as an array, a string column as :class:`Strings`, lists of ints as :class:`IntLists`,
any other as the list of its values."""


@dataclass(slots=True)
class EventGroup:
    """Events sharing their field names (and kind): one column per field, in stream order."""

    keys: tuple[str, ...]
    columns: dict[str, Column]
    size: int

    def distinct(self, key: str) -> set[str]:
        """A field's distinct values, as text (``{""}`` when the group lacks the field, as records read it)."""
        col = self.columns.get(key)
        if col is None:
            return {""}
        if isinstance(col, Strings):
            return col.distinct()
        return set(map(str, _as_list(col)))

    def values(self, key: str) -> list[Any]:
        """A field's values as Python objects ([] when the group lacks the field)."""
        col = self.columns.get(key)
        return [] if col is None else _as_list(col)

    def first(self, key: str) -> Any:
        """A field's value in the group's first event (None when the group lacks the field)."""
        col = self.columns.get(key)
        if col is None or not self.size:
            return None
        if isinstance(col, Strings):
            return col.values[int(col.codes[0])]
        return _as_list(col)[0] if isinstance(col, IntLists) else _as_list(col[:1])[0]


@dataclass(slots=True)
class EventTable:
    """A run's events as columns, grouped (see the module docstring)."""

    groups: list[EventGroup]
    group_of: np.ndarray
    """Per event, in stream order, the index of its group."""
    _workers: set[str] | None = None

    def workers(self) -> set[str]:
        """Every worker id the events name, as text (``""`` for events without one)."""
        if self._workers is None:
            columns = [g.columns.get("worker") for g in self.groups]
            first = columns[0] if columns else None
            if isinstance(first, Strings) and all(isinstance(c, Strings) and c.values is first.values for c in columns):
                used = _present(np.concatenate([c.codes for c in columns if isinstance(c, Strings)]))
                self._workers = set(map(first.values.__getitem__, used.tolist()))  # one pass for every group
            else:
                self._workers = set().union(*(g.distinct("worker") for g in self.groups))
        return self._workers

    def __len__(self) -> int:
        return len(self.group_of)

    def of_kind(self, kind: str) -> list[EventGroup]:
        """The groups of events of one kind (usually one)."""
        return [g for g in self.groups if g.first("kind") == kind]

    def kinds(self) -> set[str]:
        return {str(g.first("kind")) for g in self.groups if "kind" in g.columns}

    def events(self) -> list[dict[str, Any]]:
        """The events as dicts, in stream order."""
        out: list[Any] = [None] * len(self.group_of)
        order = np.argsort(self.group_of, kind="stable").tolist()
        at = 0
        for g in self.groups:
            lists = [_as_list(g.columns[k]) for k in g.keys]
            keys = g.keys
            for i, values in zip(order[at : at + g.size], zip(*lists, strict=True), strict=True):
                out[i] = dict(zip(keys, values, strict=True))
            at += g.size
        return out

    @classmethod
    def of(cls, events: Sequence[Row], labels: Labels | None = None, owners: Owners | None = None) -> EventTable:
        """Columns of ``events``: rows (:mod:`fanflow.store.events`) or mappings with string keys.

        ``labels``: :func:`labels_of` the events, when the caller has them. Rows are
        grouped by their shape, dicts by their kind, then by their field names when
        those differ. ``owners``: the worker each row's batch belongs to, which gives
        rows their ``worker`` column (:class:`EventLog` keeps them).
        """
        if not events:
            return cls([], np.zeros(0, dtype=np.int32))
        codes, distinct = labels if labels is not None else labels_of(list(map(label_of, events)))
        groups: list[EventGroup] = []
        group_of = np.empty(len(events), dtype=np.int32)
        strings = _StringTable()
        worker = None if owners is None else strings.owners(*owners)
        for label, members in zip(distinct, _members(codes, len(distinct)), strict=True):
            rows = _take(events, members)
            if type(label) is int:
                form = SHAPES[label]
                group: EventGroup | None = _shaped(rows, form, strings, None if worker is None else worker[members])
            else:  # dicts of one kind: a str, None, (kind,) for any other, ("?", text) for an unhashable one
                kind = label if type(label) is str else None  # else read from the rows
                group = _uniform(rows, kind, strings)
            if group is not None:
                group_of[members] = len(groups)
                groups.append(group)
                continue
            # one kind, several field sets: a group per field set
            sub_codes, shapes = _codes(list(map(tuple, rows)))
            for shape, sub in zip(shapes, _members(sub_codes, len(shapes)), strict=True):
                group_of[members[sub]] = len(groups)
                groups.append(_group(_take(rows, sub), shape, strings))
        return cls(groups, group_of)


@dataclass(frozen=True, slots=True)
class DagArrays:
    """A DAG's structure as a trace keeps it."""

    functions: list[tuple[str, str]]
    """``(name, identity)`` of each task function."""
    task_of: np.ndarray
    dep_counts: np.ndarray
    deps: np.ndarray
    """Upstream ids of all tasks, one after the other (``dep_counts`` says how many each)."""
    maps: list[int]
    sinks: list[int]

    @classmethod
    def of(cls, dag: DAG) -> DagArrays:
        return cls(
            [(t.name, t.identity) for t in dag.tasks],
            _ints(dag.task_of),
            _ints(list(map(len, dag.deps))),
            _ints(list(itertools.chain.from_iterable(dag.deps))),
            sorted(dag.maps),
            list(dag.sinks),
        )


@dataclass(slots=True)
class Trace:
    """A decoded trace: the DAG's structure and the event table."""

    dag: DagArrays
    table: EventTable


def encode_trace(dag: DagArrays, table: EventTable | Sequence[Mapping[str, Any]]) -> bytes:
    """The blob of one run (see the module docstring); a sequence of events for ``table`` keeps them as a list."""
    packed: list[bytes] = []  # compressed with the header
    plain: list[bytes] = []  # floats: not compressed (module docstring)

    def put(arr: np.ndarray) -> dict[str, Any]:
        arr = _narrow(arr)
        to = plain if arr.dtype.kind == "f" else packed
        to.append(arr.tobytes())
        return {"dtype": arr.dtype.str, "buffer": len(to) - 1, "plain": to is plain}

    strings: list[str] = []  # one table for every string column: the tables of the columns', each once
    offsets: dict[int, int] = {}  # a table's id -> where it starts in ``strings``

    def column(col: Column) -> dict[str, Any]:
        if isinstance(col, np.ndarray):
            return {"const": col[0].item()} if col[0] == col[-1] and (col == col[0]).all() else {"array": put(col)}
        if isinstance(col, IntLists):
            return {"int_lists": [put(col.lengths), put(col.items), put(col.missing)]}
        if not isinstance(col, Strings):
            return {"json": col}
        first = col.codes[0]
        if len(col.values) == 1 or (first == col.codes[-1] and (col.codes == first).all()):
            return {"const": col.values[first]}
        at = offsets.get(id(col.values))
        if at is None:
            at = offsets[id(col.values)] = len(strings)
            strings.extend(col.values)
        return {"codes": put(col.codes.astype(np.int64) + at if at else col.codes)}

    if isinstance(table, EventTable):
        groups = [
            {"keys": list(g.keys), "size": g.size, "columns": [column(g.columns[k]) for k in g.keys]}
            for g in table.groups
        ]
        events: dict[str, Any] = {"group_of": put(table.group_of), "groups": groups, "strings": strings}
        arrays = [put(dag.task_of), put(dag.dep_counts), put(dag.deps)]
    else:
        events = {"list": list(table)}
        arrays = [{"list": dag.task_of.tolist()}, {"list": dag.dep_counts.tolist()}, {"list": dag.deps.tolist()}]
    header = {
        "dag": {
            "functions": [list(f) for f in dag.functions],
            "task_of": arrays[0],
            "dep_counts": arrays[1],
            "deps": arrays[2],
            "maps": list(dag.maps),
            "sinks": list(dag.sinks),
        },
        "events": events,
    }
    return _pack(header, packed, plain)


def encode_small_trace(dag: DAG, events: Sequence[Mapping[str, Any]]) -> bytes:
    """``encode_trace(DagArrays.of(dag), events)`` for a small run, without numpy: its lists come from the DAG."""
    return small_trace(
        [[t.name, t.identity] for t in dag.tasks],
        dag.task_of,
        list(map(len, dag.deps)),
        list(itertools.chain.from_iterable(dag.deps)),
        sorted(dag.maps),
        list(dag.sinks),
        events,
    )


def small_trace(
    functions: list[list[str]],
    task_of: Sequence[int],
    dep_counts: list[int],
    deps: list[int],
    maps: list[int],
    sinks: list[int],
    events: Sequence[Mapping[str, Any]],
) -> bytes:
    """The blob of a small run from its DAG's lists (``[name, identity]`` per function, upstream ids end to end)."""
    header = {
        "dag": {
            "functions": functions,
            "task_of": {"list": task_of},
            "dep_counts": {"list": dep_counts},
            "deps": {"list": deps},
            "maps": maps,
            "sinks": sinks,
        },
        "events": {"list": list(events)},
    }
    return _pack(header, [], [])


def _pack(header: dict[str, Any], packed: list[bytes], plain: list[bytes]) -> bytes:
    """The blob: the JSON header (with the buffers' sizes) and ``packed``, compressed when large, then ``plain``."""
    sizes = {"packed": [len(b) for b in packed], "plain": [len(b) for b in plain]}
    head = _dumps({"sizes": sizes, **header}).encode()
    body = b"".join([struct.pack("<I", len(head)), head, *packed])
    how, body = (_RAW, body) if len(body) < SMALL_BYTES else (_ZLIB, zlib.compress(body, COMPRESS_LEVEL))
    return b"".join([MAGIC, how, struct.pack("<I", len(body)), body, *plain])


def decode_trace(blob: bytes) -> Trace:
    """The trace :func:`encode_trace` wrote; :class:`MetadataError` when ``blob`` is not one."""
    if not is_trace(blob):
        raise MetadataError("not a run trace (written by another fanflow version?)")
    try:
        start = len(MAGIC) + 1
        how = blob[start - 1 : start]
        if how not in (_RAW, _ZLIB):
            raise ValueError(f"unknown body encoding {how!r}")
        (stored,) = struct.unpack_from("<I", blob, start)
        body = blob[start + 4 : start + 4 + stored]
        if how == _ZLIB:
            body = zlib.decompress(body)
        (length,) = struct.unpack_from("<I", body)
        header = json.loads(body[4 : 4 + length])
        sections = {
            False: (body, 4 + length, header["sizes"]["packed"]),
            True: (blob, start + 4 + stored, header["sizes"]["plain"]),
        }
        offsets = {plain: list(itertools.accumulate(sizes, initial=at)) for plain, (_, at, sizes) in sections.items()}
        if offsets[True][-1] != len(blob) or offsets[False][-1] != len(body):
            raise ValueError("the trace's buffers do not add up to its length")

        def get(ref: Mapping[str, Any]) -> np.ndarray:
            if "list" in ref:
                return np.array(ref["list"], dtype=np.int64)
            data, _, sizes = sections[bool(ref["plain"])]
            i, dtype = ref["buffer"], np.dtype(ref["dtype"])
            return np.frombuffer(
                data, dtype=dtype, count=sizes[i] // dtype.itemsize, offset=offsets[bool(ref["plain"])][i]
            )

        dag = header["dag"]
        if "list" in header["events"]:
            return _trace(dag, get, EventTable.of(header["events"]["list"]))
        strings = header["events"]["strings"]
        groups = []
        for g in header["events"]["groups"]:
            columns: dict[str, Column] = {}
            size = int(g["size"])
            for key, col in zip(g["keys"], g["columns"], strict=True):
                if "array" in col:
                    columns[key] = get(col["array"])
                elif "codes" in col:
                    columns[key] = Strings(strings, get(col["codes"]))
                elif "int_lists" in col:
                    lengths, items, missing = map(get, col["int_lists"])
                    columns[key] = IntLists(lengths, items, missing.astype(np.bool_))
                elif "const" in col:
                    value = col["const"]
                    if isinstance(value, str):
                        columns[key] = Strings([value], np.zeros(size, dtype=np.int8))
                    else:
                        columns[key] = np.full(size, value)
                else:
                    columns[key] = col["json"]
            groups.append(EventGroup(tuple(g["keys"]), columns, size))
        return _trace(dag, get, EventTable(groups, get(header["events"]["group_of"])))
    except (zlib.error, struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise MetadataError(f"a stored run trace is damaged ({exc}); delete the run or the history file") from exc


def _trace(dag: Mapping[str, Any], get: Callable[[Mapping[str, Any]], np.ndarray], table: EventTable) -> Trace:
    arrays = DagArrays(
        functions=[(str(n), str(i)) for n, i in dag["functions"]],
        task_of=get(dag["task_of"]),
        dep_counts=get(dag["dep_counts"]),
        deps=get(dag["deps"]),
        maps=list(dag["maps"]),
        sinks=list(dag["sinks"]),
    )
    return Trace(arrays, table)


Labels = tuple[np.ndarray, list[Any]]
"""Per event the index of its label (:func:`~fanflow.store.events.label_of`), and the distinct labels."""


def labels_of(labels: list[Any]) -> Labels:
    """:data:`Labels` of each event's :func:`~fanflow.store.events.label_of`."""
    try:
        return _codes(labels)
    except TypeError:  # an unhashable kind: by its text (and field names, in EventTable.of)
        return _codes([x if type(x) is int or type(x) is str else ("?", repr(x)) for x in labels])


def _shape_codes(numbers: list[int]) -> Labels:
    """:func:`labels_of` rows only (shape numbers, a few distinct small ints), with numpy: no dict lookup per row."""
    shapes = np.frombuffer(struct.pack(f"<{len(numbers)}q", *numbers), dtype="<i8")
    found = np.flatnonzero(np.bincount(shapes))
    firsts = [int(np.argmax(shapes == number)) for number in found.tolist()]
    order = found[np.argsort(firsts)]  # the labels in order of first appearance, as _codes gives them
    rank = np.zeros(int(found[-1]) + 1, dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return rank[shapes], order.tolist()


def _codes(labels: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Per label the index of its first appearance among the distinct labels, and those labels."""
    index: dict[Any, int] = dict.fromkeys(labels)  # type: ignore[arg-type]
    for i, label in enumerate(index):
        index[label] = i
    return np.fromiter(map(index.__getitem__, labels), dtype=np.int32, count=len(labels)), list(index)


def _ints(values: Sequence[int]) -> np.ndarray:
    """Python ints as an int64 array (struct converts at a third of ``np.fromiter``'s cost)."""
    return np.frombuffer(struct.pack(f"<{len(values)}q", *values), dtype="<i8")


def _present(codes: np.ndarray) -> np.ndarray:
    """The distinct values of an array of small non-negative ints, ascending (a count per value: no sort, no hash)."""
    return np.flatnonzero(np.bincount(codes)) if codes.size else codes[:0]


def distinct_count(ids: np.ndarray) -> int:
    """How many distinct values an integer array holds."""
    if ids.size and ids.min() >= 0 and ids.max() < 4 * ids.size + 1024:  # a count per value is cheaper
        return int(np.count_nonzero(np.bincount(ids)))
    return len(np.unique(ids))


def _members(codes: np.ndarray, n: int) -> list[np.ndarray]:
    """Per code, the positions holding it, ascending."""
    if n == 1:
        return [np.arange(len(codes))]
    if n <= 8:  # a pass per code is cheaper than sorting (a worker's run has four kinds of events)
        return [np.flatnonzero(codes == code) for code in range(n)]
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=n))
    return np.split(order, bounds[:-1])


def _take(items: Sequence[Any], positions: np.ndarray) -> list[Any]:
    if len(positions) == 1:
        return [items[int(positions[0])]]
    return list(operator.itemgetter(*positions.tolist())(items))


def _shaped(rows: list[tuple[Any, ...]], form: Shape, strings: _StringTable, worker: np.ndarray | None) -> EventGroup:
    """The group of rows of one shape: a column per field, and ``worker`` (codes into ``strings``, -1 for none).

    The rows are laid end to end in one list (every row of a shape has as many
    items) and each column is a slice of it with a step: C-level, a few
    instructions per value. The list is grown by ``+=`` of each row (a tuple is
    copied whole; ``itertools.chain`` made an iterator per row and took 2.6
    times as long). ``zip(*rows)`` makes an iterator per row too, all alive at
    once: tens of thousands of objects for the garbage collector to count, which
    set off a full collection of the whole process (the run's DAG and every event
    still alive) in one recording of two.
    """
    columns: dict[str, Column] = {"kind": Strings([form.kind], np.zeros(len(rows), dtype=np.int8))}
    width = len(form.names) + 1  # the values, then the shape's number
    flat: list[Any] = functools.reduce(operator.iadd, rows, [])
    if len(flat) != width * len(rows):
        raise ValueError(f"a row of shape {form!r} has another length")
    for i, name in enumerate(form.names):
        columns[name] = _column(flat[i::width], strings)
    if worker is None or "worker" in columns or (worker < 0).any():
        return EventGroup(("kind", *form.names), columns, len(rows))
    workers = Strings(strings.values, worker)
    columns["worker"] = workers if len(rows) >= SMALL_COLUMN else workers.tolist()  # as _column keeps it
    return EventGroup(("kind", *form.names, "worker"), columns, len(rows))


def _uniform(rows: list[Mapping[str, Any]], kind: str | None, strings: _StringTable) -> EventGroup | None:
    """One group of ``rows`` when they all have the first row's field names; else None.

    ``kind``: the rows' common ``kind``, when known (it is then not read again).
    """
    keys = tuple(rows[0])
    if any(n != len(keys) for n in set(map(len, rows))):
        return None
    try:
        group = _group(rows, tuple(k for k in keys if k != "kind" or kind is None), strings)
    except KeyError:  # as many fields, other names
        return None
    if kind is not None and "kind" in keys:
        group.columns["kind"] = Strings([kind], np.zeros(len(rows), dtype=np.int8))
        group.keys = keys
    return group


def _group(rows: list[Mapping[str, Any]], keys: tuple[str, ...], strings: _StringTable) -> EventGroup:
    """The group of ``rows``, which all have exactly the fields ``keys``."""
    return EventGroup(keys, {k: _column(list(map(operator.itemgetter(k), rows)), strings) for k in keys}, len(rows))


def _column(values: Sequence[Any], strings: _StringTable) -> Column:
    """An array when every value is a number (or every one a bool), :class:`Strings` when every one is a str.

    A short column stays a list (written as JSON): numpy's fixed cost per call
    would be most of a small run's recording.
    """
    if len(values) < SMALL_COLUMN:
        return list(values)
    if type(values[0]) is str:
        try:
            distinct: dict[Any, None] = dict.fromkeys(values)
        except TypeError:  # an unhashable value
            return list(values)
        if set(map(type, distinct)) != {str}:  # checking the distinct values is enough: a str equals only a str
            return list(values)
        return strings.column(values, distinct)
    first = type(values[0])
    try:
        # struct packs C-level and refuses text and None (numpy would turn "1.5" or None into numbers);
        # array.array does too, at four times the cost (it parses each value's arguments)
        if first is float:
            return np.frombuffer(struct.pack(f"<{len(values)}d", *values), dtype="<f8")  # ints, bools widen
        if first is int:
            return np.frombuffer(struct.pack(f"<{len(values)}q", *values), dtype="<i8")  # bools widen to ints
    except (struct.error, TypeError, OverflowError):  # text, None, a float among ints, an int beyond 64 bits
        return list(values)
    if first is bool and set(map(type, values)) == {bool}:
        return np.frombuffer(struct.pack(f"{len(values)}?", *values), dtype=np.bool_)
    if first is list or first is tuple:
        lists = IntLists.of(values)
        if lists is not None:
            return lists
    return list(values)


_INT_TYPES = [(dtype, int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)) for dtype in ("<i1", "<i2", "<i4", "<i8")]


def _narrow(arr: np.ndarray) -> np.ndarray:
    """Integers in the smallest little-endian type that holds them (ids and counts are small)."""
    if arr.dtype.kind in "iu" and arr.size:
        low, high = int(arr.min()), int(arr.max())
        for dtype, lowest, highest in _INT_TYPES:
            if lowest <= low and high <= highest:
                return arr.astype(dtype, copy=False)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False)


def _as_list(col: Column) -> list[Any]:
    return col.tolist() if isinstance(col, (np.ndarray, Strings, IntLists)) else list(col)
