"""The optional parts of the platform protocol: which platform follows which, and what a platform without one gets."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fanflow.platforms.aws_lambda import LambdaPlatform
from fanflow.platforms.base import (
    ChecksRequirements,
    ChecksServing,
    KeepsWarmWorkers,
    RunsOnCaller,
    supports,
)
from fanflow.platforms.http import HttpPlatform
from fanflow.platforms.processes import ProcessesPlatform
from fanflow.platforms.threads import ThreadsPlatform

PARTS = (RunsOnCaller, ChecksServing, KeepsWarmWorkers, ChecksRequirements)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (ThreadsPlatform, {RunsOnCaller, ChecksServing}),
        (ProcessesPlatform, {ChecksServing, KeepsWarmWorkers}),
        (HttpPlatform, {ChecksServing, ChecksRequirements}),
        (LambdaPlatform, {ChecksRequirements}),
    ],
)
def test_each_platform_follows_the_parts_it_defines(kind: type, expected: set[type]) -> None:
    platform = object.__new__(kind)  # which parts it follows is a property of the class alone
    assert {part for part in PARTS if supports(platform, part) is not None} == expected


class _Bare:
    name, in_process, options = "bare", True, {}

    def invoke(self, invocations: Sequence[object]) -> None: ...


class _HalfPool(_Bare):
    def prewarm(self, memory_mb: int) -> bool:  # no warm_memory: not a warm pool the planner can read
        return True


def test_a_platform_with_only_some_methods_of_a_part_does_not_follow_it() -> None:
    assert supports(_HalfPool(), KeepsWarmWorkers) is None
    assert supports(_Bare(), ChecksServing) is None


def test_a_platform_without_the_parts_gets_the_defaults() -> None:
    import fanflow
    from fanflow.client.requirements import check
    from fanflow.config import Config
    from fanflow.dag.graph import DAG
    from fanflow.planning.plan import warm_memory
    from fanflow.requirements import RequirementsError

    assert warm_memory(_HalfPool()) == []

    @fanflow.task(requirements=["surely-not-a-package-fanflow-xyz"])
    def needs() -> int:
        return 1

    # Without ChecksRequirements the client's own environment answers for the workers.
    with pytest.raises(RequirementsError, match="surely-not-a-package-fanflow-xyz"):
        check(DAG.from_sinks([needs()]), Config(), _Bare())  # type: ignore[arg-type]
