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
appends, replays and clears of the journal hold one lock, so a replay's clear
can never drop a batch another lane spilled meanwhile.  Batches may therefore
commit out of order; each is still one transaction.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from .breaker import BreakerState, CircuitBreaker
from .config import RetryPolicy
from .errors import DataWriteError, TransientWriteError, leaf_exceptions
from .journal import SpillJournal
from .models import Batch, FlushReason, Outcome
from .stats import Counters
from .store import Store

log = logging.getLogger("arcflow.writer")


@attrs.define
class WriterState:
    """State that outlives one writer incarnation (owned by the runtime, not the actor)."""

    #: The batch each lane is handling; a restarted writer handles them first, so none is lost.
    in_flight: dict[int, Batch] = attrs.field(factory=dict)
    #: Set at shutdown: the journal cap no longer stops the writer from pulling.
    draining: bool = False


class Writer:
    """Writes batches with retries, bisection, dead letters, a breaker and a spill journal.

    Retries: transient failures of a whole batch (backoff and jitter).
    Escalates: bugs (anything not classified transient or data) and journal I/O
    errors, by raising; the supervisor restarts it with ``WriterState`` intact.
    Closes: nothing; the supervisor owns the batch channel's receive end.

    ``store`` is one :class:`Store` or a sequence of them: one lane per store.
    """

    def __init__(
        self,
        store: Store | Sequence[Store],
        journal: SpillJournal,
        breaker: CircuitBreaker,
        *,
        run_id: str,
        retry: RetryPolicy | None = None,
        counters: Counters | None = None,
        rng: random.Random | None = None,
        on_batch_written: Callable[[Batch, int, float], None] | None = None,
        final_replay_timeout: float = 30.0,
    ) -> None:
        self.stores: tuple[Store, ...] = (store,) if isinstance(store, Store) else tuple(store)
        if not self.stores:
            raise ValueError("a writer needs at least one store")
        #: The first lane's store (replays at start-up go through it).
        self.store = self.stores[0]
        self._journal_lock = trio.Lock()
        self.final_replay_timeout = final_replay_timeout
        self.journal = journal
        self.breaker = breaker
        self.run_id = run_id
        self.retry = retry or RetryPolicy()
        self._backoff = self.retry.backoff()
        self.counters = counters if counters is not None else Counters()
        self.rng = rng or random.Random()
        self.on_batch_written = on_batch_written

    # -- the actor ------------------------------------------------------------------------------

    async def run(
        self,
        batches: trio.MemoryReceiveChannel[Batch],
        state: WriterState,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Handle batches until ``batches`` is closed and drained, then empty the journal if it can."""
        task_status.started()
        try:
            async with trio.open_nursery() as lanes:
                for lane, store in enumerate(self.stores):
                    lanes.start_soon(self._lane, lane, store, batches, state)
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
        self,
        lane: int,
        store: Store,
        batches: trio.MemoryReceiveChannel[Batch],
        state: WriterState,
    ) -> None:
        """One connection's loop: pull a batch, take it down the ladder, until the input ends."""
        restarted = state.in_flight.get(lane)
        if restarted is not None:
            log.warning(
                "run %s batch %s: writer restarted; handling the in-flight batch first",
                self.run_id,
                restarted.id,
            )
            written = await self.handle(restarted, store)
            self._done(state, lane, restarted)
            await self._catch_up(store, written)
        while True:
            if self.journal.pending_batches and self.journal.full and not state.draining:
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
            state.in_flight[lane] = batch
            written = await self.handle(batch, store)
            self._done(state, lane, batch)
            await self._catch_up(store, written)

    @staticmethod
    def _done(state: WriterState, lane: int, batch: Batch) -> None:
        """``batch`` is written or spilled: no longer in flight (unless a rescue already took it)."""
        if state.in_flight.get(lane) is batch:
            del state.in_flight[lane]

    async def _catch_up(self, store: Store, written: bool) -> None:
        """After a write went through, replay the journal (unless another lane is at it now)."""
        if written and self.journal.pending_batches and not self._journal_lock.locked():
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
        """Write ``batch`` (through ``store``, default the first) or, if the database cannot take it now, spill it.

        Returns True if it was written, False if it was spilled.
        """
        store = store or self.store
        if self.breaker.allow():
            try:
                await self._write_isolating(
                    store, batch.outcomes, batch.id, batch.reason.value, "live", 1
                )
            except TransientWriteError as exc:
                log.warning(
                    "run %s batch %s: giving up writing for now (%s); spilling %d outcomes",
                    self.run_id,
                    batch.id,
                    exc,
                    len(batch),
                )
            else:
                self.counters.batches_written += 1
                return True
        await self.spill(batch)
        return False

    async def spill(self, batch: Batch) -> None:
        """Append ``batch`` to the journal (durable when this returns)."""
        async with self._journal_lock:
            await self.journal.append(batch)
        self.counters.spilled_batches += 1
        self.counters.spilled_outcomes += len(batch)
        log.info(
            "run %s batch %s: spilled %d outcomes to %s (%d bytes)",
            self.run_id,
            batch.id,
            len(batch),
            self.journal.path,
            self.journal.size,
        )

    async def replay(self, store: Store | None = None) -> bool:
        """Write every journal batch to PostgreSQL (through ``store``), then clear the journal.

        Returns False (journal kept) if the breaker refuses or a write fails
        transiently; replaying again later is safe since writes are idempotent.
        Holds the journal lock throughout: no lane appends between the read and the clear.
        """
        if not self.journal.pending_batches:
            return True
        async with self._journal_lock:
            return await self._replay_locked(store or self.store)

    async def _replay_locked(self, store: Store) -> bool:
        if not self.journal.pending_batches:
            return True  # another lane replayed it while this one waited for the lock
        if not self.breaker.allow():
            return False
        count = 0
        try:
            async for batch in self.journal.batches():
                await self._write_isolating(
                    store, batch.outcomes, batch.id, batch.reason.value, "replay", 1
                )
                count += len(batch)
        except TransientWriteError as exc:
            log.warning("run %s: journal replay interrupted (%s); will retry", self.run_id, exc)
            return False
        finally:
            self.breaker.release_probe()
        await self.journal.clear()
        self.counters.replayed_outcomes += count
        log.info(
            "run %s: replayed %d outcomes from the journal; journal cleared", self.run_id, count
        )
        return True

    # -- the ladder -------------------------------------------------------------------------------

    async def _write_isolating(
        self,
        store: Store,
        outcomes: Sequence[Outcome],
        batch_id: str,
        reason: str,
        source: str,
        depth: int,
    ) -> None:
        """Write ``outcomes``; on a data error bisect until poison records stand alone."""
        try:
            await self._write_with_retry(store, outcomes, batch_id, reason, source)
            return
        except DataWriteError as exc:
            self.breaker.record_success()
            if len(outcomes) == 1:
                await self._dead_letter(store, outcomes[0], batch_id, exc, depth)
                return
            log.info(
                "run %s batch %s: data error (%s); bisecting %d outcomes",
                self.run_id,
                batch_id,
                exc.sqlstate or "client",
                len(outcomes),
            )
        mid = len(outcomes) // 2
        await self._write_isolating(
            store, outcomes[:mid], f"{batch_id}.0", reason, source, depth + 1
        )
        await self._write_isolating(
            store, outcomes[mid:], f"{batch_id}.1", reason, source, depth + 1
        )

    async def _write_with_retry(
        self, store: Store, outcomes: Sequence[Outcome], batch_id: str, reason: str, source: str
    ) -> None:
        """One transaction, retried on transient failures; raises when the budget is spent."""
        tries = self._backoff.start(rng=self.rng)
        while True:
            t0 = trio.current_time()
            try:
                # A live batch's first try cannot find its keys stored (unless a restarted
                # writer retries a committed batch): COPY straight into outcomes.  A replay or a
                # retry after an ambiguous failure may find them: merge through staging.
                inserted = await store.write_outcomes(
                    outcomes,
                    batch_id=batch_id,
                    run_id=self.run_id,
                    reason=reason,
                    source=source,
                    direct=source == "live" and tries.retries == 0,
                )
            except TransientWriteError as exc:
                self.breaker.record_failure(str(exc))
                delay = tries.next_delay()
                if delay is None or self.breaker.state is not BreakerState.CLOSED:
                    raise
                self.counters.retries += 1
                log.warning(
                    "run %s batch %s: transient failure %s (%s); retry %d/%d in %.2fs",
                    self.run_id,
                    batch_id,
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
            c = self.counters
            c.write_transactions += 1
            c.written += inserted
            c.already_written += len(outcomes) - inserted
            c.last_write_latency = latency
            if self.on_batch_written is not None:
                self.on_batch_written(
                    Batch(batch_id, tuple(outcomes), _reason(reason)), inserted, latency
                )
            return

    async def _dead_letter(
        self, store: Store, outcome: Outcome, batch_id: str, exc: DataWriteError, attempts: int
    ) -> None:
        payload = json.dumps(outcome.to_json(), default=repr)
        row: dict[str, Any] = {
            "run_id": outcome.run_id,
            "scenario_id": outcome.scenario_id,
            "attempt": outcome.attempt,
            "batch_id": batch_id,
            "payload": payload,
            "sqlstate": exc.sqlstate,
            "message": _printable(str(exc)),
            "attempts": attempts,
        }
        tries = self._backoff.start(rng=self.rng)
        while True:
            try:
                await store.write_dead_letters([row])
                break
            except TransientWriteError as exc2:
                self.breaker.record_failure(str(exc2))
                delay = tries.next_delay()
                if delay is None or self.breaker.state is not BreakerState.CLOSED:
                    raise
            await trio.sleep(delay)
        self.counters.dead_lettered += 1
        log.error(
            "run %s batch %s: outcome %s attempt %d dead-lettered (%s: %s)",
            self.run_id,
            batch_id,
            outcome.scenario_id,
            outcome.attempt,
            exc.sqlstate or "client",
            _printable(str(exc))[:200],
        )


def _printable(text: str) -> str:
    return text.replace("\x00", "\\u0000")


def _reason(value: str) -> FlushReason:
    try:
        return FlushReason(value)
    except ValueError:  # pragma: no cover - reasons come from FlushReason
        return FlushReason.SHUTDOWN


__all__ = ["Writer", "WriterState"]
