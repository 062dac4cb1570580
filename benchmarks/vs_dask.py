"""fanflow against Dask, every workload of issue #12 in ONE table, each pair measured in the same run.

Sections (``--only`` picks some; all by default):

- ``embedded``: a tree reduction of 8,192 leaves (TR-8192, 16,383 tasks) on the
  embedded default (threads + memory store), history off and on (SQLite in a
  temp dir; each "on" run includes ``drain()``, the wait for the background
  history writer), against ``dask.delayed`` on the "sync" and "threads"
  schedulers; plus the history cost (on / off).
- ``processes``: 2 worker processes each side. fanflow: one private
  ``redis-server`` and a warm shared pool (``fanflow worker-pool --max-workers 2``);
  Dask: ``LocalCluster(n_workers=2, threads_per_worker=1)``, warm. Workloads:
  TR-1024, 400 x 10 ms sleeps summed (parallel efficiency = ideal 2.0 s / wall),
  GEMM 2000² in 500² chunks ``(x @ x.T).sum()``, TSQR 400,000x100 in 20 blocks
  ``da.linalg.svd(t)[1]``, ``svd_compressed`` of 4000² (1000² chunks) with k=5,
  all through ``fanflow.dask.get``, and the seven examples at their default size
  (their fanflow DAG turned into ``dask.delayed`` calls for Dask).
- ``client``: TR-1024 and GEMM on a *client-started* pool (no
  shared pool): its first ``compute()`` (cold starts inside) and its second one
  (kept warm, ``keep_alive_s``), against the shared warm pool.
- ``scale``: tree reductions of 1k, 4k, 16k and 64k tasks on the shared pool:
  microseconds per task, CPU microseconds per task (client, pool processes and
  redis-server: the measure that other load on the machine does not inflate) and
  the client's peak memory (each size in a fresh client process), with Dask
  distributed at 1k and 4k; 16k and 64k run ``--long-repeat`` times.
- ``cluster``: a tree reduction of 16k tasks on a 3-master Redis Cluster against
  one Redis (client-started pools of 2), tasks/s, and how the commands spread
  over the masters (``--long-repeat`` runs each, after a small warm-up).

Each pair takes turns within a repeat (the machine's load hits both alike); a
cell shows the median of ``--repeat`` timed runs and their spread [min-max],
after one warm-up each. The ratio is median over median. Targets from the issue:
GEMM, TSQR, svd_compressed <= 1.0x Dask distributed (aim 0.8x); TR <= 0.25x;
sleeps >= 90% parallel efficiency; history on <= 1.15x off; client-started
second compute <= 1.3x the shared pool; per-task cost from 1k to 64k <= 1.5x.

Run: ``python benchmarks/vs_dask.py [--repeat 3] [--only embedded,processes,client,scale,cluster]``;
``--workloads svd,sleeps`` keeps the processes workloads whose names contain one of the parts.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import fanflow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's launcher of a real Redis Cluster

from _redis import redis_server  # noqa: E402

SECRET = "vs-dask-benchmark-secret"
POOL = "vs-dask"
SECTIONS = ("embedded", "processes", "client", "scale", "cluster")
EXAMPLES = ("tree_reduction", "gemm", "wordcount", "image_transform", "svd1", "svd2", "text_analysis")
SCALE_TASKS = (1024, 4096, 16384, 65536)
CLIENT_WORKLOADS = ("TR-1024", "GEMM 2000² / 500")
"""The processes workloads also run on a client-started pool (each costs a cold pool start per repeat)."""


# -- the workloads -----------------------------------------------------------------------
def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def nap(i: int) -> int:
    time.sleep(0.01)
    return i


def total(parts: list[int]) -> int:
    return sum(parts)


def tree(leaves: int, leaf: Callable[[int], Any], combine: Callable[[Any, Any], Any]) -> Any:
    level = [leaf(i) for i in range(leaves)]
    while len(level) > 1:
        pairs = [combine(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + level[len(pairs) * 2 :]
    return level[0]


def gemm() -> Any:
    import dask.array as da

    x = da.random.random((2000, 2000), chunks=500)
    return (x @ x.T).sum()


def tsqr() -> Any:
    import dask.array as da

    return da.linalg.svd(da.random.random((400_000, 100), chunks=(20_000, 100)))[1]


def svd_compressed() -> Any:
    import dask.array as da

    return da.linalg.svd_compressed(da.random.random((4000, 4000), chunks=(1000, 1000)), k=5, seed=0)[1]


@functools.cache
def example(name: str) -> Any:
    from fanflow.cli.script import load_module

    return load_module(str(ROOT / "examples" / f"{name}.py"))


def example_sinks(name: str) -> list[fanflow.Node]:
    sinks = example(name).main([])
    return list(sinks) if isinstance(sinks, (list, tuple)) else [sinks]


def as_dask(sinks: list[fanflow.Node]) -> list[Any]:
    """The same calls as ``dask.delayed`` objects: each fanflow task becomes one Dask task."""
    import dask

    from fanflow.dag.graph import DAG
    from fanflow.dag.node import substitute

    dag = DAG.from_sinks(sinks)
    made: list[Any] = []
    for t in range(len(dag)):
        func = dask.delayed(dag.task(t).func, pure=False)
        values = [made[u] for u in dag.deps[t]]
        template, kwargs = dag.args[t], dag.kwargs[t]
        if template is None:
            made.append(func(*values))
        else:
            made.append(func(*substitute(template, values), **substitute(kwargs or {}, values)))
    return [made[s] for s in dag.sinks]


# -- measuring -------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    # Each run starts with no garbage of the run before (Dask's sync TR-8192 leaves enough to set off
    # a full collection in whichever run comes next: 32 in 7 of its own rounds); what a run allocates
    # itself is still collected inside it.
    gc.collect()
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def taking_turns(repeat: int, *runs: Callable[[], Any]) -> list[list[float]]:
    """One warm-up of each, then ``repeat`` rounds in which each runs once; wall times per run."""
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeat):
        for run, out in zip(runs, times, strict=True):
            out.append(timed(run))
    return times


def cell(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.median(xs):.3f} [{min(xs):.2f}-{max(xs):.2f}]"


@dataclass
class Row:
    section: str
    workload: str
    ours: list[float]
    peer: str
    theirs: list[float]
    target: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}x"
        print(
            f"{self.section} | {self.workload}: {cell(self.ours)} vs {self.peer} {cell(self.theirs)}",
            f"= {ratio} {self.note}",
            file=sys.stderr,
            flush=True,
        )  # progress, while the table waits for the last row

    @property
    def ratio(self) -> float | None:
        if not self.ours or not self.theirs:
            return None
        return statistics.median(self.ours) / statistics.median(self.theirs)


# -- backends ------------------------------------------------------------------------------------
@contextmanager
def shared_pool(url: str) -> Iterator[fanflow.Config]:
    """A ``fanflow worker-pool`` of 2 workers on ``url`` and the client config that uses it."""
    import redis

    env = {**os.environ, "FANFLOW_SECRET": SECRET}
    cmd = [shutil.which("fanflow") or "fanflow", "worker-pool", "--name", POOL, "--store", url, "--max-workers", "2"]
    cmd += ["--idle-timeout", "3600"]  # warm through Dask's turns, however long they take
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 60
        while not client.exists(f"ff:pool:{POOL}:alive"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the shared worker pool did not start")
            time.sleep(0.05)
        yield fanflow.Config(platform="processes", store=url, pool=POOL, secret=SECRET, progress=False, metadata="none")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def dask_cluster() -> Iterator[Any]:
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def processes_workloads() -> dict[str, tuple[Callable[[fanflow.Config], Any], Callable[[Any], Any], str]]:
    """name -> (run on fanflow with a config, run on a Dask client, target)."""
    import dask

    import fanflow.dask

    ftree = (fanflow.task(inc), fanflow.task(add))
    fnap, ftotal = fanflow.task(nap), fanflow.task(total)

    def on_fanflow(collection: Callable[[], Any]) -> Callable[[fanflow.Config], Any]:
        return lambda cfg: collection().compute(scheduler=fanflow.dask.get, config=cfg)

    def on_dask(collection: Callable[[], Any]) -> Callable[[Any], Any]:
        return lambda client: client.compute(collection()).result()

    work: dict[str, tuple[Callable[[fanflow.Config], Any], Callable[[Any], Any], str]] = {
        "TR-1024": (
            lambda cfg: tree(1024, *ftree).compute(cfg),
            lambda client: client.compute(tree(1024, dask.delayed(inc), dask.delayed(add))).result(),
            "<= 0.25x",
        ),
        "400 x 10 ms sleeps": (
            lambda cfg: ftotal([fnap(i) for i in range(400)]).compute(cfg),
            lambda client: client.compute(dask.delayed(total)([dask.delayed(nap)(i) for i in range(400)])).result(),
            ">= 90% efficiency",
        ),
        "GEMM 2000² / 500": (on_fanflow(gemm), on_dask(gemm), "<= 1.0x (0.8x)"),
        "TSQR 400k x 100 / 20": (on_fanflow(tsqr), on_dask(tsqr), "<= 1.0x (0.8x)"),
        "svd_compressed 4000² k=5": (on_fanflow(svd_compressed), on_dask(svd_compressed), "<= 1.0x (0.8x)"),
    }
    for name in EXAMPLES:
        work[f"example {name}"] = (
            lambda cfg, name=name: fanflow.compute(*example_sinks(name), config=cfg),
            lambda client, name=name: client.gather(client.compute(as_dask(example_sinks(name)))),
            "",
        )
    return work


# -- sections ------------------------------------------------------------------------------------
def embedded(repeat: int) -> list[Row]:
    import dask

    tmp = tempfile.mkdtemp(prefix="vs-dask-")
    off = fanflow.Config(progress=False, metadata="none")
    on = fanflow.Config(progress=False, metadata=f"sqlite:///{tmp}/metadata.db")
    ftree = (fanflow.task(inc), fanflow.task(add))
    dtree = (dask.delayed(inc), dask.delayed(add))
    n = 8192
    history_off, history_on, sync, threads = taking_turns(
        repeat,
        lambda: tree(n, *ftree).compute(off),
        lambda: (tree(n, *ftree).compute(on), fanflow.store.metadata.drain()),  # the history writer's work counts
        lambda: tree(n, *dtree).compute(scheduler="sync"),
        lambda: tree(n, *dtree).compute(scheduler="threads"),
    )
    fanflow.store.metadata.drain()
    shutil.rmtree(tmp, ignore_errors=True)
    return [
        Row("embedded", "TR-8192, history off", history_off, "dask sync", sync, "<= 0.5x"),
        Row("embedded", "TR-8192, history off", history_off, "dask threads", threads),
        Row("embedded", "TR-8192, history on + drain", history_on, "dask sync", sync),
        Row(
            "embedded", "TR-8192 history on + drain / off", history_on, "fanflow, history off", history_off, "<= 1.15x"
        ),
    ]


def processes(repeat: int, url: str, warm: fanflow.Config, client: Any, match: str) -> list[Row]:
    rows = []
    for name, (ours, theirs, target) in processes_workloads().items():
        if not any(m in name for m in match.split(",")):
            continue
        mine, peer = taking_turns(repeat, lambda ours=ours: ours(warm), lambda theirs=theirs: theirs(client))
        note = ""
        if "sleeps" in name:
            ideal = 400 * 0.01 / 2
            note = f"efficiency {ideal / statistics.median(mine):.0%} (dask {ideal / statistics.median(peer):.0%})"
        rows.append(Row("2 processes, warm", name, mine, "dask distributed", peer, target, note))
    return rows


def client_started(repeat: int, url: str, warm: fanflow.Config, client: Any) -> list[Row]:
    """First and second compute() on a fresh client-started pool, against the shared warm pool."""
    from fanflow.client.session import session

    started = fanflow.Config(platform="processes", store=url, max_workers=2, progress=False, metadata="none")
    rows = []
    for name, (ours, _, _) in processes_workloads().items():
        if name not in CLIENT_WORKLOADS:
            continue
        firsts, seconds, shared = [], [], []
        ours(warm)
        for _ in range(repeat):
            session().close_idle()  # the next compute() starts its pool: cold starts inside
            firsts.append(timed(lambda ours=ours: ours(started)))
            seconds.append(timed(lambda ours=ours: ours(started)))
            shared.append(timed(lambda ours=ours: ours(warm)))
        session().close_idle()
        rows.append(Row("client-started", f"{name}, 1st compute", firsts, "shared warm pool", shared))
        rows.append(Row("client-started", f"{name}, 2nd compute", seconds, "shared warm pool", shared, "<= 1.3x"))
    return rows


def scale(repeat: int, long_repeat: int, warm: fanflow.Config, client: Any) -> list[Row]:
    import dask

    rows = []
    per_task: dict[int, float] = {}
    cpu_per_task: dict[int, float] = {}
    tree(256, fanflow.task(inc), fanflow.task(add)).compute(warm)  # both worker processes started: no cold start
    for tasks in SCALE_TASKS:
        leaves = (tasks + 1) // 2
        n = 2 * leaves - 1
        samples = [_scale_child(leaves, warm) for _ in range(repeat if tasks <= 4096 else long_repeat)]
        walls = [s["wall"] for s in samples]
        per_task[tasks] = statistics.median(walls) / n * 1e6
        cpu = {part: statistics.median(s[part] for s in samples) / n * 1e6 for part in ("client", "pool", "redis")}
        cpu_per_task[tasks] = sum(cpu.values())
        theirs: list[float] = []
        if tasks <= 4096:
            dtree = (dask.delayed(inc), dask.delayed(add))

            def on_dask(leaves: int = leaves, dtree: tuple[Any, Any] = dtree) -> Any:
                return client.compute(tree(leaves, *dtree)).result()

            on_dask()
            theirs = [timed(on_dask) for _ in range(repeat)]
        peak = max(s["peak_mb"] for s in samples)
        growth = max(s["growth_mb"] for s in samples)
        note = (
            f"{per_task[tasks]:.0f} us/task; CPU {cpu_per_task[tasks]:.0f} us/task (client {cpu['client']:.0f}, "
            f"pool {cpu['pool']:.0f}, redis {cpu['redis']:.0f}); client peak RSS {peak:.0f} MB (+{growth:.0f})"
        )
        rows.append(Row("scale, warm pool", f"TR {n} tasks", walls, "dask distributed", theirs, "", note))
    low, high = SCALE_TASKS[0], SCALE_TASKS[-1]
    rows.append(Row("scale, warm pool", "us/task 64k / 1k", [per_task[high]], "us/task 1k", [per_task[low]], "<= 1.5x"))
    rows.append(
        Row("scale, warm pool", "CPU us/task 64k / 1k", [cpu_per_task[high]], "CPU us/task 1k", [cpu_per_task[low]])
    )
    return rows


def _cpu_of_tree(pid: int) -> float:
    """CPU seconds of process ``pid`` and its live children (the pool host and its worker processes)."""
    import psutil  # installed with dask.distributed

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # a worker that exited meanwhile
            continue
        total += times.user + times.system
    return total


def _scale_child(leaves: int, warm: fanflow.Config) -> dict[str, float]:
    """One tree reduction in a fresh client process: its wall time, memory, and the CPU seconds of the
    client, the pool's processes and the redis-server (load on the machine slows, but does not add, CPU)."""
    import redis

    server = redis.Redis.from_url(warm.store)
    pool_pid = int(server.get(f"ff:pool:{POOL}:alive") or 0)

    def redis_cpu() -> float:
        info = server.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    pool_before, redis_before = _cpu_of_tree(pool_pid), redis_cpu()
    cmd = [sys.executable, __file__, "--scale-child", str(leaves), warm.store]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=True)
    sample: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    sample["pool"] = _cpu_of_tree(pool_pid) - pool_before
    sample["redis"] = redis_cpu() - redis_before
    return sample


def scale_child(leaves: int, url: str) -> None:
    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    cfg = fanflow.Config(platform="processes", store=url, pool=POOL, secret=SECRET, progress=False, metadata="none")
    ftree = (fanflow.task(inc), fanflow.task(add))
    tree(2, *ftree).compute(cfg)  # imports and connections, outside the measurement
    before = rss_mb()
    began, cpu_began = time.perf_counter(), time.process_time()
    value = tree(leaves, *ftree).compute(cfg)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    if value != sum(range(1, leaves + 1)):
        raise SystemExit(f"tree reduction of {leaves} leaves computed {value}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "client": cpu, "peak_mb": peak, "growth_mb": max(0.0, peak - before)}))


def cluster(repeat: int, workdir: Path, url: str) -> list[Row]:
    import redis
    from support import start_cluster, stop

    from fanflow.client.session import session

    ports, procs = start_cluster(workdir)
    try:
        common: dict[str, Any] = {"platform": "processes", "max_workers": 2, "progress": False, "metadata": "none"}
        on_cluster = fanflow.Config(store=f"redis+cluster://127.0.0.1:{ports[0]}", **common)
        on_one = fanflow.Config(store=url, **common)
        ftree = (fanflow.task(inc), fanflow.task(add))
        leaves = 8192
        masters = [redis.Redis(port=p) for p in ports]
        for m in masters:
            m.config_resetstat()
        tree(64, *ftree).compute(on_cluster)  # both pools started and warm before the timed runs
        tree(64, *ftree).compute(on_one)
        ours, theirs = [], []
        for _ in range(repeat):
            ours.append(timed(lambda: tree(leaves, *ftree).compute(on_cluster)))
            theirs.append(timed(lambda: tree(leaves, *ftree).compute(on_one)))
        calls = []
        for m in masters:
            stats: dict[str, Any] = m.info("commandstats")
            calls.append(sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"))
        session().close_idle()
    finally:
        stop(procs)
    tasks = 2 * leaves - 1
    share = ", ".join(f"{c / sum(calls):.0%}" for c in calls)
    rate = f"{tasks / statistics.median(ours):,.0f} vs {tasks / statistics.median(theirs):,.0f} tasks/s"
    return [
        Row(
            "redis cluster",
            f"TR {tasks} tasks, 3 masters",
            ours,
            "one redis",
            theirs,
            "",
            f"{rate}; commands per master {share}",
        )
    ]


# -- the table -------------------------------------------------------------------------------------
def show(rows: list[Row], repeat: int) -> None:
    table = Table(
        "section",
        "workload",
        "fanflow s",
        "peer",
        "peer s",
        "ratio",
        "target",
        "note",
        title=f"fanflow vs Dask, same run, median [min-max] of {repeat}",
    )
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        table.add_row(r.section, r.workload, cell(r.ours), r.peer, cell(r.theirs), ratio, r.target, r.note)
    Console(width=240).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument(
        "--workloads", default="", help="comma-separated parts of processes workload names to run (default: all)"
    )
    parser.add_argument("--long-repeat", type=int, default=1, help="repeats of the 16k- and 64k-task runs")
    parser.add_argument("--scale-child", nargs=2, metavar=("LEAVES", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_child:
        scale_child(int(args.scale_child[0]), args.scale_child[1])
        return
    wanted = args.only.split(",")
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; pick from {', '.join(SECTIONS)}")
    rows: list[Row] = []
    if "embedded" in wanted:
        rows += embedded(args.repeat)
    if set(wanted) & {"processes", "client", "scale", "cluster"}:
        with ExitStack() as stack:
            url = stack.enter_context(redis_server())
            warm = stack.enter_context(shared_pool(url))
            client = stack.enter_context(dask_cluster())
            if "processes" in wanted:
                rows += processes(args.repeat, url, warm, client, args.workloads)
            if "client" in wanted:
                rows += client_started(args.repeat, url, warm, client)
            if "scale" in wanted:
                rows += scale(args.repeat, args.long_repeat, warm, client)
            if "cluster" in wanted:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vs-dask-cluster-")))
                rows += cluster(args.long_repeat, workdir, url)
    show(rows, args.repeat)


if __name__ == "__main__":
    main()
