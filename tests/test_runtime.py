"""The runtime end to end against a real PostgreSQL: rows, batches, idempotency, supervision."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio

import arcflow
from arcflow.config import SupervisorConfig
from arcflow.errors import RestartIntensityExceeded
from arcflow.journal import SpillJournal
from arcflow.models import Batch, FlushReason, Scenario, Status
from arcflow.store import Store


async def judge(scenario: Scenario) -> dict[str, Any] | None:
    """Passes even inputs, fails odd ones, raises on negatives."""
    n = scenario.input["n"]
    if n < 0:
        raise ValueError(f"negative input {n}")
    if n % 2:
        return {"status": "failed", "score": 0.0, "output": {"n": n}}
    return {"status": "passed", "score": 1.0, "output": {"n": n}}


def judge_sync(scenario: Scenario) -> None:
    """A sync executor function (runs in a worker thread)."""
    if scenario.input.get("boom"):
        raise KeyError("boom")


async def test_n_scenarios_n_rows(dsn: str, run_id: str, db_query: Any, tmp_path: Path) -> None:
    """N scenarios give N rows with the right statuses, in ceil(N / batch size) transactions."""
    n, size = 53, 10
    async with arcflow.Runtime(
        arcflow.PythonExecutor(judge),
        dsn,
        run_id=run_id,
        batch_size=size,
        concurrency=4,
        data_dir=tmp_path,
    ) as rt:
        for i in range(n):
            await rt.submit(Scenario(id=f"s{i}", input={"n": -1 if i == 7 else i}, tags=["t"]))
    stats = rt.statistics()
    rows = await db_query(
        "SELECT scenario_id, status, error_type, error_message, final, attempt, tags, batch_id"
        " FROM arcflow.outcomes WHERE run_id = $1",
        run_id,
    )
    assert len(rows) == n
    by_id = {r["scenario_id"]: r for r in rows}
    assert by_id["s7"]["status"] == "error"
    assert by_id["s7"]["error_type"] == "ValueError"
    assert "negative input" in by_id["s7"]["error_message"]
    assert by_id["s2"]["status"] == "passed" and by_id["s3"]["status"] == "failed"
    assert all(r["final"] and r["attempt"] == 1 and r["tags"] == ["t"] for r in rows)
    assert len({r["batch_id"] for r in rows}) == math.ceil(n / size)
    assert stats.write_transactions == math.ceil(n / size)
    assert stats.written == n and stats.dead_lettered == 0
    assert stats.by_flush_reason == {"size": n // size, "shutdown": 1}
    batches = await db_query("SELECT count(*) AS c FROM arcflow.batches WHERE run_id = $1", run_id)
    assert batches[0]["c"] == math.ceil(n / size)
    run = await db_query("SELECT status, summary FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "finished"


async def test_sync_function_runs_in_thread(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A sync function is supported; its exception is an error outcome, not a crash."""
    async with arcflow.Runtime(
        "python:test_runtime:judge_sync", dsn, run_id=run_id, batch_size=5, data_dir=tmp_path
    ) as rt:
        await rt.submit(Scenario(id="ok"))
        await rt.submit(Scenario(id="bad", input={"boom": True}))
    rows = await db_query(
        "SELECT scenario_id, status, error_type FROM arcflow.outcomes WHERE run_id = $1 ORDER BY 1",
        run_id,
    )
    assert [(r["scenario_id"], r["status"], r["error_type"]) for r in rows] == [
        ("bad", "error", "KeyError"),
        ("ok", "passed", None),
    ]


async def test_rewriting_a_batch_does_not_duplicate(dsn: str, run_id: str, db_query: Any) -> None:
    """Writing the same outcomes twice stores each key once and reports 0 new rows."""
    import trio_asyncio
    from strategies import outcome

    outcomes = [outcome(i, run_id=run_id) for i in range(20)]
    async with trio_asyncio.open_loop():
        store = Store(dsn)
        await store.migrate()
        first = await store.write_batch(
            Batch(run_id + "-a", tuple(outcomes), FlushReason.SIZE), run_id=run_id
        )
        again = await store.write_batch(
            Batch(run_id + "-b", tuple(outcomes), FlushReason.SIZE), run_id=run_id
        )
        await store.aclose()
    assert (first, again) == (20, 0)
    rows = await db_query("SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert rows[0]["c"] == 20


async def test_backpressure_bounds_every_channel(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A stalled writer fills the bounded channels; submit_nowait raises; nothing is lost."""
    import asyncpg
    import trio_asyncio

    async with trio_asyncio.open_loop():
        # Make sure the schema exists, then really stall writes with a table lock.
        store = Store(dsn)
        await store.migrate()
        await store.aclose()
        locker = await trio_asyncio.aio_as_trio(asyncpg.connect)(dsn)
        tx = locker.transaction()
        await trio_asyncio.aio_as_trio(tx.start)()
        await trio_asyncio.aio_as_trio(locker.execute)(
            "LOCK TABLE arcflow.outcomes IN ACCESS EXCLUSIVE MODE"
        )
        accepted = 0
        try:
            async with arcflow.Runtime(
                arcflow.PythonExecutor(judge),
                dsn,
                run_id=run_id,
                batch_size=5,
                concurrency=2,
                work_buffer=4,
                outcome_buffer=3,
                batch_buffer=1,
                writer_connections=2,
                data_dir=tmp_path,
            ) as rt:
                with trio.move_on_after(2):
                    while True:
                        await rt.submit(Scenario(id=f"s{accepted}", input={"n": accepted}))
                        accepted += 1
                stats = rt.statistics()
                # each of the 2 writer connections holds a batch, 1 batch queued, the batcher
                # holds a full batch (5), outcome channel full (3), producers blocked holding
                # 1 each, work channel full (4).
                assert stats.work_queue == 4
                assert stats.outcome_queue == 3
                assert stats.batch_queue == 1
                assert stats.written == 0
                assert accepted == 2 * 5 + 5 + 5 + 3 + 2 + 4
                with pytest.raises(trio.WouldBlock):
                    rt.submit_nowait(Scenario(id="one-more", input={"n": 0}))
                await trio_asyncio.aio_as_trio(tx.rollback)()
        finally:
            # Release the lock even when an assertion failed, or every later test would wait on it.
            locker.terminate()
    rows = await db_query("SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert rows[0]["c"] == accepted


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
async def test_writer_crash_is_restarted_and_batch_written_once(
    dsn: str,
    run_id: str,
    db_query: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    after_commit: bool,
) -> None:
    """A writer crashing on its first write, before or after the commit, is restarted; each row is stored once."""
    original = Store.write_batch
    crashes = 0

    async def flaky(self: Store, *args: Any, **kwargs: Any) -> int:
        nonlocal crashes
        inserted = await original(self, *args, **kwargs) if after_commit else 0
        if crashes == 0:
            crashes += 1
            raise RuntimeError("injected writer bug")
        return inserted if after_commit else await original(self, *args, **kwargs)

    monkeypatch.setattr(Store, "write_batch", flaky)
    async with arcflow.Runtime(
        arcflow.PythonExecutor(judge),
        dsn,
        run_id=run_id,
        batch_size=10,
        data_dir=tmp_path,
        supervisor=SupervisorConfig(max_restarts=3, backoff_base=0.01),
    ) as rt:
        for i in range(10):
            await rt.submit(Scenario(id=f"s{i}", input={"n": i}))
    stats = rt.statistics()
    assert crashes == 1
    assert stats.restarts == {"writer": 1}
    # After a commit the restarted writer finds every key stored: nothing new, nothing doubled.
    assert (stats.written, stats.already_written) == ((0, 10) if after_commit else (10, 0))
    rows = await db_query("SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert rows[0]["c"] == 10


async def test_writer_past_intensity_fails_and_keeps_outcomes_in_journal(
    dsn: str, run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer crashing past its restart intensity fails the run; its outcomes are in the journal."""

    async def broken(self: Store, *args: Any, **kwargs: Any) -> int:
        raise RuntimeError("injected permanent writer bug")

    monkeypatch.setattr(Store, "write_batch", broken)
    rt = arcflow.Runtime(
        arcflow.PythonExecutor(judge),
        dsn,
        run_id=run_id,
        batch_size=4,
        data_dir=tmp_path,
        supervisor=SupervisorConfig(max_restarts=2, backoff_base=0.01),
    )
    with pytest.raises(RestartIntensityExceeded, match="injected permanent writer bug"):
        async with rt:
            for i in range(10):
                await rt.submit(Scenario(id=f"s{i}", input={"n": i}))
            await trio.sleep(5)
    journal = SpillJournal(rt.journal_path)
    await journal.open()
    kept = [o.scenario_id async for b in journal.batches() for o in b.outcomes]
    assert sorted(kept) == sorted(f"s{i}" for i in range(10))


async def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    """A database that cannot be reached raises DatabaseUnavailable with the password redacted."""
    from arcflow.testing import free_port

    dsn = f"postgresql://user:s3cret-pw@127.0.0.1:{free_port()}/db"
    with pytest.raises(arcflow.DatabaseUnavailable) as info:
        async with arcflow.Runtime(arcflow.PythonExecutor(judge), dsn, data_dir=tmp_path):
            pass
    assert "s3cret-pw" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


async def test_statuses_enum_round_trip() -> None:
    """Status values are the documented strings."""
    assert {s.value for s in Status} == {"passed", "failed", "error", "timeout", "cancelled"}


async def test_a_stop_ends_when_the_running_scenarios_do_not_at_the_grace_period(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """request_stop() with short scenarios running: the block exits once they finish, not after grace."""

    async def short(scenario: Scenario) -> dict[str, Any]:
        await trio.sleep(0.05)
        return {"status": "passed"}

    rt = arcflow.Runtime(
        arcflow.PythonExecutor(short), dsn, run_id=run_id, data_dir=tmp_path, concurrency=4,
        grace=60.0,
    )  # fmt: skip
    async with rt:
        for i in range(4):
            await rt.submit(Scenario(id=f"s{i}"))
        while rt.statistics().running < 4:
            await trio.sleep(0.01)
        rt.request_stop()
        stopped_at = trio.current_time()
    assert trio.current_time() - stopped_at < 30  # the grace period (60 s) is not waited out
    rows = await db_query("SELECT status FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert [r["status"] for r in rows] == ["passed"] * 4
