"""Nothing lost: fault injection against a real PostgreSQL and real processes.

Each test causes a real fault (a stopped server, a proxy that drops and
stalls connections, SIGKILL, SIGINT, a poison record, a writer bug) and then
checks the database: every scenario has exactly one final outcome, no
duplicates, nothing missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import trio
from conftest import query
from faulty_exec import nul_output, slow
from proxy import FaultyProxy

import arcflow
from arcflow.config import BreakerConfig, RetryPolicy
from arcflow.models import Scenario
from arcflow.pytest_plugin import start_temporary_postgres
from arcflow.testing import TemporaryPostgres

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow


@pytest.fixture
def own_pg() -> Iterator[TemporaryPostgres]:
    """A PostgreSQL server of the test's own, which the test may stop and start."""
    server = start_temporary_postgres()
    try:
        yield server
    finally:
        server.cleanup()


def write_scenarios(path: Path, n: int, **input_fields: Any) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"s{i:05d}", "input": dict(input_fields)}) + "\n")
    return path


async def final_counts(dsn: str, run_id: str) -> dict[str, int]:
    rows = await query(
        dsn,
        "SELECT scenario_id, count(*) FILTER (WHERE final) AS finals, count(*) AS rows"
        " FROM arcflow.outcomes WHERE run_id = $1 GROUP BY scenario_id",
        run_id,
    )
    return {r["scenario_id"]: r["finals"] for r in rows}


FAST_RETRY = RetryPolicy(max_retries=2, base_delay=0.05, max_delay=0.2, max_elapsed=1.0)
FAST_BREAKER = BreakerConfig(failure_threshold=2, cooldown=0.5)


async def test_database_stopped_mid_run(
    own_pg: TemporaryPostgres, run_id: str, tmp_path: Path
) -> None:
    """DB down longer than the retry budget: breaker opens, journal used, then replayed; exactly once."""
    n = 400
    async with arcflow.Runtime(
        arcflow.PythonExecutor(slow),
        own_pg.dsn,
        run_id=run_id,
        batch_size=10,
        concurrency=8,
        flush_interval=0.3,
        retry=FAST_RETRY,
        breaker=FAST_BREAKER,
        data_dir=tmp_path,
        statement_timeout=2,
    ) as rt:

        async def outage() -> None:
            while rt.statistics().written < 60:
                await trio.sleep(0.05)
            await trio.to_thread.run_sync(own_pg.stop)
            while rt.statistics().spilled_batches < 3:
                await trio.sleep(0.05)
            await trio.sleep(1.0)  # well past the retry budget
            await trio.to_thread.run_sync(own_pg.start)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(outage)
            for i in range(n):
                await rt.submit(Scenario(id=f"s{i:05d}", input={"sleep": 0.01}))
    stats = rt.statistics()
    counts = await final_counts(own_pg.dsn, run_id)
    assert len(counts) == n and set(counts.values()) == {1}
    rows = await query(
        own_pg.dsn, "SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id
    )
    assert rows[0]["c"] == n
    assert stats.spilled_batches >= 3 and stats.replayed_outcomes >= 30
    assert stats.breaker_transitions.get("closed->open", 0) >= 1
    assert stats.breaker_transitions.get("half_open->closed", 0) >= 1
    assert stats.breaker_state == "closed"
    assert stats.journal_batches == 0 and rt.journal_path.stat().st_size == 0


async def test_proxy_drops_and_stalls(dsn: str, run_id: str, tmp_path: Path) -> None:
    """Through a proxy dropping and stalling connections at random (seeded): one row per scenario."""
    target = urlsplit(dsn)
    proxy = FaultyProxy(
        target_port=target.port or 5432,
        target_host=target.hostname or "127.0.0.1",
        seed=1234,
        drop_rate=0.03,
        stall_rate=0.03,
        enabled=False,
    )
    n = 600
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        user = target.netloc.rpartition("@")[0]
        proxied = target._replace(
            netloc=f"{user + '@' if user else ''}127.0.0.1:{proxy.port}"
        ).geturl()
        async with arcflow.Runtime(
            arcflow.PythonExecutor(slow),
            proxied,
            run_id=run_id,
            batch_size=20,
            concurrency=16,
            flush_interval=0.2,
            retry=FAST_RETRY,
            breaker=FAST_BREAKER,
            data_dir=tmp_path,
            statement_timeout=1.0,
        ) as rt:
            proxy.enabled = True
            for i in range(n):
                await rt.submit(Scenario(id=f"s{i:05d}", input={"sleep": 0.005}))
            # Leave the block with a healthy network so the final replay cannot be starved.
            proxy.enabled = False
        nursery.cancel_scope.cancel()
    assert proxy.drops + proxy.stalls > 0, "the proxy injected no fault"
    counts = await final_counts(dsn, run_id)
    assert len(counts) == n and set(counts.values()) == {1}
    rows = await query(dsn, "SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert rows[0]["c"] == n
    assert rt.statistics().journal_batches == 0


async def test_poison_record_is_dead_lettered(dsn: str, run_id: str, tmp_path: Path) -> None:
    """A NUL in one output: good outcomes written, the bad one dead-lettered, breaker stays closed."""
    async with arcflow.Runtime(
        arcflow.PythonExecutor(nul_output), dsn, run_id=run_id, batch_size=50, data_dir=tmp_path
    ) as rt:
        for i in range(50):
            await rt.submit(Scenario(id=f"s{i:02d}", input={"poison": i == 17}))
    stats = rt.statistics()
    assert stats.written == 49 and stats.dead_lettered == 1
    assert stats.breaker_transitions == {} and stats.breaker_state == "closed"
    good = await query(dsn, "SELECT scenario_id FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert sorted(r["scenario_id"] for r in good) == [f"s{i:02d}" for i in range(50) if i != 17]
    dead = await query(dsn, "SELECT * FROM arcflow.dead_letters WHERE run_id = $1", run_id)
    assert len(dead) == 1
    assert dead[0]["scenario_id"] == "s17" and dead[0]["sqlstate"] == "22P05"
    assert json.loads(dead[0]["payload"])["output"] == {"text": "bad\x00byte"}
    assert dead[0]["attempts"] > 1  # found by bisection
    assert rt.summary()["dead_lettered"] == 1


def _cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    return subprocess.Popen(
        [sys.executable, "-m", "arcflow", "run", *args],
        cwd=kwargs.get("cwd", ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _wait_rows(dsn: str, run_id: str, at_least: int, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while True:
            try:
                rows = await query(
                    dsn, "SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id
                )
            except asyncpg.exceptions.UndefinedTableError:  # the run has not created it yet
                rows = [{"c": 0}]
            if rows[0]["c"] >= at_least:
                return
            await trio.sleep(0.1)


async def test_poison_cli_exits_zero(dsn: str, run_id: str, tmp_path: Path) -> None:
    """The CLI run with a poison record exits 0 and its summary counts the dead letter."""
    path = tmp_path / "s.jsonl"
    path.write_text(
        "\n".join(json.dumps({"id": f"p{i}", "input": {"poison": i == 3}}) for i in range(10))
        + "\n"
    )
    proc = _cli(
        str(path),
        "--executor",
        "python:faulty_exec:nul_output",
        "--db",
        dsn,
        "--run-id",
        run_id,
        "--json",
        "--data-dir",
        str(tmp_path),
    )
    out, err = await trio.to_thread.run_sync(proc.communicate)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["written"] == 9 and summary["dead_lettered"] == 1


async def test_sigkill_then_resume(own_pg: TemporaryPostgres, run_id: str, tmp_path: Path) -> None:
    """SIGKILL while spilling during an outage, torn journal tail, --resume: exactly one final outcome each."""
    n = 300
    path = write_scenarios(tmp_path / "s.jsonl", n, sleep=0.02)
    args = [
        str(path),
        "--executor",
        "python:faulty_exec:slow",
        "--db",
        own_pg.dsn,
        "--run-id",
        run_id,
        "--batch-size",
        "10",
        "--concurrency",
        "8",
        "--flush-interval",
        "0.3",
        "--max-retries",
        "0",
        "--breaker-threshold",
        "1",
        "--breaker-cooldown",
        "30",
        "--data-dir",
        str(tmp_path),
        "--json",
    ]
    proc = _cli(*args)
    await _wait_rows(own_pg.dsn, run_id, 40)
    await trio.to_thread.run_sync(own_pg.stop)
    journal = arcflow.runtime.journal_path(tmp_path, run_id)
    with trio.fail_after(60):
        while not journal.exists() or journal.stat().st_size < 2000:
            await trio.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    await trio.to_thread.run_sync(proc.wait)
    # A kill can land mid-append; make sure a torn tail is there to be found.
    with journal.open("ab") as f:
        f.write(b"AFJ1\x00\x00\x10\x00\xde\xad")
    await trio.to_thread.run_sync(own_pg.start)
    before = await final_counts(own_pg.dsn, run_id)
    assert 0 < len(before) < n
    resume_args = [a for a in args if a not in ("--run-id", run_id)]
    resumed = _cli(*resume_args, "--resume", run_id)
    out, err = await trio.to_thread.run_sync(resumed.communicate)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    assert summary["replayed_outcomes"] >= 10, "the spilled outcomes were not replayed"
    counts = await final_counts(own_pg.dsn, run_id)
    assert len(counts) == n, f"missing: {n - len(counts)}"
    assert set(counts.values()) == {1}, "a scenario has more than one final outcome"
    assert list(tmp_path.glob("journal/*.torn-*")), "the torn tail was not detected"
    assert journal.stat().st_size == 0
    # The resumed run replayed the journal, skipped what was done and ran only the rest.
    done_before = len([s for s, c in before.items() if c == 1])
    assert summary["scenarios"] == n - done_before - summary["replayed_outcomes"]


async def test_sigint_finishes_and_writes(dsn: str, run_id: str, tmp_path: Path) -> None:
    """SIGINT mid-run: running scenarios finish, everything done is written, exit 0."""
    path = write_scenarios(tmp_path / "s.jsonl", 400, sleep=0.2)
    proc = _cli(
        str(path),
        "--executor",
        "python:faulty_exec:slow",
        "--db",
        dsn,
        "--run-id",
        run_id,
        "--batch-size",
        "1000",
        "--flush-interval",
        "60",
        "--concurrency",
        "10",
        "--data-dir",
        str(tmp_path),
        "--json",
    )
    await trio.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = await trio.to_thread.run_sync(proc.communicate)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert 0 < summary["completed"] < 400
    assert summary["by_flush_reason"] == {"shutdown": 1}
    rows = await query(
        dsn,
        "SELECT status, count(*) AS c FROM arcflow.outcomes WHERE run_id = $1 GROUP BY 1",
        run_id,
    )
    assert {r["status"]: r["c"] for r in rows} == {"passed": summary["completed"]}
    run = await query(dsn, "SELECT status FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "stopped"


async def test_second_sigint_cancels_running(dsn: str, run_id: str, tmp_path: Path) -> None:
    """A second SIGINT cancels running scenarios (recorded cancelled), still writes, exits non-zero."""
    path = write_scenarios(tmp_path / "s.jsonl", 50, sleep=60)
    proc = _cli(
        str(path),
        "--executor",
        "python:faulty_exec:slow",
        "--db",
        dsn,
        "--run-id",
        run_id,
        "--concurrency",
        "5",
        "--data-dir",
        str(tmp_path),
        "--json",
    )
    await trio.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    await trio.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _out, err = await trio.to_thread.run_sync(proc.communicate)
    assert proc.returncode == 130, err
    rows = await query(dsn, "SELECT status, final FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert len(rows) == 5
    assert {(r["status"], r["final"]) for r in rows} == {("cancelled", False)}


async def test_writer_bug_past_intensity_then_resume(dsn: str, run_id: str, tmp_path: Path) -> None:
    """A writer bug past the restart intensity: exit 1 naming the cause; --resume writes it all once."""
    path = write_scenarios(tmp_path / "s.jsonl", 60, sleep=0.001)
    code = (
        "import sys, arcflow.store.postgres as p\n"
        "async def broken(self, *a, **k):\n"
        "    raise RuntimeError('injected writer bug')\n"
        "p.Store.write_batch = broken\n"
        "from arcflow.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    args = [
        "run",
        str(path),
        "--executor",
        "python:faulty_exec:slow",
        "--db",
        dsn,
        "--batch-size",
        "10",
        "--data-dir",
        str(tmp_path),
    ]
    proc = await trio.run_process(
        [sys.executable, "-c", code, *args, "--run-id", run_id],
        env=env,
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "restart intensity exceeded" in err and "injected writer bug" in err
    assert "--resume" in err
    assert await final_counts(dsn, run_id) == {}
    resumed = await trio.run_process(
        [sys.executable, "-m", "arcflow", *args, "--resume", run_id, "--json"],
        env=env,
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    counts = await final_counts(dsn, run_id)
    assert len(counts) == 60 and set(counts.values()) == {1}


async def test_journal_cap_turns_into_backpressure(
    own_pg: TemporaryPostgres, run_id: str, tmp_path: Path
) -> None:
    """At the journal's size cap the writer stops pulling: producers wait, nothing dropped, all written later."""
    cap = 4096
    async with arcflow.Runtime(
        arcflow.PythonExecutor(slow),
        own_pg.dsn,
        run_id=run_id,
        batch_size=5,
        concurrency=2,
        work_buffer=4,
        outcome_buffer=2,
        flush_interval=0.1,
        journal_max_bytes=cap,
        retry=RetryPolicy(max_retries=0),
        breaker=BreakerConfig(failure_threshold=1, cooldown=0.3),
        data_dir=tmp_path,
        statement_timeout=2,
    ) as rt:
        await trio.to_thread.run_sync(own_pg.stop)
        accepted = 0
        with trio.move_on_after(4):
            while True:
                await rt.submit(Scenario(id=f"s{accepted:04d}", input={"sleep": 0.001}))
                accepted += 1
        stats = rt.statistics()
        assert stats.journal_bytes >= cap  # at the cap
        # Spilling stopped near the cap (at most one batch per writer connection past
        # it), and the pipeline behind the writer is full: backpressure, not growth.
        assert stats.journal_bytes < cap + rt.config.writer_connections * 2048
        assert stats.batch_queue == 1 and stats.work_queue == 4
        with pytest.raises(trio.WouldBlock):
            rt.submit_nowait(Scenario(id="one-more"))
        await trio.to_thread.run_sync(own_pg.start)
    counts = await final_counts(own_pg.dsn, run_id)
    assert len(counts) == accepted and set(counts.values()) == {1}
    assert rt.statistics().journal_batches == 0


@pytest.mark.parametrize(
    ("code", "text"),
    [
        ("ENOSPC", "No space left on device"),
        ("EROFS", "Read-only file system"),
        ("EIO", "Input/output error"),
        ("EDQUOT", "Disk quota exceeded"),
    ],
)
async def test_a_journal_that_refuses_writes_turns_into_backpressure(
    own_pg: TemporaryPostgres,
    run_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    text: str,
) -> None:
    """Database down and the journal's disk refusing writes (full, read-only, I/O error, quota):
    the writer holds its batches, intake waits, the first partial write is cut back, and once
    the disk takes writes again every outcome is kept and written."""
    import errno

    from arcflow.journal import SpillJournal

    real_write = os.write
    disk = {"full": False, "partial": 0}

    def journal_fd(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path))
        except OSError:
            return False

    def write(fd: int, data: Any) -> int:
        if disk["full"] and len(data) > 16 and journal_fd(fd):
            if disk["partial"] == 0:  # the first failing append gets half its bytes out
                disk["partial"] = real_write(fd, bytes(data)[: len(data) // 2])
                return disk["partial"]
            raise OSError(getattr(errno, code), text)
        return real_write(fd, data)

    monkeypatch.setattr("arcflow.journal.os.write", write)
    async with arcflow.Runtime(
        arcflow.PythonExecutor(slow),
        own_pg.dsn,
        run_id=run_id,
        batch_size=5,
        concurrency=2,
        work_buffer=4,
        outcome_buffer=2,
        flush_interval=0.1,
        retry=RetryPolicy(max_retries=0),
        breaker=BreakerConfig(failure_threshold=1, cooldown=0.3),
        data_dir=tmp_path,
        statement_timeout=2,
    ) as rt:
        await trio.to_thread.run_sync(own_pg.stop)
        disk["full"] = True
        accepted = 0
        with trio.move_on_after(4):
            while True:
                await rt.submit(Scenario(id=f"s{accepted:04d}", input={"sleep": 0.001}))
                accepted += 1
        stats = rt.statistics()
        assert stats.journal_write_errors >= 2 and text in (stats.journal_error or "")
        assert disk["partial"] > 0  # an append was cut short before the refusals
        assert stats.batch_queue == 1 and stats.work_queue == 4  # backpressure, not loss
        with pytest.raises(trio.WouldBlock):
            rt.submit_nowait(Scenario(id="one-more"))
        disk["full"] = False
        with trio.fail_after(20):
            while rt.statistics().journal_error is not None:
                await trio.sleep(0.05)
        # Nothing half-written was left in the file: it reopens clean, every entry valid.
        check = SpillJournal(rt.journal_path)
        await check.open()
        assert check.torn_bytes == 0 and check.pending_batches == rt.statistics().journal_batches
        await trio.to_thread.run_sync(own_pg.start)
    counts = await final_counts(own_pg.dsn, run_id)
    assert len(counts) == accepted and set(counts.values()) == {1}
    assert rt.statistics().journal_batches == 0 and rt.statistics().journal_error is None
    assert rt.statistics().dead_lettered == 0
