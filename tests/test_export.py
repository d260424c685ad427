"""`export`: every outcome of a run streamed as JSONL, CSV, JUnit XML or Parquet, from a real PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import tracemalloc
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import IN_CI, query

import arcflow
from arcflow import cli
from arcflow.report import open_report_store
from arcflow.report.export import COLUMNS, OPTIONAL_COLUMNS, ExportResult, export_run
from arcflow.testing import make_outcome


@pytest.fixture(autouse=True)
def _no_arcflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ARCFLOW_* variable of the developer's leaks into the commands."""
    for name in list(os.environ):
        if name.startswith("ARCFLOW_"):
            monkeypatch.delenv(name)


STDERR = "line 1\nTraceback: boom"


def outcomes(run_id: str) -> list[Any]:
    o = make_outcome
    return [
        o(run_id, "a-pass", "passed", score=1.0, output={"answer": '<42> & "q"'}, tags=["t1"]),
        o(run_id, "b-fail", "failed", score=0.25, output={"answer": 41}, duration_ms=1500),
        o(run_id, "c-err", "error", attempt=1, final=False, error_type="E", error_message="once"),
        o(
            run_id,
            "c-err",
            "error",
            attempt=2,
            error_type="ProcessExitError",
            error_message=f"process exited with code 3; stderr:\n{STDERR}",
            executor={"kind": "process", "exit_code": 3},
            tags=["t1", "t2"],
        ),
        o(run_id, "d-time", "timeout", error_message="timed out\x07 after 5s"),
        o(run_id, "e-cancel", "cancelled", final=False),
        o(run_id, "f-last", "passed"),
    ]


@pytest.fixture
def recorded(dsn: str, run_id: str, tmp_path: Path) -> str:
    """A finished run of the outcomes above (7 attempts of 6 scenarios)."""

    async def go() -> None:
        async with arcflow.open_runtime(
            db=dsn, run_id=run_id, data_dir=tmp_path, suite="s.jsonl"
        ) as rt:
            for outcome in outcomes(run_id):
                await rt.record(outcome)

    trio.run(go)
    return run_id


def exported(names: list[str]) -> bool:
    """The columns of an export: COLUMNS in order, then optional ones the schema has (in order)."""
    extra = names[len(COLUMNS) :]
    return names[: len(COLUMNS)] == list(COLUMNS) and extra == [
        c for c in OPTIONAL_COLUMNS if c in extra
    ]


def export(
    dsn: str, run_id: str, fmt: str, output: Path | None = None, **kw: Any
) -> tuple[ExportResult, str]:
    buf = io.StringIO()

    async def go() -> ExportResult:
        async with open_report_store(dsn, "unused") as store:
            return await export_run(store, run_id, fmt, output, stdout=buf, **kw)

    return trio.run(go), buf.getvalue()


def test_jsonl_is_every_attempt_as_stored(dsn: str, recorded: str) -> None:
    """One JSON object per attempt, in key order, with output and executor as JSON values."""
    result, text = export(dsn, recorded, "jsonl")
    lines = [json.loads(line) for line in text.splitlines()]
    stored = trio.run(
        query,
        dsn,
        "SELECT scenario_id, attempt, status, final, score, output, tags FROM arcflow.outcomes "
        "WHERE run_id = $1 ORDER BY scenario_id, attempt",
        recorded,
    )
    assert result.rows == len(lines) == len(stored) == 7
    assert [(r["scenario_id"], r["attempt"]) for r in lines] == [
        (r["scenario_id"], r["attempt"]) for r in stored
    ]
    for line, row in zip(lines, stored, strict=True):
        assert set(COLUMNS) <= set(line) <= set(COLUMNS) | set(OPTIONAL_COLUMNS)
        assert (line["status"], line["final"], line["score"], line["tags"]) == (
            row["status"],
            row["final"],
            row["score"],
            list(row["tags"]),
        )
        assert line["output"] == (json.loads(row["output"]) if row["output"] else None)
    assert lines[0]["output"] == {"answer": '<42> & "q"'}
    assert next(x for x in lines if x["attempt"] == 2)["executor"]["exit_code"] == 3
    assert lines[0]["started_at"].endswith("+00:00") and lines[0]["run_id"] == recorded


def test_latest_keeps_each_scenarios_conclusion(dsn: str, recorded: str) -> None:
    """--latest: one line per scenario, its latest final attempt (else its latest)."""
    result, text = export(dsn, recorded, "csv", latest=True)
    records = list(csv.DictReader(io.StringIO(text)))
    assert exported(list(records[0]))
    assert result.rows == 6
    assert [(r["scenario_id"], r["attempt"], r["status"]) for r in records] == [
        ("a-pass", "1", "passed"),
        ("b-fail", "1", "failed"),
        ("c-err", "2", "error"),
        ("d-time", "1", "timeout"),
        ("e-cancel", "1", "cancelled"),
        ("f-last", "1", "passed"),
    ]
    c_err = records[2]
    assert (
        json.loads(c_err["tags"]) == ["t1", "t2"]
        and json.loads(c_err["executor"])["kind"] == "process"
    )
    assert c_err["error_message"].endswith(STDERR)


def test_junit_has_one_testcase_per_scenario(dsn: str, recorded: str) -> None:
    """JUnit XML parses; counts, failure/error/skipped elements and the stderr tail are where CI looks."""
    result, text = export(dsn, recorded, "junit")
    root = ET.fromstring(text)
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "s.jsonl"
    for element in (root, suite):
        assert (
            element.get("tests"),
            element.get("failures"),
            element.get("errors"),
            element.get("skipped"),
        ) == (
            "6",
            "1",
            "2",
            "1",
        )
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["a-pass", "b-fail", "c-err", "d-time", "e-cancel", "f-last"]
    assert result.rows == 6
    assert cases["a-pass"].find("failure") is None and cases["a-pass"].find("error") is None
    assert json.loads(cases["a-pass"].findtext("system-out") or "") == {"answer": '<42> & "q"'}
    failure = cases["b-fail"].find("failure")
    assert failure is not None and failure.get("message") == "failed with score 0.25"
    assert cases["b-fail"].get("time") == "1.500"
    error = cases["c-err"].find("error")
    assert error is not None and error.get("type") == "ProcessExitError"
    assert error.get("message") == "process exited with code 3"
    assert cases["c-err"].findtext("system-err") == STDERR
    props = {p.get("name"): p.get("value") for p in cases["c-err"].iter("property")}
    assert props == {"epoch": "1", "attempt": "2", "final": "true", "tags": "t1,t2"}
    timeout = cases["d-time"].find("error")
    assert timeout is not None and timeout.get("type") == "timeout"
    assert cases["e-cancel"].find("skipped") is not None
    # a control character that XML cannot hold is replaced, so the document still parses
    assert timeout.text == "timed out\ufffd after 5s" and timeout.get("message") == timeout.text
    assert cases["f-last"].find("system-out") is None  # no output, no element


def test_parquet_round_trips_through_pyarrow(dsn: str, recorded: str, tmp_path: Path) -> None:
    """A parquet file with every attempt, typed columns (timestamps, tag lists) and the same values."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        if IN_CI:  # the dev extra installs it: missing under CI is a failure
            raise
        pytest.skip("pyarrow is not installed (pip install 'arcflow[parquet]')")
    path = tmp_path / "out.parquet"
    result, _ = export(dsn, recorded, "parquet", path)
    table = pq.read_table(path)
    assert result.rows == table.num_rows == 7 and exported(table.column_names)
    rows = table.to_pylist()
    assert rows[0]["scenario_id"] == "a-pass" and rows[0]["tags"] == ["t1"]
    assert json.loads(rows[0]["output"]) == {"answer": '<42> & "q"'}
    assert rows[0]["started_at"].tzinfo is not None
    assert [r["attempt"] for r in rows if r["scenario_id"] == "c-err"] == [1, 2]
    assert not list(tmp_path.glob(".*.part"))


def _bulk_run(dsn: str, n: int, data_dir: Path) -> str:
    """A run of ``n`` outcomes inserted straight by SQL (~300 bytes of output each)."""
    run_id = f"bulk-{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=data_dir):
            pass  # the run's row (and the schema)
        await query(
            dsn,
            """
            INSERT INTO arcflow.outcomes (run_id, scenario_id, attempt, status, final, score, output,
                started_at, finished_at, duration_ms, batch_id, tags)
            SELECT $1, 's' || lpad(i::text, 8, '0'), 1,
                   CASE WHEN i % 3 = 0 THEN 'failed' ELSE 'passed' END, true, (i % 7) / 7.0,
                   jsonb_build_object('answer', repeat('x', 300), 'i', i), now(), now(), i % 100,
                   'b', ARRAY['t' || (i % 5)]
            FROM generate_series(1, $2) AS i
            """,
            run_id,
            n,
        )

    trio.run(go)
    return run_id


def _peak_while_exporting(dsn: str, run_id: str, path: Path) -> tuple[int, int]:
    async def go() -> int:
        async with open_report_store(dsn, "unused") as store:
            tracemalloc.start()
            try:
                result = await export_run(store, run_id, "jsonl", path, page_rows=500)
                return result.rows
            finally:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                peaks.append(peak)

    peaks: list[int] = []
    rows = trio.run(go)
    return rows, peaks[0]


def test_memory_stays_flat_as_the_run_grows(dsn: str, tmp_path: Path) -> None:
    """Exporting 8 times more outcomes peaks at about the same memory: rows are written as they come."""
    small, large = _bulk_run(dsn, 2_000, tmp_path), _bulk_run(dsn, 16_000, tmp_path)
    rows_small, peak_small = _peak_while_exporting(dsn, small, tmp_path / "small.jsonl")
    rows_large, peak_large = _peak_while_exporting(dsn, large, tmp_path / "large.jsonl")
    size_large = (tmp_path / "large.jsonl").stat().st_size
    assert (rows_small, rows_large) == (2_000, 16_000)
    assert size_large > 10_000_000  # what holding the export in memory would cost at the least
    assert peak_large < 1.25 * peak_small + 500_000, (peak_small, peak_large)
    assert peak_large < size_large / 4


def test_cli_export_to_a_file_and_to_stdout(
    dsn: str, recorded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`export RUN -o FILE` says how many it wrote; without -o the rows go to standard output."""
    path = tmp_path / "out.xml"
    assert cli.main(["export", recorded, "--db", dsn, "--format", "junit", "-o", str(path)]) == 0
    assert f"wrote 6 outcomes to {path}" in capsys.readouterr().err
    assert ET.parse(path).getroot().tag == "testsuites"
    assert cli.main(["export", recorded, "--db", dsn, "--latest"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_cli_export_errors_exit_2_and_leave_no_file(
    dsn: str, recorded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown run, parquet to stdout, or an unwritable folder: exit 2, nothing left behind."""
    out = tmp_path / "out"
    out.mkdir()
    path = out / "x.jsonl"
    assert cli.main(["export", "no-such-run", "--db", dsn, "-o", str(path)]) == 2
    assert "no run 'no-such-run' in the database" in capsys.readouterr().err
    assert cli.main(["export", recorded, "--db", dsn, "--format", "parquet"]) == 2
    assert "give --output FILE" in capsys.readouterr().err
    missing = out / "no" / "such" / "dir" / "x.csv"
    assert cli.main(["export", recorded, "--db", dsn, "--format", "csv", "-o", str(missing)]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert list(out.iterdir()) == []
