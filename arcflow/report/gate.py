"""Gates: exit codes that say "the results are not good enough" after everything is written.

``run --fail-under RATE`` and ``report RUN --fail-under RATE`` fail the gate
when the run's pass rate (latest final attempt of each scenario, see
:func:`arcflow.report.queries.concluded`) is below ``RATE``;
``diff A B --fail-on-regression [LIMIT]`` fails it when more scenarios
regressed than ``LIMIT`` allows.  A failed gate exits :data:`EXIT_GATE`;
the comparisons are exact (fractions, no floating point at the boundary).
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import attrs

#: The exit code of a failed gate (the run itself went fine; its results did not pass).
EXIT_GATE = 4


def _number(text: str) -> Fraction:
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return value


def parse_rate(text: str) -> Fraction:
    """A pass rate: a fraction from 0 to 1 (``0.9``) or a percentage (``90%``).

    A bare number above 1 is refused rather than guessed at (is ``1`` 100% or 1%?).
    """
    raw = text.strip()
    if raw.endswith("%"):
        value = _number(raw[:-1]) / 100
    else:
        value = _number(raw)
        if value > 1:
            raise argparse.ArgumentTypeError(
                f"{text!r} is above 1: give a fraction (0.9) or a percentage (90%)"
            )
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1 (0% and 100%)")
    return value


@attrs.frozen
class RegressionLimit:
    """How many regressions a diff tolerates: a count, or a fraction of the paired scenarios."""

    count: int | None = None
    fraction: Fraction | None = None

    def exceeded(self, regressed: int, paired: int) -> bool:
        """True if ``regressed`` of ``paired`` scenarios is more than this limit allows."""
        if self.fraction is not None:
            return regressed > 0 and Fraction(regressed, max(paired, 1)) > self.fraction
        return regressed > (self.count or 0)

    def describe(self) -> str:
        """What the limit allows, in words."""
        if self.fraction is not None:
            return f"up to {float(self.fraction) * 100:g}% of the paired scenarios"
        return "none" if not self.count else f"up to {self.count:,}"


def parse_regression_limit(text: str) -> RegressionLimit:
    """``5`` (a count: more than 5 fail), ``2%`` or ``0.02`` (a fraction of the paired scenarios)."""
    raw = text.strip()
    if raw.endswith("%") or "." in raw:
        return RegressionLimit(fraction=parse_rate(raw))
    try:
        count = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a count (5) nor a fraction (0.02 or 2%)"
        ) from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return RegressionLimit(count=count)


def format_rate(value: Fraction | float | None) -> str:
    """``86.7%`` (one decimal; exact values keep no trailing noise)."""
    if value is None:
        return "-"
    return f"{float(value) * 100:.1f}%"


@attrs.frozen
class GateResult:
    """The verdict of a pass-rate gate, and the line that explains it."""

    passed: bool
    message: str

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else EXIT_GATE


def pass_rate_gate(run_id: str, passed: int, scenarios: int, threshold: Fraction) -> GateResult:
    """Pass if ``passed / scenarios >= threshold``; a run with no outcome never passes."""
    wanted = format_rate(threshold)
    if scenarios == 0:
        return GateResult(False, f"run {run_id} has no outcomes; --fail-under {wanted} fails")
    rate = Fraction(passed, scenarios)
    shown = f"pass rate {format_rate(rate)} ({passed:,} of {scenarios:,} scenarios)"
    if rate < threshold:
        return GateResult(False, f"run {run_id}: {shown} is below --fail-under {wanted}")
    return GateResult(True, f"run {run_id}: {shown} meets --fail-under {wanted}")


def report_gate(report_totals: dict[str, Any], run_id: str, threshold: Fraction) -> GateResult:
    """The pass-rate gate over a built report's totals (the same selection as the report)."""
    return pass_rate_gate(
        run_id, report_totals["passed"], report_totals["scenarios_with_outcome"], threshold
    )


def regression_gate(diff: Any, limit: RegressionLimit) -> GateResult:
    """Fail if more scenarios regressed from ``diff.run_a`` to ``diff.run_b`` than ``limit`` allows."""
    regressed, paired = int(diff.summary["regressed"]), int(diff.summary["paired"])
    where = f"{diff.run_a['run_id']} -> {diff.run_b['run_id']}"
    shown = f"{regressed:,} of {paired:,} paired scenarios regressed"
    if limit.exceeded(regressed, paired):
        return GateResult(
            False, f"{where}: {shown}; --fail-on-regression allows {limit.describe()}"
        )
    return GateResult(True, f"{where}: {shown}; within --fail-on-regression")


async def run_pass_counts(store: Any, run_id: str) -> tuple[int, int]:
    """``(passed, scenarios)`` of a run, over each scenario's latest final attempt."""
    from .queries import concluded

    row = (
        await store.fetch(
            f"SELECT count(*) FILTER (WHERE status = 'passed') AS passed, count(*) AS n "
            f"FROM ({concluded('o.status')}) c",
            run_id,
        )
    )[0]
    return int(row["passed"]), int(row["n"])


async def gate_run(
    db: str | None,
    data_dir: Path | str,
    run_id: str,
    threshold: Fraction,
    *,
    err: TextIO,
    quiet: bool = False,
) -> int:
    """After a run: read its pass rate back from the database and apply ``--fail-under``.

    Returns 0 or :data:`EXIT_GATE`, having printed the verdict on ``err`` (with
    ``quiet``, only a failed one).
    Database errors propagate (the caller maps them to its exit codes).
    """
    from .queries import open_report_store

    async with open_report_store(db, data_dir) as store:
        passed, scenarios = await run_pass_counts(store, run_id)
    result = pass_rate_gate(run_id, passed, scenarios, threshold)
    if not (quiet and result.passed):
        print(f"arcflow: gate: {result.message}", file=err)
    return result.exit_code
