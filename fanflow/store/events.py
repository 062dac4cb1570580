"""Events as workers buffer them: rows of values under a shared shape, read as dicts.

A run's event stream is a sequence of flat dicts (``kind``, ``task``,
``worker``, ``t`` and each kind's own fields), and every reader sees it so: the
dashboard, the progress bar, the Redis store's JSON. A worker, though, makes
about three events per task: a dict each (1.4 µs, keyword arguments and all)
was a tenth of a tiny task's cost on the embedded default, and turning tens of
thousands of dicts into columns when the run is recorded cost more than a
third of the recording. So a worker buffers each
event as a *row*: a tuple of its values followed by the number of its
:class:`Shape` (its kind and field names, one per kind and field set in a
process), and flushes them as :class:`EventRows`, a sequence that gives
each row as a dict when read. Every event of a flush is one worker's, so its
``worker`` field is the batch's, not a value in each row. The in-process store
keeps the batch as it is, so recording (:mod:`fanflow.store.metadata.trace`)
groups rows by shape and takes their columns, and no dict is ever made unless
someone reads the stream. A row holds nothing but its values and a number, so
the garbage collector stops tracking it at its first pass (a row holding an
object, the shape itself, would be visited by every full collection while the
run's events live).

Events made elsewhere (the client's own) stay dicts.

A store that sends a flush elsewhere (Redis) writes it with :func:`pack_rows`,
one JSON text per flush with no dict per event: the batch's shapes once, each
shape's rows as columns, a column of floats as its bytes. A worker's flush at
the end of its invocation holds two events per task it ran, and as a JSON list
of dicts a 1,024-task flush took 7-9 ms of the worker's CPU on a quiet machine
(a dict per event, a float's text per value), where the packed form takes
1.4 ms. :func:`unpack_rows` gives its readers the dicts back.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any, overload


class Shape:
    """The kind and field names of a row's values, in order, and the shape's number in this process."""

    __slots__ = ("kind", "names", "number")

    def __init__(self, kind: str, names: tuple[str, ...], number: int) -> None:
        self.kind = kind
        self.names = names
        """Field names of the row's values (the row's last item is the shape's number); ``kind`` is not one."""
        self.number = number

    def __repr__(self) -> str:
        return f"Shape({self.kind!r}, {self.names!r})"


Row = tuple[Any, ...] | dict[str, Any]
"""An event: values then their shape's number (a row of an :class:`EventRows`), or a dict."""

SHAPES: list[Shape] = []
"""Every shape of this process, by number."""

_numbers: dict[tuple[str, ...], int] = {}
_lock = threading.Lock()


def shape(kind: str, names: tuple[str, ...]) -> int:
    """The number of the :class:`Shape` of events of ``kind`` with fields ``names`` (in that order)."""
    key = (kind, *names)
    found = _numbers.get(key)
    if found is None:
        with _lock:
            found = _numbers.get(key)
            if found is None:
                found = _numbers[key] = len(SHAPES)
                SHAPES.append(Shape(kind, names, found))
    return found


def as_dict(row: Row, worker: str | None = None) -> dict[str, Any]:
    """The event a row of ``worker``'s stands for (a dict row is the event itself)."""
    if type(row) is dict:
        return row
    form = SHAPES[row[-1]]
    event = {"kind": form.kind}
    event.update(zip(form.names, row, strict=False))  # stops at the names: the shape is no value
    if worker is not None:
        event["worker"] = worker
    return event


def label_of(row: Row) -> Any:
    """What groups a row with its like: its shape's number (an int), or a dict's ``kind``.

    A kind is a str (None when the event has none); any other kind comes in a
    1-tuple, so that it is never read as a shape's number. No object is made for
    a str kind: a run's tens of thousands of labels would each be one for the
    garbage collector to count.
    """
    if type(row) is tuple:
        return row[-1]
    kind = row.get("kind")
    return kind if kind is None or type(kind) is str else (kind,)


def kind_of(label: Any) -> Any:
    """The kind a :func:`label_of` result stands for."""
    if type(label) is int:
        return SHAPES[label].kind
    return label[0] if type(label) is tuple else label


class EventRows(Sequence[dict[str, Any]]):
    """One flush of a worker's events: its rows, read as dicts with the worker's id (see the module docstring)."""

    __slots__ = ("rows", "worker")

    def __init__(self, rows: list[tuple[Any, ...]], worker: str) -> None:
        self.rows = rows
        self.worker = worker

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return list(map(as_dict, self.rows[i], repeat(self.worker)))
        return as_dict(self.rows[i], self.worker)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(as_dict, self.rows, repeat(self.worker))

    def __repr__(self) -> str:
        return f"EventRows({list(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return list, (list(self),)  # shape numbers mean nothing in another process: pickled as dicts


_FLOAT = {float}
_last = itemgetter(-1)


def _column(values: tuple[Any, ...]) -> Any:
    """A column of :func:`pack_rows`: floats as base64 of little-endian doubles (a float's text takes ~0.4 µs
    to write, three quarters of the JSON), any other values as they are."""
    if set(map(type, values)) == _FLOAT:
        return base64.b64encode(struct.pack(f"<{len(values)}d", *values)).decode("ascii")
    return values


def pack_rows(batch: EventRows) -> str:
    """``batch`` as one JSON text: ``{"w": worker, "s": [[kind, names, columns], ...], "o": order}``.

    ``s`` holds each shape of the batch once, in order of first use, with its rows'
    values as columns; ``o`` gives per event the index of its shape in ``s``, so
    :func:`unpack_rows` puts the events back in their order. A value JSON cannot
    hold is written as its ``repr``, as a list of dicts would have it.
    """
    index: dict[int, int] = {}
    order = [index.setdefault(number, len(index)) for number in map(_last, batch.rows)]
    groups: list[list[tuple[Any, ...]]] = [[] for _ in index]
    for row, i in zip(batch.rows, order, strict=True):
        groups[i].append(row)
    shapes = []
    for number, group in zip(index, groups, strict=True):
        form = SHAPES[number]
        columns = list(zip(*group, strict=True))[:-1]  # the last column is the shape's number
        shapes.append((form.kind, form.names, list(map(_column, columns))))
    return json.dumps({"w": batch.worker, "s": shapes, "o": order}, separators=(",", ":"), default=repr)


def unpack_rows(text: str | bytes) -> list[dict[str, Any]]:
    """The events of a :func:`pack_rows` text, in their order, as the dicts :func:`as_dict` makes of the rows."""
    entry = json.loads(text)
    worker = entry["w"]
    events: list[Iterator[dict[str, Any]]] = []
    for kind, names, columns in entry["s"]:
        for i, column in enumerate(columns):
            if type(column) is str:
                packed = base64.b64decode(column)
                columns[i] = struct.unpack(f"<{len(packed) // 8}d", packed)
        fields = ("kind", *names, "worker")
        values = zip(repeat(kind), *columns, repeat(worker))
        events.append(map(dict, map(zip, repeat(fields), values)))
    return [next(events[i]) for i in entry["o"]]
