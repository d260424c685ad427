"""Many scenarios at once, through ``python -m arcflow run`` as a whole process, against baselines.

``python -m benchmarks.concurrency [--only latency,sync,process] [--rounds 2] [--quick]``

* **latency**: scenarios sleeping 1-3 s (``python:benchmarks.workloads:trio_sleep``) at
  concurrency 1,000, 10,000 and 20,000 (3 x concurrency scenarios each), against an
  asyncio program doing the same (``python -m benchmarks.baselines asyncio-batcher
  --sleep``: a task per slot, an ``asyncio.Queue``, batched writes).  The steady-state
  completion rate is read from the rows each wrote (``started_at``/``finished_at``):
  completions from the concurrency-th one to the last start, against the bound
  (concurrency / mean latency).
* **sync**: a sync function sleeping 50 ms (``python:benchmarks.workloads:sync_sleep``) at
  concurrency 200, against a ``ThreadPoolExecutor(200)`` running the same function and
  writing the same rows.
* **process**: a command per scenario (``process:`` a tiny shell command reading stdin and
  printing ``null``) at concurrency 16, against a ``ThreadPoolExecutor(16)`` calling
  ``subprocess.run`` with the scenario on stdin, writing the same rows.

Each program is a fresh process; rounds alternate which goes first.  Writes go to a
throwaway PostgreSQL with its durability defaults (fsync on).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ["/bin/sh", "-c", "cat >/dev/null; echo null"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _write_file(path: Path, n: int, sleep: tuple[float, float] | float | None) -> list[float]:
    rng = random.Random(42)
    sleeps: list[float] = []
    with path.open("w") as f:
        for i in range(n):
            data: dict[str, Any] = {"id": f"s{i:07d}", "input": {"i": i}}
            if sleep is not None:
                s = round(rng.uniform(*sleep), 4) if isinstance(sleep, tuple) else sleep
                data["input"]["sleep"] = s
                sleeps.append(s)
            f.write(json.dumps(data) + "\n")
    return sleeps


def _arcflow(
    path: Path, dsn: str, run_id: str, executor: str, concurrency: int, tmp: Path
) -> float:
    cmd = [
        sys.executable, "-m", "arcflow", "run", str(path), "--executor", executor, "--db", dsn,
        "--run-id", run_id, "--concurrency", str(concurrency), "--batch-size", "1000",
        "--flush-interval", "2", "--json", "--progress", "off", "--data-dir", str(tmp / "data"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"arcflow exited {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def _rows(dsn: str, run_id: str) -> list[tuple[datetime, datetime]]:
    import asyncpg

    async def go() -> list[tuple[datetime, datetime]]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT started_at, finished_at FROM arcflow.outcomes WHERE run_id = $1", run_id
            )
            return [(r["started_at"], r["finished_at"]) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(go())


def _steady(rows: list[tuple[datetime, datetime]], concurrency: int) -> float:
    """Completions per second from the concurrency-th completion to the last start."""
    starts = [s.timestamp() for s, _ in rows]
    ends = sorted(e.timestamp() for _, e in rows)
    if len(ends) <= concurrency:
        return float("nan")
    a, last_start = ends[concurrency - 1], max(starts)
    done = sum(1 for e in ends if a < e <= last_start)
    return done / (last_start - a) if last_start > a else float("nan")


def latency(dsn: str, rounds: int, tmp: Path, quick: bool) -> list[dict[str, Any]]:
    results = []
    for concurrency in (200, 1000) if quick else (1_000, 10_000, 20_000):
        n = 3 * concurrency
        path = tmp / f"sleep-{concurrency}.jsonl"
        low_high = (0.2, 0.6) if quick else (1.0, 3.0)
        sleeps = _write_file(path, n, low_high)
        bound = concurrency / statistics.fmean(sleeps)
        rates: dict[str, list[float]] = {"arcflow": [], "asyncio": []}
        for r in range(rounds):
            for name in ["arcflow", "asyncio"] if r % 2 == 0 else ["asyncio", "arcflow"]:
                run_id = f"lat-{name}-{uuid.uuid4().hex[:8]}"
                if name == "arcflow":
                    _arcflow(
                        path,
                        dsn,
                        run_id,
                        "python:benchmarks.workloads:trio_sleep",
                        concurrency,
                        tmp,
                    )
                else:
                    cmd = [
                        sys.executable, "-m", "benchmarks.baselines", "asyncio-batcher", str(path),
                        "--db", dsn, "--run-id", run_id, "--concurrency", str(concurrency),
                        "--batch-size", "1000", "--flush-interval", "2", "--sleep",
                    ]  # fmt: skip
                    subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, capture_output=True)
                rows = _rows(dsn, run_id)
                if len(rows) != n:
                    raise RuntimeError(f"{name} wrote {len(rows)} rows of {n}")
                rates[name].append(_steady(rows, concurrency))
                print(
                    f"  latency c={concurrency} {name}: {rates[name][-1]:.0f}/s (bound {bound:.0f})",
                    flush=True,
                )
        a, b = statistics.median(rates["arcflow"]), statistics.median(rates["asyncio"])
        results.append(
            {
                "concurrency": concurrency,
                "scenarios": n,
                "bound_per_s": round(bound, 1),
                "arcflow_steady_per_s": round(a, 1),
                "asyncio_steady_per_s": round(b, 1),
                "arcflow_vs_bound": round(a / bound, 3),
                "asyncio_vs_bound": round(b / bound, 3),
                "runs": rates,
            }
        )
    return results


def _threaded_baseline(path: Path, dsn: str, run_id: str, workers: int, kind: str) -> None:
    """(a baseline process) A thread pool runs each scenario; rows COPY'd 1,000 at a time."""
    import asyncpg

    from benchmarks.workloads import COLUMNS, outcome_row

    items = [json.loads(line) for line in path.open() if line.strip()]

    def work(data: dict[str, Any]) -> tuple[datetime, datetime]:
        started = datetime.now(UTC)
        if kind == "sync":
            time.sleep(data["input"]["sleep"])
        else:
            subprocess.run(
                COMMAND, input=json.dumps(data).encode(), capture_output=True, check=True,
                start_new_session=True,
            )  # fmt: skip
        return started, datetime.now(UTC)

    async def write(rows: list[tuple[Any, ...]]) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for i in range(0, len(rows), 1000):
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "outcomes",
                        schema_name="arcflow",
                        records=rows[i : i + 1000],
                        columns=COLUMNS,
                    )
        finally:
            await conn.close()

    rows: list[tuple[Any, ...]] = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for data, (started, finished) in zip(items, pool.map(work, items), strict=True):
            rows.append(outcome_row(run_id, data, started, finished, "t", f"{run_id}-b"))
    asyncio.run(write(rows))


def threads(dsn: str, rounds: int, tmp: Path, quick: bool, kind: str) -> dict[str, Any]:
    if kind == "sync":
        concurrency, n, executor = (
            200,
            (1_000 if quick else 6_000),
            "python:benchmarks.workloads:sync_sleep",
        )
        path = tmp / "sync.jsonl"
        _write_file(path, n, 0.05)
    else:
        concurrency, n = 16, (200 if quick else 2_000)
        executor = "process:" + " ".join(["/bin/sh", "-c", "'cat >/dev/null; echo null'"])
        path = tmp / "process.jsonl"
        _write_file(path, n, None)
    rates: dict[str, list[float]] = {"arcflow": [], "threads": []}
    for r in range(rounds):
        for name in ["arcflow", "threads"] if r % 2 == 0 else ["threads", "arcflow"]:
            run_id = f"{kind}-{name}-{uuid.uuid4().hex[:8]}"
            if name == "arcflow":
                wall = _arcflow(path, dsn, run_id, executor, concurrency, tmp)
            else:
                cmd = [
                    sys.executable, "-m", "benchmarks.concurrency", "--baseline", kind,
                    "--db", dsn, "--file", str(path), "--run-id", run_id,
                    "--workers", str(concurrency),
                ]  # fmt: skip
                t0 = time.perf_counter()
                subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, capture_output=True)
                wall = time.perf_counter() - t0
            got = len(_rows(dsn, run_id))
            if got != n:
                raise RuntimeError(f"{name} wrote {got} rows of {n}")
            rates[name].append(n / wall)
            print(f"  {kind} {name}: {rates[name][-1]:.0f}/s", flush=True)
    a, b = statistics.median(rates["arcflow"]), statistics.median(rates["threads"])
    out = {
        "concurrency": concurrency,
        "scenarios": n,
        "arcflow_per_s": round(a, 1),
        "threads_per_s": round(b, 1),
        "arcflow_vs_threads": round(a / b, 3),
        "runs": rates,
    }
    if kind == "sync":
        out["bound_per_s"] = concurrency / 0.05
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.concurrency", description=__doc__)
    parser.add_argument("--only", default="latency,sync,process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--db")
    parser.add_argument("--baseline", choices=("sync", "process"), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline:
        _threaded_baseline(args.file, args.db, args.run_id, args.workers, args.baseline)
        return 0
    from benchmarks.db import BenchDB

    db = BenchDB(args.db, allow_truncate=True)
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="arcflow-conc-") as tmp:
            # The schema must exist for the baselines: one tiny arcflow run creates it.
            one = Path(tmp) / "one.jsonl"
            _write_file(one, 1, None)
            _arcflow(
                one,
                db.dsn,
                f"init-{uuid.uuid4().hex[:6]}",
                "python:benchmarks.workloads:noop",
                1,
                Path(tmp),
            )
            only = set(args.only.split(","))
            if "latency" in only:
                results["latency"] = latency(db.dsn, args.rounds, Path(tmp), args.quick)
            for kind in ("sync", "process"):
                if kind in only:
                    results[kind] = threads(db.dsn, args.rounds, Path(tmp), args.quick, kind)
    finally:
        db.close()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
