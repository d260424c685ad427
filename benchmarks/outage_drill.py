"""Outage drill: a long run with the database stopped in the middle, against the same run without.

Measures what issue 3 asks for: outcomes lost and duplicated (both must be 0),
the time from the database's return to the spill journal being empty, and
peak RSS of the arcflow process with and without the outage.

    python -m benchmarks.outage_drill --scenarios 50000 --outage 20

Each run is a separate ``python -m arcflow run`` process (so RSS is its own)
writing to a throwaway PostgreSQL server (``arcflow.testing.TemporaryPostgres``)
that the drill stops and starts for real.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from arcflow.testing import TemporaryPostgres

ROOT = Path(__file__).resolve().parent.parent


def write_suite(path: Path, n: int, sleep: float) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"s{i:07d}", "input": {"sleep": sleep}}) + "\n")


def count_rows(pg: TemporaryPostgres, run_id: str) -> tuple[int, int, int]:
    """(rows, distinct scenarios, scenarios with more than one final row) via psql."""
    sql = (
        "SELECT count(*), count(DISTINCT scenario_id), "
        f"(SELECT count(*) FROM (SELECT scenario_id FROM arcflow.outcomes WHERE run_id = '{run_id}' AND final "
        f"GROUP BY scenario_id HAVING count(*) > 1) d) FROM arcflow.outcomes WHERE run_id = '{run_id}'"
    )
    out = subprocess.run(
        ["psql", pg.dsn, "-At", "-c", sql], capture_output=True, text=True, check=True
    ).stdout.strip()
    rows, distinct, dups = (int(x) for x in out.split("|"))
    return rows, distinct, dups


def run_once(
    pg: TemporaryPostgres,
    work: Path,
    suite: Path,
    *,
    run_id: str,
    outage_at: float | None,
    outage_s: float,
    concurrency: int,
    batch_size: int,
) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"}
    cmd = [
        sys.executable,
        "-m",
        "arcflow",
        "run",
        str(suite),
        "--executor",
        "python:faulty_exec:slow",
        "--db",
        pg.dsn,
        "--run-id",
        run_id,
        "--concurrency",
        str(concurrency),
        "--batch-size",
        str(batch_size),
        "--flush-interval",
        "1",
        "--data-dir",
        str(work),
        "--breaker-cooldown",
        "1",
        "--json",
        "--quiet",
    ]
    journal = work / "journal" / f"{run_id}.journal"
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ps = psutil.Process(proc.pid)
    peak_rss = 0
    journal_peak = 0
    stopped_at = restarted_at = emptied_at = None
    rss_during_outage: list[int] = []
    while proc.poll() is None:
        now = time.monotonic() - started
        try:
            rss = ps.memory_info().rss
        except psutil.NoSuchProcess:
            break
        peak_rss = max(peak_rss, rss)
        size = journal.stat().st_size if journal.exists() else 0
        journal_peak = max(journal_peak, size)
        if outage_at is not None:
            if stopped_at is None and now >= outage_at:
                pg.stop()
                stopped_at = time.monotonic() - started
            elif stopped_at is not None and restarted_at is None:
                rss_during_outage.append(rss)
                if now >= stopped_at + outage_s:
                    pg.start()
                    restarted_at = time.monotonic() - started
            elif restarted_at is not None and emptied_at is None and size == 0:
                emptied_at = time.monotonic() - started
        time.sleep(0.05)
    out, err = proc.communicate()
    elapsed = time.monotonic() - started
    if restarted_at is not None and emptied_at is None:
        emptied_at = elapsed  # emptied by the final replay, just before exit
    summary = json.loads(out) if out.strip() else {}
    return {
        "exit_code": proc.returncode,
        "elapsed_s": round(elapsed, 2),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "rss_during_outage_mb": (
            [round(min(rss_during_outage) / 2**20, 1), round(max(rss_during_outage) / 2**20, 1)]
            if rss_during_outage
            else None
        ),
        "journal_peak_mb": round(journal_peak / 2**20, 2),
        "outage_window_s": [round(stopped_at, 2), round(restarted_at, 2)]
        if stopped_at and restarted_at
        else None,
        "journal_empty_after_return_s": (
            round(emptied_at - restarted_at, 2)
            if emptied_at is not None and restarted_at is not None
            else None
        ),
        "summary": {
            k: summary.get(k)
            for k in (
                "written",
                "spilled_outcomes",
                "replayed_outcomes",
                "breaker_transitions",
                "throughput_per_s",
            )
        },
        "stderr_tail": err[-500:] if proc.returncode else "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", type=int, default=50_000)
    parser.add_argument(
        "--outage", type=float, default=20.0, help="seconds the database is stopped"
    )
    parser.add_argument("--outage-at", type=float, default=8.0, help="seconds into the run")
    parser.add_argument("--sleep", type=float, default=0.02, help="seconds each scenario takes")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"scenarios": args.scenarios, "outage_s": args.outage}
    with TemporaryPostgres() as pg, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        suite = work / "suite.jsonl"
        write_suite(suite, args.scenarios, args.sleep)
        for name, outage_at in (("baseline", None), ("outage", args.outage_at)):
            run_id = f"drill-{name}-{int(time.time())}"
            r = run_once(
                pg,
                work,
                suite,
                run_id=run_id,
                outage_at=outage_at,
                outage_s=args.outage,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
            )
            rows, distinct, dups = count_rows(pg, run_id)
            r["rows"] = rows
            r["lost"] = args.scenarios - distinct
            r["duplicated"] = rows - distinct + dups
            results[name] = r
            print(f"{name}: {json.dumps(r)}", flush=True)
    base, out = results["baseline"], results["outage"]
    results["rss_ratio_outage_vs_baseline"] = round(out["peak_rss_mb"] / base["peak_rss_mb"], 3)
    print(
        json.dumps(
            {k: results[k] for k in ("scenarios", "outage_s", "rss_ratio_outage_vs_baseline")}
        )
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if out["lost"] == 0 and out["duplicated"] == 0 and out["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
