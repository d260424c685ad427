"""Epochs: each scenario runs K times in one run, keyed by epoch; resume continues per epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio
from conftest import query
from hypothesis import given
from hypothesis import strategies as st

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


@given(n=st.integers(1, 7), data=st.data())
def test_pass_at_k_is_the_chance_that_k_of_the_tries_hold_a_pass(
    n: int, data: st.DataObject
) -> None:
    """pass_at_k(n, c, k) equals the share of k-subsets of n tries (c passes) with a pass in them."""
    import itertools
    import math

    from arcflow.report.queries import pass_at_k

    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    tries = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(tries, k))
    assert math.isclose(pass_at_k(n, c, k), sum(any(s) for s in subsets) / len(subsets))


async def test_report_shows_pass_at_k_and_the_least_consistent_scenarios(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """report of a 3-epoch run: pass@k and pass^k for k=1..3, consistency, the flaky scenario listed first."""
    path = tmp_path / "s.jsonl"
    rows = [
        {"id": "always", "input": {"scores": [1.0, 1.0, 1.0]}},
        {"id": "never", "input": {"pass_epochs": [], "scores": [0.0, 0.0, 0.0]}},
        {"id": "flaky", "input": {"pass_epochs": [1], "scores": [1.0, 0.0, 0.5]}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--db", dsn, "--data-dir", str(tmp_path)]
    done = await trio.to_thread.run_sync(
        lambda: _cli(str(path), "--executor", "python:faulty_exec:by_epoch", *common,
                     "--run-id", run_id, "--epochs", "3", "--quiet")
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    report = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "arcflow", "report", run_id, "--format", "json", *common],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    e = json.loads(report.stdout)["epochs"]
    assert e["scenarios"] == 3 and e["epochs_min"] == e["epochs_max"] == 3
    assert e["pass_at_k"] == {"1": 0.4444, "2": 0.5556, "3": 0.6667}
    assert e["pass_all_k"] == {"1": 0.4444, "2": 0.3333, "3": 0.3333}
    assert e["consistent"] == 0.6667 and e["flaky_scenarios"] == 1
    assert [v["scenario_id"] for v in e["least_consistent"]] == ["flaky"]
    assert e["least_consistent"][0]["passed"] == 1 and e["least_consistent"][0]["mean_score"] == 0.5
    text = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "arcflow", "report", run_id, *common],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
    )  # fmt: skip
    assert "across epochs (3 scenarios, 3 epochs each)" in text.stdout
    assert "least consistent scenarios" in text.stdout and "flaky" in text.stdout
