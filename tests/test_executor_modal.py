"""The modal: executor's own logic, in isolation (no Modal, no SDK): on trio's mock clock.

A fake :class:`SandboxRunner` stands in for Modal (a token bucket of creations, refusals
with or without a retry-after hint, outages, a scripted report per scenario), so the
creation rate (AIMD), the retries, the starting cap and the outcome mapping are tested
deterministically.  What the real SDK does against a local control plane is in
tests/test_executor_modal_sdk.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from arcflow.errors import ConfigError, ExecutorSpecError
from arcflow.executors import ExecutionContext, parse_executor
from arcflow.executors.modal import (
    CreationRate,
    ModalConfig,
    ModalExecutor,
    SandboxCreationThrottled,
    SandboxCreationUnavailable,
    SandboxReport,
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


@attrs.define
class FakeSandbox:
    object_id: str
    request: SandboxRequest
    stdin: bytes | None = None


class FakeCloud:
    """A stand-in for Modal: creations through a token bucket (``rate``/s, ``burst``), refused
    with a retry-after hint (``hint=True``) or without; an outage until ``down_until``."""

    def __init__(
        self,
        *,
        rate: float = math.inf,
        burst: float = 1.0,
        hint: bool = True,
        create_delay: float = 0.0,
        run_time: float = 0.0,
        down_until: float = -math.inf,
        error: Exception | None = None,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.hint = hint
        self.create_delay = create_delay
        self.run_time = run_time
        self.down_until = down_until
        self.error = error
        self._tokens = burst
        self._refilled = 0.0
        self.calls: list[float] = []
        self.created: list[float] = []
        self.refusals = 0
        self.sandboxes: list[FakeSandbox] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def _take(self, now: float) -> float | None:
        """A token, or the seconds until the next one."""
        if math.isinf(self.rate):
            return None
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / self.rate

    async def create(self, request: SandboxRequest) -> FakeSandbox:
        now = trio.current_time()
        self.calls.append(now)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.create_delay)
            if self.error is not None:
                raise self.error
            if now < self.down_until:
                raise SandboxCreationUnavailable("ServiceError: UNAVAILABLE")
            wait = self._take(now)
            if wait is not None:
                self.refusals += 1
                raise SandboxCreationThrottled(
                    "ResourceExhaustedError: sandbox creation rate limit",
                    retry_after=wait if self.hint else None,
                )
            self.created.append(now)
            sandbox = FakeSandbox(f"sb-fake{len(self.sandboxes)}", request)
            self.sandboxes.append(sandbox)
            return sandbox
        finally:
            self.in_flight -= 1

    async def finish(self, sandbox: Any, stdin: bytes, report: SandboxReport) -> None:
        sandbox.stdin = stdin
        scenario = json.loads(stdin)
        await trio.sleep(self.run_time)
        mode = scenario["input"].get("mode", "pass")
        if mode == "pass":
            report.stdout.feed(
                json.dumps({"status": "passed", "score": 0.9, "output": scenario["id"]})
            )
            report.exit_code = 0
        elif mode == "fail":
            report.stdout.feed(json.dumps({"status": "failed", "score": 0.1}))
            report.exit_code = 0
        elif mode == "crash":
            report.stderr.feed("Traceback ...\nKeyError: 'answer'\n")
            report.exit_code = 2
        elif mode == "not_utf8":
            report.stdout.feed(b'{"status": "passed", "output": "caf\xe9"}')
            report.exit_code = 0
        elif mode == "lifetime":
            report.lifetime_exceeded = True
            report.exit_code = 124
        elif mode == "lost":
            report.error = ("ModalContactLost", "lost contact with Modal")
            report.terminate_pending = True
        elif mode == "stdin_broken":
            report.input_error = "InvalidError: injected"
            report.stderr.feed("JSONDecodeError\n")
            report.exit_code = 1
        elif mode == "hang":
            try:
                await trio.sleep_forever()
            finally:
                report.terminated = True
        else:
            raise AssertionError(mode)


def executor_with(cloud: FakeCloud, **config: Any) -> ModalExecutor:
    return ModalExecutor(
        ["python", "/app/score.py"], ModalConfig(**config), runner=cloud, rng=random.Random(7)
    )


async def run_mode(executor: ModalExecutor, mode: str, sid: str = "a") -> ExecutionResult:
    return await executor.run(Scenario(id=sid, input={"mode": mode}), CONTEXT)


async def run_many(
    executor: ModalExecutor, n: int, mode: str = "pass", limit: int = 10_000
) -> list[ExecutionResult]:
    results: list[ExecutionResult] = []
    slots = trio.CapacityLimiter(limit)

    async def one(i: int) -> None:
        async with slots:
            results.append(await run_mode(executor, mode, sid=str(i)))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return results


# -- credentials, imports, spec ---------------------------------------------------------


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
    with pytest.raises(ConfigError, match="invalid stdin_chunk_bytes"):
        ModalConfig(stdin_chunk_bytes=32 * 1024 * 1024)
    assert ModalConfig(max_creations_per_second=2).initial_rate == 2  # never above the ceiling
    assert ModalConfig().initial_rate == 5.0


# -- outcome mapping ----------------------------------------------------------------------


async def test_sandbox_result_maps_like_the_process_executor(autojump_clock: Any) -> None:
    """Sandbox stdout JSON becomes the result; details carry the sandbox id and exit code."""
    cloud = FakeCloud()
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
        json.loads(cloud.sandboxes[0].stdin or b"")
        == Scenario(id="s1", input={"mode": "pass"}).to_json()
    )
    failed = await run_mode(executor, "fail")
    assert (failed.status, failed.score) == (Status.FAILED, 0.1)


async def test_sandbox_nonzero_exit_is_an_error_and_bad_bytes_are_replaced(
    autojump_clock: Any,
) -> None:
    """Non-zero exit is ProcessExitError with the stderr tail; bytes not UTF-8 become U+FFFD."""
    executor = executor_with(FakeCloud())
    crashed = await run_mode(executor, "crash")
    assert crashed.status is Status.ERROR
    assert crashed.error_type == "ProcessExitError"
    assert "sandbox command exited with code 2" in (crashed.error_message or "")
    assert "KeyError: 'answer'" in (crashed.error_message or "")
    odd = await run_mode(executor, "not_utf8")
    assert (odd.status, odd.output) == (Status.PASSED, "caf\ufffd")


async def test_lifetime_lost_contact_and_stdin_errors_are_reported(autojump_clock: Any) -> None:
    """Lifetime reached: timeout; contact lost: error keeping the sandbox id; a stdin error
    is named in the error message."""
    executor = executor_with(FakeCloud(), timeout_s=60)
    lifetime = await run_mode(executor, "lifetime")
    assert (lifetime.status, lifetime.error_type) == (Status.TIMEOUT, "SandboxTimeout")
    assert "60s" in (lifetime.error_message or "")
    lost = await run_mode(executor, "lost")
    assert (lost.status, lost.error_type) == (Status.ERROR, "ModalContactLost")
    assert lost.executor["sandbox_id"] == "sb-fake1"
    assert lost.executor["terminate_pending"] is True
    broken = await run_mode(executor, "stdin_broken")
    assert broken.error_type == "ProcessExitError"
    assert "writing the scenario to stdin failed: InvalidError: injected" in (
        broken.error_message or ""
    )
    assert broken.executor["stdin_error"] == "InvalidError: injected"


async def test_sandbox_lifetime_follows_the_attempt_timeout(autojump_clock: Any) -> None:
    """Without timeout_s the sandbox lives for the attempt's timeout plus a margin."""
    cloud = FakeCloud()
    await run_mode(executor_with(cloud), "pass")
    assert cloud.sandboxes[0].request.timeout_s == 20 + 30
    await run_mode(executor_with(cloud, timeout_s=7), "pass")
    assert cloud.sandboxes[1].request.timeout_s == 7


async def test_sandboxes_are_tagged_with_run_scenario_attempt_and_process(
    autojump_clock: Any,
) -> None:
    """Each creation carries the run, scenario, attempt, this process's tag and a try key."""
    cloud = FakeCloud()
    executor = executor_with(cloud)
    context = ExecutionContext(run_id="run-7", attempt=3, worker="w")
    await executor.run(Scenario(id="s" * 300, input={"mode": "pass"}), context)
    await executor.run(Scenario(id="b", input={"mode": "pass"}), context)
    first, second = (sb.request.tags for sb in cloud.sandboxes)
    assert first["arcflow"] == "1"
    assert (first["arcflow-run"], first["arcflow-attempt"]) == ("run-7", "3")
    assert first["arcflow-client"] == executor.client_tag == second["arcflow-client"]
    assert len(first["arcflow-scenario"]) <= 200 and first["arcflow-scenario"].startswith("sss")
    assert first["arcflow-try"] != second["arcflow-try"]


async def test_cancelled_run_keeps_the_sandbox_id(autojump_clock: Any) -> None:
    """A run cancelled while its sandbox runs leaves the sandbox id and terminated in the details."""
    executor = executor_with(FakeCloud())
    context = ExecutionContext(run_id="r", attempt=1, worker="w")
    with trio.move_on_after(5) as scope:
        await executor.run(Scenario(id="h", input={"mode": "hang"}), context)
    assert scope.cancelled_caught
    assert context.details["sandbox_id"] == "sb-fake0"
    assert context.details["terminated"] is True
    assert executor.statistics()["modal_sandboxes_running"] == 0


# -- the creation rate ----------------------------------------------------------------------


def assert_within_rate(times: list[float], rate: float, burst: int) -> None:
    """Every window [t_i, t_j] holds at most burst + rate * (t_j - t_i) calls."""
    times = sorted(times)
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1e-9, (i, j, times)


async def test_creations_never_exceed_the_ceiling(autojump_clock: Any) -> None:
    """With --modal-creation-rate 4, 20 producers at once never create faster than 4/s."""
    cloud = FakeCloud()
    results = await run_many(executor_with(cloud, max_creations_per_second=4), 20)
    assert all(r.status is Status.PASSED for r in results)
    assert_within_rate(cloud.calls, rate=4, burst=1)
    assert cloud.calls[-1] - cloud.calls[0] == pytest.approx(19 / 4)


async def test_rate_grows_while_creations_succeed(autojump_clock: Any) -> None:
    """With no ceiling and an account that allows anything, 600 creations take a few seconds,
    not 600 / 5 = 120 (the rate doubles while the bucket, not demand, holds creations back)."""
    cloud = FakeCloud()
    executor = executor_with(cloud)
    start = trio.current_time()
    await run_many(executor, 600)
    elapsed = trio.current_time() - start
    assert elapsed < 6
    assert executor.rate.rate > 100
    assert executor.rate.refusals == 0


async def test_rate_stays_put_without_demand(autojump_clock: Any) -> None:
    """Creations that never wait for the bucket do not raise the rate (no growth without demand)."""
    executor = executor_with(FakeCloud())
    for i in range(20):
        await run_mode(executor, "pass", sid=str(i))
        await trio.sleep(1)
    assert executor.rate.rate == 5.0


@pytest.mark.parametrize(
    ("limit", "burst", "hint"),
    [(30, 30, True), (30, 2000, True), (5, 5, True), (40, 40, True), (30, 30, False)],
)
async def test_adaptive_rate_finds_the_accounts_limit(
    autojump_clock: Any, limit: float, burst: float, hint: bool
) -> None:
    """Against an account allowing ``limit`` creations/s (the rates real accounts report), 600
    instant scenarios at default settings run at >= 0.8 of the limit, none fails, and the rate
    ends within a factor 2 of the limit; with a 2,000 burst, faster still."""
    cloud = FakeCloud(rate=limit, burst=burst, hint=hint)
    executor = executor_with(cloud)
    start = trio.current_time()
    results = await run_many(executor, 600, limit=200)
    elapsed = trio.current_time() - start
    assert all(r.status is Status.PASSED for r in results)
    assert 600 / elapsed >= 0.8 * limit, (600 / elapsed, executor.rate)
    if burst <= limit:
        assert cloud.refusals > 0
        assert executor.statistics()["modal_creation_refusals"] == cloud.refusals
        assert limit / 2 <= executor.rate.rate <= 2 * limit


async def test_refusal_lowers_the_rate_once_per_burst_and_honours_the_hint(
    autojump_clock: Any,
) -> None:
    """Refusals arriving together lower the rate once; nothing is acquired before the hint."""
    rate = CreationRate(40.0, ceiling=100)
    for _ in range(10):
        rate.refused(retry_after=2.0)
    assert rate.rate == pytest.approx(28.0)
    assert (rate.decreases, rate.refusals, rate.slow_start) == (1, 10, False)
    start = trio.current_time()
    await rate.acquire()
    assert trio.current_time() - start == pytest.approx(2.0)
    await trio.sleep(1.0)
    rate.refused()
    assert rate.rate == pytest.approx(28.0 * 0.7)


async def test_refusal_brings_an_overshot_rate_down_to_what_went_through(
    autojump_clock: Any,
) -> None:
    """A rate of 160/s of which only 30/s went through over the last second drops to 30 at the
    first refusal, not to 112 (a slow start that overshot comes back in one step)."""
    rate = CreationRate(160.0)
    for _ in range(30):
        rate.succeeded()
        await trio.sleep(1 / 30)
    rate.refused(retry_after=0.01)
    assert rate.rate == pytest.approx(30.0, rel=0.05)
    await trio.sleep(1.0)
    rate.refused()  # nothing went through in the last second: the plain decrease
    assert rate.rate == pytest.approx(rate.refused_at_rate * 0.7)


async def test_a_raised_rate_reaches_waiters_already_in_line(autojump_clock: Any) -> None:
    """Producers queued at 1/s are served at the new rate once it is raised (no slot reserved
    at the old rate), first come, first served."""
    rate = CreationRate(1.0, ceiling=100)
    order: list[int] = []

    async def take(i: int) -> None:
        await rate.acquire()
        order.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(11):
            nursery.start_soon(take, i)
            await trio.lowlevel.checkpoint()
        await trio.sleep(0.5)
        rate.rate = 100.0
        rate._wake()
    assert order == list(range(11))
    assert trio.current_time() < 1.2


async def test_cancelled_waiter_takes_no_slot(autojump_clock: Any) -> None:
    """A producer cancelled while it waits for a slot leaves it to the next one."""
    rate = CreationRate(1.0)
    await rate.acquire()
    with trio.move_on_after(0.5):
        await rate.acquire()
    start = trio.current_time()
    await rate.acquire()
    assert trio.current_time() - start == pytest.approx(0.5)


# -- retries, starting cap --------------------------------------------------------------------


async def test_refusals_are_retried_until_create_retry_s(autojump_clock: Any) -> None:
    """An account that never admits a creation: refused again and again for create_retry_s,
    then an error naming the refusals (a refusal without hint backs off)."""
    cloud = FakeCloud(rate=1e-9, burst=0, hint=False)
    executor = executor_with(cloud, create_retry_s=60)
    result = await run_mode(executor, "pass")
    assert result.status is Status.ERROR
    assert result.error_type == "SandboxCreationThrottled"
    assert "refused to create the sandbox" in (result.error_message or "")
    assert result.executor["sandbox_id"] is None
    assert 60 <= trio.current_time() <= 75
    assert 5 < len(cloud.calls) < 200


async def test_outage_is_retried_with_backoff_then_creation_goes_on(autojump_clock: Any) -> None:
    """A control plane unreachable for 40 s: creations are retried with backoff and then succeed;
    past outage_retry_s an attempt gives up with ModalUnavailable."""
    cloud = FakeCloud(down_until=40)
    executor = executor_with(cloud)
    results = await run_many(executor, 10)
    assert all(r.status is Status.PASSED for r in results)
    assert min(cloud.created) >= 40
    assert all(r.executor["creation_unavailable"] >= 1 for r in results)
    assert executor.rate.rate == 5.0 or executor.rate.refusals == 0  # an outage is no rate signal
    gave_up = executor_with(FakeCloud(down_until=1e9), outage_retry_s=30)
    result = await run_mode(gave_up, "pass")
    assert (result.status, result.error_type) == (Status.ERROR, "ModalUnavailable")
    assert "ModalConfig.outage_retry_s" in (result.error_message or "")


async def test_other_creation_errors_are_not_retried(autojump_clock: Any) -> None:
    """An error other than a refusal or an outage fails the attempt at once, with its message."""
    cloud = FakeCloud(error=ValueError("image 'nope' not found"))
    result = await run_mode(executor_with(cloud), "pass")
    assert (result.status, result.error_type) == (Status.ERROR, "ValueError")
    assert "image 'nope' not found" in (result.error_message or "")
    assert len(cloud.calls) == 1


async def test_sandboxes_starting_at_once_are_capped(autojump_clock: Any) -> None:
    """No more than max_starting creations are in flight at any moment."""
    cloud = FakeCloud(create_delay=10)
    executor = executor_with(cloud, max_starting=3, max_creations_per_second=1000)
    results = await run_many(executor, 12)
    assert len(results) == 12
    assert cloud.max_in_flight == 3


async def test_a_fleet_share_divides_the_rate_ceiling_and_the_starting_cap(
    autojump_clock: Any,
) -> None:
    """share_limits(4) (one of four workers): a quarter of the ceiling and of the starting cap."""
    cloud = FakeCloud(create_delay=10)
    executor = executor_with(cloud, max_starting=8, max_creations_per_second=40)
    executor.share_limits(4)
    assert executor.rate.ceiling == 10 and executor.rate.rate <= 10
    results = await run_many(executor, 24)
    assert len(results) == 24 and cloud.max_in_flight == 2
    stats = executor.statistics()
    assert stats["modal_fleet_share"] == 0.25 and stats["modal_starting_limit"] == 2
    # Creations went at no more than the share of the ceiling.
    assert_within_rate(cloud.calls, 10, burst=executor.rate.burst)
    executor.share_limits(1)  # the others left: the whole budget again
    assert executor.rate.ceiling == 40 and "modal_fleet_share" not in executor.statistics()


async def test_statistics_show_rate_refusals_and_running(autojump_clock: Any) -> None:
    """statistics() reports the current rate, creations, refusals and sandboxes running."""
    cloud = FakeCloud(rate=10, burst=1, run_time=30)
    executor = executor_with(cloud)
    seen: dict[str, float] = {}

    async def watch() -> None:
        await trio.sleep(20)
        seen.update(executor.statistics())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await run_many(executor, 50)
    assert seen["modal_sandboxes_running"] > 0
    final = executor.statistics()
    assert final["modal_creations"] == 50
    assert final["modal_creation_refusals"] == cloud.refusals > 0
    assert final["modal_creation_rate"] == pytest.approx(executor.rate.rate, rel=1e-3)
    assert final["modal_sandboxes_running"] == 0


async def test_runtime_shows_the_creation_rate_in_progress_and_metrics(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """Through the runtime, the executor's numbers reach statistics(), the live display's
    executor line and the arcflow_executor_* metrics."""
    import arcflow
    from arcflow.metrics import stats_families
    from arcflow.progress import ProgressModel

    cloud = FakeCloud(rate=20, burst=1)
    executor = executor_with(cloud)
    async with arcflow.Runtime(
        executor, dsn, run_id=run_id, concurrency=10, data_dir=tmp_path
    ) as rt:
        for i in range(30):
            await rt.submit(Scenario(id=str(i), input={"mode": "pass"}))
    stats = rt.statistics()
    assert stats.executor["modal_creations"] == 30
    assert stats.executor["modal_creation_refusals"] == cloud.refusals
    line = {f.label: f.text for f in ProgressModel(total=30).fields(stats)}["executor"]
    assert "modal creation rate" in line and "modal creation refusals" in line
    families = {f.name: f for f in stats_families(stats)}
    rate = families["arcflow_executor_modal_creation_rate"]
    assert rate.samples[0].value == pytest.approx(executor.rate.rate, rel=1e-3)


def test_sweep_command_without_credentials_says_how_to_log_in(no_modal_credentials: Path) -> None:
    """`python -m arcflow modal sweep RUN_ID` with no Modal token exits 2 saying how to log in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "arcflow", "modal", "sweep", "some-run"],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(no_modal_credentials)},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "modal token new" in proc.stderr
