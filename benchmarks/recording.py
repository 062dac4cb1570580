"""What recording one tiny run into the default SQLite history costs, client and writer thread together.

The events of a real 1-task ``fanflow.dask.get`` (its worker's rows) are put back into
the run store under a new run id and recorded with :func:`fanflow.metrics.record_run`,
``--runs`` times, the history writer drained every ``--batch`` runs as
``dask_overhead.py``'s rounds drain it; the same loop without ``record_run`` (the
stream put back and deleted) is the baseline. Printed: process CPU time per run
(``time.process_time``: every thread, the writer's included), recording minus
baseline, as the median of ``--repeat`` rounds that take turns.

The garbage collector's permanent generation holds what the warm-up made
(``gc.freeze``), so a full collection that falls in one round and not the next does
not decide the reading.

For repeatable counts, ``--callgrind record`` (or ``baseline``) runs one loop of
``--runs`` after the warm-up, between a call of ``os.getppid`` and one of
``os.getpgrp`` in each thread (the client's and the writer's), which callgrind
is told to zero and dump its counts at; the record loop's counts minus the
baseline's, over ``--runs``, are the instructions per tiny run of each thread::

    PYTHONHASHSEED=0 OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind --separate-threads=yes \
        --zero-before=os_getppid --dump-before=os_getpgrp --callgrind-out-file=cg.%p \
        "$(python -c 'import sys; print(sys.executable)')" benchmarks/recording.py --callgrind record --runs 400

(``OPENBLAS_NUM_THREADS=1``: numpy's idle BLAS threads spin; the interpreter itself, not a shim
script, or callgrind follows the shim.) The dumps ``cg.<pid>.<n>-<thread>`` give the counts in their
``summary:`` line; thread 01 is the client's, which also writes the batches its drains run (the writer
thread only those its timer runs first).

Run: ``python benchmarks/recording.py [--runs 4000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fanflow
from fanflow import dask as ffdask
from fanflow.metrics import record_run, recorder
from fanflow.store import keys
from fanflow.store.events import EventRows
from fanflow.store.metadata import defer, drain


def inc(x: int) -> int:
    return x + 1


def captured_run(config: fanflow.Config) -> tuple[Any, list[EventRows]]:
    """A finished tiny run of ``config`` and its worker's event rows, as recording found them."""
    found: dict[str, Any] = {}
    record_raw = recorder._record_raw

    def keep(run: Any) -> bool:
        batches, _ = run.store.read_event_batches(keys.events(run.run_id))
        found["run"], found["batches"] = run, [EventRows(list(b.rows), b.worker) for b in batches]
        return record_raw(run)

    recorder._record_raw = keep
    try:
        for _ in range(80):  # warm-up: imports, caches, the history file
            ffdask.get({"x": 1, "y": (inc, "x")}, "y", config=config)
    finally:
        recorder._record_raw = record_raw
    drain()
    return found["run"], found["batches"]


def cpu_per_run(run: Any, batches: list[EventRows], runs: int, batch: int, record: bool, first: int) -> float:
    """Process CPU seconds per run of putting the events back and recording them (or deleting them)."""
    base, store = run.run_id, run.store
    drain()
    began = time.process_time()
    for i in range(first, first + runs):
        run.run_id = f"{base}-{i}"
        run.submitted_at += 1e-6
        stream = keys.events(run.run_id)
        for rows in batches:
            store.append_events(stream, EventRows(list(rows.rows), rows.worker), 60)
        if record:
            record_run(run, None)
        else:
            store.delete([stream])
        if i % batch == batch - 1:
            drain()
    drain()
    run.run_id = base
    return (time.process_time() - began) / runs


def counted(run: Any, batches: list[EventRows], runs: int, batch: int, record: bool) -> None:
    """One loop of :func:`cpu_per_run` after a warm-up one, between callgrind's zero and dump marks."""
    cpu_per_run(run, batches, runs, batch, record, 0)
    mark(os.getppid)  # zero
    cpu_per_run(run, batches, runs, batch, record, runs)
    mark(os.getpgrp)  # dump


def mark(call: Callable[[], object]) -> None:
    """Call ``call`` in the history writer's thread, at its next batch (a drain would run it in this thread),
    then in this one (callgrind counts per thread)."""
    ran = threading.Event()
    defer(lambda: (call(), ran.set()))
    ran.wait()
    call()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=40, help="runs between drains of the history writer")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--callgrind", choices=("record", "baseline"), help="one loop between callgrind's marks (module docstring)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fanflow-bench-") as tmp:
        config = fanflow.Config(progress=False, metadata=f"sqlite:///{Path(tmp) / 'metadata.db'}")
        run, batches = captured_run(config)
        gc.collect()
        gc.freeze()
        if args.callgrind:
            counted(run, batches, args.runs, args.batch, args.callgrind == "record")
            return
        recorded, baseline = [], []
        for r in range(args.repeat):
            first = 2 * r * args.runs
            recorded.append(cpu_per_run(run, batches, args.runs, args.batch, True, first))
            baseline.append(cpu_per_run(run, batches, args.runs, args.batch, False, first + args.runs))
        costs = [(a - b) * 1e6 for a, b in zip(recorded, baseline, strict=True)]
        print(
            f"recording one tiny run (1-task get's events, drained every {args.batch}): "
            f"{statistics.median(costs):.1f} us CPU [{min(costs):.1f}-{max(costs):.1f}], "
            f"median of {args.repeat} rounds of {args.runs} runs; "
            f"baseline loop {statistics.median(baseline) * 1e6:.1f} us per run"
        )


if __name__ == "__main__":
    main()
