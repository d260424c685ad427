"""The executor protocol: given a scenario and its context, produce a result.

Write your own by subclassing :class:`Executor` and implementing :meth:`run`.
The producer that calls it owns timing, timeouts, attempts and cancellation:

* ``run`` may be cancelled at any await (timeout, second Ctrl-C).  It must
  release what it holds in a ``finally`` (kill the process, terminate the
  sandbox), using ``trio.move_on_after(T, shield=True)`` for awaits there.
* An exception raised by ``run`` becomes an outcome with status ``error``;
  it never crashes the runtime.  Return ``ExecutionResult(status=ERROR, ...)``
  yourself for errors you can describe better.
"""

from __future__ import annotations

import abc
import logging
import math
import resource
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from ..models import ExecutionResult, Scenario, Status

logger = logging.getLogger("arcflow.executors")

#: Open files an executor asks for at most (see :func:`raise_open_files_limit`).
OPEN_FILES_WANTED = 65536


@attrs.frozen
class ExecutionContext:
    """What an executor knows about the attempt it runs."""

    #: The run this attempt belongs to.
    run_id: str
    #: 1 for the first attempt of a scenario, 2 for its first retry, ...
    attempt: int
    #: Name of the producer running it (``producer-7``).
    worker: str
    #: Seconds the attempt may take, or None for no limit.  The producer
    #: enforces it by cancelling ``run``; executors may also pass it on (for
    #: example as a sandbox timeout).
    timeout_s: float | None = None
    #: Executor details known so far (pid, sandbox id, ...).  Executors fill it
    #: as soon as they learn them, so an attempt that times out or is cancelled
    #: still records which process or sandbox it was.
    details: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


class Executor(abc.ABC):
    """Runs one scenario at a time per call; one instance serves every producer."""

    #: Short name stored in each outcome's ``executor.kind``.
    kind: ClassVar[str] = "custom"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Check configuration and open shared resources before any scenario runs.

        Raise :class:`arcflow.ConfigError` with a clear message to refuse to start.
        """

    @abc.abstractmethod
    async def run(self, scenario: Scenario, context: ExecutionContext) -> ExecutionResult:
        """Run ``scenario`` once and report how it went."""

    def use_database(self, dsn: str | None) -> None:  # noqa: B027 - optional hook
        """Called once before :meth:`start` with the DSN of the run's PostgreSQL.

        For executors that keep state of their own beside the run's outcomes (the
        modal-fn: executor records its function-call ids, so that ``--resume`` finds the
        calls a process that died had in flight); they open their own connection.  The
        DSN may hold a password: never log it.
        """

    async def begin_run(self, run_id: str, *, resume: bool) -> None:  # noqa: B027 - optional hook
        """Called once after :meth:`start`, before any scenario, with the run's id.

        ``resume``: the run continues one a previous process started (``--resume``);
        release what that process may have left behind (the modal: executor terminates
        the run's sandboxes still running).
        """

    def share_limits(self, workers: int) -> None:  # noqa: B027 - optional hook
        """A shared run now has ``workers`` live workers: take a ``1/workers`` share.

        Called by a shared run's heartbeat whenever the count changes, so limits
        that hold for a whole account (the modal: executor's creation rate and
        sandboxes starting at once) hold for the fleet, not for each worker.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources; called once after the last scenario."""

    def statistics(self) -> dict[str, float]:
        """Counters and gauges of the executor (``name: number``) for the live display and
        the metrics; the modal: executor reports its creation rate and refusals."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description for the run's config snapshot (no secrets)."""
        return {"kind": self.kind}


def result_from_mapping(
    value: Any, *, executor: Mapping[str, Any] | None = None
) -> ExecutionResult:
    """Turn what a user function (or a process's stdout) returned into a result.

    Accepted: ``None`` (passed), or a mapping with any of ``status``
    (``passed`` or ``failed``), ``score`` (a number), ``output`` (JSON) and
    ``usage`` (a mapping of counter names to numbers: ``input_tokens``,
    ``output_tokens``, ``cost_usd``, or any other name).
    Anything else is reported as status ``error`` with a message saying why.
    """
    details = dict(executor or {})
    if value is None:
        return ExecutionResult(status=Status.PASSED, executor=details)
    if not isinstance(value, Mapping):
        return ExecutionResult(
            status=Status.ERROR,
            error_type="InvalidResult",
            error_message=(
                f"expected None or a mapping with status/score/output, got {type(value).__name__}"
            ),
            executor=details,
        )
    unknown = set(value) - {"status", "score", "output", "usage"}
    if unknown:
        return ExecutionResult(
            status=Status.ERROR,
            error_type="InvalidResult",
            error_message=(
                f"unknown result keys {sorted(unknown)}; allowed: status, score, output, usage"
            ),
            executor=details,
        )
    raw_status = value.get("status", "passed")
    if raw_status not in ("passed", "failed"):
        return ExecutionResult(
            status=Status.ERROR,
            error_type="InvalidResult",
            error_message=f"result status must be 'passed' or 'failed', got {raw_status!r}",
            executor=details,
        )
    score = value.get("score")
    if score is not None:
        if (
            isinstance(score, bool)
            or not isinstance(score, int | float)
            or not math.isfinite(score)
        ):
            return ExecutionResult(
                status=Status.ERROR,
                error_type="InvalidResult",
                error_message=f"result score must be a finite number, got {score!r}",
                executor=details,
            )
        score = float(score)
    usage = value.get("usage")
    if usage is not None:
        problem = _usage_problem(usage)
        if problem is not None:
            return ExecutionResult(
                status=Status.ERROR,
                error_type="InvalidResult",
                error_message=problem,
                executor=details,
            )
    return ExecutionResult(
        status=Status(raw_status),
        score=score,
        output=value.get("output"),
        executor=details,
        usage=usage,
    )


def _usage_problem(usage: Any) -> str | None:
    """Why ``usage`` is not a mapping of counter names to non-negative finite numbers, or None."""
    if not isinstance(usage, Mapping):
        return f"result usage must be a mapping of counters to numbers, got {type(usage).__name__}"
    for key, number in usage.items():
        if not isinstance(key, str) or not key:
            return f"result usage keys must be non-empty strings, got {key!r}"
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not math.isfinite(number)
            or number < 0
        ):
            return f"result usage {key!r} must be a finite number >= 0, got {number!r}"
    return None


def raise_open_files_limit(kind: str, why: str) -> None:
    """Raise the soft open-files limit to the hard one (at most :data:`OPEN_FILES_WANTED`).

    For executors whose running scenarios each hold file descriptors (a
    process's pipes, a sandbox's connection): the common soft limit of 1,024
    would otherwise fail scenarios with EMFILE from a few hundred at once.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = (
            OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
        )
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            logger.info("%s: open files limit raised from %d to %d (%s)", kind, soft, wanted, why)
    except (ValueError, OSError) as exc:  # pragma: no cover - platform dependent
        logger.debug("%s: cannot raise the open files limit: %s", kind, exc)
