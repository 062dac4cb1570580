"""The in-process store's key lifetimes (fanflow.store.memory)."""

from __future__ import annotations

from fanflow.store.base import RUNNING
from fanflow.store.memory import MemoryStore


def test_every_kind_of_write_gives_its_key_an_expiry_that_the_next_sweep_honours() -> None:
    """Writes of one key set their expiry without a sweep of their own; the next write of values sweeps them."""
    store = MemoryStore()
    store.set_status("status", RUNNING, 0)
    store.begin("status", "started", "inv", "token", 0, False)
    store.append_events("events", [{"kind": "x"}], 0)
    store.take_claim("claim", "owner", 0)
    store.put_many({"kept": 1}, 3600)
    assert set(store.stored_keys()) == {"status", "started", "events", "claim", "kept"}
    store._next_sweep = 0.0  # the sweep period has passed
    store.put_many({"value": 2}, 3600)
    assert set(store.stored_keys()) == {"kept", "value"}
