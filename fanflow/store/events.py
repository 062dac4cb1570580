"""Events as workers buffer them: rows of values under a shared shape, read as dicts.

A run's event stream is a sequence of flat dicts (``kind``, ``task``,
``worker``, ``t`` and each kind's own fields), and every reader sees it so: the
dashboard, the progress bar, the Redis store's JSON. A worker, though, makes
about three events per task, and making a dict per event cost more than the rest
of a tiny task's bookkeeping, and turning tens of thousands of dicts into
columns when the run is recorded cost as much again. So a worker buffers each
event as a *row*: a tuple of its values followed by its :class:`Shape` (its
kind and field names, one object per kind and field set, shared by every row
of that shape), and flushes them as :class:`EventRows`, a sequence that gives
each row as a dict when read. The in-process store keeps the batch as it is,
so recording (:mod:`fanflow.store.metadata.trace`) groups rows by shape and
transposes them, and no dict is ever made unless someone reads the stream.

A row may also be a dict (events made elsewhere, the client's own).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any, overload


class Shape:
    """The kind and field names of a row's values, in order; compared by identity (one object per shape)."""

    __slots__ = ("kind", "names")

    def __init__(self, kind: str, names: tuple[str, ...]) -> None:
        self.kind = kind
        self.names = names
        """Field names of the row's values (the row's last item is the shape itself); ``kind`` is not one."""

    def __repr__(self) -> str:
        return f"Shape({self.kind!r}, {self.names!r})"


Row = tuple[Any, ...] | dict[str, Any]
"""An event: values then their :class:`Shape`, or a dict."""

_shapes: dict[tuple[str, ...], Shape] = {}
_lock = threading.Lock()


def shape(kind: str, names: tuple[str, ...]) -> Shape:
    """The one :class:`Shape` of events of ``kind`` with fields ``names`` (in that order)."""
    key = (kind, *names)
    found = _shapes.get(key)
    if found is None:
        with _lock:
            found = _shapes.setdefault(key, Shape(kind, names))
    return found


def as_dict(row: Row) -> dict[str, Any]:
    """The event a row stands for (a dict row is the event itself)."""
    if type(row) is dict:
        return row
    form: Shape = row[-1]
    event = {"kind": form.kind}
    event.update(zip(form.names, row, strict=False))  # stops at the names: the shape is no value
    return event


def label_of(row: Row) -> Any:
    """What groups a row with its like: its :class:`Shape`, or a dict's ``kind`` (None without one)."""
    return row[-1] if type(row) is tuple else row.get("kind")


def kind_of(label: Any) -> Any:
    """The kind a :func:`label_of` result stands for."""
    return label.kind if type(label) is Shape else label


class EventRows(Sequence[dict[str, Any]]):
    """One flush of a worker's events: its rows, read as dicts (see the module docstring)."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return list(map(as_dict, self.rows[i]))
        return as_dict(self.rows[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(as_dict, self.rows)

    def __repr__(self) -> str:
        return f"EventRows({list(self)!r})"


def rows_of(batch: Sequence[Any]) -> list[Row]:
    """A batch's rows: an :class:`EventRows`' own, or the events of any other sequence."""
    return batch.rows if type(batch) is EventRows else list(batch)
