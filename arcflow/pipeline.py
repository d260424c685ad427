"""The pipeline: the actors of one run, the bounded channels between them, and their drain.

::

    submit() / file source ─work─▶ producer x N ─outcomes─▶ batcher ─batches─▶ writer ─▶ PostgreSQL
                                                   ▲                                 └─▶ journal
                                       record() ───┘

Every arrow is a bounded ``trio`` memory channel, so a slow database slows
the producers and then the input: memory stays flat and nothing is dropped.
The actors run in a shielded nursery of their own, so cancelling the host
does not drop what is in flight: :meth:`Pipeline.drain` closes the input and
waits, within a budget, for every outcome to be written or spilled.  If the
budget runs out, the actors are cancelled, and each one salvages what it
holds into the spill journal on its way out; nobody reaches into another
actor's state.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from .batcher import BatcherStats, FlushNow, run_batcher
from .breaker import CircuitBreaker
from .config import RuntimeConfig
from .executors import Executor
from .journal import SpillJournal
from .models import Batch, BatchHook, Outcome, OutcomeHook, Scenario
from .producers import Producer, ProducerPool, ProducerStats, ShutdownControl
from .stats import IntakeStats, RuntimeStatistics
from .store import Store
from .writer import Writer, WriterStats

log = logging.getLogger("arcflow.pipeline")

#: Seconds the drain waits for cancelled actors to salvage what they hold and unwind.
_UNWIND_TIMEOUT = 5.0


class Pipeline:
    """The actors of one run: N producers, the batcher and the writer, and their channels.

    Start it with ``await nursery.start(pipeline.run)``, which returns once
    every actor runs; then hand it work through :attr:`work` (scenarios) and
    :attr:`records` (finished outcomes), and end it with :meth:`drain`.
    ``executor`` None means a record-only pipeline (no producers).
    """

    def __init__(
        self,
        *,
        run_id: str,
        config: RuntimeConfig,
        executor: Executor | None,
        journal: SpillJournal,
        breaker: CircuitBreaker,
        stores: Sequence[Store],
        batch_size: int | Callable[[], int],
        on_outcome: Sequence[OutcomeHook] = (),
        on_batch_written: Sequence[BatchHook] = (),
        first_attempts: Mapping[tuple[str, int], int] | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.config = config
        self.executor = executor
        self.journal = journal
        self.breaker = breaker
        self.control = ShutdownControl()
        self.restarts: Counter[str] = Counter()
        self.producer_stats = ProducerStats()
        self.batcher_stats = BatcherStats()
        #: Asks the batcher for its partial batch now (a shared run's source, when idle).
        self.flush_now = FlushNow()
        self.writer_stats = WriterStats()
        self._batch_size = batch_size
        self._on_outcome = tuple(on_outcome)
        #: First attempt number per (scenario id, epoch), filled by a resume plan before work
        #: arrives.
        self.first_attempts: dict[tuple[str, int], int] = dict(first_attempts or {})
        self.writer = Writer(
            stores,
            journal,
            breaker,
            run_id=run_id,
            retry=config.retry,
            stats=self.writer_stats,
            on_batch_written=on_batch_written,
            final_replay_timeout=config.shutdown_timeout,
            salvage_timeout=config.shutdown_timeout,
            worker_id=worker_id,
        )
        work_send, self._work_recv = trio.open_memory_channel[Scenario](
            config.effective_work_buffer
        )
        self._outcome_send, self._outcome_recv = trio.open_memory_channel[Outcome](
            config.effective_outcome_buffer
        )
        self._batch_send, self._batch_recv = trio.open_memory_channel[Batch](config.batch_buffer)
        #: Where scenarios go in (the runtime's submit() and file source send here).
        self.work: trio.MemorySendChannel[Scenario] = work_send
        #: Where finished outcomes go in (the runtime's record()).
        self.records: trio.MemorySendChannel[Outcome] = self._outcome_send.clone()
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._done = trio.Event()
        self._grace_scope = trio.CancelScope()
        #: Producers still serving, and set when none is: a stop's grace ends with them.
        self._producers_alive = 0
        self._producers_done = trio.Event()

    # -- running ----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every actor in a shielded nursery until all have finished."""
        cfg = self.config
        try:
            with trio.CancelScope(shield=True) as scope:
                self._scope = scope
                async with trio.open_nursery() as actors:
                    self._nursery = actors
                    await actors.start(
                        functools.partial(
                            self.writer.serve,
                            self._batch_recv,
                            supervisor=cfg.supervisor,
                            restarts=self.restarts,
                        )
                    )
                    await actors.start(
                        functools.partial(
                            run_batcher,
                            self._outcome_recv,
                            self._batch_send,
                            batch_size=self._batch_size,
                            flush_interval=cfg.flush_interval,
                            stats=self.batcher_stats,
                            journal=self.journal,
                            salvage_timeout=cfg.shutdown_timeout,
                            flush_now=self.flush_now,
                        )
                    )
                    pool = ProducerPool()
                    with self._work_recv, self._outcome_send:
                        count = cfg.concurrency if self.executor is not None else 0
                        for i in range(count):
                            assert self.executor is not None
                            producer = Producer(
                                f"producer-{i}",
                                self.executor,
                                run_id=self.run_id,
                                config=cfg,
                                control=self.control,
                                stats=self.producer_stats,
                                pool=pool,
                                first_attempts=self.first_attempts,
                                on_outcome=self._on_outcome,
                                journal=self.journal,
                            )
                            # start_soon, not start: 20,000 producers would each cost a
                            # trip through the scheduler before the first scenario runs.
                            self._producers_alive += 1
                            actors.start_soon(
                                self._producer,
                                functools.partial(
                                    producer.serve,
                                    self._work_recv.clone(),
                                    self._outcome_send.clone(),
                                    supervisor=cfg.supervisor,
                                    restarts=self.restarts,
                                ),
                            )
                    if not self._producers_alive:
                        self._producers_done.set()
                    task_status.started()
        finally:
            self._done.set()

    async def _producer(self, serve: Callable[[], Awaitable[None]]) -> None:
        try:
            await serve()
        finally:
            self._producers_alive -= 1
            if not self._producers_alive:
                self._producers_done.set()

    # -- stopping ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Take no new scenarios; running ones get ``grace`` seconds, then are cancelled."""
        self.control.stop()
        if self._nursery is not None:
            self._nursery.start_soon(self._grace_timer)

    def cancel_running(self) -> None:
        """Cancel running scenarios now (recorded ``cancelled``); their outcomes are still written."""
        self.control.cancel_running()

    async def _grace_timer(self) -> None:
        """Cancel what still runs ``grace`` seconds after a stop; ends early once producers have."""
        with self._grace_scope:
            with trio.move_on_after(self.config.grace):
                await self._producers_done.wait()
                return
            if self.producer_stats.running:
                log.warning("run %s: grace period over", self.run_id)
            self.control.cancel_running()

    async def drain(self, *, cancelled: bool) -> None:
        """Close the input and wait for every outcome to be written or spilled.

        A normal end waits as long as the work takes.  ``cancelled`` (the host
        left by an exception or was cancelled) cancels running scenarios,
        records the accepted ones not started as ``cancelled``, and bounds the
        wait by ``shutdown_timeout``; a stop request bounds it by
        ``shutdown_timeout`` plus ``grace``.  Past the budget the actors are
        cancelled and salvage what they hold into the journal.
        """
        self.writer.drain()
        if cancelled:
            self.control.record_unstarted_scenarios()
            self.cancel_running()
        self.work.close()
        self.records.close()
        cfg = self.config
        control = self.control
        if cancelled or control.stopping:
            graceful = control.stopping and not control.cancelled
            budget = cfg.shutdown_timeout + (cfg.grace if graceful else 0.0)
        else:
            budget = math.inf  # a normal exit waits for every submitted scenario
        with trio.move_on_after(budget) as waited:
            await self._done.wait()
        self._grace_scope.cancel()  # nothing left to be graceful to
        if waited.cancelled_caught:
            log.error(
                "run %s: pipeline did not drain within %.0fs; spilling what remains",
                self.run_id,
                budget,
            )
            if self._scope is not None:
                self._scope.cancel()
            with trio.move_on_after(_UNWIND_TIMEOUT + cfg.shutdown_timeout):
                await self._done.wait()

    # -- observing --------------------------------------------------------------------------------

    def statistics(
        self, *, intake: IntakeStats, elapsed: float, **gauges: Any
    ) -> RuntimeStatistics:
        """One snapshot of every actor's counts, with the runtime's ``intake`` and ``gauges``."""
        producers = self.producer_stats
        recorded = intake.recorded
        return RuntimeStatistics(
            run_id=self.run_id,
            submitted=intake.submitted,
            completed=producers.completed + sum(recorded.values()),
            running=producers.running,
            by_status=dict(producers.by_status + recorded),
            outcome_queue=self._outcome_recv.statistics().current_buffer_used,
            work_queue=self._work_recv.statistics().current_buffer_used,
            batch_queue=self._batch_recv.statistics().current_buffer_used,
            breaker_state=self.breaker.state.value,
            breaker_transitions=dict(self.breaker.transitions),
            journal_bytes=self.journal.size,
            journal_batches=self.journal.pending_batches,
            journal_error=self.writer.journal_error,
            **attrs.asdict(producers.usage.plus(intake.usage)),
            executor=self.executor.statistics() if self.executor is not None else {},
            restarts=dict(self.restarts),
            elapsed=elapsed,
            **attrs.asdict(self.writer_stats),
            **{
                **attrs.asdict(self.batcher_stats),
                "batch_size": self.batcher_stats.batch_size or self.config.batch_size,
            },
            **gauges,
        )
