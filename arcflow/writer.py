"""The writer actor: batches in, rows in PostgreSQL out, whatever the database does.

The failure ladder, per batch:

1. The breaker is open: the batch goes to the spill journal (fsync'd).
2. Otherwise, one transaction: COPY into a staging table, one
   ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``.  Keys already stored are
   skipped, so a retry after an ambiguous failure never duplicates a row.
   A live batch's first try COPYs straight into ``arcflow.outcomes`` instead
   (cheaper for PostgreSQL) and falls back to the staging merge if the
   primary key says a row is already there; see ``Store.write_outcomes``.
3. A transient failure (see :mod:`arcflow.store.classify`) is retried with
   exponential backoff and full jitter, bounded by attempts and elapsed time;
   each one counts toward the breaker.  Exhausted, or breaker open: spill.
4. A data error bisects the batch until each poison record stands alone; the
   good halves are written, each poison record goes to ``arcflow.dead_letters``
   with its SQLSTATE and message.  A data error proves the database is
   reachable, so it counts as a success for the breaker, never a failure.
5. After a successful write, and on a timer while the journal holds batches,
   the journal is replayed through the same path and then cleared.  While the
   journal is at its size cap the writer does not pull new batches, so
   backpressure reaches the producers and nothing is dropped.

The writer runs one lane per database connection (``writer_connections``,
default 2), each pulling the next batch from the same channel and taking it
down the ladder above.  While one connection waits for its commit to reach
the disk, the other copies the next batch, so a batch's round trips and fsync
no longer bound the throughput.  The lanes share the breaker and the journal;
one lane replays at a time, and a replay clears only the entries it wrote, so
a batch another lane spilled meanwhile stays.  Batches may therefore commit
out of order; each is still one transaction.

:meth:`Writer.serve` is the actor: it supervises the lanes (a crash restarts
them, and each lane first takes the batch it held again), and on its way out,
by failure or cancellation, it salvages what it holds, the batches in flight
and those queued in its channel, into the journal before it closes the channel.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from .breaker import BreakerState, CircuitBreaker
from .config import RetryPolicy, SupervisorConfig
from .errors import DataWriteError, TransientWriteError, leaf_exceptions
from .journal import SpillJournal, salvage
from .models import Batch, BatchHook, Outcome
from .poison import dead_letter_payload, storable_text
from .retry import Backoff
from .store import Store
from .supervisor import supervise

log = logging.getLogger("arcflow.writer")

#: How a lane waits for a journal that refuses writes: no limit on tries, 30 s at most between.
_JOURNAL_RETRY = Backoff(base=0.5, cap=30.0)


@attrs.define
class WriterStats:
    """What the writer has done; written by the writer alone."""

    #: Outcomes whose row is in ``arcflow.outcomes`` (inserted by this writer).
    written: int = 0
    #: Outcomes whose key was already stored (a retried or replayed write).
    already_written: int = 0
    #: Outcomes stored in ``arcflow.dead_letters`` instead.
    dead_lettered: int = 0
    #: Batches written to PostgreSQL.
    batches_written: int = 0
    #: Write transactions committed (batches, bisected parts and journal replays).
    write_transactions: int = 0
    #: Whole-batch retries after transient failures.
    retries: int = 0
    #: Batches appended to the spill journal.
    spilled_batches: int = 0
    #: Outcomes appended to the spill journal.
    spilled_outcomes: int = 0
    #: Outcomes replayed from the journal into PostgreSQL.
    replayed_outcomes: int = 0
    #: Journal appends that failed (disk full, read-only, I/O error) and were retried.
    journal_write_errors: int = 0
    #: Last write latency in seconds (0 before the first).
    last_write_latency: float = 0.0


class Writer:
    """Writes batches with retries, bisection, dead letters, a breaker and a spill journal.

    Retries: transient failures of a whole batch (backoff and jitter).
    Escalates: bugs (anything not classified transient or data) and journal
    I/O errors, by raising out of :meth:`run`; :meth:`serve` restarts it,
    within the restart intensity, and each lane first takes its batch again.
    Closes: the batch channel's receive end, when :meth:`serve` returns
    (after salvaging what is queued in it, if it ends by failure or cancellation).

    ``stores`` holds one :class:`Store` per lane.  With ``worker_id`` (a
    shared run) every write is fenced by that worker's claims.
    """

    def __init__(
        self,
        stores: Store | Sequence[Store],
        journal: SpillJournal,
        breaker: CircuitBreaker,
        *,
        run_id: str,
        retry: RetryPolicy | None = None,
        stats: WriterStats | None = None,
        rng: random.Random | None = None,
        on_batch_written: Sequence[BatchHook] = (),
        final_replay_timeout: float = 30.0,
        salvage_timeout: float = 30.0,
        worker_id: str | None = None,
    ) -> None:
        self.stores: tuple[Store, ...] = (stores,) if isinstance(stores, Store) else tuple(stores)
        if not self.stores:
            raise ValueError("a writer needs at least one store")
        self.journal = journal
        self.breaker = breaker
        self.run_id = run_id
        self.retry = retry or RetryPolicy()
        self._backoff = self.retry.backoff()
        self.stats = stats if stats is not None else WriterStats()
        self.rng = rng or random.Random()
        self.on_batch_written = tuple(on_batch_written)
        self.final_replay_timeout = final_replay_timeout
        self.salvage_timeout = salvage_timeout
        #: In a shared run, the worker whose claims fence its final outcomes (see fleet).
        self.worker_id = worker_id
        #: The batch each lane is handling; outlives a crash, so a restarted lane takes it first.
        self._in_flight: dict[int, Batch] = {}
        #: Set by drain(): the journal's size cap no longer stops the lanes from pulling.
        self._draining = False
        #: One replay at a time (a replay clears only what it wrote, so appends need no lock).
        self._replay_lock = trio.Lock()
        #: What is wrong with the journal while it refuses writes (None when it takes them).
        self.journal_error: str | None = None

    @property
    def in_flight(self) -> int:
        """Outcomes in the batches the lanes are writing right now."""
        return sum(len(batch) for batch in self._in_flight.values())

    def drain(self) -> None:
        """Shutdown: keep pulling batches even with the journal at its cap (spill them all)."""
        self._draining = True

    # -- the actor ------------------------------------------------------------------------------

    async def serve(
        self,
        batches: trio.MemoryReceiveChannel[Batch],
        *,
        supervisor: SupervisorConfig | None = None,
        restarts: Counter[str] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write batches until ``batches`` ends, restarting crashed lanes; salvage on the way out."""
        with batches:
            task_status.started()
            try:
                await supervise("writer", self.run, batches, config=supervisor, restarts=restarts)
            except BaseException:
                await self._salvage(batches)  # noqa: ASYNC102 - shielded and bounded in salvage()
                raise

    async def _salvage(self, batches: trio.MemoryReceiveChannel[Batch]) -> None:
        """Move the batches in flight and those queued for the writer into the journal."""
        held = list(self._in_flight.values())
        self._in_flight.clear()
        while True:
            try:
                held.append(batches.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        outcomes = [o for batch in held for o in batch.outcomes]
        await salvage(self.journal, outcomes, who="writer", limit_s=self.salvage_timeout)

    async def run(self, batches: trio.MemoryReceiveChannel[Batch]) -> None:
        """One incarnation: the lanes, until ``batches`` is drained; then empty the journal if it can."""
        try:
            async with trio.open_nursery() as lanes:
                for lane, store in enumerate(self.stores):
                    lanes.start_soon(self._lane, lane, store, batches)
        except BaseExceptionGroup as group:
            # A lane crashed: the supervisor restarts the writer on its first error
            # (a cancellation among the leaves must keep propagating as it is).
            leaves = leaf_exceptions(group)
            if not all(isinstance(leaf, Exception) for leaf in leaves):
                raise
            for other in leaves[1:]:
                log.error("run %s: another writer lane failed too: %r", self.run_id, other)
            raise leaves[0] from None
        await self._final_replay()

    async def _lane(
        self, lane: int, store: Store, batches: trio.MemoryReceiveChannel[Batch]
    ) -> None:
        """One connection's loop: pull a batch, take it down the ladder, until the input ends."""
        restarted = self._in_flight.get(lane)
        if restarted is not None:
            log.warning(
                "run %s batch %s: writer restarted; handling the in-flight batch first",
                self.run_id,
                restarted.id,
            )
            await self._take(lane, restarted, store)
        while True:
            if self.journal.pending_batches and self.journal.full and not self._draining:
                # At the cap: stop pulling; probe until the journal drains.
                if not await self.replay(store):
                    await trio.sleep_until(self._next_probe_time())
                continue
            if self.journal.pending_batches:
                batch = None
                with trio.move_on_at(self._next_probe_time()):
                    try:
                        batch = await batches.receive()
                    except trio.EndOfChannel:
                        break
                if batch is None:
                    await self.replay(store)
                    continue
            else:
                try:
                    batch = await batches.receive()
                except trio.EndOfChannel:
                    break
            self._in_flight[lane] = batch
            await self._take(lane, batch, store)

    async def _take(self, lane: int, batch: Batch, store: Store) -> None:
        """Write or spill ``batch``; then it is no longer in flight; then catch up on the journal."""
        written = await self.handle(batch, store)
        del self._in_flight[lane]
        if written and self.journal.pending_batches and not self._replay_lock.locked():
            await self.replay(store)

    async def _final_replay(self) -> None:
        """Input is closed: keep probing until the journal is empty or the time is up.

        What is still in the journal afterwards stays there (durable) for ``--resume``.
        """
        if not self.journal.pending_batches:
            return
        log.warning(
            "run %s: input closed with %d batches in the journal; replaying for up to %gs",
            self.run_id,
            self.journal.pending_batches,
            self.final_replay_timeout,
        )
        with trio.move_on_after(self.final_replay_timeout):
            while not await self.replay():  # noqa: ASYNC110 - retry with backoff, not a wait
                await trio.sleep_until(self._next_probe_time())
        if self.journal.pending_batches:
            log.error(
                "run %s: database still unavailable; %d batches kept in %s for --resume",
                self.run_id,
                self.journal.pending_batches,
                self.journal.path,
            )

    def _next_probe_time(self) -> float:
        if self.breaker.state is BreakerState.OPEN:
            return self.breaker.reopen_at
        return trio.current_time() + self.breaker.config.cooldown

    async def handle(self, batch: Batch, store: Store | None = None) -> bool:
        """Write ``batch`` (through ``store``, default the first lane's) or, if the database cannot take it now, spill it.

        Returns True if it was written, False if it was spilled.  If the journal
        cannot take it either (disk full, read-only, I/O error), the batch is
        held: the lane pulls nothing more, so backpressure takes over, and it
        tries the database and the journal again with backoff until one of
        them takes the batch, saying loudly what is wrong.
        """
        store = store or self.stores[0]
        tries = None
        while True:
            if self.breaker.allow():
                try:
                    await self._write_isolating(store, batch, "live", 1)
                except TransientWriteError as exc:
                    log.warning(
                        "run %s batch %s: giving up writing for now (%s); spilling %d outcomes",
                        self.run_id,
                        batch.id,
                        exc,
                        len(batch),
                    )
                else:
                    self.stats.batches_written += 1
                    self.journal_error = None
                    return True
            try:
                await self.spill(batch)
            except OSError as exc:
                self.stats.journal_write_errors += 1
                self.journal_error = f"{exc.strerror or exc} ({self.journal.path})"
                tries = tries or _JOURNAL_RETRY.start(rng=self.rng)
                delay = tries.next_delay() or _JOURNAL_RETRY.cap
                log.error(
                    "run %s batch %s: the database cannot take %d outcomes and the spill "
                    "journal cannot either: %s; holding them (nothing more is taken in) and "
                    "trying again in %.1fs; free space on that disk or make it writable",
                    self.run_id,
                    batch.id,
                    len(batch),
                    self.journal_error,
                    delay,
                )
                await trio.sleep(delay)
                continue
            if tries is not None:
                log.warning("run %s: the spill journal takes batches again", self.run_id)
            self.journal_error = None
            return False

    async def spill(self, batch: Batch) -> None:
        """Append ``batch`` to the journal (durable when this returns)."""
        await self.journal.append(batch)
        self.stats.spilled_batches += 1
        self.stats.spilled_outcomes += len(batch)
        log.info(
            "run %s batch %s: spilled %d outcomes to %s (%d bytes)",
            self.run_id,
            batch.id,
            len(batch),
            self.journal.path,
            self.journal.size,
        )

    async def replay(self, store: Store | None = None) -> bool:
        """Write every journal batch to PostgreSQL (through ``store``), then clear them.

        Returns False (journal kept) if the breaker refuses or a write fails
        transiently; replaying again later is safe since writes are idempotent.
        Batches spilled while the replay runs are not cleared with it.
        """
        if not self.journal.pending_batches:
            return True
        async with self._replay_lock:
            return await self._replay_locked(store or self.stores[0])

    async def _replay_locked(self, store: Store) -> bool:
        count = self.journal.pending_batches
        if not count:
            return True  # another lane replayed it while this one waited for the lock
        if not self.breaker.allow():
            return False
        outcomes = 0
        try:
            async for batch in self.journal.batches(limit=count):
                await self._write_isolating(store, batch, "replay", 1)
                outcomes += len(batch)
        except TransientWriteError as exc:
            log.warning("run %s: journal replay interrupted (%s); will retry", self.run_id, exc)
            return False
        finally:
            self.breaker.release_probe()
        await self.journal.clear(count)
        self.stats.replayed_outcomes += outcomes
        log.info(
            "run %s: replayed %d outcomes from the journal; cleared them", self.run_id, outcomes
        )
        return True

    # -- the ladder -------------------------------------------------------------------------------

    async def _write_isolating(self, store: Store, batch: Batch, source: str, depth: int) -> None:
        """Write ``batch``; on a data error bisect it until poison records stand alone."""
        try:
            await self._write_with_retry(store, batch, source)
            return
        except DataWriteError as exc:
            self.breaker.record_success()
            if len(batch) == 1:
                await self._dead_letter(store, batch.outcomes[0], batch.id, exc, depth)
                return
            log.info(
                "run %s batch %s: data error (%s); bisecting %d outcomes",
                self.run_id,
                batch.id,
                exc.sqlstate or "client",
                len(batch),
            )
        first, second = batch.halves()
        await self._write_isolating(store, first, source, depth + 1)
        await self._write_isolating(store, second, source, depth + 1)

    async def _write_with_retry(self, store: Store, batch: Batch, source: str) -> None:
        """One transaction, retried on transient failures; raises when the budget is spent."""
        tries = self._backoff.start(rng=self.rng)
        while True:
            t0 = trio.current_time()
            try:
                # A live batch's first try cannot find its keys stored (unless a restarted
                # writer retries a committed batch): COPY straight into outcomes.  A replay or a
                # retry after an ambiguous failure may find them: merge through staging.
                inserted = await store.write_batch(
                    batch,
                    run_id=self.run_id,
                    source=source,
                    direct=source == "live" and tries.retries == 0,
                    worker_id=self.worker_id,
                )
            except TransientWriteError as exc:
                self.breaker.record_failure(str(exc))
                delay = tries.next_delay()
                if delay is None or self.breaker.state is not BreakerState.CLOSED:
                    raise
                self.stats.retries += 1
                log.warning(
                    "run %s batch %s: transient failure %s (%s); retry %d/%d in %.2fs",
                    self.run_id,
                    batch.id,
                    exc.sqlstate or "-",
                    exc,
                    tries.retries,
                    self.retry.max_retries,
                    delay,
                )
                await trio.sleep(delay)
                continue
            except BaseException:
                self.breaker.release_probe()
                raise
            latency = trio.current_time() - t0
            self.breaker.record_success()
            stats = self.stats
            stats.write_transactions += 1
            stats.written += inserted
            stats.already_written += len(batch) - inserted
            stats.last_write_latency = latency
            for hook in self.on_batch_written:
                hook(batch, inserted, latency)
            return

    async def _dead_letter(
        self, store: Store, outcome: Outcome, batch_id: str, exc: DataWriteError, attempts: int
    ) -> None:
        """Store a poison outcome in ``arcflow.dead_letters``, in a form that can always be stored.

        The payload is ASCII JSON (or JSON around a bounded repr), ids and message
        escaped and bounded (see :mod:`arcflow.poison`), so this write can fail only
        transiently; those failures are retried like a batch's.
        """
        row: dict[str, Any] = {
            "run_id": storable_text(outcome.run_id, 500),
            "scenario_id": storable_text(outcome.scenario_id, 500),
            "epoch": outcome.epoch,
            "attempt": outcome.attempt,
            "batch_id": storable_text(batch_id, 500),
            "payload": dead_letter_payload(outcome),
            "sqlstate": exc.sqlstate,
            "message": storable_text(str(exc), 4000),
            "attempts": attempts,
            "final": outcome.final,
        }
        tries = self._backoff.start(rng=self.rng)
        while True:
            try:
                await store.write_dead_letters([row], worker_id=self.worker_id)
                break
            except TransientWriteError as exc2:
                self.breaker.record_failure(str(exc2))
                delay = tries.next_delay()
                if delay is None or self.breaker.state is not BreakerState.CLOSED:
                    raise
            await trio.sleep(delay)
        self.stats.dead_lettered += 1
        log.error(
            "run %s batch %s: outcome %s attempt %d dead-lettered (%s: %s)",
            self.run_id,
            batch_id,
            storable_text(outcome.scenario_id, 200),
            outcome.attempt,
            exc.sqlstate or "client",
            storable_text(str(exc), 200),
        )


__all__ = ["Writer", "WriterStats"]
