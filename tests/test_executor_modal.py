"""The modal: executor without a Modal account.

Fakes stand in for Modal's cloud only: a fake sandbox factory injected into
ModalExecutor (rate limit, starting cap, retries, terminate on cancel), and a
fake ``modal`` module whose calls are checked against the installed modal
package's real signatures (the trio-asyncio glue in ModalBackend/ModalSandbox).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from arcflow.errors import ConfigError, ExecutorSpecError
from arcflow.executors import ExecutionContext, parse_executor
from arcflow.executors.modal import (
    ModalConfig,
    ModalExecutor,
    SandboxCreationThrottled,
    SandboxLifetimeExceeded,
    SandboxRequest,
    find_modal_credentials,
)
from arcflow.models import ExecutionResult, Scenario, Status

CONTEXT = ExecutionContext(run_id="r", attempt=1, worker="w", timeout_s=20)
MODAL_ENV = (
    "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET",
    "MODAL_CONFIG_PATH",
    "MODAL_PROFILE",
    "MODAL_OAUTH_REFRESH_TOKEN",
)


def behaviour(scenario: dict[str, Any]) -> tuple[int, str, str] | None:
    """What the fake sandbox's command does with a scenario; None: runs forever."""
    mode = scenario["input"].get("mode", "pass")
    if mode == "pass":
        return 0, json.dumps({"status": "passed", "score": 0.9, "output": scenario["id"]}), ""
    if mode == "fail":
        return 0, json.dumps({"status": "failed", "score": 0.1}), ""
    if mode == "crash":
        return 2, "", "Traceback ...\nKeyError: 'answer'\n"
    if mode == "bad_json":
        return 0, "<html>", ""
    if mode == "hang":
        return None
    raise AssertionError(mode)


class FakeSandbox:
    """A sandbox whose command follows :func:`behaviour`, with trio semantics."""

    def __init__(self, object_id: str, *, lifetime_exceeded: bool = False) -> None:
        self._object_id = object_id
        self.lifetime_exceeded = lifetime_exceeded
        self.stdin_data: bytes | None = None
        self.terminate_calls = 0
        self._outcome: tuple[int, str, str] | None = None
        self._input_received = trio.Event()
        self._terminated = trio.Event()

    @property
    def object_id(self) -> str:
        return self._object_id

    async def send_input(self, data: bytes) -> None:
        await trio.sleep(0.01)
        self.stdin_data = data
        self._outcome = behaviour(json.loads(data))
        self._input_received.set()

    async def _finished(self) -> tuple[int, str, str]:
        await self._input_received.wait()
        if self._outcome is None or self.lifetime_exceeded:
            await self._terminated.wait()
            return 137, "", ""
        return self._outcome

    async def _chunks(self, index: int) -> AsyncIterator[str]:
        text = (await self._finished())[index]
        for start in range(0, len(text), 7):
            yield text[start : start + 7]

    def stdout(self) -> AsyncIterator[str]:
        return self._chunks(1)

    def stderr(self) -> AsyncIterator[str]:
        return self._chunks(2)

    async def wait(self) -> int:
        if self.lifetime_exceeded:
            await self._input_received.wait()
            await trio.sleep(1)
            self._terminated.set()
            raise SandboxLifetimeExceeded("sandbox timed out")
        return (await self._finished())[0]

    async def terminate(self) -> None:
        self.terminate_calls += 1
        await trio.sleep(0.05)
        self._terminated.set()


class FakeModalCloud:
    """The injected sandbox factory: records every creation call."""

    def __init__(
        self,
        *,
        create_delay: float = 0.0,
        throttle_first: int = 0,
        always_throttle: bool = False,
        error: Exception | None = None,
        lifetime_exceeded: bool = False,
    ) -> None:
        self.create_delay = create_delay
        self.throttle_first = throttle_first
        self.always_throttle = always_throttle
        self.error = error
        self.lifetime_exceeded = lifetime_exceeded
        self.call_times: list[float] = []
        self.requests: list[SandboxRequest] = []
        self.sandboxes: list[FakeSandbox] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, request: SandboxRequest) -> FakeSandbox:
        self.call_times.append(trio.current_time())
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.create_delay)
            if self.error is not None:
                raise self.error
            if self.always_throttle or len(self.call_times) <= self.throttle_first:
                raise SandboxCreationThrottled("RESOURCE_EXHAUSTED: sandbox creation rate limit")
            sandbox = FakeSandbox(
                f"sb-fake{len(self.sandboxes)}", lifetime_exceeded=self.lifetime_exceeded
            )
            self.sandboxes.append(sandbox)
            return sandbox
        finally:
            self.in_flight -= 1


def executor_with(cloud: FakeModalCloud, **config: Any) -> ModalExecutor:
    return ModalExecutor(["python", "/app/score.py"], ModalConfig(**config), sandbox_factory=cloud)


async def run_mode(executor: ModalExecutor, mode: str, sid: str = "a") -> ExecutionResult:
    return await executor.run(Scenario(id=sid, input={"mode": mode}), CONTEXT)


# -- credentials and imports ---------------------------------------------------------


@pytest.fixture
def no_modal_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in MODAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


async def test_start_without_credentials_is_a_clear_config_error(
    no_modal_credentials: Path,
) -> None:
    """With no token in the environment or ~/.modal.toml, start() refuses, saying how to log in."""
    modal_was_imported = "modal" in sys.modules
    executor = ModalExecutor.from_spec("python /app/score.py")
    with pytest.raises(ConfigError) as info:
        await executor.start()
    message = str(info.value)
    assert "modal token new" in message
    assert "MODAL_TOKEN_ID" in message and "MODAL_TOKEN_SECRET" in message
    assert str(no_modal_credentials / ".modal.toml") in message
    if not modal_was_imported:
        assert "modal" not in sys.modules


async def test_half_set_token_env_names_the_missing_variable(
    no_modal_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MODAL_TOKEN_ID without MODAL_TOKEN_SECRET is refused, naming the missing one."""
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-123")
    with pytest.raises(ConfigError, match="found MODAL_TOKEN_ID but not MODAL_TOKEN_SECRET"):
        await ModalExecutor(["true"]).start()


def test_modal_toml_profiles_are_read_like_modal_does(
    no_modal_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token in the active ~/.modal.toml profile counts; a profile without one does not."""
    toml = no_modal_credentials / ".modal.toml"
    toml.write_text('[other]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n\n[work]\nactive = true\n')
    with pytest.raises(ConfigError, match="no profile 'work' with a token"):
        find_modal_credentials()
    monkeypatch.setenv("MODAL_PROFILE", "other")
    assert find_modal_credentials() == f"profile 'other' of {toml}"
    monkeypatch.delenv("MODAL_PROFILE")
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-2")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-2")
    assert "environment" in find_modal_credentials()


def test_importing_the_modal_executor_imports_neither_modal_nor_trio_asyncio() -> None:
    """`import arcflow.executors.modal` itself imports neither modal nor trio_asyncio."""
    code = (
        "import sys, arcflow.executors; before = set(sys.modules); "
        "import arcflow.executors.modal; "
        "print(sorted(m for m in ('modal', 'trio_asyncio') "
        "if m in sys.modules and m not in before) + "
        "(['modal'] if 'modal' in sys.modules else []))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_from_spec_and_config_validation() -> None:
    """modal:COMMAND ARGS is split with shell rules; empty commands and bad config are refused."""
    executor = parse_executor("modal:python -m scorer --name 'two words'")
    assert isinstance(executor, ModalExecutor)
    assert executor.command == ("python", "-m", "scorer", "--name", "two words")
    with pytest.raises(ExecutorSpecError, match="empty modal command"):
        ModalExecutor.from_spec("  ")
    with pytest.raises(ConfigError, match="invalid max_creations_per_second=0"):
        ModalConfig(max_creations_per_second=0)
    with pytest.raises(ConfigError, match="invalid memory=-5: must be a whole number"):
        ModalConfig(memory=-5)


# -- outcome mapping -----------------------------------------------------------------


async def test_sandbox_result_maps_like_the_process_executor(autojump_clock: Any) -> None:
    """Sandbox stdout JSON becomes the result; details carry the sandbox id and exit code."""
    cloud = FakeModalCloud()
    executor = executor_with(cloud)
    passed = await run_mode(executor, "pass", sid="s1")
    assert passed.status is Status.PASSED
    assert (passed.score, passed.output) == (0.9, "s1")
    assert passed.executor["kind"] == "modal"
    assert passed.executor["sandbox_id"] == "sb-fake0"
    assert passed.executor["exit_code"] == 0
    assert passed.executor["creation_attempts"] == 1
    assert passed.executor["command"] == ["python", "/app/score.py"]
    assert (
        json.loads(cloud.sandboxes[0].stdin_data or b"")
        == Scenario(id="s1", input={"mode": "pass"}).to_json()
    )
    failed = await run_mode(executor, "fail")
    assert (failed.status, failed.score) == (Status.FAILED, 0.1)


async def test_sandbox_nonzero_exit_and_bad_json_are_errors(autojump_clock: Any) -> None:
    """Non-zero exit is ProcessExitError with the stderr tail; non-JSON stdout is InvalidJSON."""
    executor = executor_with(FakeModalCloud())
    crashed = await run_mode(executor, "crash")
    assert crashed.status is Status.ERROR
    assert crashed.error_type == "ProcessExitError"
    assert "sandbox command exited with code 2" in crashed.error_message
    assert "KeyError: 'answer'" in crashed.error_message
    assert crashed.executor["exit_code"] == 2
    garbled = await run_mode(executor, "bad_json")
    assert garbled.error_type == "InvalidJSON"
    assert "<html>" in garbled.error_message


async def test_sandbox_lifetime_exceeded_is_a_timeout(autojump_clock: Any) -> None:
    """A sandbox stopped by Modal at its own lifetime is recorded as timeout, not terminated again."""
    cloud = FakeModalCloud(lifetime_exceeded=True)
    result = await run_mode(executor_with(cloud, timeout_s=60), "pass")
    assert result.status is Status.TIMEOUT
    assert result.error_type == "SandboxTimeout"
    assert "60s" in result.error_message
    assert cloud.sandboxes[0].terminate_calls == 0


async def test_sandbox_lifetime_follows_the_attempt_timeout(autojump_clock: Any) -> None:
    """Without timeout_s the sandbox lives for the attempt's timeout plus a margin."""
    cloud = FakeModalCloud()
    await run_mode(executor_with(cloud), "pass")
    assert cloud.requests[0].timeout_s == 20 + 30
    await run_mode(executor_with(cloud, timeout_s=7), "pass")
    assert cloud.requests[1].timeout_s == 7


# -- cancellation --------------------------------------------------------------------


async def test_cancelled_run_terminates_its_sandbox_exactly_once(autojump_clock: Any) -> None:
    """A run cancelled by its timeout terminates the sandbox once, in the shielded finally."""
    cloud = FakeModalCloud()
    executor = executor_with(cloud)
    with trio.move_on_after(5) as scope:
        await run_mode(executor, "hang")
    assert scope.cancelled_caught
    assert [sb.terminate_calls for sb in cloud.sandboxes] == [1]


async def test_finished_sandbox_is_not_terminated_again(autojump_clock: Any) -> None:
    """A sandbox whose command exited on its own needs no terminate call."""
    cloud = FakeModalCloud()
    await run_mode(executor_with(cloud), "pass")
    assert cloud.sandboxes[0].terminate_calls == 0


async def test_cancel_during_creation_still_terminates_the_new_sandbox(
    autojump_clock: Any,
) -> None:
    """Cancelled while Modal creates the sandbox, the run waits for it and terminates it."""
    cloud = FakeModalCloud(create_delay=3)
    start = trio.current_time()
    with trio.move_on_after(1):
        await run_mode(executor_with(cloud), "pass")
    assert trio.current_time() - start == pytest.approx(3.05, abs=0.02)
    assert [sb.terminate_calls for sb in cloud.sandboxes] == [1]
    assert cloud.sandboxes[0].stdin_data is None


async def test_failing_terminate_does_not_mask_the_cancellation(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If terminate() itself fails, the run still ends as cancelled (the failure is logged)."""
    cloud = FakeModalCloud()

    async def broken_terminate(self: FakeSandbox) -> None:
        self.terminate_calls += 1
        raise RuntimeError("network down")

    monkeypatch.setattr(FakeSandbox, "terminate", broken_terminate)
    with trio.move_on_after(2) as scope:
        await run_mode(executor_with(cloud), "hang")
    assert scope.cancelled_caught
    assert cloud.sandboxes[0].terminate_calls == 1


# -- rate limit, starting cap, retries -----------------------------------------------


async def run_many(executor: ModalExecutor, n: int, mode: str = "pass") -> list[ExecutionResult]:
    results: list[ExecutionResult] = []

    async def one(i: int) -> None:
        results.append(await run_mode(executor, mode, sid=str(i)))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return results


def assert_within_rate(times: list[float], rate: float, burst: int) -> None:
    """Every window [t_i, t_j] holds at most burst + rate * (t_j - t_i) calls."""
    times = sorted(times)
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1e-9, (i, j, times)


async def test_creations_never_exceed_the_configured_rate(autojump_clock: Any) -> None:
    """20 producers at once: creations are spaced at 1/rate, so the rate is never exceeded."""
    cloud = FakeModalCloud()
    results = await run_many(executor_with(cloud, max_creations_per_second=4), 20)
    assert all(r.status is Status.PASSED for r in results)
    assert_within_rate(cloud.call_times, rate=4, burst=1)
    assert cloud.call_times[-1] - cloud.call_times[0] == pytest.approx(19 / 4)


async def test_creation_burst_then_rate(autojump_clock: Any) -> None:
    """With creation_burst=3, three creations go at once, then the rate applies."""
    cloud = FakeModalCloud()
    executor = executor_with(cloud, max_creations_per_second=2, creation_burst=3)
    await run_many(executor, 9)
    assert_within_rate(cloud.call_times, rate=2, burst=3)
    start = cloud.call_times[0]
    assert [t - start for t in cloud.call_times[:3]] == [0, 0, 0]


async def test_sandboxes_starting_at_once_are_capped(autojump_clock: Any) -> None:
    """No more than max_starting creations are in flight at any moment."""
    cloud = FakeModalCloud(create_delay=10)
    executor = executor_with(cloud, max_starting=3, max_creations_per_second=1000)
    results = await run_many(executor, 12)
    assert len(results) == 12
    assert cloud.max_in_flight == 3


async def test_rate_limit_errors_are_retried_then_succeed(autojump_clock: Any) -> None:
    """Two throttled creations are retried with backoff; the third succeeds and counts."""
    cloud = FakeModalCloud(throttle_first=2)
    executor = executor_with(cloud, create_backoff_s=1.0, max_creations_per_second=100)
    result = await run_mode(executor, "pass")
    assert result.status is Status.PASSED
    assert result.executor["creation_attempts"] == 3
    assert len(cloud.call_times) == 3
    # full jitter: the waits are at most 1s then 2s
    gaps = [b - a for a, b in zip(cloud.call_times, cloud.call_times[1:], strict=False)]
    assert gaps[0] <= 1.0 + 0.011 and gaps[1] <= 2.0 + 0.011


async def test_rate_limit_retries_are_bounded(autojump_clock: Any) -> None:
    """A creation throttled create_attempts times is an error naming the rate limit."""
    cloud = FakeModalCloud(always_throttle=True)
    result = await run_mode(executor_with(cloud, create_attempts=3), "pass")
    assert result.status is Status.ERROR
    assert result.error_type == "SandboxCreationThrottled"
    assert "refused to create the sandbox 3 times" in result.error_message
    assert len(cloud.call_times) == 3
    assert result.executor["sandbox_id"] is None


async def test_other_creation_errors_are_not_retried(autojump_clock: Any) -> None:
    """An error other than throttling fails the attempt at once, with its type and message."""
    cloud = FakeModalCloud(error=ValueError("image 'nope' not found"))
    result = await run_mode(executor_with(cloud), "pass")
    assert (result.status, result.error_type) == (Status.ERROR, "ValueError")
    assert "image 'nope' not found" in result.error_message
    assert len(cloud.call_times) == 1


# -- the Modal glue, through trio-asyncio, against a fake modal module ---------------


class _AsyncioStdin:
    def __init__(self, sandbox: _AsyncioModalSandbox) -> None:
        self._sandbox = sandbox
        self._buffer = b""
        self._eof = False
        self.drain = types.SimpleNamespace(aio=self._drain)

    def write(self, data: bytes) -> None:
        self._buffer += data

    def write_eof(self) -> None:
        self._eof = True

    async def _drain(self) -> None:
        asyncio.get_running_loop()  # raises unless on the asyncio side
        await asyncio.sleep(0)
        self._sandbox.received = self._buffer
        if self._eof:
            self._sandbox.input_closed.set()


class _AsyncioStream:
    def __init__(self, sandbox: _AsyncioModalSandbox, index: int) -> None:
        self._sandbox = sandbox
        self._index = index

    async def __aiter__(self) -> AsyncIterator[str]:
        outcome = await self._sandbox.finished()
        text = outcome[self._index]
        for start in range(0, len(text), 5):
            yield text[start : start + 5]


class _AsyncioModalSandbox:
    """Shaped like modal.Sandbox as seen from asyncio code (``.aio`` methods)."""

    def __init__(self, object_id: str, timeout_error: type[BaseException] | None) -> None:
        self.object_id = object_id
        self.input_closed = asyncio.Event()
        self.received = b""
        self.returncode: int | None = None
        self.terminated = False
        self._timeout_error = timeout_error
        self.stdin = _AsyncioStdin(self)
        self.stdout = _AsyncioStream(self, 1)
        self.stderr = _AsyncioStream(self, 2)
        self.wait = types.SimpleNamespace(aio=self._wait)
        self.terminate = types.SimpleNamespace(aio=self._terminate)

    async def finished(self) -> tuple[int, str, str]:
        """(asyncio) Wait for stdin to close, then for the command to end (forever if it hangs)."""
        await self.input_closed.wait()
        result = behaviour(json.loads(self.received))
        if result is None:
            await asyncio.Event().wait()
        assert result is not None
        return result

    async def _wait(self, raise_on_termination: bool = True) -> None:
        outcome = await self.finished()
        if self._timeout_error is not None:
            raise self._timeout_error()
        self.returncode = outcome[0]

    async def _terminate(self, *, wait: bool = False) -> None:
        await asyncio.sleep(0)
        self.terminated = True


def _checked(
    real: Callable[..., Any], fake: Callable[..., Any], *, method: bool = False
) -> Callable[..., Any]:
    """``fake``, refusing calls that the installed modal's ``real`` would refuse.

    ``method``: ``real``'s signature starts with ``self`` (synchronicity keeps it).
    """
    signature = inspect.signature(real)
    if method:
        params = list(signature.parameters.values())
        signature = signature.replace(parameters=params[1:])

    async def call(*args: Any, **kwargs: Any) -> Any:
        signature.bind(*args, **kwargs)
        asyncio.get_running_loop()
        return await fake(*args, **kwargs)

    return call


def fake_modal_module(*, throttle: bool = False, lifetime_exceeded: bool = False) -> Any:
    """A ``modal`` stand-in: real exception classes, real signatures, no network."""
    import modal  # installed by the dev extra: this stand-in copies its real exception classes
    import modal.exception as modal_exception

    calls: dict[str, Any] = {}

    async def lookup(name: str, **kwargs: Any) -> Any:
        calls["lookup"] = (name, kwargs)
        return types.SimpleNamespace(name=name)

    async def build(app: Any = None) -> Any:
        calls["build_app"] = app
        return image

    image = types.SimpleNamespace(
        build=types.SimpleNamespace(aio=_checked(modal.Image.build.aio, build, method=True)),
        pip_install=lambda *pkgs: calls.setdefault("pip", pkgs) and image,
    )

    async def hydrate() -> None:
        calls["hydrated"] = True

    async def create(*args: str, **kwargs: Any) -> _AsyncioModalSandbox:
        calls["create"] = (args, kwargs)
        if throttle:
            raise modal_exception.ResourceExhaustedError("rate limit exceeded")
        timeout_error = modal_exception.SandboxTimeoutError if lifetime_exceeded else None
        sandbox = _AsyncioModalSandbox("sb-real-looking", timeout_error)
        calls["sandbox"] = sandbox
        return sandbox

    def from_registry(tag: str) -> Any:
        calls["registry"] = tag
        return image

    return types.SimpleNamespace(
        __name__="modal",
        calls=calls,
        exception=modal_exception,
        App=types.SimpleNamespace(
            lookup=types.SimpleNamespace(aio=_checked(modal.App.lookup.aio, lookup))
        ),
        Image=types.SimpleNamespace(debian_slim=lambda: image, from_registry=from_registry),
        Secret=types.SimpleNamespace(
            from_name=lambda name: types.SimpleNamespace(
                name=name, hydrate=types.SimpleNamespace(aio=hydrate)
            )
        ),
        Sandbox=types.SimpleNamespace(
            create=types.SimpleNamespace(aio=_checked(modal.Sandbox.create.aio, create))
        ),
    )


@pytest.fixture
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")


async def test_modal_backend_drives_modal_aio_api_through_trio_asyncio(
    monkeypatch: pytest.MonkeyPatch, fake_credentials: None
) -> None:
    """start() looks up the app, builds the image, resolves secrets; run() creates, feeds, reads."""
    import trio_asyncio

    fake = fake_modal_module()
    monkeypatch.setitem(sys.modules, "modal", fake)
    config = ModalConfig(app_name="arcflow-test", pip=["numpy"], secrets=["openai"], cpu=0.5)
    executor = ModalExecutor(["python", "/app/score.py"], config)
    async with trio_asyncio.open_loop():
        await executor.start()
        result = await executor.run(Scenario(id="m1", input={"mode": "pass"}), CONTEXT)
    assert fake.calls["lookup"] == ("arcflow-test", {"create_if_missing": True})
    assert fake.calls["pip"] == ("numpy",)
    args, kwargs = fake.calls["create"]
    assert args == ("python", "/app/score.py")
    assert kwargs["cpu"] == 0.5 and kwargs["timeout"] == 50
    assert [s.name for s in kwargs["secrets"]] == ["openai"]
    assert result.status is Status.PASSED, result
    assert result.output == "m1"
    assert result.executor["sandbox_id"] == "sb-real-looking"
    assert result.executor["exit_code"] == 0
    assert fake.calls["sandbox"].terminated is False


async def test_modal_resource_exhausted_is_retried_as_throttling(
    monkeypatch: pytest.MonkeyPatch, fake_credentials: None
) -> None:
    """modal.exception.ResourceExhaustedError from Sandbox.create is retried, then reported."""
    import trio_asyncio

    monkeypatch.setitem(sys.modules, "modal", fake_modal_module(throttle=True))
    config = ModalConfig(create_attempts=2, create_backoff_s=0.01, max_creations_per_second=100)
    executor = ModalExecutor(["true"], config)
    async with trio_asyncio.open_loop():
        await executor.start()
        result = await executor.run(Scenario(id="m1"), CONTEXT)
    assert result.error_type == "SandboxCreationThrottled"
    assert "rate limit exceeded" in result.error_message
    assert result.executor["creation_attempts"] == 2


async def test_modal_sandbox_timeout_maps_to_timeout_and_cancel_terminates(
    monkeypatch: pytest.MonkeyPatch, fake_credentials: None
) -> None:
    """SandboxTimeoutError from wait() is a timeout outcome; a cancelled run calls terminate.aio."""
    import trio_asyncio

    fake = fake_modal_module(lifetime_exceeded=True)
    monkeypatch.setitem(sys.modules, "modal", fake)
    executor = ModalExecutor(["true"], ModalConfig(image="python:3.12-slim"))
    async with trio_asyncio.open_loop():
        await executor.start()
        result = await executor.run(Scenario(id="m1", input={"mode": "pass"}), CONTEXT)
        assert result.status is Status.TIMEOUT
        assert fake.calls["registry"] == "python:3.12-slim"
        # Now a run that never finishes, cancelled from trio.
        fake.calls["sandbox"] = None
        with trio.move_on_after(1.0) as scope:
            await executor.run(Scenario(id="m2", input={"mode": "hang"}), CONTEXT)
        assert scope.cancelled_caught
    assert fake.calls["sandbox"].terminated is True


async def test_start_outside_trio_asyncio_loop_is_explained(
    monkeypatch: pytest.MonkeyPatch, fake_credentials: None
) -> None:
    """start() without a trio-asyncio loop says how to open one."""
    monkeypatch.setitem(sys.modules, "modal", fake_modal_module())
    with pytest.raises(RuntimeError, match="trio-asyncio loop"):
        await ModalExecutor(["true"]).start()


async def test_stdin_failure_does_not_hide_the_commands_result(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that exits without reading stdin is judged by its output; errors mention stdin."""
    original = FakeSandbox.send_input

    async def failing_send(self: FakeSandbox, data: bytes) -> None:
        await original(self, data)
        raise RuntimeError("stdin already closed")

    monkeypatch.setattr(FakeSandbox, "send_input", failing_send)
    executor = executor_with(FakeModalCloud())
    assert (await run_mode(executor, "pass")).status is Status.PASSED
    crashed = await run_mode(executor, "crash")
    assert crashed.error_type == "ProcessExitError"
    assert "writing the scenario to stdin failed: RuntimeError: stdin already closed" in (
        crashed.error_message or ""
    )
