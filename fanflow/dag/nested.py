"""The one traversal of nested arguments.

Task arguments may hold nodes at any depth inside lists, tuples and dicts.
:func:`map_nested` is the single walk that serves every shape: collecting the
nodes of a call, turning them into references for shipping, and substituting
upstream values at run time all go through it.

Containers are rebuilt only when something inside them changed, so large
constant arguments are never copied, and their types (named tuples, dict and
list subclasses) are kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any


def map_nested(obj: Any, leaf: Callable[[Any], Any], is_leaf: Callable[[Any], bool]) -> Any:
    """Return ``obj`` with every ``x`` for which ``is_leaf(x)`` is true replaced by ``leaf(x)``.

    Lists, tuples and dicts (and their subclasses) are walked; any other value is
    returned as it is. Recursion depth is bounded by how deeply the user nests
    containers, never by the size of the DAG.
    """
    if is_leaf(obj):
        return leaf(obj)
    return _walk(obj, leaf, is_leaf)


_WALKED = (dict, list, tuple)


def _walk(obj: Any, leaf: Callable[[Any], Any], is_leaf: Callable[[Any], bool]) -> Any:
    """:func:`map_nested` of ``obj``, which is no leaf. An item that is neither a leaf nor a
    container is kept without a call of its own (most arguments are such constants)."""
    if isinstance(obj, dict):
        items = {
            k: leaf(v) if is_leaf(v) else _walk(v, leaf, is_leaf) if isinstance(v, _WALKED) else v
            for k, v in obj.items()
        }
        if all(items[k] is v for k, v in obj.items()):
            return obj
        return _rebuild_mapping(obj, items)
    if isinstance(obj, (list, tuple)):
        items_seq = [leaf(v) if is_leaf(v) else _walk(v, leaf, is_leaf) if isinstance(v, _WALKED) else v for v in obj]
        if all(a is b for a, b in zip(items_seq, obj, strict=True)):
            return obj
        return _rebuild_sequence(obj, items_seq)
    return obj


def _rebuild_mapping(original: dict[Any, Any], items: dict[Any, Any]) -> dict[Any, Any]:
    if type(original) is dict:
        return items
    new = copy.copy(original)
    new.clear()
    new.update(items)
    return new


def _rebuild_sequence(original: list[Any] | tuple[Any, ...], items: list[Any]) -> Any:
    kind = type(original)
    if kind is list:
        return items
    if kind is tuple:
        return tuple(items)
    if isinstance(original, tuple):
        return kind(*items) if hasattr(original, "_fields") else kind(items)
    new = copy.copy(original)
    new[:] = items
    return new


def collect(obj: Any, is_leaf: Callable[[Any], bool]) -> list[Any]:
    """Every leaf found in ``obj``, in traversal order (duplicates kept)."""
    found: list[Any] = []

    def keep(x: Any) -> Any:
        found.append(x)
        return x

    map_nested(obj, keep, is_leaf)
    return found
