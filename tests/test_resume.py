"""--resume: skips finished scenarios, refuses changed ones unless --force, --retry-errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def write(path: Path, scenarios: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in scenarios))
    return path


async def arcflow_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "arcflow",
                "run",
                *args,
                "--executor",
                "python:faulty_exec:by_input",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return await trio.to_thread.run_sync(go)


SUITE = [
    {"id": "a", "input": {"mode": "pass"}},
    {"id": "b", "input": {"mode": "fail"}},
    {"id": "c", "input": {"mode": "error"}},
    {"id": "d", "input": {"mode": "pass"}},
]


async def attempts(db_query: Any, run_id: str) -> dict[str, list[tuple[int, str]]]:
    rows = await db_query(
        "SELECT scenario_id, attempt, status FROM arcflow.outcomes WHERE run_id = $1 ORDER BY 1, 2",
        run_id,
    )
    out: dict[str, list[tuple[int, str]]] = {}
    for r in rows:
        out.setdefault(r["scenario_id"], []).append((r["attempt"], r["status"]))
    return out


async def test_resume_skips_finished(dsn: str, run_id: str, db_query: Any, tmp_path: Path) -> None:
    """A resumed run whose scenarios all have final outcomes runs nothing and writes nothing new."""
    path = write(tmp_path / "s.jsonl", SUITE)
    first = await arcflow_run(
        str(path), "--db", dsn, "--run-id", run_id, "--data-dir", str(tmp_path)
    )
    assert first.returncode == 0, first.stderr
    again = await arcflow_run(
        str(path), "--db", dsn, "--resume", run_id, "--json", "--data-dir", str(tmp_path)
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scenarios"] == 0
    assert await attempts(db_query, run_id) == {
        "a": [(1, "passed")],
        "b": [(1, "failed")],
        "c": [(1, "error")],
        "d": [(1, "passed")],
    }


async def test_changed_scenario_is_refused_unless_force(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A scenario whose content changed is refused (file and line named) before anything runs; --force re-runs it."""
    path = write(tmp_path / "s.jsonl", SUITE[:2])
    assert (
        await arcflow_run(str(path), "--db", dsn, "--run-id", run_id, "--data-dir", str(tmp_path))
    ).returncode == 0
    changed = [SUITE[0], {"id": "b", "input": {"mode": "pass"}}, SUITE[3]]
    write(path, changed)
    refused = await arcflow_run(
        str(path), "--db", dsn, "--resume", run_id, "--data-dir", str(tmp_path)
    )
    assert refused.returncode == 2
    assert f"{path}:2: scenario 'b'" in refused.stderr and "--force" in refused.stderr
    assert set(await attempts(db_query, run_id)) == {"a", "b"}  # "d" did not run
    forced = await arcflow_run(
        str(path), "--db", dsn, "--resume", run_id, "--force", "--data-dir", str(tmp_path)
    )
    assert forced.returncode == 0, forced.stderr
    assert await attempts(db_query, run_id) == {
        "a": [(1, "passed")],
        "b": [(1, "failed"), (2, "passed")],
        "d": [(1, "passed")],
    }


async def test_retry_errors_reruns_error_outcomes(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """--retry-errors re-runs scenarios whose final status was error, at the next attempt number."""
    path = write(tmp_path / "s.jsonl", SUITE)
    assert (
        await arcflow_run(str(path), "--db", dsn, "--run-id", run_id, "--data-dir", str(tmp_path))
    ).returncode == 0
    again = await arcflow_run(
        str(path),
        "--db",
        dsn,
        "--resume",
        run_id,
        "--retry-errors",
        "--json",
        "--data-dir",
        str(tmp_path),
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scenarios"] == 1
    assert (await attempts(db_query, run_id))["c"] == [(1, "error"), (2, "error")]


async def test_resume_unknown_run(dsn: str, tmp_path: Path) -> None:
    """Resuming a run id that does not exist exits 2 and says so."""
    path = write(tmp_path / "s.jsonl", SUITE)
    proc = await arcflow_run(
        str(path), "--db", dsn, "--resume", "no-such-run-xyz", "--data-dir", str(tmp_path)
    )
    assert proc.returncode == 2
    assert "cannot resume run 'no-such-run-xyz'" in proc.stderr
