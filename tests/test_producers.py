"""Producers: attempts, per-scenario timeouts, cancellation and the pool of resting producers.

The first tests run producers inside a runtime against a real PostgreSQL;
the rest run them on plain trio channels under a mock clock.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import arcflow
from arcflow.config import RuntimeConfig
from arcflow.executors.base import ExecutionContext, Executor
from arcflow.executors.process import ProcessExecutor
from arcflow.executors.python import PythonExecutor
from arcflow.models import ExecutionResult, Outcome, Scenario, Status
from arcflow.producers import Producer, ProducerPool, ProducerState, ProducerStats, ShutdownControl

SCRIPT = Path(__file__).resolve().parent / "scripts" / "scenario_proc.py"


class FlakyExecutor(arcflow.Executor):
    """Errors the first ``failures`` times a scenario is run, then passes."""

    kind = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}

    async def run(
        self, scenario: Scenario, context: arcflow.ExecutionContext
    ) -> arcflow.ExecutionResult:
        n = self.calls[scenario.id] = self.calls.get(scenario.id, 0) + 1
        assert context.attempt == n
        if scenario.input.get("verdict") == "failed":
            return arcflow.ExecutionResult(status=arcflow.Status.FAILED)
        if n <= self.failures:
            raise ConnectionError(f"flaky attempt {n}")
        return arcflow.ExecutionResult(status=arcflow.Status.PASSED, score=1.0)


async def rows(db_query: Any, run_id: str) -> list[tuple[str, int, str, bool]]:
    result = await db_query(
        "SELECT scenario_id, attempt, status, final FROM arcflow.outcomes WHERE run_id = $1"
        " ORDER BY scenario_id, attempt",
        run_id,
    )
    return [(r["scenario_id"], r["attempt"], r["status"], r["final"]) for r in result]


async def test_errors_twice_then_passes(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """An executor that errors twice then passes gives three rows, the last final and passed."""
    async with arcflow.Runtime(
        FlakyExecutor(failures=2),
        dsn,
        run_id=run_id,
        attempts=3,
        attempt_backoff=0.01,
        data_dir=tmp_path,
    ) as rt:
        await rt.submit(Scenario(id="a"))
    assert await rows(db_query, run_id) == [
        ("a", 1, "error", False),
        ("a", 2, "error", False),
        ("a", 3, "passed", True),
    ]
    assert rt.statistics().completed == 1


async def test_failed_is_never_retried(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A scenario that ran and did not pass is final at once, whatever --attempts says."""
    async with arcflow.Runtime(
        FlakyExecutor(failures=0),
        dsn,
        run_id=run_id,
        attempts=5,
        attempt_backoff=0.01,
        data_dir=tmp_path,
    ) as rt:
        await rt.submit(Scenario(id="f", input={"verdict": "failed"}))
    assert await rows(db_query, run_id) == [("f", 1, "failed", True)]


async def test_attempts_exhausted_last_error_is_final(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """When every attempt errors, the last one is the final outcome."""
    async with arcflow.Runtime(
        FlakyExecutor(failures=9),
        dsn,
        run_id=run_id,
        attempts=2,
        attempt_backoff=0.01,
        data_dir=tmp_path,
    ) as rt:
        await rt.submit(Scenario(id="e"))
    assert await rows(db_query, run_id) == [("e", 1, "error", False), ("e", 2, "error", True)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_timeout_kills_the_process(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Past its timeout a scenario is status timeout and its process is gone; timeout_s wins over --timeout."""
    executor = ProcessExecutor([sys.executable, str(SCRIPT)], kill_grace_s=0.2)
    async with arcflow.Runtime(executor, dsn, run_id=run_id, timeout=30, data_dir=tmp_path) as rt:
        await rt.submit(
            Scenario(
                id="slow",
                input={"mode": "sleep", "seconds": 60, "pid_file": str(tmp_path / "slow.pid")},
                timeout_s=0.5,
            )
        )
        await rt.submit(Scenario(id="quick", input={"mode": "pass"}))
    result = await db_query(
        "SELECT scenario_id, status, error_type, error_message, executor FROM arcflow.outcomes"
        " WHERE run_id = $1 ORDER BY 1",
        run_id,
    )
    assert [(r["scenario_id"], r["status"]) for r in result] == [
        ("quick", "passed"),
        ("slow", "timeout"),
    ]
    assert "0.5s" in result[1]["error_message"]
    pid = int((tmp_path / "slow.pid").read_text())
    assert not _alive(pid)
    # The timed-out outcome still says which process it was.
    assert json.loads(result[1]["executor"])["pid"] == pid


async def test_cancelling_100_running_scenarios_stops_all(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Cancelling the host with 100 running process scenarios kills every process; all are recorded."""
    executor = ProcessExecutor([sys.executable, str(SCRIPT)], kill_grace_s=0.5)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    with trio.CancelScope() as host:
        async with arcflow.Runtime(
            executor, dsn, run_id=run_id, concurrency=100, batch_size=1000, data_dir=tmp_path
        ) as rt:
            for i in range(100):
                await rt.submit(
                    Scenario(
                        id=f"s{i:03d}",
                        input={
                            "mode": "sleep",
                            "seconds": 120,
                            "pid_file": str(pid_dir / f"{i}.pid"),
                        },
                    )
                )
            with trio.fail_after(60):
                while len(list(pid_dir.glob("*.pid"))) < 100 or rt.statistics().running < 100:
                    await trio.sleep(0.05)
            host.cancel()
            await trio.sleep_forever()
    assert host.cancelled_caught
    pids = [int(p.read_text()) for p in pid_dir.glob("*.pid")]
    assert len(pids) == 100
    assert [p for p in pids if _alive(p)] == []
    result = await rows(db_query, run_id)
    assert len(result) == 100
    assert {(status, final) for _s, _a, status, final in result} == {("cancelled", False)}


async def nap(scenario: Scenario) -> None:
    """Sleeps input.sleep seconds (I/O-bound work)."""
    await trio.sleep(scenario.input["sleep"])


async def test_thousand_producers_keep_every_slot_busy(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """1,000 producers run 1,000 sleeping scenarios at once: all running together, all recorded."""
    peak = 0

    def watch(_outcome: arcflow.Outcome) -> None:
        nonlocal peak
        peak = max(peak, rt.statistics().running)

    rt = arcflow.Runtime(
        arcflow.PythonExecutor(nap),
        dsn,
        run_id=run_id,
        concurrency=1000,
        batch_size=500,
        flush_interval=1,
        data_dir=tmp_path,
        on_outcome=watch,
    )
    async with rt:
        for i in range(2000):
            await rt.submit(Scenario(id=f"s{i:04d}", input={"sleep": 0.5}))
    assert peak >= 990  # no waiting for a group: a finished slot is refilled at once
    result = await db_query("SELECT count(*) AS c FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert result[0]["c"] == 2000


async def test_host_cancel_records_every_accepted_scenario(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A cancelled trio host: every accepted scenario has a row, running and queued ones cancelled."""
    accepted: list[str] = []
    with trio.CancelScope() as host:
        async with arcflow.Runtime(
            arcflow.PythonExecutor(nap),
            dsn,
            run_id=run_id,
            concurrency=4,
            work_buffer=20,
            data_dir=tmp_path,
        ) as rt:

            async def submitter(k: int) -> None:
                for i in range(100):
                    sid = f"t{k}-{i:03d}"
                    await rt.submit(Scenario(id=sid, input={"sleep": 30 if i else 0.01}))
                    accepted.append(sid)

            async with trio.open_nursery() as nursery:
                for k in range(5):
                    nursery.start_soon(submitter, k)
                with trio.fail_after(30):
                    while rt.statistics().work_queue < 20 or rt.statistics().running < 4:
                        await trio.sleep(0.01)
                host.cancel()
    assert host.cancelled_caught
    result = await db_query(
        "SELECT scenario_id, status, final FROM arcflow.outcomes WHERE run_id = $1", run_id
    )
    by_id = {r["scenario_id"]: (r["status"], r["final"]) for r in result}
    assert sorted(by_id) == sorted(accepted)
    statuses = {status for status, _final in by_id.values()}
    assert statuses <= {"passed", "cancelled"}
    assert all(not final for status, final in by_id.values() if status == "cancelled")
    # The 30 s scenarios (all but each submitter's first) were running or queued: all cancelled.
    # A 10 ms one may pass, even if it was still running when the host cancelled.
    slow = [sid for sid in accepted if not sid.endswith("-000")]
    assert len(slow) >= 20
    assert all(by_id[sid] == ("cancelled", False) for sid in slow)


# -- producers on plain channels, under a mock clock ----------------------------------------------


class Scripted(Executor):
    """Runs ``script[scenario.id][attempt - 1]``: a callable awaited in the attempt."""

    kind = "scripted"

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.calls: list[tuple[str, int]] = []

    async def run(self, scenario: Scenario, context: ExecutionContext) -> ExecutionResult:
        self.calls.append((scenario.id, context.attempt))
        step = self.script[scenario.id][context.attempt - 1]
        result: ExecutionResult = await step()
        return result


def sleeps(seconds: float, status: Status = Status.PASSED) -> Any:
    async def step() -> ExecutionResult:
        await trio.sleep(seconds)
        return ExecutionResult(status=status)

    return step


def raises(exc: Exception) -> Any:
    async def step() -> ExecutionResult:
        await trio.lowlevel.checkpoint()
        raise exc

    return step


def swallows_cancel(seconds: float) -> Any:
    """A badly behaved executor: catches the timeout's Cancelled and returns anyway."""

    async def step() -> ExecutionResult:
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            return ExecutionResult(status=Status.FAILED, error_message="swallowed")
        return ExecutionResult(status=Status.PASSED)

    return step


async def run_producers(
    executor: Executor,
    ids: list[str],
    *,
    concurrency: int = 1,
    outcome_buffer: int = 100,
    first_attempts: dict[tuple[str, int], int] | None = None,
    during: Any = None,
    **config: Any,
) -> tuple[list[Outcome], ProducerStats]:
    """Run ``ids`` through ``concurrency`` producers on plain channels; their outcomes and stats."""
    cfg = RuntimeConfig(**config)
    control = ShutdownControl()
    stats = ProducerStats()
    pool = ProducerPool()
    work_send, work_recv = trio.open_memory_channel[Scenario](len(ids) + 1)
    out_send, out_recv = trio.open_memory_channel[Outcome](outcome_buffer)
    for sid in ids:
        work_send.send_nowait(Scenario(sid))
    work_send.close()
    got: list[Outcome] = []

    async def producer(i: int, work: Any, outcomes: Any) -> None:
        p = Producer(
            f"p{i}",
            executor,
            run_id="r",
            config=cfg,
            control=control,
            stats=stats,
            pool=pool,
            first_attempts=first_attempts,
        )
        with work, outcomes:
            await p.run(work, outcomes, ProducerState())

    async with trio.open_nursery() as nursery:
        with work_recv, out_send:
            for i in range(concurrency):
                nursery.start_soon(producer, i, work_recv.clone(), out_send.clone())
        if during is not None:
            await during(control, out_recv, got)
        async for o in out_recv:
            got.append(o)
    assert stats.running == 0
    return got, stats


def summary(outcomes: list[Outcome]) -> list[tuple[str, int, str, bool]]:
    return [(o.scenario_id, o.attempt, o.status.value, o.final) for o in outcomes]


async def test_timeout_then_retry_then_pass(autojump_clock: trio.testing.MockClock) -> None:
    """A timeout and an error are retried with backoff; the third attempt passes and is final."""
    ex = Scripted({"a": [sleeps(10), raises(ValueError("boom")), sleeps(1)]})
    t0 = trio.current_time()
    got, counters = await run_producers(ex, ["a"], timeout=5, attempts=3, attempt_backoff=2)
    assert summary(got) == [
        ("a", 1, "timeout", False),
        ("a", 2, "error", False),
        ("a", 3, "passed", True),
    ]
    assert got[0].error_type == "Timeout" and got[0].error_message == "did not finish within 5s"
    assert got[1].error_type == "ValueError" and got[1].executor == {"kind": "scripted"}
    # 5 s timeout, 2 s backoff, error, 4 s backoff, 1 s run.
    assert trio.current_time() - t0 == pytest.approx(12, abs=0.01)
    assert counters.completed == 1 and counters.by_status == {"timeout": 1, "error": 1, "passed": 1}


async def test_scenario_timeout_wins_and_deadline_does_not_leak(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A timeout applies to the executor only; the next scenario gets a fresh deadline."""
    ex = Scripted({"a": [sleeps(3)], "b": [sleeps(3)], "c": [sleeps(1)]})
    got, _ = await run_producers(ex, ["a", "b", "c"], timeout=4)
    assert summary(got) == [
        ("a", 1, "passed", True),
        ("b", 1, "passed", True),
        ("c", 1, "passed", True),
    ]


async def test_swallowed_timeout_does_not_reach_the_next_scenario(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An executor that swallows its timeout still leaves the next scenarios a fresh deadline."""
    ex = Scripted({"a": [swallows_cancel(10)], "b": [sleeps(1)], "c": [sleeps(1)]})
    got, _ = await run_producers(ex, ["a", "b", "c"], timeout=2)
    assert summary(got) == [
        ("a", 1, "failed", True),
        ("b", 1, "passed", True),
        ("c", 1, "passed", True),
    ]
    assert got[0].error_message == "swallowed"


async def test_cancel_running_records_cancelled_and_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """cancel_running records running attempts cancelled (not final) and starts nothing new."""
    ex = Scripted({sid: [sleeps(100)] for sid in "abcdef"})

    async def during(control: ShutdownControl, *_: Any) -> None:
        await trio.sleep(5)
        control.cancel_running()

    got, counters = await run_producers(
        ex, list("abcdef"), concurrency=3, attempts=3, during=during
    )
    assert sorted(summary(got)) == [(s, 1, "cancelled", False) for s in "abc"]
    assert all(o.error_type == "Cancelled" for o in got)
    assert counters.completed == 3
    assert sorted(ex.calls) == [("a", 1), ("b", 1), ("c", 1)]


async def test_cancel_during_backoff_ends_the_scenario(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cancel during the backoff before a retry ends the scenario with its last outcome."""
    ex = Scripted({"a": [raises(ConnectionError("x")), sleeps(1)]})

    async def during(control: ShutdownControl, *_: Any) -> None:
        await trio.sleep(0.5)  # the first attempt failed; the producer sleeps 10 s before the next
        control.cancel_running()

    got, counters = await run_producers(ex, ["a"], attempts=2, attempt_backoff=10, during=during)
    assert summary(got) == [("a", 1, "error", False)]
    assert counters.completed == 1 and ex.calls == [("a", 1)]


async def test_cancel_while_blocked_on_a_full_channel_keeps_the_outcome(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An outcome already produced is handed over unchanged, even if cancel arrives meanwhile."""
    ex = Scripted({"a": [sleeps(1)], "b": [sleeps(1)], "c": [sleeps(1)]})

    async def during(control: ShutdownControl, out: Any, got: list[Outcome]) -> None:
        await trio.sleep(10)  # a fills the channel (size 1); b is done and blocked sending
        control.cancel_running()
        await trio.sleep(1)

    got, counters = await run_producers(ex, ["a", "b", "c"], outcome_buffer=1, during=during)
    assert summary(got) == [("a", 1, "passed", True), ("b", 1, "passed", True)]
    assert counters.completed == 2


async def test_stop_takes_no_new_scenario_but_finishes_running_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stop lets running attempts finish, starts no new attempt and takes no new scenario."""
    ex = Scripted({sid: [sleeps(3, Status.ERROR), sleeps(1)] for sid in "abcd"})

    async def during(control: ShutdownControl, *_: Any) -> None:
        await trio.sleep(1)
        control.stop()

    got, _ = await run_producers(ex, list("abcd"), concurrency=2, attempts=2, during=during)
    # Running scenarios finish; a stopping runtime starts no new attempt (the error is final).
    assert sorted(summary(got)) == [("a", 1, "error", True), ("b", 1, "error", True)]


async def test_resumed_attempt_numbers_and_backoff(autojump_clock: trio.testing.MockClock) -> None:
    """A resumed scenario continues at its next attempt number, with the backoff of that attempt."""
    ex = Scripted({"a": [None, None, raises(ConnectionError("x")), sleeps(0)]})
    t0 = trio.current_time()
    got, _ = await run_producers(
        ex, ["a"], first_attempts={("a", 1): 3}, attempts=2, attempt_backoff=3
    )
    assert summary(got) == [("a", 3, "error", False), ("a", 4, "passed", True)]
    assert trio.current_time() - t0 == pytest.approx(3, abs=0.01)


async def test_many_fast_scenarios_all_recorded_once() -> None:
    """5,000 instant scenarios through 7 producers each give exactly one final passed outcome."""

    async def noop(_s: Scenario) -> None:
        return None

    ids = [f"s{i}" for i in range(5000)]
    got, counters = await run_producers(PythonExecutor(noop), ids, concurrency=7, outcome_buffer=50)
    assert sorted(o.scenario_id for o in got) == sorted(ids)
    assert {o.status for o in got} == {Status.PASSED} and all(o.final for o in got)
    assert counters.completed == 5000
    assert got[0].executor == {
        "kind": "python",
        "function": "test_many_fast_scenarios_all_recorded_once.<locals>.noop",
    }
    assert got[0].scenario_hash == Scenario("x").content_hash


async def test_python_executor_results() -> None:
    """The python: executor maps None, a mapping and an exception to passed, the mapping, error."""

    async def verdict(s: Scenario) -> Any:
        if s.id == "bad":
            raise KeyError("k")
        return None if s.id == "none" else {"status": "failed", "score": 1}

    ex = PythonExecutor(verdict, name="m:verdict")
    ctx = ExecutionContext(run_id="r", attempt=1, worker="w")
    passed = await ex.run(Scenario("none"), ctx)
    assert passed == ExecutionResult(
        status=Status.PASSED, executor={"kind": "python", "function": "m:verdict"}
    )
    failed = await ex.run(Scenario("x"), ctx)
    assert (failed.status, failed.score) == (Status.FAILED, 1.0)
    error = await ex.run(Scenario("bad"), ctx)
    assert (error.status, error.error_type) == (Status.ERROR, "KeyError")


# -- the producer pool ----------------------------------------------------------------------------


async def test_slow_scenarios_fill_every_slot_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Resting producers are woken for queued slow scenarios: 3 waves of 50, not more."""
    ex = Scripted({f"s{i}": [sleeps(10)] for i in range(150)})
    t0 = trio.current_time()
    with trio.fail_after(100):
        got, _ = await run_producers(ex, [f"s{i}" for i in range(150)], concurrency=50)
    assert len(got) == 150
    assert trio.current_time() - t0 == pytest.approx(30, abs=0.01)


async def test_fast_scenarios_do_not_wake_every_producer() -> None:
    """Fast scenarios are run by a few producers while the others rest."""

    async def noop(_s: Scenario) -> None:
        return None

    control = ShutdownControl()
    stats = ProducerStats()
    pool = ProducerPool()
    cfg = RuntimeConfig()
    work_send, work_recv = trio.open_memory_channel[Scenario](200)
    out_send, out_recv = trio.open_memory_channel[Outcome](10_000)
    ex = PythonExecutor(noop)
    async with trio.open_nursery() as nursery:
        with work_recv, out_send:
            for i in range(100):
                p = Producer(
                    f"p{i}", ex, run_id="r", config=cfg, control=control, stats=stats, pool=pool
                )
                nursery.start_soon(p.run, work_recv.clone(), out_send.clone(), ProducerState())
        await trio.testing.wait_all_tasks_blocked()  # every producer has found the channel empty
        async with work_send:
            for i in range(3000):
                await work_send.send(Scenario(f"s{i}"))
    got = [out_recv.receive_nowait() for _ in range(3000)]
    assert stats.completed == 3000 and len({o.scenario_id for o in got}) == 3000
    assert len({o.worker for o in got}) < 20  # a few producers keep up; the rest rest


async def test_mixed_slow_and_fast(autojump_clock: trio.testing.MockClock) -> None:
    """Slow scenarios do not hold up fast ones: 20 of 5 s and 200 instant ones take 5 s with 25 slots."""
    script: dict[str, list[Any]] = {f"f{i}": [sleeps(0)] for i in range(200)}
    script.update({f"s{i}": [sleeps(5)] for i in range(20)})
    ids = [f"s{i}" for i in range(20)] + [f"f{i}" for i in range(200)]
    t0 = trio.current_time()
    got, _ = await run_producers(Scripted(script), ids, concurrency=25)
    assert len(got) == 220
    assert trio.current_time() - t0 == pytest.approx(5, abs=0.01)


@pytest.mark.parametrize("how", ["close", "stop_then_close", "cancel_running"])
async def test_resting_producers_leave_at_the_end(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Nobody keeps resting after the input closes, a stop, or a cancel."""
    control = ShutdownControl()
    stats = ProducerStats()
    pool = ProducerPool()
    cfg = RuntimeConfig()
    work_send, work_recv = trio.open_memory_channel[Scenario](10)
    out_send, out_recv = trio.open_memory_channel[Outcome](100)
    ex = Scripted({"a": [sleeps(1)], "b": [sleeps(1)]})
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            with work_recv, out_send:
                for i in range(20):
                    p = Producer(
                        f"p{i}", ex, run_id="r", config=cfg, control=control, stats=stats, pool=pool
                    )
                    nursery.start_soon(p.run, work_recv.clone(), out_send.clone(), ProducerState())
            await work_send.send(Scenario("a"))
            await work_send.send(Scenario("b"))
            await trio.sleep(5)
            assert pool.parked >= 18 or pool.parked + pool.receivers >= 19
            if how == "close":
                await work_send.aclose()
            elif how == "stop_then_close":
                control.stop()
                await trio.sleep(1)
                await work_send.aclose()
            else:
                control.cancel_running()
    assert pool.parked == 0 and pool.receivers == 0 and pool.attempting == 0
    got = [out_recv.receive_nowait(), out_recv.receive_nowait()]
    assert sorted(o.scenario_id for o in got) == ["a", "b"]
    work_send.close()


class StepCounter(trio.abc.Instrument):
    """Counts the steps of tasks whose name ends with ``suffix``."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.steps += 1


async def test_an_attempt_that_waited_costs_no_extra_step() -> None:
    """After an attempt that waited (the common case) the producer goes on without yielding again."""
    counter = StepCounter("producer")
    trio.lowlevel.add_instrument(counter)
    try:
        got, _ = await run_producers(Scripted({f"s{i}": [sleeps(0.002)] for i in range(30)}),
                                     [f"s{i}" for i in range(30)])  # fmt: skip
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert len(got) == 30
    # One step per attempt (waking from its sleep) and a few to start and end; yielding after
    # each attempt as well made it 2 per attempt.
    assert counter.steps <= 30 + 5


async def test_scenarios_that_never_wait_still_let_other_tasks_run() -> None:
    """A producer whose attempts never yield still gives the thread back every _SLICE_S."""
    ticks = 0
    seen_by_attempts: list[int] = []

    def busy(seconds: float) -> Any:
        async def step() -> ExecutionResult:
            seen_by_attempts.append(ticks)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:  # CPU work, no await
                pass
            return ExecutionResult(status=Status.PASSED)

        return step

    async def ticker(stop: trio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await trio.lowlevel.checkpoint()

    ids = [f"s{i}" for i in range(50)]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker, stop)
        got, _ = await run_producers(Scripted({sid: [busy(0.001)] for sid in ids}), ids)
        stop.set()
    assert len(got) == 50
    # The ticker ran between the attempts (about once per 1 ms attempt), not only after all
    # 50 ms of work.
    assert seen_by_attempts[-1] - seen_by_attempts[0] >= 10
