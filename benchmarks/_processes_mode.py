"""``tree_reduction.py --mode processes``: fanflow on processes + Redis against Dask distributed.

Both systems get two single-threaded worker processes on this machine: fanflow a
pool of 2 worker processes scheduling each other through a private
``redis-server``, Dask a ``LocalCluster(n_workers=2, threads_per_worker=1)``.
Cluster and pool start-up are excluded from the warm timings (each side does one
warm-up run); fanflow's cold time, a client-started pool whose two workers are
spawned inside the run, is printed too.

Redis commands per task come from ``INFO commandstats`` over the timed warm runs
(``CONFIG RESETSTAT`` first): *all* counts every command, including those Lua
scripts run inside; *sent* counts what clients send, an ``EVALSHA`` once.

It also prints the DAG encoding size and decode time of a 512-leaf tree.
Targets: fanflow warm <= 0.5x Dask distributed, <= 3 commands sent per task,
encoding <= 40 KB and decode <= 2 ms.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from _redis import redis_server

import fanflow
from fanflow.dag.encoding import decode, encode
from fanflow.dag.graph import DAG
from fanflow.platforms.processes.pool import PoolHost
from fanflow.store import open_store
from fanflow.store.redis import SCRIPT_ONLY_COMMANDS, RedisStore


def command_counts(client: redis.Redis) -> tuple[int, int, int]:
    """(all calls, calls of script-only commands, calls of SET) since the last CONFIG RESETSTAT."""
    stats: dict[str, Any] = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    calls.pop("info", None)
    return sum(calls.values()), sum(calls.get(c, 0) for c in SCRIPT_ONLY_COMMANDS), calls.get("set", 0)


def dag_encoding(build_tree: Callable[..., Any], inc: Callable[[int], int], add: Callable[[int, int], int]) -> None:
    sink = build_tree(512, fanflow.task(inc), fanflow.task(add))
    data = encode(DAG.from_sinks([sink]))
    decode(data)
    began = time.perf_counter()
    rounds = 50
    for _ in range(rounds):
        decode(data)
    decode_ms = (time.perf_counter() - began) / rounds * 1e3
    print(
        f"DAG encoding, 512-leaf tree ({2 * 512 - 1} tasks): {len(data) / 1024:.1f} KB (target <= 40), "
        f"decode {decode_ms:.2f} ms (target <= 2)"
    )


def processes(
    n: int,
    repeat: int,
    build_tree: Callable[..., Any],
    inc: Callable[[int], int],
    add: Callable[[int, int], int],
) -> None:
    """Print fanflow processes+redis vs Dask distributed for a tree reduction of ``n`` leaves."""
    from dask.distributed import Client, LocalCluster

    ntasks = 2 * n - 1
    expected = sum(range(1, n + 1))
    # First, in a process as clean as a worker's: decoding after Dask's cluster has filled the heap
    # measures the garbage collector, not the decoder.
    dag_encoding(build_tree, inc, add)
    with redis_server() as url:
        store = open_store(url)
        assert isinstance(store, RedisStore)
        finc, fadd = fanflow.task(inc), fanflow.task(add)
        base = dict(platform="processes", store=url, max_workers=2, progress=False, metadata="none")
        # Cold: the client starts its own pool inside the run (2 cold starts included).
        began = time.perf_counter()
        if build_tree(n, finc, fadd).compute(fanflow.Config(**base)) != expected:
            raise SystemExit("fanflow (cold) computed a wrong value")
        cold_s = time.perf_counter() - began

        # Warm: a long-lived pool, as `fanflow worker-pool` runs it.
        secret = secrets.token_hex(16)
        host = PoolHost(store, "bench", secret.encode(), max_workers=2, idle_timeout_s=600, advertise=True)
        server = threading.Thread(target=host.serve, daemon=True)
        server.start()
        time.sleep(0.3)  # the pool advertises itself
        warm_cfg = fanflow.Config(**base, pool="bench", secret=secret)
        build_tree(n, finc, fadd).compute(warm_cfg)  # warm-up: both workers started, DAG cached
        store.client.config_resetstat()
        ours: list[float] = []
        for _ in range(repeat):
            sink = build_tree(n, finc, fadd)
            began = time.perf_counter()
            if sink.compute(warm_cfg) != expected:
                raise SystemExit("fanflow (warm) computed a wrong value")
            ours.append(time.perf_counter() - began)
        all_calls, script_only, sets = command_counts(store.client)
        host.stop()
        server.join(timeout=30)
        print(f"pool: {host.stats}")

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        import dask

        dinc, dadd = dask.delayed(inc), dask.delayed(add)
        build_tree(n, dinc, dadd).compute()  # warm-up
        theirs: list[float] = []
        for _ in range(repeat):
            sink = build_tree(n, dinc, dadd)
            began = time.perf_counter()
            if client.compute(sink).result() != expected:
                raise SystemExit("dask computed a wrong value")
            theirs.append(time.perf_counter() - began)

    runs = repeat
    # Claim scripts call SET at least once per task with upstreams (the claim, when its set completes);
    # claim-or-store scripts also SET outputs they store. Subtracting only the first kind keeps the
    # "sent" figure an upper bound.
    script_sets = (ntasks - n) * runs
    sent = all_calls - script_only - min(sets, script_sets)
    print(f"tree reduction on 2 worker processes: N={n} leaves, {ntasks} tasks, best of {repeat}")
    print(f"{'system':<34}{'wall s':>9}{'us/task':>10}")
    print(f"{'fanflow processes+redis (cold)':<34}{cold_s:>9.3f}{cold_s / ntasks * 1e6:>10.1f}")
    print(f"{'fanflow processes+redis (warm)':<34}{min(ours):>9.3f}{min(ours) / ntasks * 1e6:>10.1f}")
    print(f"{'dask distributed LocalCluster':<34}{min(theirs):>9.3f}{min(theirs) / ntasks * 1e6:>10.1f}")
    print(f"ratio fanflow warm / dask distributed: {min(ours) / min(theirs):.2f}x (target <= 0.50x)")
    print(
        f"redis commands per task: at most {sent / (ntasks * runs):.2f} sent by clients (target <= 3), "
        f"{all_calls / (ntasks * runs):.2f} including those run inside Lua scripts"
    )
