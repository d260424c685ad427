"""Embedding in an asyncio host: arcflow.aio.open_runtime from plain asyncio.run programs.

Each host program runs in a fresh interpreter (this file run as a script),
because the test process itself has trio-asyncio loaded (the fixtures use it),
and a host program must start from an untouched asyncio.  The host prints one
JSON line; the test checks it and the rows in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import arcflow
import arcflow.aio
from arcflow.testing import fetch, make_outcome

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def _run_host(*args: str, timeout: float = 180) -> dict[str, Any]:
    """Run one host program of this file in a fresh interpreter; its JSON answer."""
    env = {k: v for k, v in os.environ.items() if k != "ARCFLOW_DB"}
    proc = subprocess.run(
        [sys.executable, str(HERE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"host {args[0]} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


def _written(dsn: str, run_id: str) -> list[str]:
    rows = fetch(dsn, "SELECT scenario_id FROM arcflow.outcomes WHERE run_id = $1", run_id)
    return [r["scenario_id"] for r in rows]


# -- the tests --------------------------------------------------------------------------------------


def test_import_arcflow_leaves_the_host_asyncio_alone(dsn: str, tmp_path: Path) -> None:
    """After `import arcflow` (and after a runtime ran) asyncio.run, its loop, the policy and asyncpg are as before."""
    program = textwrap.dedent(
        """
        import asyncio, json, sys
        import asyncpg

        dsn, data_dir = sys.argv[1], sys.argv[2]

        async def loop_name():
            return type(asyncio.get_running_loop()).__name__

        async def plain_db():
            conn = await asyncpg.connect(dsn)
            try:
                return await conn.fetchval("SELECT 40 + 2")
            finally:
                await conn.close()

        def snapshot():
            return {
                "policy": id(asyncio.get_event_loop_policy()),
                "policy_type": type(asyncio.get_event_loop_policy()).__name__,
                "run": id(asyncio.run),
                "new_event_loop": id(asyncio.new_event_loop),
                "events_new_event_loop": id(asyncio.events.new_event_loop),
                "get_running_loop": id(asyncio.get_running_loop),
                "loop": asyncio.run(loop_name()),
                "new_loop_type": type(asyncio.new_event_loop()).__name__,
            }

        before = snapshot()
        import arcflow, arcflow.aio, arcflow.testing, arcflow.pytest_plugin  # noqa
        after_import = snapshot()
        trio_asyncio_loaded_by_import = "trio_asyncio" in sys.modules
        db_after_import = asyncio.run(plain_db())

        async def host():
            async with arcflow.aio.open_runtime(db=dsn, data_dir=data_dir) as rt:
                await rt.record(arcflow.testing.make_outcome(rt.run_id, "one"))
                return rt.run_id, await loop_name(), await plain_db()

        run_id, loop_inside, db_inside = asyncio.run(host())
        after_runtime = snapshot()
        print(json.dumps({
            "before": before, "after_import": after_import, "after_runtime": after_runtime,
            "trio_asyncio_loaded_by_import": trio_asyncio_loaded_by_import,
            "db_after_import": db_after_import, "db_inside": db_inside,
            "db_after_runtime": asyncio.run(plain_db()),
            "loop_inside": loop_inside, "run_id": run_id,
        }))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "ARCFLOW_DB"}
    proc = subprocess.run(
        [sys.executable, "-c", program, dsn, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["trio_asyncio_loaded_by_import"]
    assert got["after_import"] == got["before"]  # identical functions, policy and loop type
    assert got["db_after_import"] == got["db_inside"] == got["db_after_runtime"] == 42
    assert got["loop_inside"] == got["before"]["loop"]
    after = got["after_runtime"]  # trio-asyncio is loaded now; what the host sees is unchanged
    for key in ("policy", "policy_type", "run", "new_event_loop", "events_new_event_loop", "loop"):
        assert after[key] == got["before"][key], key
    assert after["new_loop_type"] == got["before"]["new_loop_type"]
    assert _written(dsn, got["run_id"]) == ["one"]


def test_asyncio_host_recording_from_many_tasks_then_cancelled_writes_every_accepted_outcome(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """asyncio.run host: 40 tasks record, its own asyncpg work runs beside, the host is cancelled; every accepted outcome is written."""
    got = _run_host("cancelled", dsn, run_id, str(tmp_path))
    assert got["cancelled"], "the host task ended by its cancellation"
    accepted, attempted = set(got["accepted"]), set(got["attempted"])
    assert len(accepted) >= 3000
    written = _written(dsn, run_id)
    assert len(written) == len(set(written))
    # Accepted means in the database.  A record() cancelled after its hand-over began
    # may still be delivered (documented), so the rows lie between the two sets.
    assert accepted <= set(written) <= attempted
    # the host's own database work ran on its own loop while the runtime ran
    assert got["host_queries_while_running"] > 0 and got["host_inserts"] > 0
    host_rows = fetch(dsn, "SELECT count(*) AS c FROM host_app.events WHERE run_id = $1", run_id)
    # (an INSERT interrupted by the cancellation may have committed before its answer came)
    assert got["host_inserts"] <= host_rows[0]["c"] <= got["host_inserts"] + 1
    run = fetch(dsn, "SELECT status FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "failed"  # ended by the host's cancellation


def test_asyncio_host_submits_scenarios_run_as_host_coroutines(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """asyncio host submit(): scenarios run on the host loop (HostExecutor, host's own pool); all written."""
    got = _run_host("submit", dsn, run_id, str(tmp_path))
    rows = fetch(
        dsn,
        "SELECT scenario_id, status, score, error_type FROM arcflow.outcomes WHERE run_id = $1",
        run_id,
    )
    assert len(rows) == got["submitted"] == 300
    by_id = {r["scenario_id"]: r for r in rows}
    assert by_id["s7"]["score"] == 14.0 and by_id["s7"]["status"] == "passed"
    assert by_id["s13"]["status"] == "error" and by_id["s13"]["error_type"] == "ZeroDivisionError"
    assert got["ran_on_host_loop"] is True
    assert got["statistics_written"] == 300


@pytest.mark.parametrize("kind", ["record", "submit"])
def test_asyncio_backpressure_stalled_writer_makes_hand_over_wait_and_nowait_raise(
    kind: str, dsn: str, run_id: str, tmp_path: Path
) -> None:
    """A writer stalled by the host's own table lock: await submit()/record() waits, *_nowait raises PipelineFull."""
    got = _run_host("backpressure", dsn, run_id, str(tmp_path), kind)
    assert got["nowait_raised"] == "PipelineFull"
    assert got["waited"] is True  # the awaited hand-over was still pending after a second
    assert got["written_while_locked"] == 0
    assert sorted(_written(dsn, run_id)) == sorted(got["accepted"])


def test_asyncio_host_cancelled_with_a_stalled_writer_loses_nothing(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """Cancelled while the writer is stalled: the bounded drain spills to the journal; the next runtime writes it all."""
    got = _run_host("spill", dsn, run_id, str(tmp_path))
    # bounded by shutdown_timeout (hand-over 1 s + drain 1 s), not by the lock
    assert got["cancel_took_s"] < 10
    assert got["journal_bytes_after_cancel"] > 0
    assert set(got["accepted"]) <= set(_written(dsn, run_id))
    run = fetch(dsn, "SELECT status FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "finished"  # the second runtime replayed and finished the run


def test_asyncio_host_startup_failure_is_raised_and_nothing_leaks(tmp_path: Path) -> None:
    """A database that cannot be reached: the `async with` raises DatabaseUnavailable and no thread is left."""
    got = _run_host("startup_failure", str(tmp_path))
    assert got["error"] == "DatabaseUnavailable"
    assert got["threads_left"] == []


def test_asyncio_host_cancelling_a_slow_start_stops_the_runtime(tmp_path: Path) -> None:
    """A start() stuck connecting (a server that never answers) is cancelled promptly; no thread is left."""
    got = _run_host("start_cancelled", str(tmp_path))
    assert got["error"] == "TimeoutError"
    assert got["took_s"] < 5  # not the 10 s connect timeout
    assert got["threads_left"] == []


# -- the host programs (run in a fresh interpreter: python tests/test_embed_asyncio.py NAME ...) --


async def _host_cancelled(dsn: str, run_id: str, data_dir: str) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    await pool.execute("CREATE SCHEMA IF NOT EXISTS host_app")
    await pool.execute("CREATE TABLE IF NOT EXISTS host_app.events (run_id text, n int)")
    accepted: list[str] = []
    attempted: list[str] = []
    host = {"queries_while_running": 0, "inserts": 0}
    enough = asyncio.Event()

    async def own_db_work(rt: arcflow.AsyncioRuntime) -> None:
        n = 0
        while True:
            await pool.execute("INSERT INTO host_app.events VALUES ($1, $2)", run_id, n)
            host["inserts"] += 1
            assert (
                await pool.fetchval(
                    "SELECT count(*) FROM host_app.events WHERE run_id = $1", run_id
                )
                == n + 1
            )
            if rt.running:
                host["queries_while_running"] += 1
            n += 1

    async def recorder(rt: arcflow.AsyncioRuntime, k: int) -> None:
        i = 0
        while True:
            sid = f"w{k:02d}-{i:05d}"
            attempted.append(sid)
            await rt.record(make_outcome(run_id, sid, score=1.0))
            accepted.append(sid)
            if len(accepted) >= 3000:
                enough.set()
            i += 1

    async def service() -> None:
        async with (
            arcflow.aio.open_runtime(
                db=dsn, run_id=run_id, batch_size=64, flush_interval=600, data_dir=data_dir
            ) as rt,
            asyncio.TaskGroup() as tg,
        ):
            tg.create_task(own_db_work(rt))
            for k in range(40):
                tg.create_task(recorder(rt, k))

    task = asyncio.create_task(service())
    await enough.wait()
    task.cancel()
    cancelled = False
    try:
        await task
    except asyncio.CancelledError:
        cancelled = True
    await pool.close()
    return {
        "cancelled": cancelled,
        "accepted": accepted,
        "attempted": attempted,
        "host_queries_while_running": host["queries_while_running"],
        "host_inserts": host["inserts"],
    }


async def _host_submit(dsn: str, run_id: str, data_dir: str) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    host_loop = asyncio.get_running_loop()
    on_host: list[bool] = []

    async def double(scenario: arcflow.Scenario) -> dict[str, Any]:
        on_host.append(asyncio.get_running_loop() is host_loop)
        n = scenario.input["n"]
        if n == 13:
            return {"score": 1 / 0}
        value = await pool.fetchval("SELECT $1::int * 2", n)
        return {"status": "passed", "score": value}

    submitted = 0
    async with arcflow.aio.open_runtime(
        arcflow.HostExecutor(double),
        dsn,
        run_id=run_id,
        concurrency=16,
        batch_size=50,
        data_dir=data_dir,
    ) as rt:

        async def client(k: int) -> None:
            nonlocal submitted
            for i in range(k, 300, 10):
                await rt.submit(arcflow.Scenario(id=f"s{i}", input={"n": i}))
                submitted += 1

        await asyncio.gather(*(client(k) for k in range(10)))
    stats = await rt.statistics()
    await pool.close()
    return {
        "submitted": submitted,
        "ran_on_host_loop": bool(on_host) and all(on_host),
        "statistics_written": stats.written,
    }


async def _lock_outcomes(dsn: str) -> tuple[asyncpg.Connection, Any]:
    conn = await asyncpg.connect(dsn)
    tx = conn.transaction()
    await tx.start()
    await conn.execute("LOCK TABLE arcflow.outcomes IN ACCESS EXCLUSIVE MODE")
    return conn, tx


async def _host_backpressure(dsn: str, run_id: str, data_dir: str, kind: str) -> dict[str, Any]:
    async with arcflow.aio.open_runtime(db=dsn, run_id=run_id + "-warm", data_dir=data_dir):
        pass  # the schema exists before we lock its table
    conn, tx = await _lock_outcomes(dsn)
    executor = arcflow.testing.FailingExecutor() if kind == "submit" else None
    runtime = arcflow.Runtime(
        executor,
        dsn,
        run_id=run_id,
        batch_size=5,
        concurrency=2,
        work_buffer=4,
        outcome_buffer=3,
        batch_buffer=1,
        flush_interval=600,
        data_dir=data_dir,
    )
    accepted: list[str] = []
    answer: dict[str, Any] = {}
    async with arcflow.AsyncioRuntime(runtime, buffer=4) as rt:

        def nowait(sid: str) -> None:
            if kind == "submit":
                rt.submit_nowait(arcflow.Scenario(id=sid))
            else:
                rt.record_nowait(make_outcome(run_id, sid))

        async def wait(sid: str) -> None:
            if kind == "submit":
                await rt.submit(arcflow.Scenario(id=sid))
            else:
                await rt.record(make_outcome(run_id, sid))

        # Fill everything: the writer, the queues, then the hand-over slots.
        for i in range(200):
            try:
                nowait(f"s{i}")
            except arcflow.PipelineFull as exc:
                answer["nowait_raised"] = type(exc).__name__
                break
            accepted.append(f"s{i}")
            await asyncio.sleep(0.01)  # let the runtime take what it can
        pending = asyncio.create_task(wait("last"))
        await asyncio.sleep(1.0)
        answer["waited"] = not pending.done()
        try:
            nowait("refused")
        except arcflow.PipelineFull:
            pass
        else:
            raise AssertionError("submit_nowait accepted while the pipeline was full")
        answer["written_while_locked"] = (await rt.statistics()).written
        await tx.rollback()  # the host's own connection releases the lock
        await pending
        accepted.append("last")
    await conn.close()
    answer["accepted"] = accepted
    return answer


async def _host_spill(dsn: str, run_id: str, data_dir: str) -> dict[str, Any]:
    async with arcflow.aio.open_runtime(db=dsn, run_id=run_id + "-warm", data_dir=data_dir):
        pass
    conn, tx = await _lock_outcomes(dsn)
    accepted: list[str] = []
    full = asyncio.Event()
    runtime = arcflow.Runtime(
        db=dsn,
        run_id=run_id,
        batch_size=5,
        outcome_buffer=3,
        batch_buffer=1,
        flush_interval=600,
        shutdown_timeout=1.0,
        grace=0.0,
        data_dir=data_dir,
    )  # grace=0: a cancelled drain's budget is shutdown_timeout + grace (see runtime._drain)
    rt = arcflow.AsyncioRuntime(runtime, buffer=8)

    async def service() -> None:
        async with rt:

            async def recorder(k: int) -> None:
                for i in range(1000):
                    await rt.record(make_outcome(run_id, f"w{k}-{i}"))
                    accepted.append(f"w{k}-{i}")

            async def watch() -> None:
                while True:  # every slot taken and the writer stuck: the pipeline is full
                    if rt.in_flight >= rt.buffer:
                        full.set()
                    await asyncio.sleep(0.05)

            async with asyncio.TaskGroup() as tg:
                tg.create_task(watch())
                for k in range(12):  # more recorders than hand-over slots
                    tg.create_task(recorder(k))

    task = asyncio.create_task(service())
    await asyncio.wait_for(full.wait(), 30)
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    took = loop.time() - started
    journal = arcflow.runtime.journal_path(data_dir, run_id)
    journal_bytes = journal.stat().st_size if journal.exists() else 0
    await tx.rollback()
    await conn.close()
    # The next runtime on this run (resuming it) replays the journal first.
    async with arcflow.aio.open_runtime(db=dsn, run_id=run_id, data_dir=data_dir, resume=True):
        pass
    return {
        "accepted": accepted,
        "cancel_took_s": took,
        "journal_bytes_after_cancel": journal_bytes,
        "spilled_by_bridge": rt.spilled_outcomes,
    }


async def _host_startup_failure(data_dir: str) -> dict[str, Any]:
    import threading

    from arcflow.testing import free_port

    error = ""
    try:
        async with arcflow.aio.open_runtime(
            db=f"postgresql://nobody@127.0.0.1:{free_port()}/none", data_dir=data_dir
        ):
            pass
    except arcflow.ArcflowError as exc:
        error = type(exc).__name__
    threads = [t.name for t in threading.enumerate() if t.name.startswith("arcflow-runtime")]
    return {"error": error, "threads_left": threads}


async def _host_start_cancelled(data_dir: str) -> dict[str, Any]:
    import threading

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)  # accept, never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    started = loop.time()
    error = ""
    rt = arcflow.aio.open_runtime(db=f"postgresql://x@127.0.0.1:{port}/x", data_dir=data_dir)
    try:
        await asyncio.wait_for(rt.start(), 0.5)
    except TimeoutError as exc:
        error = type(exc).__name__
    took = loop.time() - started
    server.close()
    threads = [t.name for t in threading.enumerate() if t.name.startswith("arcflow-runtime")]
    return {"error": error, "took_s": took, "threads_left": threads, "running": rt.running}


_HOSTS: dict[str, Any] = {
    "start_cancelled": _host_start_cancelled,
    "cancelled": _host_cancelled,
    "submit": _host_submit,
    "backpressure": _host_backpressure,
    "spill": _host_spill,
    "startup_failure": _host_startup_failure,
}


def main(argv: list[str]) -> None:
    """Run the host program ``argv[0]`` with plain ``asyncio.run`` and print its JSON answer."""
    result = asyncio.run(_HOSTS[argv[0]](*argv[1:]))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
