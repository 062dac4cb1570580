"""How much CPU a worker has, and how many threads numeric libraries may use in it: one rule.

A FaaS function's CPU share grows with its memory: on AWS Lambda 1769 MB buys
one vCPU (:data:`MB_PER_VCPU`). The processes platform enforces that share with
cgroups, Ray requests it as ``num_cpus``, Lambda grants it.

Numeric libraries (OpenBLAS, MKL, BLIS, OpenMP, numexpr) know nothing of that
share: each starts one thread per core of the machine for every call. Two
1-vCPU worker processes on two cores then run four BLAS threads under a quota
of one core each, and the quota throttles them (measured on this project's
2-core machine: TSQR 400,000x100 took 8.4 s instead of 4.6 s, GEMM 2000² 1.56 s
instead of 1.03 s). So every worker caps those pools at its whole vCPUs, at
least one and at most the machine's cores: :func:`blas_threads`.

- Out of process (processes, the http gateway's pool, Ray, Lambda),
  :func:`limit_blas_threads` runs in the worker's process when an invocation
  arrives, before anything of the run is unpickled: it sets the environment
  variables the libraries read when they load, and caps with threadpoolctl
  the ones already loaded (a warm Ray worker that ran a larger invocation).
- In process, the threads platform shares one process among ``max_workers``
  threads: each thread's share is ``cores / max_workers``.

Processor-specific tuning variables (``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``)
are left as they are.
"""

from __future__ import annotations

import os

from threadpoolctl import threadpool_limits

__all__ = ["MB_PER_VCPU", "THREAD_ENV_VARS", "blas_threads", "limit_blas_threads", "vcpus"]

MB_PER_VCPU = 1769
"""Memory that buys one vCPU, as on AWS Lambda."""

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
"""The variables numeric libraries read, when they load, for the size of their thread pools."""

_limited: int | None = None
"""The cap this process runs with, once :func:`limit_blas_threads` has set one."""


def vcpus(memory_mb: int) -> float:
    """The vCPU share of a worker with ``memory_mb`` (fractional below 1769 MB)."""
    return memory_mb / MB_PER_VCPU


def blas_threads(share: float) -> int:
    """Threads a numeric library may use in a worker with ``share`` vCPUs: whole vCPUs, >= 1, <= the cores."""
    return max(1, min(os.cpu_count() or 1, int(share)))


def limit_blas_threads(threads: int) -> None:
    """Cap this process's numeric thread pools at ``threads``: libraries loaded later and those loaded now.

    Cheap when the cap is already ``threads`` (a warm worker's next invocation).
    """
    global _limited
    if _limited == threads:
        return
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    threadpool_limits(limits=threads)  # only libraries already loaded; nothing to restore, the process is ours
    _limited = threads
