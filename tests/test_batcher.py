"""The batcher actor: size, deadline and shutdown flushes, order, bounds."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import arrival_gaps, outcome

from arcflow.batcher import BatcherStats, run_batcher
from arcflow.models import Batch, FlushReason, Outcome


async def _collect(
    batches: trio.MemoryReceiveChannel[Batch], out: list[tuple[float, Batch]]
) -> None:
    async for batch in batches:
        out.append((trio.current_time(), batch))


async def test_size_flush(autojump_clock: trio.testing.MockClock) -> None:
    """A batch is flushed as soon as it holds batch_size outcomes, with reason size."""
    send, recv = trio.open_memory_channel[Outcome](100)
    bsend, brecv = trio.open_memory_channel[Batch](0)
    got: list[tuple[float, Batch]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, brecv, got)
        await nursery.start(
            functools.partial(run_batcher, recv, bsend, batch_size=3, flush_interval=30)
        )
        async with send:
            for i in range(7):
                await send.send(outcome(i))
            await trio.sleep(1)
            assert [len(b) for _, b in got] == [3, 3]
            assert all(b.reason is FlushReason.SIZE for _, b in got)
    assert [len(b) for _, b in got] == [3, 3, 1]
    assert got[-1][1].reason is FlushReason.SHUTDOWN


async def test_deadline_measured_from_first_record(autojump_clock: trio.testing.MockClock) -> None:
    """A partial batch is flushed flush_interval after its first record, not its last."""
    send, recv = trio.open_memory_channel[Outcome](100)
    bsend, brecv = trio.open_memory_channel[Batch](0)
    got: list[tuple[float, Batch]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, brecv, got)
        await nursery.start(
            functools.partial(run_batcher, recv, bsend, batch_size=100, flush_interval=10)
        )
        t0 = trio.current_time()
        async with send:
            await send.send(outcome(0))
            await trio.sleep(6)
            await send.send(outcome(1))  # must not push the deadline back
            await trio.sleep(6)
            assert len(got) == 1
            when, batch = got[0]
            assert batch.reason is FlushReason.DEADLINE
            assert [o.scenario_id for o in batch.outcomes] == ["s0", "s1"]
            assert abs((when - t0) - 10) < 1e-6
    assert len(got) == 1  # nothing pending at shutdown


async def test_trickle_is_persisted_within_interval(autojump_clock: trio.testing.MockClock) -> None:
    """One record a minute is flushed within flush_interval, never held for a full batch."""
    send, recv = trio.open_memory_channel[Outcome](10)
    bsend, brecv = trio.open_memory_channel[Batch](0)
    got: list[tuple[float, Batch]] = []
    sent_at: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, brecv, got)
        await nursery.start(
            functools.partial(run_batcher, recv, bsend, batch_size=100, flush_interval=5)
        )
        async with send:
            for i in range(4):
                sent_at.append(trio.current_time())
                await send.send(outcome(i))
                await trio.sleep(60)
    assert len(got) == 4
    for (when, batch), t in zip(got, sent_at, strict=True):
        assert batch.reason is FlushReason.DEADLINE
        assert when - t <= 5 + 1e-6


async def test_shutdown_flush_and_counters(autojump_clock: trio.testing.MockClock) -> None:
    """Closing the input flushes the partial batch with reason shutdown and counts reasons."""
    send, recv = trio.open_memory_channel[Outcome](10)
    bsend, brecv = trio.open_memory_channel[Batch](0)
    got: list[tuple[float, Batch]] = []
    stats = BatcherStats()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, brecv, got)
        await nursery.start(
            functools.partial(
                run_batcher, recv, bsend, batch_size=4, flush_interval=30, stats=stats
            )
        )
        async with send:
            for i in range(6):
                await send.send(outcome(i))
    assert [b.reason for _, b in got] == [FlushReason.SIZE, FlushReason.SHUTDOWN]
    assert dict(stats.by_flush_reason) == {"size": 1, "shutdown": 1}
    assert stats.pending_in_batcher == 0


async def test_closes_batch_channel_when_done(autojump_clock: trio.testing.MockClock) -> None:
    """The batcher closes its send end when its input ends, which ends the writer's loop."""
    send, recv = trio.open_memory_channel[Outcome](1)
    bsend, brecv = trio.open_memory_channel[Batch](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(run_batcher, recv, bsend, batch_size=10, flush_interval=1)
        )
        send.close()
    with pytest.raises(trio.EndOfChannel):
        await brecv.receive()


@settings(max_examples=60, deadline=None)
@given(gaps=arrival_gaps, batch_size=st.integers(1, 8), interval=st.floats(0.5, 5.0))
def test_property_every_record_once_in_order(
    gaps: list[float], batch_size: int, interval: float
) -> None:
    """Any stream: each record in exactly one batch, in order, sizes bounded, waits bounded."""

    async def main() -> None:
        send, recv = trio.open_memory_channel[Outcome](1000)
        bsend, brecv = trio.open_memory_channel[Batch](0)
        got: list[tuple[float, Batch]] = []
        arrived: dict[str, float] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, brecv, got)
            await nursery.start(
                functools.partial(
                    run_batcher, recv, bsend, batch_size=batch_size, flush_interval=interval
                )
            )
            async with send:
                for i, gap in enumerate(gaps):
                    await trio.sleep(gap)
                    arrived[f"s{i}"] = trio.current_time()
                    await send.send(outcome(i))
        flat = [o.scenario_id for _, b in got for o in b.outcomes]
        assert flat == [f"s{i}" for i in range(len(gaps))]
        for when, batch in got:
            assert 1 <= len(batch) <= batch_size
            if batch.reason is FlushReason.SIZE:
                assert len(batch) == batch_size
            if batch.reason is not FlushReason.SHUTDOWN:
                # The collector is always free, so no record waits past the interval.
                first = arrived[batch.outcomes[0].scenario_id]
                assert when - first <= interval + 1e-9
        assert sum(1 for _, b in got if b.reason is FlushReason.SHUTDOWN) <= 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_cancelled_batcher_salvages_what_it_holds(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Cancelled with a batch nobody takes, the batcher journals it and its queued outcomes, and closes its input."""
    from arcflow.journal import SpillJournal

    journal = SpillJournal(tmp_path / "j")
    await journal.open()
    send, recv = trio.open_memory_channel[Outcome](10)
    bsend, _brecv = trio.open_memory_channel[Batch](0)  # nobody receives: the send blocks
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                run_batcher, recv, bsend, batch_size=3, flush_interval=30, journal=journal
            )
        )
        for i in range(5):
            send.send_nowait(outcome(i))
        await trio.testing.wait_all_tasks_blocked()  # a full batch waits in send, two are queued
        nursery.cancel_scope.cancel()
    kept = sorted([o.scenario_id async for b in journal.batches() for o in b.outcomes])
    assert kept == [f"s{i}" for i in range(5)]
    with pytest.raises(trio.BrokenResourceError):
        send.send_nowait(outcome(9))
