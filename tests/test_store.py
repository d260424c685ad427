"""The store's batch write (the direct COPY and the staging merge give the same rows) and its row encoding."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import json_values, outcome

from arcflow.errors import DataWriteError
from arcflow.models import Batch, FlushReason, Outcome, Status
from arcflow.store import Store
from arcflow.store.postgres import decode_timestamptz, encode_outcome, encode_timestamptz


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
    rows = await db_query(
        "SELECT size, inserted FROM arcflow.batches WHERE batch_id = $1", batch_id
    )
    return (rows[0]["size"], rows[0]["inserted"]) if rows else None


@pytest.mark.parametrize("direct", [True, False])
async def test_batch_is_written_and_logged(
    store: Store, run_id: str, db_query: Any, direct: bool
) -> None:
    """Either path stores every row once and logs the batch with its size and new rows."""
    outcomes = [outcome(i, run_id=run_id) for i in range(50)]
    inserted = await store.write_batch(
        Batch(run_id + "-a", tuple(outcomes), FlushReason.SIZE), run_id=run_id, direct=direct
    )
    assert inserted == 50
    assert await _count(db_query, run_id) == 50
    assert await _batch_log(db_query, run_id + "-a") == (50, 50)


async def test_direct_write_meeting_stored_keys_merges_instead(
    store: Store, run_id: str, db_query: Any
) -> None:
    """A direct COPY that meets stored keys leaves nothing of itself and merges: no duplicate, no loss."""
    await store.write_batch(
        Batch(
            run_id + "-a", tuple([outcome(i, run_id=run_id) for i in range(10)]), FlushReason.SIZE
        ),
        run_id=run_id,
    )
    overlapping = [outcome(i, run_id=run_id) for i in range(5, 25)]
    inserted = await store.write_batch(
        Batch(run_id + "-b", tuple(overlapping), FlushReason.SIZE), run_id=run_id, direct=True
    )
    assert inserted == 15
    assert await _count(db_query, run_id) == 25
    assert await _batch_log(db_query, run_id + "-b") == (20, 15)
    # The store's connection is usable after the aborted transaction.
    assert (
        await store.fetchval("SELECT count(*) FROM arcflow.outcomes WHERE run_id = $1", run_id)
        == 25
    )


async def test_direct_write_of_a_batch_repeating_a_key(
    store: Store, run_id: str, db_query: Any
) -> None:
    """A batch holding one key twice is stored with that key once (the merge skips the repeat)."""
    outcomes = [outcome(i, run_id=run_id) for i in range(5)] + [outcome(2, run_id=run_id)]
    inserted = await store.write_batch(
        Batch(run_id + "-a", tuple(outcomes), FlushReason.SIZE), run_id=run_id, direct=True
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
        await store.write_batch(
            Batch(run_id + "-a", tuple(outcomes), FlushReason.SIZE), run_id=run_id, direct=direct
        )
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
                await s.write_batch(
                    Batch(batch_id, tuple(outcomes), FlushReason.SIZE), run_id=run_id, direct=True
                )
            )

        async with trio.open_nursery() as nursery:
            for n, s in enumerate(stores):
                nursery.start_soon(write, s, f"{run_id}-{n}")
        for s in stores:
            await s.aclose()
    assert sorted(results) == [0, 200]
    assert await _count(db_query, run_id) == 200


@pytest.mark.parametrize("direct", [True, False])
async def test_tags_are_stored_whether_or_not_a_batch_has_any(
    store: Store, run_id: str, db_query: Any, direct: bool
) -> None:
    """A batch without tags stores '{}' (the column left out), a batch with some stores each row's own."""
    untagged = [outcome(i, run_id=run_id) for i in range(3)]
    mixed = [outcome(i, run_id=run_id) for i in range(3, 6)] + [
        outcome(6, run_id=run_id, tags=("a", "b"))
    ]
    for n, batch in enumerate([untagged, mixed]):
        await store.write_batch(
            Batch(f"{run_id}-{n}", tuple(batch), FlushReason.SIZE), run_id=run_id, direct=direct
        )
    rows = await db_query(
        "SELECT scenario_id, tags FROM arcflow.outcomes WHERE run_id = $1 ORDER BY scenario_id",
        run_id,
    )
    assert [(r["scenario_id"], r["tags"]) for r in rows] == [
        *((f"s{i}", []) for i in range(6)),
        ("s6", ["a", "b"]),
    ]


_aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
)


class _NoOffset(tzinfo):
    """A tzinfo that knows no offset: Python (and asyncpg) treat such datetimes as naive."""

    def utcoffset(self, dt: datetime | None) -> None:
        return None


async def test_timestamptz_codec_sends_what_asyncpg_sends(store: Store, db_query: Any) -> None:
    """The store's connection sends the instants asyncpg's own codec sends: aware, naive, dates, infinities."""
    rng = random.Random(7)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    values: list[Any] = [
        datetime.max,
        datetime.min,
        datetime.max.replace(tzinfo=UTC),
        datetime.min.replace(tzinfo=UTC),
        date(2026, 11, 22),
        date(2026, 7, 1),
        datetime(2026, 11, 22, 12, 0),
        datetime(2026, 7, 1, 12, 0),
        datetime(2026, 7, 1, 12, 0, tzinfo=_NoOffset()),
    ]
    for _ in range(200):
        instant = epoch + timedelta(microseconds=rng.randrange(-(2**55), 2**55))
        offset = timezone(timedelta(minutes=rng.randrange(-14 * 60, 14 * 60)))
        values.append(instant.astimezone(offset))
        values.append(instant.replace(tzinfo=None))
    sql = "SELECT array_agg(extract(epoch FROM t)::text ORDER BY n) FROM unnest($1::timestamptz[]) WITH ORDINALITY AS u(t, n)"
    mine = await store.fetchval(sql, values)
    theirs = (await db_query(sql, values))[0][0]
    assert mine == theirs


@settings(max_examples=300, deadline=None)
# Naive values a day inside datetime's range: Python itself cannot put a local time at its
# very edges in UTC (nor can asyncpg).
@given(
    st.one_of(
        _aware,
        st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
        st.dates(min_value=date(1, 1, 2), max_value=date(9999, 12, 30)),
        st.just(datetime.max),
        st.just(datetime.min),
    )
)
def test_timestamptz_codec_round_trips(value: Any) -> None:
    """Decoding what the encoder sends gives back the same instant, in UTC."""
    if isinstance(value, datetime) and value in (datetime.max, datetime.min):
        expected = 2**63 - 1 if value == datetime.max else -(2**63)
    else:
        if not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)
        instant = value.astimezone(UTC)
        expected = (instant - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert encode_timestamptz(value) == (expected,)
    decoded = decode_timestamptz((expected,))
    if expected not in (2**63 - 1, -(2**63)):
        assert decoded == value.astimezone(UTC) and decoded.tzinfo is not None


async def test_timestamps_round_trip_through_the_database(
    store: Store, run_id: str, db_query: Any
) -> None:
    """Timestamps written and read by the store's codec are the instants a plain connection sees."""
    t0 = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-7)))
    t1 = t0 + timedelta(seconds=2.5)
    await store.write_batch(
        Batch(
            run_id + "-a",
            tuple([outcome(0, run_id=run_id, started_at=t0, finished_at=t1)]),
            FlushReason.SIZE,
        ),
        run_id=run_id,
        direct=True,
    )
    plain = await db_query(
        "SELECT started_at, finished_at, duration_ms FROM arcflow.outcomes WHERE run_id = $1",
        run_id,
    )
    assert (plain[0]["started_at"], plain[0]["finished_at"], plain[0]["duration_ms"]) == (
        t0,
        t1,
        2500.0,
    )
    mine = await store.fetch("SELECT started_at FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert mine[0]["started_at"] == t0 and mine[0]["started_at"].utcoffset() == timedelta(0)
    assert await store.fetchval("SELECT 'infinity'::timestamptz") == datetime.max
    assert await store.fetchval("SELECT $1::timestamptz = now()", datetime.max) is False


# -- row encoding ---------------------------------------------------------------------------------


def reference_row(o: Outcome, batch_id: str) -> tuple[Any, ...]:
    dumps = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731
    return (
        o.run_id, o.scenario_id, o.epoch, o.attempt, o.status.value, o.final, o.score,
        None if o.output is None else dumps(o.output), o.error_type, o.error_message,
        o.started_at, o.finished_at, o.duration_ms, dumps(dict(o.executor)), o.worker,
        o.scenario_hash, batch_id, None if o.usage is None else dumps(dict(o.usage)),
        list(o.tags),
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    json_values,
    st.sampled_from(list(Status)),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    st.lists(st.text(max_size=5), max_size=3),
    st.integers(0, 10**7),
)
def test_encode_outcome_matches_reference(
    output: Any, status: Status, executor: dict[str, Any], tags: list[str], micros: int
) -> None:
    """encode_outcome gives the row a straightforward reference encoding gives."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    o = Outcome(
        "r", "s", 2, status, t0, t0 + timedelta(microseconds=micros), score=0.5, output=output,
        executor=executor, worker="w", final=False, scenario_hash="h", tags=tags,
        usage={"cost_usd": 0.25, "input_tokens": 3} if micros % 2 else None,
    )  # fmt: skip
    assert encode_outcome(o, "b1") == reference_row(o, "b1")
    assert encode_outcome(o, "b1", tags=False) == reference_row(o, "b1")[:-1]


async def test_tcp_connections_probe_for_half_open_peers(dsn: str) -> None:
    """A store's TCP connection has keepalive probes and a user timeout of tcp_keepalive seconds."""
    import socket

    import trio_asyncio

    async with trio_asyncio.open_loop():
        s = Store(dsn, tcp_keepalive=4)
        await s.connect()
        try:
            sock = s._conn._transport.get_extra_info("socket")  # type: ignore[union-attr]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 4
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 4000
        finally:
            await s.aclose()


async def test_a_stalled_database_is_named_in_the_error(dsn: str) -> None:
    """A statement that gets no answer fails transiently, saying so (not a bare 'TimeoutError: ')."""
    import trio_asyncio

    from arcflow.errors import TransientWriteError

    async with trio_asyncio.open_loop() as loop:
        # As in the runtime: the future asyncpg orphans when the connection is dropped is logged.
        loop.set_exception_handler(lambda _loop, _context: None)
        s = Store(dsn, statement_timeout=0.5)
        try:
            with pytest.raises(TransientWriteError, match="no answer from the database within"):
                await s.fetchval("SELECT pg_sleep(5)")
        finally:
            await s.aclose()
