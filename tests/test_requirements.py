"""Task requirements: checked against the workers' environment before a run, never installed."""

from __future__ import annotations

from pathlib import Path

import pytest

import fanflow
from fanflow.client.requirements import RequirementsError


def test_satisfied_requirements_run(run_config: fanflow.Config) -> None:
    @fanflow.task(requirements=["numpy>=1.20", "cloudpickle"])
    def norm(n: int) -> float:
        import numpy as np

        return float(np.linalg.norm(np.ones(n)))

    assert norm(4).compute(run_config) == 2.0


def test_missing_and_too_old_packages_fail_fast_with_the_whole_list(run_config: fanflow.Config) -> None:
    ran: list[int] = []

    @fanflow.task(requirements=["numpy>=999", "surely-not-a-real-package-xyz"])
    def needy() -> int:
        ran.append(1)
        return 1

    with pytest.raises(RequirementsError) as info:
        needy().compute(run_config)
    text = str(info.value)
    assert "numpy>=999 (found " in text and "surely-not-a-real-package-xyz (not installed)" in text
    assert "installs nothing at run time" in text
    assert ran == []


def test_workflow_requirements_file(run_config: fanflow.Config, tmp_path: Path) -> None:
    @fanflow.task
    def one() -> int:
        return 1

    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# the workflow's needs\nnumpy>=1.20\n\n--index-url https://example.invalid/simple\n")
    assert one().compute(run_config.replace(requirements=str(reqs))) == 1
    reqs.write_text("numpy<1.0\n")
    with pytest.raises(RequirementsError, match=r"numpy<1\.0"):
        one().compute(run_config.replace(requirements=str(reqs)))
    with pytest.raises(RequirementsError, match="does not exist"):
        one().compute(run_config.replace(requirements=str(tmp_path / "nope.txt")))


def test_malformed_requirement_names_the_task() -> None:
    @fanflow.task(requirements=["numpy>>=2"])
    def broken() -> int:
        return 1

    with pytest.raises(RequirementsError, match="task 'broken'"):
        broken().compute(fanflow.Config(progress=False, metadata="none"))
