"""Embedding in a trio host: arcflow.open_runtime, record()/submit() from many tasks, cancellation, backpressure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio
import trio.testing

import arcflow
from arcflow.testing import FailingExecutor, make_outcome


async def test_open_runtime_is_a_runtime_and_record_only_needs_no_executor(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """open_runtime() without an executor records outcomes; submit() is refused; the exit drains."""
    rt = arcflow.open_runtime(
        db=dsn, run_id=run_id, batch_size=10, flush_interval=600, data_dir=tmp_path
    )
    assert isinstance(rt, arcflow.Runtime)
    async with rt:
        for i in range(25):
            await rt.record(make_outcome(run_id, f"o{i}", score=i / 25))
        rt.record_nowait(make_outcome(run_id, "nowait", status="failed"))
        with pytest.raises(arcflow.RuntimeClosed, match="no executor"):
            await rt.submit(arcflow.Scenario(id="x"))
    rows = await db_query(
        "SELECT scenario_id, status, score FROM arcflow.outcomes WHERE run_id = $1", run_id
    )
    assert len(rows) == 26
    assert {r["scenario_id"]: r["status"] for r in rows}["nowait"] == "failed"
    stats = rt.statistics()
    assert stats.written == 26
    assert stats.by_flush_reason == {"size": 2, "shutdown": 1}  # 10 + 10 by size, 6 at the exit


async def test_trio_host_recording_from_many_tasks_then_cancelled_writes_every_accepted_outcome(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A trio host recording from 40 tasks is cancelled: every outcome whose record() returned is written."""
    accepted: set[str] = set()
    enough = trio.Event()
    with trio.CancelScope() as host:
        async with arcflow.open_runtime(
            db=dsn, run_id=run_id, batch_size=64, flush_interval=600, data_dir=tmp_path
        ) as rt:

            async def worker(k: int) -> None:
                i = 0
                while True:
                    sid = f"w{k:02d}-{i:05d}"
                    await rt.record(make_outcome(run_id, sid, score=1.0))
                    accepted.add(sid)  # no checkpoint between the accepted send and this line
                    if len(accepted) >= 3000:
                        enough.set()
                    i += 1

            async def cancel_later() -> None:
                await enough.wait()
                host.cancel()

            async with trio.open_nursery() as nursery:
                for k in range(40):
                    nursery.start_soon(worker, k)
                nursery.start_soon(cancel_later)
    assert host.cancelled_caught
    rows = await db_query("SELECT scenario_id FROM arcflow.outcomes WHERE run_id = $1", run_id)
    written = {r["scenario_id"] for r in rows}
    assert len(rows) == len(written)  # no duplicates
    assert written == accepted
    assert rt.statistics().written == len(accepted)
    run = await db_query("SELECT status FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "failed"  # the host's block ended by a cancellation


async def test_trio_host_submitting_from_many_tasks_then_cancelled_writes_every_outcome(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Cancelled while scenarios run: every accepted scenario has a row; running and queued ones cancelled."""
    executor = FailingExecutor(r"-hang$", mode="hang", delay=0.01)
    accepted: list[str] = []
    with trio.move_on_after(1.0) as host:
        async with arcflow.open_runtime(
            executor,
            dsn,
            run_id=run_id,
            concurrency=8,
            batch_size=20,
            flush_interval=600,
            data_dir=tmp_path,
        ) as rt:

            async def worker(k: int) -> None:
                for i in range(10_000):
                    sid = f"w{k}-{i}" + ("-hang" if i % 50 == 7 else "")
                    await rt.submit(arcflow.Scenario(id=sid))
                    accepted.append(sid)

            async with trio.open_nursery() as nursery:
                for k in range(16):
                    nursery.start_soon(worker, k)
    assert host.cancelled_caught
    stats = rt.statistics()
    rows = await db_query(
        "SELECT scenario_id, status, final FROM arcflow.outcomes WHERE run_id = $1", run_id
    )
    by_id = {r["scenario_id"]: r for r in rows}
    assert len(by_id) == len(rows) == sum(stats.by_status.values())  # nothing produced is lost
    assert set(by_id) == set(accepted)  # every accepted scenario has its row
    ran = {sid for sid, _attempt in executor.calls}
    assert ran <= set(by_id)
    # Accepted but never started: recorded cancelled, not final (a resume runs them).
    assert all(
        by_id[sid]["status"] == "cancelled" and not by_id[sid]["final"] for sid in set(by_id) - ran
    )
    hanging = {sid for sid in ran if sid.endswith("-hang")}
    assert hanging, "some hanging scenarios were running at the cancel"
    assert all(by_id[sid]["status"] == "cancelled" for sid in hanging)
    assert stats.by_status.get("passed", 0) == len(ran - hanging)


async def _lock_outcomes(dsn: str) -> tuple[Any, Any]:
    """Take an ACCESS EXCLUSIVE lock on arcflow.outcomes from another connection: writes stall."""
    import trio_asyncio

    conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(dsn)
    tx = conn.transaction()
    await trio_asyncio.aio_as_trio(tx.start)()
    await trio_asyncio.aio_as_trio(conn.execute)(
        "LOCK TABLE arcflow.outcomes IN ACCESS EXCLUSIVE MODE"
    )
    return conn, tx


@pytest.mark.parametrize("kind", ["record", "submit"])
async def test_trio_backpressure_stalled_writer_makes_hand_over_wait_and_nowait_raise(
    kind: str, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A writer stalled on a real table lock: submit()/record() wait, their _nowait twins raise."""
    import trio_asyncio

    async with trio_asyncio.open_loop():
        await db_query("SELECT 1")  # the schema exists before we lock its table
        async with arcflow.open_runtime(db=dsn, run_id=run_id + "-warm", data_dir=tmp_path):
            pass
        conn, tx = await _lock_outcomes(dsn)
        executor = FailingExecutor() if kind == "submit" else None
        accepted = 0
        async with arcflow.open_runtime(
            executor,
            dsn,
            run_id=run_id,
            batch_size=5,
            concurrency=2,
            work_buffer=4,
            outcome_buffer=3,
            batch_buffer=1,
            flush_interval=600,
            data_dir=tmp_path,
        ) as rt:

            async def hand_over(i: int) -> None:
                if kind == "submit":
                    await rt.submit(arcflow.Scenario(id=f"s{i}"))
                else:
                    await rt.record(make_outcome(run_id, f"s{i}"))

            with trio.move_on_after(1.5) as waited:
                while True:
                    await hand_over(accepted)
                    accepted += 1
            assert waited.cancelled_caught, "the hand-over never waited"
            assert accepted > 0
            stats = rt.statistics()
            assert stats.written == 0
            with pytest.raises(trio.WouldBlock):  # arcflow.PipelineFull is a trio.WouldBlock too
                if kind == "submit":
                    rt.submit_nowait(arcflow.Scenario(id="one-more"))
                else:
                    rt.record_nowait(make_outcome(run_id, "one-more"))
            # the lock goes away: the waiting hand-over completes
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hand_over, accepted)
                await trio.testing.wait_all_tasks_blocked()  # the hand-over waits for room
                await trio_asyncio.aio_as_trio(tx.rollback)()
            accepted += 1
        await trio_asyncio.aio_as_trio(conn.close)()
    rows = await db_query("SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert rows[0]["c"] == accepted
