"""The six benchmarks.  Each returns a JSON-safe dict: parameters, measurements, targets.

Timed comparisons alternate the systems inside each round (the order rotates
from round to round) and report medians, so a noisy machine slows every
system alike; ratios are computed from the medians of the same run.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from arcflow import Scenario

from . import arcflow_side, baselines, workloads
from .db import BenchDB

ROOT = Path(__file__).resolve().parent.parent

ARCFLOW = "arcflow"
ARCFLOW_FILE = "arcflow (run_file)"
ARCFLOW_C100 = "arcflow, concurrency 100"
ARCFLOW_PLAIN = "arcflow, await submit()"
ARCFLOW_ONE_CONN = "arcflow, 1 writer connection"
ASYNCIO = "asyncio batcher"
PER_RECORD = "per-record INSERT"
RAW_COPY = "raw COPY"
RAW_COPY_2 = "raw COPY, 2 connections"
#: Extra variants measured at batch 1,000 only: how feeding, concurrency and the writer's
#: connections matter, and the raw COPY ceiling with as many connections as arcflow's writer.
VARIANTS = [ARCFLOW_FILE, ARCFLOW_C100, ARCFLOW_PLAIN, ARCFLOW_ONE_CONN, RAW_COPY_2]
SEED_RATE = 4.0  # records/s, the seed's Modal-bound recorder


@dataclass
class Context:
    db: BenchDB
    quick: bool
    rounds: int
    log: Callable[[str], None] = print
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="arcflow-bench-")))

    def run_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(_median(values), 1),
        "min": round(min(values), 1) if values else None,
        "max": round(max(values), 1) if values else None,
        "runs": [round(v, 1) for v in values],
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b and not math.isnan(a) and not math.isnan(b) else None


def _target(
    name: str, value: float | None, goal: float, *, higher: bool = True, aim: float | None = None
) -> dict[str, Any]:
    met = value is not None and (value >= goal if higher else value <= goal)
    out: dict[str, Any] = {"target": name, "value": value, "goal": goal, "met": bool(met)}
    if aim is not None:
        out["aim"] = aim
        out["aim_met"] = value is not None and (value >= aim if higher else value <= aim)
    return out


def _rotated(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


def _check_rows(ctx: Context, run_id: str, expected: int, dsn: str | None = None) -> None:
    rows, distinct = ctx.db.rows(run_id, dsn)
    if rows != expected or distinct != expected:
        raise RuntimeError(
            f"run {run_id}: expected {expected} rows, found {rows} ({distinct} distinct)"
        )


# -- 1. ingest -------------------------------------------------------------------------------------


def ingest(ctx: Context) -> dict[str, Any]:
    """No-op scenarios through each system at several batch sizes: records/s."""
    n = 10_000 if ctx.quick else 200_000
    n_insert = 1_000 if ctx.quick else 20_000
    sizes = [100, 1_000, 10_000]
    concurrency = 8  # the CLI default; no-op scenarios gain nothing from more
    items = [workloads.scenario_dict(i) for i in range(n)]
    scenarios = workloads.make_scenarios(n)
    jsonl = workloads.write_jsonl(ctx.tmp / f"ingest-{n}.jsonl", n)
    copy_rows: dict[str, list[Any]] = {}

    def raw(bs: int, connections: int = 1) -> Callable[[], float]:
        def go() -> float:
            run_id = ctx.run_id("copy")
            rows = baselines.prebuilt_rows(run_id, items)  # built before the clock starts
            out = baselines.run_asyncio(
                baselines.raw_copy(ctx.db.dsn, rows, batch_size=bs, connections=connections)
            )
            _check_rows(ctx, run_id, n)
            copy_rows.clear()
            return float(out["records"] / out["elapsed_s"])

        return go

    def batcher(bs: int) -> Callable[[], float]:
        def go() -> float:
            run_id = ctx.run_id("aio")
            b = baselines.AsyncioBatcher(
                ctx.db.dsn,
                run_id=run_id,
                batch_size=bs,
                flush_interval=30.0,
                concurrency=concurrency,
            )
            out = baselines.run_asyncio(b.run(items))
            _check_rows(ctx, run_id, n)
            return float(out["records"] / out["elapsed_s"])

        return go

    def per_record() -> float:
        run_id = ctx.run_id("ins")
        out = baselines.run_asyncio(
            baselines.per_record_insert(ctx.db.dsn, items[:n_insert], run_id=run_id)
        )
        _check_rows(ctx, run_id, n_insert)
        return float(out["records"] / out["elapsed_s"])

    def arc(
        bs: int,
        *,
        from_file: bool = False,
        conc: int = concurrency,
        plain: bool = False,
        **options: Any,
    ) -> Callable[[], float]:
        def go() -> float:
            if from_file:
                out = arcflow_side.run(
                    ctx.db.dsn, path=jsonl, batch_size=bs, concurrency=conc, **options
                )
            else:
                out = arcflow_side.run(
                    ctx.db.dsn,
                    scenarios=scenarios,
                    batch_size=bs,
                    concurrency=conc,
                    plain_submit=plain,
                    **options,
                )
            _check_rows(ctx, out["run_id"], n)
            return float(out["records"] / out["elapsed_s"])

        return go

    runs: dict[int, dict[str, list[float]]] = {bs: {} for bs in sizes}
    for r in range(ctx.rounds):
        for bs in sizes:
            systems: dict[str, Callable[[], float]] = {
                RAW_COPY: raw(bs),
                ASYNCIO: batcher(bs),
                ARCFLOW: arc(bs),
            }
            if bs == 1_000:
                systems[PER_RECORD] = per_record
                systems[ARCFLOW_FILE] = arc(bs, from_file=True)
                systems[ARCFLOW_C100] = arc(bs, conc=100)
                systems[ARCFLOW_PLAIN] = arc(bs, plain=True)
                systems[ARCFLOW_ONE_CONN] = arc(bs, writer_connections=1)
                systems[RAW_COPY_2] = raw(bs, connections=2)
            for name in _rotated(list(systems), r):
                ctx.db.reset()
                rate = systems[name]()
                runs[bs].setdefault(name, []).append(rate)
                ctx.log(
                    f"  ingest round {r + 1}/{ctx.rounds} batch {bs:>6}: {name:<20} {rate:>10,.0f} records/s"
                )

    per_record_median = _median(runs[1_000][PER_RECORD])
    table: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for bs in sizes:
        med = {name: _median(v) for name, v in runs[bs].items()}
        table[str(bs)] = {name: _summary(v) for name, v in runs[bs].items()}
        ratios[str(bs)] = {
            "arcflow/raw_copy": _ratio(med[ARCFLOW], med[RAW_COPY]),
            "arcflow/per_record_insert": _ratio(med[ARCFLOW], per_record_median),
            "arcflow/asyncio_batcher": _ratio(med[ARCFLOW], med[ASYNCIO]),
        }
        for variant in VARIANTS:
            if variant in med:
                ratios[str(bs)][f"{variant}/raw_copy"] = _ratio(med[variant], med[RAW_COPY])
    r1000 = ratios["1000"]
    return {
        "description": "no-op scenarios end to end: first scenario handed over -> last row committed",
        "feeding": "arcflow: Runtime.submit_nowait(), awaiting Runtime.submit() when the pipeline is full",
        "variants_at_1000": VARIANTS,
        "scenarios": n,
        "per_record_scenarios": n_insert,
        "batch_sizes": sizes,
        "concurrency": concurrency,
        "rounds": ctx.rounds,
        "records_per_s": table,
        "ratios": ratios,
        "targets": [
            _target("arcflow / raw COPY at batch 1,000", r1000["arcflow/raw_copy"], 0.6, aim=0.8),
            _target(
                "arcflow / per-record INSERT at batch 1,000",
                r1000["arcflow/per_record_insert"],
                30.0,
            ),
        ],
    }


# -- 2. round trips ---------------------------------------------------------------------------------


def roundtrips(ctx: Context) -> dict[str, Any]:
    """Transactions and statements per 1,000 records, from PostgreSQL's own counters.

    Each system runs twice, with n1 and n2 records, and the difference of the
    counter deltas is divided by n2 - n1: the marginal cost per record, free
    of set-up work (connections, migrations, the run's own row).
    """
    db = ctx.db
    dsn = db.rt_dsn
    bs = 1_000
    sizes = {
        ARCFLOW: (2_000, 6_000) if ctx.quick else (5_000, 25_000),
        ASYNCIO: (2_000, 6_000) if ctx.quick else (5_000, 25_000),
        RAW_COPY: (2_000, 6_000) if ctx.quick else (5_000, 25_000),
        PER_RECORD: (200, 600) if ctx.quick else (1_000, 3_000),
    }
    # make sure the schema exists in the round-trip database
    arcflow_side.run(dsn, scenarios=workloads.make_scenarios(1), batch_size=bs, concurrency=1)

    def measure(name: str, n: int) -> dict[str, int | None]:
        items = [workloads.scenario_dict(i) for i in range(n)]
        run_id = ctx.run_id("rt")
        db.reset(dsn)
        before = db.counters()
        if name == ARCFLOW:
            out = arcflow_side.run(
                dsn, scenarios=workloads.make_scenarios(n), batch_size=bs, concurrency=100
            )
            run_id = out["run_id"]
        elif name == ASYNCIO:
            b = baselines.AsyncioBatcher(
                dsn, run_id=run_id, batch_size=bs, flush_interval=30.0, concurrency=100
            )
            baselines.run_asyncio(b.run(items))
        elif name == RAW_COPY:
            baselines.run_asyncio(
                baselines.raw_copy(dsn, baselines.prebuilt_rows(run_id, items), batch_size=bs)
            )
        else:
            baselines.run_asyncio(baselines.per_record_insert(dsn, items, run_id=run_id))
        after = db.counters()
        _check_rows(ctx, run_id, n, dsn)
        return {
            k: (None if after[k] is None or before[k] is None else int(after[k]) - int(before[k]))  # type: ignore[arg-type]
            for k in after
        }

    results: dict[str, Any] = {}
    for name in _rotated(list(sizes), 0):
        n1, n2 = sizes[name]
        d1, d2 = measure(name, n1), measure(name, n2)
        per_k: dict[str, float | None] = {}
        for key in ("commits", "statements"):
            a, b = d1[key], d2[key]
            per_k[key] = None if a is None or b is None else round((b - a) / (n2 - n1) * 1000, 3)
        results[name] = {
            "n": [n1, n2],
            "deltas": {"n1": d1, "n2": d2},
            "commits_per_1000": per_k["commits"],
            "statements_per_1000": per_k["statements"],
            "commits_per_batch": None
            if name == PER_RECORD or per_k["commits"] is None
            else round(per_k["commits"] * bs / 1000, 3),
        }
        ctx.log(
            f"  round trips {name:<20} commits/1000 {per_k['commits']}  statements/1000 {per_k['statements']}"
        )
    arc = results[ARCFLOW]["commits_per_batch"]
    return {
        "description": "marginal database work per 1,000 records at batch size 1,000",
        "batch_size": bs,
        "counters": {
            "transactions": "pg_stat_database.xact_commit",
            "statements": db.statement_source,
        },
        "systems": results,
        "targets": [_target("arcflow write transactions per batch", arc, 1.0, higher=False)],
    }


# -- 3. latency-bound -------------------------------------------------------------------------------


def _ideal_makespan(durations: list[float], slots: int) -> float:
    """Makespan of a zero-overhead runtime running ``durations`` in order on ``slots`` slots."""
    import heapq

    free = [0.0] * slots
    end = 0.0
    for d in durations:
        start = heapq.heappop(free)
        end = max(end, start + d)
        heapq.heappush(free, start + d)
    return end


def _latency_stats(
    starts: list[float], ends: list[float], t0: float, concurrency: int, mean: float
) -> dict[str, float]:
    """Steady-state completion rate: from the concurrency-th completion to the last start."""
    ends = sorted(ends)
    last_start = max(starts)
    if len(ends) <= concurrency:
        return {"steady_records_per_s": math.nan}
    a = ends[concurrency - 1]
    done = sum(1 for e in ends if a < e <= last_start)
    window = last_start - a
    return {
        "steady_records_per_s": done / window if window > 0 else math.nan,
        "steady_window_s": window,
    }


def latency(ctx: Context) -> dict[str, Any]:
    """Scenarios sleeping 1-3 s at concurrency 500: records/s against concurrency / mean latency."""
    if ctx.quick:
        n, concurrency, low, high = 300, 50, 0.1, 0.3
    else:
        n, concurrency, low, high = 2_000, 500, 1.0, 3.0
    rng = random.Random(42)
    sleeps = [round(rng.uniform(low, high), 4) for _ in range(n)]
    items: list[dict[str, Any]] = [
        {"id": workloads.scenario_id(i), "input": {"i": i, "sleep": s}}
        for i, s in enumerate(sleeps)
    ]
    scenarios = [Scenario(id=str(d["id"]), input=d["input"]) for d in items]
    mean = statistics.fmean(sleeps)
    bound = concurrency / mean
    ideal = _ideal_makespan(sleeps, concurrency)

    def arc() -> dict[str, float]:
        rec = workloads.StartRecorder()
        t0 = time.perf_counter()
        out = arcflow_side.run(
            ctx.db.dsn, scenarios=scenarios, function=rec, batch_size=100, concurrency=concurrency
        )
        _check_rows(ctx, out["run_id"], n)
        stats = _latency_stats(rec.starts, rec.ends, t0, concurrency, mean)
        return {"records_per_s": n / out["elapsed_s"], "makespan_s": out["elapsed_s"], **stats}

    def aio() -> dict[str, float]:
        run_id = ctx.run_id("aio")
        b = baselines.AsyncioBatcher(
            ctx.db.dsn, run_id=run_id, batch_size=100, flush_interval=30.0, concurrency=concurrency,
            work=baselines.sleep_work, record_times=True,
        )  # fmt: skip
        t0 = time.perf_counter()
        out = baselines.run_asyncio(b.run(items))
        _check_rows(ctx, run_id, n)
        stats = _latency_stats(b.starts, b.ends, t0, concurrency, mean)
        return {"records_per_s": n / out["elapsed_s"], "makespan_s": out["elapsed_s"], **stats}

    systems = {ARCFLOW: arc, ASYNCIO: aio}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in systems}
    for r in range(ctx.rounds):
        for name in _rotated(list(systems), r):
            ctx.db.reset()
            m = systems[name]()
            runs[name].append(m)
            ctx.log(
                f"  latency round {r + 1}/{ctx.rounds}: {name:<16} {m['records_per_s']:8.1f} records/s overall, "
                f"{m['steady_records_per_s']:8.1f} steady (bound {bound:.1f})"
            )
    table: dict[str, dict[str, Any]] = {}
    for name, ms in runs.items():
        rate = _median([m["records_per_s"] for m in ms])
        steady = _median([m["steady_records_per_s"] for m in ms])
        makespan = _median([m["makespan_s"] for m in ms])
        table[name] = {
            "records_per_s": round(rate, 1),
            "steady_records_per_s": round(steady, 1),
            "makespan_s": round(makespan, 3),
            "overall_vs_bound": _ratio(rate, bound),
            "steady_vs_bound": _ratio(steady, bound),
            "ideal_makespan_vs_makespan": _ratio(ideal, makespan),
            "vs_seed_4_per_s": _ratio(rate, SEED_RATE),
            "runs": ms,
        }
    a = table[ARCFLOW]
    return {
        "description": "scenarios sleeping a random time; the bound is concurrency / mean latency",
        "scenarios": n,
        "concurrency": concurrency,
        "sleep_s": [low, high],
        "mean_latency_s": round(mean, 4),
        "bound_records_per_s": round(bound, 1),
        "ideal_makespan_s": round(ideal, 3),
        "ideal_records_per_s": round(n / ideal, 1),
        "rounds": ctx.rounds,
        "systems": table,
        # The bound is a steady-state rate: a finite run also has a ramp-up and the tail of its
        # last wave (see ideal_records_per_s), so the target is checked on the steady state.
        "targets": [
            _target("arcflow steady-state records/s / bound", a["steady_vs_bound"], 0.9),
            _target("arcflow records/s / the seed's 4 records/s", a["vs_seed_4_per_s"], 1.0),
        ],
    }


# -- 4. memory --------------------------------------------------------------------------------------


def _peak_rss_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run ``cmd``; returns (its peak RSS in bytes, seconds, stdout).

    The peak is the child's own high-water mark (``VmHWM`` in /proc, polled
    until it exits; psutil's RSS elsewhere).  ``ru_maxrss`` from wait4 is not
    used: on Linux it includes the parent's RSS at fork time.
    """
    import psutil

    t0 = time.perf_counter()
    status_file = None
    peak = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env)
        status_file = Path(f"/proc/{proc.pid}/status")
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                if status_file.exists():
                    for line in status_file.read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) * 1024)
                            break
                else:
                    peak = max(peak, ps.memory_info().rss)
            except (OSError, ValueError, psutil.Error):
                pass
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd[:6])}... exited {proc.returncode}: {err.read().decode()[-2000:]}"
            )
    return peak, seconds, stdout


def memory(ctx: Context) -> dict[str, Any]:
    """Peak RSS of a whole ``python -m arcflow run`` process, small file against a 10x larger one."""
    sizes = [2_000, 20_000] if ctx.quick else [100_000, 1_000_000]
    files = {n: workloads.write_jsonl(ctx.tmp / f"mem-{n}.jsonl", n) for n in sizes}
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    data_dir = ctx.tmp / "mem-data"

    def arc(n: int) -> Callable[[], dict[str, float]]:
        def go() -> dict[str, float]:
            cmd = [
                sys.executable, "-m", "arcflow", "run", str(files[n]),
                "--executor", "python:benchmarks.workloads:noop", "--batch-size", "1000",
                "--concurrency", "100", "--db", ctx.db.dsn, "--data-dir", str(data_dir), "--json",
            ]  # fmt: skip
            rss, seconds, _ = _peak_rss_child(cmd, env)
            return {"peak_rss_mb": rss / 2**20, "seconds": seconds}

        return go

    def aio(n: int) -> Callable[[], dict[str, float]]:
        def go() -> dict[str, float]:
            cmd = [
                sys.executable, "-m", "benchmarks.baselines", "asyncio-batcher", str(files[n]),
                "--db", ctx.db.dsn, "--batch-size", "1000", "--concurrency", "100",
            ]  # fmt: skip
            rss, seconds, _ = _peak_rss_child(cmd, env)
            return {"peak_rss_mb": rss / 2**20, "seconds": seconds}

        return go

    floor_cmd = [sys.executable, "-c", "import arcflow, arcflow.cli, trio, trio_asyncio, asyncpg"]
    floor = _peak_rss_child(floor_cmd, env)[0] / 2**20
    systems: dict[str, Callable[[], dict[str, float]]] = {}
    for n in sizes:
        systems[f"{ARCFLOW}|{n}"] = arc(n)
        systems[f"{ASYNCIO}|{n}"] = aio(n)
    rounds = 1 if ctx.quick else 2
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in systems}
    for r in range(rounds):
        for key in _rotated(list(systems), r):
            ctx.db.reset()
            m = systems[key]()
            runs[key].append(m)
            name, count = key.split("|")
            ctx.log(
                f"  memory round {r + 1}/{rounds}: {name:<16} {int(count):>9,} scenarios: peak RSS {m['peak_rss_mb']:.1f} MB"
            )
    table: dict[str, dict[str, Any]] = {}
    for key, ms in runs.items():
        name, count = key.split("|")
        table.setdefault(name, {})[count] = {
            "peak_rss_mb": round(_median([m["peak_rss_mb"] for m in ms]), 1),
            "seconds": round(_median([m["seconds"] for m in ms]), 2),
            "runs": ms,
        }
    small, large = (str(s) for s in sizes)
    growth = {
        name: _ratio(v[large]["peak_rss_mb"], v[small]["peak_rss_mb"]) for name, v in table.items()
    }
    return {
        "description": "peak RSS (VmHWM) of a separate process per run, arcflow via its CLI",
        "scenarios": sizes,
        "rounds": rounds,
        "import_floor_mb": round(floor, 1),
        "systems": table,
        "large_over_small": growth,
        "targets": [
            _target(
                f"arcflow peak RSS {large} / {small} scenarios", growth[ARCFLOW], 1.10, higher=False
            )
        ],
    }


# -- 5. trickle -------------------------------------------------------------------------------------


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def trickle(ctx: Context) -> dict[str, Any]:
    """One outcome every 100 ms, flush interval 1 s: outcome completion -> row committed."""
    seconds = 3.0 if ctx.quick else 20.0
    interval, flush = 0.1, 1.0
    n = int(seconds / interval)

    def latencies(run_id: str) -> list[float]:
        rows = ctx.db.fetch(
            "SELECT extract(epoch FROM recorded_at - finished_at)::float8 AS s FROM arcflow.outcomes WHERE run_id = $1",
            run_id,
        )
        return [float(r["s"]) for r in rows]

    def arc() -> list[float]:
        async def drip(rt: Any) -> None:
            start = trio.current_time()
            for i in range(n):
                await trio.sleep_until(start + i * interval)
                await rt.submit(Scenario(id=workloads.scenario_id(i), input={"i": i}))

        out = arcflow_side.run(
            ctx.db.dsn, batch_size=100, concurrency=4, flush_interval=flush, during=drip
        )
        _check_rows(ctx, out["run_id"], n)
        return latencies(out["run_id"])

    def aio() -> list[float]:
        run_id = ctx.run_id("aio")

        async def drip() -> Any:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(n):
                await asyncio.sleep(max(0.0, start + i * interval - loop.time()))
                yield workloads.scenario_dict(i)

        b = baselines.AsyncioBatcher(
            ctx.db.dsn, run_id=run_id, batch_size=100, flush_interval=flush, concurrency=4
        )
        baselines.run_asyncio(b.run(drip()))
        _check_rows(ctx, run_id, n)
        return latencies(run_id)

    systems = {ARCFLOW: arc, ASYNCIO: aio}
    rounds = 1 if ctx.quick else 2
    runs: dict[str, list[list[float]]] = {k: [] for k in systems}
    for r in range(rounds):
        for name in _rotated(list(systems), r):
            ctx.db.reset()
            lat = systems[name]()
            runs[name].append(lat)
            ctx.log(
                f"  trickle round {r + 1}/{rounds}: {name:<16} p50 {_percentile(lat, 0.5) * 1000:6.0f} ms  "
                f"p99 {_percentile(lat, 0.99) * 1000:6.0f} ms"
            )
    table: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        p50s = [_percentile(x, 0.5) for x in rs]
        p99s = [_percentile(x, 0.99) for x in rs]
        maxs = [max(x) for x in rs]
        table[name] = {
            "p50_ms": round(_median(p50s) * 1000, 1),
            "p99_ms": round(_median(p99s) * 1000, 1),
            "max_ms": round(_median(maxs) * 1000, 1),
            "runs": [
                {"p50_ms": round(a * 1000, 1), "p99_ms": round(b * 1000, 1)}
                for a, b in zip(p50s, p99s, strict=True)
            ],
        }
    return {
        "description": "recorded_at (the write transaction's start, server clock) minus finished_at (client clock, same host)",
        "interval_s": interval,
        "flush_interval_s": flush,
        "outcomes": n,
        "rounds": rounds,
        "systems": table,
        "targets": [
            _target(
                "arcflow p99 (ms) <= flush interval + 100 ms",
                table[ARCFLOW]["p99_ms"],
                flush * 1000 + 100,
                higher=False,
            )
        ],
    }


# -- 6. outage --------------------------------------------------------------------------------------


def _phase_rates(
    samples: list[tuple[float, int, int]], edges: list[float]
) -> dict[str, dict[str, float]]:
    """Completed and written per second between consecutive ``edges`` (seconds since start)."""

    def at(t: float) -> tuple[int, int]:
        best = samples[0]
        for s in samples:
            if s[0] <= t:
                best = s
        return best[1], best[2]

    names = ["before", "during", "after"]
    out = {}
    for name, (a, b) in zip(names, itertools.pairwise(edges), strict=False):
        (c0, w0), (c1, w1) = at(a), at(b)
        span = max(b - a, 1e-9)
        out[name] = {
            "completed_per_s": round((c1 - c0) / span, 1),
            "written_per_s": round((w1 - w0) / span, 1),
        }
    return out


def outage(ctx: Context) -> dict[str, Any]:
    """A steady stream of short scenarios while the database is stopped, then started again."""
    if not ctx.db.can_stop:
        return {
            "skipped": "needs the benchmark's own server (run without --db) to stop and start it"
        }
    before, down, after = (1.5, 2.0, 2.0) if ctx.quick else (10.0, 10.0, 10.0)
    sleep, concurrency = 0.01, 50
    db = ctx.db

    def arc() -> dict[str, Any]:
        samples: list[tuple[float, int, int]] = []
        marks: dict[str, float] = {}

        async def drive(rt: Any) -> None:
            t0 = trio.current_time()

            async def monitor() -> None:
                while True:
                    s = rt.statistics()
                    samples.append((trio.current_time() - t0, s.completed, s.written))
                    await trio.sleep(0.1)

            async def feeder() -> None:
                i = 0
                while trio.current_time() - t0 < before + down + after:
                    await rt.submit(Scenario(id=workloads.scenario_id(i), input={"sleep": sleep}))
                    i += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(monitor)
                feed_done = trio.Event()

                async def feed_then_flag() -> None:
                    await feeder()
                    feed_done.set()

                nursery.start_soon(feed_then_flag)
                await trio.sleep_until(t0 + before)
                marks["stop"] = trio.current_time() - t0
                await trio.to_thread.run_sync(db.stop)
                marks["stopped"] = trio.current_time() - t0
                await trio.sleep_until(t0 + before + down)
                marks["start"] = trio.current_time() - t0
                await trio.to_thread.run_sync(db.start)
                marks["started"] = trio.current_time() - t0
                await feed_done.wait()
                # let the drain finish while still sampling
                nursery.cancel_scope.deadline = trio.current_time() + 0.0
            samples.append(
                (trio.current_time() - t0, rt.statistics().completed, rt.statistics().written)
            )

        out = arcflow_side.run(
            db.dsn, batch_size=1_000, concurrency=concurrency, flush_interval=1.0,
            function=workloads.trio_sleep, during=drive,
        )  # fmt: skip
        rows, distinct = db.rows(out["run_id"])
        return {
            "completed": out["completed"],
            "rows": rows,
            "lost": out["completed"] - distinct,
            "duplicated": rows - distinct,
            "spilled_outcomes": out["spilled_outcomes"],
            "replayed_outcomes": out["replayed_outcomes"],
            "retries": out["retries"],
            "breaker_transitions": out["breaker_transitions"],
            "phases": _phase_rates(
                samples, [0.0, marks["stopped"], marks["started"], before + down + after]
            ),
            "marks_s": {k: round(v, 2) for k, v in marks.items()},
            "last_commit_s": round(out["elapsed_s"], 2),
        }

    def aio() -> dict[str, Any]:
        run_id = ctx.run_id("aio")
        b = baselines.AsyncioBatcher(
            db.dsn, run_id=run_id, batch_size=1_000, flush_interval=1.0, concurrency=concurrency,
            work=baselines.sleep_work,
        )  # fmt: skip
        samples: list[tuple[float, int, int]] = []
        marks: dict[str, float] = {}

        async def main() -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            t0 = loop.time()

            async def items() -> Any:
                i = 0
                while loop.time() - t0 < before + down + after:
                    yield {"id": workloads.scenario_id(i), "input": {"sleep": sleep}}
                    i += 1

            async def monitor() -> None:
                while True:
                    samples.append((loop.time() - t0, b.completed, b.written))
                    await asyncio.sleep(0.1)

            async def outage_script() -> None:
                await asyncio.sleep(before)
                marks["stop"] = loop.time() - t0
                await asyncio.to_thread(db.stop)
                marks["stopped"] = loop.time() - t0
                await asyncio.sleep(max(0.0, t0 + before + down - loop.time()))
                marks["start"] = loop.time() - t0
                await asyncio.to_thread(db.start)
                marks["started"] = loop.time() - t0

            mon = asyncio.create_task(monitor())
            script = asyncio.create_task(outage_script())
            result = await b.run(items())
            await script
            mon.cancel()
            samples.append((loop.time() - t0, b.completed, b.written))
            return dict(result)

        res = baselines.run_asyncio(main())
        rows, distinct = db.rows(run_id)
        return {
            "completed": b.completed,
            "rows": rows,
            "lost": b.completed - distinct,
            "duplicated": rows - distinct,
            "failed_writes": res["failed_writes"],
            "phases": _phase_rates(
                samples, [0.0, marks["stopped"], marks["started"], before + down + after]
            ),
            "marks_s": {k: round(v, 2) for k, v in marks.items()},
        }

    systems = {ARCFLOW: arc, ASYNCIO: aio}
    rounds = 1 if ctx.quick else 2
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in systems}
    for r in range(rounds):
        for name in _rotated(list(systems), r):
            db.reset()
            m = systems[name]()
            runs[name].append(m)
            ph = m["phases"]
            ctx.log(
                f"  outage round {r + 1}/{rounds}: {name:<16} completed/s before {ph['before']['completed_per_s']:.0f} "
                f"during {ph['during']['completed_per_s']:.0f} after {ph['after']['completed_per_s']:.0f}; "
                f"lost {m['lost']} duplicated {m['duplicated']}"
            )
    table: dict[str, dict[str, Any]] = {}
    for name, ms in runs.items():
        phases = {
            ph: {
                key: round(_median([m["phases"][ph][key] for m in ms]), 1)
                for key in ("completed_per_s", "written_per_s")
            }
            for ph in ("before", "during", "after")
        }
        table[name] = {
            "phases": phases,
            "lost": sum(m["lost"] for m in ms),
            "duplicated": sum(m["duplicated"] for m in ms),
            "runs": ms,
        }
    a = table[ARCFLOW]
    return {
        "description": "short scenarios (10 ms sleeps) for before/outage/after seconds; the server is really stopped",
        "phases_s": {"before": before, "outage": down, "after": after},
        "scenario_sleep_s": sleep,
        "concurrency": concurrency,
        "rounds": rounds,
        "systems": table,
        "targets": [
            _target("arcflow records lost", a["lost"], 0, higher=False),
            _target("arcflow records duplicated", a["duplicated"], 0, higher=False),
        ],
    }


def modal(ctx: Context) -> dict[str, Any]:
    """The modal: executor against the local control plane (see benchmarks/modal_sandboxes.py)."""
    from . import modal_sandboxes

    return modal_sandboxes.run_all(
        ctx.db.dsn, quick=ctx.quick, only=["concurrency", "rate"], log=ctx.log
    )


def modal_fn(ctx: Context) -> dict[str, Any]:
    """The modal-fn: executor against the local control plane (see benchmarks/modal_functions.py)."""
    from . import modal_functions

    return modal_functions.run_all(ctx.db.dsn, quick=ctx.quick, log=ctx.log)


def modal_paths(ctx: Context) -> dict[str, Any]:
    """The three Modal paths with a 1 s container start (see benchmarks/modal_paths.py)."""
    from . import modal_paths

    return modal_paths.run_all(ctx.db.dsn, quick=ctx.quick, log=ctx.log)


def cli(ctx: Context) -> dict[str, Any]:
    """``python -m arcflow run FILE`` as a whole process against equal-work and minimal scripts."""
    from . import cli_job

    sizes = [2_000] if ctx.quick else [100_000, 1_000_000]
    by_n = {}
    for n in sizes:
        rounds = ctx.rounds if n <= 100_000 else max(1, ctx.rounds - 1)
        res = cli_job.measure(ctx.db.dsn, n, max(rounds, 1), ctx.tmp)
        ctx.log(
            f"  cli n={n}: arcflow {res['arcflow']['records_per_s']:,.0f}/s, equal "
            f"{res['equal']['records_per_s']:,.0f}/s, minimal {res['minimal']['records_per_s']:,.0f}/s"
        )
        by_n[str(n)] = res
    return {
        "description": "the CLI whole job (start to exit) vs an equal-work raw script and a minimal read-and-COPY script",
        "sizes": by_n,
        "targets": [
            _target(
                f"CLI whole job / equal-work script at {n:,}",
                round(r["arcflow_over_equal"], 3),
                0.9,
            )
            for n, r in ((int(k), v) for k, v in by_n.items())
        ],
    }


def concurrency(ctx: Context) -> dict[str, Any]:
    """Latency-bound runs at 1,000-20,000 concurrent, sync functions and process: vs threads."""
    from . import concurrency as conc

    rounds = max(ctx.rounds, 1)
    tmp = Path(tempfile.mkdtemp(prefix="conc-", dir=ctx.tmp))
    latency_rows = conc.latency(ctx.db.dsn, rounds, tmp, ctx.quick)
    sync = conc.threads(ctx.db.dsn, rounds, tmp, ctx.quick, "sync")
    process = conc.threads(ctx.db.dsn, rounds, tmp, ctx.quick, "process")
    goals = {10_000: 0.95, 20_000: 0.9}
    targets = [
        _target(
            f"latency-bound steady state / bound at concurrency {row['concurrency']:,}",
            row["arcflow_vs_bound"],
            goals.get(row["concurrency"], 0.95),
        )
        for row in latency_rows
    ]
    targets += [
        _target(
            "sync python: / ThreadPoolExecutor loop at concurrency 200",
            sync["arcflow_vs_threads"],
            0.9,
        ),
        _target("process: / threads + subprocess.run", process["arcflow_vs_threads"], 0.9),
    ]
    return {
        "description": "whole CLI processes: sleeps at high concurrency vs asyncio, sync functions and process: vs thread pools",
        "latency": latency_rows,
        "sync": sync,
        "process": process,
        "targets": targets,
    }


def fleet(ctx: Context) -> dict[str, Any]:
    """Shared runs: 1, 2 and 4 worker processes vs one process, and the takeover time."""
    from . import fleet as fl

    n, per_worker = (600, 50) if ctx.quick else (12_000, 100)
    tmp = Path(tempfile.mkdtemp(prefix="fleet-", dir=ctx.tmp))
    path = tmp / "suite.jsonl"
    mean = fl._write(path, n, 0.1, 0.3)
    rows = []
    for k in (1, 2) if ctx.quick else (1, 2, 4):
        times: dict[str, list[float]] = {"shared": [], "alone": []}
        for r in range(max(ctx.rounds, 1)):
            for name in ["shared", "alone"] if r % 2 == 0 else ["alone", "shared"]:
                if name == "shared":
                    t = fl.shared(ctx.db.dsn, path, tmp, k, per_worker)
                else:
                    t = fl.alone(ctx.db.dsn, path, tmp, k * per_worker)
                times[name].append(t)
        shared_s, alone_s = _median(times["shared"]), _median(times["alone"])
        bound = k * per_worker / mean
        rows.append(
            {
                "workers": k,
                "bound_per_s": round(bound, 1),
                "shared_per_s": round(n / shared_s, 1),
                "alone_same_concurrency_per_s": round(n / alone_s, 1),
                "shared_vs_alone": round(alone_s / shared_s, 3),
                "shared_vs_bound": round(n / shared_s / bound, 3),
            }
        )
        ctx.log(f"  fleet {k} worker(s): {n / shared_s:,.0f}/s (one process: {n / alone_s:,.0f}/s)")
    take = fl.takeover(ctx.db.dsn, tmp, lease=1.5 if ctx.quick else 3.0, n=80 if ctx.quick else 400)
    ctx.log(f"  fleet takeover: first {take['first_running_elsewhere_s']} s after the kill")
    return {
        "description": "a latency-bound suite (0.1-0.3 s sleeps) as a shared run of K workers vs one process at K x concurrency",
        "scenarios": n,
        "concurrency_per_worker": per_worker,
        "workers": rows,
        "takeover": take,
        "targets": [
            _target("shared run, 1 worker / one plain process", rows[0]["shared_vs_alone"], 0.9),
            _target(
                "takeover: first scenario of a killed worker running elsewhere, in leases",
                round(take["first_running_elsewhere_s"] / take["lease_s"], 2),
                2.0,
                higher=False,
            ),
        ],
    }


BENCHMARKS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "ingest": ingest,
    "roundtrips": roundtrips,
    "latency": latency,
    "memory": memory,
    "trickle": trickle,
    "outage": outage,
    "modal": modal,
    "modal_fn": modal_fn,
    "modal_paths": modal_paths,
    "cli": cli,
    "concurrency": concurrency,
    "fleet": fleet,
}
