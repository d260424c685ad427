"""Producers: attempts, per-scenario timeouts and cancellation, against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

import arcflow
from arcflow.executors.process import ProcessExecutor
from arcflow.models import Scenario

SCRIPT = Path(__file__).resolve().parent / "scripts" / "scenario_proc.py"


class FlakyExecutor(arcflow.Executor):
    """Errors the first ``failures`` times a scenario is run, then passes."""

    kind = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}

    async def run(
        self, scenario: Scenario, context: arcflow.ExecutionContext
    ) -> arcflow.ExecutionResult:
        n = self.calls[scenario.id] = self.calls.get(scenario.id, 0) + 1
        assert context.attempt == n
        if scenario.input.get("verdict") == "failed":
            return arcflow.ExecutionResult(status=arcflow.Status.FAILED)
        if n <= self.failures:
            raise ConnectionError(f"flaky attempt {n}")
        return arcflow.ExecutionResult(status=arcflow.Status.PASSED, score=1.0)


async def rows(db_query: Any, run_id: str) -> list[tuple[str, int, str, bool]]:
    result = await db_query(
        "SELECT scenario_id, attempt, status, final FROM arcflow.outcomes WHERE run_id = $1"
        " ORDER BY scenario_id, attempt",
        run_id,
    )
    return [(r["scenario_id"], r["attempt"], r["status"], r["final"]) for r in result]


async def test_errors_twice_then_passes(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """An executor that errors twice then passes gives three rows, the last final and passed."""
    async with arcflow.Runtime(
        FlakyExecutor(failures=2),
        dsn,
        run_id=run_id,
        attempts=3,
        attempt_backoff=0.01,
        data_dir=tmp_path,
    ) as rt:
        await rt.submit(Scenario(id="a"))
    assert await rows(db_query, run_id) == [
        ("a", 1, "error", False),
        ("a", 2, "error", False),
        ("a", 3, "passed", True),
    ]
    assert rt.statistics().completed == 1


async def test_failed_is_never_retried(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A scenario that ran and did not pass is final at once, whatever --attempts says."""
    async with arcflow.Runtime(
        FlakyExecutor(failures=0),
        dsn,
        run_id=run_id,
        attempts=5,
        attempt_backoff=0.01,
        data_dir=tmp_path,
    ) as rt:
        await rt.submit(Scenario(id="f", input={"verdict": "failed"}))
    assert await rows(db_query, run_id) == [("f", 1, "failed", True)]


async def test_attempts_exhausted_last_error_is_final(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """When every attempt errors, the last one is the final outcome."""
    async with arcflow.Runtime(
        FlakyExecutor(failures=9),
        dsn,
        run_id=run_id,
        attempts=2,
        attempt_backoff=0.01,
        data_dir=tmp_path,
    ) as rt:
        await rt.submit(Scenario(id="e"))
    assert await rows(db_query, run_id) == [("e", 1, "error", False), ("e", 2, "error", True)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_timeout_kills_the_process(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Past its timeout a scenario is status timeout and its process is gone; timeout_s wins over --timeout."""
    executor = ProcessExecutor([sys.executable, str(SCRIPT)], kill_grace_s=0.2)
    async with arcflow.Runtime(executor, dsn, run_id=run_id, timeout=30, data_dir=tmp_path) as rt:
        await rt.submit(
            Scenario(
                id="slow",
                input={"mode": "sleep", "seconds": 60, "pid_file": str(tmp_path / "slow.pid")},
                timeout_s=0.5,
            )
        )
        await rt.submit(Scenario(id="quick", input={"mode": "pass"}))
    result = await db_query(
        "SELECT scenario_id, status, error_type, error_message, executor FROM arcflow.outcomes"
        " WHERE run_id = $1 ORDER BY 1",
        run_id,
    )
    assert [(r["scenario_id"], r["status"]) for r in result] == [
        ("quick", "passed"),
        ("slow", "timeout"),
    ]
    assert "0.5s" in result[1]["error_message"]
    pid = int((tmp_path / "slow.pid").read_text())
    assert not _alive(pid)
    # The timed-out outcome still says which process it was.
    assert json.loads(result[1]["executor"])["pid"] == pid


async def test_cancelling_100_running_scenarios_stops_all(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Cancelling the host with 100 running process scenarios kills every process; all are recorded."""
    executor = ProcessExecutor([sys.executable, str(SCRIPT)], kill_grace_s=0.5)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    with trio.CancelScope() as host:
        async with arcflow.Runtime(
            executor, dsn, run_id=run_id, concurrency=100, batch_size=1000, data_dir=tmp_path
        ) as rt:
            for i in range(100):
                await rt.submit(
                    Scenario(
                        id=f"s{i:03d}",
                        input={
                            "mode": "sleep",
                            "seconds": 120,
                            "pid_file": str(pid_dir / f"{i}.pid"),
                        },
                    )
                )
            with trio.fail_after(60):
                while len(list(pid_dir.iterdir())) < 100 or rt.statistics().running < 100:
                    await trio.sleep(0.05)
            host.cancel()
            await trio.sleep_forever()
    assert host.cancelled_caught
    pids = [int(p.read_text()) for p in pid_dir.iterdir() if p.read_text()]
    assert len(pids) == 100
    assert [p for p in pids if _alive(p)] == []
    result = await rows(db_query, run_id)
    assert len(result) == 100
    assert {(status, final) for _s, _a, status, final in result} == {("cancelled", False)}


async def nap(scenario: Scenario) -> None:
    """Sleeps input.sleep seconds (I/O-bound work)."""
    await trio.sleep(scenario.input["sleep"])


async def test_thousand_producers_keep_every_slot_busy(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """1,000 producers run 1,000 sleeping scenarios at once: all running together, all recorded."""
    peak = 0

    def watch(_outcome: arcflow.Outcome) -> None:
        nonlocal peak
        peak = max(peak, rt.statistics().running)

    rt = arcflow.Runtime(
        arcflow.PythonExecutor(nap),
        dsn,
        run_id=run_id,
        concurrency=1000,
        batch_size=500,
        flush_interval=1,
        data_dir=tmp_path,
        on_outcome=watch,
    )
    async with rt:
        for i in range(2000):
            await rt.submit(Scenario(id=f"s{i:04d}", input={"sleep": 0.5}))
    assert peak >= 990  # no waiting for a group: a finished slot is refilled at once
    result = await db_query("SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert result[0]["c"] == 2000


async def test_host_cancel_records_every_accepted_scenario(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A cancelled trio host: every accepted scenario has a row, running and queued ones cancelled."""
    accepted: list[str] = []
    with trio.CancelScope() as host:
        async with arcflow.Runtime(
            arcflow.PythonExecutor(nap),
            dsn,
            run_id=run_id,
            concurrency=4,
            work_buffer=20,
            data_dir=tmp_path,
        ) as rt:

            async def submitter(k: int) -> None:
                for i in range(100):
                    sid = f"t{k}-{i:03d}"
                    await rt.submit(Scenario(id=sid, input={"sleep": 30 if i else 0.01}))
                    accepted.append(sid)

            async with trio.open_nursery() as nursery:
                for k in range(5):
                    nursery.start_soon(submitter, k)
                with trio.fail_after(30):
                    while rt.statistics().work_queue < 20 or rt.statistics().running < 4:
                        await trio.sleep(0.01)
                host.cancel()
    assert host.cancelled_caught
    result = await db_query(
        "SELECT scenario_id, status, final FROM arcflow.outcomes WHERE run_id = $1", run_id
    )
    by_id = {r["scenario_id"]: (r["status"], r["final"]) for r in result}
    assert sorted(by_id) == sorted(accepted)
    statuses = {status for status, _final in by_id.values()}
    assert statuses <= {"passed", "cancelled"}
    assert all(not final for status, final in by_id.values() if status == "cancelled")
    # The 30 s scenarios (all but each submitter's first) were running or queued: all cancelled.
    # A 10 ms one may pass, even if it was still running when the host cancelled.
    slow = [sid for sid in accepted if not sid.endswith("-000")]
    assert len(slow) >= 20
    assert all(by_id[sid] == ("cancelled", False) for sid in slow)
