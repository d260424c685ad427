"""Run listings, run reports, diffs, gates, exports and the viewer, read back from PostgreSQL.

``python -m arcflow runs`` lists runs; ``python -m arcflow report RUN_ID``
reports one; ``diff RUN_A RUN_B`` compares two (:mod:`.diff`); ``export RUN_ID``
streams its outcomes (:mod:`.export`); ``view`` serves all of it to a browser
(:mod:`.view`); ``--fail-under`` and ``--fail-on-regression`` are gates
(:mod:`.gate`).  Counts by status are over each scenario's conclusion, its
latest final attempt (:func:`.queries.concluded`), so a scenario that errored
once and passed on retry counts as passed; errors are grouped over *every*
attempt (what went wrong on the way).  Formats: ``table`` (aligned text),
``json`` and ``csv``; a report or a diff can also be written as one
self-contained HTML page (inline CSS, SVG and script, nothing fetched).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .html import render_html
    from .queries import (
        CONCLUSION_KEY,
        STATUSES,
        Report,
        build_report,
        concluded,
        list_runs,
        open_report_store,
        scenario_attempts,
        scenario_rows,
        throughput_series,
    )
    from .text import FORMATS, format_report, format_runs, report_rows, text_table

#: Where each public name lives: loaded on first use, so that importing a light module of
#: the package (``gate``, ``options``: what the command line's parser needs) does not load
#: the SQL, HTML and text modules.
_HOMES = {
    "render_html": "html",
    **dict.fromkeys(
        (
            "CONCLUSION_KEY",
            "STATUSES",
            "Report",
            "build_report",
            "concluded",
            "list_runs",
            "open_report_store",
            "scenario_attempts",
            "scenario_rows",
            "throughput_series",
        ),
        "queries",
    ),
    **dict.fromkeys(
        ("FORMATS", "format_report", "format_runs", "report_rows", "text_table"), "text"
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "CONCLUSION_KEY",
    "FORMATS",
    "STATUSES",
    "Report",
    "build_report",
    "concluded",
    "format_report",
    "format_runs",
    "list_runs",
    "open_report_store",
    "render_html",
    "report_rows",
    "scenario_attempts",
    "scenario_rows",
    "text_table",
    "throughput_series",
]
