"""The writer's lanes: batches written side by side, one journal shared safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from strategies import outcome

from arcflow.breaker import CircuitBreaker
from arcflow.journal import SpillJournal
from arcflow.models import Batch, FlushReason
from arcflow.store import Store
from arcflow.writer import Writer


class GatedStore(Store):
    """A real store whose batch writes wait for ``gate`` (counting those that arrived)."""

    def __init__(self, dsn: str, gate: trio.Event, arrived: list[str]) -> None:
        super().__init__(dsn)
        self.gate = gate
        self.arrived = arrived

    async def write_batch(self, batch: Batch, **kwargs: Any) -> int:
        self.arrived.append(batch.id)
        await self.gate.wait()
        return await super().write_batch(batch, **kwargs)


def _batch(batch_id: str, run_id: str, *ns: int) -> Batch:
    return Batch(batch_id, tuple(outcome(n, run_id=run_id) for n in ns), FlushReason.SIZE)


async def _writer(stores: list[Store], tmp_path: Path, run_id: str) -> Writer:
    """A writer over ``stores`` (schema migrated) with an empty journal in ``tmp_path``."""
    await stores[0].migrate()
    journal = SpillJournal(tmp_path / "j")
    await journal.open()
    return Writer(stores, journal, CircuitBreaker(), run_id=run_id)


async def _until_arrived(arrived: list[str], count: int) -> None:
    while len(arrived) < count:
        await trio.sleep(0.01)


@pytest.fixture
async def aio_loop() -> Any:
    import trio_asyncio

    async with trio_asyncio.open_loop() as loop:
        yield loop


async def test_lanes_write_batches_side_by_side(
    aio_loop: Any, dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """With two connections, a second batch is in PostgreSQL's hands before the first one commits."""
    gate, arrived = trio.Event(), list[str]()
    stores: list[Store] = [GatedStore(dsn, gate, arrived) for _ in range(2)]
    writer = await _writer(stores, tmp_path, run_id)
    send, recv = trio.open_memory_channel[Batch](2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, recv)
            send.send_nowait(_batch("b1", run_id, 1, 2))
            send.send_nowait(_batch("b2", run_id, 3))
            send.close()
            await _until_arrived(arrived, 2)
            gate.set()
    for store in stores:
        await store.aclose()
    assert sorted(arrived) == ["b1", "b2"]
    rows = await db_query("SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert rows[0]["c"] == 3
    assert writer.stats.batches_written == 2


async def test_replay_never_truncates_a_batch_spilled_meanwhile(
    aio_loop: Any, dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """A lane spilling while another replays: the spill does not wait, and the replay's clear keeps it."""
    gate, arrived = trio.Event(), list[str]()
    store = GatedStore(dsn, gate, arrived)
    writer = await _writer([store, Store(dsn)], tmp_path, run_id)
    journal = writer.journal
    await journal.append(_batch("old", run_id, 1))
    spilled = trio.Event()

    async def spill_new() -> None:
        await writer.spill(_batch("new", run_id, 2))
        spilled.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.replay)
        await _until_arrived(arrived, 1)
        nursery.start_soon(spill_new)
        with trio.fail_after(5):
            await spilled.wait()  # the replay is still writing "old"
        assert [b.id async for b in journal.batches()] == ["old", "new"]
        gate.set()
    await store.aclose()
    assert [b.id async for b in journal.batches()] == ["new"]
    rows = await db_query("SELECT scenario_id FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert [r["scenario_id"] for r in rows] == ["s1"]


async def test_a_cancelled_writer_salvages_its_batches_into_the_journal(
    aio_loop: Any, dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """Cancelled mid-write, the writer moves its batch in flight and the queued ones into the journal."""
    gate, arrived = trio.Event(), list[str]()
    store = GatedStore(dsn, gate, arrived)
    writer = await _writer([store], tmp_path, run_id)
    send, recv = trio.open_memory_channel[Batch](2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.serve, recv)
            send.send_nowait(_batch("b1", run_id, 1))
            send.send_nowait(_batch("b2", run_id, 2, 3))
            await _until_arrived(arrived, 1)
            assert writer.in_flight == 1
            nursery.cancel_scope.cancel()
    await store.aclose()
    kept = sorted([o.scenario_id async for b in writer.journal.batches() for o in b.outcomes])
    assert kept == ["s1", "s2", "s3"]
    assert writer.in_flight == 0
    with pytest.raises(trio.BrokenResourceError):
        send.send_nowait(_batch("late", run_id, 4))  # the writer closed its end on the way out
