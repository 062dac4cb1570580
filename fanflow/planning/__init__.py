"""Planning: predictions from run history, simulation of a run, and the planners that annotate a DAG.

``fanflow.planning.predict`` turns history into per-task predictions,
``fanflow.planning.simulate`` replays the worker loop's rules on them,
``fanflow.planning.planners`` holds placement and the critical-path algorithm,
and ``fanflow.planning.plan`` ties them together for a run (:func:`apply_plan`)
and for ``fanflow plan`` (:func:`make_plan`). See docs/planning.md.
"""

from fanflow.planning.plan import Plan, apply_plan, make_plan
from fanflow.planning.planners import MEMORY_CHOICES
from fanflow.planning.predict import DagCosts, Prediction, Predictor
from fanflow.planning.simulate import Assignment, Simulation, simulate

__all__ = [
    "MEMORY_CHOICES",
    "Assignment",
    "DagCosts",
    "Plan",
    "Prediction",
    "Predictor",
    "Simulation",
    "apply_plan",
    "make_plan",
    "simulate",
]
