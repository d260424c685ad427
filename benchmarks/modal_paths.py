"""``python -m benchmarks.modal_paths``: the three Modal paths side by side.

1,000 scenarios of 0.2 s against the local Modal control plane
(``arcflow.testing.modal_server``, in a process of its own, a fresh one per run) with
a **1 s simulated container start** (``start_delay`` for sandboxes, ``cold_start``
for a function's containers), each path run as a user runs it (``arcflow.Runtime``,
outcomes written to PostgreSQL in batches, default creation settings), each in a
process of its own, at the same concurrency:

* ``modal:`` a new sandbox per scenario (each pays the container start);
* ``modal:`` with a warm pool of 50 sandboxes (``ModalConfig(pool=50)``: 50 container
  starts, then ``Sandbox.exec`` per scenario);
* ``modal-fn:`` a deployed function with 50 containers (one input each: the pool's
  shape) and with 50 containers of 10 inputs (the user's own setting).

Every scenario is a process in every path (``sh -c 'read; sleep 0.2; echo ...'`` as
the sandbox command, the exec'd command and the function's ``command``), so the local
control plane forks as much for each.  Reported: scenarios/s, against the seed's 4/s
and against the bound of each path's parallelism.

Used by ``python -m benchmarks --only modal_paths`` (``nox -s bench``), or alone::

    python -m benchmarks.modal_paths [--quick] [--db DSN] [--rounds N] [--only sandbox,pool,fn]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .modal_sandboxes import Server, _raise_nofile, _target, load_average

ROOT = Path(__file__).resolve().parent.parent
MODULE = "benchmarks.modal_paths"
APP = "arcflow-bench"
#: The seed's throughput (one sandbox after another, ~4 scenarios/s).
SEED_PER_S = 4.0
#: Simulated container start, and each scenario's own time.
COLD_START_S = 1.0
SCENARIO_S = 0.2
POOL = 50
#: The scenario: read it, take 0.2 s, answer (the function's command answers null: passed).
COMMAND = [
    "/bin/sh",
    "-c",
    f'read -r _ || true; sleep {SCENARIO_S}; echo \'{{"status": "passed"}}\'',
]
FN_COMMAND = ["/bin/sh", "-c", f"cat >/dev/null; sleep {SCENARIO_S}; echo null"]
#: (function name, containers, inputs per container)
FUNCTIONS = [("sleep-50x1", POOL, 1), ("sleep-50x10", POOL, 10)]


# -- the processes ------------------------------------------------------------------------------


def serve(settings: dict[str, Any]) -> None:
    """The local control plane with the functions deployed; print its environment, serve until
    stdin ends."""
    _raise_nofile()
    from arcflow.testing.modal_server import LocalModal

    with LocalModal(**settings) as env:
        for name, containers, inputs in FUNCTIONS:
            env.register_function(
                APP,
                name,
                command=FN_COMMAND,
                cold_start=COLD_START_S,
                max_containers=containers,
                max_inputs=inputs,
            )
        print(json.dumps(env.env), flush=True)
        sys.stdin.read()


def arcflow_run(path: str, n: int, concurrency: int, dsn: str) -> dict[str, Any]:
    """One path through ``arcflow.Runtime``: wall time from the first submit to the last
    outcome (the pool's and the function's container starts included)."""
    import trio

    import arcflow
    from arcflow.executors.modal import ModalConfig, ModalExecutor

    _raise_nofile()
    executor: Any
    if path == "sandbox":
        executor = ModalExecutor(COMMAND, ModalConfig(app_name=APP))
    elif path == "pool":
        executor = ModalExecutor(COMMAND, ModalConfig(app_name=APP, pool=POOL))
    else:
        executor = f"modal-fn:{APP}/{path.removeprefix('fn:')}"
    scenarios = [arcflow.Scenario(id=f"s{i}") for i in range(n)]
    out: dict[str, Any] = {}

    async def main() -> None:
        with tempfile.TemporaryDirectory() as data_dir:
            async with arcflow.Runtime(
                executor,
                dsn,
                run_id=f"modal-paths-{uuid.uuid4().hex[:8]}",
                concurrency=concurrency,
                batch_size=500,
                flush_interval=1.0,
                data_dir=data_dir,
            ) as rt:
                cpu0, t0 = time.process_time(), time.perf_counter()
                for scenario in scenarios:
                    await rt.submit(scenario)
                while rt.statistics().completed < n:
                    await trio.sleep(0.01)
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                stats = rt.statistics()
        by_status = dict(stats.by_status)
        ex = dict(stats.executor or {})
        out.update(
            scenarios=n,
            passed=by_status.get("passed", 0),
            by_status=by_status,
            elapsed_s=round(elapsed, 2),
            cpu_s=round(cpu, 2),
            scenarios_per_s=round(n / elapsed, 1),
            sandboxes_created=ex.get("modal_creations"),
            pool_recycled=ex.get("modal_pool_recycled"),
        )

    trio.run(main)
    return out


# -- the driver ------------------------------------------------------------------------------------


class PathsServer(Server):
    """The local control plane (1 s container starts, the functions deployed), in a child."""

    module = MODULE

    def measure_path(self, args: list[str]) -> dict[str, Any]:
        before = self.cpu_s()
        m = self.run_child(args)
        m["server_cpu_ms_per_scenario"] = round(1000 * (self.cpu_s() - before) / m["scenarios"], 2)
        return m


def _fn_available() -> str | None:
    """Why the modal-fn: column cannot run, or None when it can."""
    try:
        from arcflow.executors.modal_fn import ModalFnExecutor  # noqa: F401
    except ImportError as exc:
        return f"modal-fn: executor not available ({exc})"
    return None


def run_all(
    dsn: str,
    *,
    quick: bool,
    rounds: int = 1,
    only: tuple[str, ...] = ("sandbox", "pool", "fn"),
    log: Any = print,
) -> dict[str, Any]:
    """Each path ``rounds`` times (order rotating, a fresh server each run); the medians."""
    n, c = (200, 200) if quick else (1_000, 500)
    paths: list[tuple[str, str, float]] = []  # (name, path, parallelism bound per s)
    if "sandbox" in only:
        # Each scenario holds a slot for its container start and its own time.
        paths.append(("modal: a sandbox per scenario", "sandbox", c / (COLD_START_S + SCENARIO_S)))
        # As many containers at once as the pool has.
        paths.append(
            (
                f"modal: a sandbox per scenario, concurrency {POOL}",
                f"sandbox@{POOL}",
                POOL / (COLD_START_S + SCENARIO_S),
            )
        )
    if "pool" in only:
        paths.append((f"modal: pool of {POOL}", "pool", POOL / SCENARIO_S))
    gap = _fn_available() if "fn" in only else None
    if "fn" in only and gap is None:
        for name, containers, inputs in FUNCTIONS:
            bound = min(c, containers * inputs) / SCENARIO_S
            paths.append((f"modal-fn: {containers} containers x {inputs}", f"fn:{name}", bound))
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in paths}
    for r in range(rounds):
        k = r % max(1, len(paths))
        for name, path, _ in paths[k:] + paths[:k]:
            log(f"  modal paths round {r + 1}/{rounds}: {name} ...")
            with PathsServer(start_delay=COLD_START_S) as server:
                kind, _, at = path.partition("@")
                m = server.measure_path(["arcflow", kind, str(n), at or str(c), dsn])
                m["concurrency"] = int(at or c)
            measured[name].append(m)
            log(f"    {json.dumps(m)}")
    systems: dict[str, Any] = {}
    for name, _path, bound in paths:
        ms = sorted(measured[name], key=lambda m: m["scenarios_per_s"])
        median = dict(ms[len(ms) // 2])
        median["runs_scenarios_per_s"] = [m["scenarios_per_s"] for m in measured[name]]
        median["bound_per_s"] = round(bound, 1)
        median["of_bound"] = round(median["scenarios_per_s"] / bound, 3)
        median["of_seed"] = round(median["scenarios_per_s"] / SEED_PER_S, 1)
        systems[name] = median
    results: dict[str, Any] = {
        "load_average": load_average(),
        "scenarios": n,
        "concurrency": c,
        "scenario_s": SCENARIO_S,
        "cold_start_s": COLD_START_S,
        "seed_per_s": SEED_PER_S,
        "rounds": rounds,
        "systems": systems,
        "gap": gap,
    }
    results["targets"] = [
        _target(f"{name}: scenarios/s / the seed's 4/s", m["of_seed"], 1.0)
        for name, m in systems.items()
    ]
    pool_name, per_name = f"modal: pool of {POOL}", "modal: a sandbox per scenario"
    if pool_name in systems and per_name in systems:
        results["targets"].append(
            _target(
                "pool of 50 / a sandbox per scenario (scenarios/s)",
                round(
                    systems[pool_name]["scenarios_per_s"] / systems[per_name]["scenarios_per_s"], 2
                ),
                1.0,
            )
        )
    return results


def markdown(results: dict[str, Any]) -> str:
    r = results
    lines = [
        f"### Modal paths: {r['scenarios']:,} scenarios of {r['scenario_s']:g} s, "
        f"{r['cold_start_s']:g} s container start, concurrency {r['concurrency']:,} "
        f"(load average after: {r.get('load_average', '?')})",
        "",
        "| path | concurrency | scenarios/s | x the seed's 4/s | bound/s | of bound "
        "| sandboxes made | arcflow CPU ms/scenario | server CPU ms/scenario "
        "| scenarios/s by round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in r["systems"].items():
        made = m.get("sandboxes_created")
        lines.append(
            f"| {name} | {m['concurrency']} | {m['scenarios_per_s']:.1f} | {m['of_seed']:.1f} "
            f"| {m['bound_per_s']:g} | {m['of_bound']:.2f} | {made if made is not None else 'n/a'} "
            f"| {1000 * m['cpu_s'] / m['scenarios']:.2f} | {m['server_cpu_ms_per_scenario']:.2f} "
            f"| {', '.join(f'{v:.1f}' for v in m['runs_scenarios_per_s'])} |"
        )
    lines.append("")
    if r.get("gap"):
        lines += [f"- gap: {r['gap']}", ""]
    for t in r.get("targets", []):
        lines.append(
            f"- {t['target']}: {t['value']} (goal >= {t['goal']}) {'met' if t['met'] else 'NOT met'}"
        )
    return "\n".join(lines)


# -- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        serve(json.loads(argv[1]))
        return 0
    if argv and argv[0] == "arcflow":
        path, n, c, dsn = argv[1:5]
        print(json.dumps(arcflow_run(path, int(n), int(c), dsn)))
        return 0
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--db", help="PostgreSQL DSN (default: a throwaway server)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, the order rotating (median)")
    parser.add_argument("--only", default="sandbox,pool,fn", help="sandbox, pool, fn")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    from .db import BenchDB

    db = BenchDB(args.db, allow_truncate=True)
    try:
        results = run_all(db.dsn, quick=args.quick, rounds=args.rounds, only=only)
    finally:
        db.close()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
