"""arcflow.testing and arcflow.pytest_plugin: the helpers users get for their own test suites."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

import arcflow
from arcflow.testing import FailingExecutor, ScenarioFailure, fetch, make_outcome, outcome_rows


async def test_failing_executor_fails_matching_scenarios_in_each_mode(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """FailingExecutor: ids matching the pattern end error / failed / timeout; the rest pass."""
    outcomes: dict[str, dict[str, Any]] = {}
    for mode, expected in (("error", "error"), ("failed", "failed"), ("hang", "timeout")):
        executor = FailingExecutor(r"^bad-", mode=mode)  # type: ignore[arg-type]
        rid = f"{run_id}-{mode}"
        async with arcflow.open_runtime(
            executor, dsn, run_id=rid, timeout=0.2, data_dir=tmp_path
        ) as rt:
            await rt.submit(arcflow.Scenario(id="bad-1"))
            await rt.submit(arcflow.Scenario(id="good-1"))
        rows = {r["scenario_id"]: r for r in outcome_rows(dsn, rid)}
        assert rows["bad-1"]["status"] == expected, mode
        assert rows["good-1"]["status"] == "passed" and rows["good-1"]["score"] == 1.0
        assert sorted(executor.calls) == [("bad-1", 1), ("good-1", 1)]
        outcomes[mode] = rows["bad-1"]
    assert outcomes["error"]["error_type"] == "ScenarioFailure"
    assert "matches '^bad-'" in outcomes["error"]["error_message"]
    assert outcomes["failed"]["score"] == 0.0


async def test_failing_executor_fail_attempts_makes_flaky_scenarios(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """fail_attempts=1 with attempts=2: a matching scenario errors once, then passes."""
    executor = FailingExecutor(lambda s: s.input.get("flaky", False), fail_attempts=1)
    async with arcflow.open_runtime(
        executor, dsn, run_id=run_id, attempts=2, attempt_backoff=0.01, data_dir=tmp_path
    ) as rt:
        await rt.submit(arcflow.Scenario(id="f", input={"flaky": True}))
        await rt.submit(arcflow.Scenario(id="s"))
    rows = outcome_rows(dsn, run_id)
    assert [(r["scenario_id"], r["attempt"], r["status"], r["final"]) for r in rows] == [
        ("f", 1, "error", False),
        ("f", 2, "passed", True),
        ("s", 1, "passed", True),
    ]


async def test_failing_executor_raises_and_validates_on_its_own() -> None:
    """FailingExecutor can be called directly; bad arguments are refused with a clear message."""
    executor = FailingExecutor(re.compile("x"), delay=0.001)
    context = arcflow.ExecutionContext(run_id="r", attempt=1, worker="w")
    with pytest.raises(ScenarioFailure):
        await executor.run(arcflow.Scenario(id="x1"), context)
    result = await executor.run(arcflow.Scenario(id="y1"), context)
    assert result.status is arcflow.Status.PASSED
    assert executor.describe() == {"kind": "failing", "pattern": "x", "mode": "error"}
    with pytest.raises(ValueError, match="mode"):
        FailingExecutor("x", mode="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fail_attempts"):
        FailingExecutor("x", fail_attempts=0)


def test_make_outcome_builds_a_finished_outcome() -> None:
    """make_outcome fills timings, status and defaults so record() takes it as is."""
    outcome = make_outcome("r", "s", "failed", score=0.5, duration_ms=250, tags=["a"])
    assert outcome.status is arcflow.Status.FAILED
    assert outcome.key == ("r", "s", 1, 1)  # run, scenario, epoch, attempt
    assert outcome.duration_ms == pytest.approx(250)
    assert outcome.tags == ("a",) and outcome.final and outcome.executor == {"kind": "record"}


async def test_fetch_works_from_trio_and_from_asyncio(dsn: str) -> None:
    """fetch() reads the database from a trio task and from inside a running asyncio loop."""
    assert fetch(dsn, "SELECT $1::int + 1 AS n", 41) == [{"n": 42}]

    async def inside_asyncio() -> list[dict[str, Any]]:
        return fetch(dsn, "SELECT 'a' AS x")

    rows = await trio.to_thread.run_sync(
        lambda: asyncio.Runner(loop_factory=asyncio.SelectorEventLoop).run(inside_asyncio())
    )
    assert rows == [{"x": "a"}]


@pytest.mark.parametrize("own_server", [False, True], ids=["ARCFLOW_TEST_DB", "throwaway-server"])
def test_pytest_plugin_fixtures_run_a_users_suite(
    own_server: bool, dsn: str, tmp_path: Path
) -> None:
    """A user's suite with -p arcflow.pytest_plugin: trio and asyncio tests get a database and read rows back."""
    suite = tmp_path / "test_user_suite.py"
    suite.write_text(
        textwrap.dedent(
            """
            import asyncio
            import pytest
            import arcflow, arcflow.aio
            from arcflow.testing import FailingExecutor, make_outcome

            @pytest.mark.trio
            async def test_trio_user(arcflow_options, arcflow_outcomes, arcflow_run_id):
                executor = FailingExecutor("^bad")
                async with arcflow.open_runtime(executor, **arcflow_options) as rt:
                    assert rt.run_id == arcflow_run_id
                    await rt.submit(arcflow.Scenario(id="bad"))
                    await rt.submit(arcflow.Scenario(id="good"))
                assert [(r["scenario_id"], r["status"]) for r in arcflow_outcomes()] == [
                    ("bad", "error"), ("good", "passed")]

            def test_asyncio_user(arcflow_options, arcflow_outcomes, arcflow_postgres):
                async def main():
                    async with arcflow.aio.open_runtime(**arcflow_options) as rt:
                        await rt.record(make_outcome(rt.run_id, "one", score=1.0))
                asyncio.run(main())
                assert [r["score"] for r in arcflow_outcomes()] == [1.0]
                print("SERVER", arcflow_postgres is not None)
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ARCFLOW_DB", "ARCFLOW_TEST_DB")}
    if not own_server:
        env["ARCFLOW_TEST_DB"] = dsn
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "arcflow.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-q",
            "-s",
            str(suite),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
    assert f"SERVER {own_server}" in proc.stdout
