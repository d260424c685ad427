"""``arcflow.Runtime``: run scenarios and record every outcome, as an async context manager.

::

    async with arcflow.open_runtime(executor="python:mymod:score", db=DSN, batch_size=500) as rt:
        for scenario in scenarios:
            await rt.submit(scenario)           # waits while the pipeline is full
        print(rt.statistics())
    # leaving the block drains: every outcome is written (or spilled to the journal)

The runtime is a small façade: its lifecycle (the database and the run's
row, from :mod:`arcflow.runs`; the executor; the spill journal; the actors,
from :mod:`arcflow.pipeline`), its intake (``submit``, ``record`` and their
``_nowait`` twins, ``run_file``), stopping, and ``statistics()``.  Leaving
the block (normally, by an exception or by cancellation) closes the input,
lets the pipeline drain within bounded time, and writes or spills every
outcome.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, Unpack, cast

import attrs
import trio
import trio.lowlevel

from ._trio_asyncio import import_trio_asyncio
from .breaker import CircuitBreaker
from .config import RuntimeConfig, RuntimeOptions
from .errors import (
    ArcflowError,
    ConfigError,
    DatabaseUnavailable,
    PipelineFull,
    ResumeError,
    RuntimeClosed,
    arcflow_errors_unwrapped,
    primary_error,
)
from .executors import Executor, parse_executor
from .fleet import (
    FleetStats,
    adopt_orphan_journals,
    load_claims,
    new_worker_id,
    release_claims,
    run_claim_source,
    run_heartbeat,
    shared_run_status,
)
from .journal import SpillJournal
from .models import Batch, BatchHook, FlushReason, Outcome, OutcomeHook, Scenario, new_batch_id
from .pipeline import Pipeline
from .runs import ResumePlan, RunLock, RunRecord, plan_resume, run_status
from .scenarios import SuiteInfo, validate_file
from .selection import Selection
from .source import run_file_source
from .stats import IntakeStats, RuntimeStatistics
from .store import Store, open_store
from .store.dsn import redact_dsn

__all__ = ["Runtime", "journal_path", "new_run_id", "open_runtime"]

log = logging.getLogger("arcflow.runtime")

H = TypeVar("H")
P = ParamSpec("P")


def new_run_id() -> str:
    """A fresh run id: sortable by time, unique."""
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]


#: What a run id may be: it names files (the journal), so no path separators or dot-dot.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a safe name; :class:`ConfigError` saying what is allowed if not."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        shown = run_id[:60] + "..." if isinstance(run_id, str) and len(run_id) > 60 else run_id
        raise ConfigError(
            f"invalid run id {shown!r}: use 1 to 200 letters, digits, '.', '_' or '-', "
            "starting with a letter or a digit"
        )
    return run_id


def journal_path(data_dir: Path | str, run_id: str, worker_id: str | None = None) -> Path:
    """Where the spill journal of ``run_id`` (of one of its workers, for a shared run) lives."""
    name = f"{run_id}.journal" if worker_id is None else f"{run_id}.{worker_id}.journal"
    return Path(data_dir) / "journal" / name


def _hooks(value: H | Iterable[H] | None) -> tuple[H, ...]:
    """Hooks given as one callable, a sequence of them, or None."""
    if value is None:
        return ()
    if callable(value):
        return (cast(H, value),)
    return tuple(cast(Iterable[H], value))


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

    ``executor`` is an :class:`~arcflow.Executor`, a spec
    (``python:MOD:FN``, ``process:CMD``, ``modal:CMD``), or a plain callable
    taking a :class:`~arcflow.Scenario`; omit it to only :meth:`record`
    finished outcomes.  ``db`` is a PostgreSQL DSN; None means ``ARCFLOW_DB``,
    then the ``PG*`` variables, then the embedded server under ``data_dir``.
    Options are the fields of :class:`RuntimeConfig` as keywords
    (``batch_size=500``), typed, or a whole ``config=``.

    Hooks (one callable or a list, called in the runtime's trio thread; keep
    them quick): ``on_outcome(outcome)`` after each attempt's outcome is
    handed to the batcher, ``on_batch_written(batch, rows_inserted,
    latency_s)`` after each committed write.  ``batch_size_source()``
    (optional) is read at the start of each batch to size it, for adaptive
    batching (see :mod:`arcflow.adaptive`).

    A runtime is entered once.
    """

    def __init__(
        self,
        executor: str | Executor | Callable[[Scenario], Any] | None = None,
        db: str | None = None,
        *,
        run_id: str | None = None,
        suite: str | None = None,
        suite_hash: str | None = None,
        scenario_count: int | None = None,
        config: RuntimeConfig | None = None,
        on_outcome: OutcomeHook | Sequence[OutcomeHook] | None = None,
        on_batch_written: BatchHook | Sequence[BatchHook] | None = None,
        batch_size_source: Callable[[], int] | None = None,
        resume: bool = False,
        selection: Selection | None = None,
        shared: bool = False,
        worker_id: str | None = None,
        worker_settings: Mapping[str, Any] | None = None,
        **options: Unpack[RuntimeOptions],
    ) -> None:
        self.config = _build_config(config, options)
        self.executor: Executor | None = parse_executor(executor) if executor is not None else None
        self.run_id = check_run_id(run_id) if run_id is not None else new_run_id()
        self.resume = resume
        #: The scenarios this run takes (recorded with the run; ``--resume`` keeps it).
        self.selection = selection
        self._db = db
        self._suite = (suite, suite_hash, scenario_count)
        self._on_outcome = _hooks(on_outcome)
        self._on_batch_written = _hooks(on_batch_written)
        self._batch_size_source = batch_size_source
        self._intake = IntakeStats()
        #: A shared run: scenarios come from arcflow.claims (see arcflow.fleet), and this
        #: runtime is one of its workers, with a journal of its own.
        self.shared = shared
        self.worker_id = (worker_id or new_worker_id()) if shared else None
        self.fleet = FleetStats()
        #: What workers joining this shared run use by default (its executor options).
        self._worker_settings = dict(worker_settings) if worker_settings else None
        self._claims: Store | None = None
        self._journal = SpillJournal(
            journal_path(self.config.data_dir, self.run_id, self.worker_id),
            max_bytes=self.config.journal_max_bytes,
        )
        self._breaker = CircuitBreaker(self.config.breaker, name=f"run {self.run_id}")
        self._store: Store | None = None
        self._pipeline: Pipeline | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._entered = False
        self._open = False
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._source_scope: trio.CancelScope | None = None

    # -- what callers may read ------------------------------------------------------------------

    @property
    def dsn(self) -> str | None:
        """The DSN in use (after start), password included; never log it, use ``redacted_dsn``."""
        return self._store.dsn if self._store is not None else None

    @property
    def redacted_dsn(self) -> str:
        """The DSN in use with its password replaced by ``***``."""
        return redact_dsn(self.dsn)

    @property
    def journal_path(self) -> Path:
        """The run's spill journal file."""
        return self._journal.path

    @property
    def started(self) -> bool:
        """True once the runtime has started its actors (its statistics exist from then on)."""
        return self._pipeline is not None

    @property
    def stopping(self) -> bool:
        """True once a stop was requested (``request_stop``, ``cancel_running``, the drain)."""
        return self._pipeline is not None and self._pipeline.control.stopping

    # -- async context manager ------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        if self._entered:
            raise RuntimeError("a Runtime can be entered only once; make a new one for a new block")
        self._entered = True
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
            store = await open_store(
                self._db,
                cfg.data_dir,
                statement_timeout=cfg.statement_timeout,
                tcp_keepalive=cfg.tcp_keepalive,
            )
            stack.push_async_callback(store.aclose)
            self._store = store
            lock = RunLock(store.dsn, self.run_id, self._journal.path, shared=self.shared)
            await lock.acquire()
            stack.push_async_callback(lock.release)
            await lock.mark_interrupted()
            if self.executor is not None:
                self.executor.use_database(store.dsn)
                await self.executor.start()
                stack.push_async_callback(self._close_executor)
                await self.executor.begin_run(self.run_id, resume=self.resume)
            await self._journal.open()
            writer_stores = [
                Store(
                    store.dsn,
                    statement_timeout=cfg.statement_timeout,
                    tcp_keepalive=cfg.tcp_keepalive,
                )
                for _ in range(cfg.writer_connections)
            ]
            for writer_store in writer_stores:
                stack.push_async_callback(writer_store.aclose)
            pipeline = Pipeline(
                run_id=self.run_id,
                config=cfg,
                executor=self.executor,
                journal=self._journal,
                breaker=self._breaker,
                stores=writer_stores,
                batch_size=self._batch_size_source or cfg.batch_size,
                on_outcome=self._on_outcome,
                on_batch_written=self._on_batch_written,
                worker_id=self.worker_id,
            )
            heartbeat_scope = trio.CancelScope()
            if self.shared:
                assert self.worker_id is not None
                await adopt_orphan_journals(
                    store, self.run_id, self._journal.path, cfg, own=self.worker_id
                )
                self._claims = Store(store.dsn, statement_timeout=cfg.statement_timeout)
                beats = Store(store.dsn, statement_timeout=cfg.statement_timeout)
                stack.push_async_callback(self._claims.aclose)
                stack.push_async_callback(beats.aclose)
            if self._journal.pending_batches:
                log.info(
                    "run %s: replaying %d spilled batches from %s before starting",
                    self.run_id,
                    self._journal.pending_batches,
                    self._journal.path,
                )
                if not await pipeline.writer.replay():
                    raise DatabaseUnavailable(
                        f"could not replay the spill journal {self._journal.path} into "
                        f"{self.redacted_dsn}; the database is not taking writes"
                    )
            suite, suite_hash, count = self._suite
            record = RunRecord(
                store, self.run_id, suite=suite, suite_hash=suite_hash, scenario_count=count
            )
            snapshot = cfg.snapshot()
            if self.selection is not None and not self.selection.everything:
                snapshot["selection"] = self.selection.describe()
            if self.shared:
                snapshot["shared"] = True
                if self._worker_settings is not None:
                    snapshot["worker"] = self._worker_settings
            await record.start(
                executor=self.executor.describe() if self.executor else {"kind": "record"},
                config=snapshot,
                resume=self.resume,
                join=self.shared,
            )
            self._started_at = trio.current_time()
            failed: BaseException | None = None
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(pipeline.run)
                    self._pipeline = pipeline
                    if self.shared:
                        assert self.worker_id is not None
                        await nursery.start(self._heartbeat, beats, pipeline, heartbeat_scope)
                    self._open = True
                    try:
                        yield
                    except BaseException as exc:
                        failed = exc
                        raise
                    finally:
                        with trio.CancelScope(shield=True):
                            await self._drain(pipeline, cancelled=failed is not None)
                            heartbeat_scope.cancel()
                            if self.shared:
                                await self._release_claims()
            except BaseException as exc:
                failed = failed or exc
                raise
            finally:
                self._finished_at = trio.current_time()
                with trio.move_on_after(10, shield=True):
                    if self._refused_before_running(failed):
                        await record.restore()  # a refused resume leaves the old row as it was
                    else:
                        status = run_status(
                            in_journal=self._journal.pending_batches,
                            failed=failed is not None,
                            stopped=pipeline.control.stopping,
                            lost=self._journal.lost_outcomes,
                        )
                        if self.shared and status == "finished":
                            status = await shared_run_status(store, self.run_id)
                        await record.finish(status=status, summary=self.summary())

    def _refused_before_running(self, failed: BaseException | None) -> bool:
        """A resume refused (changed scenarios) before anything was handed in."""
        intake = self._intake
        return (
            self.resume
            and failed is not None
            and isinstance(primary_error(failed), ResumeError)
            and intake.submitted == 0
            and not intake.recorded
        )

    async def _close_executor(self) -> None:
        assert self.executor is not None
        with trio.move_on_after(10, shield=True):
            await self.executor.aclose()

    async def _drain(self, pipeline: Pipeline, *, cancelled: bool) -> None:
        self._open = False
        if self._source_scope is not None:
            self._source_scope.cancel()
        await pipeline.drain(cancelled=cancelled)

    # -- intake -----------------------------------------------------------------------------------

    def _running_pipeline(self, what: str) -> Pipeline:
        if not self._open or self._pipeline is None:
            raise RuntimeClosed(f"the runtime is not running or is draining; {what} is refused")
        return self._pipeline

    def _work(self) -> trio.MemorySendChannel[Scenario]:
        pipeline = self._running_pipeline("submit()")
        if self.executor is None:
            raise RuntimeClosed("this runtime has no executor: use record() for finished outcomes")
        return pipeline.work

    async def submit(self, scenario: Scenario) -> None:
        """Queue ``scenario`` to run; waits while the pipeline is full (backpressure)."""
        work = self._work()
        try:
            # Fast path: a checkpoint for cancellation, then take a free slot without a
            # trip through the scheduler; wait only when the channel is full.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                work.send_nowait(scenario)
            except trio.WouldBlock:
                await work.send(scenario)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RuntimeClosed("the runtime stopped taking scenarios") from None
        self._intake.submitted += 1

    def submit_nowait(self, scenario: Scenario) -> None:
        """Queue ``scenario`` or raise :class:`PipelineFull` (a ``trio.WouldBlock``) if full."""
        work = self._work()
        try:
            work.send_nowait(scenario)
        except trio.WouldBlock:
            raise PipelineFull(
                "the pipeline is full: await submit() to wait for room, or shed load"
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RuntimeClosed("the runtime stopped taking scenarios") from None
        self._intake.submitted += 1

    async def record(self, outcome: Outcome) -> None:
        """Hand a finished outcome to the batcher (no executor involved); waits under backpressure."""
        records = self._running_pipeline("record()").records
        try:
            await records.send(outcome)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RuntimeClosed("the runtime stopped taking outcomes") from None
        self._intake.recorded[outcome.status.value] += 1
        self._intake.usage.add(outcome.usage)

    def record_nowait(self, outcome: Outcome) -> None:
        """Hand over ``outcome`` or raise :class:`PipelineFull` (a ``trio.WouldBlock``) if full."""
        records = self._running_pipeline("record()").records
        try:
            records.send_nowait(outcome)
        except trio.WouldBlock:
            raise PipelineFull(
                "the pipeline is full: await record() to wait for room, or shed load"
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RuntimeClosed("the runtime stopped taking outcomes") from None
        self._intake.recorded[outcome.status.value] += 1
        self._intake.usage.add(outcome.usage)

    async def spill(self, outcomes: Sequence[Outcome]) -> None:
        """Put outcomes straight into the run's spill journal (durable when this returns).

        For a hand-over layer holding outcomes the pipeline can no longer take
        (the asyncio bridge after a drain timeout); the next runtime with this
        run id replays them.  Valid once the runtime has started, also after
        it ended.
        """
        if not outcomes:
            return
        if not self._entered:
            raise RuntimeClosed("the runtime has not started: it has no journal yet")
        await self._journal.append(Batch(new_batch_id(), tuple(outcomes), FlushReason.SHUTDOWN))

    async def plan_resume(
        self, path: Path | str, *, force: bool = False, retry_errors: bool = False
    ) -> ResumePlan:
        """Plan a resumed run over ``path``: what to skip, where attempts continue.

        Pass the plan as ``run_file(path, skip=plan)``.  Raises
        :class:`ResumeError` for changed scenarios unless ``force``.
        """
        pipeline = self._running_pipeline("plan_resume()")
        assert self._store is not None
        plan = await plan_resume(
            self._store, self.run_id, path, force=force, retry_errors=retry_errors
        )
        pipeline.first_attempts.update(plan.first_attempts)
        return plan

    async def run_file(
        self,
        path: Path | str,
        *,
        skip: Callable[[Scenario], bool] | None = None,
        expect: SuiteInfo | None = None,
    ) -> None:
        """Feed every scenario of a JSONL file (validate it first with ``validate_file``).

        Returns when the file is exhausted or :meth:`request_stop` was called.
        With ``expect`` (what ``validate_file`` returned), lines added or bytes
        changed since the check raise :class:`ScenarioFileError`; what was read
        before stays accepted.
        """
        work = self._work()
        with trio.CancelScope() as scope:
            self._source_scope = scope
            if self.stopping:
                scope.cancel()
            await run_file_source(
                path,
                work.clone(),
                skip=skip,
                stats=self._intake,
                expect=expect,
                epochs=self.config.epochs,
            )

    async def load_claims(self, path: Path | str, suite: SuiteInfo | None = None) -> int:
        """(shared run) Put the scenarios of ``path`` that ``suite`` selects into ``arcflow.claims``.

        ``suite`` is what ``validate_file`` found; without it the file is
        validated here first (with the runtime's selection), so a bad line is a
        :class:`ScenarioFileError` naming it before anything is loaded.
        Streamed, so memory stays flat; a scenario already there is kept.  Every
        epoch is a claim of its own.  Returns the claims added.
        """
        self._running_pipeline("load_claims()")
        if self._claims is None:
            raise RuntimeClosed("load_claims() is for a shared run: Runtime(shared=True)")
        if suite is None:
            suite = await trio.to_thread.run_sync(validate_file, Path(path), self.selection)
        return await load_claims(self._claims, self.run_id, Path(path), suite, self.config.epochs)

    async def run_claims(self, *, chunk: int = 64) -> None:
        """A shared run's source: claim scenarios from ``arcflow.claims`` until the run is done.

        Returns when no scenario is left to claim, or when :meth:`request_stop`
        was called.  The heartbeat that keeps this worker's leases runs for as
        long as the runtime does; leaving the block releases what this worker
        has not finished.  See :mod:`arcflow.fleet`.
        """
        pipeline = self._running_pipeline("run_claims()")
        if self._claims is None or self.worker_id is None:
            raise RuntimeClosed("run_claims() is for a shared run: Runtime(shared=True)")
        work = self._work()

        def counted(n: int) -> None:
            self._intake.submitted += n

        with trio.CancelScope() as scope:
            self._source_scope = scope
            if self.stopping:
                scope.cancel()
            await run_claim_source(
                self._claims,
                self.run_id,
                self.worker_id,
                work.clone(),
                lease=self.config.lease,
                first_attempts=pipeline.first_attempts,
                stats=self.fleet,
                chunk=chunk,
                on_submitted=counted,
                on_idle=pipeline.flush_now.request,
            )

    async def _heartbeat(  # noqa: ASYNC128 - run_heartbeat calls task_status.started()
        self,
        beats: Store,
        pipeline: Pipeline,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """(shared run) The heartbeat actor, until ``scope`` is cancelled after the drain."""
        assert self.worker_id is not None
        control = pipeline.control
        with scope:
            await run_heartbeat(
                beats,
                self.run_id,
                self.worker_id,
                lease=self.config.lease,
                running=lambda: control.active,
                cancel=control.cancel_scenario,
                stats=self.fleet,
                on_workers=self.executor.share_limits if self.executor is not None else None,
                task_status=task_status,
            )

    async def _release_claims(self) -> None:
        """(shared run) Give back the claims this worker has not finished.  Shielded, bounded."""
        assert self._claims is not None and self.worker_id is not None
        with trio.move_on_after(10, shield=True):
            try:
                released = await release_claims(self._claims, self.run_id, self.worker_id)
            except ArcflowError as exc:
                log.warning(
                    "run %s worker %s: could not release its claims (%s); they come back when "
                    "their lease runs out",
                    self.run_id,
                    self.worker_id,
                    exc,
                )
                return
            if released:
                log.info(
                    "run %s worker %s: released %d claims it had not finished",
                    self.run_id,
                    self.worker_id,
                    released,
                )

    # -- stopping ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful stop: take no new scenarios; running ones get ``grace`` seconds, then are cancelled."""
        pipeline = self._pipeline
        if pipeline is None or pipeline.control.stopping:
            return
        log.warning(
            "run %s: stopping: no new scenarios; %d running get %gs to finish",
            self.run_id,
            pipeline.producer_stats.running,
            self.config.grace,
        )
        if self._source_scope is not None:
            self._source_scope.cancel()
        pipeline.request_stop()

    def cancel_running(self) -> None:
        """Hard stop: cancel running scenarios now (recorded ``cancelled``); outcomes still written."""
        pipeline = self._pipeline
        if pipeline is None:
            return
        log.warning(
            "run %s: cancelling %d running scenarios",
            self.run_id,
            pipeline.producer_stats.running,
        )
        if self._source_scope is not None:
            self._source_scope.cancel()
        pipeline.cancel_running()

    # -- observing --------------------------------------------------------------------------------

    def statistics(self) -> RuntimeStatistics:
        """A frozen snapshot of every counter and gauge."""
        if self._pipeline is None:
            raise RuntimeClosed("the runtime has not started: no statistics yet")
        start = self._started_at
        end = self._finished_at if self._finished_at is not None else trio.current_time()
        fleet = {"worker_id": self.worker_id, **attrs.asdict(self.fleet)} if self.shared else {}
        return self._pipeline.statistics(
            intake=self._intake,
            elapsed=max(0.0, end - start) if start is not None else 0.0,
            fleet=fleet,
        )

    def summary(self) -> dict[str, Any]:
        """The end-of-run summary (what ``--json`` prints)."""
        s = self.statistics()
        return {
            "run_id": self.run_id,
            "scenarios": s.submitted,
            "completed": s.completed,
            "outcomes": sum(s.by_status.values()),
            "written": s.written,
            "already_written": s.already_written,
            "dead_lettered": s.dead_lettered,
            "in_journal_batches": s.journal_batches,
            "lost_outcomes": self._journal.lost_outcomes,
            "spilled_outcomes": s.spilled_outcomes,
            "replayed_outcomes": s.replayed_outcomes,
            "batches": sum(s.by_flush_reason.values()),
            "by_status": s.by_status,
            "by_flush_reason": s.by_flush_reason,
            "write_transactions": s.write_transactions,
            "retries": s.retries,
            "breaker_transitions": s.breaker_transitions,
            "restarts": s.restarts,
            "input_tokens": s.input_tokens,
            "output_tokens": s.output_tokens,
            "cost_usd": round(s.cost_usd, 6),
            "budget_spent": self._pipeline.control.budget_spent if self._pipeline else False,
            **({"fleet": s.fleet} if s.fleet else {}),
            "elapsed_s": round(s.elapsed, 3),
            "throughput_per_s": round(s.written / s.elapsed, 1) if s.elapsed > 0 else 0.0,
        }


def _opener(cls: Callable[P, Runtime]) -> Callable[P, Runtime]:
    def open_runtime(*args: P.args, **kwargs: P.kwargs) -> Runtime:
        """A new :class:`Runtime`, to use as ``async with arcflow.open_runtime(...) as rt`` (trio hosts).

        The arguments are exactly :class:`Runtime`'s, typed.  Inside the block:
        ``await rt.submit(scenario)`` / ``await rt.record(outcome)`` wait while
        the pipeline is full; their ``_nowait`` twins raise instead.  Leaving
        the block (normally, by an exception, or because the host's scope was
        cancelled) drains the pipeline under a shield, within
        ``shutdown_timeout`` when cancelled: every accepted outcome ends up in
        PostgreSQL or in the run's spill journal.  asyncio hosts use
        :func:`arcflow.aio.open_runtime`.
        """
        import_trio_asyncio()  # now, keeping the program's asyncio.new_event_loop as it is
        return cls(*args, **kwargs)

    open_runtime.__qualname__ = "open_runtime"
    open_runtime.__module__ = __name__
    return open_runtime


open_runtime = _opener(Runtime)


def _log_asyncio_error(loop: Any, context: dict[str, Any]) -> None:
    """Log an error asyncio could not hand to anyone (the writer has already classified it)."""
    exc = context.get("exception")
    log.warning(
        "asyncio: %s%s",
        context.get("message", "unhandled error"),
        f" ({type(exc).__name__}: {exc})" if exc is not None else "",
    )
