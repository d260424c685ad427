"""``python -m benchmarks.modal_sandboxes``: the modal: executor against the local control plane.

Side by side, in one run, against the same local Modal control plane
(``arcflow.testing.modal_server``, in a process of its own), each system in a
process of its own so that its CPU time (``time.process_time()``, every thread) and
its peak open files and RSS are its own:

1. **Concurrency**: 2,000 scenarios of 5 s at concurrency 1,000 (the server allows 100
   concurrent streams per connection): scenarios/s against the bound (concurrency /
   latency = 200/s) and against a plain-asyncio loop making the same SDK calls; CPU
   per sandbox against the loop's; peak open files and RSS.
2. **Creation rate**: 600 instant scenarios with default settings against a server that
   allows 30 creations/s: scenarios/s against 30/s (goal >= 0.8).

arcflow runs as a user runs it: ``arcflow.Runtime`` with the ``modal:`` executor,
outcomes written to PostgreSQL in batches.  ``--before DIR`` also runs an older
checkout of arcflow (its ``ModalExecutor`` and ``Runtime``) the same way.

Used by ``python -m benchmarks --only modal`` (``nox -s bench``), or alone::

    python -m benchmarks.modal_sandboxes [--quick] [--db DSN] [--before DIR] [--only concurrency,rate]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: The sandbox command: read the scenario, sleep, answer (a shell and a sleep per sandbox).
SLEEP_COMMAND = 'read -r _ || true; sleep {sleep}; echo \'{{"status": "passed"}}\''
INSTANT_COMMAND = 'read -r _ || true; echo \'{"status": "passed"}\''


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 65536), hard))


def _vm(field: str) -> int:
    """A VmHWM/VmRSS-style field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class _FdWatch:
    """Peak open files of this process, sampled every 20 ms in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, len(os.listdir("/proc/self/fd")))
            except OSError:
                pass
            self._stop.wait(0.02)

    def __enter__(self) -> _FdWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the processes ------------------------------------------------------------------------------


def serve(settings: dict[str, Any]) -> None:
    """The local control plane: print its environment as one JSON line, serve until stdin ends."""
    _raise_nofile()
    from arcflow.testing.modal_server import LocalModal

    with LocalModal(**settings) as env:
        print(json.dumps(env.env), flush=True)
        sys.stdin.read()


def sdk_loop(n: int, concurrency: int, command: str) -> dict[str, Any]:
    """The reference: plain asyncio making the SDK calls arcflow makes, for each scenario."""
    import asyncio

    import modal

    _raise_nofile()
    argv = ["/bin/sh", "-c", command]

    async def one(app: Any, gate: asyncio.Semaphore, payload: bytes) -> bool:
        async with gate:
            sb = await modal.Sandbox.create.aio(*argv, app=app, timeout=300)
            try:
                sb.stdin.write(payload)
                sb.stdin.write_eof()
                await sb.stdin.drain.aio()
                out, _err = await asyncio.gather(sb.stdout.read.aio(), sb.stderr.read.aio())
                await sb.wait.aio(raise_on_termination=False)
                return sb.returncode == 0 and "passed" in out
            finally:
                await sb.detach.aio()

    async def main() -> dict[str, Any]:
        app = await modal.App.lookup.aio("arcflow-bench", create_if_missing=True)
        await one(app, asyncio.Semaphore(1), b"{}")  # connections, imports
        gate = asyncio.Semaphore(concurrency)
        payloads = [json.dumps({"id": str(i), "input": {}}).encode() for i in range(n)]
        with _FdWatch() as fds:
            cpu0, t0 = time.process_time(), time.perf_counter()
            ok = await asyncio.gather(*(one(app, gate, p) for p in payloads))
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return {
            "scenarios": n,
            "passed": sum(ok),
            "elapsed_s": elapsed,
            "cpu_s": cpu,
            "peak_open_files": fds.peak,
            "peak_rss_mb": _vm("VmHWM") / 2**20,
        }

    return asyncio.run(main())


def arcflow_run(
    n: int, concurrency: int, command: str, dsn: str, config: dict[str, Any]
) -> dict[str, Any]:
    """arcflow as a user runs it: a Runtime with the modal: executor, outcomes in PostgreSQL."""
    import attrs
    import trio

    import arcflow
    from arcflow.executors.modal import ModalConfig, ModalExecutor

    _raise_nofile()
    known = attrs.fields_dict(ModalConfig)
    cfg = ModalConfig(app_name="arcflow-bench", **{k: v for k, v in config.items() if k in known})
    scenarios = [arcflow.Scenario(id=f"s{i}") for i in range(n)]
    out: dict[str, Any] = {}

    async def main() -> None:
        executor = ModalExecutor(["/bin/sh", "-c", command], cfg)
        with tempfile.TemporaryDirectory() as data_dir:
            async with arcflow.Runtime(
                executor,
                dsn,
                run_id=f"modal-bench-{uuid.uuid4().hex[:8]}",
                concurrency=concurrency,
                batch_size=500,
                flush_interval=1.0,
                data_dir=data_dir,
            ) as rt:
                await rt.submit(arcflow.Scenario(id="warm-up"))
                while rt.statistics().completed < 1:
                    await trio.sleep(0.01)
                with _FdWatch() as fds:
                    cpu0, t0 = time.process_time(), time.perf_counter()
                    for scenario in scenarios:
                        await rt.submit(scenario)
                    while rt.statistics().completed < n + 1:
                        await trio.sleep(0.01)
                    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                stats = rt.statistics()
        by_status = dict(stats.by_status)
        executor_stats = getattr(stats, "executor", {}) or {}
        out.update(
            scenarios=n,
            passed=by_status.get("passed", 0) - 1,
            by_status=by_status,
            elapsed_s=elapsed,
            cpu_s=cpu,
            peak_open_files=fds.peak,
            peak_rss_mb=_vm("VmHWM") / 2**20,
            creation_rate_end=executor_stats.get("modal_creation_rate"),
            refusals=executor_stats.get("modal_creation_refusals"),
        )

    trio.run(main)
    return out


# -- the driver ------------------------------------------------------------------------------------


class Server:
    """The local control plane in a child process (``python -m MODULE serve SETTINGS``; a
    benchmark with a control plane of its own, functions deployed, sets ``module``)."""

    #: The module whose ``serve`` command starts the control plane.
    module = "benchmarks.modal_sandboxes"

    def __init__(self, **settings: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "serve", json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the local control plane did not start")
        self.env: dict[str, str] = json.loads(line)

    def cpu_s(self) -> float:
        """CPU seconds the server process (and the sandboxes it reaped) used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def measure(self, args: list[str], pythonpath: Path = ROOT) -> dict[str, Any]:
        """Run one child against this server; adds the server's CPU per sandbox."""
        before = self.cpu_s()
        m = _per_sandbox(_child(args, self.env, pythonpath))
        m["server_cpu_ms_per_sandbox"] = round(1000 * (self.cpu_s() - before) / m["scenarios"], 2)
        return m

    def run_child(self, args: list[str]) -> dict[str, Any]:
        """``python -m MODULE ARGS`` against this server: the JSON its last line prints."""
        proc = subprocess.run(
            [sys.executable, "-m", self.module, *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, **self.env, "PYTHONPATH": str(ROOT)},
            timeout=3600,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_average() -> str:
    """The machine's load averages (1, 5, 15 min), for the report: the cores may be shared."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _child(args: list[str], env: dict[str, str], pythonpath: Path = ROOT) -> dict[str, Any]:
    full = {
        **os.environ,
        **env,
        "PYTHONPATH": f"{pythonpath}{os.pathsep}{ROOT}",
        "MODAL_MAX_THROTTLE_WAIT": env.get("MODAL_MAX_THROTTLE_WAIT", ""),
    }
    if not full["MODAL_MAX_THROTTLE_WAIT"]:
        del full["MODAL_MAX_THROTTLE_WAIT"]
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=full,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _per_sandbox(m: dict[str, Any]) -> dict[str, Any]:
    m = dict(m)
    m["scenarios_per_s"] = round(m["scenarios"] / m["elapsed_s"], 1)
    m["cpu_ms_per_sandbox"] = round(1000 * m["cpu_s"] / m["scenarios"], 2)
    for key in ("elapsed_s", "cpu_s", "peak_rss_mb"):
        m[key] = round(m[key], 2)
    return m


#: Creation settings with no adaptive ramp (what the plain-asyncio loop does: create at once).
UNTHROTTLED = {
    "initial_creations_per_second": 2000.0,
    "max_creations_per_second": 2000.0,
    "creation_burst": 2000,
    "max_starting": 256,
}


def _rounds(
    settings: dict[str, Any],
    runs: list[tuple[str, list[str], Path]],
    rounds: int,
    what: str,
    log: Any,
) -> dict[str, dict[str, Any]]:
    """Each system ``rounds`` times, the order rotating each round, each run against a fresh
    server with ``settings``; the run of median speed (and the median CPU per sandbox)."""
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in runs}
    for r in range(rounds):
        k = r % len(runs)
        for name, args, path in runs[k:] + runs[:k]:
            log(f"  {what} round {r + 1}/{rounds}: {name} ...")
            with Server(**settings) as server:
                m = server.measure(args, path)
            measured[name].append(m)
            log(f"    {json.dumps(m)}")
    out = {}
    for name, ms in measured.items():
        ordered = sorted(ms, key=lambda m: m["scenarios_per_s"])
        median = dict(ordered[len(ordered) // 2])
        median["runs_scenarios_per_s"] = [m["scenarios_per_s"] for m in ms]
        median["runs_cpu_ms_per_sandbox"] = [m["cpu_ms_per_sandbox"] for m in ms]
        median["cpu_ms_per_sandbox"] = sorted(m["cpu_ms_per_sandbox"] for m in ms)[len(ms) // 2]
        out[name] = median
    return out


def concurrency_bench(
    dsn: str,
    *,
    quick: bool,
    before: Path | None,
    before_dsn: str = "",
    rounds: int = 1,
    log: Any = print,
) -> dict[str, Any]:
    n, c, sleep = (200, 100, 1.0) if quick else (2000, 1000, 5.0)
    command = SLEEP_COMMAND.format(sleep=sleep)
    runs: list[tuple[str, list[str], Path]] = [
        ("plain-asyncio SDK loop", ["sdk-loop", str(n), str(c), command], ROOT),
        (
            "arcflow, creation unthrottled",
            ["arcflow", str(n), str(c), command, dsn, json.dumps(UNTHROTTLED)],
            ROOT,
        ),
        ("arcflow, default settings", ["arcflow", str(n), str(c), command, dsn, "{}"], ROOT),
    ]
    if before is not None:
        runs.append(
            (
                "arcflow before (c78ad44), creation unthrottled",
                ["arcflow", str(n), str(c), command, before_dsn, json.dumps(UNTHROTTLED)],
                before,
            )
        )
    systems = _rounds({"max_concurrent_streams": 100}, runs, rounds, "concurrency", log)
    bound = c / sleep
    loop = systems["plain-asyncio SDK loop"]
    ratios = {
        name: {
            "of_bound": round(m["scenarios_per_s"] / bound, 3),
            "of_sdk_loop": round(m["scenarios_per_s"] / loop["scenarios_per_s"], 3),
            "cpu_of_sdk_loop": round(m["cpu_ms_per_sandbox"] / loop["cpu_ms_per_sandbox"], 3),
        }
        for name, m in systems.items()
    }
    return {
        "scenarios": n,
        "concurrency": c,
        "latency_s": sleep,
        "bound_per_s": bound,
        "max_concurrent_streams": 100,
        "systems": systems,
        "ratios": ratios,
    }


def rate_bench(
    dsn: str,
    *,
    quick: bool,
    before: Path | None,
    before_dsn: str = "",
    rounds: int = 1,
    log: Any = print,
) -> dict[str, Any]:
    n, limit = (150, 30.0) if quick else (600, 30.0)
    # The CLI's default concurrency (8): "default settings" as a new user runs it.
    runs = [
        (
            "arcflow, default settings",
            ["arcflow", str(n), "8", INSTANT_COMMAND, dsn, "{}"],
            ROOT,
        )
    ]
    if before is not None:
        runs.append(
            (
                "arcflow before (c78ad44), default settings",
                ["arcflow", str(n), "8", INSTANT_COMMAND, before_dsn, "{}"],
                before,
            )
        )
    systems = _rounds({"creation_rate": limit}, runs, rounds, "rate", log)
    return {
        "scenarios": n,
        "server_creations_per_s": limit,
        "concurrency": 8,
        "systems": systems,
        "of_limit": {name: round(m["scenarios_per_s"] / limit, 3) for name, m in systems.items()},
    }


def run_all(
    dsn: str,
    *,
    quick: bool,
    before: Path | None = None,
    before_dsn: str = "",
    only: list[str],
    rounds: int = 1,
    log: Any = print,
) -> dict[str, Any]:
    """The benchmarks named in ``only``; ``before`` (an older checkout) writes to ``before_dsn``
    (a database of its own: an older arcflow refuses a newer schema)."""
    results: dict[str, Any] = {"rounds": rounds}
    kw: dict[str, Any] = {
        "quick": quick,
        "before": before,
        "before_dsn": before_dsn,
        "rounds": rounds,
        "log": log,
    }
    if "concurrency" in only:
        results["concurrency"] = concurrency_bench(dsn, **kw)
    if "rate" in only:
        results["rate"] = rate_bench(dsn, **kw)
    results["targets"] = targets(results)
    return results


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if "concurrency" in results:
        r = results["concurrency"]["ratios"]
        default = r["arcflow, default settings"]
        fast = r["arcflow, creation unthrottled"]
        out += [
            _target(
                "arcflow CPU per sandbox / SDK loop's (unthrottled)",
                fast["cpu_of_sdk_loop"],
                1.2,
                higher=False,
            ),
            _target(
                "arcflow CPU per sandbox / SDK loop's (defaults)",
                default["cpu_of_sdk_loop"],
                1.2,
                higher=False,
            ),
            _target("arcflow scenarios/s / SDK loop's (unthrottled)", fast["of_sdk_loop"], 0.9),
        ]
    if "rate" in results:
        out.append(
            _target(
                "arcflow scenarios/s / 30 creations/s, default settings",
                results["rate"]["of_limit"]["arcflow, default settings"],
                0.8,
            )
        )
    return out


def _target(name: str, value: float | None, goal: float, *, higher: bool = True) -> dict[str, Any]:
    met = value is not None and (value >= goal if higher else value <= goal)
    return {"target": name, "value": value, "goal": goal, "met": bool(met)}


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    if "concurrency" in results:
        r = results["concurrency"]
        lines += [
            f"### Modal: {r['scenarios']:,} scenarios of {r['latency_s']:g} s at concurrency "
            f"{r['concurrency']:,} (bound {r['bound_per_s']:g}/s; {r['max_concurrent_streams']} "
            "streams per connection)",
            "",
            "| system | scenarios/s | of bound | of SDK loop | CPU ms/sandbox | CPU / SDK loop's "
            "| server CPU ms/sandbox | peak open files | peak RSS MB | scenarios/s by round |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in r["systems"].items():
            q = r["ratios"][name]
            lines.append(
                f"| {name} | {m['scenarios_per_s']:.1f} | {q['of_bound']:.2f} | {q['of_sdk_loop']:.2f} | "
                f"{m['cpu_ms_per_sandbox']:.2f} | {q['cpu_of_sdk_loop']:.2f} | "
                f"{m['server_cpu_ms_per_sandbox']:.2f} | {m['peak_open_files']:,} | "
                f"{m['peak_rss_mb']:.0f} | {', '.join(f'{v:.1f}' for v in m['runs_scenarios_per_s'])} |"
            )
        lines.append("")
    if "rate" in results:
        r = results["rate"]
        lines += [
            f"### Modal: {r['scenarios']} instant scenarios, default settings (concurrency "
            f"{r['concurrency']}), server allowing {r['server_creations_per_s']:g} creations/s",
            "",
            "| system | scenarios/s | of the limit | refusals | creation rate at the end |",
            "|---|---|---|---|---|",
        ]
        for name, m in r["systems"].items():
            lines.append(
                f"| {name} | {m['scenarios_per_s']:.1f} | {r['of_limit'][name]:.2f} | "
                f"{m.get('refusals', 'n/a')} | {m.get('creation_rate_end', 'n/a')} |"
            )
        lines.append("")
    for t in results.get("targets", []):
        lines.append(
            f"- {t['target']}: {t['value']} (goal {'>=' if 'CPU' not in t['target'] else '<='} "
            f"{t['goal']}) {'met' if t['met'] else 'NOT met'}"
        )
    return "\n".join(lines)


# -- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        serve(json.loads(argv[1]))
        return 0
    if argv and argv[0] == "sdk-loop":
        print(json.dumps(sdk_loop(int(argv[1]), int(argv[2]), argv[3])))
        return 0
    if argv and argv[0] == "arcflow":
        n, c, command, dsn, config = argv[1:6]
        print(json.dumps(arcflow_run(int(n), int(c), command, dsn, json.loads(config))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.modal_sandboxes")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--db", help="PostgreSQL DSN (default: a throwaway server)")
    parser.add_argument("--before", type=Path, help="also run this older arcflow checkout")
    parser.add_argument("--only", default="concurrency,rate", help="concurrency, rate")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, the order rotating (median)")
    args = parser.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    from .db import BenchDB

    db = BenchDB(args.db, allow_truncate=True)
    try:
        before_dsn = ""
        if args.before is not None:
            from .baselines import run_asyncio
            from .db import _execute, with_database

            try:
                run_asyncio(_execute(db.admin_dsn, "CREATE DATABASE arcflow_modal_before"))
            except Exception:  # it exists already
                pass
            before_dsn = with_database(db.admin_dsn, "arcflow_modal_before")
        results = run_all(
            db.dsn,
            quick=args.quick,
            before=args.before,
            before_dsn=before_dsn,
            only=only,
            rounds=args.rounds,
        )
    finally:
        db.close()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
