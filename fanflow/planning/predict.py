"""Predictions from run history: execution time, output size, transfers, loop overhead and worker starts.

Every planner question is answered from a :class:`~fanflow.metrics.History`
read ONCE per planning call; nothing here touches a store afterwards.

Every time-like quantity is a :class:`MemoryModel`: a least-squares line per
memory size *where that size was measured* (raw seconds, at least
:data:`MIN_LINE_SAMPLES` samples), and otherwise one line fitted on the samples
of every size normalized to 512 MB (:mod:`fanflow.metrics.normalize`) and scaled
back to the size asked for. Measured sizes win because the normalization model
(time inversely proportional to the CPU share) is wrong in both directions on
real workers: a task shorter than its CPU quota per scheduling period runs at
full speed at 512 MB, a multithreaded BLAS call at 3008 MB can be *slower* than
at 512 MB on a busy machine, and a cold start (a fresh interpreter importing
numpy) is CPU bound and does follow the model. Scaling is only the fallback
for a size never seen, and there it is the conservative guess: less memory is
slower.

- **Execution time** per function: a line of time on total input bytes.
- **Output size** per function: a line of output bytes on input bytes
  (memory plays no part).
- **Fetch**: one round trip for the inputs not in the worker's cache, a line
  of ``fetch_s`` on fetched bytes.
- **Upload**: what a task spends after executing (serializing, the store +
  notify round trip, the loop's bookkeeping), a line on output bytes.
- **Loop gap**: the time between one task's finish and the next task's start
  in the same worker (choosing what to continue with, invoking the other
  branches, the run-status check).
- **Worker start**, cold and warm separately: invoke to worker start *minus the
  time the invocation waited in the queue for a free worker slot*. A pool with
  ``max_workers`` slots queues invocations FIFO, and the recorded latency
  includes that wait; the simulator models the queue itself, so the wait is
  removed here by replaying each past run's workers through the FIFO of the
  cap that run recorded (:func:`pure_latencies`; a run saved before runs
  recorded it is replayed at the cap planned for). Without a cap the latency
  is taken as recorded.
  ``mix`` pools cold and warm: what a new worker costs when the platform gives
  no way to tell which one it gets.
- **SLA**: ``mean`` is the fitted value; a percentile ``pNN`` adds ``z(NN)``
  residual standard deviations (normal approximation of the residuals, ``z``
  from :class:`statistics.NormalDist`); ``p50`` is the mean.

An unknown is never a silent zero. Every answer is a :class:`Prediction` (or a
model) whose ``known`` says whether history backed it; unknowns use the
documented defaults (:data:`DEFAULT_EXEC_S` and friends), and
:class:`DagCosts` lists the tasks predicted from defaults so the plan can say
so. Summaries (which survive retention) back a function whose executions were
all garbage-collected.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, TypeVar

import numpy as np

from fanflow.dag.graph import DAG
from fanflow.metrics.executions import Executions
from fanflow.metrics.history import History
from fanflow.metrics.history import clear_cache as clear_history_cache
from fanflow.metrics.normalize import BASELINE_MB, ONE_VCPU_MB, from_baseline, to_baseline
from fanflow.worker.loop import LARGE_OUTPUT_BYTES

DEFAULT_EXEC_S = 0.01
"""Execution time at 512 MB assumed for a function with no history."""
DEFAULT_OUT_BYTES = 1024.0
"""Output size assumed for a root task (no inputs) with no history; others pass their input size through."""
DEFAULT_LATENCY_S = 0.002
"""Per-round-trip latency at 512 MB assumed when no transfer was ever recorded."""
DEFAULT_SECONDS_PER_BYTE = 1e-8
"""Transfer cost assumed when none was recorded (100 MB/s)."""
DEFAULT_GAP_S = 0.001
"""Loop time between two tasks of one worker at 512 MB assumed without history."""
DEFAULT_COLD_START_S = 0.5
"""Cold start latency (a new worker process) at 512 MB assumed without worker history."""
DEFAULT_WARM_START_S = 0.01
"""Warm start latency (a pooled worker) at 512 MB assumed without worker history."""
MIN_LINE_SAMPLES = 3
"""Fewer samples than this give a flat fit (the mean) rather than a line, and do not make a memory size "measured"."""
MIN_TRIM_SAMPLES = 8
"""From this many samples a fit is refitted without its outliers."""
OUTLIER_MADS = 4.0
"""A sample whose residual is further than this many robust standard deviations (from the median absolute
deviation) from the median residual is an outlier: a scheduler stall or a collection pause, not the function."""
MAD_TO_SD = 1.4826
"""Median absolute deviation to standard deviation, for normally distributed residuals."""
FIT_SAMPLES = 50_000
"""Samples a line is fitted on at most. Three runs of a 100k-task tree give 300,000 of one function, and
so of each overhead: fitting them all (least squares, two medians, the refit) was a third of the first
plan of an 8,191-task tree after such runs, and 50,000 fix a line as well. Fewer than that are all used."""
RECENT_RUNS = 10
"""Runs of a function whose executions the predictions use, the latest: older ones saw another machine load."""

Sample = tuple[int, float, float]
"""``(memory_mb, x, seconds)``: one raw measurement at a memory size."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """A predicted quantity; ``known`` is False when it comes from a default, not from history."""

    value: float
    known: bool
    samples: int = 0


@dataclass(frozen=True, slots=True)
class Line:
    """``y = intercept + slope·x`` with the residual standard deviation, never below ``floor``."""

    intercept: float
    slope: float
    sd: float
    count: int
    floor: float = 0.0

    def at(self, x: float, z: float = 0.0) -> float:
        return max(self.floor, self.intercept + self.slope * x + z * self.sd)

    def scaled(self, factor: float) -> Line:
        """The same line with every time multiplied by ``factor`` (another memory size)."""
        f = factor
        return Line(self.intercept * f, self.slope * f, self.sd * f, self.count, self.floor * f)


def fit_line(xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray, floor: float = 0.0) -> Line | None:
    """Least squares of ``ys`` on ``xs`` (flat below :data:`MIN_LINE_SAMPLES` or without spread in x),
    refitted once without the outliers (:data:`OUTLIER_MADS`) when there are :data:`MIN_TRIM_SAMPLES`;
    on :data:`FIT_SAMPLES` of them at most (the line's ``count`` is every sample).

    On numpy arrays: ten runs of a large DAG give ~100,000 samples of one function."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    count = len(x)
    if count > FIT_SAMPLES:
        chosen = _sample(count)
        x, y = x[chosen], y[chosen]
    fitted = _least_squares(x, y, floor)
    if fitted is None or len(x) < MIN_TRIM_SAMPLES:
        return None if fitted is None else dataclasses.replace(fitted[0], count=count)
    line, residuals = fitted
    centre = float(np.median(residuals))
    deviations = np.abs(residuals - centre)
    spread = float(np.median(deviations)) * MAD_TO_SD
    if spread <= 0:
        return line
    keep = deviations <= OUTLIER_MADS * spread
    if keep.all():
        return dataclasses.replace(line, count=count)
    kept = _least_squares(x[keep], y[keep], floor)
    return None if kept is None else Line(kept[0].intercept, kept[0].slope, kept[0].sd, count, floor)


@functools.lru_cache(maxsize=8)
def _sample(count: int) -> np.ndarray:
    """About :data:`FIT_SAMPLES` of ``count`` samples, ascending: a random subset, the same for the same count
    (plans are repeatable), not every k-th sample, which could fall in step with a DAG's shape.

    Kept per count (read-only): a plan's fits of one function and of the overheads mostly have one
    count, and drawing 300,000 numbers took 3 ms a fit."""
    chosen = np.flatnonzero(np.random.default_rng(count).random(count) < FIT_SAMPLES / count)
    chosen.flags.writeable = False
    return chosen


def _least_squares(x: np.ndarray, y: np.ndarray, floor: float) -> tuple[Line, np.ndarray] | None:
    """The line and its residuals."""
    n = len(x)
    if n == 0:
        return None
    mean_x, mean_y = float(x.sum()) / n, float(y.sum()) / n
    dx = x - mean_x
    sxx = _dot(dx, dx)
    slope = 0.0
    if n >= MIN_LINE_SAMPLES and sxx > 1e-9 * max(1.0, mean_x * mean_x * n):
        slope = _dot(dx, y - mean_y) / sxx
    intercept = mean_y - slope * mean_x
    dof = n - (2 if slope else 1)
    residuals = y - intercept - slope * x if slope else y - intercept  # subtracting 0·x changes no value
    sd = math.sqrt(_dot(residuals, residuals) / dof) if dof > 0 else 0.0
    return Line(intercept, slope, sd, n, floor), residuals


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of the products, on this thread: ``np.dot`` hands 100,000 products to OpenBLAS's threads, which
    spin on a busy machine (1.7 ms of CPU where this takes 35 us)."""
    return float(np.einsum("i,i->", a, b))


def sla_z(sla: str) -> float:
    """Standard deviations above the mean for ``mean`` (0) or a percentile ``p50``..``p99``."""
    if sla == "mean":
        return 0.0
    return NormalDist().inv_cdf(int(sla[1:]) / 100)


@functools.cache
def scale(memory_mb: int) -> float:
    """Factor turning a 512 MB time into the time at ``memory_mb`` in the normalization model."""
    return from_baseline(1.0, memory_mb)


class MemoryModel:
    """One time-like quantity at any memory size: measured lines where measured, scaled elsewhere.

    ``line(m)`` is the line fitted on the raw samples at ``m`` when there are at
    least :data:`MIN_LINE_SAMPLES` of them; otherwise the line fitted on every
    sample normalized to 512 MB, scaled to ``m``; with no sample at all, the
    ``default`` line (at 512 MB) scaled to ``m``, and ``known`` is False.
    """

    __slots__ = ("_cache", "_default", "_measured", "_pooled", "count")

    def __init__(self, samples: Iterable[Sample], default: Line) -> None:
        rows = list(samples)
        memory = np.array([m for m, _, _ in rows], dtype=np.int64)
        x = np.array([v for _, v, _ in rows], dtype=np.float64)
        y = np.array([v for _, _, v in rows], dtype=np.float64)
        self._fit(memory, x, y, default)

    @classmethod
    def of_columns(cls, memory: np.ndarray, x: np.ndarray, y: np.ndarray, default: Line) -> MemoryModel:
        """The model of samples given as three columns (memory sizes, x, seconds)."""
        model = cls.__new__(cls)
        model._fit(memory, np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), default)
        return model

    def _fit(self, memory: np.ndarray, x: np.ndarray, y: np.ndarray, default: Line) -> None:
        self._measured: dict[int, Line] = {}
        for size in distinct(memory):
            at = memory == size
            if np.count_nonzero(at) >= MIN_LINE_SAMPLES:
                ys = y[at]
                line = fit_line(x[at], ys, floor=float(ys.min()))
                if line is not None:
                    self._measured[size] = line
        # every sample at 512 MB: to_baseline, element-wise
        pooled = y * (np.minimum(memory, ONE_VCPU_MB) / ONE_VCPU_MB) / (BASELINE_MB / ONE_VCPU_MB)
        self._pooled = fit_line(x, pooled, floor=float(pooled.min()) if len(pooled) else 0.0)
        self._default = default
        self._cache: dict[int, Line] = {}
        self.count = len(x)

    @classmethod
    def flat(cls, seconds_512: float, slope: float = 0.0, known: bool = True) -> MemoryModel:
        """A model with no samples: ``seconds_512 + slope·x`` at 512 MB, scaled by the normalization model."""
        model = cls((), Line(seconds_512, slope, 0.0, 0, 0.0))
        if known:
            model.count = 1
        return model

    @property
    def known(self) -> bool:
        return self.count > 0

    def tied(self, sizes: Iterable[int]) -> MemoryModel:
        """This model with one line at every size of ``sizes``: the mean of the lines measured there.

        For sizes the normalization model holds equal (past one vCPU), whose
        measured lines then differ mostly by the load of the time each was
        measured. The mean weighs each line by its samples (intercept, slope,
        variance); its floor is the lowest. With no size of ``sizes``
        measured the model is returned as it is: scaled, they agree already.
        """
        group = sorted(set(sizes))
        lines = [self._measured[m] for m in group if m in self._measured]
        if not lines:
            return self
        total = sum(line.count for line in lines)
        mean = Line(
            sum(line.intercept * line.count for line in lines) / total,
            sum(line.slope * line.count for line in lines) / total,
            math.sqrt(sum(line.sd * line.sd * line.count for line in lines) / total),
            total,
            min(line.floor for line in lines),
        )
        model = MemoryModel.__new__(MemoryModel)
        model._measured = {**self._measured, **dict.fromkeys(group, mean)}
        model._pooled, model._default, model._cache, model.count = self._pooled, self._default, {}, self.count
        return model

    def line(self, memory_mb: int) -> Line:
        found = self._cache.get(memory_mb)
        if found is None:
            found = self._measured.get(memory_mb)
            if found is None:
                found = (self._pooled or self._default).scaled(scale(memory_mb))
            self._cache[memory_mb] = found
        return found


def distinct(values: np.ndarray) -> list[int]:
    """The distinct values of an array of small non-negative ints (memory sizes, run numbers), ascending.

    A count per value instead of ``np.unique``'s sort: a million samples have a handful of sizes."""
    if not len(values):
        return []
    if values.min() >= 0 and values.max() < 1 << 20:
        return np.flatnonzero(np.bincount(values)).tolist()
    return np.unique(values).tolist()


def pure_latencies(ex: Executions, max_workers: int | None) -> list[tuple[int, bool, float]]:
    """``(memory, cold, seconds)`` per past worker: its start latency without the wait for a free slot.

    A worker is rebuilt from its tasks (its start is its first task's start, its
    end its last task's finish; the loop has no work between them and the
    worker's own start and stop). A warm worker that ran in a process right
    after another worker of the same run (worker ids name their process, and
    that process ran one worker at a time) was dispatched when it was invoked
    or when that worker ended, whichever came later: the slot it waited for
    is the one that process freed. Other workers are replayed per run in
    invocation order through as many FIFO slots as the run's own worker cap
    (``ex.caps``; ``max_workers``, the cap planned for, for a run that did not
    record one; none for a run without a cap: its latencies as recorded), each
    held from dispatch to the worker's end: dispatched at ``max(invoked,
    earliest free slot, previous dispatch)``. The pure latency is the start minus the
    dispatch. Where the replay dispatches a worker only after it started, the
    pool took invocations in another order than their timestamps say: a warm
    worker is then left out, and a cold one counts its whole invocation
    latency (a latency clipped to zero made cold starts look free, and plans
    that mix sizes in a small pool evicted warm processes for nothing).
    """
    run = ex["run"]
    if not len(run):
        return []
    if (run[1:] >= run[:-1]).all():  # a History's table, oldest run first: a run's rows are one slice (views)
        bounds = [0, *(np.flatnonzero(np.diff(run)) + 1).tolist(), len(run)]
        parts = [ex.take(slice(lo, hi), _REPLAYED) for lo, hi in itertools.pairwise(bounds)]
    else:
        order = np.argsort(run.astype(np.int16) if run.max() < 1 << 15 else run, kind="stable")  # radix sort
        parts = [ex.take(rows, _REPLAYED) for rows in np.split(order, np.flatnonzero(np.diff(run[order])) + 1)]
    out: list[tuple[int, bool, float]] = []
    for part in parts:
        workers = _Workers.of(part)
        if workers is None:
            continue
        run = int(part["run"][0])
        recorded = ex.caps[run]
        cap = max_workers if recorded is None else recorded or None
        key = workers.digest(ex.run_ids[run], cap)
        with _replayed_lock:
            found = _replayed.get(key)
        if found is None:
            found = _replay(workers, part.workers, cap)
            with _replayed_lock:
                _replayed[key] = found
                while len(_replayed) > REPLAYED_RUNS:
                    del _replayed[next(iter(_replayed))]
        out.extend(found)
    return out


REPLAYED_RUNS = 256
"""Runs whose replayed start latencies are kept for the next plans in this process (one tuple per worker)."""

_REPLAYED = ("run", "worker", "started_at", "finished_at", "memory_mb", "worker_cold", "worker_latency_s")
_replayed: dict[bytes, list[tuple[int, bool, float]]] = {}
_replayed_lock = threading.Lock()
"""A run's replay by the digest of what it reads (:meth:`_Workers.digest`: the run id, the cap replayed at, its workers
rebuilt from its rows, their numbers relative to the run's first): the same workers give the same latencies
whichever plan asks. A run of the embedded default can have a worker per branch (50,000 for a 100k-task
tree): replaying one cost 40 ms."""


def clear_cache() -> None:
    """Forget the fitted models, the replayed runs and the decoded ones
    (:func:`fanflow.metrics.history.clear_cache`): what a new process starts with, for tests and benchmarks."""
    with _replayed_lock:
        _replayed.clear()
    with _fitted_lock:
        _fitted.clear()
    clear_history_cache()


@dataclass(frozen=True, slots=True)
class _Workers:
    """The workers of one run, rebuilt from its tasks, by their numbers in the table (ascending): a worker
    starts with its first task and ends with its last (the loop has no work between them and the worker's
    own start and stop); its memory, cold flag and latency are its first row's."""

    codes: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    memory: np.ndarray
    cold: np.ndarray
    latency: np.ndarray

    @classmethod
    def of(cls, ex: Executions) -> _Workers | None:
        """The workers of the executions of one run (None: no row names a worker)."""
        worker = ex["worker"]
        rows = np.flatnonzero(worker >= 0)
        if not rows.size:
            return None
        codes, first, slot = _grouped(worker[rows])
        first = rows[first]  # each worker's first row, in the table's order
        begin = np.full(len(codes), np.inf)
        np.minimum.at(begin, slot, ex["started_at"][rows])
        end = np.full(len(codes), -np.inf)
        np.maximum.at(end, slot, ex["finished_at"][rows])
        return cls(codes, begin, end, ex["memory_mb"][first], ex["worker_cold"][first], ex["worker_latency_s"][first])

    def digest(self, run_id: str, max_workers: int | None) -> bytes:
        """What the replay reads, hashed: per worker, not per row (a run of 100,000 tasks in one worker hashes
        one worker, not 3 MB of columns); the numbers relative to the run's first (this History's are not
        another's), whose names the run id fixes."""
        digest = hashlib.blake2b(repr((run_id, max_workers)).encode(), digest_size=16)
        digest.update((self.codes - self.codes[0]).astype(np.int64).tobytes())
        for column in (self.begin, self.end, self.memory, self.cold, self.latency):
            digest.update(np.ascontiguousarray(column).tobytes())
        return digest.digest()


def _replay(workers: _Workers, names: Sequence[str], max_workers: int | None) -> list[tuple[int, bool, float]]:
    """:func:`pure_latencies` of the workers of one run; ``names``: the table's worker ids, by number."""
    codes, begin, end, memory, cold = workers.codes, workers.begin, workers.end, workers.memory, workers.cold
    invoked = begin - workers.latency
    # workers are numbered by id within a run: their number orders them as the id would
    order = np.lexsort((codes, end, begin, invoked))
    if not max_workers:
        pure = np.maximum(0.0, begin[order] - invoked[order])
        return list(zip(memory[order].tolist(), cold[order].tolist(), pure.tolist(), strict=True))
    handed = _handed_over(names, codes, begin, end, cold)[order]
    invoked, begin, end, memory, cold = invoked[order], begin[order], end[order], memory[order], cold[order]
    # The FIFO replay through the run's own empty slots: the slot that frees first depends only on when the
    # workers before end (each holds its slot to its end), so the heap runs alone over the ends and the
    # dispatches are a running maximum of max(invoked, that slot). A run of the embedded default can replay
    # 50,000 workers: one heap call each, the rest on arrays (the same floats as comparing one by one).
    free = [-math.inf] * max_workers
    replace = heapq.heapreplace
    slots = np.array([replace(free, ended) for ended in end.tolist()])
    queued = np.maximum.accumulate(np.maximum(invoked, slots))
    # a warm worker whose process ran another worker right before it was dispatched when that one ended
    after = ~np.isnan(handed)
    dispatched = np.where(after, np.maximum(invoked, handed), queued)
    # the replay has it dispatched after it started: its order was not the pool's. A warm one tells
    # nothing; a cold one counts at most its invocation latency (the safe side of a cold start)
    misordered = ~after & (queued > invoked) & (begin <= queued)
    dispatched = np.where(misordered, invoked, dispatched)
    kept = ~misordered | cold
    pure = np.maximum(0.0, begin[kept] - dispatched[kept])
    return list(zip(memory[kept].tolist(), cold[kept].tolist(), pure.tolist(), strict=True))


def _grouped(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ``np.unique(values, return_index=True, return_inverse=True)`` gives for ints: the distinct values
    ascending, where each first occurs, and each value's place among them.

    By a mark per value when they span a range not much longer than they are (a run's workers are numbered
    one after another in a History's table), not by a sort: a run of the embedded default has 100,000 rows
    of 50,000 workers."""
    low, high = int(values.min()), int(values.max())
    if high - low >= 4 * len(values) + 1024:
        return np.unique(values, return_index=True, return_inverse=True)
    shifted = values - low
    present = np.zeros(high - low + 1, dtype=np.bool_)
    present[shifted] = True
    place = (np.cumsum(present) - 1)[shifted]
    first = np.full(np.count_nonzero(present), len(values), dtype=np.int64)
    np.minimum.at(first, place, np.arange(len(values)))
    return np.flatnonzero(present) + low, first, place


def _handed_over(
    names: Sequence[str], codes: np.ndarray, begin: np.ndarray, end: np.ndarray, cold: np.ndarray
) -> np.ndarray:
    """Per worker of one run, the end of the worker its process ran right before it when it is warm; NaN
    otherwise.

    Worker ids name their process (``<process>-<n>``); a process whose workers
    overlapped in time ran threads, not one pool worker at a time, and hands
    nothing over.
    """
    low, high = int(codes[0]), int(codes[-1])
    proc = _processes(names[low : high + 1] if high - low + 1 == len(codes) else [names[c] for c in codes.tolist()])
    order = np.lexsort((codes, end, begin, proc))
    k, b, e = proc[order], begin[order], end[order]
    same = k[1:] == k[:-1]
    overlapped = np.unique(k[1:][same & (b[1:] < e[:-1])])
    pair = same & ~np.isin(k[1:], overlapped)
    after, before_end = order[1:][pair], e[:-1][pair]
    warm = ~cold[after]
    handed = np.full(len(codes), np.nan)
    handed[after[warm]] = before_end[warm]
    return handed


def _processes(names: Sequence[str]) -> np.ndarray:
    """Each worker's process (its id up to the last "-"), numbered in the order first met: any numbering
    groups the same workers (a dict, not a sort of the names).

    A run of the embedded default can name 50,000 workers of one process. When every id is that process's
    (each starts with the first id's process and a "-" and holds no other "-": counted in the ids joined
    by a newline that none holds), they get one number without splitting each id."""
    first = names[0].rsplit("-", 1)[0]
    if first != names[0]:
        joined = "\n".join(names)
        stem = "\n" + first + "-"
        if (
            joined.count("\n") == len(names) - 1
            and ("\n" + joined).count(stem) == len(names)
            and joined.count("-") == len(names) * stem.count("-")
        ):
            return np.zeros(len(names), dtype=np.int64)
    processes = [name.rsplit("-", 1)[0] for name in names]
    number = {process: i for i, process in enumerate(dict.fromkeys(processes))}
    return np.array([number[process] for process in processes], dtype=np.int64)


def kept_outputs(ex: Executions) -> np.ndarray:
    """Per execution, True for a large output that never reached the store.

    From :data:`~fanflow.worker.loop.LARGE_OUTPUT_BYTES` the loop only claims
    the readers before uploading, and uploads nothing when it won them all
    (the record says ``uploaded=False``); its round trip then carried no
    value, so the upload model must not read that time as the cost of sending
    those bytes. A smaller output the claim kept (store-unless-claimed) was
    sent to the store's script all the same, so it counts as sent.
    """
    return ~ex["uploaded"] & (ex["out_bytes"] >= LARGE_OUTPUT_BYTES)


def loop_gaps(ex: Executions) -> tuple[np.ndarray, np.ndarray]:
    """(memory sizes, seconds) of each pair of consecutive tasks in one worker: finish to next start."""
    worker = ex["worker"]
    rows = np.flatnonzero(worker >= 0)
    order = rows[np.lexsort((ex["started_at"][rows], worker[rows]))]  # stable: ties keep the table's order
    a, b = order[:-1], order[1:]
    same = worker[a] == worker[b]
    a, b = a[same], b[same]
    return ex["memory_mb"][b], np.maximum(0.0, ex["started_at"][b] - ex["finished_at"][a])


@dataclass(slots=True)
class DagCosts:
    """Per-task predictions for one DAG: sizes as lists indexed by task id, times as memory models.

    ``exec_at(m)`` gives every task's execution time at ``m`` MB (computed once
    per memory size): the simulator and the planners read plain lists.
    """

    in_bytes: list[float]
    out_bytes: list[float]
    function: list[int]
    """Index of each task's function in ``exec_models``."""
    exec_models: list[MemoryModel]
    fetch: MemoryModel
    upload: MemoryModel
    gap: MemoryModel
    cold: MemoryModel
    warm: MemoryModel
    mix: MemoryModel
    z: float = 0.0
    defaults: list[int] = field(default_factory=list)
    """Tasks whose execution time or output size came from a default, not from history."""
    _exec_at: dict[int, list[float]] = field(default_factory=dict)

    @classmethod
    def uniform(
        cls,
        n: int,
        exec_s: float,
        out_bytes: float,
        fetch_s: float,
        upload_s: float,
        start_s: float,
        gap_s: float = 0.0,
    ) -> DagCosts:
        """Hand-made costs (every time at 512 MB, scaled by the normalization model): for tests and examples."""
        return cls(
            [0.0] * n,
            [out_bytes] * n,
            [0] * n,
            [MemoryModel.flat(exec_s)],
            MemoryModel.flat(fetch_s),
            MemoryModel.flat(upload_s),
            MemoryModel.flat(gap_s),
            MemoryModel.flat(start_s),
            MemoryModel.flat(start_s),
            MemoryModel.flat(start_s),
        )

    def exec_at(self, memory_mb: int) -> list[float]:
        """Execution time of every task at ``memory_mb``."""
        found = self._exec_at.get(memory_mb)
        if found is None:
            lines = [m.line(memory_mb) for m in self.exec_models]
            # Line.at for every task at once, in its order of operations (the same floats)
            f = np.asarray(self.function, dtype=np.int64)
            x = np.asarray(self.in_bytes, dtype=np.float64)
            intercept, slope, sd, floor = (np.array([getattr(line, k) for line in lines]) for k in _LINE_FIELDS)
            found = np.maximum(floor[f], intercept[f] + slope[f] * x + self.z * sd[f]).tolist()
            self._exec_at[memory_mb] = found
        return found

    def fetch_s(self, nbytes: float, memory_mb: int) -> float:
        """One fetch round trip of ``nbytes`` at ``memory_mb`` (0 when nothing is fetched)."""
        return self.fetch.line(memory_mb).at(nbytes, self.z) if nbytes > 0 else 0.0

    def upload_s(self, nbytes: float, memory_mb: int) -> float:
        """Store + notify round trip and loop bookkeeping for an output of ``nbytes`` (0: notify only)."""
        return self.upload.line(memory_mb).at(nbytes, self.z)

    def gap_s(self, memory_mb: int) -> float:
        """Loop time between two tasks of one worker."""
        return self.gap.line(memory_mb).at(0.0, self.z)

    def cold_s(self, memory_mb: int) -> float:
        return self.cold.line(memory_mb).at(0.0, self.z)

    def warm_s(self, memory_mb: int) -> float:
        return self.warm.line(memory_mb).at(0.0, self.z)

    def start_s(self, memory_mb: int) -> float:
        """A new worker when the platform cannot say whether it is cold or warm: the mix of both."""
        return self.mix.line(memory_mb).at(0.0, self.z)


_LINE_FIELDS = ("intercept", "slope", "sd", "floor")


def _default(seconds: float, per_byte: float = 0.0) -> Line:
    return Line(seconds, per_byte, 0.0, 0, seconds)


_OVERHEADS = (
    *_REPLAYED,
    "fetch_s",
    "fetched_bytes",
    "uploaded",
    "out_bytes",
    "store_s",
    "exec_s",
)
"""The columns :meth:`Predictor.overheads` reads."""


FITTED = 256
"""Models kept for the next plans in this process (a few per function)."""

_fitted: dict[tuple[Any, ...], Any] = {}
"""Models fitted on history by what they read (:meth:`Predictor._key`): re-planning a DAG whose history
has no new run fits nothing again (fits of a million executions took 0.3-0.4 s of CPU per plan)."""
_fitted_lock = threading.Lock()

T = TypeVar("T")


def _tagged(tag: str, key: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    return None if key is None else (tag, *key)


class Predictor:
    """Answers prediction questions from a :class:`History` (or from defaults when it is None).

    ``max_workers`` is the worker cap (None: no cap) of the platform the planner plans for
    (``plan.worker_cap``). :func:`pure_latencies` takes queueing out of the history's recorded
    start latencies by replaying each run through the cap it ran under, which runs record
    (:attr:`~fanflow.metrics.records.RunRecord.max_workers`): a run made under another cap gives
    the same starts as under this one. Only runs saved before runs recorded their cap are
    replayed through ``max_workers``.
    """

    def __init__(self, history: History | None, sla: str = "mean", max_workers: int | None = None) -> None:
        self.history = history
        self.sla = sla
        self.z = sla_z(sla)
        self.max_workers = max_workers
        self._exec: dict[str, MemoryModel] = {}
        self._out: dict[str, Line | None] = {}
        self._rows: dict[str, np.ndarray] = {}
        self._selected: dict[str, tuple[tuple[int, tuple[str, ...]], ...] | None] = {}

    def _fitted(self, key: tuple[Any, ...] | None, fit: Callable[[], T]) -> T:
        """``fit()``, kept for the next Predictors of this process when ``key`` names what it reads."""
        if key is None:
            return fit()
        with _fitted_lock:
            if key in _fitted:
                return _fitted[key]  # type: ignore[no-any-return]
        found = fit()
        with _fitted_lock:
            _fitted[key] = found
            while len(_fitted) > FITTED:
                del _fitted[next(iter(_fitted))]
        return found

    def _key(self, identity: str) -> tuple[Any, ...] | None:
        """What the executions of ``identity`` used are: the store, and per memory size the runs read there.

        Runs never change once saved, so the same key means the same rows (None: a History not read
        from a store, which is not kept)."""
        self._finished(identity)
        url = None if self.history is None else self.history.url
        selected = self._selected.get(identity)
        return None if url is None or selected is None else (url, identity, selected)

    def _finished(self, identity: str) -> np.ndarray:
        """Rows of ``history.table`` with the executions of ``identity`` used: per memory size, those of its
        :data:`RECENT_RUNS` latest runs there (the table is oldest run first), so a size measured long ago
        stays measured."""
        found = self._rows.get(identity)
        if found is None:
            found = np.zeros(0, dtype=np.int64)
            if self.history is not None:
                found = self.history.rows(identity)
                table = self.history.table
                run, memory = table["run"][found], table["memory_mb"][found]
                keep = np.zeros(len(found), dtype=np.bool_)
                selected = []
                for size in distinct(memory):
                    at = memory == size
                    runs = distinct(run[at])[-RECENT_RUNS:]
                    keep |= at & np.isin(run, runs)
                    selected.append((size, tuple(table.run_ids[r] for r in runs)))
                found = found[keep]
                self._selected[identity] = tuple(selected)
            self._rows[identity] = found
        return found

    def _executions(self, rows: np.ndarray, columns: Iterable[str]) -> Executions:
        """``columns`` of the executions at ``rows`` of the history's table (views when ``rows`` are every row
        in order: a plan of one function mostly reads them all, 300,000 after three runs of a 100k-task DAG)."""
        table = Executions.empty() if self.history is None else self.history.table
        every = len(rows) == len(table) and np.array_equal(rows, np.arange(len(table)))
        return table.take(slice(None) if every else rows, columns)

    def exec_model(self, identity: str) -> MemoryModel:
        """Execution time of ``identity`` (seconds on input bytes) at any memory size."""
        found = self._exec.get(identity)
        if found is None:
            rows = self._finished(identity)

            def fit() -> MemoryModel:
                ex = self._executions(rows, ("memory_mb", "in_bytes", "exec_s"))
                return MemoryModel.of_columns(ex["memory_mb"], ex["in_bytes"], ex["exec_s"], _default(DEFAULT_EXEC_S))

            found = self._fitted(_tagged("exec", self._key(identity)), fit)
            if not found.known:
                found = self._from_summaries(identity) or found
            self._exec[identity] = found
        return found

    def _from_summaries(self, identity: str) -> MemoryModel | None:
        """When executions were garbage-collected: a flat model from the summary nearest 512 MB."""
        if self.history is None:
            return None
        at_512 = self.history.predict_exec_s(identity, BASELINE_MB, 0.0)
        if at_512 is None:
            return None
        sizes = self.history.memory_sizes(identity)
        nearest = min(sizes, key=lambda m: abs(m - BASELINE_MB))
        summary = self.history.summaries[(identity, nearest)]
        spread = to_baseline(summary.stdev, nearest) * self.z
        return MemoryModel.flat(max(at_512 + spread, to_baseline(summary.min, nearest)))

    def exec_s(self, identity: str, memory_mb: int, in_bytes: float) -> Prediction:
        """Execution time of ``identity`` at ``memory_mb`` on ``in_bytes`` of input."""
        model = self.exec_model(identity)
        return Prediction(model.line(memory_mb).at(in_bytes, self.z), model.known, model.count)

    def _out_line(self, identity: str) -> Line | None:
        if identity not in self._out:
            rows = self._finished(identity)

            def fit() -> Line | None:
                ex = self._executions(rows, ("in_bytes", "out_bytes"))
                return fit_line(ex["in_bytes"], ex["out_bytes"])

            self._out[identity] = self._fitted(_tagged("out", self._key(identity)), fit)
        return self._out[identity]

    def out_bytes(self, identity: str, in_bytes: float) -> Prediction:
        """Output size of ``identity`` for ``in_bytes`` of input."""
        line = self._out_line(identity)
        if line is not None:
            return Prediction(line.at(in_bytes), True, line.count)
        if self.history is not None:
            merged = self.history.predict_out_bytes(identity, in_bytes)
            if merged is not None:
                return Prediction(merged, True)
        return Prediction(in_bytes if in_bytes > 0 else DEFAULT_OUT_BYTES, False)

    def overheads(self, identities: Iterable[str]) -> tuple[MemoryModel, ...]:
        """(fetch, upload, gap, cold, warm, mix) models over the executions of ``identities``."""
        names = list(dict.fromkeys(identities))
        keys = [self._key(identity) for identity in names]
        key = None if None in keys else ("overheads", self.max_workers, *keys)
        return self._fitted(key, lambda: self._overheads(names))

    def _overheads(self, identities: list[str]) -> tuple[MemoryModel, ...]:
        rows = [self._finished(identity) for identity in identities]
        ex = self._executions(np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64), _OVERHEADS)
        memory = ex["memory_mb"]
        fetched = (ex["fetch_s"] > 0) & (ex["fetched_bytes"] != 0)
        upload_x = np.where(kept_outputs(ex), 0.0, ex["out_bytes"])
        upload_s = np.maximum(ex["store_s"], ex.duration_s - ex["fetch_s"] - ex["exec_s"])
        starts = pure_latencies(ex, self.max_workers)
        transfer = _default(DEFAULT_LATENCY_S, DEFAULT_SECONDS_PER_BYTE)
        upload_model = MemoryModel.of_columns(memory, upload_x, upload_s, transfer)
        # nothing was ever fetched: a fetch costs what an upload costs
        fetch_model = (
            MemoryModel.of_columns(memory[fetched], ex["fetched_bytes"][fetched], ex["fetch_s"][fetched], transfer)
            if fetched.any()
            else upload_model
        )
        gap_memory, gaps = loop_gaps(ex)
        return (
            fetch_model,
            upload_model,
            MemoryModel.of_columns(gap_memory, np.zeros(len(gaps)), gaps, _default(DEFAULT_GAP_S)),
            MemoryModel(((m, 0.0, s) for m, c, s in starts if c), _default(DEFAULT_COLD_START_S)),
            MemoryModel(((m, 0.0, s) for m, c, s in starts if not c), _default(DEFAULT_WARM_START_S)),
            MemoryModel(((m, 0.0, s) for m, _, s in starts), _default(DEFAULT_WARM_START_S)),
        )

    def costs(self, dag: DAG) -> DagCosts:
        """Predictions for every task of ``dag``, in one topological pass (input bytes from upstream outputs)."""
        n = len(dag)
        deps, task_of, tasks = dag.deps, dag.task_of, dag.tasks
        identities = [t.identity for t in tasks]
        models = [self.exec_model(ident) for ident in identities]
        in_bytes = [0.0] * n
        out_bytes = [0.0] * n
        defaults: list[int] = []
        seen: dict[tuple[int, float], Prediction] = {}  # tasks of one function on one input size agree
        for i in range(n):
            f = task_of[i]
            x = sum(out_bytes[u] for u in deps[i])
            in_bytes[i] = x
            o = seen.get((f, x))
            if o is None:
                o = seen[(f, x)] = self.out_bytes(identities[f], x)
            out_bytes[i] = o.value
            if not (models[f].known and o.known):
                defaults.append(i)
        fetch, upload, gap, cold, warm, mix = self.overheads(identities)
        return DagCosts(
            in_bytes, out_bytes, list(task_of), models, fetch, upload, gap, cold, warm, mix, self.z, defaults
        )
