"""Poison of every kind is dead-lettered, never fatal: the rest of the batch is written, the run goes on."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import arcflow
from arcflow.models import Outcome, Scenario
from arcflow.poison import dead_letter_payload, output_problem, storable_text
from arcflow.store.classify import classify, classify_sqlstate
from arcflow.testing import make_outcome


def _circular() -> dict[str, Any]:
    value: dict[str, Any] = {"name": "loop"}
    value["self"] = value
    return value


def _deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


POISON = {
    "nul-id": lambda run: make_outcome(run, "bad\x00id"),
    # Random, so PostgreSQL cannot compress it into an index entry (class 54 then).
    "long-id": lambda run: make_outcome(run, secrets.token_hex(5_000)),
    "surrogate-id": lambda run: make_outcome(run, "bad\ud800id"),
    "circular-output": lambda run: make_outcome(run, "circular", output=_circular()),
    "deep-output": lambda run: make_outcome(run, "deep", output=_deep(100_000)),
    "set-output": lambda run: make_outcome(run, "set", output={"s": {1, 2}}),
    "nul-output": lambda run: make_outcome(run, "nul-output", output={"t": "a\x00b"}),
}


@pytest.mark.parametrize("kind", sorted(POISON))
async def test_each_kind_of_poison_is_dead_lettered_and_the_rest_written(
    kind: str, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """One poison outcome among good ones: the good ones are written, the poison one dead-lettered."""
    async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=tmp_path, batch_size=10) as rt:
        for i in range(4):
            await rt.record(make_outcome(run_id, f"good-{i}"))
        await rt.record(POISON[kind](run_id))
        for i in range(4, 8):
            await rt.record(make_outcome(run_id, f"good-{i}"))
    stats = rt.statistics()
    assert (stats.written, stats.dead_lettered) == (8, 1)
    rows = await db_query(
        "SELECT scenario_id FROM arcflow.outcomes WHERE run_id = $1 ORDER BY 1", run_id
    )
    assert [r["scenario_id"] for r in rows] == [f"good-{i}" for i in range(8)]
    dead = await db_query(
        "SELECT scenario_id, payload, message FROM arcflow.dead_letters WHERE run_id = $1", run_id
    )
    assert len(dead) == 1
    payload = json.loads(dead[0]["payload"])  # always valid JSON text
    assert "\x00" not in dead[0]["scenario_id"] and len(dead[0]["scenario_id"]) <= 500
    # The payload is the outcome (with what could not be encoded replaced), or its cut head.
    if payload.get("truncated"):
        assert payload["original_size"] > 0 and payload["head"]
    else:
        assert payload["run_id"] == run_id and isinstance(payload["scenario_id"], str)
    assert dead[0]["message"]
    run = await db_query("SELECT status FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "finished"


async def _bad_output(scenario: Scenario) -> dict[str, Any]:
    if scenario.id == "circular":
        return {"output": _circular()}
    if scenario.id == "deep":
        return {"output": _deep(100_000)}
    return {"output": {"fine": True}}


async def test_an_executor_output_that_is_not_json_is_an_error_outcome(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A function returning a circular or too deep output gets status error (InvalidOutput), stored."""
    async with arcflow.open_runtime(_bad_output, dsn, run_id=run_id, data_dir=tmp_path) as rt:
        for sid in ("circular", "deep", "fine"):
            await rt.submit(Scenario(id=sid))
    rows = await db_query(
        "SELECT scenario_id, status, error_type, output FROM arcflow.outcomes WHERE run_id = $1 "
        "ORDER BY 1",
        run_id,
    )
    got = {r["scenario_id"]: (r["status"], r["error_type"]) for r in rows}
    assert got == {
        "circular": ("error", "InvalidOutput"),
        "deep": ("error", "InvalidOutput"),
        "fine": ("passed", None),
    }


async def test_a_surrogate_in_a_scenario_input_does_not_crash_a_producer(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A lone surrogate in a scenario's input hashes and runs (it used to kill the producer)."""

    async def echo_length(scenario: Scenario) -> dict[str, Any]:
        return {"score": float(len(scenario.input["text"]))}

    async with arcflow.open_runtime(echo_length, dsn, run_id=run_id, data_dir=tmp_path) as rt:
        await rt.submit(Scenario(id="s", input={"text": "a\ud800b"}))
    rows = await db_query(
        "SELECT status, score, scenario_hash FROM arcflow.outcomes WHERE run_id = $1", run_id
    )
    assert [(r["status"], r["score"]) for r in rows] == [("passed", 3.0)]
    assert len(rows[0]["scenario_hash"]) == 64


def test_payloads_and_texts_can_always_be_stored() -> None:
    """Dead-letter payloads are ASCII JSON, bounded; texts have no NUL or lone surrogate."""
    for make in POISON.values():
        outcome: Outcome = make("r")
        text = dead_letter_payload(outcome, limit=5000)
        assert text.isascii() and len(text) <= 5200
        json.loads(text)
    assert storable_text("a\x00b\ud800") == "a\\u0000b\\ud800"
    long_a, long_b = storable_text("x" * 900 + "a", 100), storable_text("x" * 900 + "b", 100)
    assert len(long_a) == 100 and long_a != long_b


def test_output_problems_are_named() -> None:
    """output_problem says why an output cannot be JSON, and None for one that can."""
    assert output_problem({"a": [1, 2.5, None, "x"]}) is None
    assert "Circular reference" in (output_problem(_circular()) or "")
    assert "nested too deep" in (output_problem(_deep(100_000)) or "")
    assert "not JSON serializable" in (output_problem({"s": {1}}) or "")


def test_limits_and_a_lost_connection_are_classified() -> None:
    """SQLSTATE class 54 (a limit exceeded) is a data error; InternalClientError is transient."""
    assert classify_sqlstate("54000") == "data" and classify_sqlstate("54001") == "data"
    assert classify(asyncpg.exceptions.InternalClientError("lost")) == "transient"
