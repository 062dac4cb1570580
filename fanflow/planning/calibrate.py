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
  ratio of its :data:`RECENT` latest successful runs (all kinds together when
  that kind never ran); ratios outside [:data:`MIN_FACTOR`, :data:`MAX_FACTOR`]
  are left out (the first run of a DAG is planned from defaults and can be off
  by 100×); 1.0 without any past run. The critical-path planner compares candidates with
  their kind's factor applied, so a mixed plan whose runs came out slower than
  predicted loses to uniform on the next run;
- the **interval** is the wider of the simulator's own spread (the plan
  simulated with every prediction at its 10th and 90th percentile) and the
  spread of the past raw ratios around their median (with at least
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


@dataclass(frozen=True, slots=True)
class Calibration:
    """Past raw ratios (actual / simulated makespan) of one DAG per plan kind, newest first."""

    ratios: Mapping[str, list[float]] = field(default_factory=dict)
    missed: int = 0
    """Past runs (among those read) whose actual makespan fell outside their predicted interval."""

    @classmethod
    def from_runs(cls, docs: Iterable[Mapping[str, Any]], platform: str) -> Calibration:
        """From run documents (newest first, as a metadata store lists them): successful runs on ``platform``."""
        ratios: dict[str, list[float]] = {k: [] for k in KINDS}
        missed = 0
        for doc in docs:
            predicted = doc.get("predicted_makespan_s")
            kind = doc.get("plan_kind") or ""
            if doc.get("status") != "succeeded" or doc.get("platform") != platform or kind not in ratios:
                continue
            if not predicted or predicted <= 0 or len(ratios[kind]) >= RECENT:
                continue
            actual = float(doc.get("makespan_s") or 0.0)
            raw = predicted / float(doc.get("calibration") or 1.0)
            ratio = actual / raw
            if not MIN_FACTOR <= ratio <= MAX_FACTOR:
                continue  # a first run planned from defaults, or a stalled machine: no lesson for the plan
            ratios[kind].append(ratio)
            low, high = doc.get("predicted_p10_s"), doc.get("predicted_p90_s")
            if low is not None and high is not None and not low <= actual <= high:
                missed += 1
        return cls(ratios, missed)

    def _pool(self, kind: str) -> list[float]:
        own = list(self.ratios.get(kind, ()))
        return own or [r for k in KINDS for r in self.ratios.get(k, ())]

    def factor(self, kind: str) -> float:
        """What to multiply a simulated makespan (and GB-s) of a plan of ``kind`` by."""
        pool = self._pool(kind)
        if not pool:
            return 1.0
        return statistics.median(pool)

    def factors(self) -> dict[str, float]:
        return {k: self.factor(k) for k in KINDS}

    def spread(self, kind: str) -> tuple[float, float]:
        """(low, high) multipliers around the calibrated prediction that past runs of ``kind`` fell within."""
        pool = self._pool(kind)
        if len(pool) < MIN_SPREAD_RUNS:
            return 1.0, 1.0
        mid = statistics.median(pool)
        return min(pool) / mid, max(pool) / mid

    @property
    def runs(self) -> int:
        return sum(len(v) for v in self.ratios.values())
