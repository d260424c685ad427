"""`python -m arcflow run`: happy path with --json, and every bad input with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from arcflow.cli import main
from arcflow.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "quickstart.jsonl"
SCORE = "python:examples.quickstart:score"


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "arcflow", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_happy_path_json(dsn: str, run_id: str, db_query: Any, tmp_path: Path) -> None:
    """--json prints one JSON summary and nothing else on stdout; rows match it; exit 0."""
    import trio

    proc = await trio.to_thread.run_sync(
        lambda: run_cli(
            "run",
            str(EXAMPLE),
            "--executor",
            SCORE,
            "--db",
            dsn,
            "--run-id",
            run_id,
            "--batch-size",
            "40",
            "--concurrency",
            "16",
            "--json",
            "--data-dir",
            str(tmp_path),
        )
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    for key in (
        "run_id",
        "scenarios",
        "written",
        "dead_lettered",
        "batches",
        "by_status",
        "by_flush_reason",
    ):
        assert key in summary
    assert summary["run_id"] == run_id
    assert summary["scenarios"] == summary["written"] == 300
    assert summary["batches"] == 8 and summary["by_flush_reason"] == {"size": 7, "shutdown": 1}
    rows = await db_query(
        "SELECT status, count(*) AS c FROM arcflow.outcomes WHERE run_id = $1 GROUP BY status",
        run_id,
    )
    assert {r["status"]: r["c"] for r in rows} == summary["by_status"]


def test_version_and_help() -> None:
    """--version and --help work and exit 0."""
    assert "arcflow" in run_cli("--version").stdout
    out = run_cli("run", "--help")
    assert out.returncode == 0 and "--batch-size" in out.stdout


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (['{"id": "a"}', '{"id": "b"', '{"id": "c"}'], ":2: invalid JSON"),
        (['{"id": "a"}', '{"input": {}}'], ':2: missing "id"'),
        (
            ['{"id": "a"}', '{"id": "b"}', '{"id": "a"}'],
            ":3: duplicate scenario id 'a' (first on line 1)",
        ),
        (['{"id": "a", "tags": "x"}'], ':1: "tags" must be a list'),
        (['{"id": "a", "color": 1}'], ":1: unknown keys ['color']"),
        ([], "no scenarios"),
    ],
)
def test_bad_scenario_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], needle: str
) -> None:
    """A malformed scenario file exits 2 naming the file and line, before any database work."""
    path = write_lines(tmp_path / "s.jsonl", lines)
    code = main(
        ["run", str(path), "--executor", SCORE, "--db", "postgresql://nobody@127.0.0.1:1/x"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err and needle in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A scenario file that does not exist exits 2 with its path."""
    code = main(["run", str(tmp_path / "nope.jsonl"), "--executor", SCORE])
    assert code == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("executor", "needle"),
    [
        ("ruby:foo", "unknown executor kind 'ruby'"),
        ("python:no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("python:examples.quickstart:nope", "has no attribute 'nope'"),
        ("python:examples.quickstart", "expected python:MODULE:FUNCTION"),
        ("noexecutor", "invalid executor"),
    ],
)
def test_bad_executor(capsys: pytest.CaptureFixture[str], executor: str, needle: str) -> None:
    """An unknown executor or unimportable function exits 2 with a clear message."""
    code = main(["run", str(EXAMPLE), "--executor", executor])
    assert code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--batch-size", "0"], "--batch-size=0"),
        (["--batch-size", "100001"], "--batch-size=100001"),
        (["--flush-interval", "0"], "--flush-interval=0"),
        (["--concurrency", "-3"], "--concurrency=-3"),
        (["--force"], "--force and --retry-errors only make sense with --resume"),
    ],
)
def test_bad_option(capsys: pytest.CaptureFixture[str], option: list[str], needle: str) -> None:
    """An invalid option value exits 2 naming the option."""
    code = main(["run", str(EXAMPLE), "--executor", SCORE, *option])
    assert code == 2
    assert needle in capsys.readouterr().err


def test_non_numeric_option_is_usage_error() -> None:
    """A non-numeric value is rejected by the parser with exit 2."""
    proc = run_cli("run", str(EXAMPLE), "--executor", SCORE, "--batch-size", "many")
    assert proc.returncode == 2 and "--batch-size" in proc.stderr


def test_unreachable_database_redacts_password(tmp_path: Path) -> None:
    """An unreachable database exits 2 before any scenario runs, and the password never shows."""
    dsn = f"postgresql://alice:hunter2-secret@127.0.0.1:{free_port()}/db"
    proc = run_cli(
        "run", str(EXAMPLE), "--executor", SCORE, "--db", dsn, "--data-dir", str(tmp_path)
    )
    assert proc.returncode == 2
    assert "cannot reach the database" in proc.stderr
    assert "hunter2-secret" not in proc.stderr + proc.stdout
    assert "alice:***@127.0.0.1" in proc.stderr


def test_modal_without_credentials_fails_before_any_scenario(
    dsn: str,
    run_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """modal: with no Modal credentials exits 2 at start, before any scenario, saying how to provide them."""
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE", "MODAL_CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    code = main(
        [
            "run",
            str(EXAMPLE),
            "--executor",
            "modal:python score.py",
            "--db",
            dsn,
            "--run-id",
            run_id,
            "--modal-cpu",
            "0.5",
            "--modal-secrets",
            "a, b",
            "--data-dir",
            str(tmp_path),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "MODAL_TOKEN_ID" in err and "modal token new" in err


def test_modal_options_are_validated(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad modal option value exits 2 naming it."""
    code = main(["run", str(EXAMPLE), "--executor", "modal:python x.py", "--modal-memory", "-5"])
    assert code == 2
    assert "memory" in capsys.readouterr().err


def _dsn_with(dsn: str, *, user: str | None = None, database: str | None = None) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    netloc = parts.netloc if user is None else f"{user}@{parts.netloc.rpartition('@')[2]}"
    path = parts.path if database is None else f"/{database}"
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


@pytest.mark.parametrize(
    ("make_dsn", "needle"),
    [
        (lambda dsn: _dsn_with(dsn, database="no_such_db"), 'database "no_such_db" does not exist'),
        (lambda dsn: _dsn_with(dsn, user="no_such_user"), 'role "no_such_user" does not exist'),
        (lambda dsn: "postgresql://u:s3cret@127.0.0.1:notaport/db", "cannot"),
        (lambda dsn: "postgresql://u:s3cret@[::1/db", "cannot"),
    ],
    ids=["unknown-database", "unknown-user", "non-numeric-port", "malformed-ipv6"],
)
def test_database_refusals_are_one_line_and_exit_2(
    dsn: str, tmp_path: Path, make_dsn: Any, needle: str
) -> None:
    """A database that refuses the connection, or a malformed DSN: exit 2, one line, no traceback."""
    proc = run_cli(
        "run", str(EXAMPLE), "--executor", SCORE, "--db", make_dsn(dsn), "--data-dir", str(tmp_path)
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("arcflow: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr


def test_unusable_data_dir_and_unsafe_run_ids_exit_2(dsn: str, tmp_path: Path) -> None:
    """A data dir that is a file, a run id with a path in it or over 200 characters: exit 2, one line."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    cases = [
        (["--data-dir", str(not_a_dir)], "cannot use the data folder"),
        (
            ["--data-dir", str(tmp_path), "--run-id", "../../escape"],
            "invalid run id '../../escape'",
        ),
        (["--data-dir", str(tmp_path), "--run-id", "r" * 250], "invalid run id"),
    ]
    for extra, needle in cases:
        proc = run_cli("run", str(EXAMPLE), "--executor", SCORE, "--db", dsn, *extra)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr
    assert not (tmp_path.parent / "escape.journal").exists()


def test_the_summary_says_how_long_the_user_waited(dsn: str, run_id: str, tmp_path: Path) -> None:
    """--json has wall_s, the whole process from start-up to the end, beside the runtime's elapsed_s."""
    proc = run_cli(
        "run", str(EXAMPLE), "--executor", SCORE, "--db", dsn, "--run-id", run_id,
        "--data-dir", str(tmp_path), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["wall_s"] > summary["elapsed_s"] > 0
    assert summary["wall_s"] < 120
