"""Predictions from run history: execution time, output size, transfer time and worker start latency.

Every planner question is answered from a :class:`~fanflow.metrics.History`
read ONCE per planning call; nothing here touches a store afterwards.

The models, and why:

- **Execution time** of a function is a least-squares line of its time on its
  total input bytes, fitted on the samples *normalized to 512 MB*
  (``exec_s_512``, :mod:`fanflow.metrics.normalize`), pooled over every memory
  size it ran at. Pooling is what lets a planner ask about a memory size the
  function never ran at: the time at ``m`` MB is the 512 MB time converted with
  :func:`~fanflow.metrics.normalize.from_baseline`. Below
  :data:`MIN_LINE_SAMPLES` samples (or when the input size never varied) the
  line is flat: the mean.
- **Output size** is a line of output bytes on input bytes (flat below
  :data:`MIN_LINE_SAMPLES`). It does not depend on memory.
- **Transfer time** is ``latency + bytes × seconds_per_byte``, two lines fitted
  over every execution of the DAG's functions: *fetch* from the one fetch round
  trip of each task that fetched something (fetched bytes, ``fetch_s``), and
  *upload* from what a task spent after executing (output bytes, task duration
  minus fetch and execution: serializing, the store + notify round trip and the
  loop's own bookkeeping), both normalized to 512 MB like execution times.
- **Worker start latency** (invoke to worker start) is the mean over past
  workers, cold and warm separately, plus the mix of both, which is what a new
  worker is expected to cost when the planner cannot tell which one it gets.
- **SLA**: ``mean`` is the fitted value; a percentile ``pNN`` adds ``z(NN)``
  residual standard deviations to it (normal approximation of the residuals,
  ``z`` from :class:`statistics.NormalDist`); ``p50`` is the mean.

An unknown is never a silent zero. Every answer is a :class:`Prediction` whose
``known`` says whether history backed it; unknowns use the documented defaults
(:data:`DEFAULT_EXEC_S` and friends), and :class:`DagCosts` lists the tasks
predicted from defaults so the plan can say so. Summaries (which survive
retention) back a function whose executions were all garbage-collected.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from fanflow.dag.graph import DAG
from fanflow.metrics.history import History
from fanflow.metrics.normalize import BASELINE_MB, from_baseline, to_baseline
from fanflow.metrics.records import FINISHED, TaskRecord

DEFAULT_EXEC_S = 0.01
"""Execution time at 512 MB assumed for a function with no history."""
DEFAULT_OUT_BYTES = 1024.0
"""Output size assumed for a root task (no inputs) with no history; others pass their input size through."""
DEFAULT_LATENCY_S = 0.002
"""Per-round-trip latency at 512 MB assumed when no transfer was ever recorded."""
DEFAULT_SECONDS_PER_BYTE = 1e-8
"""Transfer cost assumed when none was recorded (100 MB/s)."""
DEFAULT_COLD_START_S = 0.5
"""Cold start latency (a new worker process) assumed without worker history."""
DEFAULT_WARM_START_S = 0.01
"""Warm start latency (a pooled worker) assumed without worker history."""
MIN_LINE_SAMPLES = 3
"""Fewer samples than this give a flat fit (the mean) rather than a line."""


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


def fit_line(xs: Sequence[float], ys: Sequence[float], floor: float = 0.0) -> Line | None:
    """Least squares of ``ys`` on ``xs`` (flat below :data:`MIN_LINE_SAMPLES` or without spread in x)."""
    n = len(xs)
    if n == 0:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = 0.0
    if n >= MIN_LINE_SAMPLES and sxx > 1e-9 * max(1.0, mean_x * mean_x * n):
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    dof = n - (2 if slope else 1)
    sd = math.sqrt(sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True)) / dof) if dof > 0 else 0.0
    return Line(intercept, slope, sd, n, floor)


def sla_z(sla: str) -> float:
    """Standard deviations above the mean for ``mean`` (0) or a percentile ``p50``..``p99``."""
    if sla == "mean":
        return 0.0
    return NormalDist().inv_cdf(int(sla[1:]) / 100)


@functools.cache
def scale(memory_mb: int) -> float:
    """Factor turning a 512 MB time into the time at ``memory_mb``."""
    return from_baseline(1.0, memory_mb)


@dataclass(slots=True)
class DagCosts:
    """Per-task predictions for one DAG, as plain lists indexed by task id (what the simulator reads).

    Times are at 512 MB; multiply by :func:`scale` for another memory size.
    """

    exec_512: list[float]
    in_bytes: list[float]
    out_bytes: list[float]
    fetch: Line
    upload: Line
    start_s: float
    cold_start_s: float
    warm_start_s: float
    z: float
    defaults: list[int] = field(default_factory=list)
    """Tasks whose execution time or output size came from a default, not from history."""
    transfer_known: bool = False
    start_known: bool = False

    def fetch_s(self, nbytes: float, memory_mb: int) -> float:
        """One fetch round trip of ``nbytes`` at ``memory_mb`` (0 when nothing is fetched)."""
        return self.fetch.at(nbytes, self.z) * scale(memory_mb) if nbytes > 0 else 0.0

    def upload_s(self, nbytes: float, memory_mb: int) -> float:
        """Store + notify round trip (and loop overhead) for an output of ``nbytes`` (0: notify only)."""
        return self.upload.at(nbytes, self.z) * scale(memory_mb)


class Predictor:
    """Answers prediction questions from a :class:`History` (or from defaults when it is None)."""

    def __init__(self, history: History | None, sla: str = "mean") -> None:
        self.history = history
        self.sla = sla
        self.z = sla_z(sla)
        self._exec: dict[str, Line | None] = {}
        self._out: dict[str, Line | None] = {}
        self._records: dict[str, list[TaskRecord]] = {}

    def _finished(self, identity: str) -> list[TaskRecord]:
        found = self._records.get(identity)
        if found is None:
            found = []
            if self.history is not None:
                found = [r for r in self.history.executions(identity) if r.status == FINISHED]
            self._records[identity] = found
        return found

    def _exec_line(self, identity: str) -> Line | None:
        if identity not in self._exec:
            records = self._finished(identity)
            xs = [float(r.in_bytes) for r in records]
            ys = [r.exec_s_512 for r in records]
            self._exec[identity] = fit_line(xs, ys, floor=min(ys, default=0.0))
        return self._exec[identity]

    def _out_line(self, identity: str) -> Line | None:
        if identity not in self._out:
            records = self._finished(identity)
            self._out[identity] = fit_line([float(r.in_bytes) for r in records], [float(r.out_bytes) for r in records])
        return self._out[identity]

    def exec_s(self, identity: str, memory_mb: int, in_bytes: float) -> Prediction:
        """Execution time of ``identity`` at ``memory_mb`` on ``in_bytes`` of input."""
        line = self._exec_line(identity)
        if line is not None:
            return Prediction(from_baseline(line.at(in_bytes, self.z), memory_mb), True, line.count)
        if self.history is not None:
            at_512 = self.history.predict_exec_s(identity, BASELINE_MB, in_bytes)
            if at_512 is not None:
                sizes = self.history.memory_sizes(identity)
                nearest = min(sizes, key=lambda m: abs(m - BASELINE_MB))
                summary = self.history.summaries[(identity, nearest)]
                spread = to_baseline(summary.stdev, nearest) * self.z
                return Prediction(from_baseline(max(at_512 + spread, summary.min), memory_mb), True, summary.count)
        return Prediction(from_baseline(DEFAULT_EXEC_S, memory_mb), False)

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

    def transfer_lines(self, identities: Iterable[str]) -> tuple[Line, Line, bool]:
        """(fetch, upload) lines at 512 MB over the executions of ``identities``; True when fitted."""
        fx: list[float] = []
        fy: list[float] = []
        ux: list[float] = []
        uy: list[float] = []
        for identity in identities:
            for r in self._finished(identity):
                if r.fetch_s > 0 and r.fetched_bytes > 0:
                    fx.append(float(r.fetched_bytes))
                    fy.append(r.fetch_s_512)
                post = max(r.store_s, r.duration_s - r.fetch_s - r.exec_s)
                ux.append(float(r.out_bytes))
                uy.append(to_baseline(post, r.memory_mb))
        fetch = fit_line(fx, fy, floor=min(fy, default=0.0))
        upload = fit_line(ux, uy, floor=min(uy, default=0.0))
        default = Line(DEFAULT_LATENCY_S, DEFAULT_SECONDS_PER_BYTE, 0.0, 0, DEFAULT_LATENCY_S)
        if upload is None:
            return fetch or default, default, False
        if fetch is None:  # nothing was ever fetched: a fetch costs what an upload costs
            fetch = upload
        return fetch, upload, True

    def start_latency(self, identities: Iterable[str]) -> tuple[Prediction, Prediction, Prediction]:
        """(any new worker, cold, warm) start latencies, from the workers that ran these functions."""
        seen: dict[tuple[str, str], tuple[bool, float]] = {}
        for identity in identities:
            for r in self._finished(identity):
                if r.worker:
                    seen.setdefault((r.run_id, r.worker), (r.worker_cold, r.worker_latency_s))
        cold = [s for c, s in seen.values() if c]
        warm = [s for c, s in seen.values() if not c]
        both = cold + warm

        def stat(values: list[float], default: float) -> Prediction:
            line = fit_line([0.0] * len(values), values)
            if line is None:
                return Prediction(default, False)
            return Prediction(line.at(0.0, self.z), True, line.count)

        mix_default = DEFAULT_WARM_START_S
        return stat(both, mix_default), stat(cold, DEFAULT_COLD_START_S), stat(warm, DEFAULT_WARM_START_S)

    def costs(self, dag: DAG) -> DagCosts:
        """Predictions for every task of ``dag``, in one topological pass (input bytes from upstream outputs)."""
        n = len(dag)
        deps, task_of, tasks = dag.deps, dag.task_of, dag.tasks
        identities = [t.identity for t in tasks]
        exec_512 = [0.0] * n
        in_bytes = [0.0] * n
        out_bytes = [0.0] * n
        defaults: list[int] = []
        for i in range(n):
            ident = identities[task_of[i]]
            x = sum(out_bytes[u] for u in deps[i])
            in_bytes[i] = x
            e = self.exec_s(ident, BASELINE_MB, x)
            o = self.out_bytes(ident, x)
            exec_512[i] = e.value
            out_bytes[i] = o.value
            if not (e.known and o.known):
                defaults.append(i)
        fetch, upload, transfer_known = self.transfer_lines(identities)
        start, cold, warm = self.start_latency(identities)
        return DagCosts(
            exec_512,
            in_bytes,
            out_bytes,
            fetch,
            upload,
            start.value,
            cold.value,
            warm.value,
            self.z,
            defaults,
            transfer_known,
            start.known,
        )
