"""Learning from past predictions: actual / predicted makespan of earlier runs of one DAG, per plan.

The simulator is only as good as its inputs, and some errors are systematic (a
machine busier than the history it learned from, a BLAS call that scales worse
than measured, transfers that contend). Every run records what was predicted
(``predicted_makespan_s``, its interval ``predicted_p10_s``..``predicted_p90_s``,
the ``calibration`` factor applied and the ``plan_kind``) beside the actual
makespan, so the next plan of the same DAG (same signature, same platform) can
correct itself:

- the **raw ratio** of a past run is ``makespan_s / (predicted_makespan_s /
  calibration)``: actual over what the simulator alone said, so a correction
  never compounds on itself. A past run of the very plan being predicted is
  compared with what the simulator says of that plan *now* instead (and so
  is a run of another plan the planner simulated in this call, predicted
  the same way, cold or warm): its own prediction came from an older
  history (a prediction moves as history fills, and a factor learned
  against an older one kept multiplying the newer: image_transform was
  predicted 12-22% too fast that way), so a plan run before is predicted at
  the median of its latest makespans, and plans are compared on one basis;
- the **factor** for a plan is the median raw ratio of its :data:`RECENT`
  latest successful runs *that started the same way*: with cold starts (the
  run started fresh worker processes) or without (every worker found a warm
  one). A plan is its kind and memory sizes (``uniform 1769``, ``mixed
  512/3008``: :func:`~fanflow.planning.planners.plan_key`), because one
  simulator errs differently per size: a factor per kind averaged uniform
  1769 MB's runs with uniform 3008 MB's, so when one size ran slower than
  predicted and the other did not, the planner could not tell (the tree
  reduction's 1769 MB plan ran 1.13x uniform 3008 MB on a quiet machine).
  A cold start is a large step the simulator predicts from few samples, so
  cold and warm runs err differently; a run right after a run of the same plan is warm, the first
  after another plan's run is not. A plan with fewer than :data:`OWN_RUNS`
  runs that started that way shares, in order, its kind's runs that did,
  every run that did, then every run. Runs planned with any default prediction
  record no plan and teach nothing; ratios outside [:data:`MIN_FACTOR`,
  :data:`MAX_FACTOR`] are left out; 1.0 without any past run. The
  critical-path planner compares candidates with their own factor applied,
  so a plan whose runs came out slower than predicted loses to uniform on
  the next run. Only the :data:`LATEST` runs of the DAG count, so a plan
  turned down on its own runs is tried again once they are older;
- the run's own **prediction** takes the latest runs with the newest counted
  twice, unless it is the slowest (of 2 runs: the faster), as noise only
  slows runs (:meth:`Calibration.predicting`, :func:`recent_level`); plans
  are compared on the plain median (:meth:`Calibration.factor`);
- the **interval** is the wider of the simulator's own spread (the steps of
  the critical path at their 10th and 90th percentiles) and what that
  prediction would have erred by on the plan's past runs (at least
  :data:`MIN_SPREAD_RUNS` of them, up to :data:`LATEST`): each run's ratio
  against the :data:`RECENT` runs before it (:func:`recent_level`), as
  logs, their root mean square widened for the few runs it comes from, at
  the 10th and 90th percentiles of Student's t for that many errors
  (:func:`quantile_90`), never past :data:`WIDEST` times the largest error
  seen. That error is run-to-run noise plus the lag of the
  prediction behind a pool that is still settling, which is what the next
  run's prediction will meet; the spread of the 3 latest ratios (their
  minimum to maximum, from 3 runs on) held 26 of 40 runs on a quiet machine,
  and 137 of 360 recorded runs replayed at load 4-11 (38%; this: 288, 80%).
  A run that fell outside its interval (``missed`` counts them) is learned
  from twice: its ratio moves its plan's factor, and it widens the next
  interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RECENT = 3
"""Latest runs per plan that a factor is the median of. A warm pool's runs still get faster over its first
runs (its value cache fills, allocations settle): the median of 5 lagged behind, gemm and tree_reduction were
predicted 17-19% slow over 5 runs at a CV of 8-10%."""
LATEST = 10
"""Latest runs of the DAG that calibration learns from, whatever their plan. A plan whose runs are older is
predicted as one never run (from its kind's runs), so a plan turned down on its own runs is tried again after
this many runs of others: the load it was measured under may have passed, and without it the planner kept
uniform 3008 MB for good after one slow stretch of 1769 MB runs."""
MIN_SPREAD_RUNS = 2
"""Past runs needed before their spread widens the interval (the first has no runs before it to err from).
With 3, a run predicted from 2 warm-ups had only the simulator's interval (a few %): the first measured run
of 40 recorded sequences fell inside it 0 times."""
WIDEST = 2.0
"""An interval reaches at most this many times the largest error seen on the plan's runs. From one or two
errors Student's t is 2.70 or 1.85 times their root mean square (times 1.41 or 1.22 for the sample): the
first measured run after two warm-ups that differed 4.5x at load 10 got p10-p90 0.004-3.7 s around 0.12 s.
Replayed on 360 recorded runs: 82% inside with widths up to 189x; capped, 80% inside, widths up to 61x (the
largest error seen was 2.7x), median 2.07x, both at load 4-11."""
INTERVAL_Z = statistics.NormalDist().inv_cdf(0.9)
"""Standard deviations between a prediction and its 10th / 90th percentile, for a spread known exactly."""
OWN_RUNS = 3
"""Runs of a plan (that started the same way) needed before they alone make its factor; with fewer it shares its
kind's runs. The +5% check compares plans by their factors, and two runs of uniform 3008 MB against eight of
1769 MB turned 1769 MB down on noise."""
MIN_FACTOR, MAX_FACTOR = 0.2, 5.0
"""Ratios outside these bounds are ignored: such a run says more about itself than about the plan."""
KINDS = ("uniform", "mixed")


def quantile_90(n: int) -> float:
    """The 90th percentile of Student's t with ``n`` degrees of freedom: :data:`INTERVAL_Z` widened for a
    spread estimated from ``n`` errors (Cornish-Fisher expansion; 1.85 for 2, 1.47 for 5, within 2% of the
    exact value from 2 up; 2.70 for 1, where it is 3.08)."""
    z = INTERVAL_Z
    return z + (z**3 + z) / (4 * n) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n * n)


def recent_level(ratios: Sequence[float]) -> float:
    """The level of the latest runs (``ratios`` newest first, not empty): the median of the latest 3 with the
    newest counted twice, unless the newest is above both others (then the plain median); of 2 runs, the
    lower.

    Of the latest 3: the newest when it lies between the other two, halfway from it to the nearer one when it
    is below both, the middle one when it is above both. A pool still settling (each run faster) is followed
    a run sooner than by the plain median (a quiet tree_reduction's warm-ups at 0.16 s and measured runs at
    0.10 s kept the median at 0.16 s for two measured runs), while a run slower than both before it is more
    likely one that other jobs slowed than a new level: on a shared machine noise only ever slows a run. So
    is the slower of 2: the first measured run is predicted from the 2 warm-ups after the first (whose plan
    came from defaults and teaches nothing), and the newer of them alone was one odd run away from the
    prediction (image_transform warm-ups 0.031 and 0.054 s, predicted 0.054 s, ran 0.034-0.038 s).
    Replayed on 335 recorded runs of 67 sequences (3 warm-ups, 5 measured; both sizes; load 5-9; newest
    always counted twice -> this): 90th percentile of the error 40.7% -> 40.2%, the first measured run's
    53.9% -> 42.4% (its median 12.2% -> 13.2%), median 11.7% -> 11.6%; inside p10-p90 81% -> 80%.

    Kept after a wider replay (``benchmarks/level_replay.py``: 768 runs of 96 sequences, 3 warm-ups and 8
    measured runs of each workload at both sizes, half with 2 busy loops during one run, load 1-2.5): median /
    p90 error 5.6 / 18.3% (quiet sequences 5.7 / 20.3%, the runs after a slowed one 5.5 / 17.5%). The lower
    of the latest 2 gave 5.4 / 19.3% (quiet 6.3 / 21.7%; the small tree 11.1 / 29.0% against 8.1 / 24.1%);
    the second lowest of 4, the mean of the lower 2 of 3, the median of 3 or of 5 each won some workloads and
    lost others. What the small tree misses is its spread: its own median, known in hindsight, errs 21.9% at
    p90 over the same runs."""
    newest, *older = ratios
    if not older:
        return newest
    if len(older) == 1:
        return min(newest, older[0])
    if newest > max(older):
        return statistics.median(ratios)
    return statistics.median([newest, *ratios])


def kind_of(plan: str) -> str:
    """The kind (``uniform`` or ``mixed``) of a plan key such as ``uniform 1769`` (a bare kind is its own)."""
    return plan.split(" ", 1)[0]


@dataclass(frozen=True, slots=True)
class Calibration:
    """Past runs of one DAG, newest first: plan, start, actual and simulated makespan of each."""

    entries: Sequence[tuple[str, bool, float, float]] = ()
    """``(plan key, started cold, actual makespan, raw simulated makespan)`` per past run, newest first."""
    missed: int = 0
    """Past runs (among those read) whose actual makespan fell outside their predicted interval."""

    @classmethod
    def from_runs(cls, docs: Iterable[Mapping[str, Any]], platform: str) -> Calibration:
        """From run documents (newest first, as a metadata store lists them): successful runs on ``platform``."""
        entries: list[tuple[str, bool, float, float]] = []
        missed = 0
        for doc in docs:
            predicted = doc.get("predicted_makespan_s")
            plan = doc.get("plan_kind") or ""
            if doc.get("status") != "succeeded" or doc.get("platform") != platform or kind_of(plan) not in KINDS:
                continue
            if not predicted or predicted <= 0:
                continue
            actual = float(doc.get("makespan_s") or 0.0)
            raw = predicted / float(doc.get("calibration") or 1.0)
            if not MIN_FACTOR <= actual / raw <= MAX_FACTOR:
                continue  # a stalled machine: no lesson for the plan
            if len(entries) < LATEST:
                entries.append((plan, bool(doc.get("cold_starts")), actual, raw))
            low, high = doc.get("predicted_p10_s"), doc.get("predicted_p90_s")
            if low is not None and high is not None and not low <= actual <= high:
                missed += 1
        return cls(entries, missed)

    def _pool(self, plan: str, cold: bool | None, now: Mapping[str, float], recent: int = RECENT) -> list[float]:
        starts = (False, True) if cold is None else (cold,)
        kind = kind_of(plan)
        for level, same in enumerate(
            (
                lambda p, c: p == plan and c in starts,
                lambda p, c: kind_of(p) == kind and c in starts,
                lambda p, c: c in starts,
                lambda p, c: True,
            )
        ):
            found: list[float] = []
            taken: dict[tuple[str, bool], int] = {}
            for p, c, actual, raw in self.entries:
                if same(p, c) and taken.get((p, c), 0) < recent:  # each plan and start its latest runs
                    taken[(p, c)] = taken.get((p, c), 0) + 1
                    # a run is compared with what the simulator says of its plan now, where that is known
                    # for runs that started this way, else with the prediction it was run with
                    found.append(actual / (now.get(p) or raw if c in starts else raw))
            if found and (level > 0 or len(found) >= OWN_RUNS):
                return found
        return []

    def factor(self, plan: str, cold: bool | None = None, now: Mapping[str, float] | None = None) -> float:
        """What to multiply a simulated makespan (and GB-s) of ``plan`` by.

        ``plan``: a plan key (:func:`~fanflow.planning.planners.plan_key`'s
        ``uniform 1769``) or a bare kind; ``cold``: whether the plan is
        predicted to start fresh worker processes (None: not told apart, as on
        a platform without a pool, where every start is the same mix);
        ``now``: simulated makespans of plans as the history says now, by
        plan key, predicted the way ``cold`` says; past runs of those plans
        that started that way are compared with them rather than with their
        own prediction, which came from an older history.
        """
        pool = self._pool(plan, cold, now or {})
        if not pool:
            return 1.0
        return statistics.median(pool)

    def predicting(self, plan: str, cold: bool | None = None, now: Mapping[str, float] | None = None) -> float:
        """The factor of the run's own predicted makespan: as :meth:`factor`, at :func:`recent_level` of the
        latest runs. Plans are compared with :meth:`factor`, where one slow run must not turn a plan
        down."""
        pool = self._pool(plan, cold, now or {})
        return recent_level(pool) if pool else 1.0

    def spread(
        self, plan: str, cold: bool | None = None, now: Mapping[str, float] | None = None
    ) -> tuple[float, float]:
        """(low, high) multipliers around the predicted makespan: its 10th and 90th percentiles, from what
        :meth:`predicting` would have erred by on the past runs of ``plan`` (see the module docstring)."""
        pool = self._pool(plan, cold, now or {}, LATEST)  # newest first
        errors = [math.log(r / recent_level(pool[i + 1 : i + 1 + RECENT])) for i, r in enumerate(pool[:-1])]
        if len(errors) < MIN_SPREAD_RUNS - 1:
            return 1.0, 1.0
        n = len(errors)
        half = quantile_90(n) * math.sqrt(sum(e * e for e in errors) / n * (1 + 1 / n))
        half = min(half, WIDEST * max(abs(e) for e in errors))
        return math.exp(-half), math.exp(half)

    @property
    def runs(self) -> int:
        return len(self.entries)
