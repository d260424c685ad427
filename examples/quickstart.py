"""The bundled example: a small, fast, deterministic scoring function.

Each scenario asks whether a word is a palindrome once lower-cased; the score
is the fraction of letters that mirror.  Scenario ``input`` is ``{"text": ...}``.
Run it with::

    python -m arcflow run examples/quickstart.jsonl --executor python:examples.quickstart:score
"""

from __future__ import annotations

from typing import Any

import trio

import arcflow


async def score(scenario: arcflow.Scenario) -> dict[str, Any]:
    """Score one scenario; sleeps a few milliseconds to look like real work."""
    text = str(scenario.input.get("text", "")).lower()
    await trio.sleep(0.002 + (len(text) % 5) / 1000)
    if not text:
        raise ValueError("scenario has no text")
    pairs = len(text) // 2 or 1
    mirrored = sum(1 for i in range(len(text) // 2) if text[i] == text[-1 - i])
    passed = text == text[::-1]
    return {
        "status": "passed" if passed else "failed",
        "score": round(mirrored / pairs, 4),
        "output": {"reversed": text[::-1], "length": len(text)},
    }


async def noop(scenario: arcflow.Scenario) -> None:
    """Does nothing: for throughput runs, where only the pipeline is measured."""
    return None


def make_file(path: str, count: int) -> None:
    """Write ``count`` no-op scenarios to ``path`` (JSONL)."""
    import json

    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            f.write(json.dumps({"id": f"s{i:07d}", "input": {"i": i}}) + "\n")
