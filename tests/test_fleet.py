"""Shared runs: workers claim scenarios with leases; each scenario gets exactly one final outcome."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio
from conftest import query
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy import FaultyProxy

import arcflow
from arcflow.errors import RunInUse
from arcflow.fleet import (
    _CLAIM,
    FleetStats,
    load_claims,
    release_claims,
    run_claim_source,
    run_heartbeat,
)
from arcflow.models import Batch, FlushReason, Scenario, Status
from arcflow.scenarios import validate_file
from arcflow.store import Store
from arcflow.store.schema import CLAIM_BLOCK
from arcflow.testing import make_outcome

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
#: Scenarios of the three-worker kill-and-freeze run (ARCFLOW_FLEET_STRESS=20000 for the
#: issue's full size; 1,000 in the suite).
STRESS_SCENARIOS = int(os.environ.get("ARCFLOW_FLEET_STRESS", "1000"))


def suite_file(path: Path, n: int, **input: Any) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"s{i:04d}", "input": input}) + "\n" for i in range(n))
    )
    return path


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    async with trio_asyncio.open_loop():
        s = Store(dsn)
        await s.migrate()
        try:
            yield s
        finally:
            await s.aclose()


async def finals(dsn: str, run_id: str) -> dict[str, int]:
    rows = await query(
        dsn,
        "SELECT scenario_id, count(*) FILTER (WHERE final) AS n FROM arcflow.outcomes "
        "WHERE run_id = $1 GROUP BY 1",
        run_id,
    )
    return {r["scenario_id"]: r["n"] for r in rows}


async def claim_states(dsn: str, run_id: str) -> dict[str, int]:
    rows = await query(
        dsn, "SELECT state, count(*) AS n FROM arcflow.claims WHERE run_id = $1 GROUP BY 1", run_id
    )
    return {r["state"]: r["n"] for r in rows}


async def join_worker(store: Store, run_id: str, worker: str) -> None:
    await store.fetchval(
        "INSERT INTO arcflow.workers (run_id, worker_id, host, pid) VALUES ($1, $2, 'h', 1) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        run_id,
        worker,
    )


async def claim(store: Store, run_id: str, worker: str, n: int, lease: float = 60) -> list[Any]:
    return list(await store.fetch(_CLAIM, run_id, n, worker, lease))


async def write(store: Store, run_id: str, worker: str, *outcomes: Any) -> int:
    import uuid

    batch = Batch(uuid.uuid4().hex, tuple(outcomes), FlushReason.SIZE)
    return await store.write_batch(batch, run_id=run_id, worker_id=worker)


# -- in one process --------------------------------------------------------------------------


async def test_two_workers_share_a_run_and_each_scenario_is_final_once(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """Two runtimes on one shared run: every scenario claimed once, one final outcome each, run finished."""
    path = suite_file(tmp_path / "s.jsonl", 300, sleep=0.005)
    executor = arcflow.PythonExecutor(_slow)
    common: dict[str, Any] = {"run_id": run_id, "shared": True, "batch_size": 20}
    a = arcflow.Runtime(executor, dsn, data_dir=tmp_path / "a", concurrency=8, **common)
    b = arcflow.Runtime(executor, dsn, data_dir=tmp_path / "b", concurrency=8, **common)
    async with a:
        assert await a.load_claims(path, validate_file(path)) == 300
        assert await a.load_claims(path, validate_file(path)) == 0  # loading again adds nothing
        async with b, trio.open_nursery() as nursery:
            nursery.start_soon(a.run_claims)
            nursery.start_soon(b.run_claims)
    assert a.fleet.claimed > 0 and b.fleet.claimed > 0
    assert a.fleet.claimed + b.fleet.claimed == 300
    assert await finals(dsn, run_id) == {f"s{i:04d}": 1 for i in range(300)}
    assert await claim_states(dsn, run_id) == {"done": 300}
    run = await query(dsn, "SELECT status FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "finished"
    workers = await query(
        dsn, "SELECT done, stopped_at FROM arcflow.workers WHERE run_id = $1", run_id
    )
    assert sum(w["done"] for w in workers) == 300 and all(w["stopped_at"] for w in workers)


async def test_report_and_diff_show_each_worker_of_a_shared_run(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """report (text, CSV, JSON, HTML) lists each worker of a shared run; diff says it was shared."""
    from arcflow.report import build_report, format_report, render_html
    from arcflow.report.diff import build_diff, format_diff

    path = suite_file(tmp_path / "s.jsonl", 60, sleep=0.005)
    executor = arcflow.PythonExecutor(_slow)
    common: dict[str, Any] = {"run_id": run_id, "shared": True, "batch_size": 10}
    a = arcflow.Runtime(executor, dsn, data_dir=tmp_path / "a", concurrency=4, **common)
    b = arcflow.Runtime(executor, dsn, data_dir=tmp_path / "b", concurrency=4, **common)
    async with a:
        await a.load_claims(path, validate_file(path))
        async with b, trio.open_nursery() as nursery:
            nursery.start_soon(a.run_claims)
            nursery.start_soon(b.run_claims)
    ids = {a.worker_id, b.worker_id}
    async with trio_asyncio.open_loop():
        store = Store(dsn)
        try:
            report = await build_report(store, run_id)
            diff = await build_diff(store, run_id, run_id)
        finally:
            await store.aclose()
    assert report.fleet is not None
    workers = report.fleet["workers"]
    assert {w["worker_id"] for w in workers} == ids
    assert sum(w["done"] for w in workers) == 60
    assert all(w["state"] == "stopped" for w in workers)
    assert report.fleet["claims"] == {"done": 60}
    text = format_report(report, "table")
    assert "workers (shared run" in text and all(i in text for i in ids)
    csv_text = format_report(report, "csv")
    assert all(f"workers,{i},done," in csv_text for i in ids)
    assert json.loads(format_report(report, "json"))["fleet"]["workers"][0]["host"]
    page = render_html(report)
    assert "<h2>Workers</h2>" in page and all(i in page for i in ids)
    assert "shared by 2 workers" in format_diff(diff, "table")


async def test_a_report_of_a_run_of_one_process_has_no_workers(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """A plain run's report has no fleet section."""
    from arcflow.report import build_report, format_report

    async with arcflow.Runtime(arcflow.PythonExecutor(_slow), dsn, run_id=run_id) as rt:
        await rt.submit(Scenario(id="x", input={}))
    async with trio_asyncio.open_loop():
        store = Store(dsn)
        try:
            report = await build_report(store, run_id)
        finally:
            await store.aclose()
    assert report.fleet is None and "workers (shared run" not in format_report(report, "table")


async def _slow(scenario: Scenario) -> dict[str, Any]:
    await trio.sleep(float(scenario.input.get("sleep", 0)))
    return {"status": "passed", "output": {"id": scenario.id}}


async def test_epochs_are_claims_of_their_own(dsn: str, run_id: str, tmp_path: Path) -> None:
    """--epochs 2 in a shared run: each (scenario, epoch) is a claim and gets one final outcome."""
    path = suite_file(tmp_path / "s.jsonl", 5)
    async with arcflow.Runtime(
        arcflow.PythonExecutor(_slow), dsn, run_id=run_id, shared=True, data_dir=tmp_path, epochs=2
    ) as rt:
        assert await rt.load_claims(path) == 10  # validated here when no suite is given
        await rt.run_claims()
    rows = await query(
        dsn,
        "SELECT scenario_id, epoch FROM arcflow.outcomes WHERE run_id = $1 AND final ORDER BY 1, 2",
        run_id,
    )
    assert [(r["scenario_id"], r["epoch"]) for r in rows] == [
        (f"s{i:04d}", e) for i in range(5) for e in (1, 2)
    ]


async def test_a_stopped_worker_gives_back_what_it_did_not_finish(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """request_stop(): unfinished claims go back to pending; another worker finishes them, once each."""
    path = suite_file(tmp_path / "s.jsonl", 40, sleep=0.05)
    executor = arcflow.PythonExecutor(_slow)
    first = arcflow.Runtime(
        executor, dsn, run_id=run_id, shared=True, data_dir=tmp_path / "a", concurrency=4
    )
    async with first:
        await first.load_claims(path, validate_file(path))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first.run_claims)
            while first.statistics().completed < 8:
                await trio.sleep(0.01)
            first.request_stop()
    states = await claim_states(dsn, run_id)
    assert states.get("claimed", 0) == 0 and states.get("pending", 0) > 0
    second = arcflow.Runtime(executor, dsn, run_id=run_id, shared=True, data_dir=tmp_path / "b")
    async with second:
        await second.run_claims()
    assert await finals(dsn, run_id) == {f"s{i:04d}": 1 for i in range(40)}
    assert await claim_states(dsn, run_id) == {"done": 40}


async def test_exclusive_and_shared_use_of_a_run_refuse_each_other(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """A run driven alone refuses workers, and a shared run with live workers refuses a lone process."""
    async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=tmp_path):
        with pytest.raises(RunInUse, match="one process alone"):
            async with arcflow.Runtime(None, dsn, run_id=run_id, shared=True, data_dir=tmp_path):
                pass
    other = f"{run_id}-shared"
    async with arcflow.Runtime(None, dsn, run_id=other, shared=True, data_dir=tmp_path / "w"):
        with pytest.raises(RunInUse, match="arcflow work"):
            async with arcflow.open_runtime(db=dsn, run_id=other, data_dir=tmp_path / "x"):
                pass


# -- the fence, at the store ---------------------------------------------------------------------


async def test_a_late_final_outcome_is_fenced_off(
    store: Store, dsn: str, run_id: str, tmp_path: Path
) -> None:
    """A worker whose lease ran out and was taken writes a row, never a second final outcome."""
    path = suite_file(tmp_path / "s.jsonl", 1)
    await load_claims(store, run_id, path, validate_file(path), 1)
    [first] = await claim(store, run_id, "A", 1)
    assert first["claim_start"] == 1
    await store.fetchval(
        "UPDATE arcflow.claims SET lease_until = now() - interval '1 second' WHERE run_id = $1 "
        "RETURNING 1",
        run_id,
    )
    [second] = await claim(store, run_id, "B", 1)
    assert second["claim_start"] == 1 + CLAIM_BLOCK  # B's attempts never collide with A's
    assert await write(store, run_id, "A", make_outcome(run_id, "s0000", attempt=1)) == 1
    rows = await query(dsn, "SELECT attempt, final FROM arcflow.outcomes WHERE run_id = $1", run_id)
    assert [(r["attempt"], r["final"]) for r in rows] == [(1, False)]
    assert await claim_states(dsn, run_id) == {"claimed": 1}
    await write(store, run_id, "B", make_outcome(run_id, "s0000", attempt=1 + CLAIM_BLOCK))
    assert await finals(dsn, run_id) == {"s0000": 1}
    assert await claim_states(dsn, run_id) == {"done": 1}


async def test_an_attempt_outside_the_claims_block_is_not_final(
    store: Store, dsn: str, run_id: str, tmp_path: Path
) -> None:
    """The fence is the worker and the claim's block of attempts: an attempt from an old claim is not final."""
    path = suite_file(tmp_path / "s.jsonl", 1)
    await load_claims(store, run_id, path, validate_file(path), 1)
    await claim(store, run_id, "A", 1)
    await release_claims(store, run_id, "A")
    [again] = await claim(store, run_id, "A", 1)
    assert again["claim_start"] == 1 + CLAIM_BLOCK
    await write(store, run_id, "A", make_outcome(run_id, "s0000", attempt=1))
    assert await finals(dsn, run_id) == {"s0000": 0}
    assert await claim_states(dsn, run_id) == {"claimed": 1}


async def test_cancelled_is_never_final_in_a_shared_run(
    store: Store, dsn: str, run_id: str, tmp_path: Path
) -> None:
    """A worker's cancelled outcome (it stopped) is stored non-final and its claim is not done."""
    path = suite_file(tmp_path / "s.jsonl", 1)
    await load_claims(store, run_id, path, validate_file(path), 1)
    await claim(store, run_id, "A", 1)
    await write(store, run_id, "A", make_outcome(run_id, "s0000", status=Status.CANCELLED))
    assert await finals(dsn, run_id) == {"s0000": 0}
    assert await release_claims(store, run_id, "A") == 1
    assert await claim_states(dsn, run_id) == {"pending": 1}


async def test_a_dead_lettered_final_outcome_ends_its_claim(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """A poison outcome in a shared run is dead-lettered and ends its claim, so the run can finish."""
    path = tmp_path / "s.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"s{i}", "input": {"poison": i == 3}}) + "\n" for i in range(6))
    )
    async with arcflow.Runtime(
        arcflow.PythonExecutor(_nul_output), dsn, run_id=run_id, shared=True, data_dir=tmp_path
    ) as rt:
        await rt.load_claims(path, validate_file(path))
        await rt.run_claims()
    assert rt.statistics().dead_lettered == 1
    assert await claim_states(dsn, run_id) == {"done": 6}
    run = await query(dsn, "SELECT status FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "finished"


async def _nul_output(scenario: Scenario) -> dict[str, Any]:
    text = "bad\x00byte" if scenario.input.get("poison") else "fine"
    return {"status": "passed", "output": {"text": text}}


# -- the heartbeat ------------------------------------------------------------------------------


async def test_heartbeat_cancels_a_scenario_whose_claim_was_taken(
    store: Store, dsn: str, run_id: str, tmp_path: Path
) -> None:
    """When another worker holds a claim this one runs, the heartbeat cancels it here, saying why."""
    path = suite_file(tmp_path / "s.jsonl", 2)
    await load_claims(store, run_id, path, validate_file(path), 1)
    await claim(store, run_id, "A", 2)
    running = {("s0000", 1): trio.CancelScope(), ("s0001", 1): trio.CancelScope()}
    cancelled: list[tuple[tuple[str, int], str]] = []
    stats = FleetStats()
    beats = Store(dsn)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_heartbeat(
                    beats,
                    run_id,
                    "A",
                    lease=0.6,
                    running=lambda: running,
                    cancel=lambda key, why: cancelled.append((key, why)),
                    stats=stats,
                    task_status=task_status,
                )
            )
            await store.fetchval(
                "UPDATE arcflow.claims SET worker_id = 'B' WHERE run_id = $1 AND scenario_id = "
                "'s0001' RETURNING 1",
                run_id,
            )
            with trio.fail_after(10):
                while not cancelled:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        await beats.aclose()
    assert [key for key, _ in cancelled] == [("s0001", 1)]
    assert "taken by another worker" in cancelled[0][1]
    assert stats.lost == 1 and stats.by_state == {"claimed": 2} and stats.live_workers == 1
    lease = await query(
        dsn,
        "SELECT lease_until > now() AS live FROM arcflow.claims WHERE run_id = $1 AND "
        "scenario_id = 's0000'",
        run_id,
    )
    assert lease[0]["live"]


async def test_heartbeat_lost_for_a_lease_cancels_everything_and_gives_it_back(
    store: Store, dsn: str, run_id: str, tmp_path: Path
) -> None:
    """No heartbeat for a whole lease: every running scenario is cancelled, and its claims released after."""
    path = suite_file(tmp_path / "s.jsonl", 2)
    await load_claims(store, run_id, path, validate_file(path), 1)
    await claim(store, run_id, "A", 2)
    running = {("s0000", 1): trio.CancelScope(), ("s0001", 1): trio.CancelScope()}
    cancelled: list[tuple[str, int]] = []
    server_port = int(dsn.rsplit(":", 1)[1].split("/")[0])
    proxy = FaultyProxy(server_port, drop_rate=1.0, stall_rate=0.0, enabled=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        beats = Store(dsn.replace(f":{server_port}/", f":{proxy.port}/"), connect_timeout=1)
        try:
            await nursery.start(
                lambda task_status: run_heartbeat(
                    beats,
                    run_id,
                    "A",
                    lease=0.6,
                    running=lambda: running,
                    cancel=lambda key, why: (cancelled.append(key), running.pop(key)),
                    stats=FleetStats(),
                    task_status=task_status,
                )
            )
            proxy.enabled = True
            with trio.fail_after(20):
                while len(cancelled) < 2:
                    await trio.sleep(0.05)
            proxy.enabled = False
            with trio.fail_after(20):
                while (await claim_states(dsn, run_id)).get("pending") != 2:
                    await trio.sleep(0.05)
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await beats.aclose()
    assert sorted(cancelled) == [("s0000", 1), ("s0001", 1)]


async def test_claim_source_claims_no_more_than_the_work_channel_holds(
    store: Store, dsn: str, run_id: str, tmp_path: Path
) -> None:
    """The source claims as the work channel has room: a slow worker does not hoard the run."""
    path = suite_file(tmp_path / "s.jsonl", 50)
    await load_claims(store, run_id, path, validate_file(path), 1)
    await join_worker(store, run_id, "A")
    send, receive = trio.open_memory_channel[Scenario](4)
    first: dict[tuple[str, int], int] = {}
    stats = FleetStats()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_claim_source(
                store, run_id, "A", send, lease=60, first_attempts=first, stats=stats, poll=0.05
            )
        )
        with trio.fail_after(10):
            while send.statistics().current_buffer_used < 4:
                await trio.sleep(0.01)
        await trio.sleep(0.2)
        # Four in the channel and one waiting to be sent, claimed in chunks of what fitted.
        assert stats.claimed <= 5 + 4
        assert (await claim_states(dsn, run_id))["claimed"] == stats.claimed
        nursery.cancel_scope.cancel()
    assert receive.receive_nowait().id == "s0000"
    assert first[("s0000", 1)] == 1


# -- a model of the claims table ------------------------------------------------------------------

WORKERS = ("A", "B", "C")
OPS = st.lists(
    st.tuples(
        st.sampled_from(["claim", "expire", "finish", "release", "cancel"]),
        st.sampled_from(WORKERS),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
async def test_claims_match_a_model_and_no_scenario_is_final_twice(
    store: Store, dsn: str, tmp_path: Path, ops: list[tuple[str, str, int]]
) -> None:
    """Any sequence of claims, expiries, finishes, releases and cancels: at most one final per scenario, as a model says."""
    import uuid

    run_id = f"model-{uuid.uuid4().hex[:10]}"
    path = suite_file(tmp_path / "s.jsonl", 3)
    await load_claims(store, run_id, path, validate_file(path), 1)
    # The model: per scenario, who holds it and from which attempt, and whether it is done.
    holder: dict[str, tuple[str, int] | None] = {f"s{i:04d}": None for i in range(3)}
    expired: set[str] = set()
    done: set[str] = set()
    tries: dict[str, int] = {}
    claims: dict[str, int] = dict.fromkeys(holder, 0)
    for op, worker, n in ops:
        if op == "claim":
            got = await claim(store, run_id, worker, n + 1)
            want = [
                s for s in sorted(holder) if s not in done and (holder[s] is None or s in expired)
            ][: n + 1]
            assert sorted(r["scenario_id"] for r in got) == want
            for row in got:
                s = row["scenario_id"]
                claims[s] += 1
                start = 1 + CLAIM_BLOCK * (claims[s] - 1)
                assert row["claim_start"] == start
                holder[s] = (worker, start)
                expired.discard(s)
        elif op == "expire":
            await store.fetchval(
                "UPDATE arcflow.claims SET lease_until = now() - interval '1 second' "
                "WHERE run_id = $1 AND worker_id = $2 AND state = 'claimed' RETURNING 1",
                run_id,
                worker,
            )
            expired |= {s for s, h in holder.items() if h and h[0] == worker and s not in done}
        elif op in ("finish", "cancel"):
            # The worker writes what it believes it holds (it may have lost it since).
            mine = sorted(s for s, h in holder.items() if h and h[0] == worker)
            if not mine:
                continue
            s = mine[n % len(mine)]
            start = holder[s][1]  # type: ignore[index]
            tries[s] = attempt = max(tries.get(s, 0) + 1, start)
            status = Status.PASSED if op == "finish" else Status.CANCELLED
            await write(
                store, run_id, worker, make_outcome(run_id, s, attempt=attempt, status=status)
            )
            if op == "finish" and s not in done:
                done.add(s)
        elif op == "release":
            await release_claims(store, run_id, worker)
            for s, h in holder.items():
                if h and h[0] == worker and s not in done:
                    holder[s] = None
                    expired.discard(s)
        counted = await finals(dsn, run_id)
        assert all(n <= 1 for n in counted.values()), counted
        assert {s for s, n in counted.items() if n == 1} == done
        states = await query(
            dsn, "SELECT scenario_id, state FROM arcflow.claims WHERE run_id = $1", run_id
        )
        assert {r["scenario_id"] for r in states if r["state"] == "done"} == done


# -- whole processes --------------------------------------------------------------------------


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "arcflow", *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_workers_killed_and_frozen_past_their_lease_lose_nothing_and_duplicate_nothing(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """Three CLI workers; one SIGKILLed, one SIGSTOPped past its lease: every scenario final exactly once."""
    n = STRESS_SCENARIOS
    path = suite_file(tmp_path / "s.jsonl", n, sleep=0.05)
    common = ["--db", dsn, "--quiet"]
    first = _start(
        "run", str(path), "--shared", "--run-id", run_id, "--executor", "python:faulty_exec:slow",
        "--concurrency", "8", "--lease", "1.5", "--data-dir", str(tmp_path / "w0"), *common,
    )  # fmt: skip
    try:
        with trio.fail_after(60):
            while not (await _claimed(dsn, run_id)):
                await trio.sleep(0.05)
        killed = _start("work", run_id, "--data-dir", str(tmp_path / "w1"), *common)
        frozen = _start("work", run_id, "--data-dir", str(tmp_path / "w2"), *common)
        with trio.fail_after(60):
            while await _workers_with_claims(dsn, run_id) < 3:
                await trio.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        frozen.send_signal(signal.SIGSTOP)
        await trio.sleep(4)  # well past the lease: its claims are taken
        frozen.send_signal(signal.SIGCONT)
        outs = []
        for proc in (first, frozen):
            _out, err = await trio.to_thread.run_sync(lambda p=proc: p.communicate(timeout=120))
            outs.append((proc.returncode, err))
        killed.wait(timeout=10)
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    assert all(code == 0 for code, _ in outs), outs
    assert await finals(dsn, run_id) == {f"s{i:04d}": 1 for i in range(n)}
    assert await claim_states(dsn, run_id) == {"done": n}
    dupes = await query(
        dsn,
        "SELECT scenario_id, epoch, attempt, count(*) FROM arcflow.outcomes WHERE run_id = $1 "
        "GROUP BY 1, 2, 3 HAVING count(*) > 1",
        run_id,
    )
    assert dupes == []
    run = await query(dsn, "SELECT status FROM arcflow.runs WHERE run_id = $1", run_id)
    assert run[0]["status"] == "finished"


async def _claimed(dsn: str, run_id: str) -> int:
    try:
        rows = await query(
            dsn,
            "SELECT count(*) AS n FROM arcflow.claims WHERE run_id = $1 AND state = 'claimed'",
            run_id,
        )
    except Exception:  # the first worker has not created the schema yet
        return 0
    return int(rows[0]["n"])


async def _workers_with_claims(dsn: str, run_id: str) -> int:
    rows = await query(
        dsn,
        "SELECT count(DISTINCT worker_id) AS n FROM arcflow.claims WHERE run_id = $1 "
        "AND state = 'claimed'",
        run_id,
    )
    return int(rows[0]["n"])


async def test_work_on_a_run_that_is_not_shared_is_refused(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """`arcflow work RUN` on an unknown or unshared run exits 2 saying what to do instead."""
    unknown = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "arcflow", "work", "nope-" + run_id, "--db", dsn],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert unknown.returncode == 2 and "no run" in unknown.stderr
    async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=tmp_path):
        pass
    alone = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "arcflow", "work", run_id, "--db", dsn],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert alone.returncode == 2 and "--shared" in alone.stderr


async def test_heartbeat_tells_the_executor_its_share_as_workers_come_and_go(
    store: Store, dsn: str, run_id: str
) -> None:
    """on_workers hears the live workers before the first scenario and whenever the count changes."""
    await join_worker(store, run_id, "B")
    heard: list[int] = []
    beats = Store(dsn)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_heartbeat(
                    beats,
                    run_id,
                    "A",
                    lease=0.6,
                    running=dict,
                    cancel=lambda key, why: None,
                    stats=FleetStats(),
                    on_workers=heard.append,
                    task_status=task_status,
                )
            )
            assert heard == [2]  # A and B, before A runs anything
            await store.fetchval(
                "UPDATE arcflow.workers SET stopped_at = now() WHERE run_id = $1 AND "
                "worker_id = 'B' RETURNING 1",
                run_id,
            )
            with trio.fail_after(10):
                while heard[-1] != 1:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        await beats.aclose()
    assert heard == [2, 1]


def test_a_workers_fleet_numbers_reach_the_display_and_the_metrics() -> None:
    """A shared run's fleet snapshot is a 'fleet' line in the live display and arcflow_fleet_* metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    from strategies import mid_run_statistics

    from arcflow.metrics import MetricsExporter
    from arcflow.progress import ProgressModel

    fleet = {
        "worker_id": "w1",
        "claimed": 120,
        "lost": 2,
        "by_state": {"done": 90, "claimed": 30, "pending": 80},
        "live_workers": 3,
    }
    snap = mid_run_statistics(fleet=fleet)
    fields = {f.label: f.text for f in ProgressModel(total=None, clock=lambda: 1.0).fields(snap)}
    assert fields["fleet"] == ("run 90/200 done · 3 workers live · this worker claimed 120, lost 2")
    assert "fleet" not in {
        f.label for f in ProgressModel(total=None, clock=lambda: 1.0).fields(mid_run_statistics())
    }
    with MetricsExporter(port=0) as exporter:
        exporter.update(snap)
        text = urllib.request.urlopen(exporter.url, timeout=10).read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("arcflow_fleet_claims", (("state", "pending"),))] == 80
    assert samples[("arcflow_fleet_live_workers", ())] == 3
    assert samples[("arcflow_fleet_lost_claims_total", ())] == 2
