"""The one exception hierarchy of fanflow.

Every error fanflow raises on purpose is a :class:`FanflowError`. Messages say
what was wrong and what to do about it, and name the task when there is one.
"""

from __future__ import annotations


class FanflowError(Exception):
    """Root of every error raised by fanflow."""


class ConfigError(FanflowError, ValueError):
    """A configuration key or value is invalid."""


class MissingExtraError(ConfigError, ImportError):
    """A platform or command needs an optional extra of fanflow that is not installed.

    The message names the extra and the pip command; ``extra`` holds its name.
    """

    def __init__(self, feature: str, extra: str, module: str | None = None) -> None:
        missing = f" (module {module!r} is missing)" if module else ""
        super().__init__(f'{feature} needs the {extra!r} extra: pip install "fanflow[{extra}]"{missing}')
        self.feature, self.extra, self.module = feature, extra, module

    def __reduce__(self) -> tuple[type[MissingExtraError], tuple[str, str, str | None]]:
        return type(self), (self.feature, self.extra, self.module)


class DAGError(FanflowError):
    """The task graph is malformed."""


class DAGCycleError(DAGError):
    """The graph has a cycle, e.g. because a node was mutated after use."""


class SerializationError(DAGError):
    """A value could not be serialized for a platform that needs it."""


class InputLostError(FanflowError):
    """An upstream output a task needs is not in the store (expired or lost)."""


class MapInputError(FanflowError):
    """The value given to ``fanflow.map`` is not a list or tuple."""


class ValueTooLargeError(FanflowError):
    """A task output is larger than ``max_value_bytes``."""


class TaskFailedError(FanflowError):
    """A task failed for good; the original exception is chained when known.

    ``remote_traceback`` holds the traceback text as the worker saw it.
    """

    def __init__(
        self,
        message: str,
        *,
        task: str,
        run_id: str,
        exc_type: str = "",
        remote_traceback: str = "",
        attempt: int = 1,
        worker_id: str = "",
    ) -> None:
        super().__init__(message)
        self.task = task
        self.run_id = run_id
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback
        self.attempt = attempt
        self.worker_id = worker_id

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class RunCancelledError(FanflowError):
    """The run was cancelled before it finished."""


class RunTimeoutError(FanflowError):
    """The run did not finish within the configured timeout."""


class RunStateLostError(FanflowError):
    """A run's state vanished from the store (a restart without persistence, a flush)."""


class TaskLostError(FanflowError):
    """A task's worker was lost more often than ``max_recoveries`` allows."""


class StoreError(FanflowError):
    """The store failed in a way that is not a plain connection loss."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached; the URL in the message has its password masked."""


class StoreFullError(StoreError):
    """The store refuses writes: Redis reached its ``maxmemory`` under the ``noeviction`` policy."""


class StoreAuthError(StoreUnavailableError):
    """The store refused the connection's password, or wants one the URL does not give."""


class PayloadRejectedError(FanflowError):
    """An invocation payload is unsigned or its signature does not match."""


class ValueRejectedError(PayloadRejectedError):
    """A value read from the store is not sealed with the run's secret, or its MAC does not match.

    It is never unpickled: whoever wrote it did not hold the secret.
    """


class PlatformError(FanflowError):
    """A platform could not start or invoke workers."""


class PoolGoneError(PlatformError):
    """No host of a pool of workers (a shared ``fanflow worker-pool``, a gateway's pool) has been alive
    for several seconds while it holds the run's invocations: start it again, then re-run."""


class NestedRunError(PlatformError):
    """A task started a run on the threads platform that runs it, which would wait for its own threads."""


class NoRetry(Exception):  # noqa: N818 - a marker users raise, named for how it reads
    """Raise (or subclass) this inside a task to fail at once, without retries."""
