"""The data path at real sizes: large outputs stay with the worker that made them when it can run the dependent."""

from __future__ import annotations

import uuid

import pytest

from fanflow.store import keys, open_store
from fanflow.store.base import Claim, Store


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return open_store(f"memory://data-path-{uuid.uuid4().hex[:6]}")
    return open_store(request.getfixturevalue("redis_cluster_url" if request.param == "cluster" else "redis_url"))


def test_a_claim_only_if_last_joins_only_when_it_completes_the_set(store: Store) -> None:
    run, d = f"last-{uuid.uuid4().hex[:8]}", 4

    def claim(member: int, only_if_last: bool) -> Claim:
        return Claim(keys.deps(run, d), keys.claim(run, d), member, 3, only_if_last=only_if_last)

    assert store.finish({}, [claim(1, True)], "w1", 60, 1000) == [False]  # not last: nothing changed
    assert store.finish({}, [claim(2, False)], "w2", 60, 1000) == [False]
    assert store.finish({}, [claim(1, True)], "w1", 60, 1000) == [False]  # still not last: 1 never joined
    assert store.finish({}, [claim(1, False)], "w1", 60, 1000) == [False]  # stores, then notifies as usual
    assert store.finish({}, [claim(3, True)], "w3", 60, 1000) == [True]  # completes the set: claimed
    assert store.finish({}, [claim(3, True)], "w3", 60, 1000) == [True]  # its owner re-enters
    assert store.finish({}, [claim(1, True)], "w1", 60, 1000) == [False]  # a re-run never triggers twice


def test_a_claim_only_if_last_of_a_single_input_task_is_won_at_once(store: Store) -> None:
    run = f"single-{uuid.uuid4().hex[:8]}"
    c = Claim(keys.deps(run, 1), keys.claim(run, 1), 0, 1, only_if_last=True)
    assert store.finish({}, [c], "w1", 60, 1000) == [True]
    assert store.finish({}, [c._replace(only_if_last=False)], "w2", 60, 1000) == [False]
