"""Learning from past predictions: actual / predicted makespan of earlier runs of one DAG, per plan kind.

The simulator is only as good as its inputs, and some errors are systematic (a
machine busier than the history it learned from, a BLAS call that scales worse
than measured, transfers that contend). Every run records what was predicted
(``predicted_makespan_s``, its interval ``predicted_p10_s``..``predicted_p90_s``,
the ``calibration`` factor applied and the ``plan_kind``) beside the actual
makespan, so the next plan of the same DAG (same signature, same platform) can
correct itself:

- the **raw ratio** of a past run is ``makespan_s / (predicted_makespan_s /
  calibration)``: actual over what the simulator alone said, so a correction
  never compounds on itself;
- the **factor** for a plan kind (``uniform`` or ``mixed``) is the median raw
  ratio of its :data:`RECENT` latest successful runs *that started the same
  way*: with cold starts (the run started fresh worker processes) or without
  (every worker found a warm one). A cold start is a large step the simulator
  predicts from few samples, so the two err differently; a run right after
  a run of the same plan is warm, the first after another plan's run is not.
  When that kind never started that way, the other kind's runs that did
  stand in, then every run. Runs planned with any default prediction record no
  kind and teach nothing; ratios outside [:data:`MIN_FACTOR`,
  :data:`MAX_FACTOR`] are left out; 1.0 without any past run. The
  critical-path planner compares candidates with their kind's factor
  applied, so a mixed plan whose runs came out slower than predicted loses to
  uniform on the next run;
- the **interval** is the wider of the simulator's own spread (the steps of
  the critical path at their 10th and 90th percentiles) and the spread of the
  past raw ratios around their median (with at least
  :data:`MIN_SPREAD_RUNS` of them); a run that fell outside its interval widens
  the next one.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RECENT = 5
"""Latest runs per plan kind that a factor is the median of."""
MIN_SPREAD_RUNS = 3
"""Past runs needed before their spread widens the interval."""
MIN_FACTOR, MAX_FACTOR = 0.2, 5.0
"""Ratios outside these bounds are ignored: such a run says more about itself than about the plan."""
KINDS = ("uniform", "mixed")


Key = tuple[str, bool]
"""(plan kind, whether the run started with cold starts)."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """Past raw ratios (actual / simulated makespan) of one DAG per plan kind and start, newest first."""

    ratios: Mapping[Key, list[float]] = field(default_factory=dict)
    missed: int = 0
    """Past runs (among those read) whose actual makespan fell outside their predicted interval."""

    @classmethod
    def from_runs(cls, docs: Iterable[Mapping[str, Any]], platform: str) -> Calibration:
        """From run documents (newest first, as a metadata store lists them): successful runs on ``platform``."""
        ratios: dict[Key, list[float]] = {(k, c): [] for k in KINDS for c in (False, True)}
        missed = 0
        for doc in docs:
            predicted = doc.get("predicted_makespan_s")
            key = (doc.get("plan_kind") or "", bool(doc.get("cold_starts")))
            if doc.get("status") != "succeeded" or doc.get("platform") != platform or key not in ratios:
                continue
            if not predicted or predicted <= 0 or len(ratios[key]) >= RECENT:
                continue
            actual = float(doc.get("makespan_s") or 0.0)
            raw = predicted / float(doc.get("calibration") or 1.0)
            ratio = actual / raw
            if not MIN_FACTOR <= ratio <= MAX_FACTOR:
                continue  # a stalled machine: no lesson for the plan
            ratios[key].append(ratio)
            low, high = doc.get("predicted_p10_s"), doc.get("predicted_p90_s")
            if low is not None and high is not None and not low <= actual <= high:
                missed += 1
        return cls(ratios, missed)

    def _pool(self, kind: str, cold: bool | None) -> list[float]:
        starts = (False, True) if cold is None else (cold,)
        for keys in (
            [(kind, c) for c in starts],
            [(k, c) for k in KINDS for c in starts],
            [(k, c) for k in KINDS for c in (False, True)],
        ):
            found = [r for key in keys for r in self.ratios.get(key, ())]
            if found:
                return found
        return []

    def factor(self, kind: str, cold: bool | None = None) -> float:
        """What to multiply a simulated makespan (and GB-s) of a plan of ``kind`` by; ``cold``: whether the
        plan is predicted to start fresh worker processes (None: not told apart, as on a platform without
        a pool, where every start is the same mix)."""
        pool = self._pool(kind, cold)
        if not pool:
            return 1.0
        return statistics.median(pool)

    def factors(self, cold: bool | None = None) -> dict[str, float]:
        return {k: self.factor(k, cold) for k in KINDS}

    def spread(self, kind: str, cold: bool | None = None) -> tuple[float, float]:
        """(low, high) multipliers around the calibrated prediction that past runs of ``kind`` fell within."""
        pool = self._pool(kind, cold)
        if len(pool) < MIN_SPREAD_RUNS:
            return 1.0, 1.0
        mid = statistics.median(pool)
        return min(pool) / mid, max(pool) / mid

    @property
    def runs(self) -> int:
        return sum(len(v) for v in self.ratios.values())
