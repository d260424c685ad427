"""One run, one owner: a second process on a run is refused naming the holder; run rows tell the truth."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import query

import arcflow
from arcflow.errors import RunInUse
from arcflow.testing import make_outcome

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}


def write(path: Path, scenarios: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in scenarios))
    return path


def arcflow_cmd(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "arcflow",
        "run",
        *args,
        "--executor",
        "python:faulty_exec:by_input",
    ]


def start(*args: str) -> subprocess.Popen[str]:
    """``arcflow run ARGS`` in the background (sync, so async tests do not spawn blocking)."""
    return subprocess.Popen(
        arcflow_cmd(*args),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_second_runtime_on_a_held_run_is_refused(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """While a run is held, another runtime on it is refused with RunInUse naming this host and pid."""
    async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=tmp_path) as rt:
        await rt.record(make_outcome(run_id, "a"))
        with pytest.raises(RunInUse) as same_dir:
            async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=tmp_path):
                pass
        assert f"pid {os.getpid()}" in str(same_dir.value) and "journal" in str(same_dir.value)
        other_dir = tmp_path / "elsewhere"
        with pytest.raises(RunInUse) as other:
            async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=other_dir):
                pass
        assert f"{socket.gethostname()} pid {os.getpid()}" in str(other.value)
        assert "database" in str(other.value)
    # Released at the end: the run can be resumed now.
    async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=tmp_path, resume=True) as again:
        await again.record(make_outcome(run_id, "b"))
    rows = await _rows(dsn, run_id)
    assert rows == ["a", "b"]


async def _rows(dsn: str, run_id: str) -> list[str]:
    from conftest import query

    result = await query(
        dsn, "SELECT scenario_id FROM arcflow.outcomes WHERE run_id = $1 ORDER BY 1", run_id
    )
    return [r["scenario_id"] for r in result]


async def test_resume_while_the_run_still_runs_is_refused(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """`--resume X` while X runs in another process exits 2 and names the holder; the first one finishes."""
    path = write(
        tmp_path / "s.jsonl", [{"id": f"s{i}", "input": {"mode": "pass"}} for i in range(3)]
    )
    slow = write(tmp_path / "slow.jsonl", [{"id": "s0", "input": {"mode": "sleep", "seconds": 4}}])
    common = ["--db", dsn, "--data-dir", str(tmp_path)]
    first = start(str(slow), "--run-id", run_id, *common)
    try:
        lock = tmp_path / "journal" / f"{run_id}.journal.lock"
        with trio.fail_after(30):
            while not (lock.exists() and lock.read_text()):
                await trio.sleep(0.05)
        second = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                arcflow_cmd(str(path), "--resume", run_id, *common),
                cwd=ROOT,
                env=ENV,
                capture_output=True,
                text=True,
                timeout=120,
            )
        )
        assert second.returncode == 2, second.stderr
        assert f"run {run_id!r} is already being run" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        _out, err = await trio.to_thread.run_sync(first.communicate)
    assert first.returncode == 0, err
    # The refused resume wrote nothing: the run holds the first process's one outcome.
    rows = await query(
        dsn, "SELECT scenario_id, final FROM arcflow.outcomes WHERE run_id = $1", run_id
    )
    assert [(r["scenario_id"], r["final"]) for r in rows] == [("s0", True)]
    dead = await query(
        dsn, "SELECT count(*) AS n FROM arcflow.dead_letters WHERE run_id = $1", run_id
    )
    assert dead[0]["n"] == 0


async def test_a_refused_resume_leaves_the_old_row_as_it_was(
    dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """A resume refused for changed content changes nothing in the run's row (status, summary, end)."""
    path = write(tmp_path / "s.jsonl", [{"id": "a"}, {"id": "b"}])
    common = ["--db", dsn, "--data-dir", str(tmp_path)]
    done = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            arcflow_cmd(str(path), "--run-id", run_id, *common),
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
        )
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sql = "SELECT status, finished_at, summary, config FROM arcflow.runs WHERE run_id = $1"
    before = dict((await db_query(sql, run_id))[0])
    write(path, [{"id": "a"}, {"id": "b", "input": {"changed": True}}])
    refused = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            arcflow_cmd(str(path), "--resume", run_id, *common),
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
        )
    )  # fmt: skip
    assert refused.returncode == 2 and "changed since run" in refused.stderr
    after = dict((await db_query(sql, run_id))[0])
    assert after == before and before["status"] == "finished"


async def test_a_run_left_running_is_marked_interrupted_by_the_next_start(
    dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """A run whose process died (row still 'running', nobody holds it) reads 'interrupted' after the next start."""
    path = write(
        tmp_path / "s.jsonl",
        [{"id": f"s{i}", "input": {"mode": "sleep", "seconds": 60}} for i in range(2)],
    )
    proc = start(str(path), "--run-id", run_id, "--db", dsn, "--data-dir", str(tmp_path))
    sql = "SELECT status FROM arcflow.runs WHERE run_id = $1"
    with trio.fail_after(30):
        while not await db_query(sql, run_id):
            await trio.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    await trio.to_thread.run_sync(proc.communicate)
    assert (await db_query(sql, run_id))[0]["status"] == "running"  # nobody recorded the end
    async with arcflow.open_runtime(db=dsn, data_dir=tmp_path / "other"):
        pass
    assert (await db_query(sql, run_id))[0]["status"] == "interrupted"


async def test_a_new_run_under_an_existing_id_is_refused(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """Starting a run (not resuming) with an id the database has: refused, saying --resume; the old row stays."""
    async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=tmp_path) as rt:
        await rt.record(make_outcome(run_id, "a"))
    with pytest.raises(arcflow.ResumeError, match=f"already exists.*--resume {run_id}"):
        async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=tmp_path):
            pass
    from conftest import query

    run = await query(dsn, "SELECT status FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "finished"
    cli = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [
                *arcflow_cmd(
                    _file(tmp_path), "--db", dsn, "--run-id", run_id, "--data-dir", str(tmp_path)
                )
            ],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert cli.returncode == 2 and "already exists" in cli.stderr, cli.stderr
    assert await _rows(dsn, run_id) == ["a"]


def _file(tmp_path: Path) -> str:
    return str(write(tmp_path / "one.jsonl", [{"id": "b"}]))
