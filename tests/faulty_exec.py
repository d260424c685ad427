"""Executor functions used by the fault-injection tests (importable as python:faulty_exec:NAME)."""

from __future__ import annotations

import os
from typing import Any

import trio

from arcflow.models import Scenario


async def slow(scenario: Scenario) -> dict[str, Any]:
    """Sleeps input.sleep seconds (default 0.02) then passes."""
    await trio.sleep(float(scenario.input.get("sleep", os.environ.get("FAULTY_SLEEP", 0.02))))
    return {"status": "passed", "score": 1.0, "output": {"id": scenario.id}}


async def nul_output(scenario: Scenario) -> dict[str, Any]:
    """Returns an output with a NUL character (PostgreSQL rejects it) when input.poison is set."""
    if scenario.input.get("poison"):
        return {"status": "passed", "output": {"text": "bad\x00byte"}}
    return {"status": "passed", "output": {"text": "fine"}}


async def by_input(scenario: Scenario) -> dict[str, Any] | None:
    """Behaves as input.mode says: pass (default), fail, error, or sleep input.seconds then pass."""
    mode = scenario.input.get("mode", "pass")
    if mode == "sleep":
        await trio.sleep(float(scenario.input.get("seconds", 1)))
    if mode == "error":
        raise RuntimeError("asked to error")
    if mode == "fail":
        return {"status": "failed"}
    return None


async def by_epoch(scenario: Scenario) -> dict[str, Any]:
    """Passes in the epochs listed in input.pass_epochs (default all); score input.scores[epoch-1]."""
    passes = scenario.input.get("pass_epochs")
    scores = scenario.input.get("scores")
    passed = passes is None or scenario.epoch in passes
    out: dict[str, Any] = {"status": "passed" if passed else "failed"}
    if scores:
        out["score"] = scores[scenario.epoch - 1]
    return out
