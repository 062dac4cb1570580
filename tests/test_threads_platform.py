"""The threads platform: numeric libraries' own thread pools are capped while it runs."""

from __future__ import annotations

import os

import pytest

import fanflow


@fanflow.task
def blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_blas_runs_one_thread_per_worker_thread_at_most() -> None:
    import numpy as np

    np.linalg.qr(np.ones((4, 4)))  # make sure the BLAS library is loaded
    seen = blas_threads().compute(fanflow.Config(progress=False, metadata="none", max_workers=4))
    cap = max(1, (os.cpu_count() or 1) // 4)
    assert seen and all(n <= cap for n in seen)


def test_the_gil_switch_interval_is_raised_while_the_platform_runs_and_restored_after() -> None:
    import sys

    from fanflow.platforms.threads import SWITCH_INTERVAL_S, ThreadsPlatform

    before = sys.getswitchinterval()
    seen: list[float] = []
    platform = ThreadsPlatform(lambda _: seen.append(sys.getswitchinterval()), max_workers=2)
    platform.invoke([object()])
    platform.close()
    assert seen == [pytest.approx(max(before, SWITCH_INTERVAL_S), abs=1e-5)]  # kept in microseconds
    assert sys.getswitchinterval() == pytest.approx(before, abs=1e-5)
