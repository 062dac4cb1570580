"""Metrics, run history and the ``runs``/``report`` commands.

Runs use the embedded path (threads + memory store), whose sizes are exact for
``bytes`` outputs, so every byte count below is known in advance. Redis
tests use the session's private ``redis-server`` (``redis_url`` in conftest).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import statistics
import threading
from pathlib import Path

import numpy as np
import pytest
import redis
from support import add, install_hint
from typer.testing import CliRunner

import fanflow
from fanflow.cli.main import app
from fanflow.metrics import History, RunMetrics, from_baseline, summaries_of, task_records, to_baseline
from fanflow.metrics.executions import Executions, _from_columns, executions_of
from fanflow.metrics.history import run_executions
from fanflow.metrics.records import FAILED, FINISHED, UNFINISHED
from fanflow.planning import make_plan
from fanflow.planning.predict import RECENT_RUNS, clear_cache
from fanflow.platforms.threads import default_max_workers
from fanflow.store.metadata import MetadataStore, RunNotFoundError, StoredRun, Summary, drain, open_metadata
from fanflow.store.metadata.trace import EventTable, decode_trace, encode_trace


@fanflow.task
def blob(n: int) -> bytes:
    return b"x" * n


@fanflow.task
def grow(data: bytes, extra: int) -> bytes:
    return data + b"y" * extra


@fanflow.task
def join(*parts: bytes) -> bytes:
    return b"".join(parts)


@fanflow.task
def crash(data: bytes) -> bytes:
    raise ValueError("no")


def _redis_db(url: str, db: int) -> str:
    """The shared test server's URL with database ``db``, emptied."""
    url = f"{url.rsplit('/', 1)[0]}/{db}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


def _config(tmp_path: Path, **overrides: object) -> fanflow.Config:
    values: dict[str, object] = {"progress": False, "metadata": f"sqlite:///{tmp_path / 'meta.db'}"}
    values.update(overrides)
    return fanflow.Config(**values)  # type: ignore[arg-type]


def _last(config: fanflow.Config) -> RunMetrics:
    store = open_metadata(config.metadata)
    return RunMetrics.from_stored(store.load_run(store.runs(limit=1)[0]["run_id"]))


def _fan_out(k: int) -> fanflow.Node:
    root = blob(1000)
    return join(*[grow(root, 10 * (i + 1)) for i in range(k)])


def _check_complete(m: RunMetrics) -> None:
    """Every task finished with positive times; every worker started, stopped and ran tasks."""
    assert m.run.status == "succeeded"
    assert m.run.tasks_finished == m.run.tasks == len(m.tasks)
    for t in m.tasks:
        assert t.status == FINISHED
        assert t.exec_s > 0 and t.store_s > 0 and t.finished_at > t.started_at >= m.run.submitted_at
        assert t.exec_s_512 == pytest.approx(to_baseline(t.exec_s, t.memory_mb))
    assert sum(len(w.tasks) for w in m.workers) == len(m.tasks)
    for w in m.workers:
        assert w.stopped_at >= w.started_at > 0
    kinds = [e["kind"] for e in m.events]
    assert kinds.count("worker_started") == kinds.count("worker_stopped") == len(m.workers)
    assert kinds.count("task_started") == kinds.count("task_finished") == len(m.tasks)


# -- records of known DAGs -------------------------------------------------------------
def test_chain_runs_on_one_worker_with_exact_sizes(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert len(grow(grow(blob(100), 20), 3).compute(config)) == 123
    m = _last(config)
    _check_complete(m)
    assert [t.out_bytes for t in m.tasks] == [100, 120, 123]
    assert len(m.workers) == 1 and m.workers[0].tasks == [0, 1, 2]
    assert {t.worker for t in m.tasks} == {m.workers[0].worker}
    assert [(i.task, i.bytes, i.local, i.download_s) for i in m.tasks[2].inputs] == [(1, 120, True, None)]
    assert m.tasks[1].fetch_s == 0 and m.run.bytes_fetched == 0 and m.run.bytes_local == 220
    assert m.critical_path() == [0, 1, 2]
    assert m.run.dag_build_s > 0 and 0 <= m.run.planning_s < 0.05 and m.run.makespan_s > 0
    assert m.run.sink == "grow" and m.run.run_id.endswith(m.run.signature[:8])


def test_fan_out_of_k_branches_runs_on_k_workers(tmp_path: Path) -> None:
    k = 4
    config = _config(tmp_path)
    assert len(_fan_out(k).compute(config)) == k * 1000 + sum(10 * (i + 1) for i in range(k))
    m = _last(config)
    _check_complete(m)
    root, branches, sink = m.tasks[0], m.tasks[1:-1], m.tasks[-1]
    assert len({b.worker for b in branches}) == k == len(m.workers)
    assert root.worker in {b.worker for b in branches}
    for b in branches:  # the root's own worker kept one branch: its input is local, the others fetched it
        (inp,) = b.inputs
        assert inp.bytes == 1000 and inp.local == (b.worker == root.worker)
        assert (inp.download_s is None) == inp.local and (b.fetch_s > 0) != inp.local
    assert [t.out_bytes for t in branches] == [1000 + 10 * (i + 1) for i in range(k)]
    assert sink.in_bytes == sum(b.out_bytes for b in branches) == sink.out_bytes
    assert sum(i.local for i in sink.inputs) == 1  # the sink runs where the last branch finished
    assert m.run.bytes_fetched == (k - 1) * 1000 + sink.fetched_bytes
    path = m.critical_path()
    assert path[0] == 0 and path[-1] == sink.task and len(path) == 3
    assert [t.task for t in m.slowest(2)] == sorted(
        range(len(m.tasks)), key=lambda i: m.tasks[i].duration_s, reverse=True
    )[:2]
    assert sum(w.cold for w in m.workers) <= 1


@pytest.mark.parametrize("strategy", ["shutdown", "task", "periodic:0.001", "buffer:2"])
def test_every_upload_strategy_records_complete_runs(tmp_path: Path, strategy: str) -> None:
    config = _config(tmp_path, metrics_upload=strategy)
    _fan_out(3).compute(config)
    m = _last(config)
    _check_complete(m)
    assert m.run.metrics_upload == strategy and len(m.workers) == 3


def test_failed_run_is_recorded_with_its_error(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with pytest.raises(fanflow.TaskFailedError):
        grow(crash(blob(10)), 1).compute(config)
    m = _last(config)
    assert m.run.status == "failed" and "ValueError" in (m.run.error or "")
    assert [t.status for t in m.tasks] == [FINISHED, FAILED, UNFINISHED]
    assert m.tasks[1].error == "ValueError: no" and m.tasks[1].attempt == 1
    assert m.critical_path() == [0, 1]


_released = threading.Event()


@fanflow.task
def slow(data: bytes) -> bytes:
    _released.wait(30)  # until the run is recorded: a task that ended first would be recorded as finished
    return data


def test_timed_out_run_is_recorded_as_such(tmp_path: Path) -> None:
    config = _config(tmp_path, timeout_s=0.05)
    _released.clear()
    try:
        with pytest.raises(fanflow.RunTimeoutError):
            slow(blob(1)).compute(config)
        m = _last(config)
    finally:
        _released.set()
    assert m.run.status == "timeout" and m.run.error and m.run.error.startswith("RunTimeoutError")
    assert m.tasks[1].status == UNFINISHED and m.run.makespan_s >= 0.05


def test_metadata_none_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert blob(5).compute(_config(tmp_path, metadata="none")) == b"xxxxx"
    assert not any(tmp_path.iterdir())


def test_a_metrics_failure_never_fails_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("not a directory")
    config = _config(tmp_path, metadata=f"sqlite:///{tmp_path / 'file' / 'meta.db'}")
    with caplog.at_level(logging.WARNING, logger="fanflow.metrics.recorder"):
        assert blob(3).compute(config) == b"xxx"
        drain()  # recording happens in the background
    assert "could not record its metrics" in caplog.text


def test_recording_overhead_is_small(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _fan_out(50).compute(config)
    m = _last(config)
    assert m.run.tasks == 52
    assert m.run.record_s < 0.5  # collection + build; generous for a shared 2-core machine


# -- normalization, summaries, history ----------------------------------------------
def test_normalization_to_512_mb() -> None:
    assert to_baseline(1.0, 512) == 1.0
    assert to_baseline(1.0, 1769) == pytest.approx(1769 / 512)
    assert to_baseline(1.0, 4096) == to_baseline(1.0, 1769)  # one vCPU is the most a task uses
    assert to_baseline(2.0, 256) == pytest.approx(1.0)
    assert from_baseline(to_baseline(0.3, 1024), 1024) == pytest.approx(0.3)


def test_summary_matches_statistics_and_merges() -> None:
    xs = [100.0, 200.0, 300.0, 400.0, 500.0]
    ys = [0.1 + 0.002 * x for x in xs]
    whole = Summary.of((y, x, 2 * x) for x, y in zip(xs, ys, strict=True))
    parts = Summary.of((y, x, 2 * x) for x, y in zip(xs[:2], ys[:2], strict=True)).merge(
        Summary.of((y, x, 2 * x) for x, y in zip(xs[2:], ys[2:], strict=True))
    )
    for s in (whole, parts):
        assert s.count == 5 and s.min == min(ys) and s.max == max(ys)
        assert s.mean == pytest.approx(statistics.mean(ys))
        assert s.variance == pytest.approx(statistics.variance(ys))
        assert s.predict_exec_s(1000) == pytest.approx(2.1)
        assert s.predict_out_bytes(50) == pytest.approx(100)
    assert Summary().merge(whole) == whole
    assert Summary.from_dict(whole.to_dict()) == whole


@pytest.fixture(params=["sqlite", "redis"])
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty metadata store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history' / 'meta.db'}"
    return _redis_db(request.getfixturevalue("redis_url"), 3)


def test_metadata_stores_keep_history_by_signature_and_function(tmp_path: Path, metadata_url: str) -> None:
    config = _config(tmp_path, metadata=metadata_url, retention_runs=3)
    chain = grow(blob(10), 5)
    for n in range(4):
        chain.compute(config)
        _fan_out(2 + n % 2).compute(config)
    store: MetadataStore = open_metadata(metadata_url)
    runs = store.runs()
    assert len(runs) == 3 and runs == sorted(runs, key=lambda r: r["submitted_at"], reverse=True)
    chain_sig = next(r["signature"] for r in runs if r["sink"] == "grow")
    chain_runs = store.runs(signature=chain_sig)
    assert chain_runs and all(r["sink"] == "grow" for r in chain_runs)

    identity = grow.identity
    history = task_records(store, [identity], memory_mb=config.memory_mb)
    kept = {r["run_id"] for r in runs}
    assert history and {h.run_id for h in history} <= kept and {h.identity for h in history} == {identity}
    assert task_records(store, [identity], memory_mb=128) == []
    assert {s.run["run_id"] for s in store.task_runs([identity])} == kept

    # summaries outlive retention: grow ran once per chain and k times per fan-out, in all 8 runs
    summary = store.summaries([identity])[(identity, config.memory_mb)]
    assert summary.count == 4 + (2 + 3) * 2
    loaded = RunMetrics.from_stored(store.load_run(runs[0]["run_id"]))
    assert loaded.run.run_id == runs[0]["run_id"] and loaded.events
    assert summaries_of(loaded.tasks)  # a loaded run summarizes like a fresh one
    with pytest.raises(RunNotFoundError, match="fanflow runs list"):
        store.load_run("no-such-run")
    assert len(store.gc(1)) == 2 and len(store.runs()) == 1
    assert store.summaries([identity])[(identity, config.memory_mb)].count == summary.count


def test_history_reads_once_and_predicts_across_memory(tmp_path: Path, metadata_url: str) -> None:
    config = _config(tmp_path, metadata=metadata_url)
    node = grow(blob(1000), 1)
    node.compute(config)
    store = open_metadata(metadata_url)
    dag = fanflow.metrics.build_dag([node])
    history = History.for_dag(dag, metadata_url)
    identity = grow.identity
    assert len(history.executions(identity)) == 1 and history.memory_sizes(identity) == [config.memory_mb]
    node.compute(config)  # a new run is not seen by an accessor built before it
    assert len(history.executions(identity, config.memory_mb)) == 1
    assert len(History(store, [identity]).executions(identity)) == 2
    at_own = history.predict_exec_s(identity, config.memory_mb, 1000)
    at_512 = history.predict_exec_s(identity, 512, 1000)
    assert at_own is not None and at_512 is not None
    assert at_512 == pytest.approx(to_baseline(at_own, config.memory_mb))
    assert history.predict_exec_s("nobody", 512, 1) is None
    assert history.predict_out_bytes(identity, 1000) == pytest.approx(1001)


def test_a_planners_history_reads_only_the_recent_runs_per_memory_size(tmp_path: Path, metadata_url: str) -> None:
    """Newest first, until every function and size has ``recent_runs`` runs: older runs are not decoded."""
    config = _config(tmp_path, metadata=metadata_url)
    node = grow(blob(1000), 1)
    sizes = [1769, 512, 1769, 512, 1769]  # oldest first
    for size in sizes:
        node.compute(config.replace(memory_mb=size))
    store = open_metadata(metadata_url)
    run_ids = [r["run_id"] for r in sorted(store.runs(), key=lambda r: r["submitted_at"])]
    identity = grow.identity

    def runs_at(history: History, size: int) -> list[str]:
        return sorted(set(history.executions(identity, size).run_ids_of_rows()))

    every = History(store, [identity])
    recent = History(store, [identity], recent_runs=2)
    assert runs_at(every, 1769) == sorted(run_ids[0::2]) and runs_at(every, 512) == sorted(run_ids[1::2])
    assert runs_at(recent, 1769) == sorted(run_ids[2::2]) and runs_at(recent, 512) == sorted(run_ids[1::2])
    assert len(History(store, [identity], recent_runs=3).executions(identity)) == len(every.executions(identity))


def test_a_planners_history_stops_at_a_size_whose_every_execution_it_read(tmp_path: Path) -> None:
    """A size run once counts 1 execution in its summary: once that run is read, no older run is needed."""
    config = _config(tmp_path)
    node = grow(blob(1000), 1)
    sizes = [1769, 1769, 1769, 512, 1769, 1769]  # oldest first
    for size in sizes:
        node.compute(config.replace(memory_mb=size))
    store = open_metadata(config.metadata)
    run_ids = [r["run_id"] for r in sorted(store.runs(), key=lambda r: r["submitted_at"])]
    clear_cache()
    recent = History(store, [grow.identity], recent_runs=2)
    assert set(recent.table.run_ids) == set(run_ids[3:])  # 2 at 1769, then the one at 512: the 3 oldest unread
    assert set(History(store, [grow.identity], recent_runs=3).table.run_ids) == set(run_ids[2:])  # a third 1769


def test_a_planners_history_stops_early_at_runs_holding_many_executions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function run many times a run: three runs with enough executions end the read before ``recent_runs``."""
    from fanflow.metrics import history

    config = _config(tmp_path)
    for _ in range(6):
        fanflow.compute(*[grow(blob(100), i) for i in range(5)], config=config)  # 5 executions a run
    store = open_metadata(config.metadata)
    run_ids = [r["run_id"] for r in sorted(store.runs(), key=lambda r: r["submitted_at"])]
    assert set(History(store, [grow.identity], recent_runs=5).table.run_ids) == set(run_ids[1:])
    monkeypatch.setattr(history, "ENOUGH_EXECUTIONS", 10)
    assert set(History(store, [grow.identity], recent_runs=5).table.run_ids) == set(run_ids[3:])  # 3 runs, 15
    monkeypatch.setattr(history, "ENOUGH_EXECUTIONS", 16)
    assert set(History(store, [grow.identity], recent_runs=5).table.run_ids) == set(run_ids[2:])  # 4 runs, 20


def test_task_run_ids_lists_a_functions_runs_newest_first(tmp_path: Path, metadata_url: str) -> None:
    config = _config(tmp_path, metadata=metadata_url)
    for n in range(3):
        grow(blob(10), n).compute(config)
        _fan_out(2).compute(config)
    store = open_metadata(metadata_url)
    newest_first = [r["run_id"] for r in store.runs()]
    assert store.task_run_ids() == newest_first
    chains = store.task_run_ids([grow.identity])
    assert len(chains) == 6 and chains == newest_first  # _fan_out's runs call grow too
    assert store.task_run_ids([join.identity]) == newest_first[0::2]  # only the fan-outs join
    assert store.task_run_ids(["nobody"]) == [] and store.task_run_ids([]) == []


def _tree(leaves: int) -> fanflow.Node:
    level: list[object] = list(range(leaves))
    while len(level) > 1:
        level = [add(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]  # type: ignore[return-value]


def test_executions_read_from_trace_columns_equal_the_records(tmp_path: Path) -> None:
    """The planner's columns, read from the trace, are what the full task records give, column for column."""
    config = _config(tmp_path)
    _tree(128).compute(
        config
    )  # 127 tasks, 64 workers: the trace keeps columns (a group of fewer than 64 events keeps lists)
    chain: object = 0
    for i in range(100):
        chain = add(chain, i)
    chain.compute(config)  # type: ignore[attr-defined]  # one worker: its start event's columns stay lists
    _fan_out(2).compute(config)  # 4 tasks: its events are kept as a list
    with pytest.raises(fanflow.FanflowError):
        join(grow(blob(10), 1), crash(blob(10))).compute(config)  # a failed task: read through its records
    store = open_metadata(config.metadata)
    for doc in store.runs():
        stored = store.load_run(doc["run_id"])
        columns = _from_columns(decode_trace(stored.trace), doc["run_id"], doc["max_workers"])
        assert (columns is None) == (doc["status"] != "succeeded")
        fast, records = executions_of(stored), Executions.of_records(RunMetrics.from_stored(stored).tasks)
        assert (
            fast.run_ids == records.run_ids and fast.workers == records.workers and len(fast) == doc["tasks_finished"]
        )
        assert doc["max_workers"] == default_max_workers() and fast.caps == (doc["max_workers"],)  # its threads
        for name, column in records.columns.items():
            mine = fast.columns[name]
            if name == "function":
                mine, column = np.array(fast.functions)[mine], np.array(records.functions)[column]
            assert mine.dtype == column.dtype and np.array_equal(mine, column), name


def test_executions_of_finishes_in_several_groups_equal_the_records(tmp_path: Path) -> None:
    """On a pool some finishes carry a field the others lack (``held``): their groups are read end to end."""
    config = _config(tmp_path)
    _tree(128).compute(config)
    store = open_metadata(config.metadata)
    stored = store.load_run(store.runs()[0]["run_id"])
    events = [dict(e) for e in stored.events]
    for e in events[::3]:
        if e["kind"] == "task_finished":
            e["held"] = True
    table = EventTable.of(events)
    assert len(table.of_kind("task_finished")) == 2
    held = StoredRun(stored.run, encode_trace(decode_trace(stored.trace).dag, table))
    assert _from_columns(decode_trace(held.trace), stored.run["run_id"], None) is not None
    fast, records = executions_of(held), Executions.of_records(RunMetrics.from_stored(held).tasks)
    assert len(fast) == 127 and fast.workers == records.workers
    for name, column in records.columns.items():
        assert np.array_equal(fast.columns[name], column), name


@pytest.mark.parametrize("named", ["numbers", "processes", "none"])
def test_workers_read_from_trace_columns_are_numbered_by_name_as_the_records(tmp_path: Path, named: str) -> None:
    """The columns number a run's workers by sorting the ids present, not the rows: the same numbers, names,
    cold flags and latencies as the records, for ids whose text order is not their numbers' ("w-10" before
    "w-9"), of several processes (one a prefix of another's), without a "-", and tasks that named none."""
    config = _config(tmp_path)
    _tree(128).compute(config)  # 127 tasks on 64 workers: the trace keeps columns
    store = open_metadata(config.metadata)
    stored = store.load_run(store.runs()[0]["run_id"])
    ids = sorted({e["worker"] for e in stored.events if e.get("worker")})
    shapes = {
        "numbers": [f"w-{i}" for i in range(len(ids))],
        "processes": [["p-1", "p-1-x", "q", "p-1-x-2", "p-10"][i % 5] + f"-{i}" for i in range(len(ids))],
        "none": ["" if i % 7 == 0 else f"solo{i}" for i in range(len(ids))],
    }
    rename = dict(zip(ids, shapes[named], strict=True))
    events = [dict(e, worker=rename[e["worker"]]) if e.get("worker") else dict(e) for e in stored.events]
    if named == "none":  # tasks with no worker, and no start of a worker without a name
        events = [e for e in events if e.get("worker") or e["kind"] not in ("worker_started", "worker_stopped")]
    renamed = StoredRun(stored.run, encode_trace(decode_trace(stored.trace).dag, EventTable.of(events)))
    assert _from_columns(decode_trace(renamed.trace), stored.run["run_id"], None) is not None
    fast, records = executions_of(renamed), Executions.of_records(RunMetrics.from_stored(renamed).tasks)
    assert fast.workers == records.workers and list(fast.workers) == sorted(fast.workers)
    assert (named == "none") == bool((fast["worker"] < 0).any())
    for name, column in records.columns.items():
        assert fast.columns[name].dtype == column.dtype and np.array_equal(fast.columns[name], column), name


def test_a_plan_from_paged_history_equals_one_from_every_record(tmp_path: Path) -> None:
    """Paging stops after the newest RECENT_RUNS runs; the plan is the one the full decode of every run gives."""
    config = _config(tmp_path, planner="uniform", memory_mb=1024)
    for _ in range(RECENT_RUNS + 2):
        _tree(128).compute(config)
    store = open_metadata(config.metadata)
    dag = fanflow.metrics.build_dag([_tree(128)])
    ids = sorted({t.identity for t in dag.tasks})
    clear_cache()
    paged = History.for_dag(dag, config.metadata, RECENT_RUNS)
    make_plan(dag, config.replace(planner="critical-path"), history=paged)  # what it fits is kept: used below
    newest = [r["run_id"] for r in store.runs()]
    assert set(paged.table.run_ids) == set(newest[:RECENT_RUNS])  # the two oldest were not read
    full = History.__new__(History)
    caps = {r["run_id"]: r["max_workers"] for r in store.runs()}  # the runs' worker caps, as the paged read has them
    full.summaries, full.table = store.summaries(ids), Executions.of_records(task_records(store, ids), caps)
    full.url = None  # not read from a store: nothing it fits is kept
    assert len(full.table.run_ids) == RECENT_RUNS + 2
    cp = config.replace(planner="critical-path", optimizations="clustering,delayed-io,prewarm,preload")
    a, b = make_plan(dag, cp, history=paged), make_plan(dag, cp, history=full)
    assert a.used_history and a.annotations == b.annotations and a.kind == b.kind
    assert a.simulation is not None and b.simulation is not None
    assert a.simulation.makespan == b.simulation.makespan and a.predicted_p90_s == b.predicted_p90_s
    assert a.costs is not None and b.costs is not None
    for memory in (512, 1024, 3008):
        assert a.costs.exec_at(memory) == b.costs.exec_at(memory)
        assert a.costs.upload_s(1e6, memory) == b.costs.upload_s(1e6, memory)
        assert a.costs.gap_s(memory) == b.costs.gap_s(memory) and a.costs.warm_s(memory) == b.costs.warm_s(memory)


def test_decoded_runs_stay_cached_and_a_new_run_is_read(tmp_path: Path) -> None:
    config = _config(tmp_path)
    node = _tree(128)
    for _ in range(2):
        node.compute(config)
    store = open_metadata(config.metadata)
    dag = fanflow.metrics.build_dag([node])
    clear_cache()
    first = History.for_dag(dag, config.metadata, RECENT_RUNS)
    old = [run_executions(store, r) for r in first.table.run_ids]
    assert History.for_dag(dag, config.metadata, RECENT_RUNS).table is first.table  # the same runs: joined once
    assert History(store, None, RECENT_RUNS).table is not first.table  # other functions asked for: its own
    node.compute(config)
    second = History.for_dag(dag, config.metadata, RECENT_RUNS)
    assert len(second.table.run_ids) == 3 and second.table.run_ids[:2] == first.table.run_ids
    assert all(run_executions(store, r) is e for r, e in zip(first.table.run_ids, old, strict=True))


def test_every_platform_records_complete_runs(run_config: fanflow.Config) -> None:
    """Out of process, sizes are pickled sizes and events come back from Redis Streams."""
    _fan_out(3).compute(run_config)
    m = _last(run_config)
    _check_complete(m)
    # threads: one worker per branch; processes: the root's worker keeps what no idle slot takes
    assert len(m.workers) == 3 if run_config.platform == "threads" else 2 <= len(m.workers) <= 3
    assert m.run.platform == run_config.platform
    assert all(t.out_bytes >= 1000 for t in m.tasks)
    if run_config.platform != "threads":
        assert m.run.encoded_size > 0


# -- CLI ------------------------------------------------------------------------------
def _two_recorded_runs(tmp_path: Path) -> tuple[CliRunner, list[str], str]:
    """A CLI runner, the ``--metadata`` option of a history of two runs, and the first run's id."""
    config = _config(tmp_path)
    _fan_out(3).compute(config)
    grow(blob(7), 1).compute(config)
    first = open_metadata(config.metadata).runs()[-1]["run_id"]
    return CliRunner(env={"COLUMNS": "200"}), ["--metadata", config.metadata], first


def test_cli_runs(tmp_path: Path) -> None:
    runner, url, first = _two_recorded_runs(tmp_path)

    listed = runner.invoke(app, ["runs", "list", *url])
    assert listed.exit_code == 0, listed.output
    assert first in listed.output and "succeeded" in listed.output

    shown = runner.invoke(app, ["runs", "show", first[:20], *url])
    assert shown.exit_code == 0, shown.output
    assert "Critical path" in shown.output and "Slowest" in shown.output and "join-4" in shown.output

    exported = runner.invoke(app, ["runs", "export", first, "--json", *url])
    assert exported.exit_code == 0, exported.output
    doc = json.loads(exported.output)
    assert doc["run"]["run_id"] == first and len(doc["tasks"]) == 5 and doc["events"]

    rows = runner.invoke(app, ["runs", "export", "last", "--csv", *url]).output.strip().splitlines()
    assert rows[0].startswith("run_id,task,name") and len(rows) == 3

    missing = runner.invoke(app, ["runs", "show", "nope", *url])
    assert missing.exit_code == 1 and "no recorded run matches" in missing.output

    collected = runner.invoke(app, ["runs", "gc", "--keep", "1", *url])
    assert collected.exit_code == 0 and "removed 1" in collected.output
    assert [r["sink"] for r in open_metadata(url[1]).runs()] == ["grow"]
    assert math.isfinite(open_metadata(url[1]).runs()[0]["makespan_s"])


def test_cli_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason=install_hint("dashboard"))
    runner, url, first = _two_recorded_runs(tmp_path)
    out = tmp_path / "report.html"
    made = runner.invoke(app, ["report", first, "-o", str(out), *url])
    assert made.exit_code == 0, made.output
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 3
    png = page.split("data:image/png;base64,", 1)[1].split('"', 1)[0]
    assert base64.b64decode(png).startswith(b"\x89PNG")
    assert "http" not in page.replace("http://www.w3.org", "")  # self-contained


@fanflow.task
def pieces(n: int) -> list[bytes]:
    return [b"p" * (10 * (i + 1)) for i in range(n)]


@fanflow.task
def concat(parts: list[bytes]) -> bytes:
    return b"".join(parts)


def test_dynamic_fan_out_records_each_element(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert len(concat(fanflow.map(grow, pieces(3), 5)).compute(config)) == 10 + 20 + 30 + 3 * 5
    m = _last(config)
    assert m.run.status == "succeeded" and m.run.tasks_finished == m.run.tasks
    (mapped,) = [t for t in m.tasks if t.elements]
    assert [e.index for e in mapped.elements] == [0, 1, 2]
    assert [e.out_bytes for e in mapped.elements] == [15, 25, 35]
    assert len({e.worker for e in mapped.elements}) == 3 and all(e.exec_s > 0 for e in mapped.elements)
    summary = open_metadata(config.metadata).summaries([grow.identity])[(grow.identity, config.memory_mb)]
    assert summary.count == 3  # the function ran once per element; the gather is not an execution
