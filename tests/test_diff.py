"""`diff` of two runs and the gates, against a real PostgreSQL: every number matches the rows."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import trio

import arcflow
from arcflow import cli
from arcflow.errors import ConfigError
from arcflow.models import Outcome
from arcflow.report import open_report_store
from arcflow.report.diff import (
    CSV_COLUMNS,
    Diff,
    _mcnemar_log,
    build_diff,
    format_diff,
    mcnemar_exact,
)
from arcflow.report.gate import (
    EXIT_GATE,
    RegressionLimit,
    parse_rate,
    parse_regression_limit,
    pass_rate_gate,
)
from arcflow.testing import make_outcome

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_arcflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ARCFLOW_* variable of the developer's leaks into the commands."""
    for name in list(os.environ):
        if name.startswith("ARCFLOW_"):
            monkeypatch.delenv(name)


async def record(dsn: str, run_id: str, data_dir: Path, outcomes: list[Outcome]) -> None:
    """A finished run holding exactly ``outcomes``."""
    async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=data_dir) as rt:
        for outcome in outcomes:
            await rt.record(outcome)


def before(run_id: str) -> list[Outcome]:
    """Run A: 8 scenarios, 5 passed."""
    o = make_outcome
    return [
        o(run_id, "keep-pass", "passed", score=1.0, tags=["x"]),
        o(run_id, "r0", "passed", score=0.9, tags=["x", "y"]),
        o(run_id, "r1", "passed", score=0.8, tags=["y"]),
        o(run_id, "f0", "failed", score=0.2, tags=["x"]),
        # an error retried, then failed: the conclusion is the final attempt
        o(run_id, "f1", "error", attempt=1, final=False, error_type="E", error_message="flaky"),
        o(run_id, "f1", "failed", attempt=2, score=0.1),
        o(run_id, "keep-fail", "timeout", error_message="timed out"),
        o(run_id, "gone", "passed", score=1.0),
        o(run_id, "same-score", "passed", score=0.5),
    ]


def after(run_id: str) -> list[Outcome]:
    """Run B: r0, r1 regress, f0, f1 are fixed, gone is missing, fresh is new; 4 of 8 passed."""
    o = make_outcome
    return [
        o(run_id, "keep-pass", "passed", score=1.0, tags=["x"]),
        o(run_id, "r0", "failed", score=0.3, tags=["x", "y"]),
        o(run_id, "r1", "error", error_type="ProcessExitError", error_message="exit 3", tags=["y"]),
        o(run_id, "f0", "passed", score=0.9, tags=["x"]),
        o(run_id, "f1", "passed", attempt=1, score=1.0),
        # a final pass, then a cancelled (not final) attempt: the conclusion stays passed
        o(run_id, "keep-fail", "timeout", error_message="timed out"),
        o(run_id, "same-score", "passed", attempt=1, score=0.5),
        o(run_id, "same-score", "cancelled", attempt=2, final=False),
        o(run_id, "fresh", "failed", score=0.0),
    ]


@pytest.fixture
def two_runs(dsn: str, tmp_path: Path) -> tuple[str, str]:
    """Runs A and B above, recorded through the runtime."""
    import uuid

    a, b = f"da-{uuid.uuid4().hex[:8]}", f"db-{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        await record(dsn, a, tmp_path, before(a))
        await record(dsn, b, tmp_path, after(b))

    trio.run(go)
    return a, b


def diff_of(dsn: str, a: str, b: str, **kw: Any) -> Diff:
    async def go() -> Diff:
        async with open_report_store(dsn, "unused") as store:
            return await build_diff(store, a, b, **kw)

    return trio.run(go)


# -- McNemar -----------------------------------------------------------------------------------------


def _exact(b: int, c: int) -> Fraction:
    n = b + c
    return min(Fraction(1), Fraction(2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)), 2**n))


def test_mcnemar_known_values() -> None:
    """The exact two-sided McNemar p-value equals hand-computed binomial sums."""
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 5) == 2 * (1 + 6) / 64 == 0.21875
    assert mcnemar_exact(5, 1) == 0.21875
    assert mcnemar_exact(0, 10) == 2 / 1024
    assert mcnemar_exact(2, 8) == 2 * (1 + 10 + 45) / 1024
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(3, 4) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_mcnemar_large_counts_in_log_space_match_the_exact_sum() -> None:
    """Past the exact range the log-space sum agrees with exact integers to 1e-9 relative."""
    for b, c in ((2950, 3050), (2900, 3200), (10, 5990)):
        exact = float(_exact(b, c))
        approx = _mcnemar_log(b + c, min(b, c))
        assert approx == pytest.approx(exact, rel=1e-9, abs=1e-300)
    # far past it, still a probability, and tiny for a lopsided split
    p = mcnemar_exact(400_000, 401_000)
    assert 0.0 < p < 1.0
    assert mcnemar_exact(1000, 9000) < 1e-300 or mcnemar_exact(1000, 9000) == 0.0


# -- the diff -------------------------------------------------------------------------------------------


def test_diff_classifies_every_scenario_by_its_latest_final_attempt(
    dsn: str, two_runs: tuple[str, str]
) -> None:
    """Regressed, fixed, new, missing and unchanged per scenario; rates, paired test and tags match."""
    a, b = two_runs
    d = diff_of(dsn, a, b, all=True)
    change = {r["scenario_id"]: r["change"] for r in d.scenarios}
    assert change == {
        "r0": "regressed",
        "r1": "regressed",
        "f0": "fixed",
        "f1": "fixed",
        "fresh": "new",
        "gone": "missing",
        "keep-pass": "unchanged",
        "keep-fail": "unchanged",
        "same-score": "unchanged",
    }
    # listed in the order regressed, fixed, new, missing, unchanged
    assert [r["scenario_id"] for r in d.scenarios][:6] == ["r0", "r1", "f0", "f1", "fresh", "gone"]
    rows = {r["scenario_id"]: r for r in d.scenarios}
    assert (rows["f1"]["status_a"], rows["f1"]["attempt_a"]) == ("failed", 2)
    assert (rows["same-score"]["status_b"], rows["same-score"]["attempt_b"]) == ("passed", 1)
    assert rows["r1"]["error_type_b"] == "ProcessExitError"
    s = d.summary
    assert (s["scenarios_a"], s["passed_a"], s["scenarios_b"], s["passed_b"]) == (8, 5, 8, 4)
    assert (s["regressed"], s["fixed"], s["new"], s["missing"], s["unchanged"]) == (2, 2, 1, 1, 3)
    assert d.pass_rate == {"a": 0.625, "b": 0.5, "delta": -0.125}
    assert d.paired == {
        "scenarios": 7,
        "pass_rate_a": round(4 / 7, 4),
        "pass_rate_b": round(4 / 7, 4),
        "delta": 0.0,
        "b": 2,
        "c": 2,
        "p_value": 1.0,
    }
    # scores: 5 scored pairs (keep-pass, r0, f0, f1, same-score; r1 has none in B)
    assert s["scored_pairs"] == 5 and s["scores_up"] == 2 and s["scores_down"] == 1
    assert [r["scenario_id"] for r in d.score_changes] == ["f1", "f0", "r0"]
    assert d.score_changes[0]["score_delta"] == pytest.approx(0.9)
    tags = {t["tag"]: t for t in d.by_tag}
    assert set(tags) == {"x", "y"}
    assert (tags["y"]["scenarios"], tags["y"]["regressed"], tags["y"]["passed_b"]) == (2, 2, 0)
    assert (tags["x"]["regressed"], tags["x"]["fixed"], tags["x"]["pass_rate_a"]) == (1, 1, 0.6667)
    assert tags["y"]["delta"] == -1.0
    # without all=True, only the changes
    assert {r["change"] for r in diff_of(dsn, a, b).scenarios} == {
        "regressed",
        "fixed",
        "new",
        "missing",
    }


def test_diff_formats_carry_the_same_numbers(dsn: str, two_runs: tuple[str, str]) -> None:
    """table, json and csv (one line per scenario, CSV_COLUMNS) agree with the Diff."""
    a, b = two_runs
    d = diff_of(dsn, a, b)
    table = format_diff(d, "table")
    assert f"diff {a} -> {b}" in table
    assert "2 regressed · 2 fixed · 1 new · 1 missing · 3 unchanged" in table
    assert "exact McNemar p = 1" in table and "regressed (2)" in table
    assert "ProcessExitError: exit 3" in table and "unchanged (" not in table
    # the by-tag table has the page's columns, McNemar's p per tag included
    by_tag = table.split("by tag", 1)[1].splitlines()
    assert by_tag[1].split() == ["tag", "scenarios", "A", "B", "change", "regressed", "fixed",
                                 "new", "missing", "p"]  # fmt: skip
    assert any(line.split()[:1] == ["y"] and line.split()[-1] == "0.5" for line in by_tag)
    data = json.loads(format_diff(d, "json"))
    assert data["summary"]["regressed"] == 2 and data["paired"]["b"] == 2
    assert [r["scenario_id"] for r in data["scenarios"]] == [r["scenario_id"] for r in d.scenarios]
    records = list(csv.DictReader(io.StringIO(format_diff(d, "csv"))))
    assert tuple(records[0]) == CSV_COLUMNS
    assert [(r["scenario_id"], r["change"]) for r in records] == [
        (r["scenario_id"], r["change"]) for r in d.scenarios
    ]
    r0 = next(r for r in records if r["scenario_id"] == "r0")
    assert (r0["status_a"], r0["status_b"], json.loads(r0["tags"])) == (
        "passed",
        "failed",
        ["x", "y"],
    )
    assert float(r0["score_delta"]) == pytest.approx(-0.6)


def test_diff_of_an_unknown_run_is_a_clear_error(dsn: str, two_runs: tuple[str, str]) -> None:
    """A run id that is not in the database is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="no run 'nope' in the database"):
        diff_of(dsn, two_runs[0], "nope")


# -- gates -----------------------------------------------------------------------------------------


def test_rates_and_limits_parse_strictly() -> None:
    """Rates are fractions or percentages; a bare number above 1 and negatives are refused."""
    assert parse_rate("0.9") == Fraction(9, 10) == parse_rate("90%") == parse_rate(" 90% ")
    assert parse_rate("1") == 1 and parse_rate("0") == 0 and parse_rate("100%") == 1
    for bad in ("90", "-0.1", "101%", "abc", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(bad)
    assert parse_regression_limit("0") == RegressionLimit(count=0)
    assert parse_regression_limit("5") == RegressionLimit(count=5)
    assert parse_regression_limit("2%") == RegressionLimit(fraction=Fraction(1, 50))
    assert parse_regression_limit("0.02") == RegressionLimit(fraction=Fraction(1, 50))
    for bad in ("-1", "x", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_regression_limit(bad)


def test_gates_compare_exactly_at_the_boundary() -> None:
    """A pass rate equal to the threshold passes, one below fails; limits count or take fractions."""
    assert pass_rate_gate("r", 9, 10, Fraction(9, 10)).passed
    assert not pass_rate_gate("r", 899, 1000, parse_rate("0.9")).passed
    assert pass_rate_gate("r", 2, 3, parse_rate("66.6%")).passed
    assert pass_rate_gate("r", 0, 0, Fraction(0)).exit_code == EXIT_GATE  # no outcome: no pass
    assert RegressionLimit(count=0).exceeded(1, 10) and not RegressionLimit(count=0).exceeded(0, 10)
    assert not RegressionLimit(count=2).exceeded(2, 10) and RegressionLimit(count=2).exceeded(3, 10)
    assert not RegressionLimit(fraction=Fraction(1, 10)).exceeded(1, 10)
    assert RegressionLimit(fraction=Fraction(1, 10)).exceeded(2, 10)


def test_cli_diff_fail_on_regression_exit_codes(
    dsn: str, two_runs: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`diff --fail-on-regression` exits 4 past its limit, 0 within; no flag, or no regressions: 0."""
    a, b = two_runs
    base = ["diff", a, b, "--db", dsn]
    assert cli.main(base) == 0
    assert "2 regressed" in capsys.readouterr().out
    assert cli.main([*base, "--fail-on-regression"]) == EXIT_GATE == 4
    err = capsys.readouterr().err
    assert f"gate: {a} -> {b}: 2 of 7 paired scenarios regressed" in err and "allows none" in err
    assert cli.main([*base, "--fail-on-regression", "2"]) == 0
    assert cli.main([*base, "--fail-on-regression", "1"]) == 4
    assert cli.main([*base, "--fail-on-regression", "30%"]) == 0  # 2/7 = 28.6%
    assert cli.main([*base, "--fail-on-regression", "0.2"]) == 4
    # B against B: nothing regressed
    assert cli.main(["diff", b, b, "--db", dsn, "--fail-on-regression"]) == 0
    capsys.readouterr()
    page = tmp_path / "diff.html"
    assert cli.main([*base, "--format", "json", "--html", str(page)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["summary"]["fixed"] == 2 and f"wrote {page}" in err
    assert page.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_cli_diff_usage_errors_exit_2(
    dsn: str, two_runs: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown run or a malformed limit is exit 2 with the reason."""
    a, _ = two_runs
    assert cli.main(["diff", a, "nope", "--db", dsn]) == 2
    assert "no run 'nope' in the database" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["diff", a, a, "--db", dsn, "--fail-on-regression", "x"])
    assert exc.value.code == 2
    assert "neither a count" in capsys.readouterr().err


def test_cli_run_fail_under_gates_after_everything_is_written(
    dsn: str,
    run_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`run --fail-under` exits 4 below the rate, with every outcome written and the run finished."""
    from conftest import query, quickstart_args

    monkeypatch.chdir(ROOT)
    assert (
        cli.main([*quickstart_args(dsn, run_id, tmp_path), "--quiet", "--fail-under", "99%"]) == 4
    )
    err = capsys.readouterr().err
    rows = trio.run(
        query,
        dsn,
        "SELECT count(*) FILTER (WHERE status = 'passed') AS p, count(*) AS n, "
        "(SELECT status FROM arcflow.runs WHERE run_id = $1) AS run "
        "FROM arcflow.outcomes WHERE run_id = $1",
        run_id,
    )[0]
    assert (rows["n"], rows["run"]) == (300, "finished")
    rate = f"{100 * rows['p'] / 300:.1f}%"
    assert f"pass rate {rate} ({rows['p']} of 300 scenarios) is below --fail-under 99.0%" in err
    # the same run resumed (nothing left to run) against a rate it meets: 0, and quiet says nothing
    second = [*quickstart_args(dsn, run_id, tmp_path), "--resume", run_id, "--quiet"]
    assert cli.main([*second, "--fail-under", "0.5"]) == 0
    assert "gate" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main([*quickstart_args(dsn, run_id + "x", tmp_path), "--fail-under", "95"])
    assert exc.value.code == 2


def test_epochs_are_compared_epoch_by_epoch(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With repeats, each (scenario, epoch) is paired with the same epoch of the other run and
    named with its epoch; an epoch only one run has is new or missing."""
    import uuid

    import attrs

    a, b = f"ea-{uuid.uuid4().hex[:8]}", f"eb-{uuid.uuid4().hex[:8]}"

    def rep(run_id: str, sid: str, epoch: int, status: str) -> Outcome:
        return attrs.evolve(make_outcome(run_id, sid, status), epoch=epoch)

    async def go() -> None:
        await record(dsn, a, tmp_path, [rep(a, "s", 1, "passed"), rep(a, "s", 2, "passed")])
        await record(
            dsn,
            b,
            tmp_path,
            [rep(b, "s", 1, "passed"), rep(b, "s", 2, "failed"), rep(b, "s", 3, "passed")],
        )

    trio.run(go)
    d = diff_of(dsn, a, b, all=True)
    assert [(r["scenario_id"], r["epoch"], r["change"]) for r in d.scenarios] == [
        ("s", 2, "regressed"),
        ("s", 3, "new"),
        ("s", 1, "unchanged"),
    ]
    assert (d.summary["scenarios_a"], d.summary["scenarios_b"], d.paired["scenarios"]) == (2, 3, 2)
    table = format_diff(d, "table")
    assert "s (epoch 2)  passed  failed" in table and "s (epoch 3)" in table
    first = next(iter(csv.DictReader(io.StringIO(format_diff(d, "csv")))))
    assert first["epoch"] == "2"
    assert cli.main(["report", b, "--db", dsn, "--fail-under", "0.66"]) == 0  # 2 of 3 epochs
    assert cli.main(["report", b, "--db", dsn, "--fail-under", "0.67"]) == EXIT_GATE
    capsys.readouterr()
