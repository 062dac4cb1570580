"""The processes platform on a real ``redis-server``: exactly-once, cleanup, concurrency, cold/warm, signatures."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from support import add, inc, processes_config, wait_until

import fanflow
import fanflow.worker as worker_module
import fanflow.worker.entry as entry_module
from fanflow.client.hooks import OnPlanned
from fanflow.client.run import Run
from fanflow.client.session import session
from fanflow.dag.encoding import encode
from fanflow.dag.graph import DAG
from fanflow.platforms.invocation import Invocation, WorkerSettings, new_invocation_id, peek, sign
from fanflow.platforms.processes import ProcessesPlatform, client_platform, protocol
from fanflow.platforms.processes import pool as pool_module
from fanflow.platforms.processes.cgroups import cpu_period_us, cpu_quota_us, nice_weight
from fanflow.platforms.processes.pool import (
    PoolHost,
    own_cpus,
    pack_entries,
    push,
    taking_order,
    usable_cpus,
    widen,
)
from fanflow.store import keys, open_store
from fanflow.store.base import MISSING, RUNNING, SUCCEEDED, Store
from fanflow.store.metadata import drain, open_metadata
from fanflow.store.redis import RedisStore
from fanflow.worker import drop_ended_runs


@fanflow.task
def counted(url: str, counter: str, value: int) -> int:
    redis.Redis.from_url(url).incr(counter)
    return value


@fanflow.task
def gated(url: str, gate: str, value: int) -> int:
    client = redis.Redis.from_url(url)
    wait_until(lambda: client.exists(gate), 60, f"gate {gate} to open")
    return value


@fanflow.task
def join(url: str, counter: str, a: int, b: int) -> int:
    redis.Redis.from_url(url).incr(counter)
    return a + b


@fanflow.task
def total(values: list[int]) -> int:
    return sum(values)


@pytest.fixture
def config(redis_url: str, tmp_path: Path) -> fanflow.Config:
    return processes_config(redis_url, tmp_path)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


class Recording:
    """A platform that remembers every payload it queues (so a test can queue one again)."""

    def __init__(self, inner: ProcessesPlatform) -> None:
        self.inner = inner
        self.name = inner.name
        self.in_process = inner.in_process
        self.options = inner.options
        self.sent: list[bytes] = []

    def invoke(self, invocations: Sequence[Any]) -> None:
        self.sent.extend(invocations)
        self.inner.invoke(invocations)

    def free_slots(self) -> int | None:
        return self.inner.free_slots()

    def close(self) -> None:
        self.inner.close()


def test_a_rerun_upstream_never_triggers_its_dependent_twice(
    config: fanflow.Config, redis_url: str, client: redis.Redis
) -> None:
    tag = uuid.uuid4().hex[:8]
    a_runs, joins, gate = f"count:a:{tag}", f"count:join:{tag}", f"gate:{tag}"
    a = counted(redis_url, a_runs, 1)
    sink = join(redis_url, joins, a, gated(redis_url, gate, 2))
    dag = DAG.from_sinks([sink])
    platform = Recording(client_platform(config))
    run = Run(dag, config, platform)  # type: ignore[arg-type]
    try:
        run.start()
        first = next(p for p in platform.sent if dag.task(peek(p).start[0]).name == "counted")
        # The upstream again, as a recovery runs it: a new invocation (the same one would not run twice).
        a_payload = sign(dataclasses.replace(peek(first), inv_id=new_invocation_id()), run.secret)
        wait_until(lambda: client.get(a_runs) == b"1", 30, "the upstream to run")
        platform.invoke([a_payload])  # the upstream runs again after it succeeded, before the fan-in completes
        wait_until(lambda: client.get(a_runs) == b"2", 30, "the upstream to run again")
        client.set(gate, 1, ex=60)
        run.wait()
        assert run.results() == (3,)
        a_payload = sign(dataclasses.replace(peek(first), inv_id=new_invocation_id()), run.secret)
        platform.invoke([a_payload])  # and once more after its dependent ran
        a_task, store = peek(a_payload).start[0], open_store(redis_url)

        def upstream_workers_stopped() -> bool:
            events = [e for _, e in store.read_events(keys.events(run.run_id))]
            ran_a = {e["worker"] for e in events if e["kind"] == "task_finished" and e["task"] == a_task}
            return len(ran_a) == 3 and ran_a <= {e["worker"] for e in events if e["kind"] == "worker_stopped"}

        # Past its worker's end the third run has notified its dependent (and run it, were the claim wrong).
        wait_until(upstream_workers_stopped, 30, "the upstream's third worker to stop")
        assert client.get(a_runs) == b"3" and client.get(joins) == b"1"
    finally:
        run.cleanup()
        platform.close()
        client.delete(a_runs, joins, gate)


def test_no_key_of_a_run_remains(config: fanflow.Config, client: redis.Redis) -> None:
    top = inc(1)
    future = total([add(inc(top), inc(top)), inc(top)]).submit(config)
    assert future.result(timeout=60) == 6 + 3
    drain()  # the event stream goes once the run's history has it
    assert not list(client.scan_iter(match=f"ff:{{{future.run_id}*", count=1000))
    assert open_metadata(config.metadata).load_run(future.run_id).events
    # The client's pool (kept warm: only its host's beat keys stay) left no queue and holds nothing.
    # Its host acknowledges an entry when the worker says it is done, which the worker does as its
    # loop ends: the held list may trail the run's end by moments (up to 93 ms seen at load 6, when
    # the worker said so after its last events), with its TTL meanwhile (a missing one answers -1).
    assert not list(client.scan_iter(match="ff:pool:client-*"))

    def held() -> list[bytes]:
        return list(client.scan_iter(match="{ff:pool:client-*}:held:*"))

    assert all(client.pttl(k) != -1 for k in held())
    wait_until(lambda: not held(), 10, "the pool to acknowledge the run's last invocation")


def test_a_held_list_made_by_a_blocking_take_expires(
    redis_url: str, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry taken while the queue was empty (the popper waiting in ``BLMOVE``) starts a held list
    with a TTL: a client SIGKILLed then leaves nothing for ever (nobody reaps a client's own pool)."""
    monkeypatch.setattr(pool_module, "ALIVE_EVERY_S", 3600.0)  # one beat, before anything is held
    monkeypatch.setattr(pool_module, "POP_TIMEOUT_S", 2.0)  # the move waits well past the push below
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    host = PoolHost(store, f"test-{uuid.uuid4().hex[:8]}", b"pool-secret", max_workers=1, idle_timeout_s=30)
    thread = threading.Thread(target=host.serve, daemon=True)
    thread.start()
    gate = f"gate:{uuid.uuid4().hex[:8]}"
    try:
        dag = DAG.from_sinks([gated(redis_url, gate, 5)])
        inv = _invocation(redis_url, host, dag)

        def popper_waits() -> bool:
            return any(c.get("cmd") == "blmove" for c in client.client_list())

        wait_until(popper_waits, 30, "the pool to wait on its empty queue")
        push(store, host.name, pack_entries([256], [sign(inv, b"pool-secret")]))
        held = pool_module.held_key(host.name, host.host_id)
        wait_until(lambda: client.exists(held), 30, "the pool to take the entry")
        assert client.pttl(held) > 0  # held until the gate opens: the key cannot go meanwhile
        monkeypatch.setattr(pool_module, "POP_TIMEOUT_S", 0.2)  # the host stops as quickly as usual
        client.set(gate, 1, ex=60)
        wait_until(lambda: store.get_many([keys.output(inv.run_id, 0)])[0] == [5], 30, "the invocation to run")
        wait_until(lambda: not client.exists(held), 10, "the entry to be acknowledged")
    finally:
        client.set(gate, 1, ex=60)
        host.stop()
        thread.join(timeout=30)
        client.delete(gate)
    assert not thread.is_alive()


def test_fifty_runs_in_flight_from_one_client(config: fanflow.Config) -> None:
    futures = [add(inc(i), total([inc(i), i])).submit(config) for i in range(50)]
    assert fanflow.gather(futures) == [(i + 1) + (2 * i + 1) for i in range(50)]
    assert len({f.run_id for f in futures}) == 50


def test_cold_and_warm_starts_are_recorded(config: fanflow.Config, redis_url: str) -> None:
    config = config.replace(keep_alive_s=60)  # the second and third runs find the first one's workers
    started: list[dict[str, Any]] = []
    for n in (20, 21, 22):
        future = total([add(inc(0), i) for i in range(n)]).submit(config)
        assert future.result(timeout=60) == sum(1 + i for i in range(n))
        events = open_metadata(config.metadata).load_run(future.run_id).events
        started += [e for e in events if e["kind"] == "worker_started"]
    cold = [e for e in started if e["cold"]]
    assert 1 <= len(cold) <= 2  # at most max_workers processes were ever started
    assert len(started) - len(cold) >= 2
    assert all(e["latency_s"] >= 0 for e in started)
    assert max(e["latency_s"] for e in cold) > min(e["latency_s"] for e in started if not e["cold"])


@pytest.fixture
def pool(redis_url: str) -> Iterator[PoolHost]:
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    host = PoolHost(store, f"test-{uuid.uuid4().hex[:8]}", b"pool-secret", max_workers=1, idle_timeout_s=30)
    thread = threading.Thread(target=host.serve, daemon=True)
    thread.start()
    yield host
    host.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()


def _invocation(redis_url: str, pool: PoolHost, dag: DAG, running: bool = True) -> Invocation:
    """An invocation of a new run of ``dag``, marked running as a client would (workers of other runs do nothing)."""
    return _new_run(pool.store, redis_url, pool.name, dag, running)


def _new_run(store: Store, redis_url: str, pool: str, dag: DAG, running: bool = True) -> Invocation:
    """An invocation of a new run of ``dag`` for the processes pool named ``pool``, marked running unless not."""
    settings = WorkerSettings(key_ttl_s=60, lease_ms=30_000, max_value_bytes=1 << 20)
    run_id = dag.new_run_id()
    if running:
        store.set_status(keys.status(run_id), RUNNING, 60)
    return Invocation(
        run_id=run_id,
        start=(0,),
        memory_mb=256,
        store_url=redis_url,
        platform="processes",
        platform_options={"store": redis_url, "pool": pool},
        settings=settings,
        dag=encode(dag),
        invoked_at=time.time(),
    )


def test_a_payload_with_a_bad_signature_runs_nothing(pool: PoolHost, redis_url: str, client: redis.Redis) -> None:
    counter = f"count:forged:{uuid.uuid4().hex[:8]}"
    dag = DAG.from_sinks([counted(redis_url, counter, 7)])
    forged, genuine = _invocation(redis_url, pool, dag, running=False), _invocation(redis_url, pool, dag)
    store = pool.store
    push(store, pool.name, pack_entries([256], [sign(forged, b"another secret")]))
    wait_until(lambda: pool.stats["refused"] == 1, 30, "the pool to refuse the forged payload")
    assert client.get(counter) is None
    assert not list(client.scan_iter(match=f"ff:{{{forged.run_id}*"))
    push(store, pool.name, pack_entries([256], [sign(genuine, b"pool-secret")]))  # the same, signed right, runs
    wait_until(lambda: client.get(counter) == b"1", 30, "the genuine payload to run")
    # The task counts before its output is stored: wait for the output, not only the count.
    wait_until(lambda: store.get_many([keys.output(genuine.run_id, 0)])[0] == [7], 30, "the genuine output")
    client.delete(counter)


def test_worker_processes_get_cpu_and_memory_by_memory_class(pool: PoolHost, redis_url: str) -> None:
    if not pool._cgroups.available:
        pytest.skip("cgroups are not writable here")
    dag = DAG.from_sinks([inc(1)])
    inv = _invocation(redis_url, pool, dag)
    push(pool.store, pool.name, pack_entries([256], [sign(inv, b"pool-secret")]))
    wait_until(lambda: pool.store.get_many([keys.output(inv.run_id, 0)])[0] == [2], 30, "the invocation to run")
    (worker,) = pool._workers
    lines = Path(f"/proc/{worker.proc.pid}/cgroup").read_text().splitlines()
    groups = {ctl: path for _, ctls, path in (line.split(":", 2) for line in lines) for ctl in ctls.split(",")}
    # A short period below one vCPU: its fraction of the speed, not bursts and stalls.
    assert cpu_period_us(256) == 10_000 and cpu_quota_us(256) == 1447
    # The pool's group weighs as much as its one process would alone at the pool's nice value.
    weight = nice_weight(os.getpriority(os.PRIO_PROCESS, 0))
    if "memory" in groups:  # cgroup v1
        cpu = Path("/sys/fs/cgroup/cpu") / groups["cpu"].lstrip("/")
        memory = Path("/sys/fs/cgroup/memory") / groups["memory"].lstrip("/")
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == cpu_quota_us(256)
        assert int((cpu / "cpu.cfs_period_us").read_text()) == 10_000
        assert int((cpu.parent / "cpu.shares").read_text()) == weight
        assert int((memory / "memory.limit_in_bytes").read_text()) == 256 * 1024 * 1024
    else:
        group = Path("/sys/fs/cgroup") / groups[""].lstrip("/")
        assert (group / "cpu.max").read_text().split() == [str(cpu_quota_us(256)), "10000"]
        assert int((group.parent / "cpu.weight").read_text()) == round(weight * 100 / 1024)
        assert int((group / "memory.max").read_text()) == 256 * 1024 * 1024
    assert "fanflow-" in str(groups.get("cpu", groups.get("")))


def test_a_worker_gets_its_whole_vcpus_of_the_cpus_no_other_worker_holds() -> None:
    assert own_cpus((0, 1), set(), 1769) == {0}
    assert own_cpus((0, 1), {0}, 256) == {1}
    assert own_cpus((0, 1, 2, 3), {0}, 3008) == {1, 2}  # 1.7 vCPUs: a quota of 1.7 cores needs 2
    # Nothing free, or every CPU needed: bound to none, it runs anywhere.
    assert own_cpus((0, 1), {0, 1}, 1769) == frozenset()
    assert own_cpus((0, 1), set(), 3008) == frozenset()
    assert own_cpus((0, 1, 2, 3), {1, 2, 3}, 3008) == frozenset()
    assert own_cpus((), set(), 1769) == frozenset()  # no affinity mask on this system


def test_pools_of_one_machine_take_its_cpus_from_different_ones() -> None:
    usable = tuple(range(8))
    orders = {host: taking_order(usable, host) for host in (f"vm-{pid}-0a1b2c3d" for pid in range(100, 116))}
    for order in orders.values():  # a rotation: every CPU once, in the machine's order from its start
        assert sorted(order) == list(usable) and order == usable[order[0] :] + usable[: order[0]]
    assert len({order[0] for order in orders.values()}) >= 4  # 16 hosts do not all start at CPU 0
    assert taking_order(usable, "vm-1-x") == taking_order(usable, "vm-1-x")
    assert taking_order((), "vm-1-x") == ()


@contextlib.contextmanager
def _two_warm_workers(redis_url: str, **options: Any) -> Iterator[PoolHost]:
    """A pool host with a slot per CPU, serving, and two warm worker processes of it (stopped after)."""
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    slots = len(os.sched_getaffinity(0))
    host = PoolHost(store, f"test-{uuid.uuid4().hex[:8]}", b"pool-secret", max_workers=slots, **options)
    thread = threading.Thread(target=host.serve, daemon=True)
    thread.start()
    try:
        for memory in (256, 512):  # two classes: a prewarm of one class starts one worker
            host.prewarm(memory)
        wait_until(lambda: sum(w.ready for w in host._workers) == 2, 60, "two warm workers")
        yield host
    finally:
        host.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


def _thread_masks(pid: int) -> set[frozenset[int]]:
    """The CPU masks of the threads of process ``pid``."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def test_the_workers_of_a_pool_with_a_slot_per_cpu_run_on_cpus_of_their_own(redis_url: str) -> None:
    usable = tuple(sorted(os.sched_getaffinity(0)))
    if len(usable) < 2:
        pytest.skip("binding needs 2 CPUs or more")
    assert usable_cpus(len(usable)) == usable_cpus(len(usable) + 1) == usable
    assert usable_cpus(len(usable) - 1) == ()  # a pool smaller than the machine leaves placement to the kernel
    with _two_warm_workers(redis_url) as host:
        bound = []
        for worker in host._workers:
            assert worker.proc is not None and len(worker.cpus) == 1
            assert len(os.listdir(f"/proc/{worker.proc.pid}/task")) >= 2  # the pool watcher's thread too
            assert _thread_masks(worker.proc.pid) == {worker.cpus}  # it may start before the binding
            bound.append(worker.cpus)
        assert bound[0] != bound[1] and bound[0] | bound[1] <= set(usable)


def test_a_pool_told_not_to_bind_leaves_its_workers_on_every_cpu(redis_url: str) -> None:
    usable = frozenset(os.sched_getaffinity(0))
    if len(usable) < 2:
        pytest.skip("binding needs 2 CPUs or more")
    with _two_warm_workers(redis_url, bind_cpus=False) as host:
        for worker in host._workers:
            assert worker.proc is not None and worker.cpus == frozenset()
            assert _thread_masks(worker.proc.pid) == {usable}


def test_a_whole_vcpu_keeps_the_kernels_period() -> None:
    # The kernel hands quota to each CPU in 5 ms slices: a 10 ms quota split over two CPUs throttled one thread.
    assert [cpu_period_us(m) for m in (1768, 1769, 3008)] == [10_000, 100_000, 100_000]
    assert [cpu_quota_us(m) for m in (1769, 3008)] == [100_000, 170_039]


def test_a_pools_weight_follows_the_scheduler_nice_levels() -> None:
    assert [nice_weight(n) for n in (-10, -5, 0, 5, 10, 19)] == [9537, 3125, 1024, 336, 110, 15]


@fanflow.task
def frozen_objects(load: str) -> int:
    """How many objects the collector skips in this worker process, after importing ``load``."""
    import gc
    import importlib

    importlib.import_module(load)
    return gc.get_freeze_count()


def test_a_warm_worker_keeps_its_imports_out_of_the_collectors_way(config: fanflow.Config) -> None:
    config = config.replace(max_workers=1, keep_alive_s=60)  # one process runs both
    module = "xml.dom.minidom"  # nothing of fanflow imports it: the first run loads it
    first = frozen_objects(module).compute(config)
    second = frozen_objects(module).compute(config)
    assert first > 10_000  # the worker's own imports, frozen before it said it was ready
    assert second > first  # and what the first run imported, frozen after it


@fanflow.task
def allocator_settings() -> dict[str, str]:
    """The glibc settings this process started with (its initial environment, as glibc read it)."""
    start = dict(v.split("=", 1) for v in Path("/proc/self/environ").read_text().split("\0") if "=" in v)
    return {k: v for k, v in start.items() if k.startswith("MALLOC_")}


def test_worker_processes_keep_freed_heap_sized_by_memory(
    config: fanflow.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    config = config.replace(max_workers=1, keep_alive_s=0, memory_mb=1024)  # a pool of its own, this environment
    settings = allocator_settings().compute(config)
    assert settings["MALLOC_MMAP_MAX_"] == "0"  # no block is unmapped when freed
    assert settings["MALLOC_TRIM_THRESHOLD_"] == str(256 << 20)  # a quarter of the worker's memory


@fanflow.task
def refaults(mb: int) -> list[int]:
    """Minor page faults of making and dropping an ``mb`` MB buffer, three times in a row."""
    import resource

    faults = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = bytearray(mb << 20)
        buffer[::4096] = b"x" * len(buffer[::4096])  # every page written
        del buffer
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


def test_a_worker_reuses_the_pages_of_a_freed_100_mb_buffer(
    config: fanflow.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    config = config.replace(max_workers=1, keep_alive_s=0, memory_mb=1024)
    first, *again = refaults(100).compute(config)
    assert first > 20_000  # 25,600 pages of 4 KB, touched for the first time
    # glibc's default mmaps a block this size and unmaps it when freed: 25,600 faults each time
    assert max(again) < 1_000


def test_allocator_settings_of_the_pools_environment_win(
    config: fanflow.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    config = config.replace(max_workers=1, keep_alive_s=0)  # a pool of its own, started with this environment
    settings = allocator_settings().compute(config)
    assert settings["MALLOC_TRIM_THRESHOLD_"] == "131072"
    assert settings["MALLOC_MMAP_MAX_"] == "0"


@fanflow.task
def napping(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


def test_prewarm_has_a_worker_of_the_planned_memory_ready(config: fanflow.Config) -> None:
    from fanflow.client.hooks import OnPlanned
    from fanflow.client.session import session

    dag = DAG.from_sinks([inc(napping(1, 1.5))])
    dag.annotations[1] = {"memory_mb": 1024, "prewarm_s": 0.05}
    captured: list[str] = []
    (value,) = session().execute(dag, config, hooks=[OnPlanned(lambda r: captured.append(r.run_id))])
    assert value == 2
    events = open_metadata(config.metadata).load_run(captured[0]).events
    assert any(e["kind"] == "prewarmed" and e["task"] == 1 and e["memory_mb"] == 1024 for e in events)
    started = {e["worker"]: e for e in events if e["kind"] == "worker_started"}
    ran = {e["task"]: e["worker"] for e in events if e["kind"] == "task_finished"}
    assert started[ran[1]]["memory_mb"] == 1024
    assert started[ran[1]]["cold"] is False  # the prewarmed process was up before the task needed it


def test_preload_fetches_finished_inputs_while_the_planned_worker_is_busy(config: fanflow.Config) -> None:
    from fanflow.client.hooks import OnPlanned
    from fanflow.client.session import session

    slow, quick = napping(1, 1.5), inc(5)
    dag = DAG.from_sinks([add(slow, quick)])
    order = {id(n): t for t, n in enumerate(dag.nodes or [])}
    s, q, fan_in = order[id(slow)], order[id(quick)], dag.sinks[0]
    dag.annotations.update({s: {"worker": "A"}, q: {"worker": "B"}, fan_in: {"worker": "A", "preload": True}})
    captured: list[str] = []
    (value,) = session().execute(dag, config, hooks=[OnPlanned(lambda r: captured.append(r.run_id))])
    assert value == 7
    events = open_metadata(config.metadata).load_run(captured[0]).events
    (preloaded,) = [e for e in events if e["kind"] == "preloaded"]
    assert preloaded["task"] == fan_in and preloaded["inputs"] == [q] and preloaded["bytes"] > 0
    finished = {e["task"]: e for e in events if e["kind"] == "task_finished"}
    assert finished[fan_in]["fetch_s"] == 0  # nothing left to fetch when it started


# -- a dispatcher that never waits on one worker --------------------------------------------------
@fanflow.task
def leaves_hanging(pid_file: str, sibling: str, seen: str) -> int:
    """Closes its worker process's pipe to the pool, leaving a thread that keeps the process from exiting
    until ``sibling`` exists (a minute at most), then writes ``seen``: a worker that hangs on its way out.
    Only the first time: its redelivery just returns."""
    if Path(pid_file).exists():
        return 1

    def linger() -> None:
        with contextlib.suppress(TimeoutError):
            wait_until(Path(sibling).exists, 60, "the sibling invocation")
            Path(seen).write_text("the sibling ran while this process was on its way out")

    threading.Thread(target=linger).start()  # not a daemon: the interpreter waits for it as it exits
    Path(pid_file).write_text(str(os.getpid()))
    # The pool sees the pipe close now; the worker then reads end of file from /dev/null and exits.
    os.dup2(os.open(os.devnull, os.O_RDWR), int(sys.argv[1]))
    return 1


@fanflow.task
def touch(path: str) -> int:
    Path(path).write_text("ran")
    return 2


def _started_pool(redis_url: str, host_type: type[PoolHost] = PoolHost) -> tuple[PoolHost, threading.Thread]:
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    host = host_type(store, f"test-{uuid.uuid4().hex[:8]}", b"pool-secret", max_workers=2, idle_timeout_s=60)
    thread = threading.Thread(target=host.serve, daemon=True)
    thread.start()
    return host, thread


def _queue(redis_url: str, host: PoolHost, sink: fanflow.Node, memory_mb: int) -> Invocation:
    inv = dataclasses.replace(_invocation(redis_url, host, DAG.from_sinks([sink])), memory_mb=memory_mb)
    push(host.store, host.name, pack_entries([memory_mb], [sign(inv, b"pool-secret")]))
    return inv


def _output(host: PoolHost, inv: Invocation) -> Any:
    return host.store.get_many([keys.output(inv.run_id, 0)])[0]


def _done(host: PoolHost, inv: Invocation) -> list[Any]:
    """The invocation's output in a list once it is stored, else an empty list."""
    return [v for v in _output(host, inv) if v is not MISSING]


def _close(host: PoolHost, thread: threading.Thread, pids: list[int]) -> None:
    """Close the pool, then check that no worker process (``pids``, and any it still knows) is left."""
    pids = pids + [w.proc.pid for w in host._workers if w.proc is not None]
    host.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_worker_hanging_on_its_way_out_does_not_hold_up_the_others(redis_url: str, tmp_path: Path) -> None:
    host, thread = _started_pool(redis_url)
    pid_file, sibling, seen = (str(tmp_path / n) for n in ("pid", "sibling", "seen"))
    try:
        host.prewarm(256)
        host.prewarm(512)
        wait_until(lambda: sum(w.ready for w in host._workers) == 2, 60, "two warm workers")
        hanging = _queue(redis_url, host, leaves_hanging(pid_file, sibling, seen), 256)
        wait_until(lambda: _output(host, hanging) == [1], 30, "the hanging worker's task to finish")
        # Its process lingers (up to LOST_GRACE_S) after its pipe closed. The other worker takes the next
        # invocation meanwhile: a dispatcher that waited for the lingering process to exit would kill it
        # first, and it would never see the sibling's file.
        other = _queue(redis_url, host, touch(sibling), 512)
        wait_until(lambda: Path(seen).exists(), 30, "the lingering process to see the sibling run")
        # the sibling's file is written by its task, before its worker stores the output
        wait_until(lambda: _output(host, other) == [2], 30, "the other worker's task to be stored")
        # Its process exited on its own, so its invocation is redelivered once, as any lost one.
        wait_until(lambda: host.stats["redelivered"] == 1, 30, "the lost invocation to be redelivered")
        wait_until(lambda: not host._burying and host.free_slots() == 2, 30, "the lost worker's slot to free up")
        assert host.stats["crashed"] == 1
    finally:
        _close(host, thread, [int(Path(pid_file).read_text())] if Path(pid_file).exists() else [])


@fanflow.task
def wait_for(path: str) -> int:
    """1, once ``path`` exists."""
    while not Path(path).exists():
        time.sleep(0.01)
    return 1


class _CountsHeldAtPublish(PoolHost):
    """Records how many entries the host holds each time its popper publishes the pool's free slots."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held_at_publish: list[int] = []

    def _publish_capacity(self) -> None:
        if threading.current_thread() is self._popper:
            self.held_at_publish.append(self._held)
        super()._publish_capacity()


def test_entries_pushed_together_onto_an_empty_queue_are_taken_together(redis_url: str) -> None:
    """A run's roots come in one push; the popper, blocked on the empty queue, took only the first, and
    the free slots it published next counted the second's slot as free (its worker shed work to it)."""
    host, thread = _started_pool(redis_url, _CountsHeldAtPublish)
    assert isinstance(host, _CountsHeldAtPublish)
    try:
        wait_until(lambda: host.store.client.exists(pool_module.host_alive_key(host.name, host.host_id)), 30, "a beat")
        time.sleep(3 * pool_module.POP_TIMEOUT_S)  # the popper blocks on the empty queue
        inv = _invocation(redis_url, host, DAG.from_sinks([inc(1)]), running=False)  # its workers run nothing
        payloads = [sign(dataclasses.replace(inv, inv_id=new_invocation_id()), b"pool-secret") for _ in range(2)]
        push(host.store, host.name, pack_entries([256, 256], payloads))
        wait_until(lambda: host.held_at_publish, 30, "the popper to take them")
        assert host.held_at_publish[0] == 2
    finally:
        _close(host, thread, [])


def test_a_worker_busy_with_a_run_that_ended_counts_as_free_for_the_next_run(redis_url: str, tmp_path: Path) -> None:
    """The worker that ran a run's last task still sends its events when the client has the result."""
    host, thread = _started_pool(redis_url)
    release = tmp_path / "release"
    try:
        inv = _queue(redis_url, host, wait_for(str(release)), 256)
        # A worker holds it (not only the host's inbox: between the inbox and a worker the count
        # briefly reads 2, a hint's staleness, which this test is not about).
        wait_until(lambda: any(w.payload is not None for w in list(host._workers)), 60, "a worker to take it")
        assert host.free_slots(ending=True) == 1  # its run is running: the worker is busy
        host.store.set_status(keys.status(inv.run_id), SUCCEEDED, 60)
        assert host.free_slots() == 1
        assert host.free_slots(ending=True) == 2  # its run ended: idle in a moment
        assert ProcessesPlatform(redis_url, host.name, host).free_slots() == 2
    finally:
        release.write_text("go")
        _close(host, thread, [])


@fanflow.task
def my_pid() -> int:
    return os.getpid()


@fanflow.task
def started_then_wait_for(started: str, path: str) -> int:
    """Writes ``started``, then 1 once ``path`` exists."""
    Path(started).write_text("started")
    while not Path(path).exists():
        time.sleep(0.01)
    return 1


def _a_run_ending_beside_an_idle_worker(
    redis_url: str, host: PoolHost, tmp_path: Path, release: Path
) -> tuple[Any, Invocation]:
    """A worker in a task of a run that has just ended (until ``release`` exists), an idle worker beside it,
    and the next run's invocation queued: the busy worker and that invocation."""
    started = tmp_path / "started"
    ending = _queue(redis_url, host, started_then_wait_for(str(started), str(release)), 256)
    # in its task: a worker skips the tasks of a run that ended before it started them
    wait_until(started.exists, 60, "a worker to start its task")
    (busy,) = [w for w in host._workers if w.payload is not None]
    assert busy.proc is not None
    host.prewarm(256)
    wait_until(lambda: sum(w.ready and w.payload is None for w in list(host._workers)) == 1, 60, "an idle worker")
    host.store.set_status(keys.status(ending.run_id), SUCCEEDED, 60)
    return busy, _queue(redis_url, host, my_pid(), 256)


@fanflow.task
def held_heap(mb: int, gate: str) -> int:
    """Writes ``mb`` MB of heap and frees it (the process keeps the pages), then returns once ``gate`` exists."""
    buffer = bytearray(mb << 20)
    del buffer
    while not Path(gate).exists():
        time.sleep(0.01)
    return os.getpid()


def test_an_idle_worker_grows_to_the_peak_of_its_pools_largest(redis_url: str, tmp_path: Path) -> None:
    """The pool's processes are interchangeable: while none runs, the one that never held much memory writes
    as much heap as the other's peak, so a run that gives it the biggest share reuses pages."""
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc to read resident memory from")
    host, thread = _started_pool(redis_url)
    gate = tmp_path / "gate"
    try:
        big = _queue(redis_url, host, held_heap(160, str(gate)), 1024)
        wait_until(lambda: any(w.payload is not None and w.ready for w in list(host._workers)), 60, "a worker")
        small = _queue(redis_url, host, my_pid(), 1024)  # the first is busy: a second process
        (small_pid,) = wait_until(lambda: _done(host, small), 60, "the second worker's task")
        resident_before = protocol.memory_bytes(small_pid)[0]
        gate.write_text("open")
        (big_pid,) = wait_until(lambda: _done(host, big), 60, "the first worker's task")
        assert big_pid != small_pid
        peak = protocol.memory_bytes(big_pid)[1]
        assert peak > resident_before + (128 << 20)
        # asked for at most half its trim threshold (a quarter of 1024 MB) at once
        target = min(peak, resident_before + (128 << 20)) - protocol.GROW_MIN_BYTES
        wait_until(lambda: protocol.memory_bytes(small_pid)[0] >= target, 30, "the idle worker to grow")
    finally:
        gate.write_text("open")
        _close(host, thread, [])


def test_a_new_run_waits_for_the_worker_whose_run_just_ended(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the pool's other, idle worker: the ending one is idle a few ms later and warm for the next run."""
    monkeypatch.setattr(pool_module, "WAIT_FOR_ENDING_S", 30.0)  # no deadline in this test: it waits as long as needed
    host, thread = _started_pool(redis_url)
    release = tmp_path / "release"
    try:
        busy, following = _a_run_ending_beside_an_idle_worker(redis_url, host, tmp_path, release)
        time.sleep(0.3)
        assert all(w.payload is None for w in list(host._workers) if w is not busy)  # not sent to the idle one
        release.write_text("go")
        wait_until(lambda: _output(host, following) != [MISSING], 60, "the next run's invocation")
        assert _output(host, following) == [busy.proc.pid]
    finally:
        release.write_text("go")
        _close(host, thread, [])


def test_the_wait_for_an_ending_worker_has_a_deadline(redis_url: str, tmp_path: Path) -> None:
    """A worker still in a long task of an ended run (one that failed, say) makes a new run wait
    WAIT_FOR_ENDING_S once, not for that task."""
    host, thread = _started_pool(redis_url)
    release = tmp_path / "release"
    try:
        busy, following = _a_run_ending_beside_an_idle_worker(redis_url, host, tmp_path, release)
        wait_until(lambda: _output(host, following) != [MISSING], 30, "the next run's invocation on the idle worker")
        assert _output(host, following) != [busy.proc.pid]
    finally:
        release.write_text("go")
        _close(host, thread, [])


def test_a_run_reads_the_status_of_a_busy_run_once_however_many_invocations_it_has(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared pool dispatching another run's invocations beside a busy worker reads that worker's run
    status for the first of them only (it was one GET per dispatch)."""
    host, thread = _started_pool(redis_url)
    release, started = tmp_path / "release", tmp_path / "started"
    try:
        busy = _queue(redis_url, host, started_then_wait_for(str(started), str(release)), 256)
        wait_until(started.exists, 60, "a worker to start its task")
        host.prewarm(256)
        wait_until(lambda: sum(w.ready and w.payload is None for w in list(host._workers)) == 1, 60, "an idle worker")
        reads: list[str] = []
        read = host.store.get_status
        monkeypatch.setattr(host.store, "get_status", lambda key: reads.append(key) or read(key))
        paths = [tmp_path / f"ran-{i}" for i in range(6)]
        first = _invocation(redis_url, host, DAG.from_sinks([touch(str(p)) for p in paths]))
        invs = [dataclasses.replace(first, start=(i,), inv_id=new_invocation_id()) for i in range(len(paths))]
        # one at a time, each after the last ran: every one is dispatched beside the busy worker
        for inv, path in zip(invs, paths, strict=True):
            push(host.store, host.name, pack_entries([256], [sign(inv, b"pool-secret")]))
            wait_until(path.exists, 60, f"invocation {inv.start} to run")
        assert reads.count(keys.status(busy.run_id)) == 1
    finally:
        release.write_text("go")
        _close(host, thread, [])


@fanflow.task
def size_of(blob: bytes) -> int:
    return len(blob)


def test_a_widened_pipe_takes_a_payload_of_its_room_with_nobody_reading() -> None:
    """The dispatcher writes a payload up to ``widen``'s room itself: the write must never wait for the
    worker. A real-size tree's root payload (79 KB with its DAG inline) must fit, whatever the host's
    socket defaults (with ~200 KB of default buffer, half of it is left)."""
    ours, theirs = multiprocessing.Pipe()
    with ours, theirs:
        room = widen(ours)
        assert room >= 100 * 1024
        os.set_blocking(ours.fileno(), False)  # a write that would wait raises BlockingIOError instead
        ours.send_bytes(b"x" * room)
        assert len(theirs.recv_bytes()) == room


def test_a_large_payload_to_a_frozen_worker_does_not_hold_up_the_others(redis_url: str, tmp_path: Path) -> None:
    host, thread = _started_pool(redis_url)
    try:
        host.prewarm(256)
        host.prewarm(512)
        wait_until(lambda: sum(w.ready for w in host._workers) == 2, 60, "two warm workers")
        (frozen,) = [w for w in host._workers if w.memory_mb == 256]
        assert frozen.proc is not None
        os.kill(frozen.proc.pid, signal.SIGSTOP)  # idle and never reading its pipe: a stalled process
        try:
            # The DAG travels inline, so this payload is larger than the pipe's buffer: writing it
            # waits for the frozen worker, and must not make the other invocation wait too.
            large = _queue(redis_url, host, size_of(b"x" * (1 << 20)), 256)
            wait_until(lambda: frozen.payload is not None, 30, "the large payload to go to the frozen worker")
            other = _queue(redis_url, host, touch(str(tmp_path / "other")), 512)
            wait_until(lambda: _output(host, other) == [2], 30, "the other worker's invocation")
        finally:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        wait_until(lambda: _output(host, large) == [1 << 20], 60, "the thawed worker's invocation")
    finally:
        _close(host, thread, [])


class _StuckLaunches(PoolHost):
    """A pool whose launches of 512 MB workers block until ``unblock`` is set: a fork or exec stuck on
    a loaded machine (the process itself is real and starts once unblocked)."""

    unblock = threading.Event()

    def _launch(self, worker: Any, theirs: Any, prewarmed: bool) -> None:
        if worker.memory_mb == 512:
            self.unblock.wait(60)
        super()._launch(worker, theirs, prewarmed)


def test_a_stuck_cold_start_does_not_hold_up_a_warm_worker(redis_url: str, tmp_path: Path) -> None:
    _StuckLaunches.unblock.clear()
    host, thread = _started_pool(redis_url, _StuckLaunches)
    try:
        host.prewarm(256)
        wait_until(lambda: any(w.ready for w in host._workers), 60, "a warm worker")
        cold = _queue(redis_url, host, touch(str(tmp_path / "cold")), 512)
        wait_until(lambda: len(host._workers) == 2, 30, "the cold start to begin")
        warm = _queue(redis_url, host, touch(str(tmp_path / "warm")), 256)
        wait_until(lambda: _output(host, warm) == [2], 30, "the warm worker's invocation")
        # The warm worker's slot frees (it replies after storing its output); the launching one's stays taken.
        wait_until(lambda: host.free_slots() == 1, 30, "the warm worker to reply")
        assert _output(host, cold) != [2] and len(host._workers) == 2
        _StuckLaunches.unblock.set()
        wait_until(lambda: _output(host, cold) == [2], 60, "the cold worker's invocation")
        assert host.stats["cold_starts"] == 2
    finally:
        _StuckLaunches.unblock.set()
        _close(host, thread, [])


def test_a_worker_that_cannot_be_launched_fails_its_run_and_frees_its_slot(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host, thread = _started_pool(redis_url)
    try:
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
        inv = _queue(redis_url, host, touch(str(tmp_path / "never")), 256)
        errors = wait_until(lambda: host.store.client.lrange(keys.errors(inv.run_id), 0, -1), 30, "the run to be told")
        assert b"cannot start a worker process" in errors[0]
        wait_until(lambda: host.free_slots() == 2 and not host._workers, 30, "the slot to free up")
        assert not (tmp_path / "never").exists()
    finally:
        monkeypatch.undo()
        _close(host, thread, [])


def test_a_worker_holds_notifications_that_claim_only_what_it_keeps_while_a_slot_is_idle(
    config: fanflow.Config,
) -> None:
    """One label over the whole DAG: its roots start in one worker and the pool's other slot stays idle all
    run. Each task's one dependent stays in this worker whatever it is told, so an idle slot is no reason to
    notify task by task: the notifications go in batches (a real-size tree's last worker notified each of
    its last tasks alone once the other had ended, at nearly twice the CPU)."""
    total([inc(i) for i in range(4)]).compute(config)  # both processes warm
    dag = DAG.from_sinks([total([inc(inc(i)) for i in range(60)])])
    for t in range(len(dag)):
        dag.annotations[t] = {"worker": "A"}
    captured: list[str] = []
    values = session().execute(dag, config, hooks=[OnPlanned(lambda r: captured.append(r.run_id))])
    assert values[0] == sum(range(2, 62))
    drain()
    events = open_metadata(config.metadata).load_run(captured[0]).events
    finished = [e for e in events if e["kind"] == "task_finished" and dag.name(e["task"]).startswith("inc")]
    assert len(finished) == 120 and len({e["worker"] for e in finished}) == 1
    held = [e for e in finished if e.get("held")]
    assert len(held) >= 100, len(held)  # all but the last of each batch (one per function, per 50 ms)


def test_a_warm_process_decodes_a_dag_shipped_again_only_once() -> None:
    """A plan run again ships the same encoded DAG (the real-size tree's 2,047 tasks: 5.5 ms to decode per
    worker per run, before its first task): a later run takes the DAG an earlier one decoded."""
    tree, other = encode(DAG.from_sinks([add(inc(1), inc(2))])), encode(DAG.from_sinks([inc(5)]))
    first = Invocation(
        run_id="shipped-1",
        start=(0,),
        memory_mb=256,
        store_url="memory://shipped",
        platform="processes",
        platform_options={},
        settings=WorkerSettings(key_ttl_s=60, lease_ms=30_000, max_value_bytes=1 << 20),
        dag=tree,
    )
    with worker_module._dags_lock:
        saved = dict(worker_module._dags), dict(worker_module._decoded)
    try:
        decoded = worker_module._dag_for(first, None)
        again = worker_module._dag_for(dataclasses.replace(first, run_id="shipped-2", dag=bytes(bytearray(tree))), None)
        assert again is decoded
        assert worker_module._dags["shipped-1"] is worker_module._dags["shipped-2"]
        changed = worker_module._dag_for(dataclasses.replace(first, run_id="shipped-3", dag=other), None)
        assert changed is not decoded and changed is not None and len(changed) == 1
        assert decoded is not None and len(decoded) == 3
    finally:
        with worker_module._dags_lock:
            for kept, before in zip((worker_module._dags, worker_module._decoded), saved, strict=True):
                kept.clear()
                kept.update(before)


def test_a_new_run_in_a_process_drops_the_dags_of_runs_that_ended() -> None:
    """A warm worker process kept the last 16 decoded DAGs, so its oldest collector generation grew run
    after run, and full collections traversed them all (4-5 ms of CPU per worker, a 2,047-task tree's DAGs)."""
    store = open_store(f"memory://dags-{uuid.uuid4().hex[:6]}")
    store.set_status(keys.status("ended"), "succeeded", 60)
    store.set_status(keys.status("live"), RUNNING, 60)
    dag = DAG.from_sinks([inc(1)])
    with worker_module._dags_lock:
        saved = dict(worker_module._dags)
        worker_module._dags.clear()
        worker_module._dags.update({"ended": dag, "live": dag, "next": dag})
    try:
        drop_ended_runs("next", store)
        assert list(worker_module._dags) == ["live", "next"]  # a run still running keeps its DAG
    finally:
        with worker_module._dags_lock:
            worker_module._dags.clear()
            worker_module._dags.update(saved)


def _kinds(store: RedisStore, run_id: str) -> list[str]:
    return [event["kind"] for _, event in store.read_events(keys.events(run_id))]


def _running(store: RedisStore, redis_url: str, dag: DAG) -> Invocation:
    """An invocation of a new run of ``dag`` (marked running), for a worker of the processes platform."""
    return _new_run(store, redis_url, "answers", dag)


def test_a_worker_says_it_is_done_before_its_last_events_go(redis_url: str) -> None:
    """So that its process's next invocation comes while they are written: a pool's queued invocation reached
    the process 1.3-1.6 ms (median) after the worker before it stopped, that write's round trip among them."""
    store = open_store(redis_url, secret=b"pool-secret")
    assert isinstance(store, RedisStore)
    dag = DAG.from_sinks([inc(inc(inc(1)))])  # a chain: nothing for another worker
    inv = _running(store, redis_url, dag)
    (sink,) = (t for t in range(len(dag)) if dag.is_sink(t))
    seen: list[tuple[list[str], Any]] = []

    def done() -> None:
        seen.append((_kinds(store, inv.run_id), store.get_many([keys.output_of(inv.run_id, dag, sink)])[0][0]))

    report = worker_module.handle(sign(inv, b"pool-secret"), secret=b"pool-secret", done=done)
    ((kinds_then, result),) = seen  # told once
    assert report["tasks"] == 3 and result == 4  # the run's work was all done, and stored, when it was told
    assert "worker_stopped" not in kinds_then  # but its last events had not gone yet
    assert _kinds(store, inv.run_id).count("worker_stopped") == 1  # they go before handle() returns


def test_a_worker_that_runs_nothing_is_not_told_done(redis_url: str) -> None:
    """Told only by a loop that ran: a worker whose run ended before it began answers once it returns."""
    store = open_store(redis_url, secret=b"pool-secret")
    assert isinstance(store, RedisStore)
    inv = _running(store, redis_url, DAG.from_sinks([inc(1)]))
    store.set_status(keys.status(inv.run_id), SUCCEEDED, 60)
    told: list[bool] = []
    report = worker_module.handle(sign(inv, b"pool-secret"), secret=b"pool-secret", done=lambda: told.append(True))
    assert report["tasks"] == 0 and not told


def test_a_worker_process_answers_each_invocation_once(redis_url: str) -> None:
    """DONE as its loop ends, and no second reply after the invocation's last events: two invocations, two
    replies, and a refused one, one more."""
    store = open_store(redis_url, secret=b"pool-secret")
    assert isinstance(store, RedisStore)
    ours, theirs = multiprocessing.Pipe()
    setup = {"secret": b"pool-secret", "log_level": 30, "prewarmed": True, "capacity_fd": None}
    serving = threading.Thread(target=entry_module.serve_pipe, args=(theirs,), daemon=True)
    with ours, theirs:
        ours.send_bytes(pickle.dumps(setup))
        serving.start()
        assert ours.recv_bytes() == protocol.READY
        runs = [_running(store, redis_url, DAG.from_sinks([inc(n)])) for n in (1, 2)]
        for inv in runs:
            ours.send_bytes(sign(inv, b"pool-secret"))
        ours.send_bytes(sign(runs[0], b"another secret"))
        replies = [ours.recv_bytes(), ours.recv_bytes(), ours.recv_bytes()]
        assert replies == [protocol.DONE, protocol.DONE, protocol.REFUSED]
        ours.send_bytes(b"")  # stop
        serving.join(timeout=30)
        assert not serving.is_alive()
        assert not ours.poll()  # nothing more was said
    assert [store.get_many([keys.output(inv.run_id, 0)])[0][0] for inv in runs] == [2, 3]
