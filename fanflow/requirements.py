"""Requirement strings and what this interpreter lacks of them: a leaf module any layer may use.

The client asks it of its own environment before a run on a local platform
(:mod:`fanflow.client.requirements`); a gateway and a Lambda function answer a
client's question with it about theirs.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement

from fanflow.errors import FanflowError


class RequirementsError(FanflowError):
    """The workers lack packages the workflow requires, or a requirement is malformed."""


def parse(specs: Iterable[str], source: str) -> list[Requirement]:
    """Requirements from pip-style lines, skipping blanks, comments and pip options; ``source`` names them in errors."""
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


def missing_of_specs(specs: Iterable[str]) -> list[str]:
    """What this interpreter lacks of the requirement strings a client sent (a gateway's or function's answer)."""
    return missing_here(parse(specs, "the client's requirements"))
