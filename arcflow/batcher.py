"""The batcher actor: outcomes in, batches out, on size, deadline or shutdown."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import attrs
import trio

from .journal import SpillJournal, salvage
from .models import Batch, FlushReason, Outcome, new_batch_id

__all__ = ["BatcherStats", "FlushNow", "new_batch_id", "run_batcher"]


@attrs.define
class BatcherStats:
    """What the batcher has done; written by the batcher alone."""

    #: Outcomes waiting in the batcher's partial batch.
    pending_in_batcher: int = 0
    #: Batches flushed, by reason (``size``, ``deadline``, ``shutdown``).
    by_flush_reason: Counter[str] = attrs.field(factory=Counter)
    #: The size limit of the batch being filled (changes only with adaptive batching).
    batch_size: int = 0


@attrs.define
class FlushNow:
    """Lets another actor ask the batcher to hand over its partial batch now.

    A shared run's source asks when it has nothing left to claim: a claim is
    done only once its outcome is written, and other workers wait for that.
    """

    _scope: trio.CancelScope | None = None
    _asked: bool = False

    def request(self) -> None:
        """Flush the partial batch now (or the next one as soon as it has an outcome)."""
        self._asked = True
        if self._scope is not None:
            self._scope.cancel()


async def run_batcher(
    outcomes: trio.MemoryReceiveChannel[Outcome],
    batches: trio.MemorySendChannel[Batch],
    *,
    batch_size: int | Callable[[], int],
    flush_interval: float,
    stats: BatcherStats | None = None,
    journal: SpillJournal | None = None,
    salvage_timeout: float = 30.0,
    make_batch_id: Callable[[], str] = new_batch_id,
    flush_now: FlushNow | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Group outcomes into batches and send them to the writer.

    A batch is flushed when it holds ``batch_size`` outcomes (reason ``size``),
    when its first outcome has waited ``flush_interval`` seconds (``deadline``),
    or when ``outcomes`` is closed and drained (``shutdown``).  Order is kept.

    To keep the per-record cost low, it takes everything already queued with
    ``receive_nowait()`` and only awaits when the channel is empty.

    ``batch_size`` may be a callable, read at the start of each batch, so an
    adaptive controller can change it between batches.  ``flush_now`` lets
    another actor cut a batch short (reason ``deadline``).

    Retries nothing and escalates nothing: a blocked ``send`` is backpressure.
    On its way out by cancellation or failure, it salvages its partial batch
    and the outcomes still queued for it into ``journal`` (when given).
    Closes both its channel ends when it returns: ``batches`` (which ends the
    writer) and ``outcomes``.
    """
    stats = stats if stats is not None else BatcherStats()
    size_of: Callable[[], int] = batch_size if callable(batch_size) else (lambda: batch_size)
    pending: list[Outcome] = []
    with outcomes, batches:
        task_status.started()
        try:
            await _fill(
                outcomes,
                batches,
                pending,
                size_of,
                flush_interval,
                stats,
                make_batch_id,
                flush_now if flush_now is not None else FlushNow(),
            )
        except BaseException:
            if journal is not None:
                while True:
                    try:
                        pending.append(outcomes.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                await salvage(journal, pending, who="batcher", limit_s=salvage_timeout)  # noqa: ASYNC102 - shielded and bounded in salvage()
            pending.clear()
            stats.pending_in_batcher = 0
            raise


async def _fill(
    outcomes: trio.MemoryReceiveChannel[Outcome],
    batches: trio.MemorySendChannel[Batch],
    pending: list[Outcome],
    size_of: Callable[[], int],
    flush_interval: float,
    stats: BatcherStats,
    make_batch_id: Callable[[], str],
    flush_now: FlushNow,
) -> None:
    """The batcher's loop; an outcome leaves ``pending`` only once its batch was handed over."""
    opened_at = 0.0
    deadline = math.inf
    limit = size_of()
    closed = False

    async def flush(reason: FlushReason) -> None:
        nonlocal deadline
        batch = Batch(make_batch_id(), tuple(pending), reason, opened_at)
        await batches.send(batch)
        pending.clear()
        deadline = math.inf
        stats.pending_in_batcher = 0
        stats.by_flush_reason[reason.value] += 1

    while not closed:
        if not pending:
            try:
                first = await outcomes.receive()
            except trio.EndOfChannel:
                break
            pending.append(first)
            limit = size_of()
            stats.batch_size = limit
            opened_at = trio.current_time()
            deadline = opened_at + flush_interval
        # Fill the batch until it is full, the deadline passes or the input ends:
        # take what is already queued without awaiting, await only when the
        # channel is empty, all under one cancel scope per batch.
        with trio.move_on_at(deadline) as scope:
            flush_now._scope = scope
            if flush_now._asked:
                scope.cancel()
            while True:
                while len(pending) < limit:
                    try:
                        pending.append(outcomes.receive_nowait())
                    except trio.WouldBlock:
                        break
                    except trio.EndOfChannel:
                        closed = True
                        break
                stats.pending_in_batcher = len(pending)
                if closed or len(pending) >= limit:
                    break
                try:
                    pending.append(await outcomes.receive())
                except trio.EndOfChannel:
                    closed = True
                    break
        flush_now._scope = None
        flush_now._asked = False
        if len(pending) >= limit:
            await flush(FlushReason.SIZE)
        elif not closed:
            await flush(FlushReason.DEADLINE)
    if pending:
        await flush(FlushReason.SHUTDOWN)
