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

from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from fanflow.dag.graph import DAG
from fanflow.errors import FanflowError


class RequirementsError(FanflowError):
    """The workers lack packages the workflow requires, or a requirement is malformed."""


def parse(specs: Iterable[str], source: str) -> list[Requirement]:
    out = []
    for spec in specs:
        text = spec.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue  # blank lines, comments and pip options (-r, --index-url) are not packages
        try:
            out.append(Requirement(text))
        except InvalidRequirement as exc:
            raise RequirementsError(f"{source}: {spec!r} is not a valid requirement: {exc}") from exc
    return out


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


def missing_here(reqs: Iterable[Requirement]) -> list[str]:
    """The requirements this interpreter does not satisfy, each with what was found instead."""
    missing = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            found = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{req} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(found, prereleases=True):
            missing.append(f"{req} (found {found})")
    return missing


def check(dag: DAG, config: Any, platform: Any) -> None:
    """Raise :class:`RequirementsError` listing every requirement the platform's workers lack."""
    reqs = of_dag(dag, config.requirements)
    if not reqs:
        return
    ask = getattr(platform, "missing_requirements", None)
    missing = ask([str(r) for r in reqs]) if ask is not None else missing_here(reqs)
    if missing:
        raise RequirementsError(
            f"the {config.platform} workers lack {len(missing)} required package(s): "
            + "; ".join(missing)
            + ". fanflow installs nothing at run time: install them in the workers' environment "
            "(or build a worker image with deploy/Dockerfile) and run again."
        )
