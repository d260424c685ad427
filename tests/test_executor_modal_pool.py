"""The modal: executor's warm pool (ModalConfig.pool, --modal-pool) against the local control plane.

The real ``modal`` SDK drives a :class:`LocalModal` on 127.0.0.1 whose sandboxes are
local processes; the scenarios run in long-lived sandboxes with ``Sandbox.exec``.
Where the runtime is involved it writes to the session's real PostgreSQL.  Every
test's local control plane must end with nothing running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
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
from arcflow.cli import main  # noqa: E402
from arcflow.errors import ConfigError  # noqa: E402
from arcflow.executors import ExecutionContext  # noqa: E402
from arcflow.executors.modal import ModalConfig, ModalExecutor  # noqa: E402
from arcflow.models import ExecutionResult, Scenario, Status  # noqa: E402
from arcflow.testing.modal_server import LocalModal  # noqa: E402
from arcflow.testing.modal_server import Status as GrpcStatus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: Reads the scenario and acts on its input (as tests/test_executor_modal_sdk.py's script),
#: plus: leave a file behind and report whether one was there, and sleep while a file exists.
SCRIPT = r"""
import json, os, sys, time
raw = sys.stdin.buffer.read()
s = json.loads(raw)
i = s["input"]
time.sleep(i.get("sleep", 0))
while i.get("hold") and os.path.exists(i["hold"]):
    time.sleep(0.05)
mode = i.get("mode", "pass")
if mode == "not_utf8":
    sys.stdout.buffer.write(b'{"status": "passed", "output": "caf\xe9 \xff"}\n')
elif mode == "fail":
    print(json.dumps({"status": "failed", "score": 0.25}))
elif mode == "crash":
    sys.stderr.write("Traceback ...\nKeyError: 'answer'\n")
    sys.exit(2)
elif mode == "empty":
    pass
elif mode == "not_json":
    print("hello")
elif mode == "big":
    sys.stdout.write("x" * 5000)
elif mode == "bad_shape":
    print(json.dumps({"status": "maybe"}))
elif mode == "leave":
    seen = os.path.exists(i["path"])
    open(i["path"], "w").close()
    print(json.dumps({"output": {"seen": seen}}))
else:
    print(json.dumps({"status": "passed", "output": {"id": s["id"], "bytes": len(raw)}}))
"""
COMMAND = [sys.executable, "-c", SCRIPT]

#: Fast creations, for tests that are not about the rate.
FAST = {
    "max_creations_per_second": 2000.0,
    "initial_creations_per_second": 2000.0,
    "creation_burst": 2000,
    "max_starting": 256,
}


def config(**values: Any) -> ModalConfig:
    return ModalConfig(app_name="arcflow-pool-tests", **{**FAST, **values})


def context(*, timeout_s: float | None = 30, run_id: str = "r") -> ExecutionContext:
    return ExecutionContext(run_id=run_id, attempt=1, worker="w", timeout_s=timeout_s)


@pytest.fixture(autouse=True)
def _restore_modal_throttle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor sets MODAL_MAX_THROTTLE_WAIT=0 for the process: undo it after each test."""
    monkeypatch.setenv("MODAL_MAX_THROTTLE_WAIT", "0")


@pytest.fixture
def modal_env() -> Iterator[LocalModal]:
    with LocalModal() as env, env.environ():
        yield env
        assert env.wait_idle(15), [sb.sandbox_id for sb in env.statistics().live]


@contextlib.asynccontextmanager
async def running(executor: ModalExecutor) -> AsyncIterator[ModalExecutor]:
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
    """Every scenario through the executor, ``concurrency`` at once, timeouts as producers do."""
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


async def run_one(executor: ModalExecutor, scenario: Scenario, timeout_s: float = 30) -> Any:
    return (await run_all(executor, [scenario], concurrency=1, timeout_s=timeout_s))[scenario.id]


def recycled(executor: ModalExecutor) -> dict[str, float]:
    stats = executor.statistics()
    prefix = "modal_pool_recycled_"
    return {k[len(prefix) :]: v for k, v in stats.items() if k.startswith(prefix) and v}


# -- reuse and the contract ---------------------------------------------------------------------


async def test_scenarios_reuse_the_pools_sandboxes(modal_env: LocalModal) -> None:
    """60 scenarios at concurrency 12 through a pool of 4: at most 4 sandboxes are ever made,
    never more than 4 commands run at once, each sandbox runs many scenarios, all pass."""
    peak_execs = 0

    async def watch() -> None:
        nonlocal peak_execs
        while True:
            peak_execs = max(peak_execs, modal_env.statistics().execs_running)
            await trio.sleep(0.01)

    executor = ModalExecutor(COMMAND, config(pool=4))
    async with running(executor), trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        results = await run_all(
            executor,
            [Scenario(id=str(i), input={"sleep": 0.1}) for i in range(60)],
            concurrency=12,
        )
        stats = executor.statistics()
        nursery.cancel_scope.cancel()
    assert {r.status for r in results.values()} == {Status.PASSED}
    sandbox_ids = {r.executor["sandbox_id"] for r in results.values()}
    server = modal_env.statistics()
    assert server.creates == len(sandbox_ids) <= 4 < 60
    assert server.max_running <= 4 and peak_execs <= 4
    assert server.execs_started == 60
    assert all(r.executor["pooled"] is True for r in results.values())
    assert max(r.executor["sandbox_use"] for r in results.values()) >= 10
    assert stats["modal_pool_size"] == 4 and stats["modal_pool_uses"] == 60
    assert stats["modal_pool_created"] == stats["modal_creations"] == server.creates
    assert stats["modal_pool_busy"] == 0 and stats["modal_pool_recycled"] == 0


async def test_output_and_exit_code_contract_is_the_per_scenario_one(
    modal_env: LocalModal,
) -> None:
    """Every shape of command ending (pass, fail, crash, bytes not UTF-8, no output, not JSON,
    too much stdout, a wrong result shape, a 20 MiB scenario) maps to the same outcome in a pool
    as in a sandbox per scenario."""
    modes = ["pass", "fail", "crash", "not_utf8", "empty", "not_json", "big", "bad_shape"]
    scenarios = [Scenario(id=m, input={"mode": m}) for m in modes]
    scenarios.append(Scenario(id="huge", input={"blob": "x" * (20 * 1024 * 1024)}))

    def shape(result: ExecutionResult) -> tuple[Any, ...]:
        message = (result.error_message or "").replace("sandbox ", "")
        ex = result.executor
        return (
            result.status,
            result.score,
            result.output if not isinstance(result.output, dict) else result.output.get("bytes"),
            result.error_type,
            message.split(":")[0],
            ex["exit_code"],
            ex["stdout_bytes"],
            ex["stdout_truncated"],
        )

    shapes = {}
    for pool in (None, 2):
        executor = ModalExecutor(COMMAND, config(pool=pool, stdout_limit=4000))
        async with running(executor):
            results = await run_all(executor, scenarios, concurrency=2)
        shapes[pool] = {k: shape(r) for k, r in results.items()}
    assert shapes[2] == shapes[None]
    assert shapes[2]["crash"][3] == "ProcessExitError" and shapes[2]["crash"][5] == 2
    assert shapes[2]["not_utf8"][:3] == (Status.PASSED, None, "caf\ufffd \ufffd")
    assert shapes[2]["big"][3] == "StdoutTooLarge"
    assert shapes[2]["huge"][0] is Status.PASSED


async def test_a_scenario_sees_what_the_previous_one_left(modal_env: LocalModal) -> None:
    """The isolation given up, pinned: a file left by one scenario is there for the next one in
    the same sandbox (and not for the first one in a fresh sandbox)."""
    import tempfile

    # The local sandboxes share the host's file system: a path per test keeps them apart.
    path = os.path.join(tempfile.mkdtemp(), "left-behind")
    executor = ModalExecutor(COMMAND, config(pool=1))
    async with running(executor):
        first = await run_one(executor, Scenario(id="a", input={"mode": "leave", "path": path}))
        second = await run_one(executor, Scenario(id="b", input={"mode": "leave", "path": path}))
    assert (first.output, second.output) == ({"seen": False}, {"seen": True})
    assert first.executor["sandbox_id"] == second.executor["sandbox_id"]


# -- recycling ------------------------------------------------------------------------------------


async def test_sandbox_is_recycled_after_max_uses(modal_env: LocalModal) -> None:
    """With pool_max_uses=3, 7 scenarios one after another run in 3 sandboxes (3, 3, 1 uses);
    each used-up sandbox is terminated when it is given back."""
    executor = ModalExecutor(COMMAND, config(pool=1, pool_max_uses=3))
    async with running(executor):
        results = {str(i): await run_one(executor, Scenario(id=str(i))) for i in range(7)}
        stats = modal_env.statistics()
        assert stats.running == 1  # the third sandbox, idle
    uses = [results[str(i)].executor["sandbox_use"] for i in range(7)]
    ids = [results[str(i)].executor["sandbox_id"] for i in range(7)]
    assert uses == [1, 2, 3, 1, 2, 3, 1]
    assert len(set(ids[:3])) == len(set(ids[3:6])) == 1 and len(set(ids)) == 3
    assert stats.creates == 3
    assert recycled(executor) == {"max_uses": 2}


async def test_sandbox_is_recycled_after_an_error(modal_env: LocalModal) -> None:
    """A crashing command's sandbox is replaced: the next scenario runs in a fresh sandbox and
    passes; a failed (not errored) scenario keeps its sandbox."""
    executor = ModalExecutor(COMMAND, config(pool=1))
    async with running(executor):
        crash = await run_one(executor, Scenario(id="crash", input={"mode": "crash"}))
        after = await run_one(executor, Scenario(id="after"))
        failed = await run_one(executor, Scenario(id="fail", input={"mode": "fail"}))
        last = await run_one(executor, Scenario(id="last"))
    assert crash.status is Status.ERROR and after.status is Status.PASSED
    assert crash.executor["sandbox_id"] != after.executor["sandbox_id"]
    assert failed.status is Status.FAILED
    assert (
        failed.executor["sandbox_id"] == last.executor["sandbox_id"] == after.executor["sandbox_id"]
    )
    assert recycled(executor) == {"error": 1}


async def test_a_sandbox_that_died_is_replaced(modal_env: LocalModal) -> None:
    """A pooled sandbox that ends under the pool (terminated on Modal's side) makes its next
    scenario an error naming it, and is replaced: the scenario after that passes."""
    executor = ModalExecutor(COMMAND, config(pool=1))
    async with running(executor):
        first = await run_one(executor, Scenario(id="first"))
        await trio.to_thread.run_sync(modal_env.terminate_all)
        broken = await run_one(executor, Scenario(id="broken"))
        healed = await run_one(executor, Scenario(id="healed"))
    assert first.status is Status.PASSED
    assert broken.status is Status.ERROR and broken.error_type == "SandboxExecFailed"
    assert first.executor["sandbox_id"] in broken.error_message
    assert broken.executor["sandbox_finished"] is True
    assert healed.status is Status.PASSED
    assert healed.executor["sandbox_id"] != first.executor["sandbox_id"]
    assert recycled(executor) == {"died": 1}


async def test_a_command_that_cannot_start_is_an_error_and_recycles(modal_env: LocalModal) -> None:
    """An exec that does not start within create_timeout_s (a 5 s container start), or that Modal
    refuses, is a SandboxExecFailed error naming its sandbox, which is replaced each time."""
    modal_env.configure(start_delay=5)
    executor = ModalExecutor(COMMAND, config(pool=1, create_timeout_s=1))
    async with running(executor):
        slow = await run_one(executor, Scenario(id="slow"))
        modal_env.configure(start_delay=0)
        modal_env.fail_next(
            "TaskCommandRouter/TaskExecStart", GrpcStatus.FAILED_PRECONDITION, message="no exec"
        )
        refused = await run_one(executor, Scenario(id="refused"))
        ok = await run_one(executor, Scenario(id="ok"))
    assert (slow.status, slow.error_type) == (Status.ERROR, "SandboxExecFailed")
    assert "within 1s (ModalConfig.create_timeout_s)" in slow.error_message
    assert slow.executor["sandbox_id"] in slow.error_message
    assert (refused.error_type, ok.status) == ("SandboxExecFailed", Status.PASSED)
    assert "no exec" in refused.error_message
    ids = {r.executor["sandbox_id"] for r in (slow, refused, ok)}
    assert len(ids) == 3
    assert recycled(executor) == {"error": 2}


async def test_an_entrypoint_that_exits_is_named_in_the_error(modal_env: LocalModal) -> None:
    """A pool_entrypoint that does not keep running (the image lacks it, it exits) makes each
    scenario an error saying so, naming ModalConfig.pool_entrypoint."""
    executor = ModalExecutor(COMMAND, config(pool=1, pool_entrypoint=["/no/such/sleep"]))
    async with running(executor):
        result = await run_one(executor, Scenario(id="s"))
    assert result.status is Status.ERROR
    assert "ModalConfig.pool_entrypoint" in result.error_message, result.error_message
    assert recycled(executor) == {"died": 1}


async def test_timeout_kills_the_command_and_recycles_its_sandbox(modal_env: LocalModal) -> None:
    """A scenario past its timeout: its command is killed (its sandbox terminated at once), the
    sandbox replaced, and the next scenario passes in a new one."""
    executor = ModalExecutor(COMMAND, config(pool=1, terminate_timeout_s=5))
    async with running(executor):
        slow = await run_one(executor, Scenario(id="slow", input={"sleep": 60}), timeout_s=1.5)
        with trio.fail_after(5):
            while modal_env.statistics().execs_running:
                await trio.sleep(0.05)
        after = await run_one(executor, Scenario(id="after"))
    assert isinstance(slow, tuple) and slow[0] == "timeout"
    assert slow[1]["terminated"] is True
    assert after.status is Status.PASSED
    assert after.executor["sandbox_id"] != slow[1]["sandbox_id"]
    assert recycled(executor) == {"timeout": 1}


async def test_sandbox_near_the_end_of_its_lifetime_is_replaced_before_it_is_lent(
    modal_env: LocalModal,
) -> None:
    """With a 6 s lifetime, 1 s margin and 2 s attempt timeout, a sandbox is lent only in its
    first 3 s: scenarios of 0.4 s for 5 s use two sandboxes, none is cut off by its lifetime."""
    executor = ModalExecutor(COMMAND, config(pool=1, timeout_s=6, pool_lifetime_margin_s=1))
    results = {}
    async with running(executor):
        start = trio.current_time()
        i = 0
        while trio.current_time() - start < 5:
            results[i] = await run_one(executor, Scenario(id=str(i), input={"sleep": 0.4}), 2)
            i += 1
    assert {r.status for r in results.values()} == {Status.PASSED}
    assert len({r.executor["sandbox_id"] for r in results.values()}) == 2
    assert recycled(executor) == {"lifetime": 1}
    assert modal_env.statistics().exits.get("timeout", 0) == 0


# -- the end of a run, Ctrl-C, a crash -----------------------------------------------------------


async def test_pooled_sandboxes_are_terminated_at_the_end(
    modal_env: LocalModal, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Through the runtime: the pool's sandboxes run until the run ends, then all are
    terminated; the outcomes are stored with the pooled sandboxes' ids."""
    executor = ModalExecutor(COMMAND, config(pool=3))
    async with arcflow.Runtime(
        executor, dsn, run_id=run_id, concurrency=6, data_dir=tmp_path
    ) as rt:
        for i in range(30):
            await rt.submit(Scenario(id=str(i), input={"sleep": 0.05}))
        with trio.fail_after(60):
            while rt.statistics().completed < 30:
                await trio.sleep(0.05)
        assert modal_env.statistics().running == 3
        assert rt.statistics().executor["modal_pool_sandboxes"] == 3
    assert modal_env.statistics().running == 0
    # Terminated by the pool itself, not found by the end-of-run sweep afterwards.
    assert executor.statistics()["modal_orphans_terminated"] == 0
    assert executor.statistics()["modal_pool_sandboxes"] == 0
    rows = await db_query(
        "SELECT status, executor->>'sandbox_id' AS sb FROM arcflow.outcomes WHERE run_id = $1",
        run_id,
    )
    assert len(rows) == 30 and {r["status"] for r in rows} == {"passed"}
    assert len({r["sb"] for r in rows}) == 3


async def test_stop_at_concurrency_1000_with_a_pool_of_50(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Ctrl-C (second stop: cancel) with 50 commands running and 950 attempts waiting for a
    sandbox: the run ends promptly, every scenario is recorded, no sandbox or command is left."""
    hold = tmp_path / "hold"
    hold.touch()
    with LocalModal() as env, env.environ():
        executor = ModalExecutor(COMMAND, config(pool=50, terminate_timeout_s=10))
        grace = 1.0
        with trio.fail_after(300):
            async with arcflow.Runtime(
                executor, dsn, run_id=run_id, concurrency=1000, grace=grace, data_dir=tmp_path
            ) as rt:
                for i in range(1000):
                    await rt.submit(Scenario(id=str(i), input={"hold": str(hold)}))
                with trio.fail_after(120):
                    while env.statistics().execs_running < 50:
                        await trio.sleep(0.1)
                assert executor.statistics()["modal_pool_waiting"] == 950
                stopped_at = trio.current_time()
                rt.request_stop()
        took = trio.current_time() - stopped_at
        server = env.statistics()
        assert took <= grace + 20, took
        assert (server.running, server.execs_running) == (0, 0)
        assert server.creates == 50
        assert env.wait_idle(5)
    rows = await db_query(
        "SELECT status, count(*) AS n FROM arcflow.outcomes WHERE run_id = $1 GROUP BY 1",
        run_id,
    )
    assert {r["status"]: r["n"] for r in rows} == {"cancelled": 1000}


async def test_resume_after_sigkill_terminates_the_dead_runs_pooled_sandboxes(
    modal_env: LocalModal, dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """A CLI run with --modal-pool 3 is SIGKILLed while its scenarios run: its pooled sandboxes
    keep running; `--resume RUN_ID` terminates them before it starts, then finishes the run in
    a pool of its own, leaving nothing running."""
    hold = tmp_path / "hold"
    hold.touch()
    script = tmp_path / "score.py"
    script.write_text(SCRIPT)
    scenarios = tmp_path / "s.jsonl"
    scenarios.write_text(
        "".join(json.dumps({"id": str(i), "input": {"hold": str(hold)}}) + "\n" for i in range(6))
    )
    args = [
        sys.executable,
        "-m",
        "arcflow",
        "run",
        str(scenarios),
        "--executor",
        f"modal:{sys.executable} {script}",
        "--modal-pool",
        "3",
        "--modal-app",
        "arcflow-pool-tests",
        "--modal-initial-creation-rate",
        "100",
        "--concurrency",
        "6",
        "--db",
        dsn,
        "--data-dir",
        str(tmp_path),
        "--json",
    ]
    env = {**os.environ, **modal_env.env}
    proc = subprocess.Popen(  # noqa: ASYNC220 - killed below, never waited on blocking
        [*args, "--run-id", run_id],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with trio.fail_after(60):
            while modal_env.statistics().execs_running < 3:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                await trio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(proc.wait)
    left = {sb.sandbox_id for sb in modal_env.statistics().live}
    assert len(left) == 3
    assert all(sb.tags.get("arcflow-pool") == "1" for sb in modal_env.statistics().live)
    assert all(sb.tags.get("arcflow-run") == run_id for sb in modal_env.statistics().live)
    hold.unlink()
    resumed = await trio.run_process(
        [*args, "--resume", run_id], cwd=ROOT, env=env, capture_stdout=True, capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert "terminated 3 of 3 sandbox(es) still running from before" in resumed.stderr.decode()
    assert not left & {sb.sandbox_id for sb in modal_env.statistics().live}
    assert modal_env.statistics().running == 0
    rows = await db_query(
        "SELECT DISTINCT scenario_id FROM arcflow.outcomes WHERE run_id = $1 AND status = 'passed'",
        run_id,
    )
    assert len(rows) == 6


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"pool": 0}, "pool=0"),
        ({"pool": -2}, "pool=-2"),
        ({"pool_max_uses": 0}, "pool_max_uses=0"),
        ({"pool_lifetime_margin_s": -1}, "pool_lifetime_margin_s=-1"),
        ({"pool_entrypoint": ()}, "pool_entrypoint=()"),
    ],
)
def test_bad_pool_config_is_refused_naming_the_field(values: dict[str, Any], name: str) -> None:
    """ModalConfig refuses a pool of 0 or fewer, max uses 0, a negative margin, no entrypoint."""
    with pytest.raises(ConfigError, match=f"invalid {name}"):
        ModalConfig(**values)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--modal-pool", "0"], "--modal-pool=0"),
        (["--modal-pool", "-1"], "--modal-pool=-1"),
        (["--modal-pool-max-uses", "0"], "--modal-pool-max-uses=0"),
    ],
)
def test_bad_pool_flags_exit_2_naming_the_option(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --modal-pool 0` (or negative, or --modal-pool-max-uses 0) exits 2 naming the option."""
    code = main(["run", str(ROOT / "examples/quickstart.jsonl"), "--executor", "modal:x", *flags])
    assert code == 2
    assert named in capsys.readouterr().err


def test_pool_settings_reach_the_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    """--modal-pool / ARCFLOW_MODAL_POOL and --modal-pool-max-uses build a pooled executor."""
    from arcflow.settings import load_settings

    monkeypatch.setenv("ARCFLOW_MODAL_POOL", "7")
    settings = load_settings({"executor": "modal:python x.py", "modal_pool_max_uses": 9})
    executor = settings.make_executor()
    assert isinstance(executor, ModalExecutor) and executor.pool is not None
    assert (executor.config.pool, executor.config.pool_max_uses) == (7, 9)
    assert executor.statistics()["modal_pool_size"] == 7
    assert attrs.asdict(executor.config)["pool"] == 7  # recorded with the run (describe())
