"""The executor registry: specs, instances and plain callables become executors."""

from __future__ import annotations

from typing import Any

import pytest

import arcflow
from arcflow.errors import ExecutorSpecError
from arcflow.executors import KINDS, Executor, PythonExecutor, parse_executor
from arcflow.executors.process import ProcessExecutor
from arcflow.models import Scenario


async def _async_score(scenario: Scenario) -> dict[str, Any]:
    return {"score": 1.0}


def test_every_kind_builds_through_from_spec() -> None:
    """Each registered kind turns its spec into an instance of its class."""
    built = {
        "python": parse_executor("python:examples.quickstart:score"),
        "process": parse_executor("process:python -c pass"),
        "modal": parse_executor("modal:python /app/score.py"),
        "modal-fn": parse_executor("modal-fn:my-app/score"),
    }
    assert set(built) == set(KINDS)
    for kind, executor in built.items():
        assert isinstance(executor, Executor)
        assert executor.kind == kind


def test_options_reach_the_kinds_constructor() -> None:
    """Keyword options are passed to the kind's constructor (here, the process executor's limits)."""
    executor = parse_executor("process:python -c pass", stdout_limit=123)
    assert isinstance(executor, ProcessExecutor)
    assert executor.stdout_limit == 123


def test_a_plain_callable_is_a_python_executor() -> None:
    """A callable is wrapped in PythonExecutor, async or not."""
    executor = parse_executor(_async_score)
    assert isinstance(executor, PythonExecutor)
    assert executor.is_async
    sync = parse_executor(lambda scenario: None)
    assert isinstance(sync, PythonExecutor) and not sync.is_async


def test_an_executor_instance_is_returned_as_it_is() -> None:
    """An Executor instance passes through unchanged; options for it are refused."""
    executor = PythonExecutor(_async_score)
    assert parse_executor(executor) is executor
    with pytest.raises(ExecutorSpecError, match="pass them to its constructor"):
        parse_executor(executor, name="x")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (42, "expected an Executor, a plain callable \\(run as PythonExecutor"),
        ("noexecutor", "invalid executor 'noexecutor'"),
        ("docker:run it", "unknown executor kind 'docker'"),
    ],
)
def test_anything_else_is_refused_naming_what_is_valid(spec: Any, message: str) -> None:
    """Refusals name the valid forms, PythonExecutor among them."""
    with pytest.raises(ExecutorSpecError, match=message):
        parse_executor(spec)


async def test_runtime_takes_a_plain_async_function(dsn: str, run_id: str, tmp_path: Any) -> None:
    """Runtime(executor=fn) runs fn for each scenario and records what it returned."""
    from arcflow.testing import outcome_rows

    async with arcflow.Runtime(
        executor=_async_score, db=dsn, run_id=run_id, data_dir=tmp_path
    ) as rt:
        await rt.submit(Scenario(id="a"))
        await rt.submit(Scenario(id="b"))
    rows = outcome_rows(dsn, run_id)
    assert [(r["scenario_id"], r["status"], r["score"]) for r in rows] == [
        ("a", "passed", 1.0),
        ("b", "passed", 1.0),
    ]


async def test_sync_functions_are_not_capped_at_trios_forty_threads() -> None:
    """60 sync calls at once all run together (trio's default limiter would stop at 40)."""
    import threading

    import trio

    from arcflow.executors import ExecutionContext

    barrier = threading.Barrier(60, timeout=20)

    def wait_for_all(scenario: Scenario) -> None:
        barrier.wait()  # breaks (an error outcome) unless all 60 are in threads at once

    executor = PythonExecutor(wait_for_all)
    context = ExecutionContext(run_id="r", attempt=1, worker="w")
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append(await executor.run(Scenario(id=f"s{i}"), context))

    async with trio.open_nursery() as nursery:
        for i in range(60):
            nursery.start_soon(one, i)
    assert [r.status.value for r in results] == ["passed"] * 60


async def test_threads_caps_sync_calls_at_once() -> None:
    """threads=N lets at most N sync calls run at the same time."""
    import threading
    import time

    import trio

    from arcflow.executors import ExecutionContext

    lock = threading.Lock()
    running, peak = 0, 0

    def count(scenario: Scenario) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    executor = PythonExecutor(count, threads=3)
    context = ExecutionContext(run_id="r", attempt=1, worker="w")
    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(executor.run, Scenario(id=f"s{i}"), context)
    assert peak == 3
    with pytest.raises(ExecutorSpecError, match="invalid threads=0"):
        PythonExecutor(count, threads=0)


async def test_sync_functions_see_the_callers_context() -> None:
    """A sync function runs in a copy of the caller's context (the log context reaches it)."""
    import contextvars

    import sniffio

    from arcflow.executors import ExecutionContext

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[Any] = []

    def look(scenario: Scenario) -> None:
        try:
            library: str | None = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = None
        seen.append((var.get(), library))
        var.set("changed in the thread")

    var.set("the caller's")
    result = await PythonExecutor(look).run(
        Scenario(id="a"), ExecutionContext(run_id="r", attempt=1, worker="w")
    )
    assert result.status.value == "passed"
    assert seen == [("the caller's", None)]  # and the thread is not taken for trio's
    assert var.get() == "the caller's"  # a copy: the caller's own context is untouched


async def test_cancelled_sync_call_is_abandoned_but_keeps_its_thread_slot() -> None:
    """Cancellation returns at once; with threads=N the abandoned call holds its slot until done."""
    import threading

    import trio

    from arcflow.executors import ExecutionContext

    release = threading.Event()
    calls: list[str] = []

    def block(scenario: Scenario) -> None:
        calls.append(scenario.id)
        if scenario.id == "first":
            release.wait(20)

    executor = PythonExecutor(block, threads=1)
    context = ExecutionContext(run_id="r", attempt=1, worker="w")
    with trio.fail_after(10):
        with trio.move_on_after(0.2) as scope:
            await executor.run(Scenario(id="first"), context)
        assert scope.cancelled_caught  # abandoned: the thread still blocks in release.wait
        with trio.move_on_after(0.3) as waiting:
            await executor.run(Scenario(id="second"), context)
        assert waiting.cancelled_caught and calls == ["first"]  # the one slot is still taken
        release.set()
        result = await executor.run(Scenario(id="third"), context)
    assert result.status.value == "passed"
    assert calls == ["first", "third"]


async def test_sync_function_returning_a_coroutine_is_an_error() -> None:
    """A sync callable that returns a coroutine is refused (an error outcome), as trio does."""
    from arcflow.executors import ExecutionContext

    executor = PythonExecutor(lambda scenario: _async_score(scenario))
    assert not executor.is_async
    result = await executor.run(
        Scenario(id="a"), ExecutionContext(run_id="r", attempt=1, worker="w")
    )
    assert result.status.value == "error"
    assert result.error_type == "TypeError"
    assert "appears to be asynchronous" in (result.error_message or "")
