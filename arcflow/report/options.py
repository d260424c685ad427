"""What the command line needs of the report commands to build its parser: names and
defaults, in a module that imports nothing (every ``python -m arcflow`` start builds the
whole parser; the report modules themselves load only for the command that runs).
"""

from __future__ import annotations

__all__ = ["DEFAULT_PORT", "EXPORT_FORMATS"]

#: ``export --format``.
EXPORT_FORMATS = ("jsonl", "csv", "junit", "parquet")
#: ``view --port``: where the viewer listens on 127.0.0.1 by default.
DEFAULT_PORT = 8765
