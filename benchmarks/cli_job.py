"""The user's job as a whole process: ``python -m arcflow run FILE`` against equal-work scripts.

``python -m benchmarks.cli_job [--n 100000] [--rounds 3] [--db DSN]``

Three programs, each a fresh process timed from start to exit, alternating
rounds on the same PostgreSQL:

* **arcflow**: ``python -m arcflow run FILE --executor python:benchmarks.workloads:noop
  --batch-size 1000 --json --progress off`` (what a user runs);
* **equal work** (``--baseline equal``, this module run as a script): read the
  JSONL, check each line's fields, hash each scenario's content, take two
  timestamps, build the same 17 columns and COPY them into a table of the
  same shape (same primary key) in one transaction per 1,000 rows;
* **minimal** (``--baseline minimal``): read the JSONL and COPY ids with
  constant columns, one transaction per 1,000 rows: the floor of any job
  that writes a row per line.

Reports records/s of each and the ratios arcflow / equal and arcflow /
minimal.  Every run writes its rows into a run id of its own; the row count
is checked after each.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = (
    "run_id", "scenario_id", "attempt", "status", "final", "score", "output", "error_type",
    "error_message", "started_at", "finished_at", "duration_ms", "executor", "worker",
    "scenario_hash", "batch_id", "tags",
)  # fmt: skip
_EXECUTOR = '{"kind":"python","function":"baseline"}'


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from f


def _hash(data: dict[str, Any]) -> str:
    body = json.dumps(
        {
            "input": data.get("input", {}),
            "tags": data.get("tags", []),
            "metadata": data.get("metadata", {}),
            "timeout_s": data.get("timeout_s"),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(body.encode()).hexdigest()


async def _baseline(dsn: str, path: Path, run_id: str, kind: str, batch: int) -> int:
    """One baseline job in plain asyncio; returns the rows written."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_outcomes (LIKE arcflow.outcomes INCLUDING ALL)"
        )
        rows: list[tuple[Any, ...]] = []
        written = 0
        batch_no = 0

        async def flush() -> None:
            nonlocal written, batch_no
            batch_no += 1
            async with conn.transaction():
                await conn.copy_records_to_table("bench_outcomes", records=rows, columns=COLUMNS)
            written += len(rows)
            rows.clear()

        for raw in _lines(path):
            if not raw.strip():
                continue
            data = json.loads(raw)
            if kind == "equal":
                sid = data["id"]
                if not isinstance(sid, str) or not sid:
                    raise ValueError(f"bad id {sid!r}")
                if not isinstance(data.get("input", {}), dict | list | str | int | float):
                    raise ValueError("bad input")
                digest = _hash(data)
                started = datetime.now(UTC)
                finished = datetime.now(UTC)
                rows.append(
                    (
                        run_id, sid, 1, "passed", True, None, None, None, None, started,
                        finished, (finished - started).total_seconds() * 1000.0, _EXECUTOR,
                        "worker-0", digest, f"{run_id}-{batch_no}", [],
                    )
                )  # fmt: skip
            else:
                now = datetime.now(UTC)
                rows.append(
                    (
                        run_id, data["id"], 1, "passed", True, None, None, None, None, now, now,
                        0.0, _EXECUTOR, "w", None, "b", [],
                    )
                )  # fmt: skip
            if len(rows) >= batch:
                await flush()
        if rows:
            await flush()
        return written
    finally:
        await conn.close()


def _count(dsn: str, table: str, run_id: str) -> int:
    import asyncpg

    async def go() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            value = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE run_id = $1", run_id)
            return int(value)
        finally:
            await conn.close()

    return asyncio.run(go())


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds (children's user+sys) of a command, and its stdout."""
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu, proc.stdout


def measure(dsn: str, n: int, rounds: int, tmp: Path) -> dict[str, Any]:
    """Alternating rounds of the three programs over one file of ``n`` no-op scenarios."""
    from benchmarks.workloads import write_jsonl

    path = write_jsonl(tmp / f"scenarios-{n}.jsonl", n)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results: dict[str, list[tuple[float, float]]] = {"arcflow": [], "equal": [], "minimal": []}
    for r in range(rounds):
        order = ["arcflow", "equal", "minimal"]
        order = order[r % 3 :] + order[: r % 3]
        for name in order:
            run_id = f"bench-{name}-{uuid.uuid4().hex[:8]}"
            if name == "arcflow":
                cmd = [
                    sys.executable, "-m", "arcflow", "run", str(path), "--executor",
                    "python:benchmarks.workloads:noop", "--db", dsn, "--run-id", run_id,
                    "--batch-size", "1000", "--json", "--progress", "off",
                    "--data-dir", str(tmp / "data"),
                ]  # fmt: skip
                table = "arcflow.outcomes"
            else:
                cmd = [
                    sys.executable, "-m", "benchmarks.cli_job", "--baseline", name,
                    "--db", dsn, "--file", str(path), "--run-id", run_id,
                ]  # fmt: skip
                table = "bench_outcomes"
            wall, cpu, _out = _timed(cmd, env)
            got = _count(dsn, table, run_id)
            if got != n:
                raise RuntimeError(f"{name} wrote {got} rows of {n}")
            results[name].append((wall, cpu))
    out: dict[str, Any] = {"n": n, "rounds": rounds}
    for name, samples in results.items():
        walls = [w for w, _ in samples]
        out[name] = {
            "wall_s": statistics.median(walls),
            "records_per_s": n / statistics.median(walls),
            "cpu_s": statistics.median([c for _, c in samples]),
            "walls": walls,
        }
    out["arcflow_over_equal"] = out["arcflow"]["records_per_s"] / out["equal"]["records_per_s"]
    out["arcflow_over_minimal"] = out["arcflow"]["records_per_s"] / out["minimal"]["records_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli_job", description=__doc__)
    parser.add_argument("--n", type=int, action="append", help="scenarios (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", help="PostgreSQL DSN (default: a throwaway server)")
    parser.add_argument("--baseline", choices=("equal", "minimal"), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline:
        written = asyncio.run(_baseline(args.db, args.file, args.run_id, args.baseline, 1000))
        print(written)
        return 0
    sizes = args.n or [100_000]
    from benchmarks.db import BenchDB

    db = BenchDB(args.db, allow_truncate=True)
    dsn = db.dsn
    try:
        with tempfile.TemporaryDirectory(prefix="arcflow-cli-job-") as tmp:
            for n in sizes:
                res = measure(dsn, n, args.rounds, Path(tmp))
                print(json.dumps(res, indent=2))
                print(
                    f"n={n}: arcflow {res['arcflow']['records_per_s']:,.0f}/s, equal work "
                    f"{res['equal']['records_per_s']:,.0f}/s, minimal "
                    f"{res['minimal']['records_per_s']:,.0f}/s; arcflow/equal "
                    f"{res['arcflow_over_equal']:.2f}, arcflow/minimal "
                    f"{res['arcflow_over_minimal']:.2f}"
                )
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
