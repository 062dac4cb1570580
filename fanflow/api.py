"""The user-facing API: ``@task``, ``compute``, ``submit``, ``gather``, ``visualize``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, overload

from fanflow.client.hooks import OnPlanned, RunHook
from fanflow.client.session import RunFuture, gather, session
from fanflow.config import Config
from fanflow.dag import draw
from fanflow.dag.graph import DAG
from fanflow.dag.node import Node, Task, set_runner
from fanflow.dashboard import open_for_run
from fanflow.metrics.recorder import build_dag

__all__ = ["compute", "gather", "submit", "task", "visualize"]

ConfigLike = Config | Mapping[str, Any] | None


@overload
def task(func: Callable[..., Any], /) -> Task: ...


@overload
def task(
    *,
    name: str | None = None,
    retries: int = 0,
    retry_backoff: float = 0.1,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    memory_mb: int | None = None,
    requirements: Sequence[str] = (),
    pure: bool = False,
) -> Callable[[Callable[..., Any]], Task]: ...


def task(func: Callable[..., Any] | None = None, /, **options: Any) -> Task | Callable[[Callable[..., Any]], Task]:
    """Make a function a DAG task: ``@fanflow.task`` or ``@fanflow.task(name=..., retries=..., memory_mb=...)``.

    Calling the task returns a :class:`fanflow.Node` instead of running it; the
    plain function stays reachable as ``.func``.
    """
    if func is not None:
        return Task(func, **options)
    return lambda f: Task(f, **options)


def compute(*nodes: Node, config: ConfigLike = None, dashboard: bool = False, **overrides: Any) -> tuple[Any, ...]:
    """Compute several sinks of one DAG in ONE run; returns their values as a tuple.

    ``overrides`` are config keys (e.g. ``platform="threads"``) applied on top of
    ``config`` or of the config loaded from ``fanflow.toml`` and ``FANFLOW_*``.
    ``dashboard=True`` opens the live dashboard on this run (docs/dashboard.md).
    """
    cfg = Config.resolve(config, **overrides)
    return session().execute(build_dag(nodes), cfg, hooks=_dashboard_hooks(dashboard))


def submit(*nodes: Node, config: ConfigLike = None, dashboard: bool = False, **overrides: Any) -> RunFuture:
    """Start computing ``nodes`` in the background; the future's result is a tuple."""
    cfg = Config.resolve(config, **overrides)
    return session().submit(build_dag(nodes), cfg, hooks=_dashboard_hooks(dashboard))


def _dashboard_hooks(dashboard: bool) -> tuple[RunHook, ...]:
    """``dashboard=True``: show the run in this process's dashboard as soon as it has an id."""
    return (OnPlanned(open_for_run),) if dashboard else ()


def visualize(*nodes: Node, path: str = "dag.svg") -> str:
    """Draw the DAG ending in ``nodes``; returns the path written."""
    return draw.write(DAG.from_sinks(nodes), path)


class _Runner:
    """What ``Node.compute``/``submit``/``visualize`` call (registered below)."""

    def compute(self, nodes: Sequence[Node], config: ConfigLike, **options: Any) -> tuple[Any, ...]:
        return compute(*nodes, config=config, **options)

    def submit(self, nodes: Sequence[Node], config: ConfigLike, dashboard: bool = False, **options: Any) -> RunFuture:
        cfg = Config.resolve(config, **options)
        hooks = _dashboard_hooks(dashboard)
        return session().submit(build_dag(nodes), cfg, single=len(nodes) == 1, hooks=hooks)

    def visualize(self, nodes: Sequence[Node], path: str, **options: Any) -> str:
        return draw.write(DAG.from_sinks(nodes), path, **options)


set_runner(_Runner())
