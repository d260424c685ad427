"""arcflow's writer over one connection and over two, on loopback and behind a slower link.

``python -m benchmarks.writer_lanes [--scenarios N] [--delay-ms MS] [--rounds R]``
runs N no-op scenarios (batch 1,000, concurrency 8, fed with ``submit_nowait``
as in the ingest benchmark) with ``writer_connections`` 1 and 2, alternating,
directly against a throwaway PostgreSQL and through
:mod:`benchmarks.delay_proxy`, which adds MS milliseconds each way (a round
trip MS * 2 longer, as to a database on another host).  Prints the medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

from . import arcflow_side, workloads
from .db import BenchDB


def _via_port(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit(":", 1)[0]
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path, parts.query, parts.fragment))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.writer_lanes")
    parser.add_argument("--scenarios", type=int, default=100_000)
    parser.add_argument(
        "--delay-ms", type=float, default=0.5, help="added each way by the proxy (default 0.5)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from arcflow.testing import free_port

    db = BenchDB()
    proxy: subprocess.Popen[bytes] | None = None
    try:
        target = urlsplit(db.dsn).port
        assert target is not None
        listen = free_port()
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.delay_proxy",
                str(listen),
                str(target),
                str(args.delay_ms / 1000),
            ],
            stdout=subprocess.PIPE,
        )
        assert proxy.stdout is not None
        proxy.stdout.readline()  # "ready"
        links = {"loopback": db.dsn, f"+{args.delay_ms:g} ms each way": _via_port(db.dsn, listen)}
        scenarios = workloads.make_scenarios(args.scenarios)
        rates: dict[tuple[str, int], list[float]] = {}
        for link, dsn in links.items():
            arcflow_side.run(
                dsn, scenarios=scenarios[:2_000], batch_size=1_000, concurrency=8
            )  # warm up
            for r in range(args.rounds):
                for connections in (1, 2) if r % 2 == 0 else (2, 1):
                    db.reset()
                    out = arcflow_side.run(
                        dsn,
                        scenarios=scenarios,
                        batch_size=1_000,
                        concurrency=8,
                        writer_connections=connections,
                    )
                    rate = out["records"] / out["elapsed_s"]
                    rates.setdefault((link, connections), []).append(rate)
                    print(
                        f"  {link:<18} writer_connections={connections}  {rate:>10,.0f} records/s",
                        flush=True,
                    )
        print("\n| link | 1 connection | 2 connections | 2 / 1 |\n|---|---|---|---|")
        for link in links:
            one = statistics.median(rates[(link, 1)])
            two = statistics.median(rates[(link, 2)])
            print(f"| {link} | {one:,.0f} | {two:,.0f} | {two / one:.2f} |")
    finally:
        if proxy is not None:
            proxy.kill()
            proxy.wait()
        db.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
