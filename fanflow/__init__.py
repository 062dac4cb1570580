"""fanflow: Python DAG workflows on short-lived workers with decentralized scheduling.

Decorate functions with :func:`task`, call them to build a lazy DAG, and call
``.compute()``. See the README for a tour.
"""

from importlib.metadata import PackageNotFoundError, version

from fanflow.api import compute, gather, submit, task, visualize
from fanflow.client.session import RunFuture
from fanflow.config import Config
from fanflow.dag.node import MapNode, Node, Task
from fanflow.dag.node import map_task as map
from fanflow.dask import from_dask
from fanflow.errors import (
    ConfigError,
    DAGCycleError,
    DAGError,
    FanflowError,
    InputLostError,
    MapInputError,
    NoRetry,
    PayloadRejectedError,
    PlatformError,
    RunCancelledError,
    RunTimeoutError,
    SerializationError,
    StoreAuthError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
    TaskFailedError,
    ValueRejectedError,
    ValueTooLargeError,
)

try:
    __version__ = version("fanflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Config",
    "ConfigError",
    "DAGCycleError",
    "DAGError",
    "FanflowError",
    "InputLostError",
    "MapInputError",
    "MapNode",
    "NoRetry",
    "Node",
    "PayloadRejectedError",
    "PlatformError",
    "RunCancelledError",
    "RunFuture",
    "RunTimeoutError",
    "SerializationError",
    "StoreAuthError",
    "StoreError",
    "StoreFullError",
    "StoreUnavailableError",
    "Task",
    "TaskFailedError",
    "ValueRejectedError",
    "ValueTooLargeError",
    "__version__",
    "compute",
    "from_dask",
    "gather",
    "map",
    "submit",
    "task",
    "visualize",
]
