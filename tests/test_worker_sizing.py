"""Workers are sized like the function they emulate: numeric thread pools follow the vCPU share."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import fanflow
from fanflow.platforms.sizing import MB_PER_VCPU, THREAD_ENV_VARS, blas_threads, vcpus

CORES = os.cpu_count() or 1


def _blas_pools() -> dict[str, object]:
    import numpy as np
    from threadpoolctl import threadpool_info

    np.linalg.qr(np.ones((4, 4)))  # the BLAS library is loaded by now
    return {
        "blas": [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"],
        "env": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
    }


@fanflow.task(memory_mb=MB_PER_VCPU)
def one_vcpu() -> dict[str, object]:
    return _blas_pools()


@fanflow.task(memory_mb=2 * MB_PER_VCPU)
def two_vcpus() -> dict[str, object]:
    return _blas_pools()


def test_the_share_is_whole_vcpus_at_least_one_at_most_the_cores() -> None:
    assert vcpus(MB_PER_VCPU) == 1.0
    assert blas_threads(vcpus(128)) == 1
    assert blas_threads(vcpus(MB_PER_VCPU)) == 1
    assert blas_threads(vcpus(3 * MB_PER_VCPU - 1)) == min(2, CORES)
    assert blas_threads(vcpus(1000 * MB_PER_VCPU)) == CORES


def test_out_of_process_workers_cap_blas_at_their_memory_share(run_config: fanflow.Config) -> None:
    one, two = fanflow.compute(one_vcpu(), two_vcpus(), config=run_config)
    if run_config.platform == "threads":  # threads share the client's process: cores / max_workers each
        cap = blas_threads(CORES / run_config.max_workers) if run_config.max_workers else None
        assert one["blas"] and (cap is None or all(n <= cap for n in one["blas"]))
        return
    assert one["blas"] and set(one["blas"]) == {1}
    assert set(one["env"].values()) == {"1"}  # set before numpy loaded in the worker process
    assert two["blas"] and set(two["blas"]) == {min(2, CORES)}


@pytest.mark.skipif(CORES < 2, reason="one core: every cap is already one thread")
def test_a_library_loaded_before_the_cap_is_capped_too() -> None:
    code = (
        "import numpy, json; from threadpoolctl import threadpool_info;"
        "from fanflow.platforms.sizing import limit_blas_threads;"
        "before = [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'];"
        "limit_blas_threads(1);"
        "after = [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'];"
        "print(json.dumps([before, after]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV_VARS}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    before, after = json.loads(out.stdout)
    assert before and max(before) > 1
    assert after and set(after) == {1}
