"""The per-record hot path keeps its meaning: hashes, row encoding, producer semantics.

No database here: producers run against plain trio channels under a mock
clock, and the encodings are compared with straightforward reference
implementations (what the code did before it was made fast).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import json_values, scenarios

from arcflow.config import RuntimeConfig
from arcflow.executors.base import ExecutionContext, Executor
from arcflow.executors.python import PythonExecutor
from arcflow.models import ExecutionResult, Outcome, Scenario, Status, canonical_json
from arcflow.producers import Producer, ProducerState, ShutdownControl
from arcflow.stats import Counters
from arcflow.store.postgres import encode_outcome

# -- encodings ------------------------------------------------------------------------------------


def reference_hash(s: Scenario) -> str:
    body = json.dumps(
        {"input": s.input, "tags": list(s.tags), "metadata": s.metadata, "timeout_s": s.timeout_s},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(body.encode()).hexdigest()


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.none() | st.floats(min_value=0.001, max_value=1e6))
def test_content_hash_is_the_canonical_sha256(scenario: Scenario, timeout: float | None) -> None:
    s = Scenario(scenario.id, scenario.input, scenario.tags, scenario.metadata, timeout)
    assert s.content_hash == reference_hash(s)
    bare = Scenario(scenario.id, scenario.input)
    assert bare.content_hash == reference_hash(bare)


@settings(max_examples=300, deadline=None)
@given(json_values | st.floats(allow_nan=True))
def test_canonical_json_is_json_dumps(value: Any) -> None:
    assert canonical_json(value) == json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def test_canonical_json_raises_what_json_dumps_raises() -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        canonical_json(circular)
    with pytest.raises(TypeError, match="not JSON serializable"):
        canonical_json({"x": object()})
    with pytest.raises(TypeError):
        Scenario("s", input={"x": {1, 2}}).content_hash  # noqa: B018


def reference_row(o: Outcome, batch_id: str) -> tuple[Any, ...]:
    dumps = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731
    return (
        o.run_id, o.scenario_id, o.attempt, o.status.value, o.final, o.score,
        None if o.output is None else dumps(o.output), o.error_type, o.error_message,
        o.started_at, o.finished_at, o.duration_ms, dumps(dict(o.executor)), o.worker,
        o.scenario_hash, batch_id, list(o.tags),
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    json_values,
    st.sampled_from(list(Status)),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    st.lists(st.text(max_size=5), max_size=3),
    st.integers(0, 10**7),
)
def test_encode_outcome_matches_reference(
    output: Any, status: Status, executor: dict[str, Any], tags: list[str], micros: int
) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    o = Outcome(
        "r", "s", 2, status, t0, t0 + timedelta(microseconds=micros), score=0.5, output=output,
        executor=executor, worker="w", final=False, scenario_hash="h", tags=tags,
    )  # fmt: skip
    assert encode_outcome(o, "b1") == reference_row(o, "b1")
    assert encode_outcome(o, "b1", tags=False) == reference_row(o, "b1")[:-1]


# -- producers ------------------------------------------------------------------------------------


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
    control: ShutdownControl | None = None,
    during: Any = None,
    **config: Any,
) -> tuple[list[Outcome], Counters]:
    cfg = RuntimeConfig(**config)
    control = control or ShutdownControl()
    counters = Counters()
    work_send, work_recv = trio.open_memory_channel[Scenario](len(ids) + 1)
    out_send, out_recv = trio.open_memory_channel[Outcome](outcome_buffer)
    for sid in ids:
        work_send.send_nowait(Scenario(sid))
    work_send.close()
    got: list[Outcome] = []

    async def producer(i: int, work: Any, outcomes: Any) -> None:
        p = Producer(f"p{i}", executor, run_id="r", config=cfg, control=control, counters=counters)
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
    assert counters.running == 0
    return got, counters


def summary(outcomes: list[Outcome]) -> list[tuple[str, int, str, bool]]:
    return [(o.scenario_id, o.attempt, o.status.value, o.final) for o in outcomes]


async def test_timeout_then_retry_then_pass(autojump_clock: trio.testing.MockClock) -> None:
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
    ex = Scripted({sid: [sleeps(3, Status.ERROR), sleeps(1)] for sid in "abcd"})

    async def during(control: ShutdownControl, *_: Any) -> None:
        await trio.sleep(1)
        control.stop()

    got, _ = await run_producers(ex, list("abcd"), concurrency=2, attempts=2, during=during)
    # Running scenarios finish; a stopping runtime starts no new attempt (the error is final).
    assert sorted(summary(got)) == [("a", 1, "error", True), ("b", 1, "error", True)]


async def test_resumed_attempt_numbers_and_backoff(autojump_clock: trio.testing.MockClock) -> None:
    ex = Scripted({"a": [None, None, raises(ConnectionError("x")), sleeps(0)]})
    control = ShutdownControl(first_attempt={"a": 3})
    t0 = trio.current_time()
    got, _ = await run_producers(ex, ["a"], control=control, attempts=2, attempt_backoff=3)
    assert summary(got) == [("a", 3, "error", False), ("a", 4, "passed", True)]
    assert trio.current_time() - t0 == pytest.approx(3, abs=0.01)


async def test_many_fast_scenarios_all_recorded_once() -> None:
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


# -- scenario files ---------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=400), st.integers(1, 64))
def test_key_set_finds_repeats_in_memory_and_spilled(keys: list[int], memory_keys: int) -> None:
    from arcflow.scenarios import _KeySet

    expected = {k for k in keys if keys.count(k) > 1}
    for limit in (1 << 16, memory_keys):
        ks = _KeySet(memory_keys=limit, parts=8)
        for k in keys + [k for k in keys[:3]]:  # some repeats for sure
            ks.add(k)
        assert ks.repeated() == expected | set(keys[:3])


def test_duplicate_id_reported_past_the_in_memory_limit(tmp_path: Any, monkeypatch: Any) -> None:
    import arcflow.scenarios as sc
    from arcflow.errors import ScenarioFileError

    monkeypatch.setattr(sc._KeySet.__init__, "__kwdefaults__", {"memory_keys": 100, "parts": 64})
    path = tmp_path / "s.jsonl"
    lines = [json.dumps({"id": f"s{i}"}) for i in range(1000)]
    path.write_text("\n".join([*lines, json.dumps({"id": "s7"})]) + "\n")
    with pytest.raises(ScenarioFileError, match=r"duplicate scenario id 's7' \(first on line 8\)"):
        sc.validate_file(path)
    path.write_text("\n".join(lines) + "\n")
    assert sc.validate_file(path).count == 1000


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
    async def noop(_s: Scenario) -> None:
        return None

    control = ShutdownControl()
    counters = Counters()
    cfg = RuntimeConfig()
    work_send, work_recv = trio.open_memory_channel[Scenario](200)
    out_send, out_recv = trio.open_memory_channel[Outcome](10_000)
    ex = PythonExecutor(noop)
    async with trio.open_nursery() as nursery:
        with work_recv, out_send:
            for i in range(100):
                p = Producer(
                    f"p{i}", ex, run_id="r", config=cfg, control=control, counters=counters
                )
                nursery.start_soon(p.run, work_recv.clone(), out_send.clone(), ProducerState())
        await trio.sleep(0.01)  # every producer has found the channel empty
        async with work_send:
            for i in range(3000):
                await work_send.send(Scenario(f"s{i}"))
    got = [out_recv.receive_nowait() for _ in range(3000)]
    assert counters.completed == 3000 and len({o.scenario_id for o in got}) == 3000
    assert len({o.worker for o in got}) < 20  # a few producers keep up; the rest rest


async def test_mixed_slow_and_fast(autojump_clock: trio.testing.MockClock) -> None:
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
    counters = Counters()
    cfg = RuntimeConfig()
    work_send, work_recv = trio.open_memory_channel[Scenario](10)
    out_send, out_recv = trio.open_memory_channel[Outcome](100)
    ex = Scripted({"a": [sleeps(1)], "b": [sleeps(1)]})
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            with work_recv, out_send:
                for i in range(20):
                    p = Producer(
                        f"p{i}", ex, run_id="r", config=cfg, control=control, counters=counters
                    )
                    nursery.start_soon(p.run, work_recv.clone(), out_send.clone(), ProducerState())
            await work_send.send(Scenario("a"))
            await work_send.send(Scenario("b"))
            await trio.sleep(5)
            assert control.pool.parked >= 18 or control.pool.parked + control.pool.receivers >= 19
            if how == "close":
                await work_send.aclose()
            elif how == "stop_then_close":
                control.stop()
                await trio.sleep(1)
                await work_send.aclose()
            else:
                control.cancel_running()
    assert control.pool.parked == 0 and control.pool.receivers == 0 and control.pool.attempting == 0
    got = [out_recv.receive_nowait(), out_recv.receive_nowait()]
    assert sorted(o.scenario_id for o in got) == ["a", "b"]
    work_send.close()


# -- the file source ------------------------------------------------------------------------------


async def _source(path: Any, **kw: Any) -> list[Scenario]:
    from arcflow.source import run_file_source

    send, recv = trio.open_memory_channel[Scenario](100_000)
    await run_file_source(path, send, **kw)
    out = []
    async for s in recv:
        out.append(s)
    return out


@pytest.mark.parametrize("read_size", [1, 7, 64, 1 << 18])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
async def test_source_reads_what_iter_file_reads(
    tmp_path: Any, monkeypatch: Any, read_size: int, newline: str
) -> None:
    import arcflow.source as source
    from arcflow.scenarios import iter_file

    monkeypatch.setattr(source, "_READ_SIZE", read_size)
    lines = [
        json.dumps({"id": "a", "input": {"t": "é ü ✓ \u2028 𝄞"}}, ensure_ascii=False),
        "",
        "   ",
        json.dumps({"id": "b", "tags": ["x"], "timeout_s": 2}),
        json.dumps({"id": 7, "metadata": {"k": [1, 2]}}),
    ]
    path = tmp_path / "s.jsonl"
    for trailing in (True, False):
        path.write_bytes((newline.join(lines) + (newline if trailing else "")).encode())
        expected = [s for _n, s in iter_file(path)]
        assert await _source(path) == expected
        assert [s.id for s in await _source(path, skip=lambda s: s.id == "b")] == ["a", "7"]


async def test_source_errors_name_the_line(tmp_path: Any) -> None:
    from arcflow.errors import ScenarioFileError

    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b",}\n')
    with pytest.raises(ScenarioFileError, match=r"s.jsonl:3: invalid JSON at column 12"):
        await _source(path)
    path.write_text('{"id": "a"}\n{"id": "b", "bogus": 1}\n')
    with pytest.raises(ScenarioFileError, match=r":2: unknown keys \['bogus'\]"):
        await _source(path)
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "\xff"}\n')
    with pytest.raises(ScenarioFileError, match=r":3: not UTF-8 text"):
        await _source(path)
    with pytest.raises(ScenarioFileError, match="no such file"):
        await _source(tmp_path / "missing.jsonl")
