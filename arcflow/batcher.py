"""The batcher actor: outcomes in, batches out, on size, deadline or shutdown."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable

import trio

from .models import Batch, FlushReason, Outcome
from .stats import Counters


def new_batch_id() -> str:
    """A fresh, unique batch id."""
    return uuid.uuid4().hex[:16]


async def run_batcher(
    outcomes: trio.MemoryReceiveChannel[Outcome],
    batches: trio.MemorySendChannel[Batch],
    *,
    batch_size: int | Callable[[], int],
    flush_interval: float,
    counters: Counters | None = None,
    make_batch_id: Callable[[], str] = new_batch_id,
    pending: list[Outcome] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Group outcomes into batches and send them to the writer.

    A batch is flushed when it holds ``batch_size`` outcomes (reason ``size``),
    when its first outcome has waited ``flush_interval`` seconds (``deadline``),
    or when ``outcomes`` is closed and drained (``shutdown``).  Order is kept.

    To keep the per-record cost low, it takes everything already queued with
    ``receive_nowait()`` and only awaits when the channel is empty.

    ``pending`` (optional) is the list the partial batch is kept in; an outcome
    leaves it only once its batch was handed to the writer, so the owner can
    rescue it if the batcher is cancelled mid-send.

    ``batch_size`` may be a callable, read at the start of each batch, so an
    adaptive controller can change it between batches.

    Retries nothing and escalates nothing: a blocked ``send`` is backpressure.
    Closes ``batches`` (the send end) when it returns, which ends the writer.
    """
    counters = counters if counters is not None else Counters()
    size_of: Callable[[], int] = batch_size if callable(batch_size) else (lambda: batch_size)
    with batches:
        task_status.started()
        pending = pending if pending is not None else []
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
            counters.pending_in_batcher = 0
            counters.by_flush_reason[reason.value] += 1

        while not closed:
            if not pending:
                try:
                    first = await outcomes.receive()
                except trio.EndOfChannel:
                    break
                pending.append(first)
                limit = size_of()
                counters.batch_size = limit
                opened_at = trio.current_time()
                deadline = opened_at + flush_interval
            # Fill the batch until it is full, the deadline passes or the input ends:
            # take what is already queued without awaiting, await only when the
            # channel is empty, all under one cancel scope per batch.
            with trio.move_on_at(deadline):
                while True:
                    while len(pending) < limit:
                        try:
                            pending.append(outcomes.receive_nowait())
                        except trio.WouldBlock:
                            break
                        except trio.EndOfChannel:
                            closed = True
                            break
                    counters.pending_in_batcher = len(pending)
                    if closed or len(pending) >= limit:
                        break
                    try:
                        pending.append(await outcomes.receive())
                    except trio.EndOfChannel:
                        closed = True
                        break
            if len(pending) >= limit:
                await flush(FlushReason.SIZE)
            elif not closed:
                await flush(FlushReason.DEADLINE)
        if pending:
            await flush(FlushReason.SHUTDOWN)
