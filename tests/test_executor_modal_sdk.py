"""The modal: executor with the real ``modal`` SDK against the local control plane.

Every test drives arcflow's :class:`ModalExecutor` (and, where the runtime matters,
``arcflow.Runtime`` with a real PostgreSQL) against a :class:`LocalModal` on
127.0.0.1 whose sandboxes are local processes: the wire protocol, the SDK's retries,
cancellation, refusals and outages are real.  Nothing here talks to Modal.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_asyncio
from conftest import import_or_skip

modal = import_or_skip("modal")

import arcflow  # noqa: E402
from arcflow.executors import ExecutionContext  # noqa: E402
from arcflow.executors.modal import ModalConfig, ModalExecutor  # noqa: E402
from arcflow.models import Scenario, Status  # noqa: E402
from arcflow.testing.modal_server import LocalModal  # noqa: E402
from arcflow.testing.modal_server import Status as GrpcStatus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: Reads the scenario on stdin and acts on its input: pass (echo the size of the input),
#: fail, crash, write bytes that are not UTF-8, sleep, or ignore stdin.
SCRIPT = r"""
import json, sys, time
raw = sys.stdin.buffer.read()
s = json.loads(raw)
i = s["input"]
time.sleep(i.get("sleep", 0))
mode = i.get("mode", "pass")
if mode == "not_utf8":
    sys.stdout.buffer.write(b'{"status": "passed", "output": "caf\xe9 \xff"}\n')
elif mode == "fail":
    print(json.dumps({"status": "failed", "score": 0.25}))
elif mode == "crash":
    sys.stderr.write("Traceback ...\nKeyError: 'answer'\n")
    sys.exit(2)
else:
    print(json.dumps({"status": "passed", "output": {"id": s["id"], "bytes": len(raw)}}))
"""
COMMAND = [sys.executable, "-c", SCRIPT]
#: Never reads stdin, never ends (until terminated or its lifetime).
HANG = ["/bin/sh", "-c", "exec sleep 600"]


def config(**values: Any) -> ModalConfig:
    """A ModalConfig with these values (those this version of ModalConfig knows)."""
    known = attrs.fields_dict(ModalConfig)
    return ModalConfig(app_name="arcflow-tests", **{k: v for k, v in values.items() if k in known})


#: Fast creations, for tests that are not about the rate.
FAST = {
    "max_creations_per_second": 2000.0,
    "initial_creations_per_second": 2000.0,
    "creation_burst": 2000,
    "max_starting": 256,
}


def context(
    attempt: int = 1, *, timeout_s: float | None = 30, run_id: str = "r"
) -> ExecutionContext:
    return ExecutionContext(run_id=run_id, attempt=attempt, worker="w", timeout_s=timeout_s)


@pytest.fixture(autouse=True)
def _restore_modal_throttle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor sets MODAL_MAX_THROTTLE_WAIT=0 for the process: undo it after each test."""
    monkeypatch.setenv("MODAL_MAX_THROTTLE_WAIT", "0")


@pytest.fixture
def modal_env() -> Iterator[LocalModal]:
    with LocalModal() as env, env.environ():
        yield env
        assert env.wait_idle(15), [sb.sandbox_id for sb in env.statistics().live]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def running(executor: ModalExecutor) -> AsyncIterator[ModalExecutor]:
    """The executor started (inside a trio-asyncio loop, as the runtime gives it), then closed."""
    async with trio_asyncio.open_loop():
        await executor.start()
        try:
            yield executor
        finally:
            await executor.aclose()


async def run_all(
    executor: ModalExecutor,
    scenarios: list[Scenario],
    *,
    concurrency: int,
    timeout_s: float | None = 30,
) -> dict[str, Any]:
    """Run every scenario through the executor, ``concurrency`` at once, as producers would."""
    results: dict[str, Any] = {}
    slots = trio.CapacityLimiter(concurrency)

    async def one(scenario: Scenario) -> None:
        async with slots:
            ctx = context(timeout_s=timeout_s)
            with trio.move_on_after(timeout_s if timeout_s is not None else 1e9) as scope:
                results[scenario.id] = await executor.run(scenario, ctx)
            if scope.cancelled_caught:
                results[scenario.id] = ("timeout", dict(ctx.details))

    async with trio.open_nursery() as nursery:
        for scenario in scenarios:
            nursery.start_soon(one, scenario)
    return results


# -- what a scenario's sandbox does -------------------------------------------------------------


async def test_real_sandboxes_map_like_the_process_executor(modal_env: LocalModal) -> None:
    """Pass, fail and crash through real sandboxes: outcomes, real ids, exit codes, none left."""
    async with running(ModalExecutor(COMMAND, config(**FAST))) as executor:
        results = await run_all(
            executor,
            [Scenario(id=m, input={"mode": m}) for m in ("pass", "fail", "crash")],
            concurrency=3,
        )
    passed, failed, crashed = results["pass"], results["fail"], results["crash"]
    assert passed.status is Status.PASSED and passed.output["id"] == "pass"
    assert str(passed.executor["sandbox_id"]).startswith("sb-")
    assert passed.executor["exit_code"] == 0
    assert (failed.status, failed.score) == (Status.FAILED, 0.25)
    assert crashed.error_type == "ProcessExitError" and crashed.executor["exit_code"] == 2
    assert "KeyError: 'answer'" in crashed.error_message
    assert modal_env.statistics().creates == 3


async def test_output_that_is_not_utf8_is_replaced_not_an_error(modal_env: LocalModal) -> None:
    """A sandbox writing bytes that are not UTF-8 passes, the bytes replaced by U+FFFD (as process:)."""
    async with running(ModalExecutor(COMMAND, config(**FAST))) as executor:
        result = await executor.run(Scenario(id="odd", input={"mode": "not_utf8"}), context())
    assert result.status is Status.PASSED, result
    assert result.output == "caf\ufffd \ufffd"


async def test_scenario_over_16_mib_reaches_the_command(modal_env: LocalModal) -> None:
    """A 20 MiB scenario is written to stdin in drained chunks, EOF sent: it passes."""
    blob = "x" * (20 * 1024 * 1024)
    scenario = Scenario(id="big", input={"blob": blob})
    async with running(ModalExecutor(COMMAND, config(**FAST))) as executor:
        results = await run_all(executor, [scenario], concurrency=1, timeout_s=30)
    result = results["big"]
    assert not isinstance(result, tuple), f"timed out: {result}"
    assert result.status is Status.PASSED, result
    assert result.output["bytes"] == len(json.dumps(scenario.to_json()).encode())


async def test_stdin_failure_still_sends_eof_and_keeps_the_real_error(
    modal_env: LocalModal,
) -> None:
    """When writing stdin fails, EOF is still sent (the command does not hang) and the outcome
    names the real error."""
    modal_env.fail_next(
        "TaskCommandRouter/SandboxStdinWriteV2", GrpcStatus.INVALID_ARGUMENT, message="bad stdin"
    )
    command = ["/bin/sh", "-c", "cat >/dev/null; echo 'no scenario' >&2; exit 3"]
    async with running(ModalExecutor(command, config(**FAST))) as executor:
        results = await run_all(executor, [Scenario(id="s")], concurrency=1, timeout_s=8)
    result = results["s"]
    assert not isinstance(result, tuple), f"the command never got EOF: {result}"
    assert result.error_type == "ProcessExitError"
    assert "bad stdin" in result.error_message
    assert "writing the scenario to stdin failed" in result.error_message


async def test_sandboxes_carry_run_scenario_attempt_tags(modal_env: LocalModal) -> None:
    """A running sandbox is tagged with arcflow, the run id, the scenario id and the attempt."""
    seen: list[Any] = []
    async with (
        running(ModalExecutor(HANG, config(**FAST))) as executor,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(executor.run, Scenario(id="tagged"), context(2, run_id="run-42"))
        with trio.fail_after(10):
            while not modal_env.statistics().live:
                await trio.sleep(0.05)
        seen.extend(modal_env.statistics().live)
        nursery.cancel_scope.cancel()
    tags = seen[0].tags
    assert tags.get("arcflow-run") == "run-42"
    assert tags.get("arcflow-scenario") == "tagged"
    assert tags.get("arcflow-attempt") == "2"
    assert tags.get("arcflow") == "1"


# -- the runtime never crashes on a sandbox's output --------------------------------------------


async def test_runtime_stores_every_outcome_when_timeouts_land_as_output_ends(
    modal_env: LocalModal, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Scenarios whose timeout lands just as their output ends, and output that is not UTF-8,
    through the runtime: the run ends normally with every outcome stored and no sandbox left."""
    executor = ModalExecutor(COMMAND, config(**FAST))
    scenarios = [Scenario(id=f"odd-{i}", input={"mode": "not_utf8"}) for i in range(10)]
    # Each sleeps around its own timeout: some finish, some are cancelled as their output ends.
    scenarios += [
        Scenario(id=f"edge-{i}", input={"sleep": 0.5 + i * 0.01}, timeout_s=0.55 + (i % 5) * 0.02)
        for i in range(40)
    ]
    async with arcflow.Runtime(
        executor, dsn, run_id=run_id, concurrency=50, data_dir=tmp_path
    ) as rt:
        for scenario in scenarios:
            await rt.submit(scenario)
    rows = await db_query(
        "SELECT scenario_id, status FROM arcflow.outcomes WHERE run_id = $1", run_id
    )
    statuses = {r["scenario_id"]: r["status"] for r in rows}
    assert set(statuses) == {s.id for s in scenarios}
    assert all(statuses[f"odd-{i}"] == "passed" for i in range(10))
    assert set(statuses.values()) <= {"passed", "timeout"}
    assert modal_env.wait_idle(5)


# -- resources ------------------------------------------------------------------------------------


async def test_file_descriptors_are_released_after_each_sandbox(modal_env: LocalModal) -> None:
    """Sandboxes are detached after use: 150 scenarios at concurrency 10 leave the process's open
    files where they were, and never hold many more than 10 sandboxes' worth."""
    async with running(ModalExecutor(COMMAND, config(**FAST))) as executor:
        await executor.run(Scenario(id="warm"), context())  # the control-plane connection
        await trio.sleep(0.5)
        baseline = open_fds()
        peak = baseline

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, open_fds())
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            results = await run_all(
                executor, [Scenario(id=str(i)) for i in range(150)], concurrency=10
            )
            nursery.cancel_scope.cancel()
        assert all(r.status is Status.PASSED for r in results.values())
        await trio.sleep(0.5)
        after = open_fds()
    assert after <= baseline + 4, (baseline, after)
    # Each running sandbox: its router connection (both ends, the server is in this process)
    # and its process's pipes; 10 at once, never 150.
    assert peak <= baseline + 10 * 12, (baseline, peak)


async def test_creation_does_not_stall_behind_waits() -> None:
    """With 10 concurrent streams per connection, 40 sandboxes of 4 s created at 20/s all run at
    once: creations are not queued behind the waits of the sandboxes already running."""
    paced = {
        "max_creations_per_second": 20.0,
        "initial_creations_per_second": 20.0,
        "creation_burst": 1,
    }
    with LocalModal(max_concurrent_streams=10) as env, env.environ():
        async with running(ModalExecutor(COMMAND, config(**paced))) as executor:
            with trio.fail_after(60):
                results = await run_all(
                    executor,
                    [Scenario(id=str(i), input={"sleep": 4}) for i in range(40)],
                    concurrency=40,
                )
        assert all(r.status is Status.PASSED for r in results.values())
        assert env.statistics().max_running == 40
        assert env.wait_idle(10)


# -- creation rate ------------------------------------------------------------------------------


async def test_default_settings_find_the_servers_creation_rate() -> None:
    """Default settings against a server allowing 30 creations/s: the creation rate climbs past
    the old fixed 4/s (slow start doubles it while demand waits), nothing fails, and the
    refusals are counted.  (How fast is the benchmark's business: `benchmarks.modal_sandboxes`.)"""
    with LocalModal(creation_rate=30) as env, env.environ():
        async with running(ModalExecutor(COMMAND, config())) as executor:
            start = time.monotonic()
            with trio.fail_after(120):
                results = await run_all(
                    executor, [Scenario(id=str(i)) for i in range(200)], concurrency=50
                )
            elapsed = time.monotonic() - start
            stats = executor.statistics()
        assert all(r.status is Status.PASSED for r in results.values())
        # 5/s at the start, doubled at least twice: 20/s or more was reached.
        assert executor.rate.increases >= 2, (executor.rate.increases, elapsed)
        server = env.statistics()
        assert stats["modal_creations"] == 200 == server.creates
        assert stats["modal_creation_refusals"] == server.creates_refused.get("rate_limit", 0)
        assert env.wait_idle(5)


# -- cancellation, outages, leftovers -------------------------------------------------------------


async def test_stop_at_concurrency_1000_ends_within_grace_plus_terminate(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """1,000 running sandboxes, stop requested (Ctrl-C): the run ends within the grace period
    plus a bounded terminate time, every scenario recorded cancelled, no sandbox left running."""
    with LocalModal() as env, env.environ():
        executor = ModalExecutor(HANG, config(**FAST, terminate_timeout_s=10))
        grace = 1.0
        with trio.fail_after(300):
            async with arcflow.Runtime(
                executor, dsn, run_id=run_id, concurrency=1000, grace=grace, data_dir=tmp_path
            ) as rt:
                for i in range(1000):
                    await rt.submit(Scenario(id=str(i)))
                with trio.fail_after(120):
                    while env.statistics().running < 1000:
                        await trio.sleep(0.2)
                stopped_at = trio.current_time()
                rt.request_stop()
        took = trio.current_time() - stopped_at
        left = env.statistics().running
        assert took <= grace + 20, took
        assert left == 0
        rows = await db_query(
            "SELECT status, count(*) AS n FROM arcflow.outcomes WHERE run_id = $1 GROUP BY 1",
            run_id,
        )
        assert {r["status"]: r["n"] for r in rows} == {"cancelled": 1000}


async def test_control_plane_outage_is_survived(modal_env: LocalModal) -> None:
    """The control plane goes away for 4 s while scenarios run and start: creations are retried,
    running sandboxes finish, every scenario passes once it is back."""

    async def outage() -> None:
        await trio.sleep(1.0)
        await trio.to_thread.run_sync(modal_env.vanish)
        await trio.sleep(4.0)
        await trio.to_thread.run_sync(modal_env.come_back)

    async with (
        running(ModalExecutor(COMMAND, config(**FAST))) as executor,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(outage)
        results = await run_all(
            executor,
            [Scenario(id=str(i), input={"sleep": 0.5}) for i in range(60)],
            concurrency=10,
            timeout_s=60,
        )
    failures = {
        k: r if isinstance(r, tuple) else (r.status, r.error_type, r.error_message)
        for k, r in results.items()
        if isinstance(r, tuple) or r.status is not Status.PASSED
    }
    assert failures == {}


async def test_sandbox_running_when_contact_is_lost_is_terminated_once_it_returns(
    modal_env: LocalModal,
) -> None:
    """A sandbox whose attempt times out while the control plane is gone keeps its id in the
    details, and is terminated as soon as the control plane is back."""
    ctx = context(timeout_s=None)
    async with running(ModalExecutor(HANG, config(**FAST, terminate_timeout_s=1))) as executor:
        with trio.move_on_after(1.5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(executor.run, Scenario(id="lost"), ctx)
                with trio.fail_after(10):
                    while not modal_env.statistics().live:
                        await trio.sleep(0.05)
                await trio.to_thread.run_sync(modal_env.vanish)
        sandbox_id = ctx.details.get("sandbox_id")
        assert str(sandbox_id).startswith("sb-")
        assert modal_env.statistics().live_ids == (sandbox_id,)  # still running: unreachable
        await trio.sleep(1.0)
        await trio.to_thread.run_sync(modal_env.come_back)
        assert await modal_env.wait_idle_async(15)


async def test_resume_and_sweep_terminate_a_dead_runs_sandboxes(modal_env: LocalModal) -> None:
    """Sandboxes a crashed process left (tagged with its run) are terminated by begin_run on
    --resume, and by `python -m arcflow modal sweep RUN_ID`; another run's are left alone."""

    async def leftover(run: str) -> str:
        app = await modal.App.lookup.aio("arcflow-tests", create_if_missing=True)
        sandbox = await modal.Sandbox.create.aio(
            *HANG, app=app, timeout=300, tags={"arcflow": "1", "arcflow-run": run}
        )
        await sandbox.detach.aio()
        return str(sandbox.object_id)

    dead = [await in_asyncio(leftover, "dead-run") for _ in range(3)]
    other = await in_asyncio(leftover, "other-run")
    assert set(modal_env.statistics().live_ids) == {*dead, other}
    async with running(ModalExecutor(COMMAND, config(**FAST))) as executor:
        await executor.begin_run("dead-run", resume=True)
    assert set(modal_env.statistics().live_ids) == {other}
    proc = await trio.run_process(
        [sys.executable, "-m", "arcflow", "modal", "sweep", "other-run"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **modal_env.env, "ARCFLOW_MODAL_APP": "arcflow-tests"},
    )
    assert proc.returncode == 0, proc.stderr
    assert other in proc.stdout.decode()
    assert modal_env.statistics().live_ids == ()


async def in_asyncio(fn: Any, *args: Any) -> Any:
    """Run plain SDK (asyncio) code from a trio test, in a worker thread with its own loop."""
    import asyncio

    return await trio.to_thread.run_sync(lambda: asyncio.run(fn(*args)))


async def test_cancelled_creation_terminates_the_sandbox_it_made(modal_env: LocalModal) -> None:
    """An attempt cancelled while the control plane holds its creation waits (bounded) for the
    answer, and terminates the sandbox that creation made."""

    async def unstall() -> None:
        await trio.sleep(1.5)
        await trio.to_thread.run_sync(modal_env.resume)

    async with running(ModalExecutor(HANG, config(**FAST, terminate_timeout_s=5))) as executor:
        await trio.to_thread.run_sync(modal_env.stall)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(unstall)
            with trio.move_on_after(1.0):
                await executor.run(Scenario(id="stalled"), context())
        stats = modal_env.statistics()
        assert (stats.creates, stats.running, stats.terminates) == (1, 0, 1)
