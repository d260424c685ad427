"""What the benchmarks run: scenarios, the no-op and sleeping functions, and outcome rows.

Every system under test (arcflow and each baseline) runs the same scenarios
and writes the same 17-column row per outcome into ``arcflow.outcomes``
(content hash and executor details included), so they are compared on equal
work.  The functions here are importable by the arcflow CLI in a child
process (``--executor python:benchmarks.workloads:noop``).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arcflow import Scenario
from arcflow.store.schema import OUTCOME_COLUMNS

#: Executor details stored with each baseline row (arcflow stores its own).
BASELINE_EXECUTOR = json.dumps(
    {"kind": "python", "function": "benchmarks.workloads:noop"}, separators=(",", ":")
)

COLUMNS = OUTCOME_COLUMNS
_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
#: The statement the INSERT baselines run (same idempotency as arcflow's write).
INSERT_SQL = (
    f"INSERT INTO arcflow.outcomes ({', '.join(COLUMNS)}) VALUES ({_PLACEHOLDERS}) "
    "ON CONFLICT (run_id, scenario_id, epoch, attempt) DO NOTHING"
)


def scenario_id(i: int) -> str:
    return f"s{i:07d}"


def scenario_dict(i: int) -> dict[str, Any]:
    return {"id": scenario_id(i), "input": {"i": i}}


def make_scenarios(n: int) -> list[Scenario]:
    """``n`` small scenarios, as arcflow objects."""
    return [Scenario(id=scenario_id(i), input={"i": i}) for i in range(n)]


def write_jsonl(
    path: Path, n: int, *, sleep: tuple[float, float] | None = None, seed: int = 7
) -> Path:
    """Write ``n`` scenarios to ``path`` (optionally each with a random ``sleep`` in seconds)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            data = scenario_dict(i)
            if sleep is not None:
                data["input"]["sleep"] = round(rng.uniform(*sleep), 4)
            f.write(json.dumps(data) + "\n")
    return path


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def content_hash(data: dict[str, Any]) -> str:
    """The scenario content hash arcflow stores (sha256 of canonical JSON), written plainly."""
    body = json.dumps(
        {
            "input": data.get("input", {}),
            "tags": list(data.get("tags", [])),
            "metadata": data.get("metadata", {}),
            "timeout_s": data.get("timeout_s"),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def outcome_row(
    run_id: str,
    data: dict[str, Any],
    started: datetime,
    finished: datetime,
    worker: str,
    batch_id: str,
    *,
    scenario_hash: str | None = None,
) -> tuple[Any, ...]:
    """One passed outcome as a row of ``arcflow.outcomes`` (COLUMNS order)."""
    return (
        run_id,
        data["id"],
        1,
        1,
        "passed",
        True,
        None,
        None,
        None,
        None,
        started,
        finished,
        (finished - started).total_seconds() * 1000.0,
        BASELINE_EXECUTOR,
        worker,
        scenario_hash if scenario_hash is not None else content_hash(data),
        batch_id,
        None,
        [],
    )


def now() -> datetime:
    return datetime.now(UTC)


# -- scenario functions ---------------------------------------------------------------------------


async def noop(scenario: Any) -> None:
    """The no-op scenario (for arcflow's ``python:`` executor; returns "passed")."""
    return None


async def trio_sleep(scenario: Any) -> None:
    """Sleep ``input["sleep"]`` seconds under trio (the latency-bound workload)."""
    import trio

    await trio.sleep(float(scenario.input.get("sleep", 0)))


class StartRecorder:
    """Wraps a scenario function, recording each call's start and end (perf_counter)."""

    def __init__(self, sleep_key: str = "sleep") -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.sleep_key = sleep_key

    async def __call__(self, scenario: Any) -> None:
        import trio

        self.starts.append(time.perf_counter())
        await trio.sleep(float(scenario.input.get(self.sleep_key, 0)))
        self.ends.append(time.perf_counter())


def sync_sleep(scenario: Any) -> None:
    """Block ``input["sleep"]`` seconds in the calling thread (the sync-function workload)."""
    time.sleep(float(scenario.input.get("sleep", 0.05)))
