"""Every exception arcflow raises on purpose, in one hierarchy::

    ArcflowError
    ├── ConfigError               an option or config value is invalid (exit code 2)
    │   ├── ExecutorSpecError     --executor names nothing usable
    │   └── DataDirError          the data folder (journals, locks, embedded database) is unusable
    ├── ScenarioFileError         the scenario file is malformed (file, line, reason; exit 2)
    ├── ResumeError               --resume found a changed scenario or an unknown run, or a new
    │                             run was given the id of an existing one (exit 2)
    ├── RunInUse                  another process holds the run (host, pid, since; exit 2)
    ├── DatabaseUnavailable       the database cannot be reached at start (exit 2)
    ├── RuntimeClosed             submit() after the runtime began to drain
    ├── PipelineFull              submit_nowait()/record_nowait() while the pipeline is full
    ├── RestartIntensityExceeded  an actor crashed more than R times in T seconds
    └── WriteError                a batch could not be written (carries the classification)
        ├── TransientWriteError   the database or the network failed; retrying may help
        └── DataWriteError        a record is invalid for the database; bisect and dead-letter

Executors never raise into the runtime: whatever a scenario raises becomes an
outcome with status ``error``.  Exceptions outside this tree that escape an
actor are bugs; the supervisor restarts the actor and, past the restart
intensity, raises :class:`RestartIntensityExceeded` naming the last one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio


class ArcflowError(Exception):
    """Base class of every error arcflow raises on purpose."""


class ConfigError(ArcflowError):
    """An option, environment variable or config-file value is invalid.

    The message names the option and says what would be valid.
    """


class ExecutorSpecError(ConfigError):
    """The executor specification cannot be turned into an executor."""


class DataDirError(ConfigError):
    """The data folder cannot be used: not creatable, not writable, not a folder.

    The message names the path, what the system said, and the fix.
    """


class ScenarioFileError(ArcflowError):
    """A scenario file cannot be read: names the file, the line and the reason."""

    def __init__(self, path: Path | str, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class ResumeError(ArcflowError):
    """A resumed run cannot go on (unknown run id, or changed scenarios without --force)."""


class RunInUse(ArcflowError):
    """Another process holds the run: a run is driven by one process at a time.

    ``holder`` describes it (host, pid, since when) when it is known.
    """

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        self.holder = holder
        super().__init__(message)


class DatabaseUnavailable(ArcflowError):
    """The database could not be reached when the runtime started."""


class RuntimeClosed(ArcflowError):
    """The runtime no longer accepts scenarios or outcomes (it is draining or closed)."""


class PipelineFull(ArcflowError, trio.WouldBlock):
    """A ``submit_nowait()`` / ``record_nowait()`` was refused: the pipeline is full.

    This is backpressure, not a failure: wait (``await submit()``) or shed the
    load.  It is also a :class:`trio.WouldBlock`, so ``except trio.WouldBlock``
    keeps working for trio hosts.
    """


class RestartIntensityExceeded(ArcflowError):
    """An actor crashed more often than its restart intensity allows.

    ``actor`` is the actor's name; ``__cause__`` is its last exception.
    """

    def __init__(self, actor: str, restarts: int, period: float, last: BaseException) -> None:
        self.actor = actor
        self.restarts = restarts
        self.period = period
        self.last = last
        super().__init__(
            f"actor {actor!r} crashed {restarts} times within {period:g}s "
            f"(restart intensity exceeded); last error: {type(last).__name__}: {last}"
        )


class WriteError(ArcflowError):
    """A batch write failed; the subclass says how (see :mod:`arcflow.store.classify`)."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        self.sqlstate = sqlstate
        super().__init__(message)


class TransientWriteError(WriteError):
    """The database or the connection failed in a way that retrying may fix."""


class DataWriteError(WriteError):
    """At least one record of the batch is invalid for the database."""


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` and its nested exception groups, in order (``[exc]`` if not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_exceptions(inner)]
    return [exc]


def sole_arcflow_error(group: BaseExceptionGroup[Any]) -> ArcflowError | None:
    """The ArcflowError a task group raised, when every leaf of ``group`` is one.

    Trio wraps a task's error in an exception group; a caller of arcflow should
    see ``DatabaseUnavailable``, not a group around it.  None when any leaf is
    something else (a pending ``Cancelled`` among them must keep propagating).
    """
    leaves = leaf_exceptions(group)
    errors = [e for e in leaves if isinstance(e, ArcflowError)]
    return errors[0] if errors and len(errors) == len(leaves) else None


def primary_error(exc: BaseException) -> BaseException:
    """The exception a user should be shown for ``exc``, however deep in groups it sits.

    The first :class:`ArcflowError` among the leaves of ``exc``; else its only
    leaf; else ``exc`` itself (a group of several unrelated errors).
    """
    leaves = leaf_exceptions(exc)
    for leaf in leaves:
        if isinstance(leaf, ArcflowError):
            return leaf
    return leaves[0] if len(leaves) == 1 else exc


@contextlib.contextmanager
def arcflow_errors_unwrapped() -> Iterator[None]:
    """Re-raise an exception group whose leaves are all ArcflowErrors as the first of them.

    For the edges of arcflow's API: a caller should see ``DatabaseUnavailable``,
    not a group around it from an internal nursery.  Any other group (one with
    a ``Cancelled`` among its leaves, say) propagates as it is.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = sole_arcflow_error(group)
        if leaf is None:
            raise
        raise leaf from None
