"""The :class:`MetadataStore` protocol: where the history of runs lives, and the running summary.

A metadata store keeps, per run, one *run document* (a JSON-able dict) and its
*trace*: the run's events and its DAG's structure in one compact blob
(:mod:`fanflow.store.metadata.trace`), read whole. Task and worker records are
not stored: :mod:`fanflow.metrics`, which owns their meaning, builds them from
the trace when history is read, which is far rarer than recording. Runs saved
by older versions kept task, worker and event documents instead; they are still
read (:class:`StoredRun`). A run also gets a small *started document* when it
starts (its header and DAG structure, written by the client), so a dashboard
can show it while it is in flight. A store only reads the few fields it
indexes: the run's ``run_id``, ``signature`` (DAG signature) and
``submitted_at``, and the function identities the run's tasks call.

History is indexed two ways, by DAG signature ("the past runs of this
workflow") and by function identity ("the runs that executed f"), which is
what planning asks.

History stays bounded in two ways. Retention (:meth:`MetadataStore.gc`) keeps
the newest N runs with all their documents. Beside it, a :class:`Summary` per
``(identity, memory_mb)`` is merged into on every save and never shrinks: a
fixed-size record (count, mean and M2 of execution time, min/max, and the sums
a least-squares fit of time on input bytes needs), so a prediction costs one
lookup however long the history is, and survives retention.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

from fanflow.errors import FanflowError


class MetadataError(FanflowError):
    """The metadata store cannot be opened or used."""


class RunNotFoundError(MetadataError):
    """No run with this id is in the metadata store."""


SummaryKey = tuple[str, int]
"""``(function identity, memory_mb)``."""


@dataclass(slots=True)
class Summary:
    """Running summary of one function's executions at one memory size.

    ``y`` is the execution time in seconds, ``x`` the task's total input bytes
    (local and fetched) and ``out`` its output bytes. Mean and variance use
    Welford's update and Chan's merge, which stay accurate where a plain sum of
    squares would cancel; the x sums are what a least-squares line needs.
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = 0.0
    sum_x: float = 0.0
    sum_xx: float = 0.0
    sum_xy: float = 0.0
    sum_out: float = 0.0
    sum_x_out: float = 0.0

    def add(self, exec_s: float, in_bytes: float, out_bytes: float) -> None:
        """Count one execution."""
        self.count += 1
        delta = exec_s - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (exec_s - self.mean)
        self.min = min(self.min, exec_s)
        self.max = max(self.max, exec_s)
        self.sum_x += in_bytes
        self.sum_xx += in_bytes * in_bytes
        self.sum_xy += in_bytes * exec_s
        self.sum_out += out_bytes
        self.sum_x_out += in_bytes * out_bytes

    def merge(self, other: Summary) -> Summary:
        """A new summary of both sets of executions (Chan et al.'s parallel update)."""
        if other.count == 0:
            return Summary(*summary_values(self))
        if self.count == 0:
            return Summary(*summary_values(other))
        n = self.count + other.count
        delta = other.mean - self.mean
        return Summary(
            count=n,
            mean=self.mean + delta * other.count / n,
            m2=self.m2 + other.m2 + delta * delta * self.count * other.count / n,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            sum_x=self.sum_x + other.sum_x,
            sum_xx=self.sum_xx + other.sum_xx,
            sum_xy=self.sum_xy + other.sum_xy,
            sum_out=self.sum_out + other.sum_out,
            sum_x_out=self.sum_x_out + other.sum_x_out,
        )

    @property
    def variance(self) -> float:
        """Sample variance of the execution time (0 below two executions)."""
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def stdev(self) -> float:
        return math.sqrt(self.variance)

    def _line(self, sum_y: float, sum_xy: float) -> tuple[float, float]:
        """Least-squares ``(intercept, slope)`` of y on x; flat when x never varied."""
        n = self.count
        denom = n * self.sum_xx - self.sum_x * self.sum_x
        if n < 2 or abs(denom) <= 1e-12 * max(1.0, n * self.sum_xx):
            return sum_y / n, 0.0
        slope = (n * sum_xy - self.sum_x * sum_y) / denom
        return (sum_y - slope * self.sum_x) / n, slope

    def predict_exec_s(self, in_bytes: float) -> float:
        """Execution time expected for ``in_bytes`` of input (never below the fastest seen)."""
        if self.count == 0:
            raise MetadataError("an empty summary predicts nothing; check Summary.count first")
        intercept, slope = self._line(self.mean * self.count, self.sum_xy)
        return max(self.min, intercept + slope * in_bytes)

    def predict_out_bytes(self, in_bytes: float) -> float:
        """Output size expected for ``in_bytes`` of input (never negative)."""
        if self.count == 0:
            raise MetadataError("an empty summary predicts nothing; check Summary.count first")
        intercept, slope = self._line(self.sum_out, self.sum_x_out)
        return max(0.0, intercept + slope * in_bytes)

    def to_dict(self) -> dict[str, float]:
        return dict(zip(_SUMMARY_FIELDS, summary_values(self), strict=True))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        known = {f.name for f in fields(cls)}
        values = {k: float(v) for k, v in data.items() if k in known}
        values["count"] = int(values.get("count", 0))
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def of_columns(cls, exec_s: Sequence[float], in_bytes: Sequence[float], out_bytes: Sequence[float]) -> Summary:
        """The summary of executions given as columns: :meth:`of` of their triples (to rounding: the squares
        are summed about the mean, not updated one by one), summed by C-level builtins, no call per execution."""
        count = len(exec_s)
        if count == 0:
            return cls()
        mean = math.fsum(exec_s) / count
        deviations = [y - mean for y in exec_s]
        return cls(
            count=count,
            mean=mean,
            m2=math.fsum(map(operator.mul, deviations, deviations)),
            min=min(exec_s),
            max=max(0.0, max(exec_s)),
            sum_x=math.fsum(in_bytes),
            sum_xx=math.fsum(map(operator.mul, in_bytes, in_bytes)),
            sum_xy=math.fsum(map(operator.mul, in_bytes, exec_s)),
            sum_out=math.fsum(out_bytes),
            sum_x_out=math.fsum(map(operator.mul, in_bytes, out_bytes)),
        )

    @classmethod
    def of(cls, executions: Iterable[tuple[float, float, float]]) -> Summary:
        """The summary of ``(exec_s, in_bytes, out_bytes)`` triples."""
        summary = cls()
        for exec_s, in_bytes, out_bytes in executions:
            summary.add(exec_s, in_bytes, out_bytes)
        return summary


_SUMMARY_FIELDS = tuple(f.name for f in fields(Summary))
summary_values = operator.attrgetter(*_SUMMARY_FIELDS)
"""Every field of a summary, in field order, in one C-level call: saves merge summaries on every run."""


class StoredRun:
    """Everything kept of one run.

    A run saved by this version has its ``trace``; ``events`` decodes it.
    A run saved before traces existed has ``trace`` None and its documents
    in ``tasks``, ``workers`` and ``events`` (a store reading the runs of some
    functions fills ``tasks`` with only those functions' documents).
    """

    __slots__ = ("_events", "run", "tasks", "trace", "workers")

    def __init__(
        self,
        run: dict[str, Any],
        trace: bytes | None = None,
        tasks: list[dict[str, Any]] | None = None,
        workers: list[dict[str, Any]] | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> None:
        self.run = run
        self.trace = trace
        self.tasks = tasks or []
        self.workers = workers or []
        self._events = events

    @property
    def events(self) -> list[dict[str, Any]]:
        """The run's events, in the order its stream held them."""
        if self._events is None:
            from fanflow.store.metadata.trace import decode_trace  # trace imports this module

            self._events = decode_trace(self.trace).table.events() if self.trace is not None else []
        return self._events


def gc_every(keep_runs: int) -> int:
    """Saves between the retention passes of ``save_run``: a tenth of what is kept (so at most 10% more)."""
    return max(1, keep_runs // 10)


class MetadataStore(Protocol):
    """History of runs: documents by run, by DAG signature and by function, plus summaries."""

    url: str

    def save_run(
        self,
        run: Mapping[str, Any],
        trace: bytes,
        functions: Iterable[str],
        summaries: Mapping[SummaryKey, Summary],
        keep_runs: int | None = None,
    ) -> None:
        """Store one run's document and trace and merge ``summaries`` into the running ones, atomically.

        ``functions`` are the identities of the functions its tasks call (the
        index :meth:`task_runs` reads). Saving a run id again replaces it but
        merges its summaries again, so callers save each run once. With
        ``keep_runs``, every :func:`gc_every` saves in this process also apply
        retention (:meth:`gc`).
        """
        ...

    def runs(self, signature: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Run documents, newest first; only runs of one DAG when ``signature`` is given."""
        ...

    def load_run(self, run_id: str) -> StoredRun:
        """Every document of a run; :class:`RunNotFoundError` when it is not kept."""
        ...

    def task_runs(self, identities: Iterable[str] | None = None) -> list[StoredRun]:
        """The kept runs whose tasks call any of ``identities`` (every run when None), oldest first.

        A run saved before traces existed comes with only the task documents
        of those functions.
        """
        ...

    def task_run_ids(self, identities: Iterable[str] | None = None) -> list[str]:
        """The ids of the runs :meth:`task_runs` would give, newest first, without reading the runs.

        A reader that needs only the latest runs pages through them with
        :meth:`load_run` and stops when it has enough: a run's row can be
        megabytes (a trace), and planning needs ten runs of the thousand kept.
        """
        ...

    def summaries(self, identities: Iterable[str] | None = None) -> dict[SummaryKey, Summary]:
        """The running summaries, for every function or only for ``identities``."""
        ...

    def gc(self, keep_runs: int) -> list[str]:
        """Delete all but the newest ``keep_runs`` runs; returns the ids deleted.

        Summaries are kept: they already count the deleted runs' executions.
        Started documents of the deleted runs go with them.
        """
        ...

    def save_started(self, doc: Mapping[str, Any], ttl_s: int) -> None:
        """Keep the *started document* of a run (``run_id``, ``submitted_at``, header, DAG structure).

        Written when a run starts, so a dashboard knows runs in flight before
        their records exist; saving the same run id again replaces it. It is
        kept ``ttl_s`` seconds (the run's key TTL: past it nothing of the run is
        live) or until :meth:`gc` deletes its run.
        """
        ...

    def started_runs(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Started documents of the runs not saved yet (in flight, or ended unrecorded), newest first."""
        ...

    def load_started(self, run_id: str) -> dict[str, Any] | None:
        """The started document of a run, saved or not, while it is kept; None otherwise."""
        ...

    def close(self) -> None: ...


Execution = tuple[str, int, float, float, float]
"""One execution as plain values, what a :class:`Summary` counts: ``(identity, memory_mb, exec_s, in_bytes,
out_bytes)``."""


@runtime_checkable
class SavesRaw(Protocol):
    """The optional part of a :class:`MetadataStore` that keeps tiny runs raw (:mod:`fanflow.store.metadata.raw`).

    Such a store expands them when they are read, in every read method, so a
    reader cannot tell a raw run from one saved with :meth:`MetadataStore.save_run`.
    """

    def save_raw(self, runs: Sequence[RawRun]) -> None:
        """Store raw runs (:mod:`fanflow.store.metadata.raw`) as :meth:`MetadataStore.save_run` would, in order.

        Of each run, ``parts`` are what :func:`fanflow.store.metadata.raw.pack_batch` packs, and
        ``executions`` what its summary increments count, as plain values:
        they wait in memory, where the garbage collector need
        not follow them (it stops tracking a tuple of strings and numbers).
        """
        ...


RawRun = tuple[tuple[Any, ...], tuple[Execution, ...], int | None]
"""A raw run as :meth:`SavesRaw.save_raw` takes it: ``(parts, executions, keep_runs)``, its parts a
:data:`fanflow.store.metadata.raw.RawParts`."""


def saves_raw(store: object) -> SavesRaw | None:
    """``store`` as a :class:`SavesRaw` when it is one (answered once per class: a protocol check is slow)."""
    return store if _saves_raw(type(store)) else None  # type: ignore[return-value]


@functools.cache
def _saves_raw(kind: type) -> bool:
    return issubclass(kind, SavesRaw)
