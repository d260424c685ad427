"""Poison: records PostgreSQL or JSON cannot take, and forms of them that can always be stored.

An outcome can be poison in many ways: an output JSON cannot encode (a
cycle, a set, nesting deeper than the encoder goes), text PostgreSQL refuses
(a NUL character, a lone surrogate), a value past one of its limits (an id
longer than an index entry may be, a jsonb document over 256 MB).  The
writer isolates such a record by bisection and stores it in
``arcflow.dead_letters``; the functions here make sure that the dead letter
itself can always be written, so that a poison record is never fatal:

* :func:`dead_letter_payload`: the record as ASCII JSON (NUL and surrogates
  escaped), or, if it cannot be encoded, as JSON around a bounded ``repr``;
  cut to a size limit with the original size noted;
* :func:`storable_text`: any text with NUL and lone surrogates escaped and a
  bounded length, for ids and messages;
* :func:`output_problem`: why an executor's output cannot be stored as JSON
  (None if it can), so the producer records ``error`` instead of passing
  poison down the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
from typing import Any

from .models import Outcome

__all__ = ["dead_letter_payload", "output_problem", "storable_text"]

#: Largest dead-letter payload kept, in characters; a longer one is cut (its size is noted).
PAYLOAD_LIMIT = 1 << 20

_repr = reprlib.Repr()
_repr.maxstring = 2000
_repr.maxother = 2000
_repr.maxlevel = 6


def output_problem(output: Any) -> str | None:
    """Why ``output`` cannot be stored as JSON, or None when it can."""
    if output is None or isinstance(output, str | int | float | bool):
        return None
    try:
        json.dumps(output, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        kind = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
        return (
            f"output cannot be encoded as JSON ({type(exc).__name__}: {kind}): {safe_repr(output)}"
        )
    return None


def safe_repr(value: Any) -> str:
    """A bounded ``repr`` of anything (cycles and depth included), never raising."""
    try:
        return _repr.repr(value)
    except Exception as exc:  # a __repr__ that raises
        return f"<{type(value).__name__} whose repr raised {type(exc).__name__}>"


def storable_text(text: str, limit: int = 2000) -> str:
    """``text`` with NUL and lone surrogates escaped, at most ``limit`` characters.

    A cut text ends with ``...[N chars, sha256 H]`` so that two long ids cut
    alike stay distinct.
    """
    clean = text.replace("\x00", "\\u0000")
    clean = clean.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(clean) <= limit:
        return clean
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    tail = f"...[{len(text)} chars, sha256 {digest}]"
    return clean[: max(0, limit - len(tail))] + tail


def dead_letter_payload(outcome: Outcome, limit: int = PAYLOAD_LIMIT) -> str:
    """The outcome as text PostgreSQL always takes: ASCII JSON, bounded in size."""
    try:
        text = json.dumps(outcome.to_json(), ensure_ascii=True, default=safe_repr)
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        data = outcome.to_json()
        data["output"] = {"unencodable": safe_repr(outcome.output), "reason": repr(exc)}
        data["executor"] = {"unencodable": safe_repr(dict(outcome.executor))}
        try:
            text = json.dumps(data, ensure_ascii=True, default=safe_repr)
        except (TypeError, ValueError, RecursionError, OverflowError):
            text = json.dumps({"unencodable": safe_repr(outcome), "reason": repr(exc)})
    if len(text) > limit:
        head = text[: limit // 2]
        text = json.dumps(
            {"truncated": True, "original_size": len(text), "head": head}, ensure_ascii=True
        )
    return text
