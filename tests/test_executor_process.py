"""The process: executor against real subprocesses (tests/scripts/scenario_proc.py)."""

from __future__ import annotations

import json
import os
import resource
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from arcflow.errors import ExecutorSpecError
from arcflow.executors import ExecutionContext, parse_executor, process
from arcflow.executors.output import OutputCapture
from arcflow.executors.process import ProcessExecutor
from arcflow.models import ExecutionResult, Scenario, Status

SCRIPT = Path(__file__).parent / "scripts" / "scenario_proc.py"
SPEC = shlex.join([sys.executable, str(SCRIPT)])
CONTEXT = ExecutionContext(run_id="r", attempt=1, worker="w")


@pytest.fixture(autouse=True, params=["loop", "thread", "thread-polling"])
def watcher(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs each way a child is watched: from the event loop (pidfd + epoll), from a
    worker thread with a pidfd, and from a worker thread polling for the exit (no pidfd: macOS)."""
    if request.param == "loop" and not process.WATCH_IN_LOOP:
        if os.environ.get("CI") == "true" and sys.platform == "linux":
            pytest.fail("no pidfd on this Linux: the event-loop path is untested")
        pytest.skip("this kernel has no pidfd: children are watched from threads only")
    monkeypatch.setattr(process, "WATCH_IN_LOOP", request.param == "loop")
    if request.param == "thread-polling":
        monkeypatch.setattr(process, "_pidfd", lambda pid: None)
    return str(request.param)


async def run_mode(
    mode: str, executor: ProcessExecutor | None = None, **extra: Any
) -> ExecutionResult:
    executor = executor or ProcessExecutor.from_spec(SPEC)
    return await executor.run(Scenario(id="a", input={"mode": mode, **extra}), CONTEXT)


def is_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return any(line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines())


async def wait_gone(pid: int, within: float = 3.0) -> bool:
    """Poll until ``pid`` is gone (the kernel offers no event for another process's exit)."""
    for _ in range(int(within / 0.02)):
        if is_gone(pid):
            return True
        await trio.sleep(0.02)
    return is_gone(pid)


async def test_passing_process_maps_stdout_json_to_passed() -> None:
    """Exit 0 with {"status": "passed", ...} on stdout is a passed result with score and output."""
    result = await run_mode("pass")
    assert result.status is Status.PASSED
    assert result.score == 1.0
    assert result.output == {"echo": "a"}
    assert result.executor["kind"] == "process"
    assert result.executor["command"] == [sys.executable, str(SCRIPT)]
    assert result.executor["exit_code"] == 0
    assert isinstance(result.executor["pid"], int)


async def test_null_on_stdout_is_passed() -> None:
    """`null` on stdout means passed with no score, like a python: function returning None."""
    result = await run_mode("null")
    assert result.status is Status.PASSED
    assert result.score is None


async def test_failed_status_and_score_are_kept() -> None:
    """{"status": "failed", "score": x} is a failed result with that score, not an error."""
    result = await run_mode("fail", score=0.3)
    assert result.status is Status.FAILED
    assert result.score == 0.3
    assert result.error_type is None


async def test_scenario_json_arrives_on_stdin() -> None:
    """The child reads exactly Scenario.to_json() on stdin."""
    scenario = Scenario(
        id="s-1", input={"mode": "echo_input", "x": [1, 2]}, tags=["t"], timeout_s=4
    )
    result = await ProcessExecutor.from_spec(SPEC).run(scenario, CONTEXT)
    assert result.status is Status.PASSED
    assert result.output == scenario.to_json()


async def test_nonzero_exit_is_error_with_code_and_stderr_tail() -> None:
    """A non-zero exit is an error of type ProcessExitError naming the code and quoting stderr."""
    result = await run_mode("error", message="database of answers is missing")
    assert result.status is Status.ERROR
    assert result.error_type == "ProcessExitError"
    assert "exited with code 3" in result.error_message
    assert "database of answers is missing" in result.error_message
    assert result.executor["exit_code"] == 3


async def test_invalid_json_is_error_with_preview() -> None:
    """Stdout that is not JSON is an InvalidJSON error quoting the start of the output."""
    result = await run_mode("bad_json")
    assert result.status is Status.ERROR
    assert result.error_type == "InvalidJSON"
    assert "this is not json {" in result.error_message


async def test_empty_stdout_is_error_not_passed() -> None:
    """A process that writes nothing on stdout is an error saying a JSON result was expected."""
    result = await run_mode("silent")
    assert result.status is Status.ERROR
    assert result.error_type == "EmptyOutput"
    assert "wrote nothing on stdout; expected a JSON result" in result.error_message


async def test_invalid_result_shape_is_reported_by_result_from_mapping() -> None:
    """Valid JSON of the wrong shape goes through result_from_mapping's checks."""
    executor = ProcessExecutor(
        [sys.executable, "-c", 'print(\'{"status": "great"}\')'],
    )
    result = await executor.run(Scenario(id="a"), CONTEXT)
    assert result.status is Status.ERROR
    assert result.error_type == "InvalidResult"
    assert "'great'" in result.error_message


async def test_megabytes_of_stdout_are_drained_and_reported_as_too_large() -> None:
    """Stdout past stdout_limit is read to the end (no pipe deadlock) and is a StdoutTooLarge error."""
    with trio.fail_after(20):
        result = await run_mode("flood", blocks=64)  # 4 MiB on each of stdout and stderr
    assert result.status is Status.ERROR
    assert result.error_type == "StdoutTooLarge"
    assert "1048576" in result.error_message
    assert result.executor["stdout_truncated"] is True
    assert result.executor["stdout_bytes"] == 64 * 65536
    assert result.executor["stderr_truncated"] is True


async def test_large_stderr_keeps_only_the_tail_and_still_passes() -> None:
    """Megabytes of stderr are drained, only its tail is kept, and the result still counts."""
    executor = ProcessExecutor.from_spec(SPEC, stderr_limit=128)
    result = await run_mode("flood_stderr", executor, blocks=48)
    assert result.status is Status.PASSED
    assert result.executor["stderr_truncated"] is True
    assert result.executor["stdout_truncated"] is False


async def test_stderr_tail_in_error_message_is_the_end_of_stderr() -> None:
    """When stderr overflows, the error message quotes its last bytes, not its first."""
    executor = ProcessExecutor(
        [
            sys.executable,
            "-c",
            "import sys; sys.stderr.write('A' * 100000 + 'THE END'); sys.exit(5)",
        ],
        stderr_limit=64,
    )
    result = await executor.run(Scenario(id="a"), CONTEXT)
    assert result.error_type == "ProcessExitError"
    assert result.error_message.rstrip().endswith("THE END")
    assert "earlier bytes dropped" in result.error_message


async def cancel_once_started(
    mode: str, pid_file: Path, executor: ProcessExecutor | None = None, **extra: Any
) -> list[int]:
    """Run ``mode`` and cancel it as soon as its pid file exists; the pids it wrote.

    The child writes the file atomically once it (and any grandchild) runs, so
    the cancellation lands on a started process, however slow the machine.
    """

    async def cancel_when_started(scope: trio.CancelScope) -> None:
        while not pid_file.exists():  # no event for another process's file: poll
            await trio.sleep(0.01)
        scope.cancel()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when_started, nursery.cancel_scope)
            await run_mode(mode, executor, pid_file=str(pid_file), **extra)
            raise AssertionError("the run was not cancelled")  # pragma: no cover
    return [int(p) for p in pid_file.read_text().split()]


async def test_cancelled_run_kills_the_process(tmp_path: Path) -> None:
    """A run cancelled by its timeout leaves no process behind: it is killed and reaped."""
    (pid,) = await cancel_once_started("sleep", tmp_path / "pid", seconds=60)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_cancelled_run_kills_the_whole_process_group(tmp_path: Path) -> None:
    """Cancellation also ends the child's own children (the process group gets the signals)."""
    leader, grandchild = await cancel_once_started("sleep_tree", tmp_path / "pids")
    assert is_gone(leader)
    assert await wait_gone(grandchild)


async def test_process_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    """A child that ignores SIGTERM gets SIGKILL once kill_grace_s has passed, not before."""
    executor = ProcessExecutor.from_spec(SPEC, kill_grace_s=0.3)
    start = trio.current_time()
    (pid,) = await cancel_once_started("stubborn", tmp_path / "pid", executor)
    elapsed = trio.current_time() - start
    assert is_gone(pid)
    assert 0.3 <= elapsed < 5


async def test_env_is_merged_and_cwd_is_used(tmp_path: Path) -> None:
    """env entries join the minimal child environment (PATH passes through); cwd is used."""
    executor = ProcessExecutor.from_spec(SPEC, env={"ARCFLOW_TEST_VALUE": "42"}, cwd=tmp_path)
    result = await run_mode("env", executor, name="ARCFLOW_TEST_VALUE")
    assert result.status is Status.PASSED
    assert result.output == {"value": "42", "cwd": str(tmp_path)}
    inherited = await run_mode("env", executor, name="PATH")
    assert inherited.output["value"] == os.environ["PATH"]


async def test_many_concurrent_runs_are_independent() -> None:
    """One executor serves concurrent runs; each gets its own process and result."""
    executor = ProcessExecutor.from_spec(SPEC)
    results: dict[str, ExecutionResult] = {}

    async def one(i: int) -> None:
        mode = "pass" if i % 2 == 0 else "fail"
        results[str(i)] = await executor.run(Scenario(id=str(i), input={"mode": mode}), CONTEXT)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(one, i)
    assert [results[str(i)].status for i in range(8)] == [Status.PASSED, Status.FAILED] * 4
    assert len({r.executor["pid"] for r in results.values()}) == 8


def test_from_spec_rejects_unknown_command() -> None:
    """An executable that is not on PATH is refused up front, naming the command."""
    with pytest.raises(ExecutorSpecError, match="'arcflow-no-such-command' not found on PATH"):
        ProcessExecutor.from_spec("arcflow-no-such-command --flag")


def test_from_spec_rejects_empty_and_unparsable_specs() -> None:
    """An empty command or unbalanced quotes are spec errors with an example of a valid spec."""
    with pytest.raises(ExecutorSpecError, match="empty process command"):
        ProcessExecutor.from_spec("   ")
    with pytest.raises(ExecutorSpecError, match="cannot parse"):
        ProcessExecutor.from_spec("python 'unterminated")


def test_from_spec_rejects_non_executable_path(tmp_path: Path) -> None:
    """A command given by path must exist and be executable."""
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho null\n")
    with pytest.raises(ExecutorSpecError, match="not executable"):
        ProcessExecutor.from_spec(str(script))
    with pytest.raises(ExecutorSpecError, match="not found"):
        ProcessExecutor.from_spec(str(tmp_path / "missing.sh"))


def test_parse_executor_builds_a_process_executor() -> None:
    """`process:COMMAND ARGS` through parse_executor gives a ProcessExecutor with the argv split."""
    executor = parse_executor(f"process:{SPEC} --flag 'two words'")
    assert isinstance(executor, ProcessExecutor)
    assert executor.command == (sys.executable, str(SCRIPT), "--flag", "two words")


async def test_process_that_does_not_read_stdin_is_judged_by_its_output() -> None:
    """A child that exits without reading the scenario is not an error in itself."""
    executor = ProcessExecutor([sys.executable, "-c", "print('null')"])
    big = Scenario(id="a", input={"blob": "x" * 500_000})
    result = await executor.run(big, CONTEXT)
    assert result.status is Status.PASSED


def test_output_capture_keeps_head_or_tail() -> None:
    """OutputCapture keeps the first bytes (head) or the last bytes (tail) and counts the rest."""
    head = OutputCapture(4, keep="head")
    tail = OutputCapture(4, keep="tail")
    for chunk in (b"abc", b"def", "gh"):
        head.feed(chunk)
        tail.feed(chunk)
    assert (head.data, head.total, head.truncated) == (b"abcd", 8, True)
    assert (tail.data, tail.total, tail.truncated) == (b"efgh", 8, True)


async def test_children_get_a_minimal_environment_without_arcflows_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ARCFLOW_DB, PGPASSWORD and other variables stay out; PATH, pass_env names and env go in."""
    monkeypatch.setenv("ARCFLOW_DB", "postgresql://me:s3cret@h/db")
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    monkeypatch.setenv("SOME_TOKEN", "t0ken")
    monkeypatch.setenv("WANTED", "yes")
    executor = ProcessExecutor.from_spec(SPEC, pass_env=["WANTED"], env={"EXTRA": "1"})
    result = await run_mode("environment", executor)
    child = result.output
    assert (
        child["WANTED"] == "yes" and child["EXTRA"] == "1" and child["PATH"] == os.environ["PATH"]
    )
    assert not {"ARCFLOW_DB", "PGPASSWORD", "SOME_TOKEN"} & set(child)
    assert "s3cret" not in json.dumps(child)
    with pytest.raises(ExecutorSpecError, match="--pass-env PGPASSWORD: arcflow's own settings"):
        ProcessExecutor.from_spec(SPEC, pass_env=["PGPASSWORD"])


async def test_what_a_finished_command_leaves_behind_is_killed(tmp_path: Path) -> None:
    """A helper left running with stdout open neither holds the scenario nor survives it."""
    pid_file = tmp_path / "pids"
    with trio.fail_after(20):  # a hang guard: it used to wait for the helper's 60 s
        result = await run_mode("orphan", pid_file=str(pid_file))
    assert result.status is Status.PASSED
    _leader, helper = (int(p) for p in pid_file.read_text().split())
    assert await wait_gone(helper)


async def test_run_entered_already_cancelled_returns_at_once(tmp_path: Path) -> None:
    """Cancelled before the child starts, run raises Cancelled at once and starts nothing."""
    executor = ProcessExecutor.from_spec(SPEC)
    pid_file = tmp_path / "pid"
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            scope.cancel()
            await run_mode("sleep", executor, pid_file=str(pid_file), seconds=60)
    assert scope.cancelled_caught
    await trio.sleep(0.2)
    assert not pid_file.exists()


async def test_input_larger_than_a_pipe_arrives_whole() -> None:
    """A scenario bigger than the pipe's buffer reaches stdin whole while stdout is drained."""
    blob = "x" * (3 * 1024 * 1024)
    result = await run_mode("input_size", blob=blob)
    assert result.status is Status.PASSED
    sent = json.dumps(Scenario(id="a", input={"mode": "input_size", "blob": blob}).to_json())
    assert result.output == {"bytes": len(sent.encode())}


async def test_exit_code_decides_when_a_child_outlives_its_pipes() -> None:
    """A child that closes stdout and stderr and fails later is judged by its exit, not its EOF."""
    result = await run_mode("close_and_linger", seconds=0.3)
    assert result.error_type == "ProcessExitError"
    assert result.executor["exit_code"] == 5
    assert is_gone(result.executor["pid"])


@pytest.mark.parametrize("watcher", ["loop"], indirect=True)  # the thread path polls instead
async def test_a_child_that_cannot_be_watched_is_killed_and_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Out of file descriptors for its pidfd, the started child is killed and the error named."""

    def no_fds(pid: int) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(process.os, "pidfd_open", no_fds)
    result = await run_mode("sleep", pid_file=str(tmp_path / "pid"), seconds=60)
    assert result.error_type == "ProcessStartError"
    assert "cannot watch it: OSError: [Errno 24] Too many open files" in result.error_message
    assert await wait_gone(result.executor["pid"])


async def test_start_raises_the_soft_open_files_limit() -> None:
    """start() lifts a low soft open-files limit, so hundreds of children do not fail on EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        await ProcessExecutor.from_spec(SPEC).start()
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        assert raised == max(low, wanted)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_out_of_file_descriptors_is_explained_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE at spawn ends the scenario as ProcessStartError and warns once with the fix."""
    executor = ProcessExecutor.from_spec(SPEC)

    def out_of_files() -> Any:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(executor, "_spawn", out_of_files)
    with caplog.at_level("WARNING", logger="arcflow.executors.process"):
        results = [await run_mode("pass", executor) for _ in range(3)]
    assert {r.error_type for r in results} == {"ProcessStartError"}
    assert "Too many open files" in results[0].error_message
    warnings = [r.getMessage() for r in caplog.records if r.name == "arcflow.executors.process"]
    assert len(warnings) == 1
    assert "out of file descriptors" in warnings[0] and "Lower --concurrency" in warnings[0]
