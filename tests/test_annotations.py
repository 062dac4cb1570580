"""The worker loop obeys plan annotations: placement labels, delayed I/O, memory per task."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import fanflow
from fanflow.client.hooks import OnPlanned
from fanflow.client.session import session
from fanflow.dag import DAG
from fanflow.store.metadata import open_metadata


@fanflow.task
def source(n: int) -> list[int]:
    return list(range(n))


@fanflow.task
def grow(xs: list[int]) -> list[int]:
    return [x + 1 for x in xs]


@fanflow.task
def merge(*parts: list[int]) -> int:
    return sum(sum(p) for p in parts)


def run_with(
    dag: DAG, store_url: str, tmp_path: Path, max_workers: int | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    meta = f"sqlite:///{tmp_path / 'meta.db'}"
    cfg = fanflow.Config(store=store_url, progress=False, metadata=meta, metrics_upload="task", max_workers=max_workers)
    captured: list[str] = []
    values = session().execute(dag, cfg, hooks=[OnPlanned(lambda r: captured.append(r.run_id))])
    return values[0], open_metadata(meta).load_run(captured[0]).events


def fan_out_dag() -> DAG:
    root = source(10)
    return DAG.from_sinks([merge(grow(root), grow(root), grow(root))])


def workers_of(events: list[dict[str, Any]]) -> dict[int, str]:
    return {e["task"]: e["worker"] for e in events if e["kind"] == "task_finished"}


def test_without_a_plan_each_fan_out_branch_gets_a_worker(tmp_path: Path) -> None:
    value, events = run_with(fan_out_dag(), "memory://plain", tmp_path)
    assert value == 3 * sum(range(1, 11))
    ran = workers_of(events)
    assert len({ran[1], ran[2], ran[3]}) == 3


def test_shared_label_clusters_a_fan_out_in_one_worker(tmp_path: Path) -> None:
    dag = fan_out_dag()
    for t in range(len(dag)):
        dag.annotations[t] = {"worker": "A"}
    value, events = run_with(dag, "memory://clustered", tmp_path)
    assert value == 3 * sum(range(1, 11))
    assert len(set(workers_of(events).values())) == 1
    assert any(e["kind"] == "clustered" and e["task"] == 0 for e in events)


def test_labels_split_work_between_workers(tmp_path: Path) -> None:
    dag = fan_out_dag()
    labels = ["A", "A", "B", "B", "A"]
    for t, label in enumerate(labels):
        dag.annotations[t] = {"worker": label}
    value, events = run_with(dag, "memory://split", tmp_path)
    ran = workers_of(events)
    assert value == 3 * sum(range(1, 11))
    assert ran[0] == ran[1] and ran[2] == ran[3] and ran[0] != ran[2]


def test_delayed_io_skips_uploads_only_where_safe(tmp_path: Path) -> None:
    root = source(5)
    chain = grow(grow(root))
    side = grow(root)
    dag = DAG.from_sinks([merge(chain, side)])
    order = {id(n): t for t, n in enumerate(dag.nodes or [])}
    first, second, other = order[id(chain.deps[0])], order[id(chain)], order[id(side)]
    for t in range(len(dag)):
        dag.annotations[t] = {"worker": "A", "upload": False}
    dag.annotations[other] = {"worker": "B", "upload": False}  # the fan-in also waits on another worker
    value, events = run_with(dag, "memory://delayed", tmp_path)
    assert value == sum(range(2, 7)) + sum(range(1, 6))
    kept_local = {e["task"] for e in events if e["kind"] == "delayed_io"}
    # The chain's outputs stay local (their consumers surely run in A's worker); the root feeds two
    # labels, and the fan-in waits on B's output, so whoever claims it may be another worker.
    assert kept_local == {first}
    assert second not in kept_local and other not in kept_local


def test_planned_memory_starts_a_worker_of_that_size(tmp_path: Path) -> None:
    root = source(3)
    dag = DAG.from_sinks([grow(grow(root))])
    dag.annotations[2] = {"memory_mb": 3008}
    value, events = run_with(dag, "memory://memory", tmp_path)
    assert value == [2, 3, 4]
    started = {e["worker"]: e["memory_mb"] for e in events if e["kind"] == "worker_started"}
    ran = workers_of(events)
    assert started[ran[2]] == 3008 and started[ran[0]] != 3008


def test_roots_sharing_a_label_start_in_one_worker(tmp_path: Path) -> None:
    dag = DAG.from_sinks([merge(source(3), source(4), source(5))])
    for t in range(len(dag)):
        dag.annotations[t] = {"worker": "A" if t < 2 else "B"}
    value, events = run_with(dag, "memory://roots", tmp_path)
    ran = workers_of(events)
    assert value == sum(range(3)) + sum(range(4)) + sum(range(5))
    assert ran[0] == ran[1] and ran[2] != ran[0]
    # Two root workers; a third only if the fan-in is claimed away from its label.
    assert sum(e["kind"] == "worker_started" for e in events) in (2, 3)


def test_anchored_tasks_keep_fan_in_inputs_local(run_config: fanflow.Config) -> None:
    from fanflow.dag.placement import anchored_tasks
    from fanflow.store.metadata import open_metadata

    dag = DAG.from_sinks([merge(grow(source(4)), grow(source(5)))])  # merge: two inputs, both under "A"
    for t in range(len(dag)):
        dag.annotations[t] = {"worker": "A", "upload": False}
    assert anchored_tasks(dag, ["A"] * len(dag)) == set(range(len(dag)))
    cfg = run_config.replace(metrics_upload="task")
    captured: list[str] = []
    (value,) = session().execute(dag, cfg, hooks=[OnPlanned(lambda r: captured.append(r.run_id))])
    assert value == sum(range(1, 5)) + sum(range(1, 6))
    events = open_metadata(cfg.metadata).load_run(captured[0]).events
    sink = dag.sinks[0]
    kept = {e["task"] for e in events if e["kind"] == "delayed_io"}
    assert kept == set(range(len(dag))) - {sink}  # nothing but the sink is uploaded
    assert len({e["worker"] for e in events if e["kind"] == "task_finished"}) == 1


def test_anchoring_stops_where_an_input_comes_from_another_label() -> None:
    from fanflow.dag.placement import anchored_tasks, delayable

    a1, b = source(1), source(2)
    a2 = grow(a1)
    dag = DAG.from_sinks([merge(a2, b)])  # tasks: a1, a2, b, merge
    order = {id(n): t for t, n in enumerate(dag.nodes or [])}
    labels: list[str | None] = [None] * len(dag)
    for node, label in ((a1, "A"), (a2, "A"), (b, "B")):
        labels[order[id(node)]] = label
    fan_in = dag.sinks[0]
    labels[fan_in] = "A"
    anchored = anchored_tasks(dag, labels)
    assert anchored == {order[id(a1)], order[id(a2)], order[id(b)]}  # not the fan-in: it waits on B
    assert delayable(dag, order[id(a1)], labels, anchored)  # its consumer surely runs in A's worker
    assert not delayable(dag, order[id(a2)], labels, anchored)  # its consumer may be claimed by B's worker


@fanflow.task
def pair(left: list[int], right: list[int]) -> list[int]:
    return left + right


@fanflow.task
def slow_grow(xs: list[int]) -> list[int]:
    time.sleep(0.5)
    return [x + 1 for x in xs]


def sums_of_two_labels(extra: bool) -> tuple[DAG, dict[str, int]]:
    """Two roots in labels A and B, two fan-ins of both in label C, and a sink in C (with ``extra``,
    the sink also reads a value made in label D)."""
    p, q = grow(source(3)), grow(source(4))
    s1, s2 = pair(p, q), pair(q, p)
    parts = [s1, s2, slow_grow(source(5))] if extra else [s1, s2]
    dag = DAG.from_sinks([merge(*parts)])
    order = {id(n): t for t, n in enumerate(dag.nodes or [])}
    named = {"p": order[id(p)], "q": order[id(q)], "s1": order[id(s1)], "s2": order[id(s2)]}
    for t in range(len(dag)):
        label = (
            "A" if t in (named["p"], order[id(p.deps[0])]) else "B" if t in (named["q"], order[id(q.deps[0])]) else "C"
        )
        dag.annotations[t] = {"worker": label, "upload": False}
    if extra:
        for node in (parts[2], parts[2].deps[0]):
            dag.annotations[order[id(node)]]["worker"] = "D"
    return dag, named


def finished(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {e["task"]: e for e in events if e["kind"] == "task_finished"}


def test_a_fan_in_whose_readers_this_worker_claims_is_not_uploaded(redis_url: str, tmp_path: Path) -> None:
    """The two sums read products of labels A and B, so they are not anchored and the static rule uploads
    them; but the worker running them holds the other sum in its queue and so claims the sink itself."""
    dag, named = sums_of_two_labels(extra=False)
    value, events = run_with(dag, redis_url, tmp_path)
    assert value == 2 * (sum(range(1, 4)) + sum(range(1, 5)))
    done = finished(events)
    assert not done[named["s1"]]["uploaded"] and not done[named["s2"]]["uploaded"]
    kept = {e["task"] for e in events if e["kind"] == "delayed_io"}
    assert {named["s1"], named["s2"]} <= kept
    assert done[named["s1"]]["worker"] == done[named["s2"]]["worker"] == done[dag.sinks[0]]["worker"]
    assert not any(e["kind"] == "recomputed" for e in events)


def test_a_fan_in_whose_reader_waits_on_another_worker_is_uploaded(redis_url: str, tmp_path: Path) -> None:
    """The sink also reads a value of label D, made by another worker that finishes last and claims it."""
    dag, named = sums_of_two_labels(extra=True)
    value, events = run_with(dag, redis_url, tmp_path, max_workers=4)  # a worker per root label
    assert value == 2 * (sum(range(1, 4)) + sum(range(1, 5))) + sum(range(1, 6))
    done = finished(events)
    assert done[named["s1"]]["uploaded"] and done[named["s2"]]["uploaded"]
    assert done[dag.sinks[0]]["worker"] != done[named["s1"]]["worker"]
    assert not any(e["kind"] == "recomputed" for e in events)
