"""fanflow: Python DAG workflows on short-lived workers with decentralized scheduling.

Decorate functions with :func:`task`, call them to build a lazy DAG, and call
``.compute()``. See the README for a tour.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fanflow.errors import (
    ConfigError,
    DAGCycleError,
    DAGError,
    FanflowError,
    InputLostError,
    MapInputError,
    MissingExtraError,
    NestedRunError,
    NoRetry,
    PayloadRejectedError,
    PlatformError,
    PoolGoneError,
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

if TYPE_CHECKING:
    from fanflow.api import compute, gather, submit, task, visualize
    from fanflow.client.session import RunFuture
    from fanflow.config import Config
    from fanflow.dag.node import MapNode, Node, Task
    from fanflow.dag.node import map_task as map
    from fanflow.dask import from_dask

# The rest of the API is imported on first use (PEP 562), so `import fanflow` (and with it the CLI and
# every worker process) does not pay for the client, planning, metrics and dashboard layers up front.
_LAZY = {
    "Config": ("fanflow.config", "Config"),
    "MapNode": ("fanflow.dag.node", "MapNode"),
    "Node": ("fanflow.dag.node", "Node"),
    "RunFuture": ("fanflow.client.session", "RunFuture"),
    "Task": ("fanflow.dag.node", "Task"),
    "compute": ("fanflow.api", "compute"),
    "from_dask": ("fanflow.dask", "from_dask"),
    "gather": ("fanflow.api", "gather"),
    "map": ("fanflow.dag.node", "map_task"),
    "submit": ("fanflow.api", "submit"),
    "task": ("fanflow.api", "task"),
    "visualize": ("fanflow.api", "visualize"),
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("fanflow")
        except PackageNotFoundError:  # running from a source tree that was never installed
            value = "0.0.0+unknown"
    elif name in _LAZY:
        module, attr = _LAZY[name]
        if name != "Config":
            importlib.import_module("fanflow.api")  # registers the runner behind Node.compute/submit/visualize
        value = getattr(importlib.import_module(module), attr)
    else:
        raise AttributeError(f"module 'fanflow' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})


__all__ = [
    "Config",
    "ConfigError",
    "DAGCycleError",
    "DAGError",
    "FanflowError",
    "InputLostError",
    "MapInputError",
    "MapNode",
    "MissingExtraError",
    "NestedRunError",
    "NoRetry",
    "Node",
    "PayloadRejectedError",
    "PlatformError",
    "PoolGoneError",
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
