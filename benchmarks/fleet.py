"""Shared runs as whole processes: scenarios/s with 1, 2 and 4 workers, and the takeover time.

``python -m benchmarks.fleet [--n 6000] [--concurrency 200] [--rounds 2] [--db DSN]``

* **workers**: a latency-bound suite (``--n`` scenarios sleeping 0.1-0.3 s,
  ``python:benchmarks.workloads:trio_sleep``) run as a shared run by K worker
  processes (``run FILE --shared`` plus K-1 ``work RUN_ID``), each at
  ``--concurrency``; timed from the first process's start to the last one's
  exit, side by side with the same suite run by one plain ``run`` at
  K x concurrency (equal work, no claims).  The bound is
  K x concurrency / mean latency.
* **takeover**: two workers on a suite of 1 s scenarios with ``--lease 3``;
  one is SIGKILLed once both hold claims; reported is the time from the kill
  to the first of its scenarios running again elsewhere (a new claim of a
  scenario it held), and to the last of them doing so.

Each run is checked: exactly one final outcome per scenario, no duplicate key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXECUTOR = "python:benchmarks.workloads:trio_sleep"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _write(path: Path, n: int, low: float, high: float) -> float:
    import random

    rng = random.Random(7)
    total = 0.0
    with path.open("w") as f:
        for i in range(n):
            s = round(rng.uniform(low, high), 4)
            total += s
            f.write(json.dumps({"id": f"s{i:07d}", "input": {"sleep": s}}) + "\n")
    return total / n


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "arcflow", *args, "--progress", "off", "--quiet"]


def _query(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    import asyncpg

    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


def _check(dsn: str, run_id: str, n: int) -> None:
    rows = _query(
        dsn,
        "SELECT count(*) FILTER (WHERE final) AS finals, count(DISTINCT scenario_id) "
        "FILTER (WHERE final) AS scenarios FROM arcflow.outcomes WHERE run_id = $1",
        run_id,
    )[0]
    if rows["finals"] != n or rows["scenarios"] != n:
        raise RuntimeError(f"run {run_id}: {rows['finals']} finals for {rows['scenarios']} of {n}")


def _wait_for(dsn: str, sql: str, *args: Any, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if _query(dsn, sql, *args)[0]["ok"]:
                return
        except Exception:  # the schema may not exist yet
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for: {sql}")


def shared(dsn: str, path: Path, tmp: Path, workers: int, concurrency: int) -> float:
    """K workers on one shared run; seconds from the first start to the last exit."""
    run_id = f"fleet-{workers}-{uuid.uuid4().hex[:8]}"
    common = ["--db", dsn, "--concurrency", str(concurrency), "--batch-size", "1000"]
    common += ["--flush-interval", "1"]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            _cmd(
                "run",
                str(path),
                "--shared",
                "--run-id",
                run_id,
                "--executor",
                EXECUTOR,
                "--data-dir",
                str(tmp / "w0"),
                *common,
            ),
            cwd=ROOT,
            env=_env(),
        )
    ]
    if workers > 1:
        # The others join once the run exists (as an operator would start them).
        _wait_for(dsn, "SELECT count(*) > 0 AS ok FROM arcflow.claims WHERE run_id = $1", run_id)
        for k in range(1, workers):
            procs.append(
                subprocess.Popen(
                    _cmd("work", run_id, "--data-dir", str(tmp / f"w{k}"), *common),
                    cwd=ROOT,
                    env=_env(),
                )
            )
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"workers exited {codes}")
    _check(dsn, run_id, sum(1 for line in path.open() if line.strip()))
    return elapsed


def alone(dsn: str, path: Path, tmp: Path, concurrency: int) -> float:
    """One plain run at the same total concurrency (equal work, no claims)."""
    run_id = f"alone-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    subprocess.run(
        _cmd("run", str(path), "--run-id", run_id, "--executor", EXECUTOR, "--db", dsn,
             "--concurrency", str(concurrency), "--batch-size", "1000", "--flush-interval", "1",
             "--data-dir", str(tmp / "alone")),
        cwd=ROOT, env=_env(), check=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    _check(dsn, run_id, sum(1 for line in path.open() if line.strip()))
    return elapsed


def takeover(dsn: str, tmp: Path, lease: float = 3.0, n: int = 400) -> dict[str, float]:
    """Kill one of two workers; seconds until its claims run elsewhere (first and last)."""
    path = tmp / "takeover.jsonl"
    _write(path, n, 1.0, 1.0)
    run_id = f"takeover-{uuid.uuid4().hex[:8]}"
    common = ["--db", dsn, "--concurrency", "20", "--lease", str(lease)]
    first = subprocess.Popen(
        _cmd("run", str(path), "--shared", "--run-id", run_id, "--executor", EXECUTOR,
             "--data-dir", str(tmp / "t0"), *common),
        cwd=ROOT, env=_env(),
    )  # fmt: skip
    _wait_for(dsn, "SELECT count(*) > 0 AS ok FROM arcflow.claims WHERE run_id = $1", run_id)
    victim = subprocess.Popen(
        _cmd("work", run_id, "--data-dir", str(tmp / "t1"), *common), cwd=ROOT, env=_env()
    )
    _wait_for(
        dsn,
        "SELECT count(DISTINCT worker_id) >= 2 AS ok FROM arcflow.claims "
        "WHERE run_id = $1 AND state = 'claimed'",
        run_id,
    )
    held = _query(
        dsn,
        "SELECT c.scenario_id, c.claims FROM arcflow.claims c JOIN arcflow.workers w "
        "ON w.run_id = c.run_id AND w.worker_id = c.worker_id "
        "WHERE c.run_id = $1 AND c.state = 'claimed' AND w.pid = $2",
        run_id,
        victim.pid,
    )
    victim.send_signal(signal.SIGKILL)
    killed = time.perf_counter()
    victim.wait()
    ids = [r["scenario_id"] for r in held]
    before = {r["scenario_id"]: r["claims"] for r in held}
    seen: dict[str, float] = {}
    end = killed + 120
    while len(seen) < len(ids) and time.perf_counter() < end:
        rows = _query(
            dsn,
            "SELECT scenario_id, claims, state FROM arcflow.claims "
            "WHERE run_id = $1 AND scenario_id = ANY($2::text[])",
            run_id,
            ids,
        )
        now = time.perf_counter()
        for r in rows:
            if r["claims"] > before[r["scenario_id"]] and r["scenario_id"] not in seen:
                seen[r["scenario_id"]] = now - killed
        time.sleep(0.05)
    if first.wait() != 0:
        raise RuntimeError("the surviving worker failed")
    _check(dsn, run_id, n)
    times = sorted(seen.values())
    return {
        "lease_s": lease,
        "claims_of_the_killed_worker": len(ids),
        "first_running_elsewhere_s": round(times[0], 2) if times else float("nan"),
        "last_running_elsewhere_s": round(times[-1], 2) if times else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__)
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--db")
    args = parser.parse_args(argv)
    from benchmarks.db import BenchDB

    db = BenchDB(args.db, allow_truncate=True)
    results: dict[str, Any] = {"scenarios": args.n, "concurrency_per_worker": args.concurrency}
    try:
        with tempfile.TemporaryDirectory(prefix="arcflow-fleet-") as tmp_name:
            tmp = Path(tmp_name)
            path = tmp / "suite.jsonl"
            mean = _write(path, args.n, 0.1, 0.3)
            rows = []
            for k in (int(w) for w in args.workers.split(",")):
                bound = k * args.concurrency / mean
                times: dict[str, list[float]] = {"shared": [], "alone": []}
                for r in range(args.rounds):
                    order = ["shared", "alone"] if r % 2 == 0 else ["alone", "shared"]
                    for name in order:
                        if name == "shared":
                            t = shared(db.dsn, path, tmp, k, args.concurrency)
                        else:
                            t = alone(db.dsn, path, tmp, k * args.concurrency)
                        times[name].append(t)
                        print(f"  {k} worker(s) {name}: {args.n / t:.0f}/s", flush=True)
                s, a = statistics.median(times["shared"]), statistics.median(times["alone"])
                rows.append(
                    {
                        "workers": k,
                        "bound_per_s": round(bound, 1),
                        "shared_per_s": round(args.n / s, 1),
                        "alone_same_concurrency_per_s": round(args.n / a, 1),
                        "shared_vs_alone": round(a / s, 3),
                        "shared_vs_bound": round(args.n / s / bound, 3),
                    }
                )
            results["workers"] = rows
            results["takeover"] = takeover(db.dsn, tmp)
    finally:
        db.close()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
