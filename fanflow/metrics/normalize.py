"""Times normalized to a 512 MB worker, so runs at different memory sizes compare.

On a FaaS platform the CPU share grows with the memory configured: AWS Lambda
gives one full vCPU at 1769 MB and a proportional slice below it. A fanflow
task is one Python call, so it uses at most one vCPU: above 1769 MB it gets no
faster. The model is therefore

    speed(m) = min(m, 1769) / 1769          (vCPUs a task can use at m MB)
    t_512    = t_m * speed(m) / speed(512) = t_m * min(m, 1769) / 512

and the inverse, :func:`from_baseline`, turns a 512 MB time into the time
expected at m MB. The same factor is applied to transfer times (network
bandwidth on Lambda also scales with the memory size); it is a first model,
kept in this one module so a better one replaces it everywhere.

Raw times are always kept beside the normalized ones. Where a platform does not
throttle CPU by memory (threads, or processes without writable cgroups), the
normalized times describe the model, not the machine.
"""

from __future__ import annotations

BASELINE_MB = 512
"""The memory size all normalized times refer to."""

ONE_VCPU_MB = 1769
"""Memory at which a worker gets one full vCPU (AWS Lambda's figure)."""


def speed(memory_mb: int) -> float:
    """Fraction of one vCPU a single-threaded task gets at ``memory_mb``."""
    return min(memory_mb, ONE_VCPU_MB) / ONE_VCPU_MB


def to_baseline(seconds: float, memory_mb: int) -> float:
    """``seconds`` measured at ``memory_mb``, as it would take at :data:`BASELINE_MB`."""
    return seconds * speed(memory_mb) / speed(BASELINE_MB)


def from_baseline(seconds: float, memory_mb: int) -> float:
    """A :data:`BASELINE_MB` time, as it would take at ``memory_mb``."""
    return seconds * speed(BASELINE_MB) / speed(memory_mb)
