"""Run listings and run reports, read back from PostgreSQL.

``python -m arcflow runs`` lists runs; ``python -m arcflow report RUN_ID``
reports one.  Counts by status are over each scenario's *latest* attempt (what
the run concluded), so a scenario that errored once and passed on retry
counts as passed; errors are grouped over *every* attempt (what went wrong on
the way).  Formats: ``table`` (aligned text), ``json`` and ``csv``; a report
can also be written as one self-contained HTML page (inline CSS and SVG, no
scripts, nothing fetched).
"""

from .html import render_html
from .queries import STATUSES, Report, build_report, list_runs, open_report_store, throughput_series
from .text import FORMATS, format_report, format_runs, report_rows, text_table

__all__ = [
    "FORMATS",
    "STATUSES",
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
