"""``python -m benchmarks [--quick] [--db DSN] [--only NAME[,NAME]]``: arcflow against its baselines.

Writes ``benchmarks/results/latest.json``, ``latest.md`` and ``latest.png``
(throughput against batch size) and prints the tables.  Without ``--db`` a
throwaway PostgreSQL server is started for the run and deleted afterwards.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .suite import BENCHMARKS, ROOT, Context


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "arcflow"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        mem = ""
    return f"{platform.system()} {platform.machine()}, {cpus} CPUs{mem}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one round: a smoke run (CI)"
    )
    parser.add_argument(
        "--db", help="PostgreSQL DSN of a dedicated database (default: a throwaway server)"
    )
    parser.add_argument(
        "--allow-truncate",
        action="store_true",
        help="with --db: go on although its arcflow tables hold rows (the benchmark empties them)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these benchmarks (repeat or comma-separate): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of the timed comparisons (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="results folder",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: profile arcflow's ingest path (100,000 no-op scenarios, batch 1,000) with pyinstrument "
        "and write profile-ingest.txt and .html to the results folder",
    )
    args = parser.parse_args(argv)
    only = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    args.only = only or list(BENCHMARKS)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # The outage benchmark stops the server on purpose: keep the expected warnings off the console.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("arcflow").setLevel(logging.CRITICAL)

    from .db import BenchDB
    from .report import markdown, write

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.profile:
        return profile(args)
    started = time.perf_counter()
    log(
        f"arcflow benchmarks: {', '.join(args.only)} ({'quick' if args.quick else 'full'}, {args.rounds} round(s))"
    )
    db = BenchDB(args.db, allow_truncate=args.allow_truncate)
    ctx = Context(db=db, quick=args.quick, rounds=args.rounds, log=log)
    results: dict[str, Any] = {"benchmarks": {}}
    try:
        log(
            f"database: {'given with --db' if args.db else 'throwaway server'}, PostgreSQL {db.server_version()}"
        )
        # Warm up (imports, connections, the schema) before anything is timed.
        from . import arcflow_side, workloads

        arcflow_side.run(
            db.dsn, scenarios=workloads.make_scenarios(100), batch_size=50, concurrency=4
        )
        for name in args.only:
            log(f"[{name}]")
            t0 = time.perf_counter()
            results["benchmarks"][name] = BENCHMARKS[name](ctx)
            results["benchmarks"][name]["duration_s"] = round(time.perf_counter() - t0, 1)
        results["meta"] = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _commit(),
            "machine": _machine(),
            "python": platform.python_version(),
            "postgres": db.server_version(),
            "postgres_settings": db.settings(),
            "database": "given with --db"
            if args.db
            else "throwaway server (arcflow.testing.TemporaryPostgres)",
            "quick": args.quick,
            "rounds": args.rounds,
            "only": args.only,
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
    finally:
        db.close()
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    paths = write(results, args.out)
    log("")
    log(markdown(results))
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [
        t["target"]
        for r in results["benchmarks"].values()
        for t in r.get("targets", [])
        if not t["met"]
    ]
    if failed:
        log("targets not met: " + "; ".join(failed))
    return 0


def profile(args: argparse.Namespace) -> int:
    """Profile the ingest path in this process (the database calls run here too, under trio-asyncio)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("--profile needs pyinstrument: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    from . import arcflow_side, workloads
    from .db import BenchDB

    db = BenchDB(args.db, allow_truncate=args.allow_truncate)
    try:
        n = 20_000 if args.quick else 100_000
        scenarios = workloads.make_scenarios(n)
        arcflow_side.run(
            db.dsn, scenarios=workloads.make_scenarios(100), batch_size=50, concurrency=4
        )
        db.reset()
        profiler = Profiler(interval=0.0005)
        profiler.start()
        out = arcflow_side.run(db.dsn, scenarios=scenarios, batch_size=1_000, concurrency=8)
        profiler.stop()
    finally:
        db.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile-ingest.txt").write_text(profiler.output_text(unicode=True, show_all=False))
    (args.out / "profile-ingest.html").write_text(profiler.output_html())
    print(profiler.output_text(unicode=True))
    print(
        f"{out['records']:,} records in {out['elapsed_s']:.2f} s under the profiler; wrote {args.out}/profile-ingest.txt, .html"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
