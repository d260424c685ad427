"""Two runs compared scenario by scenario: ``python -m arcflow diff RUN_A RUN_B``.

Each scenario's conclusion in each run is its latest final attempt
(:func:`arcflow.report.queries.concluded`); with ``--epochs``, each
(scenario, epoch) is compared with the same epoch of the other run.  A scenario in both runs is
*paired*; it *regressed* when it passed in A and did not pass in B (failed,
error, timeout or cancelled), was *fixed* the other way round, is otherwise
*unchanged*; a scenario only in B is *new*, only in A *missing*.  The pass
rates of the two runs are compared with an exact McNemar test on the
discordant pairs (:func:`mcnemar_exact`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import attrs

from ..errors import ConfigError
from .queries import (
    CONCLUSION_KEY,
    _rate,
    _run_info,
    concluded,
    has_epochs,
    key_label,
    run_fleet,
)
from .text import _indent, _json_default, cell, percent, text_table

#: The kinds of change, in the order they are shown.
CHANGES = ("regressed", "fixed", "new", "missing", "unchanged")

#: Characters of an error message or an output kept per side of a diff row.
DETAIL_CHARS = 2000

# -- statistics -------------------------------------------------------------------------------------

#: Above this many discordant pairs the p-value is summed in log space (floats), below exactly.
_EXACT_UP_TO = 5000


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    Under the null hypothesis each discordant pair goes either way with
    probability 1/2, so ``min(b, c)`` is binomial(b + c, 1/2):
    ``p = min(1, 2 * sum(C(n, k) for k <= min(b, c)) / 2**n)``.  Exact with
    integers up to a few thousand pairs, in log space above that.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n, m = b + c, min(b, c)
    if n == 0:
        return 1.0
    if n <= _EXACT_UP_TO:
        total, term = 0, 1
        for k in range(m + 1):
            total += term
            term = term * (n - k) // (k + 1)
        return float(min(Fraction(1), Fraction(2 * total, 2**n)))
    return _mcnemar_log(n, m)


def _mcnemar_log(n: int, m: int) -> float:
    # log C(n, k) by the recurrence; log-sum-exp from the largest term (k = m, as m <= n / 2).
    log_terms = []
    log_term = -n * math.log(2.0)
    for k in range(m + 1):
        log_terms.append(log_term)
        log_term += math.log(n - k) - math.log(k + 1)
    top = log_terms[-1]
    log_sum = top + math.log(sum(math.exp(t - top) for t in log_terms))
    return min(1.0, math.exp(math.log(2.0) + log_sum))


# -- queries ---------------------------------------------------------------------------------------

_SIDE = (
    "o.scenario_id, o.epoch, o.status, o.score, o.attempt, o.tags, o.error_type, "
    f"left(o.error_message, {DETAIL_CHARS}) AS error_message, "
    f"left(o.output::text, {DETAIL_CHARS}) AS output"
)
_USING = ", ".join(CONCLUSION_KEY)

#: One row per scenario of either run: both sides' conclusions and the kind of change.
PAIRS_SQL = f"""
WITH a AS ({concluded(_SIDE, run="$1")}),
     b AS ({concluded(_SIDE, run="$2")})
SELECT {_USING}, a.status AS status_a, b.status AS status_b,
       a.score AS score_a, b.score AS score_b, b.score - a.score AS score_delta,
       a.attempt AS attempt_a, b.attempt AS attempt_b, coalesce(b.tags, a.tags) AS tags,
       a.error_type AS error_type_a, b.error_type AS error_type_b,
       a.error_message AS error_message_a, b.error_message AS error_message_b,
       a.output AS output_a, b.output AS output_b,
       CASE WHEN a.status IS NULL THEN 'new'
            WHEN b.status IS NULL THEN 'missing'
            WHEN a.status = 'passed' AND b.status <> 'passed' THEN 'regressed'
            WHEN a.status <> 'passed' AND b.status = 'passed' THEN 'fixed'
            ELSE 'unchanged' END AS change
FROM a FULL JOIN b USING ({_USING})
"""

_COUNTS = """
count(*) FILTER (WHERE status_a IS NOT NULL) AS scenarios_a,
count(*) FILTER (WHERE status_b IS NOT NULL) AS scenarios_b,
count(*) FILTER (WHERE status_a = 'passed') AS passed_a,
count(*) FILTER (WHERE status_b = 'passed') AS passed_b,
count(*) FILTER (WHERE status_a IS NOT NULL AND status_b IS NOT NULL) AS paired,
count(*) FILTER (WHERE status_a = 'passed' AND status_b IS NOT NULL) AS paired_passed_a,
count(*) FILTER (WHERE status_b = 'passed' AND status_a IS NOT NULL) AS paired_passed_b,
""" + ",\n".join(f"count(*) FILTER (WHERE change = '{c}') AS {c}" for c in CHANGES)

SUMMARY_SQL = f"""
WITH pairs AS ({PAIRS_SQL})
SELECT {_COUNTS},
       count(*) FILTER (WHERE change = 'unchanged' AND status_a <> status_b) AS status_changed,
       avg(score_a)::float8 AS mean_score_a, avg(score_b)::float8 AS mean_score_b,
       count(score_delta) AS scored_pairs, avg(score_delta)::float8 AS mean_score_delta,
       count(*) FILTER (WHERE score_delta > 0) AS scores_up,
       count(*) FILTER (WHERE score_delta < 0) AS scores_down
FROM pairs
"""

BY_TAG_SQL = f"""
WITH pairs AS ({PAIRS_SQL})
SELECT tag, count(*) AS scenarios, {_COUNTS}
FROM pairs, unnest(tags) AS tag GROUP BY tag ORDER BY tag
"""

_ORDER = "array_position(ARRAY[" + ", ".join(f"'{c}'" for c in CHANGES) + "], change)"

ROWS_SQL = f"""
WITH pairs AS ({PAIRS_SQL})
SELECT * FROM pairs WHERE $3 OR change <> 'unchanged'
ORDER BY {_ORDER}, {_USING}
"""

SCORE_CHANGES_SQL = f"""
WITH pairs AS ({PAIRS_SQL})
SELECT {_USING}, change, status_a, status_b, score_a, score_b, score_delta FROM pairs
WHERE score_delta <> 0 ORDER BY abs(score_delta) DESC, {_USING} LIMIT $3
"""

# -- the diff -------------------------------------------------------------------------------------------


@attrs.frozen
class Diff:
    """Everything ``diff`` shows about two runs."""

    run_a: dict[str, Any]
    run_b: dict[str, Any]
    #: Counts: scenarios and passed of each side, paired, each kind of change, scores.
    summary: dict[str, Any]
    #: Pass rates of each run over its own scenarios, and their difference (B - A).
    pass_rate: dict[str, Any]
    #: Over the paired scenarios: both pass rates, the difference, b, c and McNemar's p.
    paired: dict[str, Any]
    by_tag: list[dict[str, Any]]
    #: One row per scenario that changed (every scenario with ``all=True``), regressions first.
    scenarios: list[dict[str, Any]]
    #: The largest score changes among paired scenarios.
    score_changes: list[dict[str, Any]]
    all: bool = False

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @property
    def regressed(self) -> int:
        return int(self.summary["regressed"])


async def build_diff(
    store: Any, run_a: str, run_b: str, *, all: bool = False, score_changes: int = 10
) -> Diff:
    """Compare run ``run_a`` (before) with ``run_b`` (after); ConfigError if either is unknown."""
    infos = []
    for run_id in (run_a, run_b):
        run = await store.get_run(run_id)
        if run is None:
            raise ConfigError(
                f"no run {run_id!r} in the database; `python -m arcflow runs` lists the runs there"
            )
        info = _run_info(run)
        fleet = await run_fleet(store, run)
        if fleet is not None:
            info["workers"] = len(fleet["workers"])
        infos.append(info)
    s = dict((await store.fetch(SUMMARY_SQL, run_a, run_b))[0])
    for key in ("mean_score_a", "mean_score_b", "mean_score_delta"):
        if s[key] is not None:
            s[key] = round(s[key], 6)
    rate_a, rate_b = _rate(s["passed_a"], s["scenarios_a"]), _rate(s["passed_b"], s["scenarios_b"])
    pass_rate = {"a": rate_a, "b": rate_b, "delta": _delta(rate_a, rate_b)}
    pa = _rate(s["paired_passed_a"], s["paired"])
    pb = _rate(s["paired_passed_b"], s["paired"])
    paired = {
        "scenarios": s["paired"],
        "pass_rate_a": pa,
        "pass_rate_b": pb,
        "delta": _delta(pa, pb),
        "b": s["regressed"],
        "c": s["fixed"],
        "p_value": mcnemar_exact(s["regressed"], s["fixed"]),
    }
    by_tag = []
    for row in await store.fetch(BY_TAG_SQL, run_a, run_b):
        t = dict(row)
        t["pass_rate_a"] = _rate(t["passed_a"], t["scenarios_a"])
        t["pass_rate_b"] = _rate(t["passed_b"], t["scenarios_b"])
        t["delta"] = _delta(t["pass_rate_a"], t["pass_rate_b"])
        t["p_value"] = mcnemar_exact(t["regressed"], t["fixed"])
        by_tag.append(t)
    rows = [_row(r) for r in await store.fetch(ROWS_SQL, run_a, run_b, all)]
    changes = [dict(r) for r in await store.fetch(SCORE_CHANGES_SQL, run_a, run_b, score_changes)]
    return Diff(
        run_a=infos[0],
        run_b=infos[1],
        summary=s,
        pass_rate=pass_rate,
        paired=paired,
        by_tag=by_tag,
        scenarios=rows,
        score_changes=changes,
        all=all,
    )


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 4)


def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(record)
    row["tags"] = list(row["tags"] or [])
    return row


# -- text formats ------------------------------------------------------------------------------------

#: The columns of ``diff --format csv``: one line per scenario.
CSV_COLUMNS = (
    *CONCLUSION_KEY,
    "change",
    "status_a",
    "status_b",
    "score_a",
    "score_b",
    "score_delta",
    "attempt_a",
    "attempt_b",
    "tags",
    "error_type_a",
    "error_type_b",
)


def format_diff(diff: Diff, fmt: str) -> str:
    """The diff as ``table``, ``json`` or ``csv`` (one line per scenario listed)."""
    if fmt == "json":
        return json.dumps(diff.as_dict(), default=_json_default, indent=2) + "\n"
    if fmt == "csv":
        return diff_csv(diff.scenarios)
    return _diff_text(diff)


def diff_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """Scenario rows as CSV with :data:`CSV_COLUMNS` (tags as a JSON array)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                json.dumps(row[c]) if c == "tags" else "" if row[c] is None else row[c]
                for c in CSV_COLUMNS
            ]
        )
    return buf.getvalue()


def points(delta: float | None) -> str:
    """A rate difference in percentage points, signed: ``+3.3 pts``."""
    return "-" if delta is None else f"{delta * 100:+.1f} pts"


def p_text(p: float) -> str:
    return f"{p:.3g}" if p >= 0.001 else f"{p:.2e}"


#: Columns of the by-tag table, in the text diff and on its HTML page.
BY_TAG_HEADERS = (
    "tag",
    "scenarios",
    "A",
    "B",
    "change",
    "regressed",
    "fixed",
    "new",
    "missing",
    "p",
)


def by_tag_rows(by_tag: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """The by-tag table's rows: pass rates, their change, the counts and McNemar's p."""
    return [
        [
            t["tag"],
            t["scenarios"],
            percent(t["pass_rate_a"]),
            percent(t["pass_rate_b"]),
            points(t["delta"]),
            t["regressed"],
            t["fixed"],
            t["new"],
            t["missing"],
            p_text(t["p_value"]),
        ]
        for t in by_tag
    ]


def _shared(run: dict[str, Any]) -> str:
    """``, shared by N workers`` for a shared run, else nothing."""
    n = run.get("workers")
    return "" if n is None else f", shared by {n} worker{'s' if n != 1 else ''}"


def _diff_text(d: Diff) -> str:
    s, pr, pa = d.summary, d.pass_rate, d.paired
    a, b = d.run_a, d.run_b
    out = [
        f"diff {a['run_id']} -> {b['run_id']}",
        f"  A  {a['run_id']}  ({a['status']}{_shared(a)}, suite {a['suite'] or '-'}): "
        f"pass rate {percent(pr['a'])} ({s['passed_a']:,} of {s['scenarios_a']:,})",
        f"  B  {b['run_id']}  ({b['status']}{_shared(b)}, suite {b['suite'] or '-'}): "
        f"pass rate {percent(pr['b'])} ({s['passed_b']:,} of {s['scenarios_b']:,})",
        f"  change      {points(pr['delta'])}",
        f"  paired      {pa['scenarios']:,} scenarios in both: {percent(pa['pass_rate_a'])} -> "
        f"{percent(pa['pass_rate_b'])} ({points(pa['delta'])}); {pa['b']:,} regressed, {pa['c']:,} fixed; "
        f"exact McNemar p = {p_text(pa['p_value'])}",
        "  scenarios   " + " · ".join(f"{s[c]:,} {c}" for c in CHANGES),
    ]
    if s["scored_pairs"]:
        out.append(
            f"  scores      mean {cell(s['mean_score_a'])} -> {cell(s['mean_score_b'])} "
            f"(mean change {s['mean_score_delta']:+.4g} over {s['scored_pairs']:,} scored pairs; "
            f"{s['scores_up']:,} up, {s['scores_down']:,} down)"
        )
    shown = CHANGES if d.all else CHANGES[:-1]
    epochs = has_epochs(d.scenarios)
    for change in shown:
        rows = [r for r in d.scenarios if r["change"] == change]
        if not rows:
            continue
        out += ["", f"{change} ({len(rows):,})", _indent(_rows_table(rows, epochs))]
    if d.by_tag:
        out += ["", "by tag", _indent(text_table(BY_TAG_HEADERS, by_tag_rows(d.by_tag)))]
    if d.score_changes:
        out += [
            "",
            f"largest score changes ({len(d.score_changes)})",
            _indent(
                text_table(
                    ("scenario", "A", "B", "score A", "score B", "change"),
                    [
                        [
                            key_label(r, epochs=has_epochs(d.score_changes)),
                            r["status_a"],
                            r["status_b"],
                            r["score_a"],
                            r["score_b"],
                            f"{r['score_delta']:+.4g}",
                        ]
                        for r in d.score_changes
                    ],
                )
            ),
        ]
    return "\n".join(out) + "\n"


def _rows_table(rows: Sequence[Mapping[str, Any]], epochs: bool) -> str:
    def error(r: Mapping[str, Any]) -> str:
        side = "b" if r["status_b"] is not None else "a"
        message = (r[f"error_message_{side}"] or "").replace("\n", " ")
        kind = r[f"error_type_{side}"]
        text = f"{kind}: {message}" if kind and message else kind or message
        return text if len(text) <= 60 else text[:57] + "..."

    return text_table(
        ("scenario", "A", "B", "score A", "score B", "error"),
        [
            [
                key_label(r, epochs=epochs),
                r["status_a"],
                r["status_b"],
                r["score_a"],
                r["score_b"],
                error(r),
            ]
            for r in rows
        ],
    )
