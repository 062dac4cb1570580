"""Where an invocation's time goes, stage by stage, on processes, http and Redis Cluster.

Platforms (as ``benchmarks/platforms.py`` starts them): ``processes`` (a
client-started pool of 2 worker processes, one ``redis-server``), ``http`` (2
``fanflow gateway`` processes with 1 worker process each) and ``cluster`` (the
processes pool on a local 3-master Redis Cluster). Two workloads, each run once
to warm up (cold starts happen there) and then ``--runs`` times:

- ``one task``: a one-task run, i.e. the invocation path alone: client, queue,
  worker start, one task, the client's answer;
- ``tree 1024``: the 1,023-task tree reduction of ``examples/tree_reduction.py``,
  where a few invocations run many tasks each.

Every stage is read from the run's own events (``docs/metrics.md``), except
two that no event can carry, which are replayed against the same backend:

- *exit flush*: a worker writes its buffered events as it ends, after its last
  event. The benchmark writes each worker's recorded events again, as one batch
  of rows as the worker holds them (``Store.append_events`` of an ``EventRows``)
  to a scratch key of the same store, and times that;
- *reply*: the worker's ``DONE`` over its pipe to the pool, timed as half a
  round trip over a pipe to a child process (the same :mod:`multiprocessing.connection`
  framing as the pool's). The worker sends it as its loop ends, before the exit
  flush, so a pool's next invocation to that process waits for the flush in the pipe.

Stages per invocation (medians, ms):

- client start: ``submit()`` until the client invokes the roots (plan, DAG and
  status stored, the payload signed); ``one task`` only;
- queue/pickup: the invoker's ``invoked_at`` until the invocation reaches the
  worker's process: the client's free-slot query (on http one ``GET /healthz``
  per gateway, also shown apart, replayed), the queue push (or the HTTP request
  to a gateway and its push), the pool's popper and dispatcher, the pipe. An
  invocation a worker makes while every slot is busy also waits here;
- verify, DAG load, begin: ``verify_s``, ``dag_s``, ``begin_s`` of ``worker_started``;
- inputs, run, store/notify: ``fetch_s``, ``exec_s``, ``store_s`` of the
  worker's ``task_finished`` events, summed per invocation;
- loop other: the rest of the worker's span from ``worker_started`` to
  ``worker_stopped`` (events, status checks, continuing and shedding);
- exit flush, reply: replayed, as above;
- client answer: from the start of the sink's store/notify (the result is
  published within it, so the two overlap) until ``result()`` returns: the
  run's channel message, the result fetched; ``one task`` only;
- worker per task: the worker's span (inputs to loop other) per task it ran;
- total: ``submit()`` until ``result()`` returns, per run.

``--runs`` timed runs per workload; wall times on a loaded machine are noise:
compare the stages of one platform with each other, and platforms in the same run.

Run: ``python benchmarks/stages.py [--runs 30] [--platforms processes,http,cluster]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from multiprocessing.connection import Pipe
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import fanflow
from fanflow.cli.script import load_module
from fanflow.platforms.http import HttpPlatform
from fanflow.store import keys, open_store
from fanflow.store.events import EventRows, shape
from fanflow.store.metadata import drain, open_metadata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from platforms import ROOT, configs

PLATFORMS = ("processes", "http", "cluster")

INVOCATION_STAGES = (
    "client start",
    "queue/pickup",
    "of which: free-slot query",
    "verify",
    "DAG load",
    "begin",
    "inputs",
    "run",
    "store/notify",
    "loop other",
    "exit flush",
    "reply",
    "client answer",
    "worker per task",
)

_ECHO = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "with Connection(int(sys.argv[1])) as c:\n"
    "    while m := c.recv_bytes():\n"
    "        c.send_bytes(b'D')\n"
)


@fanflow.task
def inc(x: int) -> int:
    return x + 1


def _median(values: Iterable[float]) -> float | None:
    got = list(values)
    return statistics.median(got) if got else None


def _per_worker(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by[str(e["worker"])].append(e)
    return by


def invocation_stages(events: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The event-borne stages of each invocation (worker) of one run, in seconds."""
    out = []
    for evs in _per_worker(events).values():
        started = next((e for e in evs if e["kind"] == "worker_started"), None)
        stopped = next((e for e in evs if e["kind"] == "worker_stopped"), None)
        if started is None or stopped is None or "received_at" not in started:
            continue
        finished = [e for e in evs if e["kind"] == "task_finished"]
        fetch = sum(float(e.get("fetch_s") or 0.0) for e in finished)
        run = sum(float(e.get("exec_s") or 0.0) for e in finished)
        store = sum(float(e.get("store_s") or 0.0) for e in finished)
        begun = float(started["t"])
        # invoked_at: the worker's start (after verify and DAG load) less its recorded latency
        invoked_at = begun - float(started["begin_s"]) - float(started["latency_s"])
        out.append(
            {
                "queue/pickup": float(started["received_at"]) - invoked_at,
                "verify": float(started["verify_s"]),
                "DAG load": float(started["dag_s"]),
                "begin": float(started["begin_s"]),
                "inputs": fetch,
                "run": run,
                "store/notify": store,
                "loop other": max(0.0, float(stopped["t"]) - begun - fetch - run - store),
                "tasks": float(len(finished)),
                "worker per task": (float(stopped["t"]) - begun) / max(1, len(finished)),
                "invoked_at": invoked_at,
            }
        )
    return out


def free_slot_query_s(config: fanflow.Config, rounds: int = 30) -> float | None:
    """The client's free-slot query on http (one ``GET /healthz`` per gateway, concurrently), median;
    None elsewhere (the client-started pool's host answers in process)."""
    if config.platform != "http":
        return None
    platform = HttpPlatform((config.endpoints or "").split(","))
    try:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            platform.free_slots()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        platform.close()


def exit_flush_s(store_url: str, events: list[dict[str, Any]]) -> list[float]:
    """Each worker's events written again as one batch to a scratch key of the same store: its exit flush."""
    store = open_store(store_url)
    scratch = keys.events(f"stages-{uuid.uuid4().hex[:8]}")
    times = []
    try:
        for worker, evs in _per_worker(events).items():
            rows = EventRows([_row(e) for e in evs], worker)
            start = time.perf_counter()
            store.append_events(scratch, rows, 60)
            times.append(time.perf_counter() - start)
    finally:
        store.delete([scratch])
    return times


def _row(event: dict[str, Any]) -> tuple[Any, ...]:
    """The row a worker held for ``event`` (its values, then its shape's number)."""
    names = tuple(k for k in event if k not in ("kind", "worker"))
    return (*(event[k] for k in names), shape(event["kind"], names))


def reply_s(rounds: int = 200) -> float:
    """Half the median round trip of a short message over a pipe to a child process (the worker's reply)."""
    ours, theirs = Pipe()
    child = subprocess.Popen([sys.executable, "-c", _ECHO, str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    try:
        trips = []
        for _ in range(rounds):
            start = time.perf_counter()
            ours.send_bytes(b"\x00")
            ours.recv_bytes()
            trips.append(time.perf_counter() - start)
        ours.send_bytes(b"")
        return statistics.median(trips) / 2
    finally:
        ours.close()
        child.wait(timeout=10)


def measure(build: Callable[[], fanflow.Node], config: fanflow.Config, runs: int) -> dict[str, Any]:
    """Per-invocation stages (lists of seconds) over ``runs`` timed runs after one warm-up."""
    history = open_metadata(config.metadata)
    stages: dict[str, list[float]] = defaultdict(list)
    totals, invocations, tasks = [], 0, 0
    for i in range(runs + 1):
        node = build()
        submitted = time.time()
        future = node.submit(config)
        future.result()
        answered = time.time()
        drain()
        events = history.load_run(future.run_id).events
        if not i:
            continue
        totals.append(answered - submitted)
        per_invocation = invocation_stages(events)
        invocations += len(per_invocation)
        tasks += sum(int(s["tasks"]) for s in per_invocation)
        for s in per_invocation:
            for name in INVOCATION_STAGES:
                if name in s:
                    stages[name].append(s[name])
        stages["exit flush"].extend(exit_flush_s(config.store, events))
        if len(per_invocation) == 1:  # the client's own stages are those of a run with one invocation
            (only,) = per_invocation
            sink = max((e for e in events if e["kind"] == "task_finished"), key=lambda e: float(e["t"]))
            stages["client start"].append(only["invoked_at"] - submitted)
            stages["client answer"].append(answered - float(sink["t"]) + float(sink.get("store_s") or 0.0))
    query = free_slot_query_s(config)
    if query is not None:
        stages["of which: free-slot query"].append(query)
    return {"stages": stages, "total": totals, "invocations": invocations / runs, "tasks": tasks / runs}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per workload (one-task runs)")
    parser.add_argument("--tree-runs", type=int, default=3, help="timed runs of tree 1024")
    parser.add_argument("--platforms", default=",".join(PLATFORMS))
    args = parser.parse_args()
    tree = load_module(str(ROOT / "examples" / "tree_reduction.py"))
    workloads: dict[str, tuple[Callable[[], fanflow.Node], int]] = {
        "one task": (lambda: inc(1), args.runs),
        "tree 1024": (lambda: tree.build(n=1024), args.tree_runs),
    }
    names = args.platforms.split(",")
    load = os.getloadavg()
    reply = reply_s()
    results: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        for name, config in configs(names, stack, Path(tmp)).items():
            for workload, (build, runs) in workloads.items():
                results[workload][name] = measure(build, config, runs)
    end_load = os.getloadavg()
    console = Console(width=200)
    for workload, by_platform in results.items():
        table = Table(
            "stage (ms, median per invocation)",
            *by_platform,
            title=f"{workload}: where an invocation's time goes (load average {load[0]:.1f} at start, "
            f"{end_load[0]:.1f} at end)",
        )
        for stage in INVOCATION_STAGES:
            if stage == "reply":
                table.add_row(stage + " (pipe, apart)", *[_ms(reply)] * len(by_platform))
                continue
            cells = [_ms(_median(r["stages"].get(stage, []))) for r in by_platform.values()]
            if any(c != "-" for c in cells):
                replayed = stage in ("exit flush", "of which: free-slot query")
                table.add_row(stage + (" (replayed)" if replayed else ""), *cells)
        table.add_row("total per run", *[_ms(_median(r["total"])) for r in by_platform.values()])
        table.add_row("invocations per run", *[f"{r['invocations']:.1f}" for r in by_platform.values()])
        table.add_row(
            "tasks per invocation", *[f"{r['tasks'] / max(1, r['invocations']):.0f}" for r in by_platform.values()]
        )
        console.print(table)


if __name__ == "__main__":
    main()
