"""`python -m arcflow runs` and `report` against a real PostgreSQL with a finished run."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import query, quickstart_args

from arcflow import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository (examples importable), with no ARCFLOW_* leaking in."""
    monkeypatch.chdir(ROOT)
    for name in list(os.environ):
        if name.startswith("ARCFLOW_"):
            monkeypatch.delenv(name)


def rows(dsn: str, sql: str, *args: Any) -> list[Any]:
    return trio.run(query, dsn, sql, *args)


@pytest.fixture
def finished_run(
    dsn: str, run_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """The bundled example run to the end through the command line; its --json summary."""
    code = cli.main(
        [
            *quickstart_args(dsn, run_id, tmp_path),
            "--batch-size",
            "64",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    summary: dict[str, Any] = json.loads(out)
    return summary


def test_runs_lists_the_finished_run_with_counts_from_the_rows(
    dsn: str, run_id: str, finished_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`runs --format json` shows id, suite, status, start and counts equal to the outcome rows."""
    assert cli.main(["runs", "--db", dsn, "--format", "json", "--limit", "1000"]) == 0
    listing = json.loads(capsys.readouterr().out)
    row = next(r for r in listing if r["run_id"] == run_id)
    assert row["suite"] == "examples/quickstart.jsonl" and row["status"] == "finished"
    assert row["started_at"] and row["finished_at"]
    counted = {
        r["status"]: r["n"]
        for r in rows(
            dsn,
            "SELECT status, count(*) AS n FROM arcflow.outcomes WHERE run_id = $1 GROUP BY 1",
            run_id,
        )
    }
    assert row["done"] == sum(counted.values()) == 300 == row["scenarios"]
    for status in ("passed", "failed", "error", "timeout", "cancelled"):
        assert row[status] == counted.get(status, 0) == finished_run["by_status"].get(status, 0)


def test_runs_table_and_csv(
    dsn: str, run_id: str, finished_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The table has a header and the run's line; csv parses with the documented columns."""
    assert (
        cli.main(["runs", "--db", dsn, "--suite", "examples/quickstart.jsonl", "--limit", "1000"])
        == 0
    )
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:4] == ["run", "suite", "status", "started"]
    line = next(line for line in table.splitlines() if line.startswith(run_id))
    passed = finished_run["by_status"]["passed"]
    assert "finished" in line and f" {passed} " in f" {line} "
    assert cli.main(["runs", "--db", dsn, "--format", "csv", "--limit", "1000"]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    mine = next(r for r in records if r["run_id"] == run_id)
    assert int(mine["passed"]) == passed and int(mine["done"]) == 300


def test_report_json_matches_the_rows(
    dsn: str, run_id: str, finished_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`report RUN --format json`: pass rate, statuses, tags, slowest and batches equal the tables."""
    assert cli.main(["report", run_id, "--db", dsn, "--format", "json", "--slowest", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    passed = finished_run["by_status"]["passed"]
    assert report["totals"]["pass_rate"] == round(passed / 300, 4)
    assert report["by_status"]["passed"] == passed
    assert report["by_status"]["failed"] == finished_run["by_status"]["failed"]

    tag_rows = rows(
        dsn,
        "SELECT tag, count(*) AS n, count(*) FILTER (WHERE status = 'passed') AS p "
        "FROM arcflow.outcomes, unnest(tags) AS tag WHERE run_id = $1 GROUP BY tag",
        run_id,
    )
    assert {t["tag"]: (t["scenarios"], t["passed"]) for t in report["by_tag"]} == {
        r["tag"]: (r["n"], r["p"]) for r in tag_rows
    }
    slowest = rows(
        dsn, "SELECT max(duration_ms) AS m FROM arcflow.outcomes WHERE run_id = $1", run_id
    )[0]["m"]
    assert len(report["slowest"]) == 5 and report["slowest"][0]["duration_ms"] == slowest
    assert report["errors"] == []

    batches = rows(
        dsn,
        "SELECT count(*) AS n, sum(inserted) AS rows FROM arcflow.batches WHERE run_id = $1",
        run_id,
    )[0]
    assert report["batches"]["batches"] == batches["n"] == finished_run["write_transactions"]
    assert report["batches"]["inserted"] == batches["rows"] == finished_run["written"] == 300
    assert report["batches"]["by_reason"] == finished_run["by_flush_reason"]


def test_report_table_csv_and_html(
    dsn: str,
    run_id: str,
    finished_run: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The default table, --format csv, and --html FILE writing a self-contained page."""
    page = tmp_path / "report.html"
    assert cli.main(["report", run_id, "--db", dsn, "--html", str(page)]) == 0
    out, err = capsys.readouterr()
    passed = finished_run["by_status"]["passed"]
    assert f"run {run_id}  (finished)" in out
    assert f"pass rate   {100 * passed / 300:.1f}% ({passed} of 300 scenarios, 300 planned" in out
    assert f"wrote {page}" in err
    html = page.read_text(encoding="utf-8")
    assert "<svg" in html and "throughput over time" in html
    assert html.count("<tr data-status=") == 300  # the scenario table, every scenario
    code = html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a fetch
    for needle in ("src=", "http://", "https://", "<link", "@import", "fetch(", "XMLHttpRequest"):
        assert needle not in code  # nothing is loaded from anywhere

    assert cli.main(["report", run_id, "--db", dsn, "--format", "csv"]) == 0
    records = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert ["status", "passed", "scenarios", str(passed)] in records


def test_report_of_an_unknown_run_exits_2(
    dsn: str, finished_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown run id is exit 2 with a message pointing at `runs`."""
    assert cli.main(["report", "no-such-run", "--db", dsn]) == 2
    assert (
        "no run 'no-such-run' in the database; `python -m arcflow runs` lists"
        in capsys.readouterr().err
    )


def test_unreachable_database_exits_2_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`runs` against a database that is down is exit 2, and the password is never shown."""
    from arcflow.testing import free_port

    dsn = f"postgresql://me:topsecret@127.0.0.1:{free_port()}/x"
    assert cli.main(["runs", "--db", dsn]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the database postgresql://me:***@127.0.0.1" in err
    assert "topsecret" not in err


def test_no_embedded_database_yet_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --db and with no embedded database under --data-dir, `runs` says nothing ran there."""
    for name in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["runs", "--data-dir", str(tmp_path / "empty")]) == 2
    assert "no embedded database under" in capsys.readouterr().err


def test_report_fail_under_exits_4_below_the_rate(
    dsn: str, run_id: str, finished_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`report RUN --fail-under` prints the report, then exits 4 below the rate and 0 at or above it."""
    passed = finished_run["by_status"]["passed"]
    exact = f"{passed / 3}%"  # passed of 300 as a percentage, exactly
    assert cli.main(["report", run_id, "--db", dsn, "--fail-under", exact]) == 0
    out, err = capsys.readouterr()
    assert f"run {run_id}  (finished)" in out and "meets --fail-under" in err
    above = f"{(passed + 1) / 300}"
    assert cli.main(["report", run_id, "--db", dsn, "--format", "json", "--fail-under", above]) == 4
    out, err = capsys.readouterr()
    assert json.loads(out)["totals"]["passed"] == passed
    assert (
        f"gate: run {run_id}: pass rate {100 * passed / 300:.1f}% ({passed} of 300 scenarios) is below"
        in err
    )
    assert cli.main(["report", "no-such-run", "--db", dsn, "--fail-under", "0"]) == 2
