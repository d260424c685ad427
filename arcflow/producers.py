"""Producer actors: take a scenario, run it through the executor, send its outcomes on.

Each producer pulls the next scenario as soon as the last one is done, so all
``concurrency`` slots stay busy (no waiting for the slowest of a group).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime

import attrs
import trio

from .config import RuntimeConfig
from .executors.base import ExecutionContext, Executor
from .models import RETRYABLE_STATUSES, ExecutionResult, Outcome, Scenario, Status
from .stats import Counters

log = logging.getLogger("arcflow.producers")


@attrs.define
class ProducerState:
    """What a producer is doing, kept outside it so a restarted producer picks it up."""

    current: Scenario | None = None
    #: The attempt number the current scenario runs next.
    attempt: int = 1


@attrs.define
class ShutdownControl:
    """Shared by the runtime and its producers to stop taking work and cancel running work."""

    #: No producer takes a new scenario or starts a new attempt once set.
    stopping: bool = False
    #: Running attempts were cancelled (second signal, grace expired, host cancelled).
    cancelled: bool = False
    running: set[trio.CancelScope] = attrs.field(factory=set)
    #: First attempt number per scenario id (resumed runs continue after stored attempts).
    first_attempt: dict[str, int] = attrs.field(factory=dict)

    def stop(self) -> None:
        """Stop taking new scenarios; running ones go on."""
        self.stopping = True

    def cancel_running(self) -> None:
        """Stop taking scenarios and cancel every running attempt (recorded ``cancelled``)."""
        self.stopping = True
        self.cancelled = True
        for scope in list(self.running):
            scope.cancel()


def _now() -> datetime:
    return datetime.now(UTC)


class Producer:
    """Runs scenarios from ``work`` and sends one outcome per attempt to ``outcomes``.

    Retries: scenarios whose attempt ended ``error`` or ``timeout``, up to
    ``config.attempts`` with exponential backoff (``failed`` never is).
    Escalates: nothing from executors (their exceptions become ``error``
    outcomes); a bug in the producer itself propagates to the supervisor, which
    restarts it with its :class:`ProducerState`, so the scenario is not lost.
    Closes: nothing; the supervisor owns its channel clones.
    """

    def __init__(
        self,
        name: str,
        executor: Executor,
        *,
        run_id: str,
        config: RuntimeConfig,
        control: ShutdownControl,
        counters: Counters,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.name = name
        self.on_outcome = on_outcome
        self.executor = executor
        self.run_id = run_id
        self.config = config
        self.control = control
        self.counters = counters

    async def run(
        self,
        work: trio.MemoryReceiveChannel[Scenario],
        outcomes: trio.MemorySendChannel[Outcome],
        state: ProducerState,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take scenarios until ``work`` ends or the runtime stops taking them."""
        task_status.started()
        while True:
            if state.current is None:
                if self.control.stopping:
                    return
                try:
                    scenario = await work.receive()
                except trio.EndOfChannel:
                    return
                if self.control.stopping:
                    return  # not started: a resumed run will run it
                state.current = scenario
                state.attempt = self.control.first_attempt.get(scenario.id, 1)
            await self._run_scenario(state.current, state, outcomes)
            state.current = None

    async def _run_scenario(
        self,
        scenario: Scenario,
        state: ProducerState,
        outcomes: trio.MemorySendChannel[Outcome],
    ) -> None:
        first = self.control.first_attempt.get(scenario.id, 1)
        last = first + self.config.attempts - 1
        self.counters.running += 1
        try:
            while True:
                attempt = state.attempt
                outcome = await self._attempt(scenario, attempt)
                retry = (
                    outcome.status in RETRYABLE_STATUSES
                    and attempt < last
                    and not self.control.stopping
                )
                final = not retry and outcome.status is not Status.CANCELLED
                if not final:
                    outcome = attrs.evolve(outcome, final=False)
                await outcomes.send(outcome)
                self.counters.by_status[outcome.status.value] += 1
                if self.on_outcome is not None:
                    self.on_outcome(outcome)
                state.attempt = attempt + 1
                if not retry:
                    self.counters.completed += 1
                    return
                delay = self.config.attempt_backoff * 2 ** (attempt - first)
                with trio.CancelScope() as scope:
                    self.control.running.add(scope)
                    if self.control.cancelled:
                        scope.cancel()
                    try:
                        await trio.sleep(delay)
                    finally:
                        self.control.running.discard(scope)
                if scope.cancelled_caught:
                    self.counters.completed += 1
                    return
        finally:
            self.counters.running -= 1

    async def _attempt(self, scenario: Scenario, attempt: int) -> Outcome:
        timeout = scenario.timeout_s if scenario.timeout_s is not None else self.config.timeout
        context = ExecutionContext(
            run_id=self.run_id, attempt=attempt, worker=self.name, timeout_s=timeout
        )
        started = _now()
        result: ExecutionResult | None = None
        with trio.CancelScope() as run_scope:
            self.control.running.add(run_scope)
            if self.control.cancelled:
                run_scope.cancel()
            try:
                with trio.move_on_after(timeout if timeout is not None else math.inf) as limit:
                    try:
                        result = await self.executor.run(scenario, context)
                    except Exception as exc:
                        result = ExecutionResult(
                            status=Status.ERROR,
                            error_type=type(exc).__name__,
                            error_message=str(exc) or repr(exc),
                            executor={"kind": self.executor.kind},
                        )
            finally:
                self.control.running.discard(run_scope)
        if result is None:
            if run_scope.cancelled_caught:
                result = ExecutionResult(
                    status=Status.CANCELLED,
                    error_type="Cancelled",
                    error_message="cancelled at shutdown before it finished",
                    executor={"kind": self.executor.kind},
                )
            elif limit.cancelled_caught:
                result = ExecutionResult(
                    status=Status.TIMEOUT,
                    error_type="Timeout",
                    error_message=f"did not finish within {timeout:g}s",
                    executor={"kind": self.executor.kind},
                )
            else:  # pragma: no cover - executor.run always returns or raises
                raise RuntimeError("executor returned without a result")
        return Outcome(
            run_id=self.run_id,
            scenario_id=scenario.id,
            attempt=attempt,
            status=result.status,
            started_at=started,
            finished_at=_now(),
            score=result.score,
            output=result.output,
            error_type=result.error_type,
            error_message=result.error_message,
            executor=result.executor,
            worker=self.name,
            final=True,
            scenario_hash=scenario.content_hash,
            tags=scenario.tags,
        )
