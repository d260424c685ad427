"""A report as one self-contained HTML page: inline CSS and SVG, no scripts, nothing fetched."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .queries import STATUSES, Report
from .text import cell, pairs, percent

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
        f"status {e(str(r.run['status']))} · started {e(cell(r.run['started_at']))} · "
        f"finished {e(cell(r.run['finished_at']))}</p>",
        f"<p><strong>pass rate {e(percent(rate))}</strong>: {r.totals['passed']:,} of "
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
                    [t["tag"], t["scenarios"], *(t[s] for s in STATUSES), percent(t["pass_rate"])]
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
        f'<p class="muted">by reason: {e(pairs(b["by_reason"]))}; by source: {e(pairs(b["by_source"]))}</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cls(v: Any) -> str:
        return ' class="n"' if isinstance(v, int | float) and not isinstance(v, bool) else ""

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{cls(v)}>{html.escape(cell(v))}</td>" for v in row) + "</tr>"
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
