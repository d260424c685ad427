"""The store's batch write: the direct COPY and the staging merge give the same rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from strategies import outcome

from arcflow.errors import DataWriteError
from arcflow.store import Store


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    import trio_asyncio

    async with trio_asyncio.open_loop():
        s = Store(dsn)
        await s.migrate()
        try:
            yield s
        finally:
            await s.aclose()


async def _count(db_query: Any, run_id: str) -> int:
    rows = await db_query("SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id)
    return int(rows[0]["c"])


async def _batch_log(db_query: Any, batch_id: str) -> tuple[int, int] | None:
    rows = await db_query("SELECT size, inserted FROM arcflow.batches WHERE batch_id = $1", batch_id)
    return (rows[0]["size"], rows[0]["inserted"]) if rows else None


@pytest.mark.parametrize("direct", [True, False])
async def test_batch_is_written_and_logged(store: Store, run_id: str, db_query: Any, direct: bool) -> None:
    """Either path stores every row once and logs the batch with its size and new rows."""
    outcomes = [outcome(i, run_id=run_id) for i in range(50)]
    inserted = await store.write_outcomes(
        outcomes, batch_id=run_id + "-a", run_id=run_id, reason="size", direct=direct
    )
    assert inserted == 50
    assert await _count(db_query, run_id) == 50
    assert await _batch_log(db_query, run_id + "-a") == (50, 50)


async def test_direct_write_meeting_stored_keys_merges_instead(
    store: Store, run_id: str, db_query: Any
) -> None:
    """A direct COPY that meets stored keys leaves nothing of itself and merges: no duplicate, no loss."""
    await store.write_outcomes(
        [outcome(i, run_id=run_id) for i in range(10)], batch_id=run_id + "-a", run_id=run_id, reason="size"
    )
    overlapping = [outcome(i, run_id=run_id) for i in range(5, 25)]
    inserted = await store.write_outcomes(
        overlapping, batch_id=run_id + "-b", run_id=run_id, reason="size", direct=True
    )
    assert inserted == 15
    assert await _count(db_query, run_id) == 25
    assert await _batch_log(db_query, run_id + "-b") == (20, 15)
    # The store's connection is usable after the aborted transaction.
    assert await store.fetchval("SELECT count(*) FROM arcflow.outcomes WHERE run_id = $1", run_id) == 25


async def test_direct_write_of_a_batch_repeating_a_key(store: Store, run_id: str, db_query: Any) -> None:
    """A batch holding one key twice is stored with that key once (the merge skips the repeat)."""
    outcomes = [outcome(i, run_id=run_id) for i in range(5)] + [outcome(2, run_id=run_id)]
    inserted = await store.write_outcomes(
        outcomes, batch_id=run_id + "-a", run_id=run_id, reason="size", direct=True
    )
    assert inserted == 5
    assert await _count(db_query, run_id) == 5


@pytest.mark.parametrize("direct", [True, False])
async def test_data_error_aborts_the_whole_batch(
    store: Store, run_id: str, db_query: Any, direct: bool
) -> None:
    """A poison record fails the batch as a data error, and none of its rows stay behind."""
    outcomes = [outcome(i, run_id=run_id) for i in range(5)]
    outcomes.append(outcome(99, run_id=run_id, error_message="nul \x00 byte"))
    with pytest.raises(DataWriteError) as info:
        await store.write_outcomes(outcomes, batch_id=run_id + "-a", run_id=run_id, reason="size", direct=direct)
    assert info.value.sqlstate == "22021"
    assert await _count(db_query, run_id) == 0
    assert await _batch_log(db_query, run_id + "-a") is None


async def test_concurrent_direct_writers_of_one_batch_store_it_once(
    dsn: str, run_id: str, db_query: Any
) -> None:
    """Two connections writing the same batch directly at once store each key once."""
    import trio_asyncio

    outcomes = [outcome(i, run_id=run_id) for i in range(200)]
    results: list[int] = []
    async with trio_asyncio.open_loop():
        stores = [Store(dsn), Store(dsn)]
        await stores[0].migrate()

        async def write(s: Store, batch_id: str) -> None:
            results.append(
                await s.write_outcomes(outcomes, batch_id=batch_id, run_id=run_id, reason="size", direct=True)
            )

        async with trio.open_nursery() as nursery:
            for n, s in enumerate(stores):
                nursery.start_soon(write, s, f"{run_id}-{n}")
        for s in stores:
            await s.aclose()
    assert sorted(results) == [0, 200]
    assert await _count(db_query, run_id) == 200
