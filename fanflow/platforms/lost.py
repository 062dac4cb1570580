"""How a platform tells a run that it refused or lost one of the run's invocations.

A platform that cannot run an invocation (its worker could not start, died
more often than ``max_recoveries`` allows, crashed outside its tasks, or the
payload's signature did not match) must not drop it silently: the run's client
would wait forever. It fails the run instead, with the same atomic error record
a failing task writes, so the client raises at once. A platform knows task ids,
not names: the client names the tasks from its DAG when it raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fanflow.store import keys
from fanflow.store.base import Store, error_record

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 3600
"""TTL of the failure record when the invocation's own settings are unknown (a refused payload)."""


def fail_invocation(
    store: Store,
    run_id: str,
    start: Sequence[object],
    why: str,
    where: str,
    *,
    exc_type: str = "fanflow.errors.PlatformError",
    ttl_s: int = DEFAULT_TTL_S,
) -> None:
    """Fail run ``run_id`` because the invocation of ``start`` tasks was refused or lost (``why``).

    Never raises: when the store is away too, the failure is logged and the
    client's own watch (platform health, run state) still ends the run.
    """
    first = start[0] if start else -1
    task_id = first[0] if isinstance(first, tuple) else first  # a map element is (map task, index, count)
    task = f"#{task_id}" if isinstance(task_id, int) and task_id >= 0 else "<worker>"
    record = error_record(run_id, task, task_id if isinstance(task_id, int) else -1, exc_type, why, where, 1)
    try:
        store.fail_run(keys.status(run_id), keys.errors(run_id), record, ttl_s, keys.channel(run_id))
    except Exception:
        log.exception("could not tell run %s that its invocation was lost (%s)", run_id, why)
