"""``python -m benchmarks.modal_functions``: the modal-fn: executor against the local control plane.

10,000 instant scenarios at concurrency 1,000 through a deployed function of the local
Modal control plane (``arcflow.testing.modal_server``, in a process of its own; the
function has 10 containers of ``max_inputs=100``, so 1,000 calls run at once), side by
side in one run, each system in a process of its own so that its CPU time
(``time.process_time()``, every thread) is its own:

* a plain-asyncio loop making the same SDK calls per scenario (``spawn`` then ``get``);
* arcflow as a user runs it: ``arcflow.Runtime`` with ``modal-fn:``, every call id
  recorded in ``arcflow.modal_calls``, outcomes written to PostgreSQL in batches.

Reported: calls/s (goal >= 500) and arcflow's CPU per call against the loop's (goal
<= 1.2x), plus the server's CPU per call (the local control plane is Python too, and
shares the machine's cores with both clients).

Used by ``python -m benchmarks --only modal_fn`` (``nox -s bench``), or alone::

    python -m benchmarks.modal_functions [--quick] [--db DSN] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .modal_sandboxes import Server, _raise_nofile, _target, load_average

ROOT = Path(__file__).resolve().parent.parent
MODULE = "benchmarks.modal_functions"
APP, FUNCTION = "arcflow-bench", "instant"
#: 10 containers x 100 inputs: room for 1,000 calls at once.
CONTAINERS, INPUTS = 10, 100


# -- the processes ------------------------------------------------------------------------------


async def _instant(scenario: dict[str, Any]) -> dict[str, Any]:
    return {"status": "passed"}


def serve(settings: dict[str, Any]) -> None:
    """The local control plane with the function deployed: print its environment, serve until
    stdin ends."""
    _raise_nofile()
    from arcflow.testing.modal_server import LocalModal

    with LocalModal(**settings) as env:
        env.register_function(APP, FUNCTION, _instant, max_containers=CONTAINERS, max_inputs=INPUTS)
        print(json.dumps(env.env), flush=True)
        sys.stdin.read()


def sdk_loop(n: int, concurrency: int) -> dict[str, Any]:
    """The reference: plain asyncio, spawn then get per scenario, ``concurrency`` at once."""
    import asyncio

    import modal

    _raise_nofile()

    async def main() -> dict[str, Any]:
        fn = modal.Function.from_name(APP, FUNCTION)
        await fn.hydrate.aio()
        gate = asyncio.Semaphore(concurrency)

        async def one(payload: dict[str, Any]) -> bool:
            async with gate:
                call = await fn.spawn.aio(payload)
                result = await call.get.aio()
                return isinstance(result, dict) and result.get("status") == "passed"

        await one({"id": "warm-up", "input": {}})
        payloads = [{"id": f"s{i}", "input": {}} for i in range(n)]
        cpu0, t0 = time.process_time(), time.perf_counter()
        ok = await asyncio.gather(*(one(p) for p in payloads))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return {"scenarios": n, "passed": sum(ok), "elapsed_s": elapsed, "cpu_s": cpu}

    return asyncio.run(main())


def arcflow_run(n: int, concurrency: int, dsn: str) -> dict[str, Any]:
    """arcflow as a user runs it: a Runtime with modal-fn:, outcomes and call ids in PostgreSQL."""
    import trio

    import arcflow

    _raise_nofile()
    scenarios = [arcflow.Scenario(id=f"s{i}") for i in range(n)]
    out: dict[str, Any] = {}

    async def main() -> None:
        with tempfile.TemporaryDirectory() as data_dir:
            async with arcflow.Runtime(
                f"modal-fn:{APP}/{FUNCTION}",
                dsn,
                run_id=f"modal-fn-bench-{uuid.uuid4().hex[:8]}",
                concurrency=concurrency,
                batch_size=500,
                flush_interval=1.0,
                data_dir=data_dir,
            ) as rt:
                await rt.submit(arcflow.Scenario(id="warm-up"))
                while rt.statistics().completed < 1:
                    await trio.sleep(0.01)
                cpu0, t0 = time.process_time(), time.perf_counter()
                for scenario in scenarios:
                    await rt.submit(scenario)
                while rt.statistics().completed < n + 1:
                    await trio.sleep(0.01)
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                stats = rt.statistics()
        by_status = dict(stats.by_status)
        out.update(
            scenarios=n,
            passed=by_status.get("passed", 0) - 1,
            by_status=by_status,
            elapsed_s=elapsed,
            cpu_s=cpu,
            executor={k: v for k, v in (stats.executor or {}).items()},
        )

    trio.run(main)
    return out


# -- the driver ------------------------------------------------------------------------------------


class FunctionServer(Server):
    """The local control plane, with the benchmark's function, in a child process."""

    module = MODULE

    def measure_calls(self, args: list[str]) -> dict[str, Any]:
        before = self.cpu_s()
        m = self.run_child(args)
        m["calls_per_s"] = round(m["scenarios"] / m["elapsed_s"], 1)
        m["cpu_ms_per_call"] = round(1000 * m["cpu_s"] / m["scenarios"], 3)
        m["server_cpu_ms_per_call"] = round(1000 * (self.cpu_s() - before) / m["scenarios"], 3)
        for key in ("elapsed_s", "cpu_s"):
            m[key] = round(m[key], 2)
        return m


def run_all(dsn: str, *, quick: bool, rounds: int = 1, log: Any = print) -> dict[str, Any]:
    """Both systems ``rounds`` times (order rotating, a fresh server each run); the medians."""
    n, c = (1_000, 200) if quick else (10_000, 1_000)
    runs = [
        ("plain-asyncio SDK loop", ["sdk-loop", str(n), str(c)]),
        ("arcflow modal-fn:", ["arcflow", str(n), str(c), dsn]),
    ]
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in runs}
    load_before = load_average()
    for r in range(rounds):
        k = r % len(runs)
        for name, args in runs[k:] + runs[:k]:
            log(f"  modal-fn round {r + 1}/{rounds}: {name} (load {load_average()}) ...")
            with FunctionServer(max_concurrent_streams=100) as server:
                m = server.measure_calls(args)
            measured[name].append(m)
            log(f"    {json.dumps(m)}")
    systems = {}
    for name, ms in measured.items():
        ordered = sorted(ms, key=lambda m: m["calls_per_s"])
        median = dict(ordered[len(ordered) // 2])
        median["runs_calls_per_s"] = [m["calls_per_s"] for m in ms]
        median["runs_cpu_ms_per_call"] = [m["cpu_ms_per_call"] for m in ms]
        median["cpu_ms_per_call"] = sorted(m["cpu_ms_per_call"] for m in ms)[len(ms) // 2]
        systems[name] = median
    loop, ours = systems["plain-asyncio SDK loop"], systems["arcflow modal-fn:"]
    cpu_ratio = round(ours["cpu_ms_per_call"] / loop["cpu_ms_per_call"], 3)
    results: dict[str, Any] = {
        "scenarios": n,
        "concurrency": c,
        "containers": CONTAINERS,
        "max_inputs": INPUTS,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": load_average(),
        "cpus": os.cpu_count(),
        "systems": systems,
        "cpu_of_sdk_loop": cpu_ratio,
        "of_sdk_loop": round(ours["calls_per_s"] / loop["calls_per_s"], 3),
    }
    results["targets"] = [
        _target("arcflow modal-fn: calls/s", ours["calls_per_s"], 500.0),
        _target("arcflow CPU per call / SDK loop's", cpu_ratio, 1.2, higher=False),
    ]
    return results


def markdown(results: dict[str, Any]) -> str:
    r = results
    lines = [
        f"### Modal Functions: {r['scenarios']:,} instant scenarios at concurrency "
        f"{r['concurrency']:,} ({r['containers']} containers x max_inputs {r['max_inputs']}; "
        f"load {r['load_before']} -> {r['load_after']} on {r['cpus']} cores)",
        "",
        "| system | calls/s | CPU ms/call | CPU / SDK loop's | server CPU ms/call | calls/s by round |",
        "|---|---|---|---|---|---|",
    ]
    loop = r["systems"]["plain-asyncio SDK loop"]
    for name, m in r["systems"].items():
        lines.append(
            f"| {name} | {m['calls_per_s']:.1f} | {m['cpu_ms_per_call']:.3f} | "
            f"{m['cpu_ms_per_call'] / loop['cpu_ms_per_call']:.2f} | "
            f"{m['server_cpu_ms_per_call']:.3f} | "
            f"{', '.join(f'{v:.1f}' for v in m['runs_calls_per_s'])} |"
        )
    lines.append("")
    for t in r["targets"]:
        sign = "<=" if "CPU" in t["target"] else ">="
        lines.append(
            f"- {t['target']}: {t['value']} (goal {sign} {t['goal']}) "
            f"{'met' if t['met'] else 'NOT met'}"
        )
    return "\n".join(lines)


# -- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        serve(json.loads(argv[1]))
        return 0
    if argv and argv[0] == "sdk-loop":
        print(json.dumps(sdk_loop(int(argv[1]), int(argv[2]))))
        return 0
    if argv and argv[0] == "arcflow":
        n, c, dsn = argv[1:4]
        print(json.dumps(arcflow_run(int(n), int(c), dsn)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.modal_functions")
    parser.add_argument("--quick", action="store_true", help="1,000 calls at concurrency 200")
    parser.add_argument("--db", help="PostgreSQL DSN (default: a throwaway server)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, the order rotating (median)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    from .db import BenchDB

    db = BenchDB(args.db, allow_truncate=True)
    try:
        results = run_all(db.dsn, quick=args.quick, rounds=args.rounds)
    finally:
        db.close()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
