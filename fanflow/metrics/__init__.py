"""Metrics of runs: typed records built from events, their recording, the history accessor.

Layering: workers only emit events (:mod:`fanflow.worker.loop`); the client
turns them into records after each run (:mod:`fanflow.metrics.recorder`) and a
metadata store keeps them (:mod:`fanflow.store.metadata`). Planners read the
past through :class:`History`; ``fanflow runs`` and ``fanflow report`` show it.
"""

from fanflow.metrics.build import build_metrics, summaries_of
from fanflow.metrics.history import History, task_records
from fanflow.metrics.normalize import BASELINE_MB, from_baseline, to_baseline
from fanflow.metrics.recorder import build_dag, record_run
from fanflow.metrics.records import InputRecord, RunMetrics, RunRecord, TaskRecord, WorkerRecord

__all__ = [
    "BASELINE_MB",
    "History",
    "InputRecord",
    "RunMetrics",
    "RunRecord",
    "TaskRecord",
    "WorkerRecord",
    "build_dag",
    "build_metrics",
    "from_baseline",
    "record_run",
    "summaries_of",
    "task_records",
    "to_baseline",
]
