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
from arcflow.writer import Writer, WriterState


class GatedStore(Store):
    """A real store whose batch writes wait for ``gate`` (counting those that arrived)."""

    def __init__(self, dsn: str, gate: trio.Event, arrived: list[str]) -> None:
        super().__init__(dsn)
        self.gate = gate
        self.arrived = arrived

    async def write_outcomes(self, outcomes: Any, **kwargs: Any) -> int:
        self.arrived.append(kwargs["batch_id"])
        await self.gate.wait()
        return await super().write_outcomes(outcomes, **kwargs)


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
            nursery.start_soon(writer.run, recv, WriterState())
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
    assert writer.counters.batches_written == 2


async def test_replay_never_truncates_a_batch_spilled_meanwhile(
    aio_loop: Any, dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """A lane spilling while another replays waits until the replay has truncated: its batch stays."""
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
        with trio.move_on_after(0.5):
            await spilled.wait()
        # The replay holds the journal: the spill has not happened yet.
        assert not spilled.is_set()
        gate.set()
    await store.aclose()
    assert [b.id async for b in journal.batches()] == ["new"]
    rows = await db_query("SELECT scenario_id FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert [r["scenario_id"] for r in rows] == ["s1"]


async def test_lane_finishing_a_batch_a_rescue_already_took_does_not_crash(
    aio_loop: Any, dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """A batch rescued from in_flight while its lane still writes it: the lane ends cleanly, the row is stored once."""
    gate, arrived = trio.Event(), list[str]()
    store = GatedStore(dsn, gate, arrived)
    writer = await _writer([store], tmp_path, run_id)
    state = WriterState()
    send, recv = trio.open_memory_channel[Batch](1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, recv, state)
            send.send_nowait(_batch("b1", run_id, 1))
            send.close()
            await _until_arrived(arrived, 1)
            assert [b.id for b in state.in_flight.values()] == ["b1"]
            state.in_flight.clear()  # what Runtime._rescue does after a drain timeout
            gate.set()
    await store.aclose()
    rows = await db_query("SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert rows[0]["c"] == 1
