"""Platform layer: invokers of workers, one module per platform behind :class:`Platform`.

Each platform module provides two functions:

- ``client_platform(config)``: the platform a client runs on (it may start
  resources, e.g. a pool of worker processes);
- ``worker_platform(options)``: the invoker a worker rebuilds from the
  ``options`` shipped in its payload, to start further workers.

How a platform reaches the worker without importing it: see :mod:`fanflow.platforms.base`.
"""

from __future__ import annotations

import importlib
from typing import Any

from fanflow.config import Config
from fanflow.errors import ConfigError, MissingExtraError
from fanflow.platforms.base import Platform

__all__ = ["Platform", "client_platform", "worker_platform"]

_EXTRAS = {"http": "http", "ray": "ray", "lambda": "aws"}
"""The extra of fanflow each optional platform needs."""

_MODULES = {
    "threads": "fanflow.platforms.threads",
    "processes": "fanflow.platforms.processes",
    "http": "fanflow.platforms.http",
    "ray": "fanflow.platforms.ray",
    "lambda": "fanflow.platforms.aws_lambda",
}


def _module(name: str) -> Any:
    path = _MODULES.get(name)
    if path is None:
        raise ConfigError(f"unknown platform {name!r}; use one of {', '.join(_MODULES)}")
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name == path:
            raise ConfigError(f"platform {name!r} is not available in this version of fanflow") from exc
        raise MissingExtraError(f"platform {name!r}", _EXTRAS.get(name, "all"), exc.name) from exc


def client_platform(config: Config) -> Platform:
    """The platform ``config.platform`` names, as a client uses it."""
    return _module(config.platform).client_platform(config)  # type: ignore[no-any-return]


def worker_platform(name: str, options: dict[str, Any]) -> Platform:
    """The invoker a worker of platform ``name`` uses to start further workers."""
    return _module(name).worker_platform(options)  # type: ignore[no-any-return]
