"""Tokens and cost: reported by results, stored in columns of their own, totalled, and a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

import arcflow
from arcflow.executors.base import result_from_mapping
from arcflow.models import Scenario, Status
from arcflow.testing import make_outcome


async def _priced(scenario: Scenario) -> dict[str, Any]:
    await trio.sleep(0.01)
    return {"usage": {"input_tokens": 100, "output_tokens": 20, "cost_usd": 0.5, "calls": 2}}


async def test_usage_is_stored_in_its_columns_and_totalled(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A result's usage lands in input_tokens/output_tokens/cost_usd columns and in the totals."""
    async with arcflow.open_runtime(_priced, dsn, run_id=run_id, data_dir=tmp_path) as rt:
        for i in range(4):
            await rt.submit(Scenario(id=f"s{i}"))
        await rt.record(make_outcome(run_id, "recorded"))
    stats = rt.statistics()
    assert (stats.input_tokens, stats.output_tokens, stats.cost_usd) == (400, 80, 2.0)
    rows = await db_query(
        "SELECT input_tokens, output_tokens, cost_usd, usage FROM arcflow.outcomes "
        "WHERE run_id = $1 AND scenario_id LIKE 's%' ORDER BY scenario_id",
        run_id,
    )
    assert [(r["input_tokens"], r["output_tokens"], r["cost_usd"]) for r in rows] == [
        (100, 20, 0.5)
    ] * 4
    assert '"calls": 2' in rows[0]["usage"]
    assert rt.summary()["cost_usd"] == 2.0
    # The report totals every attempt's usage.
    from arcflow.report import build_report, format_report, open_report_store

    async with open_report_store(dsn, tmp_path) as store:
        report = await build_report(store, run_id)
    assert report.usage == {"input_tokens": 400, "output_tokens": 80, "cost_usd": 2.0}
    assert "400 tokens in · 80 out · $2.0000" in format_report(report, "table")


async def test_a_spent_budget_stops_new_scenarios_and_resume_goes_on(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """With max_cost, no scenario starts once the reported cost reaches it; a resume runs the rest."""
    scenarios = [Scenario(id=f"s{i:02d}") for i in range(20)]
    async with arcflow.open_runtime(
        _priced, dsn, run_id=run_id, data_dir=tmp_path, concurrency=1, max_cost=2.0
    ) as rt:
        for scenario in scenarios:
            try:
                await rt.submit(scenario)
            except arcflow.RuntimeClosed:
                break
    summary = rt.summary()
    assert summary["budget_spent"] and 2.0 <= summary["cost_usd"] < 2.0 + 0.5 * 2
    run = await db_query("SELECT status FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "stopped"
    done = {r["scenario_id"] for r in await db_query(
        "SELECT scenario_id FROM arcflow.outcomes WHERE run_id = $1 AND final", run_id
    )}  # fmt: skip
    assert 4 <= len(done) < 20
    path = tmp_path / "s.jsonl"
    path.write_text("".join(f'{{"id": "{s.id}"}}\n' for s in scenarios))
    async with arcflow.open_runtime(
        _priced, dsn, run_id=run_id, data_dir=tmp_path, resume=True
    ) as again:
        plan = await again.plan_resume(path)
        assert plan.skipped == len(done)
        await again.run_file(path, skip=plan)
    rows = await db_query(
        "SELECT count(DISTINCT scenario_id) AS n FROM arcflow.outcomes WHERE run_id = $1 AND final",
        run_id,
    )
    assert rows[0]["n"] == 20


def test_usage_must_be_counters() -> None:
    """A usage that is not a mapping of names to non-negative numbers is an InvalidResult error."""
    ok = result_from_mapping({"usage": {"cost_usd": 0.1, "input_tokens": 5}})
    assert ok.status is Status.PASSED and ok.usage == {"cost_usd": 0.1, "input_tokens": 5}
    for bad in ({"usage": [1]}, {"usage": {"cost_usd": -1}}, {"usage": {"x": "many"}}):
        result = result_from_mapping(bad)
        assert result.status is Status.ERROR and result.error_type == "InvalidResult"
