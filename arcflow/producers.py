"""Producer actors: take a scenario, run it through the executor, send its outcomes on.

Each producer pulls the next scenario as soon as the last one is done, so all
``concurrency`` slots stay busy (no waiting for the slowest of a group).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import attrs
import trio

from .config import RuntimeConfig, SupervisorConfig
from .executors.base import ExecutionContext, Executor
from .journal import SpillJournal, salvage
from .models import RETRYABLE_STATUSES, ExecutionResult, Outcome, OutcomeHook, Scenario, Status
from .poison import output_problem
from .stats import UsageTotals
from .supervisor import supervise

log = logging.getLogger("arcflow.producers")


@attrs.define
class ProducerState:
    """What a producer is doing, kept outside it so a restarted producer picks it up."""

    current: Scenario | None = None
    #: The attempt number the current scenario runs next.
    attempt: int = 1


@attrs.define(eq=False)
class ProducerPool:
    """Which producers wait for work and which rest, shared by the producers of a runtime.

    With fast scenarios a couple of producers keep up with the input, and
    handing each scenario to a different one of ``concurrency`` waiting
    producers only makes every scheduler round longer (and with it every
    database round trip of the writer, which shares the thread).  So at most
    two producers wait on the work channel; the others rest in ``lot``.

    A producer that takes a scenario when nobody is left waiting on the
    channel wakes a resting one (a scout), unless one is already on its way.
    The scout runs a scheduler round later: if an attempt is still running
    then, scenarios are slow and every slot is wanted, so it wakes one more
    producer per queued scenario.  Slow scenarios thus fill all slots within
    a few rounds, fast ones are run by a few producers.  A producer that
    finds the input closed, or stops, wakes everyone, so nobody rests past
    the end; ``cancel_running`` reaches resting producers through their scope.
    """

    lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    #: Producers resting in ``lot``.
    parked: int = 0
    #: Producers blocked in ``work.receive()``.
    receivers: int = 0
    #: Producers taken out of ``lot`` that have not run yet.
    waking: int = 0
    #: Attempts in progress (awaiting their executor).
    attempting: int = 0

    def wake(self, count: int) -> None:
        woken = len(self.lot.unpark(count=count))
        self.parked -= woken
        self.waking += woken

    def wake_all(self) -> None:
        woken = len(self.lot.unpark_all())
        self.parked -= woken
        self.waking += woken


@attrs.define
class ProducerStats:
    """What the producers have done; written by the producers alone."""

    #: Scenarios currently running.
    running: int = 0
    #: Scenarios whose last attempt has finished.
    completed: int = 0
    #: Outcomes produced, by status (every attempt counts).
    by_status: Counter[str] = attrs.field(factory=Counter)
    #: Tokens and cost the outcomes reported.
    usage: UsageTotals = attrs.field(factory=UsageTotals)


@attrs.define
class ShutdownControl:
    """How the runtime tells its producers to stop taking work and to cancel running work.

    The runtime calls :meth:`stop`, :meth:`cancel_running` and
    :meth:`record_unstarted_scenarios`; the producers only read it (and
    register the cancel scopes of their running attempts).
    """

    #: No producer takes a new scenario or starts a new attempt once set.
    stopping: bool = False
    #: Running attempts were cancelled (second signal, grace expired, host cancelled).
    cancelled: bool = False
    running: set[trio.CancelScope] = attrs.field(factory=set)
    #: Set when the host cancelled the runtime: scenarios accepted but not started
    #: are recorded ``cancelled`` rather than left without a row.
    record_unstarted: bool = False
    #: Set when the run stopped because its cost budget (``max_cost``) was spent.
    budget_spent: bool = False
    #: The cancel scope of each running attempt, by (scenario id, epoch).
    active: dict[tuple[str, int], trio.CancelScope] = attrs.field(factory=dict)
    #: Scenarios cancelled one by one (a shared run's lost claims), and why.
    dropped: dict[tuple[str, int], str] = attrs.field(factory=dict)

    def stop(self) -> None:
        """Stop taking new scenarios; running ones go on."""
        self.stopping = True

    def cancel_running(self) -> None:
        """Stop taking scenarios and cancel every running attempt (recorded ``cancelled``)."""
        self.stopping = True
        self.cancelled = True
        for scope in list(self.running):
            scope.cancel()

    def cancel_scenario(self, key: tuple[str, int], reason: str) -> None:
        """Cancel one running scenario (recorded ``cancelled`` with ``reason``, not final)."""
        scope = self.active.get(key)
        if scope is not None:
            self.dropped[key] = reason
            scope.cancel()

    def record_unstarted_scenarios(self) -> None:
        """Give every accepted scenario not started a ``cancelled`` row (the host was cancelled)."""
        self.record_unstarted = True


def _now() -> datetime:
    return datetime.now(UTC)


# What a producer was doing when its running scope was cancelled (see Producer.run).
_IDLE = 0
_RECEIVING = 1
_RUNNING = 2
_SENDING = 3
_BACKOFF = 4
_PARKED = 5


class Producer:
    """Runs scenarios from ``work`` and sends one outcome per attempt to ``outcomes``.

    Retries: scenarios whose attempt ended ``error`` or ``timeout``, up to
    ``config.attempts`` with exponential backoff (``failed`` never is).
    Escalates: nothing from executors (their exceptions become ``error``
    outcomes); a bug in the producer itself propagates to the supervisor, which
    restarts it with its :class:`ProducerState`, so the scenario is not lost.
    Closes: nothing; the supervisor owns its channel clones.

    The per-record path is kept short, because with a fast executor the
    producers, not the database, set the throughput:

    * scenarios are taken with ``receive_nowait()`` and outcomes handed over
      with ``send_nowait()``, awaiting only when a channel is empty or full
      (both channels are bounded, so a producer still yields regularly);
    * one cancel scope (registered in ``control.running``) covers a run of
      attempts instead of one scope per attempt: ``cancel_running()`` cancels
      it, a per-scenario timeout is its deadline while the executor runs, and
      after a cancellation the producer finishes what it was doing (records the
      attempt ``cancelled`` or ``timeout``, hands over an outcome not yet
      sent, or ends an interrupted backoff) and opens a fresh scope.
    """

    def __init__(
        self,
        name: str,
        executor: Executor,
        *,
        run_id: str,
        config: RuntimeConfig,
        control: ShutdownControl,
        stats: ProducerStats,
        pool: ProducerPool | None = None,
        first_attempts: Mapping[tuple[str, int], int] | None = None,
        on_outcome: Sequence[OutcomeHook] = (),
        journal: SpillJournal | None = None,
    ) -> None:
        self.name = name
        self.on_outcome = tuple(on_outcome)
        self.executor = executor
        self.run_id = run_id
        self.config = config
        self.control = control
        self.stats = stats
        #: Shared by the producers of one runtime (see :class:`ProducerPool`).
        self.pool = pool if pool is not None else ProducerPool()
        #: First attempt number per (scenario id, epoch): a resumed run continues after the
        #: attempts it stored.
        self.first_attempts: Mapping[tuple[str, int], int] = (
            first_attempts if first_attempts is not None else {}
        )
        self.journal = journal
        self._backoff = config.attempt_backoff_policy()
        self._contexts: dict[tuple[int, float | None], ExecutionContext] = {}
        # Progress of this incarnation, read after its scope was cancelled.
        self._phase = _IDLE
        self._first = 1
        self._started = _EPOCH
        self._timeout: float | None = None
        self._unsent: Outcome | None = None
        self._retry = False
        self._backoff_until: float | None = None
        self._counted = False
        self._attempt_context: ExecutionContext | None = None
        #: The next outcome ends its scenario (a dropped scenario is not retried).
        self._stop_retrying = False
        #: A scenario taken from the channel but never started (the runtime stopped).
        self._unstarted: Scenario | None = None

    async def serve(
        self,
        work: trio.MemoryReceiveChannel[Scenario],
        outcomes: trio.MemorySendChannel[Outcome],
        *,
        supervisor: SupervisorConfig | None = None,
        restarts: Counter[str] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The actor: :meth:`run`, restarted after a crash with its scenario, until ``work`` ends.

        Closes its clones of both channels when it returns.
        """
        state = ProducerState()
        with work, outcomes:
            task_status.started()
            await supervise(
                self.name, self.run, work, outcomes, state, config=supervisor, restarts=restarts
            )

    async def run(
        self,
        work: trio.MemoryReceiveChannel[Scenario],
        outcomes: trio.MemorySendChannel[Outcome],
        state: ProducerState,
    ) -> None:
        """One incarnation: take scenarios until ``work`` ends or the runtime stops taking them.

        If the outcome channel is gone (the batcher ended by failure or
        cancellation), or this task is cancelled from outside, an outcome not
        yet handed over is salvaged into the journal.
        """
        control = self.control
        self._phase = _IDLE
        self._unsent = None
        self._backoff_until = None
        self._counted = False
        try:
            while True:
                done = False
                with trio.CancelScope() as scope:
                    control.running.add(scope)
                    try:
                        if control.cancelled:
                            scope.cancel()
                        done = await self._loop(work, outcomes, state, scope)
                    finally:
                        control.running.discard(scope)
                if scope.cancelled_caught:
                    await self._recover(outcomes, state)
                elif done:
                    if control.record_unstarted:
                        await self._record_unstarted(work, outcomes)
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The batcher is gone: nobody takes outcomes any more.
            await self._salvage_unsent()
            return
        except BaseException as exc:
            if not isinstance(exc, Exception):  # a crash re-runs the scenario after the restart
                await self._salvage_unsent()  # noqa: ASYNC102 - shielded and bounded in salvage()
            raise
        finally:
            if self._counted:
                self._counted = False
                self.stats.running -= 1

    async def _salvage_unsent(self) -> None:
        unsent, self._unsent = self._unsent, None
        if unsent is not None and self.journal is not None:
            await salvage(
                self.journal, [unsent], who=self.name, limit_s=self.config.shutdown_timeout
            )

    async def _loop(
        self,
        work: trio.MemoryReceiveChannel[Scenario],
        outcomes: trio.MemorySendChannel[Outcome],
        state: ProducerState,
        scope: trio.CancelScope,
    ) -> bool:
        """The hot loop, inside ``scope``: True when there is no more work to take.

        False asks for a fresh scope: a timeout fired but the executor swallowed
        the cancellation and returned, so ``scope`` stays cancelled and must not
        reach the next attempt.
        """
        control = self.control
        pool = self.pool
        stats = self.stats
        executor = self.executor
        config_timeout = self.config.timeout
        task = trio.lowlevel.current_task()
        step_started = _perf_counter()
        while True:
            scenario = state.current
            if scenario is None:
                if control.stopping:
                    pool.wake_all()
                    return True
                try:
                    scenario = work.receive_nowait()
                except trio.WouldBlock:
                    if pool.receivers >= _RECEIVERS:
                        # Someone already waits for the next scenario: rest until needed.
                        self._phase = _PARKED
                        pool.parked += 1
                        try:
                            await pool.lot.park()
                        except BaseException:
                            pool.parked -= 1
                            raise
                        pool.waking -= 1
                        step_started = _perf_counter()
                        if pool.attempting and pool.parked:
                            self._scout(work)
                        continue
                    self._phase = _RECEIVING
                    pool.receivers += 1
                    try:
                        scenario = await work.receive()
                    except trio.EndOfChannel:
                        pool.wake_all()
                        return True
                    finally:
                        pool.receivers -= 1
                    step_started = _perf_counter()
                except trio.EndOfChannel:
                    pool.wake_all()
                    return True
                if control.stopping:
                    pool.wake_all()
                    self._unstarted = scenario  # not started: a resumed run will run it
                    return True
                if not pool.receivers and pool.parked and not pool.waking:
                    pool.wake(1)
                state.current = scenario
                state.attempt = self.first_attempts.get((scenario.id, scenario.epoch), 1)
            if not self._counted:
                self._counted = True
                stats.running += 1
                self._first = self.first_attempts.get((scenario.id, scenario.epoch), 1)
            if self._backoff_until is not None:
                self._phase = _BACKOFF
                await trio.sleep_until(self._backoff_until)
                self._backoff_until = None
            # One attempt.
            attempt = state.attempt
            timeout = scenario.timeout_s if scenario.timeout_s is not None else config_timeout
            context = self._contexts.get((attempt, timeout))
            if context is None:
                context = self._context(attempt, timeout)
            if context.details:
                context.details.clear()  # contexts are reused: no pid of a previous scenario
            self._attempt_context = context
            self._timeout = timeout
            self._started = started = _now()
            self._phase = _RUNNING
            key = (scenario.id, scenario.epoch)
            control.active[key] = scope
            if timeout is not None:
                scope.deadline = trio.current_time() + timeout
            pool.attempting += 1
            yields = _yields(task)
            try:
                result = await executor.run(scenario, context)
            except Exception as exc:
                result = ExecutionResult(
                    status=Status.ERROR,
                    error_type=type(exc).__name__,
                    error_message=str(exc) or repr(exc),
                    executor={"kind": executor.kind},
                )
            finally:
                pool.attempting -= 1
                control.active.pop(key, None)
            if _yields(task) != yields:  # it waited (a sleep, a child, a sandbox): a fresh slice
                step_started = _perf_counter()
            stale = False
            if timeout is not None:
                scope.deadline = math.inf
                stale = scope.cancel_called
            outcome = self._outcome(scenario, attempt, started, result)
            # Hand it over.
            self._unsent = outcome
            self._phase = _SENDING
            try:
                outcomes.send_nowait(outcome)
            except trio.WouldBlock:
                await outcomes.send(outcome)
            self._unsent = None
            self._phase = _IDLE
            self._sent(outcome, state)
            if stale:
                return False
            # Fast scenarios never block: yield now and then, so that no step of
            # this task holds the thread long (the writer's round trips wait for it).
            now = _perf_counter()
            if now - step_started > _SLICE_S:
                self._phase = _IDLE
                await trio.lowlevel.cancel_shielded_checkpoint()
                step_started = _perf_counter()

    def _check_budget(self) -> None:
        """Past ``max_cost``: take no new scenarios (running ones finish; resume goes on)."""
        limit = self.config.max_cost
        control = self.control
        if limit is not None and not control.stopping and self.stats.usage.cost_usd >= limit:
            log.warning(
                "run %s: the cost budget of %g USD is spent (%.4f USD): no new scenarios; "
                "run again with --resume %s to go on",
                self.run_id,
                limit,
                self.stats.usage.cost_usd,
                self.run_id,
            )
            control.budget_spent = True
            control.stop()

    def _scout(self, work: trio.MemoryReceiveChannel[Scenario]) -> None:
        """Woken while an attempt is running: wake a resting producer per queued scenario."""
        pool = self.pool
        queued = work.statistics().current_buffer_used - pool.waking - 1
        if queued > 0:
            pool.wake(min(queued, pool.parked))

    def _context(self, attempt: int, timeout: float | None) -> ExecutionContext:
        context = ExecutionContext(
            run_id=self.run_id, attempt=attempt, worker=self.name, timeout_s=timeout
        )
        if len(self._contexts) < 64:
            self._contexts[(attempt, timeout)] = context
        return context

    def _outcome(
        self, scenario: Scenario, attempt: int, started: datetime, result: ExecutionResult
    ) -> Outcome:
        """The attempt's outcome; decides (in ``self._retry``) whether another attempt follows.

        An output that cannot be stored as JSON makes the attempt ``error``
        (``InvalidOutput``), so poison never travels down the pipeline.
        """
        output = result.output
        if output is not None and type(output) not in _SCALARS:
            problem = output_problem(output)
            if problem is not None:
                result = ExecutionResult(
                    status=Status.ERROR,
                    score=result.score,
                    error_type="InvalidOutput",
                    error_message=problem,
                    executor=result.executor,
                )
        status = result.status
        retry = self._retry = (
            status in RETRYABLE_STATUSES
            and attempt < self._first + self.config.attempts - 1
            and not self.control.stopping
            and not self._stop_retrying
        )
        self._stop_retrying = False
        return Outcome.trusted(
            self.run_id,
            scenario.id,
            attempt,
            status,
            started,
            _now(),
            result.score,
            result.output,
            result.error_type,
            result.error_message,
            result.executor,
            self.name,
            not retry and status is not Status.CANCELLED,
            scenario.content_hash,
            scenario.tags,
            result.usage,
            scenario.epoch,
        )

    def _sent(self, outcome: Outcome, state: ProducerState) -> None:
        """Bookkeeping once ``outcome`` is in the outcome channel."""
        stats = self.stats
        stats.by_status[_STATUS_VALUE[outcome.status]] += 1
        if outcome.usage is not None:
            stats.usage.add(outcome.usage)
            self._check_budget()
        for hook in self.on_outcome:
            hook(outcome)
        attempt = state.attempt = outcome.attempt + 1
        if not self._retry:
            stats.completed += 1
            state.current = None
            self._counted = False
            stats.running -= 1
            return
        delay = self._backoff.delay(attempt - self._first)
        self._backoff_until = trio.current_time() + delay

    async def _record_unstarted(
        self, work: trio.MemoryReceiveChannel[Scenario], outcomes: trio.MemorySendChannel[Outcome]
    ) -> None:
        """The host cancelled the runtime: every accepted scenario not started gets a row.

        Each is recorded ``cancelled`` (not final, so ``--resume`` runs it), until
        the work channel, closed by the runtime's drain, is empty.
        """
        pending, self._unstarted = self._unstarted, None
        while True:
            if pending is None:
                try:
                    pending = await work.receive()
                except trio.EndOfChannel:
                    return
            now = _now()
            outcome = Outcome(
                self.run_id,
                pending.id,
                self.first_attempts.get((pending.id, pending.epoch), 1),
                Status.CANCELLED,
                now,
                now,
                error_type="Cancelled",
                error_message="not started: the runtime was cancelled",
                executor={"kind": self.executor.kind},
                worker=self.name,
                final=False,
                scenario_hash=pending.content_hash,
                tags=pending.tags,
                epoch=pending.epoch,
            )
            self._unsent = outcome
            await outcomes.send(outcome)
            self._unsent = None
            self.stats.by_status[Status.CANCELLED.value] += 1
            for hook in self.on_outcome:
                hook(outcome)
            pending = None

    async def _recover(
        self, outcomes: trio.MemorySendChannel[Outcome], state: ProducerState
    ) -> None:
        """Finish what a cancellation (``cancel_running`` or a timeout) interrupted."""
        phase, self._phase = self._phase, _IDLE
        scenario = state.current
        if phase == _RUNNING and scenario is not None:
            known = self._attempt_context.details if self._attempt_context is not None else {}
            details = {"kind": self.executor.kind, **known}
            dropped = self.control.dropped.pop((scenario.id, scenario.epoch), None)
            if dropped is not None:
                self._stop_retrying = True
                result = ExecutionResult(
                    status=Status.CANCELLED,
                    error_type="Cancelled",
                    error_message=f"cancelled: {dropped}",
                    executor=details,
                )
            elif self.control.cancelled:
                result = ExecutionResult(
                    status=Status.CANCELLED,
                    error_type="Cancelled",
                    error_message="cancelled at shutdown before it finished",
                    executor=details,
                )
            else:
                result = ExecutionResult(
                    status=Status.TIMEOUT,
                    error_type="Timeout",
                    error_message=f"did not finish within {self._timeout:g}s",
                    executor=details,
                )
            self._unsent = self._outcome(scenario, state.attempt, self._started, result)
            phase = _SENDING
        if phase == _SENDING and self._unsent is not None:
            outcome = self._unsent
            await outcomes.send(outcome)
            self._unsent = None
            self._sent(outcome, state)
        elif phase == _BACKOFF and scenario is not None:
            # The backoff before the next attempt was cancelled: the scenario ends here.
            self._backoff_until = None
            self.stats.completed += 1
            state.current = None
            if self._counted:
                self._counted = False
                self.stats.running -= 1


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_perf_counter = time.perf_counter
#: Longest a producer works through ready scenarios before it lets other tasks run.
_SLICE_S = 0.0003
#: Producers waiting on the work channel before others rest instead (see ProducerPool).
_RECEIVERS = 2


def _yields(task: trio.lowlevel.Task) -> int:
    """How often ``task`` has given the thread back to trio's scheduler, or -1 if unknown.

    The producer yields after ``_SLICE_S`` of running without a break; an
    attempt that waited (most do) was such a break, and yielding again after
    it would cost a task step per scenario.  trio counts a task's yields in
    ``Task._schedule_points`` (what ``trio.testing.assert_checkpoints``
    reads); without it every attempt counts as running on.
    """
    points: int = getattr(task, "_schedule_points", -1)
    return points


_STATUS_VALUE = {status: status.value for status in Status}
#: Outputs that are JSON as they are, with no check.
_SCALARS = frozenset({str, int, float, bool})
