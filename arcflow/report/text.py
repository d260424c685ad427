"""A report as text: aligned tables, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .queries import STATUSES, Report

FORMATS = ("table", "json", "csv")


def cell(value: Any) -> str:
    """One value as table text: - for None, times to the second, numbers with separators."""
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
    body = [[cell(v) for v in row] for row in raw]
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
    for k, v in report.usage.items():
        yield ("usage", "", k, v)
    if report.epochs:
        e = report.epochs
        for k, v in e.items():
            if k in ("pass_at_k", "pass_all_k"):
                for n, rate in v.items():
                    yield ("epochs", n, k, rate)
            elif k == "least_consistent":
                for row in v:
                    for field, value in row.items():
                        if field != "scenario_id":
                            yield ("least_consistent", row["scenario_id"], field, value)
            else:
                yield ("epochs", "", k, v)
    if report.fleet:
        for state, n in report.fleet["claims"].items():
            yield ("claims", state, "scenarios", n)
        for w in report.fleet["workers"]:
            for field, value in w.items():
                if field != "worker_id":
                    yield ("workers", w["worker_id"], field, value)


def _report_text(r: Report) -> str:
    run, totals = r.run, r.totals
    rate = totals["pass_rate"]
    out = [
        f"run {run['run_id']}  ({run['status']})",
        f"  suite       {run['suite'] or '-'}",
        f"  executor    {run['executor'] or '-'}",
        f"  started     {cell(run['started_at'])}   finished {cell(run['finished_at'])}",
        f"  pass rate   {'-' if rate is None else f'{rate * 100:.1f}%'} "
        f"({totals['passed']:,} of {totals['scenarios_with_outcome']:,} scenarios"
        + (
            f", {totals['scenarios_planned']:,} planned"
            if totals["scenarios_planned"] is not None
            else ""
        )
        + f"; {totals['attempts']:,} attempts; {totals['dead_letters']:,} dead letters)",
        "",
        "by status (each scenario's conclusion: its latest final attempt)",
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
                        [
                            t["tag"],
                            t["scenarios"],
                            *(t[s] for s in STATUSES),
                            percent(t["pass_rate"]),
                        ]
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
    usage = r.usage
    if usage.get("input_tokens") or usage.get("output_tokens") or usage.get("cost_usd"):
        out += [
            "",
            f"usage (every attempt)  {usage['input_tokens']:,} tokens in · "
            f"{usage['output_tokens']:,} out · ${usage['cost_usd']:,.4f}",
        ]
    if r.epochs and r.epochs.get("scenarios"):
        out += ["", *_epochs_text(r.epochs)]
    if r.fleet:
        out += ["", *_fleet_text(r.fleet)]
    b = r.batches
    out += [
        "",
        "batches",
        f"  {b['batches']:,} written ({pairs(b['by_reason'])}; {pairs(b['by_source'])})",
        f"  size min {cell(b['min_size'])} · mean {cell(b['mean_size'])} · max {cell(b['max_size'])}; "
        f"{b['inserted']:,} rows inserted of {b['records']:,} sent",
        f"  over {b['span_s']:.2f}s"
        + (f" · {b['rows_per_s']:,.1f} rows/s" if b["rows_per_s"] is not None else ""),
    ]
    return "\n".join(out) + "\n"


#: The columns of a shared run's workers table (text and HTML).
FLEET_HEADERS = ("worker", "host", "pid", "state", "claimed", "done", "done/s", "last heartbeat")


def fleet_rows(fleet: Mapping[str, Any]) -> list[list[Any]]:
    """A shared run's workers (``Report.fleet``) as rows under :data:`FLEET_HEADERS`."""
    return [
        [
            w["worker_id"],
            w["host"],
            w["pid"],
            w["state"],
            w["claimed"],
            w["done"],
            "-" if w["rate_per_s"] is None else f"{w['rate_per_s']:.1f}",
            f"{w['heartbeat_age_s']:.1f}s ago",
        ]
        for w in fleet["workers"]
    ]


def _fleet_text(f: Mapping[str, Any]) -> list[str]:
    return [
        f"workers (shared run; lease {f['lease_s']:g}s; claims: {pairs(f['claims'])})",
        _indent(text_table(FLEET_HEADERS, fleet_rows(f))),
    ]


def _epochs_text(e: Mapping[str, Any]) -> list[str]:
    span = (
        f"{e['epochs_min']}"
        if e["epochs_min"] == e["epochs_max"]
        else f"{e['epochs_min']}-{e['epochs_max']}"
    )
    ks = list(e["pass_at_k"])
    out = [
        f"across epochs ({e['scenarios']:,} scenarios, {span} epochs each)",
        _indent(
            text_table(
                ("k", "pass@k (any of k passes)", "pass^k (all k pass)"),
                [[k, percent(e["pass_at_k"][k]), percent(e["pass_all_k"][k])] for k in ks],
            )
        ),
        f"  consistent (passed every epoch or none) {percent(e['consistent'])}; "
        f"{e['flaky_scenarios']:,} scenarios passed in some epochs and not others",
    ]
    if e.get("mean_score") is not None:
        out.append(
            f"  mean score {e['mean_score']:.4g}; mean variance of a scenario's score across "
            f"epochs {e['mean_score_variance']:.4g}"
        )
    if e.get("least_consistent"):
        out += [
            "  least consistent scenarios",
            _indent(
                _indent(
                    text_table(
                        ("scenario", "epochs", "passed", "mean score", "score stddev"),
                        [
                            [
                                v["scenario_id"],
                                v["epochs"],
                                v["passed"],
                                v["mean_score"],
                                v["score_stddev"],
                            ]
                            for v in e["least_consistent"]
                        ],
                    )
                )
            ),
        ]
    return out


def _example(e: Mapping[str, Any]) -> str:
    message = (e["example_message"] or "").replace("\n", " ")
    if len(message) > 60:
        message = message[:57] + "..."
    return f"{e['example_scenario']}: {message}" if message else str(e["example_scenario"])


def percent(rate: float | None) -> str:
    """A rate as a percentage with one decimal, - when there is none."""
    return "-" if rate is None else f"{rate * 100:.1f}%"


def pairs(d: Mapping[str, Any]) -> str:
    """``key count, key count`` (none when empty)."""
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
