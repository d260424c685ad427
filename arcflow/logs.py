"""Structured logs: human-readable lines by default, one JSON object per line for machines.

Every record about a batch carries the run id and the batch id.  They are
found, in this order, in:

1. ``extra={"run_id": ..., "batch_id": ...}`` given to the logging call;
2. the message's own arguments: arcflow writes ``"run %s batch %s: ..."``, so
   the argument after ``run`` is the run id and the one after ``batch`` the
   batch id (any ``%``-placeholder preceded by the word ``run`` or ``batch``);
3. the context set with :func:`log_context` (the command line sets the run id
   for the whole run; trio tasks inherit it).

JSON lines have the keys ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, then ``run_id`` and ``batch_id`` when known, ``exception`` when
there is one, and any other ``extra`` fields.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

_RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "arcflow_log_run_id", default=None
)
_BATCH_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "arcflow_log_batch_id", default=None
)

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: A printf conversion, possibly preceded by the word that names it (``run %s``, ``batch %s``).
_PLACEHOLDER = re.compile(
    r"(?:\b(?P<word>run|batch)\s+)?%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?(?P<conv>[diouxXeEfFgGcrsa%])"
)

#: Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}

#: Marks the handlers :func:`configure_logging` installed, so calling it again replaces them.
_MARK = "_arcflow_handler"


@contextlib.contextmanager
def log_context(*, run_id: str | None = None, batch_id: str | None = None) -> Iterator[None]:
    """Records logged inside the block (and in tasks started inside it) carry these ids."""
    tokens = []
    if run_id is not None:
        tokens.append((_RUN_ID, _RUN_ID.set(run_id)))
    if batch_id is not None:
        tokens.append((_BATCH_ID, _BATCH_ID.set(batch_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def ids_from_args(msg: Any, args: Any) -> dict[str, str]:
    """``run_id``/``batch_id`` from a ``"run %s batch %s"``-style message and its arguments."""
    if not isinstance(msg, str) or not isinstance(args, tuple) or not args:
        return {}
    found: dict[str, str] = {}
    index = 0
    for m in _PLACEHOLDER.finditer(msg):
        if m.group("conv") == "%":
            continue
        word = m.group("word")
        if word and index < len(args) and f"{word}_id" not in found:
            found[f"{word}_id"] = str(args[index])
        index += 1 + m.group(0).count("*")
    return found


def record_ids(record: logging.LogRecord) -> dict[str, str]:
    """The run and batch ids a record is about (see the module docstring for the order)."""
    parsed = ids_from_args(record.msg, record.args)
    ids = {}
    for key, var in (("run_id", _RUN_ID), ("batch_id", _BATCH_ID)):
        given = getattr(record, key, None)
        value = str(given) if given is not None else parsed.get(key) or var.get()
        if value is not None:
            ids[key] = value
    return ids


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with ``run_id`` and ``batch_id`` fields when known."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(record_ids(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in data and not key.startswith("_"):
                data[key] = value
        return json.dumps(data, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``time LEVEL logger: message``; ids the message does not already show are appended."""

    def __init__(self) -> None:
        super().__init__(HUMAN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        message = record.getMessage()
        extra = []
        ids = record_ids(record)
        if "run_id" in ids and ids["run_id"] not in message:
            extra.append(f"run={ids['run_id']}")
        if "batch_id" in ids and ids["batch_id"] not in message:
            extra.append(f"batch={ids['batch_id']}")
        if not extra:
            return text
        first, nl, rest = text.partition("\n")
        return f"{first} [{' '.join(extra)}]{nl}{rest}"


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (so a live display that redirects it still works)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``--log-format`` (``human`` or ``json``)."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "human":
        return HumanFormatter()
    raise ValueError(f"unknown log format {fmt!r}: use human or json")


def configure_logging(
    level: str = "WARNING", fmt: str = "human", stream: TextIO | None = None
) -> logging.Handler:
    """Send log records at ``level`` and above to ``stream`` (default: the current stderr).

    Replaces the handler a previous call installed; leaves other handlers alone.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else _CurrentStderr())
    handler.setFormatter(make_formatter(fmt))
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.WARNING))
    return handler


__all__ = [
    "HumanFormatter",
    "JsonFormatter",
    "configure_logging",
    "ids_from_args",
    "log_context",
    "make_formatter",
    "record_ids",
]
