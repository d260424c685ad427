"""Run reports read back from a real PostgreSQL: the numbers match the rows."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI
from conftest import query as conftest_query

import arcflow
from arcflow.errors import ConfigError
from arcflow.models import Outcome, Status
from arcflow.report import (
    Report,
    build_report,
    format_report,
    format_runs,
    list_runs,
    open_report_store,
    render_html,
    scenario_rows,
    text_table,
    throughput_series,
)
from arcflow.testing import make_outcome

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# (scenario, attempt, status, tags, duration ms, error type, error message, final)
ROWS: list[tuple[str, int, Status, tuple[str, ...], int, str | None, str | None, bool]] = [
    *[(f"s{i}", 1, Status.PASSED, ("a",), 10 * (i + 1), None, None, True) for i in range(6)],
    ("f0", 1, Status.FAILED, ("a", "b"), 5, None, None, True),
    ("f1", 1, Status.FAILED, ("a", "b"), 7, None, None, True),
    ("e0", 1, Status.ERROR, ("b",), 3, "ValueError", "bad <value> & more", False),
    ("e0", 2, Status.PASSED, ("b",), 4, None, None, True),
    ("e1", 1, Status.ERROR, ("b",), 900, "ValueError", "bad <value> & more", False),
    ("e1", 2, Status.ERROR, ("b",), 800, "ValueError", "still bad", True),
    ("k0", 1, Status.ERROR, (), 2, "KeyError", "'x'", True),
    ("t0", 1, Status.TIMEOUT, (), 5000, None, "timed out after 5s", True),
    ("c0", 1, Status.CANCELLED, (), 1, None, None, True),
]


def outcomes(run_id: str) -> list[Outcome]:
    return [
        Outcome(
            run_id=run_id,
            scenario_id=sid,
            attempt=attempt,
            status=status,
            tags=tags,
            started_at=T0,
            finished_at=T0 + timedelta(milliseconds=ms),
            error_type=etype,
            error_message=emsg,
            final=final,
        )
        for sid, attempt, status, tags, ms, etype, emsg, final in ROWS
    ]


async def record_run(dsn: str, run_id: str, data_dir: Path) -> None:
    """A finished run of the rows above, written in batches of 5 (3 batches)."""
    async with arcflow.Runtime(
        db=dsn,
        run_id=run_id,
        suite="suite-x",
        scenario_count=13,
        data_dir=data_dir,
        batch_size=5,
        flush_interval=60,
    ) as rt:
        for o in outcomes(run_id):
            await rt.record(o)


async def report_for(dsn: str, run_id: str, **kw: Any) -> Report:
    async with open_report_store(dsn, "unused") as store:
        return await build_report(store, run_id, **kw)


async def test_report_numbers_match_the_rows(
    dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """Pass rate, status, tag, slowest, error and batch numbers equal what the tables hold."""
    await record_run(dsn, run_id, tmp_path)
    r = await report_for(dsn, run_id, slowest=3)

    assert (
        r.run["run_id"] == run_id and r.run["status"] == "finished" and r.run["suite"] == "suite-x"
    )
    # Latest attempt of each scenario.
    assert r.by_status == {"passed": 7, "failed": 2, "error": 2, "timeout": 1, "cancelled": 1}
    assert r.totals == {
        "scenarios_planned": 13,
        "scenarios_with_outcome": 13,
        "attempts": 15,
        "passed": 7,
        "pass_rate": round(7 / 13, 4),
        "dead_letters": 0,
    }
    rows = await db_query(
        "SELECT DISTINCT ON (scenario_id) status FROM arcflow.outcomes WHERE run_id = $1 "
        "ORDER BY scenario_id, attempt DESC",
        run_id,
    )
    assert sum(r.by_status.values()) == len(rows)
    assert r.by_status["passed"] == sum(1 for row in rows if row["status"] == "passed")

    tags = {t["tag"]: t for t in r.by_tag}
    assert set(tags) == {"a", "b"}
    assert (tags["a"]["scenarios"], tags["a"]["passed"], tags["a"]["failed"]) == (8, 6, 2)
    assert (
        tags["b"]["scenarios"],
        tags["b"]["passed"],
        tags["b"]["failed"],
        tags["b"]["error"],
    ) == (4, 1, 2, 1)
    assert tags["b"]["pass_rate"] == 0.25

    assert [(s["scenario_id"], s["attempt"], s["duration_ms"]) for s in r.slowest] == [
        ("t0", 1, 5000.0),
        ("e1", 1, 900.0),
        ("e1", 2, 800.0),
    ]
    assert [(e["error_type"], e["attempts"], e["scenarios"]) for e in r.errors] == [
        ("ValueError", 3, 2),
        ("KeyError", 1, 1),
        ("timeout", 1, 1),
    ]
    assert (
        r.errors[0]["example_scenario"] == "e0"
        and r.errors[0]["example_message"] == "bad <value> & more"
    )

    batch_rows = await db_query(
        "SELECT size, inserted, reason FROM arcflow.batches WHERE run_id = $1", run_id
    )
    b = r.batches
    assert b["batches"] == len(batch_rows) == 3
    assert b["records"] == sum(x["size"] for x in batch_rows) == 15
    assert b["inserted"] == sum(x["inserted"] for x in batch_rows) == 15
    assert (b["min_size"], b["max_size"], b["mean_size"]) == (5, 5, 5.0)
    assert b["by_reason"] == {"size": 3} and b["by_source"] == {"live": 3}
    assert sum(p["rows"] for p in r.throughput) == 15


async def test_runs_listing_counts_match_the_rows(dsn: str, run_id: str, tmp_path: Path) -> None:
    """list_runs shows the run with its suite, status, planned scenarios and latest-attempt counts."""
    await record_run(dsn, run_id, tmp_path)
    async with open_report_store(dsn, "unused") as store:
        runs = await list_runs(store, limit=1000, suite="suite-x")
        none = await list_runs(store, suite="no-such-suite")
    row = next(r for r in runs if r["run_id"] == run_id)
    assert (row["suite"], row["status"], row["scenarios"], row["done"]) == (
        "suite-x",
        "finished",
        13,
        13,
    )
    assert (row["passed"], row["failed"], row["error"], row["timeout"], row["cancelled"]) == (
        7,
        2,
        2,
        1,
        1,
    )
    assert none == []
    starts = [r["started_at"] for r in runs]
    assert starts == sorted(starts, reverse=True)


async def test_unknown_run_is_a_clear_error(dsn: str, tmp_path: Path) -> None:
    """Reporting a run that does not exist says so and points at `runs`."""
    async with arcflow.Runtime(db=dsn, data_dir=tmp_path):
        pass  # makes sure the schema exists
    with pytest.raises(
        ConfigError, match=r"no run 'nope' in the database; `python -m arcflow runs` lists"
    ):
        await report_for(dsn, "nope")


async def test_formats(dsn: str, run_id: str, tmp_path: Path) -> None:
    """table, json and csv carry the same numbers."""
    await record_run(dsn, run_id, tmp_path)
    r = await report_for(dsn, run_id)

    data = json.loads(format_report(r, "json"))
    assert data["by_status"]["passed"] == 7 and data["totals"]["attempts"] == 15

    rows = list(csv.reader(io.StringIO(format_report(r, "csv"))))
    assert rows[0] == ["section", "key", "field", "value"]
    assert ["status", "passed", "scenarios", "7"] in rows
    assert ["tag", "b", "error", "1"] in rows
    assert ["errors", "ValueError", "attempts", "3"] in rows
    assert ["batches", "size", "by_reason", "3"] in rows
    assert ["totals", "", "pass_rate", str(round(7 / 13, 4))] in rows

    table = format_report(r, "table")
    assert f"run {run_id}  (finished)" in table
    assert "pass rate   53.8% (7 of 13 scenarios, 13 planned; 15 attempts; 0 dead letters)" in table
    assert "ValueError" in table and "3 written (size 3; live 3)" in table


async def test_html_is_self_contained_and_escaped(dsn: str, run_id: str, tmp_path: Path) -> None:
    """The HTML page has the two charts, escapes text, and loads nothing from elsewhere."""
    await record_run(dsn, run_id, tmp_path)
    page = render_html(await report_for(dsn, run_id))
    assert page.startswith("<!doctype html>")
    assert 'aria-label="throughput over time"' in page and 'aria-label="status breakdown"' in page
    assert "bad &lt;value&gt; &amp; more" in page and "<value>" not in page
    for needle in ("<script", "src=", "href=", "<link", "@import"):
        assert needle not in page
    assert "passed 7" in page


async def test_scenario_rows_are_each_conclusion_not_passed_first(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """One row per scenario (its latest final attempt, with its attempt count), the ones that
    did not pass first, cut to the limit."""
    await record_run(dsn, run_id, tmp_path)
    async with open_report_store(dsn, "unused") as store:
        rows = await scenario_rows(store, run_id)
        first = await scenario_rows(store, run_id, limit=3, detail_chars=4)
    assert len(rows) == 13
    assert [r["scenario_id"] for r in rows[:6]] == ["c0", "e1", "f0", "f1", "k0", "t0"]
    assert all(r["status"] == "passed" for r in rows[6:])
    by_id = {r["scenario_id"]: r for r in rows}
    assert (by_id["e0"]["attempt"], by_id["e0"]["attempts"], by_id["e0"]["status"]) == (
        2,
        2,
        "passed",
    )
    assert (by_id["e1"]["error_message"], by_id["e1"]["attempts"]) == ("still bad", 2)
    assert [r["scenario_id"] for r in first] == ["c0", "e1", "f0"]
    assert first[1]["error_message"] == "stil"


async def test_html_scenario_table_escapes_and_embeds_safely(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """Hostile text in outputs and errors stays text: escaped in the table, and unable to close
    the embedded details' script element."""
    hostile = "</script><script>alert(1)</script><b>x</b>"
    async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=tmp_path) as rt:
        await rt.record(
            make_outcome(
                run_id,
                hostile,
                "error",
                error_type="E",
                error_message=hostile,
                output={"h": hostile},
            )
        )
        await rt.record(make_outcome(run_id, "fine", "passed", tags=["<t>"]))
    async with open_report_store(dsn, "unused") as store:
        report = await build_report(store, run_id)
        page = render_html(report, await scenario_rows(store, run_id))
    assert page.count("<script") == 2 and page.count("</script>") == 2  # details JSON and the code
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert 'data-tags="[&quot;&lt;t&gt;&quot;]"' in page
    details = page.split('id="arcflow-details">', 1)[1].split("</script>", 1)[0]
    assert json.loads(details)[0]["sections"][0]["blocks"][0] == ["error", hostile]


def test_throughput_series_buckets() -> None:
    """Rows are summed per bucket; at most max_buckets buckets of at least a second."""
    assert throughput_series([]) == []
    series = throughput_series([(100.0, 5), (100.5, 5), (102.2, 10)])
    assert [(p["t"], p["rows"]) for p in series] == [(0.0, 10), (1.0, 0), (2.0, 10)]
    long = throughput_series([(0.0, 1), (600.0, 1)], max_buckets=60)
    assert len(long) <= 61 and long[0]["width"] == 10.0 and sum(p["rows"] for p in long) == 2


def test_text_table_aligns_numbers_right() -> None:
    """Text columns are left-aligned, numbers right-aligned, None shown as '-'."""
    assert text_table(("k", "n"), [("a", 5), ("bb", 1234), ("c", None)]).splitlines() == [
        "k       n",
        "--  -----",
        "a       5",
        "bb  1,234",
        "c       -",
    ]


def test_runs_format_empty_and_csv() -> None:
    """An empty listing says so; csv has the documented columns."""
    assert format_runs([], "table") == "no runs\n"
    header = format_runs([], "csv").splitlines()[0]
    assert (
        header
        == "run_id,suite,status,started_at,finished_at,scenarios,done,passed,failed,error,timeout,cancelled"
    )


async def _execute(dsn: str, script: str) -> None:
    """Run a script of several statements (what fetch cannot) on a private connection."""
    import asyncpg
    import trio_asyncio

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(script)
        finally:
            await conn.close()

    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(go)()


async def test_a_reader_upgrades_a_schema_an_older_arcflow_made(dsn: str, db_query: Any) -> None:
    """A database last written before epochs (schema 3) is upgraded by `report`, whose queries
    read the epoch; its runs report as before (one epoch)."""
    import uuid

    from arcflow.store.schema import BOOTSTRAP, LATEST_VERSION, MIGRATIONS

    name = f"old_{uuid.uuid4().hex[:10]}"
    try:
        await db_query(f"CREATE DATABASE {name}")
    except Exception as exc:  # a server we may not create databases on
        if IN_CI:  # CI's server is our own: it must allow it
            raise
        pytest.skip(f"cannot create a database here: {exc}")
    base, _, rest = dsn.partition("?")
    old = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{rest}" if rest else "")
    await _execute(old, BOOTSTRAP)
    for version in range(1, 4):
        await _execute(old, MIGRATIONS[version - 1])
        await conftest_query(
            old, "INSERT INTO arcflow.schema_version (version) VALUES ($1)", version
        )
    await conftest_query(old, "INSERT INTO arcflow.runs (run_id, status) VALUES ('r', 'finished')")
    await conftest_query(
        old,
        "INSERT INTO arcflow.outcomes (run_id, scenario_id, attempt, status, final, started_at, "
        "finished_at, duration_ms, batch_id) VALUES ('r', 's', 1, 'passed', true, now(), now(), 1, 'b')",
    )
    r = await report_for(old, "r")
    assert r.totals["passed"] == 1 and r.by_status["passed"] == 1
    versions = await conftest_query(old, "SELECT max(version) AS v FROM arcflow.schema_version")
    assert versions[0]["v"] == LATEST_VERSION
