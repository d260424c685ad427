"""``arcflow.Runtime``: the nursery tree of actors, as an async context manager.

::

    source / submit() ─work─▶ producer x N ─outcomes─▶ batcher ─batches─▶ writer ─▶ PostgreSQL
                                (supervised)                              (supervised)

The actors run in a shielded nursery of their own, so cancelling the host's
scope does not drop what is in the pipeline: leaving the ``async with`` block
(normally, by an exception or by cancellation) closes the input, lets the
pipeline drain within bounded time, and writes or spills every outcome.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
import trio
import trio.lowlevel

from ._trio_asyncio import import_trio_asyncio
from .batcher import run_batcher
from .breaker import CircuitBreaker
from .config import RuntimeConfig
from .errors import (
    ArcflowError,
    ConfigError,
    DatabaseUnavailable,
    PipelineFull,
    ResumeError,
    RuntimeClosed,
    TransientWriteError,
    arcflow_errors_unwrapped,
)
from .executors import Executor, parse_executor
from .journal import SpillJournal
from .models import Batch, Outcome, Scenario
from .producers import Producer, ProducerState, ShutdownControl
from .source import run_file_source
from .stats import Counters, RuntimeStatistics
from .store import EMBEDDED, Store, resolve_dsn, start_embedded
from .store.dsn import redact_dsn, redact_text
from .supervisor import supervise
from .writer import Writer, WriterState

log = logging.getLogger("arcflow.runtime")

#: Seconds the drain waits for cancelled actors to unwind before rescuing what is in memory.
_UNWIND_TIMEOUT = 5.0


def new_run_id() -> str:
    """A fresh run id: sortable by time, unique."""
    import time

    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]


def _build_config(config: RuntimeConfig | None, options: Mapping[str, Any]) -> RuntimeConfig:
    names = {a.name for a in attrs.fields(RuntimeConfig)}
    unknown = set(options) - names
    if unknown:
        raise ConfigError(
            f"unknown runtime option(s) {sorted(unknown)}; valid options: {sorted(names)}"
        )
    base = config or RuntimeConfig()
    return attrs.evolve(base, **options) if options else base


class Runtime:
    """Runs scenarios concurrently and records every outcome in PostgreSQL in batches.

    ::

        async with arcflow.Runtime(executor="python:mymod:score", db=DSN, batch_size=500) as rt:
            for scenario in scenarios:
                await rt.submit(scenario)       # waits while the pipeline is full
            print(rt.statistics())
        # leaving the block drains: every outcome is written (or spilled to the journal)

    Hooks (plain callables, called in the runtime's trio thread; keep them quick):
    ``on_outcome(outcome)`` after each attempt's outcome is handed to the batcher,
    ``on_batch_written(batch, rows_inserted, latency_s)`` after each committed write.
    ``batch_size_source()`` (optional) is read at the start of each batch to size it,
    for adaptive batching (see :mod:`arcflow.adaptive`); default: ``batch_size``.

    ``db`` is a PostgreSQL DSN; None means ``ARCFLOW_DB``, then the ``PG*``
    variables, then the embedded server under ``data_dir``.  Options are the
    fields of :class:`RuntimeConfig` (``concurrency``, ``batch_size``,
    ``flush_interval``, ...).
    """

    def __init__(
        self,
        executor: str | Executor | None = None,
        db: str | None = None,
        *,
        run_id: str | None = None,
        suite: str | None = None,
        suite_hash: str | None = None,
        scenario_count: int | None = None,
        config: RuntimeConfig | None = None,
        on_batch_written: Callable[[Batch, int, float], None] | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        batch_size_source: Callable[[], int] | None = None,
        first_attempts: Mapping[str, int] | None = None,
        resume: bool = False,
        **options: Any,
    ) -> None:
        self.config = _build_config(config, options)
        self.executor: Executor | None = parse_executor(executor) if executor is not None else None
        self.run_id = run_id or new_run_id()
        self.suite = suite
        self.suite_hash = suite_hash
        self.scenario_count = scenario_count
        self._db = db
        self._dsn: str | None = None
        self._on_batch_written = on_batch_written
        self._on_outcome = on_outcome
        self._batch_size_source = batch_size_source
        self.resume = resume
        self.counters = Counters(batch_size=self.config.batch_size)
        self.control = ShutdownControl(first_attempt=dict(first_attempts or {}))
        self.breaker = CircuitBreaker(self.config.breaker, name=f"run {self.run_id}")
        self.journal = SpillJournal(
            self.journal_path(self.config.data_dir, self.run_id),
            max_bytes=self.config.journal_max_bytes,
        )
        self.writer_state = WriterState()
        self._stack: contextlib.AsyncExitStack | None = None
        self._work_send: trio.MemorySendChannel[Scenario] | None = None
        self._work_recv: trio.MemoryReceiveChannel[Scenario] | None = None
        self._record_send: trio.MemorySendChannel[Outcome] | None = None
        self._outcome_recv: trio.MemoryReceiveChannel[Outcome] | None = None
        self._batch_recv: trio.MemoryReceiveChannel[Batch] | None = None
        self._closed = True
        self._started_at = 0.0
        self._finished_at: float | None = None
        self._source_scope: trio.CancelScope | None = None
        self._pipeline_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._pipeline_done = trio.Event()
        self._grace_scope = trio.CancelScope()
        self._batcher_pending: list[Outcome] = []
        self.store: Store | None = None
        self.rescued_outcomes = 0

    # -- paths and state ------------------------------------------------------------------------

    @staticmethod
    def journal_path(data_dir: Path | str, run_id: str) -> Path:
        """Where the spill journal of ``run_id`` lives."""
        return Path(data_dir) / "journal" / f"{run_id}.journal"

    @property
    def dsn(self) -> str | None:
        """The DSN in use (after start), password included; never log it, use ``redacted_dsn``."""
        return self._dsn

    @property
    def redacted_dsn(self) -> str:
        return redact_dsn(self._dsn)

    # -- async context manager ------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        with arcflow_errors_unwrapped():
            try:
                await stack.enter_async_context(self._lifecycle())
            except BaseException as exc:
                # Startup failed before any actor ran: closing what was opened is quick
                # (each step has its own shielded timeout), but bound it all the same.
                with trio.move_on_after(self.config.shutdown_timeout, shield=True):
                    await stack.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None, "Runtime was not entered"
        stack, self._stack = self._stack, None
        with arcflow_errors_unwrapped():
            # Not under one shielded timeout on purpose: a normal exit waits for every
            # submitted scenario; _lifecycle shields and bounds each cleanup step itself.
            return await stack.__aexit__(exc_type, exc, tb)  # noqa: ASYNC102

    @contextlib.asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[None]:
        cfg = self.config
        async with contextlib.AsyncExitStack() as stack:
            # Imported here, not at module level: importing trio_asyncio patches asyncio's
            # policy, and `import arcflow` must leave the host program's asyncio alone.
            trio_asyncio = import_trio_asyncio()

            if trio_asyncio.current_loop.get() is None:
                loop = await stack.enter_async_context(trio_asyncio.open_loop())
                # trio-asyncio's default handler re-raises asyncio's orphaned errors into
                # the loop's nursery; asyncpg leaves such a future behind when a connection
                # drops at the wrong moment, and that must not crash the runtime.
                loop.set_exception_handler(_log_asyncio_error)
            store = await self._open_store(stack)
            if self.executor is not None:
                await self.executor.start()
                stack.push_async_callback(self._close_executor)
            await self.journal.open()
            writer_stores = [
                Store(self._dsn, statement_timeout=cfg.statement_timeout)
                for _ in range(cfg.writer_connections)
            ]
            for writer_store in writer_stores:
                stack.push_async_callback(writer_store.aclose)
            writer = Writer(
                writer_stores,
                self.journal,
                self.breaker,
                run_id=self.run_id,
                retry=cfg.retry,
                counters=self.counters,
                on_batch_written=self._on_batch_written,
                final_replay_timeout=cfg.shutdown_timeout,
            )
            if self.journal.pending_batches:
                log.info(
                    "run %s: replaying %d spilled batches from %s before starting",
                    self.run_id,
                    self.journal.pending_batches,
                    self.journal.path,
                )
                if not await writer.replay():
                    raise DatabaseUnavailable(
                        f"could not replay the spill journal {self.journal.path} into "
                        f"{self.redacted_dsn}; the database is not taking writes"
                    )
            if self.resume and await store.get_run(self.run_id) is None:
                raise ResumeError(
                    f"cannot resume run {self.run_id!r}: no such run in {self.redacted_dsn} "
                    "(check the id, and --db / --data-dir)"
                )
            await store.start_run(
                self.run_id,
                suite=self.suite,
                suite_hash=self.suite_hash,
                executor=self.executor.describe() if self.executor else {"kind": "record"},
                config=cfg.snapshot(),
                scenarios=self.scenario_count,
            )
            self._started_at = trio.current_time()
            failed: BaseException | None = None
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self._pipeline, writer)
                    self._closed = False
                    try:
                        yield
                    except BaseException as exc:
                        failed = exc
                        raise
                    finally:
                        with trio.CancelScope(shield=True):
                            await self._drain(cancelled=failed is not None)
            finally:
                self._finished_at = trio.current_time()
                with trio.move_on_after(10, shield=True):
                    await self._finish_run(store, failed)

    async def _open_store(self, stack: contextlib.AsyncExitStack) -> Store:
        dsn = resolve_dsn(self._db)
        if dsn == EMBEDDED:
            dsn = await start_embedded(self.config.data_dir)
        self._dsn = dsn
        store = Store(dsn, statement_timeout=self.config.statement_timeout)
        stack.push_async_callback(store.aclose)
        try:
            await store.connect()
            await store.migrate()
        except TransientWriteError as exc:
            raise DatabaseUnavailable(
                f"cannot reach the database {self.redacted_dsn}: {redact_text(str(exc), dsn)}"
            ) from None
        self.store = store
        return store

    async def _close_executor(self) -> None:
        assert self.executor is not None
        with trio.move_on_after(10, shield=True):
            await self.executor.aclose()

    # -- the actors -----------------------------------------------------------------------------

    async def _pipeline(self, writer: Writer, *, task_status: trio.TaskStatus[None]) -> None:
        """Open the channels and run every actor in a shielded nursery until all have finished.

        If an actor fails for good (restart intensity exceeded) or the drain
        times out, whatever is still in memory is moved to the journal first.
        """
        cfg = self.config
        work_send, work_recv = trio.open_memory_channel[Scenario](cfg.effective_work_buffer)
        outcome_send, outcome_recv = trio.open_memory_channel[Outcome](cfg.effective_outcome_buffer)
        batch_send, batch_recv = trio.open_memory_channel[Batch](cfg.batch_buffer)
        self._work_send, self._work_recv = work_send, work_recv
        self._outcome_recv, self._batch_recv = outcome_recv, batch_recv
        self._record_send = outcome_send.clone()
        try:
            with trio.CancelScope(shield=True) as scope:
                self._pipeline_scope = scope
                async with trio.open_nursery() as actors:
                    await actors.start(self._supervised_writer, writer, batch_recv)
                    await actors.start(
                        functools.partial(
                            run_batcher,
                            outcome_recv,
                            batch_send,
                            batch_size=self._batch_size_source or cfg.batch_size,
                            flush_interval=cfg.flush_interval,
                            counters=self.counters,
                            pending=self._batcher_pending,
                        )
                    )
                    with work_recv, outcome_send:
                        for i in range(cfg.concurrency if self.executor is not None else 0):
                            await actors.start(
                                self._supervised_producer,
                                f"producer-{i}",
                                work_recv.clone(),
                                outcome_send.clone(),
                            )
                    task_status.started()
        except BaseException:
            self._rescue()
            raise
        finally:
            self._pipeline_done.set()

    async def _supervised_writer(
        self,
        writer: Writer,
        batches: trio.MemoryReceiveChannel[Batch],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        task_status.started()
        await supervise(
            "writer",
            writer.run,
            batches,
            self.writer_state,
            config=self.config.supervisor,
            counters=self.counters,
        )
        # Closed only on a normal return: after a failure the batches still queued
        # here must stay readable for _rescue (closing a receive end drops them).
        batches.close()

    async def _supervised_producer(
        self,
        name: str,
        work: trio.MemoryReceiveChannel[Scenario],
        outcomes: trio.MemorySendChannel[Outcome],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        assert self.executor is not None
        producer = Producer(
            name,
            self.executor,
            run_id=self.run_id,
            config=self.config,
            control=self.control,
            counters=self.counters,
            on_outcome=self._on_outcome,
        )
        state = ProducerState()
        with work, outcomes:
            task_status.started()
            await supervise(
                name,
                producer.run,
                work,
                outcomes,
                state,
                config=self.config.supervisor,
                counters=self.counters,
            )

    # -- feeding ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._work_send is None:
            raise RuntimeClosed("the runtime is not running or is draining; submit() is refused")
        if self.executor is None:
            raise RuntimeClosed("this runtime has no executor: use record() for finished outcomes")

    async def submit(self, scenario: Scenario) -> None:
        """Queue ``scenario`` to run; waits while the pipeline is full (backpressure)."""
        self._check_open()
        assert self._work_send is not None
        try:
            # Fast path: a checkpoint for cancellation, then take a free slot without a
            # trip through the scheduler; wait only when the channel is full.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                self._work_send.send_nowait(scenario)
            except trio.WouldBlock:
                await self._work_send.send(scenario)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RuntimeClosed("the runtime stopped taking scenarios") from None
        self.counters.submitted += 1

    def submit_nowait(self, scenario: Scenario) -> None:
        """Queue ``scenario`` or raise :class:`PipelineFull` (a ``trio.WouldBlock``) if full."""
        self._check_open()
        assert self._work_send is not None
        try:
            self._work_send.send_nowait(scenario)
        except trio.WouldBlock:
            raise PipelineFull(
                "the pipeline is full: await submit() to wait for room, or shed load"
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RuntimeClosed("the runtime stopped taking scenarios") from None
        self.counters.submitted += 1

    async def record(self, outcome: Outcome) -> None:
        """Hand a finished outcome to the batcher (no executor involved); waits under backpressure."""
        if self._closed:
            raise RuntimeClosed("the runtime is not running or is draining; record() is refused")
        assert self._record_send is not None
        try:
            await self._record_send.send(outcome)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RuntimeClosed("the runtime stopped taking outcomes") from None
        self.counters.by_status[outcome.status.value] += 1
        self.counters.completed += 1

    def record_nowait(self, outcome: Outcome) -> None:
        """Hand over ``outcome`` or raise :class:`PipelineFull` (a ``trio.WouldBlock``) if full."""
        if self._closed:
            raise RuntimeClosed("the runtime is not running or is draining; record() is refused")
        assert self._record_send is not None
        try:
            self._record_send.send_nowait(outcome)
        except trio.WouldBlock:
            raise PipelineFull(
                "the pipeline is full: await record() to wait for room, or shed load"
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RuntimeClosed("the runtime stopped taking outcomes") from None
        self.counters.by_status[outcome.status.value] += 1
        self.counters.completed += 1

    async def run_file(
        self, path: Path | str, *, skip: Callable[[Scenario], bool] | None = None
    ) -> None:
        """Feed every scenario of a JSONL file (validate it first with ``validate_file``).

        Returns when the file is exhausted or :meth:`request_stop` was called.
        """
        self._check_open()
        assert self._work_send is not None
        with trio.CancelScope() as scope:
            self._source_scope = scope
            if self.control.stopping:
                scope.cancel()
            await run_file_source(path, self._work_send.clone(), skip=skip, counters=self.counters)

    # -- stopping ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful stop: take no new scenarios; running ones get ``grace`` seconds, then are cancelled."""
        if self.control.stopping:
            return
        log.warning(
            "run %s: stopping: no new scenarios; %d running get %gs to finish",
            self.run_id,
            self.counters.running,
            self.config.grace,
        )
        self.control.stop()
        if self._source_scope is not None:
            self._source_scope.cancel()
        if self._nursery is not None:
            self._nursery.start_soon(self._grace_timer)

    def cancel_running(self) -> None:
        """Hard stop: cancel running scenarios now (recorded ``cancelled``); outcomes still written."""
        log.warning("run %s: cancelling %d running scenarios", self.run_id, self.counters.running)
        self.control.cancel_running()
        if self._source_scope is not None:
            self._source_scope.cancel()

    async def _grace_timer(self) -> None:
        with self._grace_scope:
            await trio.sleep(self.config.grace)
            if self.counters.running:
                log.warning("run %s: grace period over", self.run_id)
            self.control.cancel_running()

    async def _drain(self, *, cancelled: bool) -> None:
        """Close the input and wait for the pipeline to write or spill everything."""
        self._closed = True
        self.writer_state.draining = True
        if cancelled:
            self.control.record_unstarted = True
            self.cancel_running()
        if self._work_send is not None:
            self._work_send.close()
        if self._record_send is not None:
            self._record_send.close()
        cfg = self.config
        graceful = self.control.stopping and not self.control.cancelled
        budget = cfg.shutdown_timeout + (cfg.grace if graceful else 0.0)
        if not cancelled and not self.control.stopping:
            budget = math.inf  # a normal exit waits for every submitted scenario
        if self._nursery is None:
            return
        with trio.move_on_after(budget) as waited:
            await self._pipeline_done.wait()
        self._grace_scope.cancel()  # nothing left to be graceful to
        if waited.cancelled_caught:
            log.error(
                "run %s: pipeline did not drain within %.0fs; spilling what remains",
                self.run_id,
                budget,
            )
            if self._pipeline_scope is not None:
                self._pipeline_scope.cancel()
            # Let the actors unwind first (a journal write or truncation in a worker thread
            # finishes before its task does), so the rescue's append cannot race them.
            with trio.move_on_after(_UNWIND_TIMEOUT):
                await self._pipeline_done.wait()
            self._rescue()

    def _rescue(self) -> None:
        """Last resort after a drain timeout: move every in-memory outcome to the journal."""
        outcomes: list[Outcome] = []
        for batch in self.writer_state.in_flight.values():
            outcomes.extend(batch.outcomes)
        self.writer_state.in_flight.clear()
        outcomes.extend(self._batcher_pending)
        self._batcher_pending.clear()
        for recv in (self._batch_recv, self._outcome_recv):
            if recv is None:
                continue
            while True:
                try:
                    item = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                if isinstance(item, Batch):
                    outcomes.extend(item.outcomes)
                else:
                    outcomes.append(item)
        if outcomes:
            from .batcher import new_batch_id
            from .models import FlushReason

            batch = Batch(new_batch_id(), tuple(outcomes), FlushReason.SHUTDOWN)
            from .journal import encode_entry

            self.journal._append_blocking(encode_entry(batch))
            self.rescued_outcomes += len(outcomes)
            log.error("run %s: rescued %d outcomes into the journal", self.run_id, len(outcomes))

    async def _finish_run(self, store: Store, failed: BaseException | None) -> None:
        if self.journal.pending_batches or self.rescued_outcomes:
            status = "incomplete"
        elif failed is not None:
            status = "failed"
        elif self.control.stopping:
            status = "stopped"
        else:
            status = "finished"
        try:
            await store.finish_run(self.run_id, status=status, summary=self.summary())
        except ArcflowError as exc:
            log.warning("run %s: could not record the run's end: %s", self.run_id, exc)

    # -- observing ----------------------------------------------------------------------------------

    def statistics(self) -> RuntimeStatistics:
        """A frozen snapshot of every counter and gauge."""
        c = self.counters

        def depth(chan: Any) -> int:
            return chan.statistics().current_buffer_used if chan is not None else 0

        end = self._finished_at if self._finished_at is not None else trio.current_time()
        return RuntimeStatistics(
            run_id=self.run_id,
            submitted=c.submitted,
            completed=c.completed,
            running=c.running,
            by_status=dict(c.by_status),
            written=c.written,
            already_written=c.already_written,
            dead_lettered=c.dead_lettered,
            pending_in_batcher=c.pending_in_batcher,
            outcome_queue=depth(self._outcome_recv),
            work_queue=depth(self._work_recv),
            batch_queue=depth(self._batch_recv),
            by_flush_reason=dict(c.by_flush_reason),
            batches_written=c.batches_written,
            write_transactions=c.write_transactions,
            retries=c.retries,
            breaker_state=self.breaker.state.value,
            breaker_transitions=dict(self.breaker.transitions),
            spilled_batches=c.spilled_batches,
            spilled_outcomes=c.spilled_outcomes,
            replayed_outcomes=c.replayed_outcomes,
            journal_bytes=self.journal.size,
            restarts=dict(c.restarts),
            elapsed=max(0.0, end - self._started_at) if self._started_at else 0.0,
            last_write_latency=c.last_write_latency,
            batch_size=c.batch_size or self.config.batch_size,
        )

    def summary(self) -> dict[str, Any]:
        """The end-of-run summary (what ``--json`` prints)."""
        s = self.statistics()
        produced = sum(s.by_status.values())
        return {
            "run_id": self.run_id,
            "scenarios": s.submitted,
            "completed": s.completed,
            "outcomes": produced,
            "written": s.written,
            "already_written": s.already_written,
            "dead_lettered": s.dead_lettered,
            "in_journal_batches": self.journal.pending_batches,
            "spilled_outcomes": s.spilled_outcomes,
            "replayed_outcomes": s.replayed_outcomes,
            "rescued_outcomes": self.rescued_outcomes,
            "batches": sum(s.by_flush_reason.values()),
            "by_status": s.by_status,
            "by_flush_reason": s.by_flush_reason,
            "write_transactions": s.write_transactions,
            "retries": s.retries,
            "breaker_transitions": s.breaker_transitions,
            "restarts": s.restarts,
            "elapsed_s": round(s.elapsed, 3),
            "throughput_per_s": round(s.written / s.elapsed, 1) if s.elapsed > 0 else 0.0,
        }


def _log_asyncio_error(loop: Any, context: dict[str, Any]) -> None:
    """Log an error asyncio could not hand to anyone (the writer has already classified it)."""
    exc = context.get("exception")
    log.warning(
        "asyncio: %s%s",
        context.get("message", "unhandled error"),
        f" ({type(exc).__name__}: {exc})" if exc is not None else "",
    )
