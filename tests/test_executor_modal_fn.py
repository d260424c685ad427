"""The modal-fn: executor with the real ``modal`` SDK against the local control plane.

Every test drives :class:`ModalFnExecutor` (through ``arcflow.Runtime`` with a real
PostgreSQL, or the CLI in a subprocess) against a :class:`LocalModal` on 127.0.0.1 whose
deployed functions are local Python handlers: spawns, long polls for outputs, cancels,
refusals and remote exceptions go over the SDK's real wire protocol.  The fixture fails a
test that leaves a function call running.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import import_or_skip

modal = import_or_skip("modal")

import arcflow  # noqa: E402
from arcflow.executors import ExecutionContext, parse_executor  # noqa: E402
from arcflow.executors.modal_fn import (  # noqa: E402
    CallRefused,
    CallReport,
    CallRequest,
    CallUnavailable,
    ModalFnConfig,
    ModalFnExecutor,
)
from arcflow.models import Scenario, Status  # noqa: E402
from arcflow.settings import load_settings  # noqa: E402
from arcflow.testing.modal_server import LocalModal  # noqa: E402
from arcflow.testing.modal_server import Status as GrpcStatus  # noqa: E402
from arcflow.testing.modal_server.fixture import make_fixture  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP, FN = "arcflow-tests", "score"

modal_env = make_fixture(idle_timeout=10)


@pytest.fixture(autouse=True)
def _restore_modal_throttle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor sets MODAL_MAX_THROTTLE_WAIT=0 for the process: undo it after each test."""
    monkeypatch.setenv("MODAL_MAX_THROTTLE_WAIT", "0")


def score(scenario: dict[str, Any]) -> Any:
    """The deployed function of these tests: acts on the scenario's input."""
    i = scenario["input"]
    time.sleep(i.get("sleep", 0))
    mode = i.get("mode", "pass")
    if mode == "none":
        return None
    if mode == "fail":
        return {"status": "failed", "score": 0.25, "output": {"why": "wrong"}}
    if mode == "usage":
        return {"score": 1, "usage": {"input_tokens": 3, "output_tokens": 4}}
    if mode == "bad":
        return {"verdict": "yes"}
    if mode == "raise":
        return _deep(3)
    return {"status": "passed", "score": 1.0, "output": {"id": scenario["id"]}}


def _deep(n: int) -> Any:
    if n == 0:
        raise KeyError("answer")
    return _deep(n - 1)


async def hang(scenario: dict[str, Any]) -> None:
    """A call that never ends by itself (cancelled by Modal's side only)."""
    await _forever()


async def _forever() -> None:
    import asyncio

    await asyncio.Event().wait()


def register(env: LocalModal, handler: Any = score, **kwargs: Any) -> None:
    env.register_function(APP, FN, handler, **{"max_containers": 10, "max_inputs": 100, **kwargs})


async def rows(db_query: Any, run_id: str) -> dict[str, Any]:
    found = await db_query(
        "SELECT scenario_id, attempt, status, score, output, error_type, error_message, "
        "executor, usage FROM arcflow.outcomes WHERE run_id = $1 ORDER BY scenario_id, attempt",
        run_id,
    )
    out: dict[str, Any] = {}
    for r in found:
        row = dict(r)
        for col in ("output", "executor", "usage"):
            if isinstance(row[col], str):
                row[col] = json.loads(row[col])
        out[r["scenario_id"]] = row
    return out


async def run_scenarios(
    executor: Any, dsn: str, run_id: str, tmp_path: Path, scenarios: list[Scenario], **kw: Any
) -> Any:
    async with arcflow.Runtime(
        executor, dsn, run_id=run_id, data_dir=tmp_path, **{"concurrency": 20, **kw}
    ) as rt:
        for s in scenarios:
            await rt.submit(s)
    return rt


# -- what a call does ---------------------------------------------------------------------------


async def test_scenarios_pass_through_the_deployed_function(
    modal_env: LocalModal, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Each scenario is one spawned call given the scenario dict; its result is stored with its fc- id;
    the run's call ids are deleted when it ends normally."""
    register(modal_env)
    scenarios = [Scenario(id=f"s{i}", input={"n": i}, tags=("t",)) for i in range(30)]
    await run_scenarios(f"modal-fn:{APP}/{FN}", dsn, run_id, tmp_path, scenarios)
    got = await rows(db_query, run_id)
    assert set(got) == {s.id for s in scenarios}
    ids = set()
    for sid, row in got.items():
        assert row["status"] == "passed", row
        assert row["output"] == {"id": sid}
        assert row["executor"]["kind"] == "modal-fn"
        assert row["executor"]["function_call_id"].startswith("fc-")
        ids.add(row["executor"]["function_call_id"])
    assert len(ids) == 30
    assert modal_env.statistics().functions.calls_started == {FN: 30}
    # A run that ended normally leaves nothing in flight: its call ids are gone.
    assert not await db_query("SELECT 1 FROM arcflow.modal_calls WHERE run_id = $1", run_id)


async def test_results_map_like_a_python_function(
    modal_env: LocalModal, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """None passes, failed/score/output and usage are stored, a wrong shape is InvalidResult."""
    register(modal_env)
    modes = ["none", "fail", "usage", "bad"]
    await run_scenarios(
        f"modal-fn:{APP}/{FN}",
        dsn,
        run_id,
        tmp_path,
        [Scenario(id=m, input={"mode": m}) for m in modes],
    )
    got = await rows(db_query, run_id)
    assert (got["none"]["status"], got["none"]["score"]) == ("passed", None)
    assert (got["fail"]["status"], got["fail"]["score"]) == ("failed", 0.25)
    assert got["fail"]["output"] == {"why": "wrong"}
    assert got["usage"]["status"] == "passed"
    assert got["usage"]["usage"]["input_tokens"] == 3
    assert (got["bad"]["status"], got["bad"]["error_type"]) == ("error", "InvalidResult")


async def test_remote_exception_is_an_error_with_its_type_and_traceback(
    modal_env: LocalModal, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A function that raises: status error, the remote exception's type and the end of its traceback."""
    register(modal_env)
    await run_scenarios(
        f"modal-fn:{APP}/{FN}",
        dsn,
        run_id,
        tmp_path,
        [Scenario(id="boom", input={"mode": "raise"})],
        attempts=1,
    )
    row = (await rows(db_query, run_id))["boom"]
    assert row["status"] == "error"
    assert row["error_type"] == "KeyError"
    assert "answer" in row["error_message"]
    assert "_deep" in row["error_message"]  # the remote frames
    assert row["executor"]["function_call_id"].startswith("fc-")


# -- time and cancellation ----------------------------------------------------------------------


async def test_timeout_cancels_the_call_on_modals_side(
    modal_env: LocalModal, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """An attempt past its timeout is a timeout outcome with its call id, and the call is cancelled
    on Modal's side: nothing is left running."""
    register(modal_env, hang)
    await run_scenarios(
        f"modal-fn:{APP}/{FN}",
        dsn,
        run_id,
        tmp_path,
        [Scenario(id=f"slow{i}", timeout_s=0.5) for i in range(5)],
        attempts=1,
    )
    got = await rows(db_query, run_id)
    for row in got.values():
        assert row["status"] == "timeout", row
        assert row["executor"]["function_call_id"].startswith("fc-")
        assert row["executor"].get("cancelled") is True, row["executor"]
    fstats = modal_env.statistics().functions
    assert fstats.live_calls == ()
    assert fstats.calls_cancelled == 5


async def test_stop_at_concurrency_1000_cancels_every_call_promptly(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """1,000 calls running, stop requested past the grace period (Ctrl-C): the run ends promptly,
    every scenario is recorded cancelled, and every call is cancelled on Modal's side."""
    with LocalModal() as env, env.environ():
        register(env, hang, max_containers=None)
        executor = ModalFnExecutor(APP, FN)
        grace = 1.0
        with trio.fail_after(240):
            async with arcflow.Runtime(
                executor, dsn, run_id=run_id, concurrency=1000, grace=grace, data_dir=tmp_path
            ) as rt:
                for i in range(1000):
                    await rt.submit(Scenario(id=str(i)))
                with trio.fail_after(120):
                    while (env.statistics().functions.calls_running or 0) < 1000:
                        await trio.sleep(0.2)
                stopped_at = trio.current_time()
                rt.request_stop()
        took = trio.current_time() - stopped_at
        # Bounded by the grace period and one cancel timeout (10 s), plus slack for a loaded
        # machine; a cancel that took longer is retried in the background, never dropped.
        assert took <= grace + 10 + 10, took
        assert env.wait_idle(20), env.left_running()
        assert env.statistics().functions.calls_cancelled == 1000
    found = await db_query(
        "SELECT status, count(*) AS n FROM arcflow.outcomes WHERE run_id = $1 GROUP BY 1", run_id
    )
    assert {r["status"]: r["n"] for r in found} == {"cancelled": 1000}


async def test_ctrl_c_twice_at_concurrency_1000_cancels_every_call_and_exits(
    modal_env: LocalModal, dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """The CLI with 1,000 calls running gets Ctrl-C twice: it exits 130 within seconds, every
    scenario recorded cancelled, every call cancelled on Modal's side, nothing left running."""
    register(modal_env, hang, max_containers=None)
    scenarios = tmp_path / "s.jsonl"
    scenarios.write_text("".join(json.dumps({"id": f"s{i}"}) + "\n" for i in range(1000)))
    log = tmp_path / "cli.log"
    with log.open("wb") as stderr:
        proc = await trio.lowlevel.open_process(
            cli(dsn, run_id, tmp_path, scenarios=scenarios, extra=("--concurrency", "1000")),
            cwd=ROOT,
            env={**os.environ, **modal_env.env},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        with trio.fail_after(120):
            while modal_env.statistics().functions.calls_running < 1000:
                assert proc.poll() is None, log.read_text()[-3000:]
                await trio.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        await trio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stopped_at = trio.current_time()
        with trio.fail_after(30):
            code = await proc.wait()
        took = trio.current_time() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            await proc.wait()
    assert code == 130, log.read_text()[-3000:]
    assert took < 15, took
    assert modal_env.wait_idle(10), modal_env.left_running()
    assert modal_env.statistics().functions.calls_cancelled == 1000
    found = await db_query(
        "SELECT status, count(*) AS n FROM arcflow.outcomes WHERE run_id = $1 GROUP BY 1", run_id
    )
    assert {r["status"]: r["n"] for r in found} == {"cancelled": 1000}


# -- refusals, start-up errors ------------------------------------------------------------------


async def test_resource_exhausted_spawns_are_retried(
    modal_env: LocalModal, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Spawns refused with RESOURCE_EXHAUSTED are retried with backoff; the scenario passes and the
    refusals are counted in the executor's statistics."""
    register(modal_env)
    modal_env.fail_next("ModalClient/FunctionMap", GrpcStatus.RESOURCE_EXHAUSTED, count=3)
    executor = ModalFnExecutor(APP, FN, ModalFnConfig(backoff_s=0.05, backoff_max_s=0.1))
    rt = await run_scenarios(executor, dsn, run_id, tmp_path, [Scenario(id="a")], attempts=1)
    row = (await rows(db_query, run_id))["a"]
    assert row["status"] == "passed", row
    assert row["executor"]["spawn_refusals"] == 3
    assert executor.statistics()["modal_fn_spawn_refusals"] == 3
    assert rt.statistics().executor["modal_fn_spawn_refusals"] == 3


async def test_unavailable_control_plane_is_retried_with_backoff(
    modal_env: LocalModal, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Spawns failing with UNAVAILABLE past the SDK's own retries are retried by arcflow with
    backoff; the scenario passes with one call, the failures counted."""
    register(modal_env)
    modal_env.fail_next("ModalClient/FunctionMap", GrpcStatus.UNAVAILABLE, count=6)
    executor = ModalFnExecutor(APP, FN, ModalFnConfig(backoff_s=0.05, backoff_max_s=0.1))
    await run_scenarios(executor, dsn, run_id, tmp_path, [Scenario(id="a")], attempts=1)
    row = (await rows(db_query, run_id))["a"]
    assert row["status"] == "passed", row
    assert row["executor"]["spawn_unavailable"] >= 1
    assert executor.statistics()["modal_fn_spawn_unavailable"] >= 1
    assert modal_env.statistics().functions.calls_started == {FN: 1}


async def test_the_functions_own_timeout_is_a_timeout_outcome(
    modal_env: LocalModal, dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """A call past the function's Modal-side timeout is a timeout outcome (FunctionTimeoutError)."""
    register(modal_env, hang, timeout=0.3)
    await run_scenarios(
        f"modal-fn:{APP}/{FN}", dsn, run_id, tmp_path, [Scenario(id="t")], attempts=1
    )
    row = (await rows(db_query, run_id))["t"]
    assert (row["status"], row["error_type"]) == ("timeout", "FunctionTimeoutError"), row


async def test_unknown_function_exits_2_saying_what_to_deploy(
    modal_env: LocalModal, dsn: str, run_id: str, tmp_path: Path
) -> None:
    """modal-fn: naming a function Modal does not have stops the CLI before any scenario, exit 2,
    saying to deploy it."""
    register(modal_env)
    proc = await trio.run_process(
        [*cli(dsn, run_id, tmp_path, target=f"{APP}/nope")],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "nope" in err and "modal deploy" in err
    assert modal_env.statistics().functions.calls_started == {}


async def test_missing_credentials_exit_2(dsn: str, run_id: str, tmp_path: Path) -> None:
    """Without Modal credentials the CLI stops at start, exit 2, saying how to log in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env["HOME"] = str(tmp_path)
    proc = await trio.run_process(
        cli(dsn, run_id, tmp_path), capture_stdout=True, capture_stderr=True, check=False, env=env
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "modal token new" in err


def cli(
    dsn: str,
    run_id: str,
    tmp_path: Path,
    *,
    target: str = f"{APP}/{FN}",
    scenarios: Path = ROOT / "examples" / "quickstart.jsonl",
    extra: tuple[str, ...] = (),
) -> list[str]:
    """``python -m arcflow run SCENARIOS --executor modal-fn:TARGET`` into the test database."""
    return [
        sys.executable,
        "-m",
        "arcflow",
        "run",
        str(scenarios),
        "--executor",
        f"modal-fn:{target}",
        "--db",
        dsn,
        "--run-id",
        run_id,
        "--data-dir",
        str(tmp_path),
        *extra,
    ]


async def test_the_example_app_runs_the_bundled_scenarios(
    modal_env: LocalModal, dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """examples/modal_app.py's function, served as arcflow-example/score with its container
    settings, scores examples/quickstart.jsonl through the CLI as the python: quickstart does."""
    spec = importlib.util.spec_from_file_location("modal_app", ROOT / "examples" / "modal_app.py")
    assert spec is not None and spec.loader is not None
    modal_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(modal_app)
    modal_env.register_function(
        modal_app.APP_NAME,
        "score",
        modal_app.score_scenario,
        max_containers=modal_app.MAX_CONTAINERS,
        max_inputs=modal_app.MAX_INPUTS,
    )
    done = await trio.run_process(
        cli(dsn, run_id, tmp_path, target=f"{modal_app.APP_NAME}/score"),
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    got = await rows(db_query, run_id)
    lines = (ROOT / "examples" / "quickstart.jsonl").read_text().splitlines()
    assert len(got) == len(lines)
    assert {row["status"] for row in got.values()} <= {"passed", "failed"}
    assert got["word-0001"]["status"] == "passed"  # madam
    assert got["word-0003"]["status"] == "failed"  # arcflow


# -- the executor's retries, on trio's mock clock (a stand-in for Modal) ----------------------------


class StandIn:
    """A FunctionRunner: ``call`` raises the exceptions of ``spawns`` in turn (then spawns
    ``fc-1``), ``wait`` those of ``waits`` (then the call returns ``value``)."""

    def __init__(
        self, spawns: list[Exception] = (), waits: list[Exception] = (), value: Any = None
    ):  # type: ignore[assignment]
        self.spawns, self.waits, self.value = list(spawns or ()), list(waits or ()), value
        self.spawn_times: list[float] = []
        self.cancelled: list[str] = []

    async def call(self, request: CallRequest, report: CallReport) -> None:
        self.spawn_times.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.spawns:
            raise self.spawns.pop(0)
        report.call_id = "fc-1"
        await self.wait("fc-1", report)

    async def wait(self, call_id: str, report: CallReport, key: Any = None) -> None:
        await trio.sleep(0.01)
        if self.waits:
            raise self.waits.pop(0)
        report.value, report.returned = self.value, True

    async def cancel(self, call_id: str) -> bool:
        self.cancelled.append(call_id)
        return True


def ctx() -> ExecutionContext:
    return ExecutionContext(run_id="r", attempt=1, worker="w")


async def test_refused_spawns_are_retried_until_spawn_retry_s_then_throttled(
    autojump_clock: Any,
) -> None:
    """Spawns refused without a hint are retried with backoff for spawn_retry_s, then the attempt
    is an error FunctionCallThrottled that says how often and how long."""
    runner = StandIn(spawns=[CallRefused("RESOURCE_EXHAUSTED: rate limit")] * 1000)
    cfg = ModalFnConfig(spawn_retry_s=30, backoff_s=0.5, backoff_max_s=4)
    executor = ModalFnExecutor(APP, FN, cfg, runner=runner, rng=random.Random(1))
    result = await executor.run(Scenario(id="a"), ctx())
    assert result.status is Status.ERROR
    assert result.error_type == "FunctionCallThrottled"
    assert 30 <= runner.spawn_times[-1] - runner.spawn_times[0] <= 35
    assert 8 <= len(runner.spawn_times) < 200  # backed off, not a busy loop
    assert executor.statistics()["modal_fn_spawn_refusals"] == len(runner.spawn_times)


async def test_a_retry_after_hint_holds_every_producers_spawns(autojump_clock: Any) -> None:
    """A refusal with Modal's 5 s hint holds the next spawns of every attempt until it has passed."""
    runner = StandIn(spawns=[CallRefused("slow down", retry_after=5.0)], value={"score": 1})
    executor = ModalFnExecutor(APP, FN, runner=runner)
    results = []

    async def one(i: int) -> None:
        await trio.sleep(0.1 * i)  # the first is refused; the others start within the hint
        results.append(await executor.run(Scenario(id=str(i)), ctx()))

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(one, i)
    assert [r.status for r in results] == [Status.PASSED] * 3
    first, *later = runner.spawn_times
    assert len(later) == 3  # the refused one again, and the two that started within the hint
    assert all(t >= first + 5 for t in later)


async def test_a_wait_that_loses_the_control_plane_is_retried_not_respawned(
    autojump_clock: Any,
) -> None:
    """The wait for a spawned call failing (control plane unreachable) is retried with backoff for
    the same call; the call is not spawned again."""
    runner = StandIn(waits=[CallUnavailable("connection reset")] * 3, value={"score": 0.5})
    executor = ModalFnExecutor(APP, FN, ModalFnConfig(backoff_s=0.5), runner=runner)
    result = await executor.run(Scenario(id="a"), ctx())
    assert (result.status, result.score) == (Status.PASSED, 0.5)
    assert len(runner.spawn_times) == 1
    assert result.executor["function_call_id"] == "fc-1"
    assert executor.stats.wait_retries == 3


async def test_a_retry_after_hint_longer_than_the_spawn_budget_ends_the_attempt_in_budget(
    autojump_clock: Any,
) -> None:
    """Modal's retry-after hint of 100 s with a spawn budget of 30 s: the attempt gives up
    (FunctionCallThrottled) once its 30 s are spent, not after sitting out the whole hint."""
    runner = StandIn(spawns=[CallRefused("RESOURCE_EXHAUSTED", retry_after=100)] * 10)
    executor = ModalFnExecutor(APP, FN, ModalFnConfig(spawn_retry_s=30), runner=runner)
    start = trio.current_time()
    result = await executor.run(Scenario(id="a"), ctx())
    assert result.error_type == "FunctionCallThrottled"
    assert trio.current_time() - start <= 31


async def test_a_timeout_between_two_waits_cancels_the_call(autojump_clock: Any) -> None:
    """Cancelled while backing off between two failed waits (a timeout, Ctrl-C), the attempt
    cancels its call on Modal's side before it ends: nothing is left running and billing."""
    runner = StandIn(waits=[CallUnavailable("connection reset")] * 1000)
    cfg = ModalFnConfig(backoff_s=2, backoff_max_s=8, outage_retry_s=3600)
    executor = ModalFnExecutor(APP, FN, cfg, runner=runner, rng=random.Random(3))
    with trio.move_on_after(30) as scope:
        await executor.run(Scenario(id="a"), ctx())
    assert scope.cancelled_caught
    assert executor.stats.wait_retries >= 2  # it was between waits, not in the first one
    assert runner.cancelled == ["fc-1"]


# -- statistics and settings --------------------------------------------------------------------


async def test_statistics_show_modals_backlog_and_running_inputs(
    modal_env: LocalModal, dsn: str, run_id: str, tmp_path: Path
) -> None:
    """While calls wait for a container, Modal's backlog and running inputs reach statistics(),
    the live display's executor line and the arcflow_executor_* metrics."""
    from arcflow.metrics import stats_families
    from arcflow.progress import ProgressModel

    register(modal_env, max_containers=1, max_inputs=2)
    executor = ModalFnExecutor(APP, FN, ModalFnConfig(stats_interval_s=0.1))
    async with arcflow.Runtime(
        executor, dsn, run_id=run_id, concurrency=10, data_dir=tmp_path
    ) as rt:
        for i in range(10):
            await rt.submit(Scenario(id=str(i), input={"sleep": 0.5}))
        with trio.fail_after(20):
            while rt.statistics().executor.get("modal_fn_backlog", 0) == 0:
                await trio.sleep(0.05)
        stats = rt.statistics()
    seen = stats.executor
    assert seen["modal_fn_running_inputs"] == 2
    assert seen["modal_fn_backlog"] >= 1
    assert seen["modal_fn_calls_running"] >= 3
    line = {f.label: f.text for f in ProgressModel(total=10).fields(stats)}["executor"]
    assert "modal fn backlog" in line and "modal fn running inputs" in line
    families = {f.name: f for f in stats_families(stats)}
    assert (
        families["arcflow_executor_modal_fn_backlog"].samples[0].value == seen["modal_fn_backlog"]
    )


def test_settings_build_the_executor_with_its_options(tmp_path: Path) -> None:
    """--executor modal-fn:APP/FUNCTION with --modal-fn-environment and --modal-fn-spawn-retry reaches
    ModalFnConfig; a spec without APP/FUNCTION is refused saying what is expected."""
    settings = load_settings(
        {
            "executor": "modal-fn:my-app/score",
            "modal_fn_environment": "staging",
            "modal_fn_spawn_retry": 30.0,
        },
        environ={},
        cwd=tmp_path,
    )
    executor = parse_executor(settings.executor or "", **settings.executor_options())
    assert isinstance(executor, ModalFnExecutor)
    assert (executor.app_name, executor.function_name) == ("my-app", "score")
    assert executor.config.environment_name == "staging"
    assert executor.config.spawn_retry_s == 30
    with pytest.raises(arcflow.ExecutorSpecError, match="modal-fn:APP/FUNCTION"):
        parse_executor("modal-fn:no-slash")


# -- resume -------------------------------------------------------------------------------------


def held(release: threading.Event) -> Any:
    """A deployed function whose calls wait for ``release`` (at most 60 s), then pass."""

    def fn(scenario: dict[str, Any]) -> Any:
        release.wait(60)
        return {"status": "passed", "output": {"id": scenario["id"]}}

    return fn


async def kill_mid_run(
    env: LocalModal, dsn: str, run_id: str, tmp_path: Path, db_query: Any, n: int
) -> list[str]:
    """A CLI run of ``n`` scenarios SIGKILLed once all ``n`` calls run and their ids are recorded."""
    scenarios = tmp_path / "s.jsonl"
    scenarios.write_text("".join(json.dumps({"id": f"s{i}"}) + "\n" for i in range(n)))
    log = tmp_path / "killed.log"
    with log.open("wb") as stderr:
        proc = await trio.lowlevel.open_process(
            cli(dsn, run_id, tmp_path, scenarios=scenarios, extra=("--concurrency", str(n))),
            cwd=ROOT,
            env={**os.environ, **env.env},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        with trio.fail_after(60):
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                if env.statistics().functions.calls_running == n:  # the table exists by then
                    recorded = await db_query(
                        "SELECT call_id FROM arcflow.modal_calls WHERE run_id = $1", run_id
                    )
                    if len(recorded) == n:
                        break
                await trio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert not await db_query("SELECT 1 FROM arcflow.outcomes WHERE run_id = $1", run_id)
    return sorted(r["call_id"] for r in recorded)


async def resume(env: LocalModal, dsn: str, run_id: str, tmp_path: Path) -> str:
    done = await trio.run_process(
        cli(dsn, run_id, tmp_path, scenarios=tmp_path / "s.jsonl", extra=("--resume", run_id)),
        cwd=ROOT,
        env={**os.environ, **env.env},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    err = done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    return err


async def test_resume_reattaches_to_calls_in_flight_when_the_process_died(
    modal_env: LocalModal, dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """A CLI run SIGKILLed while its calls run: --resume waits for those calls by their recorded
    ids instead of spawning them again; one passed row per scenario, with the old call's id."""
    release = threading.Event()
    register(modal_env, held(release))
    ids = await kill_mid_run(modal_env, dsn, run_id, tmp_path, db_query, 4)
    release.set()
    err = await resume(modal_env, dsn, run_id, tmp_path)
    assert "4 call(s) were in flight" in err
    assert modal_env.statistics().functions.calls_started == {FN: 4}  # none spawned again
    got = await rows(db_query, run_id)
    assert sorted(got) == [f"s{i}" for i in range(4)]
    assert all(row["status"] == "passed" and row["attempt"] == 1 for row in got.values())
    assert sorted(row["executor"]["function_call_id"] for row in got.values()) == ids
    assert all(row["executor"]["reattached"] is True for row in got.values())
    assert not await db_query("SELECT 1 FROM arcflow.modal_calls WHERE run_id = $1", run_id)


async def test_resume_runs_again_calls_whose_output_expired(
    modal_env: LocalModal, dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """A CLI run SIGKILLed while its calls run, resumed after Modal dropped their outputs: the
    scenarios are spawned again (new call ids) and pass, one row each."""
    release = threading.Event()
    register(modal_env, held(release))
    ids = await kill_mid_run(modal_env, dsn, run_id, tmp_path, db_query, 3)
    modal_env.configure(function_output_retention=0.2)
    release.set()
    with trio.fail_after(20):
        while modal_env.statistics().functions.live_calls:
            await trio.sleep(0.05)
    await trio.sleep(0.5)  # past the retention
    await resume(modal_env, dsn, run_id, tmp_path)
    fstats = modal_env.statistics().functions
    assert fstats.calls_started == {FN: 6}
    assert fstats.outputs_expired == 3
    got = await rows(db_query, run_id)
    assert sorted(got) == [f"s{i}" for i in range(3)]
    assert all(row["status"] == "passed" for row in got.values())
    assert not {row["executor"]["function_call_id"] for row in got.values()} & set(ids)
    assert all("expired" in row["executor"]["reattach_gone"] for row in got.values())
