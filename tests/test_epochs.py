"""Epochs: each scenario runs K times in one run, keyed by epoch; resume continues per epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio
from conftest import query

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, "-m", "arcflow", "run", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_each_scenario_runs_once_per_epoch(dsn: str, run_id: str, tmp_path: Path) -> None:
    """--epochs 3: three outcomes per scenario, epochs 1-3, each at attempt 1, one final each."""
    path = tmp_path / "s.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"s{i}", "input": {"mode": "pass"}}) + "\n" for i in range(4))
    )
    common = ["--executor", "python:faulty_exec:by_input", "--db", dsn, "--data-dir", str(tmp_path)]
    done = await trio.to_thread.run_sync(
        lambda: _cli(str(path), *common, "--run-id", run_id, "--epochs", "3", "--json")
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["written"] == 12
    rows = await query(
        dsn,
        "SELECT scenario_id, epoch, attempt, final FROM arcflow.outcomes WHERE run_id = $1 "
        "ORDER BY 1, 2",
        run_id,
    )
    assert [(r["scenario_id"], r["epoch"], r["attempt"], r["final"]) for r in rows] == [
        (f"s{i}", e, 1, True) for i in range(4) for e in (1, 2, 3)
    ]


async def test_resume_continues_each_epoch_and_keeps_the_epochs(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """A resumed run with epochs re-runs only the (scenario, epoch) pairs without a final outcome."""
    import arcflow
    from arcflow.testing import make_outcome

    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}"}) + "\n" for i in range(3)))
    # A run of 2 epochs that stopped after three outcomes, one of them not final.
    async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=tmp_path, epochs=2) as rt:
        await rt.record(make_outcome(run_id, "s0"))
        await rt.record(make_outcome(run_id, "s1", "cancelled", final=False))
        outcome = make_outcome(run_id, "s0")
        await rt.record(arcflow.Outcome.trusted(**{**outcome.__dict__, "epoch": 2}))
    common = ["--executor", "python:faulty_exec:by_input", "--db", dsn, "--data-dir", str(tmp_path)]
    again = await trio.to_thread.run_sync(
        lambda: _cli(str(path), *common, "--resume", run_id, "--json")
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scenarios"] == 4  # s1e1 (again), s1e2, s2e1, s2e2
    rows = await query(
        dsn,
        "SELECT scenario_id, epoch, attempt FROM arcflow.outcomes WHERE run_id = $1 AND final "
        "ORDER BY 1, 2",
        run_id,
    )
    got = [(r["scenario_id"], r["epoch"], r["attempt"]) for r in rows]
    assert got == [
        ("s0", 1, 1),
        ("s0", 2, 1),
        ("s1", 1, 2),
        ("s1", 2, 1),
        ("s2", 1, 1),
        ("s2", 2, 1),
    ]
    other = await trio.to_thread.run_sync(
        lambda: _cli(str(path), *common, "--resume", run_id, "--epochs", "5")
    )
    assert other.returncode == 2 and "runs 2 epoch(s)" in other.stderr


async def test_a_database_from_before_epochs_is_migrated_in_place(dsn: str) -> None:
    """The outcome key is (run_id, scenario_id, epoch, attempt), and old rows read as epoch 1."""
    rows = await query(
        dsn,
        """
        SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = 'arcflow.outcomes'::regclass AND i.indisprimary
        ORDER BY array_position(i.indkey, a.attnum)
        """,
    )
    assert [r["attname"] for r in rows] == ["run_id", "scenario_id", "epoch", "attempt"]
    default = await query(
        dsn,
        "SELECT column_default FROM information_schema.columns "
        "WHERE table_schema = 'arcflow' AND table_name = 'outcomes' AND column_name = 'epoch'",
    )
    assert default[0]["column_default"] == "1"


def test_repeats_share_content_and_differ_by_epoch() -> None:
    """scenario.repeat(k) has the same content hash and to_json says its epoch."""
    from arcflow.models import Scenario

    s = Scenario(id="a", input={"x": 1})
    r = s.repeat(3)
    assert (r.epoch, r.content_hash) == (3, s.content_hash) and r != s
    assert r.to_json()["epoch"] == 3 and "epoch" not in s.to_json()
