"""Liveness: with the default config (no ``timeout_s``) every fault ends the run with a specific error.

The rule under test (docs/reliability.md, "Liveness"): the client watches its
platform's health and its run's progress, and a platform that refuses or loses
an invocation tells the run. Faults are real: worker processes that cannot
start or die, a shared pool SIGKILLed as a whole, tasks that call
``sys.exit()``, a client with the wrong secret. Each test bounds its own wait
(``future.result(timeout=...)``), so a hang fails the test instead of CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from support import add, bump, inc, wait_until

import fanflow
from fanflow.platforms.invocation import branch_id
from fanflow.store import keys, open_store
from fanflow.store.base import (
    BEGIN_DUPLICATE,
    BEGIN_RUN,
    BEGIN_STOPPED,
    LEASE_DONE,
    MISSING,
    RUNNING,
    Store,
    error_record,
)
from fanflow.worker.heartbeat import heartbeat

LIVENESS_S = 15.0
"""Every fault must end its run within this many seconds (the issue's bound)."""

POOL_SECRET = "liveness-pool-secret"


# -- tasks (module level, so worker processes import them) ---------------------------------
@fanflow.task
def boom() -> int:
    raise RuntimeError("broken on purpose")


@fanflow.task
def boom_after(started: str) -> int:
    wait_until(Path(started).exists, 30, "the other task to start")
    raise RuntimeError("broken on purpose")


@fanflow.task
def exits(how: str) -> int:
    if how == "exit":
        sys.exit(3)
    raise KeyboardInterrupt


@fanflow.task
def nap(started: str, seconds: float, x: int) -> int:
    bump(started)
    time.sleep(seconds)
    return x


@fanflow.task
def branches(n: int) -> list[int]:
    return list(range(n))


@fanflow.task
def dies_first_time(x: int, marker: str, counter_dir: str) -> int:
    """Counts its run, then SIGKILLs its worker process the first time (an OOM kill, say)."""
    bump(os.path.join(counter_dir, f"ran-{x}"))
    if not os.path.exists(marker):
        Path(marker).write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@fanflow.task
def total(xs: list[int]) -> int:
    return sum(xs)


@fanflow.task
def marked_nap(x: int, marks: str, seconds: float, gate: str | None = None) -> int:
    """Counts its start and its end; leaves its host's pid and its own as ``on-<host>-<worker>``; waits for
    the file ``gate`` first, if given."""
    bump(os.path.join(marks, f"start-{x}"))
    Path(marks, f"on-{os.getppid()}-{os.getpid()}").touch()
    if gate is not None:
        wait_until(Path(gate).exists, 60, "the test to open the gate")
    time.sleep(seconds)
    bump(os.path.join(marks, f"done-{x}"))
    return x


@fanflow.task
def always_killed() -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


@fanflow.task
def gated_branch(x: int, gate: str, counter_dir: str) -> int:
    """Counts its run; the first one waits for ``gate``, so the others queue behind it."""
    bump(os.path.join(counter_dir, f"ran-{x}"))
    if x == 0:
        wait_until(Path(gate).exists, 30, "the gate")
    return x


@fanflow.task
def killed_once(runs: str) -> int:
    """Appends to ``runs``, SIGKILLing its process the first time; how many runs it took (Ray's workers
    cannot import the tests' support module, so nothing here uses it)."""
    with open(runs, "a") as f:
        f.write("x")
    count = len(Path(runs).read_text())
    if count == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return count


@fanflow.task
def wipe_stored_inputs(store_url: str) -> int:
    """Waits until a task's output is stored for its sole consumer, then deletes it (a lost output)."""
    store = open_store(store_url)

    def stored() -> list[str]:
        return [k for k in store.stored_keys() if ":in:" in k]  # type: ignore[attr-defined]

    store.delete(wait_until(stored, 20, "the chain's end to store its output", interval=0.005))
    return 0


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def processes(redis_url: str) -> fanflow.Config:
    return fanflow.Config(platform="processes", store=redis_url, max_workers=2, progress=False, metadata="none")


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def shared_pool(redis_url: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `fanflow worker-pool` processes, each in its own process group so a test can SIGKILL all of it."""
    tests_dir = str(Path(__file__).parent)  # the pool's workers import this module's tasks
    path = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p)
    procs: list[subprocess.Popen[bytes]] = []
    names: set[str] = set()

    def start(name: str, secret: str = POOL_SECRET, max_workers: int = 2) -> subprocess.Popen[bytes]:
        env = {**os.environ, "FANFLOW_SECRET": secret, "FANFLOW_METADATA": "none", "PYTHONPATH": path}
        command = [sys.executable, "-m", "fanflow.cli", "worker-pool", "--store", redis_url, "--name", name]
        proc = subprocess.Popen([*command, "--max-workers", str(max_workers)], env=env, start_new_session=True)
        procs.append(proc)
        names.add(name)
        alive = redis.Redis.from_url(redis_url)

        def up() -> bool:
            assert proc.poll() is None, "the worker pool exited at start"
            return bool(alive.exists(f"ff:pool:{name}:alive"))

        wait_until(up, 30, "the worker pool to come up", interval=0.05)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    client = redis.Redis.from_url(redis_url)  # a SIGKILLed pool leaves its pool keys behind
    for name in names:
        stale = [*client.scan_iter(match=f"ff:pool:{name}:*"), *client.scan_iter(match=f"{{ff:pool:{name}:queue}}:*")]
        if stale:
            client.delete(*stale)


def shared(redis_url: str, name: str, secret: str = POOL_SECRET) -> fanflow.Config:
    return fanflow.Config(
        platform="processes", store=redis_url, pool=name, secret=secret, progress=False, metadata="none"
    )


def ends_within(future: fanflow.RunFuture, seconds: float = LIVENESS_S) -> BaseException:
    """The error ``future`` ends with; fails the test if it does not end within ``seconds``."""
    began = time.monotonic()
    try:
        future.result(timeout=seconds)
    except fanflow.FanflowError as exc:
        assert time.monotonic() - began < seconds
        return exc
    except TimeoutError:
        pytest.fail(f"the run did not end within {seconds} s")
    pytest.fail("the run succeeded, but it should have failed")


def run_keys_left(client: redis.Redis, run_id: str) -> list[bytes]:
    return [k for k in client.scan_iter(match=f"ff:{{{run_id}*") if not k.endswith(b":events")]


# -- 2. a run right after a failed run of the same session ----------------------------------
def test_a_run_submitted_as_the_previous_run_fails_gets_a_working_pool(
    processes: fanflow.Config, client: redis.Redis, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    # The failing run has a task in flight, so stopping its pool takes a moment (the grace period).
    failing = add(boom_after(str(started)), nap(str(started), 5.0, 1)).submit(processes)
    wait_until(started.exists, 30, "the long task to start")

    def failed() -> bool:
        return client.get(keys.status(failing.run_id)) != b"running"

    wait_until(failed, LIVENESS_S, "the failing run to fail", interval=0.002)
    following = add(1, 2).submit(processes)  # while the failed run's client stops its pool
    assert following.result(timeout=LIVENESS_S) == 3
    with pytest.raises(fanflow.TaskFailedError):
        failing.result(timeout=LIVENESS_S)


# -- 11. leases: a heartbeat still in flight when its task ends --------------------------------
@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    url = "memory://liveness" if request.param == "memory" else request.getfixturevalue("redis_url")
    opened = open_store(url)
    yield opened
    opened.close()


def test_a_late_heartbeat_never_undoes_a_done_lease(store: Store) -> None:
    lease = keys.lease("late-beat", 0)
    store.renew_leases([lease], "inv-1", 5_000)
    store.end_leases([lease], 60)
    store.renew_leases([lease], "inv-1", 5_000)  # the beat that was in flight when the task ended
    assert store.read_leases([lease]) == [LEASE_DONE]
    store.delete([lease])


def test_a_failure_recorded_after_its_run_ended_brings_no_key_back(store: Store) -> None:
    run = "ended-run"
    record = error_record(run, "late", 0, "fanflow.errors.InputLostError", "a late duplicate", "w", 1)
    store.fail_run(keys.status(run), keys.errors(run), record, 60, keys.channel(run))
    assert store.get_status(keys.status(run)) is None
    assert store.read_list(keys.errors(run)) == []


# -- 6 and 9. a worker's first step: is the run running, did this invocation start already? --------
def test_begin_runs_an_invocation_once_and_nothing_for_a_run_that_is_not_running(store: Store) -> None:
    run = "begin-run"
    status, started = keys.status(run), keys.started(run)
    assert store.begin(status, started, "inv-a", "w1", 60, redelivered=False) == BEGIN_STOPPED  # no run state
    assert store.get_many([started])[0] == [MISSING]  # and nothing written for it
    store.set_status(status, RUNNING, 60)
    assert store.begin(status, started, "inv-a", "w1", 60, redelivered=False) == BEGIN_RUN
    assert store.begin(status, started, "inv-a", "w2", 60, redelivered=False) == BEGIN_DUPLICATE
    assert store.begin(status, started, "inv-a", "w1", 60, redelivered=False) == BEGIN_RUN  # a retry of w1
    assert store.begin(status, started, "inv-a", "w3", 60, redelivered=True) == BEGIN_RUN  # its worker died
    assert store.begin(status, started, "inv-b", "w4", 60, redelivered=False) == BEGIN_RUN
    store.set_status(status, "cancelled", 60)
    assert store.begin(status, started, "inv-c", "w5", 60, redelivered=False) == BEGIN_STOPPED
    assert started in set(keys.run_keys(run, fanflow.dag.DAG.from_sinks([add(1, 2)]), {}))
    store.delete([status, started])


def test_branch_ids_are_the_same_for_the_same_parent_and_start() -> None:
    assert branch_id("parent", (3,)) == branch_id("parent", (3,))
    assert branch_id("parent", ((5, 1, 4),)) != branch_id("parent", ((5, 2, 4),))
    assert branch_id("parent", (3,)) != branch_id("other", (3,))


# -- 1. a worker process that cannot start, or dies at its cold start ---------------------------
def test_a_worker_process_that_cannot_start_fails_the_run(
    processes: fanflow.Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    error = ends_within(add(1, 2).submit(processes))
    assert isinstance(error, fanflow.PlatformError)
    assert "cannot start a worker process" in str(error) and "'add-" in str(error)


def test_a_worker_process_that_dies_at_its_cold_start_fails_the_run(
    processes: fanflow.Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_on_arrival = tmp_path / "python"  # exits before the pool hands it its setup: a broken pipe
    dead_on_arrival.write_text("#!/bin/sh\nexit 3\n")
    dead_on_arrival.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(dead_on_arrival))
    error = ends_within(add(1, 2).submit(processes.replace(max_recoveries=1)))
    assert isinstance(error, fanflow.PlatformError)
    assert "exited with code 3" in str(error)


# -- 5. sys.exit() and KeyboardInterrupt inside a task ----------------------------------------
@pytest.mark.parametrize("how", ["exit", "interrupt"])
def test_a_task_that_exits_fails_the_run_naming_the_task(run_config: fanflow.Config, how: str) -> None:
    error = ends_within(add(exits(how), 1).submit(run_config))
    assert isinstance(error, fanflow.TaskFailedError)
    assert error.task.startswith("exits")
    assert ("SystemExit" if how == "exit" else "KeyboardInterrupt") in str(error)


# -- 15. a client whose secret is not the shared pool's ---------------------------------------
def test_a_client_with_another_secret_than_the_pool_fails_fast(
    redis_url: str, shared_pool: Callable[..., subprocess.Popen[bytes]]
) -> None:
    shared_pool("other-secret")
    error = ends_within(add(1, 2).submit(shared(redis_url, "other-secret", secret="not-the-pool-secret")))
    assert isinstance(error, fanflow.PayloadRejectedError)
    assert "other-secret" in str(error) and "config.secret" in str(error)


# -- 16. a task that kills its worker every time (as an out-of-memory kill does) ---------------------
def test_a_task_killed_every_time_fails_fast_naming_the_task(processes: fanflow.Config) -> None:
    error = ends_within(add(always_killed(), 1).submit(processes))  # the default max_recoveries
    assert isinstance(error, fanflow.PlatformError)
    assert "'always_killed-" in str(error) and "#0" not in str(error) and "memory_mb" in str(error)


# -- 6. a redelivered invocation does not run its fan-out branches twice -----------------------
def test_a_redelivered_map_runs_each_other_element_once(
    processes: fanflow.Config, tmp_path: Path, client: redis.Redis
) -> None:
    counts = tmp_path / "counts"
    counts.mkdir()
    # The worker that expands the map invokes elements 1-5, then dies in element 0; the pool
    # redelivers its invocation, which expands the map again.
    future = total(fanflow.map(dies_first_time, branches(6), str(tmp_path / "killed"), str(counts))).submit(processes)
    assert future.result(timeout=60) == sum(range(6))
    runs = {p.name: int(p.read_text()) for p in counts.iterdir()}
    assert runs == {"ran-0": 2, **{f"ran-{i}": 1 for i in range(1, 6)}}
    assert not run_keys_left(client, future.run_id)


# -- 10. lineage recovery of a long chain -------------------------------------------------------
def test_lineage_recovers_the_end_of_a_long_chain() -> None:
    url = "memory://long-lineage"
    chain = inc(0)
    for _ in range(1_499):
        chain = inc(chain)
    # Only the chain's end is stored (for the sink, whose other input comes last); the wiper
    # deletes it, so the sink's worker recomputes all 1,500 tasks from nothing.
    sink = add(chain, wipe_stored_inputs(url))
    assert sink.compute(fanflow.Config(store=url, progress=False, metadata="none")) == 1_500


# -- 11. a heartbeat in flight when its task ends ------------------------------------------------
BLOCKING_READS = {"blpop", "brpop", "blmove", "brpoplpush", "blmpop", "bzpopmin", "bzpopmax", "xread"}


def test_a_lease_renewed_as_its_task_ends_is_still_marked_done(redis_url: str) -> None:
    # Its own named connections: pool hosts left by earlier tests run scripts of their own (their beats).
    store = open_store(f"{redis_url}?client_name=renew-race")
    admin = redis.Redis.from_url(redis_url)
    lease = keys.lease("renew-race", 0)

    def blocked(command: str | None = None, name: str | None = None) -> bool:
        # A blocking read (a kept-warm pool's BLPOP from an earlier test) is not a paused write.
        return any(
            "b" in c["flags"]
            and c["cmd"] not in BLOCKING_READS
            and command in (None, c["cmd"])
            and name in (None, c["name"])
            for c in admin.client_list()
        )

    admin.execute_command("CLIENT", "PAUSE", 1500, "WRITE")  # the first beat (after lease_ms/3) blocks
    token = heartbeat.track(store, lease, "inv-1", 300)
    wait_until(lambda: blocked("evalsha", "renew-race"), 5, "the heartbeat to renew the lease")
    if heartbeat.untrack(token):  # the task ends now, its lease's first renewal in flight
        store.end_leases([lease], 60)
    wait_until(lambda: not blocked(), 5, "the paused writes to go through")
    assert store.read_leases([lease]) == [LEASE_DONE]
    store.delete([lease])


# -- 4. a whole pool dies, or stops, with invocations in flight -------------------------------
def test_a_shared_pool_killed_with_invocations_in_flight_fails_the_run(
    redis_url: str, tmp_path: Path, shared_pool: Callable[..., subprocess.Popen[bytes]]
) -> None:
    pool = shared_pool("killed-pool", max_workers=1)
    started = tmp_path / "started"
    # Six short roots on one worker: one runs, the others wait in the pool's inbox or the queue.
    future = total([nap(str(started), 0.5, i) for i in range(6)]).submit(shared(redis_url, "killed-pool"))
    wait_until(started.exists, 30, "the first task to start")
    os.killpg(pool.pid, signal.SIGKILL)
    error = ends_within(future)
    assert isinstance(error, fanflow.PlatformError)
    assert "'killed-pool'" in str(error) and "gone" in str(error)


def test_a_shared_pool_stopped_with_invocations_in_flight_fails_the_run(
    redis_url: str, tmp_path: Path, shared_pool: Callable[..., subprocess.Popen[bytes]]
) -> None:
    pool = shared_pool("stopped-pool", max_workers=1)
    started = tmp_path / "started"
    future = total([nap(str(started), 3.0, i) for i in range(4)]).submit(shared(redis_url, "stopped-pool"))
    wait_until(started.exists, 30, "the first task to start")
    pool.send_signal(signal.SIGTERM)
    error = ends_within(future)
    assert isinstance(error, fanflow.PlatformError)
    assert "'stopped-pool'" in str(error)


def test_a_stopped_shared_pool_hands_its_invocations_to_the_next(
    redis_url: str, tmp_path: Path, shared_pool: Callable[..., subprocess.Popen[bytes]]
) -> None:
    pool = shared_pool("restarted-pool", max_workers=1)
    started = tmp_path / "started"
    future = total([nap(str(started), 1.0, i) for i in range(3)]).submit(shared(redis_url, "restarted-pool"))
    wait_until(started.exists, 30, "the first task to start")
    pool.send_signal(signal.SIGTERM)  # the task in flight is stopped; it and the waiting ones go back
    pool.wait(timeout=30)
    shared_pool("restarted-pool", max_workers=1)
    assert future.result(timeout=LIVENESS_S * 2) == 0 + 1 + 2


def held_by(client: redis.Redis, pool: str, pid: int) -> int:
    """Entries in the held lists of the hosts of ``pool`` running in process ``pid``."""
    return sum(int(client.llen(k)) for k in client.scan_iter(match=f"{{ff:pool:{pool}:queue}}:held:*-{pid}-*"))


def hosts_on(marks: Path) -> dict[int, set[int]]:
    """Worker pids by host pid, from the ``on-<host>-<worker>`` marks of :func:`marked_nap`."""
    found: dict[int, set[int]] = {}
    for mark in marks.glob("on-*"):
        host, worker = (int(v) for v in mark.name.split("-")[1:])
        found.setdefault(host, set()).add(worker)
    return found


def counts_of(marks: Path, what: str, xs: list[int]) -> list[int]:
    return [int((marks / f"{what}-{x}").read_text()) if (marks / f"{what}-{x}").exists() else 0 for x in xs]


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def many_runs(config: fanflow.Config, marks: Path, runs: int) -> list[fanflow.RunFuture]:
    """``runs`` runs of two short tasks (task ``10 * run + i``), the second waiting for the file ``gate`` in
    ``marks``: a client of a shared pool starts each run's roots in one invocation, so the pool's hosts each
    run one (until the test opens the gate, or it finishes the first task only) and hold the others."""
    marks.mkdir()
    gate = str(marks / "gate")
    return [
        total([marked_nap(10 * r + i, str(marks), 0.1, gate if i == 1 else None) for i in range(2)]).submit(config)
        for r in range(runs)
    ]


def check_results(futures: list[fanflow.RunFuture], marks: Path) -> list[int]:
    """Every run's result; each task's count of finished runs."""
    assert [f.result(timeout=LIVENESS_S * 2) for f in futures] == [20 * r + 1 for r in range(len(futures))]
    return counts_of(marks, "done", [10 * r + i for r in range(len(futures)) for i in range(2)])


def hosts_holding(
    start: Callable[..., subprocess.Popen[bytes]], redis_url: str, tmp_path: Path, name: str, hosts: int, runs: int
) -> tuple[list[subprocess.Popen[bytes]], Path, list[fanflow.RunFuture]]:
    """``hosts`` one-worker hosts of pool ``name`` serving :func:`many_runs`, once the first holds two or more."""
    procs = [start(name, max_workers=1) for _ in range(hosts)]
    marks = tmp_path / "marks"
    futures = many_runs(shared(redis_url, name), marks, runs)
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: held_by(client, name, procs[0].pid) >= 2, 30, "the first host to hold entries")
    return procs, marks, futures


def test_a_host_killed_while_another_host_of_its_pool_lives_has_its_invocations_redelivered(
    redis_url: str, client: redis.Redis, tmp_path: Path, shared_pool: Callable[..., subprocess.Popen[bytes]]
) -> None:
    (first, second), marks, futures = hosts_holding(shared_pool, redis_url, tmp_path, "two-hosts", 2, 8)
    wait_until(lambda: first.pid in hosts_on(marks), 30, "the first host to start a task")
    first.send_signal(signal.SIGKILL)  # the host process alone: its worker must die with it
    for worker in hosts_on(marks)[first.pid]:
        wait_until(lambda w=worker: pid_gone(w), 5, f"worker process {worker} to die with its host")
    (marks / "gate").touch()
    done = check_results(futures, marks)
    # Each task finished; again only if the killed host's worker had finished it in the invocation it lost.
    assert min(done) == 1 and sum(done) <= len(done) + 1
    assert second.poll() is None
    # What the live host finished left its held list: a later death of it hands back nothing that ran.
    wait_until(lambda: held_by(client, "two-hosts", second.pid) == 0, 5, "the live host's held list to empty")


def test_a_host_started_again_within_seconds_runs_what_the_killed_one_held(
    redis_url: str, client: redis.Redis, tmp_path: Path, shared_pool: Callable[..., subprocess.Popen[bytes]]
) -> None:
    (pool,), marks, futures = hosts_holding(shared_pool, redis_url, tmp_path, "restart-host", 1, 4)
    pool.send_signal(signal.SIGKILL)
    pool.wait(timeout=10)
    shared_pool("restart-host", max_workers=1)  # well within the client's POOL_GONE_S
    (marks / "gate").touch()
    done = check_results(futures, marks)
    assert min(done) == 1 and sum(done) <= len(done) + 1
    assert held_by(client, "restart-host", pool.pid) == 0


def test_a_host_stalled_past_its_beats_is_taken_for_dead_and_comes_back(
    redis_url: str, client: redis.Redis, tmp_path: Path, shared_pool: Callable[..., subprocess.Popen[bytes]]
) -> None:
    (first, second), marks, futures = hosts_holding(shared_pool, redis_url, tmp_path, "stalled-host", 2, 8)
    first.send_signal(signal.SIGSTOP)  # the host alone: its worker goes on with its invocation
    try:
        wait_until(lambda: held_by(client, "stalled-host", first.pid) == 0, 15, "the stalled host's entries to go back")
    finally:
        first.send_signal(signal.SIGCONT)
        (marks / "gate").touch()
    done = check_results(futures, marks)
    # Every task finished; twice at most the two of the invocation its worker was running when taken for dead.
    assert min(done) == 1 and sum(done) <= len(done) + 2
    assert first.poll() is None and second.poll() is None
    alive = f"{{ff:pool:stalled-host:queue}}:host:*-{first.pid}-*"
    wait_until(lambda: list(client.scan_iter(match=alive)), 5, "the stalled host to beat again")
    # Nothing it took after the reap was dropped: its held list empties as it finishes them.
    wait_until(lambda: held_by(client, "stalled-host", first.pid) == 0, 10, "the stalled host's held list to empty")


# -- 9. nothing starts for a run that ended ------------------------------------------------------
def test_invocations_queued_when_their_run_is_cancelled_run_nothing(
    redis_url: str, tmp_path: Path, shared_pool: Callable[..., subprocess.Popen[bytes]]
) -> None:
    shared_pool("cancel-pool", max_workers=1)
    # One invocation per root: by default one worker would take them all, and shed to idle slots.
    config = shared(redis_url, "cancel-pool").replace(fanout="wukong")
    counts, gate = tmp_path / "counts", tmp_path / "gate"
    counts.mkdir()
    # One worker: root 0 holds it until the gate opens; roots 1-4 wait in the queue.
    future = total([gated_branch(i, str(gate), str(counts)) for i in range(5)]).submit(config)
    wait_until((counts / "ran-0").exists, 30, "the first branch to start")
    assert future.cancel()
    status = redis.Redis.from_url(redis_url)
    wait_until(lambda: status.get(keys.status(future.run_id)) != b"running", 10, "the run to stop")
    gate.write_text("open")
    assert add(1, 2).submit(config).result(timeout=60) == 3  # one worker, FIFO: the branches went first
    assert sorted(p.name for p in counts.iterdir()) == ["ran-0"]


def test_a_ray_task_retried_after_its_process_died_runs_as_the_same_delivery(
    ray_local: None, redis_url: str, tmp_path: Path
) -> None:
    config = fanflow.Config(platform="ray", store=redis_url, progress=False, metadata="none")
    future = total([killed_once(str(tmp_path / "runs"))]).submit(config)
    assert future.result(timeout=60) == 2  # Ray retried the task: its begin let the retry run
