"""Run listings and run reports, read back from PostgreSQL.

``python -m arcflow runs`` lists runs; ``python -m arcflow report RUN_ID``
reports one.  Counts by status are over each scenario's *latest* attempt (what
the run concluded), so a scenario that errored once and passed on retry
counts as passed; errors are grouped over *every* attempt (what went wrong on
the way).  Formats: ``table`` (aligned text), ``json`` and ``csv``; a report
can also be written as one self-contained HTML page (inline CSS and SVG, no
scripts, nothing fetched).
"""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import math
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from ._trio_asyncio import import_trio_asyncio
from .errors import ConfigError, arcflow_errors_unwrapped
from .store import Store, open_store

STATUSES = ("passed", "failed", "error", "timeout", "cancelled")
FORMATS = ("table", "json", "csv")

# -- queries -------------------------------------------------------------------------------------

_LATEST = """
    SELECT DISTINCT ON (scenario_id) scenario_id, attempt, status, tags
    FROM arcflow.outcomes WHERE run_id = $1
    ORDER BY scenario_id, attempt DESC
"""

_STATUS_COUNTS = ", ".join(f"count(*) FILTER (WHERE status = '{s}') AS {s}" for s in STATUSES)

RUNS_SQL = f"""
SELECT r.run_id, r.suite, r.status, r.started_at, r.finished_at, r.scenarios,
       coalesce(c.done, 0) AS done, {", ".join(f"coalesce(c.{s}, 0) AS {s}" for s in STATUSES)}
FROM arcflow.runs r
LEFT JOIN LATERAL (
    SELECT count(*) AS done, {_STATUS_COUNTS}
    FROM (SELECT DISTINCT ON (o.scenario_id) o.status FROM arcflow.outcomes o
          WHERE o.run_id = r.run_id ORDER BY o.scenario_id, o.attempt DESC) latest
) c ON true
WHERE ($2::text IS NULL OR r.suite = $2) AND ($3::text IS NULL OR r.status = $3)
ORDER BY r.started_at DESC, r.run_id
LIMIT $1
"""

BY_STATUS_SQL = (
    f"WITH latest AS ({_LATEST}) SELECT status, count(*) AS n FROM latest GROUP BY status"
)

BY_TAG_SQL = f"""
WITH latest AS ({_LATEST})
SELECT tag, count(*) AS scenarios, {_STATUS_COUNTS}
FROM latest, unnest(tags) AS tag
GROUP BY tag ORDER BY tag
"""

ATTEMPTS_SQL = "SELECT count(*) AS attempts, coalesce(sum(duration_ms), 0) AS total_ms FROM arcflow.outcomes WHERE run_id = $1"

SLOWEST_SQL = """
SELECT scenario_id, attempt, status, duration_ms FROM arcflow.outcomes
WHERE run_id = $1 ORDER BY duration_ms DESC, scenario_id, attempt LIMIT $2
"""

ERRORS_SQL = """
SELECT coalesce(error_type, status) AS error_type, count(*) AS attempts,
       count(DISTINCT scenario_id) AS scenarios,
       (array_agg(scenario_id ORDER BY scenario_id, attempt))[1] AS example_scenario,
       (array_agg(error_message ORDER BY scenario_id, attempt))[1] AS example_message
FROM arcflow.outcomes WHERE run_id = $1 AND status IN ('error', 'timeout')
GROUP BY 1 ORDER BY attempts DESC, 1
"""

BATCHES_SQL = """
SELECT count(*) AS batches, coalesce(sum(size), 0) AS records, coalesce(sum(inserted), 0) AS inserted,
       min(size) AS min_size, max(size) AS max_size, avg(size)::float8 AS mean_size,
       min(written_at) AS first_at, max(written_at) AS last_at
FROM arcflow.batches WHERE run_id = $1
"""

BATCH_GROUPS_SQL = "SELECT {col} AS key, count(*) AS n FROM arcflow.batches WHERE run_id = $1 GROUP BY 1 ORDER BY 1"

SERIES_SQL = """
SELECT extract(epoch FROM written_at)::float8 AS t, inserted FROM arcflow.batches
WHERE run_id = $1 ORDER BY written_at
"""

DEAD_LETTERS_SQL = "SELECT count(*) FROM arcflow.dead_letters WHERE run_id = $1"

# -- opening the database ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_report_store(db: str | None, data_dir: Path | str) -> AsyncIterator[Store]:
    """A connected Store for reading reports (never creates a database or the schema).

    Opens a trio-asyncio loop of its own; arcflow errors raised inside the
    block come out as themselves, not wrapped in the loop's exception group.
    """
    trio_asyncio = import_trio_asyncio()  # here: importing it patches asyncio
    with arcflow_errors_unwrapped():
        async with trio_asyncio.open_loop():
            store = await open_store(db, data_dir, for_reading=True)
            try:
                yield store
            finally:
                await store.aclose()


# -- runs ---------------------------------------------------------------------------------------


async def list_runs(
    store: Store, *, limit: int = 20, suite: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """The latest runs, newest first: id, suite, status, times, planned scenarios, counts by status."""
    if limit < 1:
        raise ConfigError(f"invalid --limit={limit}: must be a whole number >= 1")
    rows = await store.fetch(RUNS_SQL, limit, suite, status)
    return [dict(r) for r in rows]


# -- one run ------------------------------------------------------------------------------------------


@attrs.frozen
class Report:
    """Everything ``report`` shows about one run."""

    run: dict[str, Any]
    totals: dict[str, Any]
    by_status: dict[str, int]
    by_tag: list[dict[str, Any]]
    slowest: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    batches: dict[str, Any]
    #: Rows written per time bucket: ``{"t": seconds since the first write, "rows": n, "width": s}``.
    throughput: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


async def build_report(store: Store, run_id: str, *, slowest: int = 10) -> Report:
    """Read one run's report from the database (raises ConfigError if there is no such run)."""
    run = await store.get_run(run_id)
    if run is None:
        raise ConfigError(
            f"no run {run_id!r} in the database; `python -m arcflow runs` lists the runs there"
        )
    by_status = {s: 0 for s in STATUSES}
    by_status.update({r["status"]: r["n"] for r in await store.fetch(BY_STATUS_SQL, run_id)})
    attempts = (await store.fetch(ATTEMPTS_SQL, run_id))[0]
    done = sum(by_status.values())
    dead = int(await store.fetchval(DEAD_LETTERS_SQL, run_id))
    totals = {
        "scenarios_planned": run.get("scenarios"),
        "scenarios_with_outcome": done,
        "attempts": attempts["attempts"],
        "passed": by_status["passed"],
        "pass_rate": _rate(by_status["passed"], done),
        "dead_letters": dead,
    }
    by_tag = [
        {**dict(r), "pass_rate": _rate(r["passed"], r["scenarios"])}
        for r in await store.fetch(BY_TAG_SQL, run_id)
    ]
    return Report(
        run=_run_info(run),
        totals=totals,
        by_status=by_status,
        by_tag=by_tag,
        slowest=[dict(r) for r in await store.fetch(SLOWEST_SQL, run_id, slowest)],
        errors=[dict(r) for r in await store.fetch(ERRORS_SQL, run_id)],
        batches=await _batch_stats(store, run_id),
        throughput=throughput_series(
            [(r["t"], r["inserted"]) for r in await store.fetch(SERIES_SQL, run_id)]
        ),
    )


def _rate(part: int, whole: int | None) -> float | None:
    return round(part / whole, 4) if whole else None


def _run_info(run: Mapping[str, Any]) -> dict[str, Any]:
    executor = run.get("executor")
    if isinstance(executor, str):
        executor = json.loads(executor)
    return {
        "run_id": run["run_id"],
        "suite": run.get("suite"),
        "status": run.get("status"),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
        "executor": (executor or {}).get("kind"),
    }


async def _batch_stats(store: Store, run_id: str) -> dict[str, Any]:
    row = dict((await store.fetch(BATCHES_SQL, run_id))[0])
    first, last = row.pop("first_at"), row.pop("last_at")
    span = (last - first).total_seconds() if first and last else 0.0
    row["mean_size"] = round(row["mean_size"], 2) if row["mean_size"] is not None else None
    row["span_s"] = round(span, 3)
    row["rows_per_s"] = round(row["inserted"] / span, 1) if span > 0 else None
    for col, key in (("reason", "by_reason"), ("source", "by_source")):
        rows = await store.fetch(BATCH_GROUPS_SQL.format(col=col), run_id)
        row[key] = {r["key"]: r["n"] for r in rows}
    return row


def throughput_series(
    points: Sequence[tuple[float, int]], *, max_buckets: int = 60
) -> list[dict[str, Any]]:
    """Rows written per bucket of time; at most ``max_buckets`` buckets of at least 1 s."""
    if not points:
        return []
    start = points[0][0]
    span = points[-1][0] - start
    width = max(1.0, math.ceil(span / max_buckets)) if span > 0 else 1.0
    count = int(span // width) + 1
    rows = [0] * count
    for t, n in points:
        rows[min(count - 1, int((t - start) // width))] += n
    return [{"t": i * width, "rows": n, "width": width} for i, n in enumerate(rows)]


# -- formatting ------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned columns; numbers right-aligned."""
    raw = [list(row) for row in rows]
    body = [[_cell(v) for v in row] for row in raw]
    numeric = [
        all(
            isinstance(r[i], int | float) and not isinstance(r[i], bool)
            for r in raw
            if r[i] is not None
        )
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in body)])


RUN_COLUMNS = (
    "run_id",
    "suite",
    "status",
    "started_at",
    "finished_at",
    "scenarios",
    "done",
    *STATUSES,
)


def format_runs(runs: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The run listing as ``table``, ``json`` or ``csv``."""
    if fmt == "json":
        return json.dumps([dict(r) for r in runs], default=_json_default, indent=2) + "\n"
    if fmt == "csv":
        return _csv(RUN_COLUMNS, ([r[c] for c in RUN_COLUMNS] for r in runs))
    if not runs:
        return "no runs\n"
    headers = ("run", "suite", "status", "started", "finished", "scenarios", "done", *STATUSES)
    return text_table(headers, [[r[c] for c in RUN_COLUMNS] for r in runs]) + "\n"


def format_report(report: Report, fmt: str) -> str:
    """One run's report as ``table``, ``json`` or ``csv`` (long format: section, key, field, value)."""
    if fmt == "json":
        return json.dumps(report.as_dict(), default=_json_default, indent=2) + "\n"
    if fmt == "csv":
        return _csv(("section", "key", "field", "value"), report_rows(report))
    return _report_text(report)


def report_rows(report: Report) -> Iterable[tuple[str, str, str, Any]]:
    """The report as long-format rows ``(section, key, field, value)`` (the CSV body)."""
    for k, v in report.run.items():
        yield ("run", "", k, v)
    for k, v in report.totals.items():
        yield ("totals", "", k, v)
    for status, n in report.by_status.items():
        yield ("status", status, "scenarios", n)
    for row in report.by_tag:
        for k, v in row.items():
            if k != "tag":
                yield ("tag", row["tag"], k, v)
    for row in report.slowest:
        key = f"{row['scenario_id']}#{row['attempt']}"
        yield ("slowest", key, "status", row["status"])
        yield ("slowest", key, "duration_ms", row["duration_ms"])
    for row in report.errors:
        for k, v in row.items():
            if k != "error_type":
                yield ("errors", row["error_type"], k, v)
    for k, v in report.batches.items():
        if isinstance(v, dict):
            for sub, n in v.items():
                yield ("batches", sub, k, n)
        else:
            yield ("batches", "", k, v)
    for point in report.throughput:
        yield ("throughput", f"{point['t']:g}", "rows", point["rows"])


def _report_text(r: Report) -> str:
    run, totals = r.run, r.totals
    rate = totals["pass_rate"]
    out = [
        f"run {run['run_id']}  ({run['status']})",
        f"  suite       {run['suite'] or '-'}",
        f"  executor    {run['executor'] or '-'}",
        f"  started     {_cell(run['started_at'])}   finished {_cell(run['finished_at'])}",
        f"  pass rate   {'-' if rate is None else f'{rate * 100:.1f}%'} "
        f"({totals['passed']:,} of {totals['scenarios_with_outcome']:,} scenarios"
        + (
            f", {totals['scenarios_planned']:,} planned"
            if totals["scenarios_planned"] is not None
            else ""
        )
        + f"; {totals['attempts']:,} attempts; {totals['dead_letters']:,} dead letters)",
        "",
        "by status (latest attempt of each scenario)",
        _indent(text_table(("status", "scenarios"), list(r.by_status.items()))),
    ]
    if r.by_tag:
        out += [
            "",
            "by tag",
            _indent(
                text_table(
                    ("tag", "scenarios", *STATUSES, "pass rate"),
                    [
                        [t["tag"], t["scenarios"], *(t[s] for s in STATUSES), _pct(t["pass_rate"])]
                        for t in r.by_tag
                    ],
                )
            ),
        ]
    if r.slowest:
        out += [
            "",
            f"slowest {len(r.slowest)} attempts",
            _indent(
                text_table(
                    ("scenario", "attempt", "status", "duration ms"),
                    [
                        [s["scenario_id"], s["attempt"], s["status"], s["duration_ms"]]
                        for s in r.slowest
                    ],
                )
            ),
        ]
    out += ["", "errors by type (every attempt)"]
    if r.errors:
        out.append(
            _indent(
                text_table(
                    ("type", "attempts", "scenarios", "example"),
                    [
                        [e["error_type"], e["attempts"], e["scenarios"], _example(e)]
                        for e in r.errors
                    ],
                )
            )
        )
    else:
        out.append("  none")
    b = r.batches
    out += [
        "",
        "batches",
        f"  {b['batches']:,} written ({_pairs(b['by_reason'])}; {_pairs(b['by_source'])})",
        f"  size min {_cell(b['min_size'])} · mean {_cell(b['mean_size'])} · max {_cell(b['max_size'])}; "
        f"{b['inserted']:,} rows inserted of {b['records']:,} sent",
        f"  over {b['span_s']:.2f}s"
        + (f" · {b['rows_per_s']:,.1f} rows/s" if b["rows_per_s"] is not None else ""),
    ]
    return "\n".join(out) + "\n"


def _example(e: Mapping[str, Any]) -> str:
    message = (e["example_message"] or "").replace("\n", " ")
    if len(message) > 60:
        message = message[:57] + "..."
    return f"{e['example_scenario']}: {message}" if message else str(e["example_scenario"])


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _pairs(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items()) or "none"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _csv(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(
            ["" if v is None else v.isoformat() if isinstance(v, datetime) else v for v in row]
        )
    return buf.getvalue()


# -- HTML ----------------------------------------------------------------------------------------------

STATUS_COLOURS = {
    "passed": "#2e7d32",
    "failed": "#c62828",
    "error": "#ef6c00",
    "timeout": "#6a1b9a",
    "cancelled": "#757575",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:60rem;color:#222;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.2rem .7rem;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#666}
.legend span{display:inline-block;margin-right:1rem}.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
svg text{font:11px system-ui,sans-serif;fill:#444}
"""


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    r, e = report, html.escape
    rate = r.totals["pass_rate"]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>arcflow report {e(str(r.run['run_id']))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>arcflow run {e(str(r.run['run_id']))}</h1>",
        f'<p class="muted">suite {e(str(r.run["suite"] or "-"))} · executor {e(str(r.run["executor"] or "-"))} · '
        f"status {e(str(r.run['status']))} · started {e(_cell(r.run['started_at']))} · "
        f"finished {e(_cell(r.run['finished_at']))}</p>",
        f"<p><strong>pass rate {e(_pct(rate))}</strong>: {r.totals['passed']:,} of "
        f"{r.totals['scenarios_with_outcome']:,} scenarios passed; {r.totals['attempts']:,} attempts; "
        f"{r.totals['dead_letters']:,} dead letters.</p>",
        "<h2>Status</h2>",
        _status_svg(r.by_status),
        _html_table(("status", "scenarios"), list(r.by_status.items())),
        "<h2>Throughput</h2>",
        _throughput_svg(r.throughput),
    ]
    if r.by_tag:
        parts += [
            "<h2>By tag</h2>",
            _html_table(
                ("tag", "scenarios", *STATUSES, "pass rate"),
                [
                    [t["tag"], t["scenarios"], *(t[s] for s in STATUSES), _pct(t["pass_rate"])]
                    for t in r.by_tag
                ],
            ),
        ]
    if r.slowest:
        parts += [
            "<h2>Slowest attempts</h2>",
            _html_table(
                ("scenario", "attempt", "status", "duration ms"),
                [
                    [s["scenario_id"], s["attempt"], s["status"], s["duration_ms"]]
                    for s in r.slowest
                ],
            ),
        ]
    parts.append("<h2>Errors by type</h2>")
    parts.append(
        _html_table(
            ("type", "attempts", "scenarios", "example scenario", "example message"),
            [
                [
                    x["error_type"],
                    x["attempts"],
                    x["scenarios"],
                    x["example_scenario"],
                    x["example_message"],
                ]
                for x in r.errors
            ],
        )
        if r.errors
        else "<p>none</p>"
    )
    b = r.batches
    parts += [
        "<h2>Batches</h2>",
        _html_table(
            (
                "batches",
                "rows inserted",
                "records sent",
                "min size",
                "mean size",
                "max size",
                "span s",
                "rows/s",
            ),
            [
                [
                    b["batches"],
                    b["inserted"],
                    b["records"],
                    b["min_size"],
                    b["mean_size"],
                    b["max_size"],
                    b["span_s"],
                    b["rows_per_s"],
                ]
            ],
        ),
        f'<p class="muted">by reason: {e(_pairs(b["by_reason"]))}; by source: {e(_pairs(b["by_source"]))}</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cls(v: Any) -> str:
        return ' class="n"' if isinstance(v, int | float) and not isinstance(v, bool) else ""

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{cls(v)}>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status_svg(by_status: Mapping[str, int], width: int = 600, height: int = 28) -> str:
    """A horizontal stacked bar of the status breakdown, with a legend."""
    total = sum(by_status.values())
    rects, x = [], 0.0
    for status, n in by_status.items():
        if not n:
            continue
        w = width * n / total
        colour = STATUS_COLOURS.get(status, "#999")
        rects.append(
            f'<rect x="{x:.2f}" y="0" width="{w:.2f}" height="{height}" fill="{colour}">'
            f"<title>{html.escape(status)}: {n:,}</title></rect>"
        )
        x += w
    if not rects:
        rects.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#eee"/>')
    legend = "".join(
        f'<span><i style="background:{STATUS_COLOURS.get(s, "#999")}"></i>{html.escape(s)} {n:,}</span>'
        for s, n in by_status.items()
    )
    return (
        f'<svg role="img" aria-label="status breakdown" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">{"".join(rects)}</svg>'
        f'<div class="legend">{legend}</div>'
    )


def _throughput_svg(
    series: Sequence[Mapping[str, Any]], width: int = 600, height: int = 180
) -> str:
    """Bars of rows written per second, per time bucket."""
    if not series:
        return "<p>no batches written</p>"
    pad_l, pad_b, pad_t = 50, 22, 10
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    rates = [p["rows"] / p["width"] for p in series]
    top = max(rates) or 1.0
    bar_w = plot_w / len(series)
    bars = []
    for i, (p, rate) in enumerate(zip(series, rates, strict=True)):
        h = plot_h * rate / top
        x = pad_l + i * bar_w
        bars.append(
            f'<rect x="{x:.2f}" y="{pad_t + plot_h - h:.2f}" width="{max(bar_w - 1, 0.5):.2f}" height="{h:.2f}" '
            f'fill="#1565c0"><title>t={p["t"]:g}s: {rate:,.1f} rows/s</title></rect>'
        )
    end = series[-1]["t"] + series[-1]["width"]
    axis = (
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 10}" y2="{pad_t + plot_h}" stroke="#888"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 10}" text-anchor="end">{top:,.0f}</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end">0</text>'
        f'<text x="{pad_l}" y="{height - 6}">0 s</text>'
        f'<text x="{width - 10}" y="{height - 6}" text-anchor="end">{end:g} s</text>'
        f'<text x="4" y="{pad_t + plot_h / 2}">rows/s</text>'
    )
    return (
        f'<svg role="img" aria-label="throughput over time" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">{axis}{"".join(bars)}</svg>'
    )


__all__ = [
    "FORMATS",
    "Report",
    "build_report",
    "format_report",
    "format_runs",
    "list_runs",
    "open_report_store",
    "render_html",
    "report_rows",
    "text_table",
    "throughput_series",
]
