"""Executors and outcomes for tests: scenarios that fail on purpose, outcomes in one call."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

import trio

from ..executors.base import ExecutionContext, Executor
from ..models import ExecutionResult, Outcome, Scenario, Status

__all__ = ["FailingExecutor", "FailureMode", "ScenarioFailure", "make_outcome"]


class ScenarioFailure(Exception):
    """What :class:`FailingExecutor` raises for a matching scenario in ``mode="error"``."""


FailureMode = Literal["error", "failed", "hang"]


class FailingExecutor(Executor):
    """Passes every scenario except those whose id matches ``pattern``; those fail.

    ::

        executor = FailingExecutor(r"^flaky-", mode="error", fail_attempts=1)
        async with arcflow.open_runtime(executor, db=dsn, attempts=2) as rt: ...

    ``pattern`` is a regular expression searched in the scenario id, or a
    predicate ``(scenario) -> bool``.  ``mode`` says how a match fails:

    * ``"error"``: raises :class:`ScenarioFailure` (the outcome is ``error``,
      ``error_type="ScenarioFailure"``; retried by ``attempts``);
    * ``"failed"``: returns status ``failed`` with score 0 (not retried);
    * ``"hang"``: never returns, so the attempt ends by its timeout
      (``timeout``) or by a cancelled run (``cancelled``).

    ``fail_attempts`` limits failing to the first N attempts of a matching
    scenario (later attempts pass).  Every scenario first sleeps ``delay``
    seconds.  Passing scenarios get score 1 and ``output={"id": ...}``.
    ``calls`` lists ``(scenario_id, attempt)`` of every call, in order.
    """

    kind: ClassVar[str] = "failing"

    def __init__(
        self,
        pattern: str | re.Pattern[str] | Callable[[Scenario], bool] = r"(?!)",
        *,
        mode: FailureMode = "error",
        fail_attempts: int | None = None,
        delay: float = 0.0,
    ) -> None:
        if mode not in ("error", "failed", "hang"):
            raise ValueError(f"mode must be 'error', 'failed' or 'hang', got {mode!r}")
        if fail_attempts is not None and fail_attempts < 1:
            raise ValueError(f"fail_attempts must be >= 1 or None, got {fail_attempts!r}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        self._matches: Callable[[Scenario], bool]
        if callable(pattern) and not isinstance(pattern, re.Pattern):
            self._matches = pattern
            self.pattern = getattr(pattern, "__qualname__", repr(pattern))
        else:
            regex = re.compile(pattern)
            self._matches = lambda scenario: regex.search(scenario.id) is not None
            self.pattern = regex.pattern
        self.mode: FailureMode = mode
        self.fail_attempts = fail_attempts
        self.delay = delay
        self.calls: list[tuple[str, int]] = []

    def matches(self, scenario: Scenario) -> bool:
        """True if ``scenario`` is one this executor fails."""
        return self._matches(scenario)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "pattern": self.pattern, "mode": self.mode}

    async def run(self, scenario: Scenario, context: ExecutionContext) -> ExecutionResult:
        self.calls.append((scenario.id, context.attempt))
        if self.delay:
            await trio.sleep(self.delay)
        details = {"kind": self.kind, "attempt": context.attempt}
        failing = self.matches(scenario) and (
            self.fail_attempts is None or context.attempt <= self.fail_attempts
        )
        if not failing:
            return ExecutionResult(
                status=Status.PASSED, score=1.0, output={"id": scenario.id}, executor=details
            )
        if self.mode == "error":
            raise ScenarioFailure(
                f"scenario {scenario.id!r} matches {self.pattern!r} (attempt {context.attempt})"
            )
        if self.mode == "failed":
            return ExecutionResult(
                status=Status.FAILED, score=0.0, output={"id": scenario.id}, executor=details
            )
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover


def make_outcome(
    run_id: str,
    scenario_id: str,
    status: Status | str = Status.PASSED,
    *,
    attempt: int = 1,
    score: float | None = None,
    output: Any = None,
    duration_ms: float = 0.0,
    error_type: str | None = None,
    error_message: str | None = None,
    tags: Sequence[str] = (),
    executor: Mapping[str, Any] | None = None,
    worker: str = "",
    final: bool = True,
) -> Outcome:
    """A finished :class:`arcflow.Outcome` that ended now, for ``record()``."""
    finished = datetime.now(UTC)
    return Outcome(
        run_id=run_id,
        scenario_id=scenario_id,
        attempt=attempt,
        status=Status(status),
        started_at=finished - timedelta(milliseconds=duration_ms),
        finished_at=finished,
        score=score,
        output=output,
        error_type=error_type,
        error_message=error_message,
        executor=dict(executor or {"kind": "record"}),
        worker=worker,
        final=final,
        tags=tuple(tags),
    )
