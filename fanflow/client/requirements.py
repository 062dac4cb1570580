"""Checking, before a run, that the workers have the packages the workflow needs.

Requirements come from ``@task(requirements=[...])`` on the DAG's tasks and
from the workflow's requirements file (config key ``requirements``, a path to a
pip-style ``requirements.txt``). Nothing is ever installed at run time: a worker
environment is built ahead of time (see deploy/ for an image), and a run whose
workers lack something fails at once with the full list of what is missing.

The threads and processes platforms run in this very environment, so the check
reads this interpreter's installed distributions. A platform whose workers live
elsewhere provides ``missing_requirements(specs)`` to ask them.
"""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement

from fanflow.config import Config
from fanflow.dag.graph import DAG
from fanflow.platforms.base import ChecksRequirements, Platform, supports
from fanflow.requirements import RequirementsError, missing_here, parse

__all__ = ["RequirementsError", "check", "of_dag"]


def of_dag(dag: DAG, requirements_file: str | None) -> list[Requirement]:
    """Every requirement of the DAG's tasks and of the workflow's requirements file."""
    reqs: list[Requirement] = []
    for task in dag.tasks:
        reqs.extend(parse(task.requirements, f"task {task.name!r}"))
    if requirements_file:
        path = Path(requirements_file)
        if not path.is_file():
            raise RequirementsError(f"requirements file {requirements_file!r} does not exist")
        reqs.extend(parse(path.read_text().splitlines(), str(path)))
    return reqs


def check(dag: DAG, config: Config, platform: Platform) -> None:
    """Raise :class:`RequirementsError` listing every requirement the platform's workers lack."""
    if not config.requirements and not any(task.requirements for task in dag.tasks):
        return  # most runs: nothing to parse
    reqs = of_dag(dag, config.requirements)
    if not reqs:
        return
    workers = supports(platform, ChecksRequirements)
    missing = workers.missing_requirements([str(r) for r in reqs]) if workers is not None else missing_here(reqs)
    if missing:
        raise RequirementsError(
            f"the {config.platform} workers lack {len(missing)} required package(s): "
            + "; ".join(missing)
            + ". fanflow installs nothing at run time: install them in the workers' environment "
            "(or build a worker image with deploy/Dockerfile) and run again."
        )
