"""``modal:COMMAND ARGS`` — one Modal Sandbox per scenario.

Each scenario gets a fresh sandbox running ``COMMAND ARGS``; the contract is
the ``process:`` executor's: scenario JSON on the command's stdin, a JSON
result on its stdout, logs on stderr, and the same outcome mapping (see
:func:`arcflow.executors.output.result_from_output`; bytes that are not UTF-8
are replaced, as there).

Modal's client is asyncio on an event loop of its own; arcflow is trio.  Each
attempt crosses to that loop twice (create, then run to completion), each time
as one coroutine cancelled as a unit (:mod:`.bridge`, :mod:`.lifecycle`).
Neither ``modal`` nor ``trio_asyncio`` is imported until :meth:`ModalExecutor.start`.

What protects your Modal bill and quota:

* an adaptive creation rate shared by every producer (:mod:`.rate`): it starts at
  what a new account allows, grows while creations succeed, falls on
  RESOURCE_EXHAUSTED (honouring Modal's retry-after hint), never above
  ``max_creations_per_second``; and a cap on sandboxes being created at once;
* refused creations are retried (for at most ``create_retry_s`` per attempt), and so
  are creations that fail because the control plane is unreachable or failing (with
  backoff, for at most ``outage_retry_s``);
* cancellation (timeout, Ctrl-C) terminates the sandbox at once; a creation in
  flight is waited for (bounded) and what it made is terminated;
* a sandbox that cannot be terminated now (control plane lost) keeps its id in the
  outcome and is terminated in the background once Modal answers; creations whose
  fate is unknown are found by their tags; at the end of the run, whatever this
  process left running is found by its tags and terminated;
* every sandbox is tagged (``arcflow-run``, ``arcflow-scenario``, ``arcflow-attempt``,
  ``arcflow-client``), so ``--resume RUN_ID`` and ``python -m arcflow modal sweep
  RUN_ID`` terminate what a crashed process left;
* every sandbox gets a lifetime (``timeout_s``, or the attempt's timeout plus a
  margin) so even a lost client cannot keep it running.

With ``ModalConfig(pool=N)`` the scenarios run in N long-lived sandboxes instead, one at
a time each, with ``Sandbox.exec`` (:mod:`.pool`): the same contract and outcome mapping,
the same creation path, tags and sweeps for the pool's sandboxes.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shlex
import uuid
from collections.abc import Sequence
from typing import Any, cast

import attrs
import trio

from ...errors import ExecutorSpecError
from ...models import ExecutionResult, Scenario, Status
from ..base import ExecutionContext, Executor
from ..output import OutputCapture, result_from_output
from .config import ModalConfig
from .lifecycle import TAG_ATTEMPT, TAG_CLIENT, TAG_MARK, TAG_POOL, TAG_RUN, TAG_SCENARIO, TAG_TRY
from .pool import SandboxPool
from .rate import CreationRate
from .sandboxes import (
    CreatedSandbox,
    PoolRunner,
    SandboxCreationThrottled,
    SandboxCreationUnavailable,
    SandboxReport,
    SandboxRequest,
    SandboxRunner,
)
from .sdk import ModalBackend

logger = logging.getLogger("arcflow.executors.modal")

#: Sandbox lifetime when neither ModalConfig.timeout_s nor the attempt sets one (Modal's default).
DEFAULT_SANDBOX_TIMEOUT_S = 300
#: Seconds a sandbox may outlive its attempt's timeout: the producer cancels first.
SANDBOX_TIMEOUT_MARGIN_S = 30
#: Longest tag value sent (longer scenario ids are cut, keeping a hash of the whole).
_TAG_VALUE_MAX = 200
#: Seconds a pooled sandbox's hand-over for termination may take beyond terminate_timeout_s.
_RETIRE_MARGIN_S = 5.0


@attrs.define
class ModalStats:
    """The executor's counters, read by :meth:`ModalExecutor.statistics`."""

    #: Creation calls sent, creations that succeeded, refused (RESOURCE_EXHAUSTED),
    #: and failed because the control plane was unreachable or failing.
    creation_calls: int = 0
    created: int = 0
    refused: int = 0
    unavailable: int = 0
    #: Attempts that gave up creating (refused or unreachable for too long, or another error).
    creation_failures: int = 0
    #: Sandboxes running now (created, not finished), and sandboxes terminated on cancellation.
    running: int = 0
    terminated: int = 0


class ModalExecutor(Executor):
    """Runs ``command`` in a new Modal Sandbox per scenario.

    ``runner`` replaces Modal itself (tests, other sandbox providers): when given,
    :meth:`start` checks no Modal credentials and imports nothing.  ``rng`` is the
    random source of the retry backoffs' jitter.
    """

    kind = "modal"

    def __init__(
        self,
        command: Sequence[str],
        config: ModalConfig | None = None,
        *,
        runner: SandboxRunner | None = None,
        rng: random.Random | None = None,
    ) -> None:
        argv = [str(part) for part in command]
        if not argv or not argv[0]:
            raise ExecutorSpecError(
                "empty modal command: expected modal:COMMAND ARGS, "
                "for example modal:python /app/score.py"
            )
        self.command: tuple[str, ...] = tuple(argv)
        self.config = cfg = config or ModalConfig()
        #: Tag value marking this process's sandboxes (``arcflow-client``).
        self.client_tag = uuid.uuid4().hex[:16]
        self.backend: ModalBackend | None = None
        if runner is None:
            self.backend = ModalBackend(cfg, client_tag=self.client_tag)
            runner = self.backend
        self._runner: SandboxRunner = runner
        self.rate = CreationRate(
            cfg.initial_rate,
            ceiling=cfg.rate_ceiling,
            floor=min(0.2, cfg.initial_rate),
            burst=cfg.creation_burst,
            interval=cfg.rate_interval_s,
            decrease=cfg.rate_decrease,
        )
        #: Sandboxes starting at once: a limiter, so a shared run's share can resize it.
        self._starting = trio.CapacityLimiter(cfg.max_starting)
        self._rng = rng or random.Random()
        self.stats = ModalStats()
        #: The warm pool (``ModalConfig.pool``), or None: a sandbox per scenario.
        self.pool: SandboxPool | None = None
        if cfg.pool is not None:
            if not all(callable(getattr(runner, name, None)) for name in ("exec_in", "retire")):
                raise ExecutorSpecError(
                    f"ModalConfig.pool={cfg.pool}: the sandbox runner "
                    f"{type(runner).__name__} cannot run commands in a sandbox (exec_in, retire)"
                )
            self.pool = SandboxPool(
                cfg.pool,
                max_uses=cfg.pool_max_uses,
                lifetime_s=cfg.pool_lifetime_s,
                margin_s=cfg.pool_lifetime_margin_s,
                retire=cast(PoolRunner, runner).retire,
                retire_timeout_s=cfg.terminate_timeout_s + _RETIRE_MARGIN_S,
            )

    @classmethod
    def from_spec(cls, rest: str, **options: Any) -> ModalExecutor:
        """Parse ``COMMAND ARGS`` (shell quoting rules) run inside each sandbox.

        ``options`` are the constructor's keyword arguments (``config=ModalConfig(...)``).
        """
        try:
            argv = shlex.split(rest)
        except ValueError as exc:
            raise ExecutorSpecError(f"cannot parse executor 'modal:{rest}': {exc}") from None
        return cls(argv, **options)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "command": list(self.command), **attrs.asdict(self.config)}

    def share_limits(self, workers: int) -> None:
        """One of ``workers`` in a shared run: a 1/workers share of the rate and the starting cap."""
        workers = max(1, workers)
        self.rate.set_share(1.0 / workers)
        self._starting.total_tokens = max(1, math.ceil(self.config.max_starting / workers))

    def statistics(self) -> dict[str, float]:
        """The current creation rate, refusals and the sandboxes running, for display and metrics."""
        s = self.stats
        out: dict[str, float] = {
            "modal_creation_rate": round(self.rate.rate, 3),
            "modal_creations": s.created,
            "modal_creation_refusals": s.refused,
            "modal_creation_unavailable": s.unavailable,
            "modal_sandboxes_running": s.running,
            "modal_sandboxes_terminated": s.terminated,
        }
        if self.rate.share < 1:
            out["modal_fleet_share"] = round(self.rate.share, 4)
            out["modal_starting_limit"] = self._starting.total_tokens
        if self.pool is not None:
            out.update(self.pool.stats.as_metrics())
        if self.backend is not None:
            reaper = self.backend.reaper_stats
            out["modal_terminations_pending"] = self.backend.ops.reaper.outstanding_count
            out["modal_orphans_terminated"] = reaper.orphans_terminated + reaper.swept
        return out

    async def start(self) -> None:
        """Check credentials, look up the app and build the image, before any scenario.

        Raises :class:`ConfigError` when credentials are missing or rejected.
        """
        if self.backend is not None:
            await self.backend.start()

    async def begin_run(self, run_id: str, *, resume: bool) -> None:
        """On ``--resume``: terminate the run's sandboxes a process that died left running."""
        if not resume or self.backend is None:
            return
        try:
            found, terminated = await self.backend.sweep({TAG_RUN: run_id})
        except Exception as exc:
            # Not worth refusing the run for: they stop at their lifetime, and the sweep
            # command can be run again later.
            logger.warning(
                "modal: run %s: could not look for sandboxes left running (%s: %s); "
                "run `python -m arcflow modal sweep %s` later",
                run_id,
                type(exc).__name__,
                exc,
                run_id,
            )
            return
        if found:
            logger.warning(
                "modal: run %s: terminated %d of %d sandbox(es) still running from before",
                run_id,
                len(terminated),
                len(found),
            )

    async def aclose(self) -> None:
        """Terminate the pool's sandboxes and what this process left running (found by its
        tag), bounded."""
        if self.pool is not None:
            await self.pool.close()
        if self.backend is not None:
            await self.backend.aclose()

    # -- one attempt ----------------------------------------------------------------------

    async def run(self, scenario: Scenario, context: ExecutionContext) -> ExecutionResult:
        if self.pool is not None:
            return await self._run_pooled(self.pool, scenario, context)
        details: dict[str, Any] = {
            "kind": self.kind,
            "command": list(self.command),
            "app": self.config.app_name,
            "sandbox_id": None,
            "exit_code": None,
            "creation_attempts": 0,
        }
        request = SandboxRequest(
            command=self.command,
            timeout_s=self._sandbox_timeout(context),
            scenario_id=scenario.id,
            run_id=context.run_id,
            attempt=context.attempt,
        )
        created = await self._create(request, details)
        if isinstance(created, ExecutionResult):
            return created
        sandbox_id = created.object_id
        details["sandbox_id"] = sandbox_id
        context.details.update(details)
        report = SandboxReport(
            stdout=OutputCapture(self.config.stdout_limit, keep="head"),
            stderr=OutputCapture(self.config.stderr_limit, keep="tail"),
        )
        payload = json.dumps(scenario.to_json()).encode()
        self.stats.running += 1
        try:
            await self._runner.finish(created, payload, report)
        except Exception as exc:
            details.update(report.details())
            return _error(details, type(exc).__name__, f"sandbox {sandbox_id}: {exc}")
        finally:
            self.stats.running -= 1
            if report.terminated:
                self.stats.terminated += 1
            details.update(report.details())
            context.details.update(details)
        return self._result(report, details, sandbox_id)

    def _sandbox_timeout(self, context: ExecutionContext) -> int:
        """The sandbox lifetime: configured, else the attempt's timeout plus a margin."""
        if self.config.timeout_s is not None:
            return self.config.timeout_s
        if context.timeout_s is not None:
            return math.ceil(context.timeout_s) + SANDBOX_TIMEOUT_MARGIN_S
        return DEFAULT_SANDBOX_TIMEOUT_S

    def _tags(self, request: SandboxRequest) -> dict[str, str]:
        tags = {TAG_MARK: "1", TAG_RUN: _tag_value(request.run_id)}
        if request.pooled:
            tags[TAG_POOL] = "1"
        else:
            tags[TAG_SCENARIO] = _tag_value(request.scenario_id)
            tags[TAG_ATTEMPT] = str(request.attempt)
        tags[TAG_CLIENT] = self.client_tag
        tags[TAG_TRY] = uuid.uuid4().hex[:16]
        return tags

    # -- one attempt in a pooled sandbox ------------------------------------------------------

    async def _run_pooled(
        self, pool: SandboxPool, scenario: Scenario, context: ExecutionContext
    ) -> ExecutionResult:
        """Run the command in a sandbox of the pool (``Sandbox.exec``), then give it back,
        with the reason to recycle it when the attempt did not end cleanly."""
        cfg = self.config
        runner = cast(PoolRunner, self._runner)
        deadline = trio.current_effective_deadline()
        details: dict[str, Any] = {
            "kind": self.kind,
            "command": list(self.command),
            "app": cfg.app_name,
            "sandbox_id": None,
            "exit_code": None,
            "pooled": True,
            "creation_attempts": 0,
        }
        request = SandboxRequest(
            command=cfg.pool_entrypoint,
            timeout_s=cfg.pool_lifetime_s,
            scenario_id=scenario.id,
            run_id=context.run_id,
            attempt=context.attempt,
            pooled=True,
        )
        got = await pool.acquire(
            lambda: self._create(request, details), need_s=context.timeout_s or 0.0
        )
        if isinstance(got, ExecutionResult):
            return got
        sandbox_id = got.object_id
        details["sandbox_id"] = sandbox_id
        details["sandbox_use"] = got.uses + 1
        context.details.update(details)
        report = SandboxReport(
            stdout=OutputCapture(cfg.stdout_limit, keep="head"),
            stderr=OutputCapture(cfg.stderr_limit, keep="tail"),
        )
        payload = json.dumps(scenario.to_json()).encode()
        recycle: str | None = "cancelled"
        try:
            try:
                await runner.exec_in(got.sandbox, self.command, payload, report)
            except Exception as exc:
                recycle = "error"
                details.update(report.details())
                return _error(details, type(exc).__name__, f"sandbox {sandbox_id}: {exc}")
            details.update(report.details())
            result = self._result(report, details, sandbox_id)
            recycle = _recycle_reason(report, result)
            if report.sandbox_finished and got.uses == 0 and not report.lifetime_exceeded:
                note = (
                    f" (the sandbox had ended before its first scenario: its entrypoint "
                    f"{list(cfg.pool_entrypoint)} must keep running; ModalConfig.pool_entrypoint)"
                )
                result = attrs.evolve(result, error_message=f"{result.error_message}{note}")
            return result
        except trio.Cancelled:
            if trio.current_time() >= deadline:
                recycle = "timeout"  # the producer's timeout, not a stop
            raise
        finally:
            if report.terminated:
                self.stats.terminated += 1
            details.update(report.details())
            context.details.update(details)
            with trio.move_on_after(cfg.terminate_timeout_s + _RETIRE_MARGIN_S, shield=True):
                await pool.release(got, recycle)

    async def _create(
        self, request: SandboxRequest, details: dict[str, Any]
    ) -> CreatedSandbox | ExecutionResult:
        """Create the sandbox, retrying refusals and outages; an error result when it gives up."""
        cfg = self.config
        stats = self.stats
        refusals = cfg.refusal_backoff().start(rng=self._rng)
        outage = cfg.outage_backoff().start(rng=self._rng)
        refused = unavailable = 0
        while True:
            delay: float | None = None
            details["creation_attempts"] += 1
            try:
                async with self._starting:
                    await self.rate.acquire()
                    stats.creation_calls += 1
                    sandbox = await self._runner.create(
                        attrs.evolve(request, tags=self._tags(request))
                    )
            except SandboxCreationThrottled as exc:
                stats.refused += 1
                refused += 1
                details["creation_refusals"] = refused
                self.rate.refused(exc.retry_after)
                if refusals.elapsed >= cfg.create_retry_s:
                    stats.creation_failures += 1
                    return _error(
                        details,
                        "SandboxCreationThrottled",
                        f"Modal refused to create the sandbox {refused} times in "
                        f"{refusals.elapsed:.0f}s (rate limit or no capacity; "
                        f"ModalConfig.create_retry_s): {exc}",
                    )
                if exc.retry_after is None:
                    # No hint (no capacity, too many running): back off before the next try.
                    delay = refusals.next_delay()
                logger.debug("scenario %r: creation refused (%s)", request.scenario_id, exc)
            except SandboxCreationUnavailable as exc:
                stats.unavailable += 1
                unavailable += 1
                details["creation_unavailable"] = unavailable
                delay = outage.next_delay()
                if delay is None:
                    stats.creation_failures += 1
                    return _error(
                        details,
                        "ModalUnavailable",
                        f"could not reach Modal to create the sandbox for {outage.elapsed:.0f}s "
                        f"({unavailable} tries; ModalConfig.outage_retry_s): {exc}",
                    )
                logger.info(
                    "scenario %r: creation failed (%s); retry in %.1fs",
                    request.scenario_id,
                    exc,
                    delay,
                )
            except Exception as exc:
                stats.creation_failures += 1
                return _error(details, type(exc).__name__, f"cannot create the sandbox: {exc}")
            else:
                stats.created += 1
                self.rate.succeeded()
                return sandbox
            if delay:
                await trio.sleep(delay)

    def _result(
        self, report: SandboxReport, details: dict[str, Any], sandbox_id: str
    ) -> ExecutionResult:
        """Map how the sandbox ended to a result (as the process executor does)."""
        if report.error is not None:
            error_type, message = report.error
            return _error(details, error_type, message)
        if report.lifetime_exceeded:
            return _error(
                details,
                "SandboxTimeout",
                f"sandbox {sandbox_id} reached its lifetime of {self._lifetime_hint()} "
                "and Modal stopped it",
                status=Status.TIMEOUT,
            )
        assert report.exit_code is not None
        result = result_from_output(
            exit_code=report.exit_code,
            stdout=report.stdout,
            stderr=report.stderr,
            details=details,
            subject="sandbox command",
        )
        if report.input_error is not None and result.status is Status.ERROR:
            note = f" (writing the scenario to stdin failed: {report.input_error})"
            result = attrs.evolve(result, error_message=f"{result.error_message}{note}")
        return result

    def _lifetime_hint(self) -> str:
        if self.config.timeout_s is not None:
            return f"{self.config.timeout_s}s (ModalConfig.timeout_s)"
        return "its timeout"


def _recycle_reason(report: SandboxReport, result: ExecutionResult) -> str | None:
    """Why a pooled sandbox must not run another scenario after this one, if it must not."""
    if report.lifetime_exceeded:
        return "lifetime"
    if report.sandbox_finished:
        return "died"
    if result.status is Status.TIMEOUT:
        return "timeout"
    if result.status is Status.ERROR:
        return "error"
    return None


def _error(
    details: dict[str, Any], error_type: str, message: str, status: Status = Status.ERROR
) -> ExecutionResult:
    return ExecutionResult(
        status=status, error_type=error_type, error_message=message, executor=dict(details)
    )


def _tag_value(value: str) -> str:
    if len(value) <= _TAG_VALUE_MAX:
        return value
    import hashlib

    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    return f"{value[: _TAG_VALUE_MAX - 17]}~{digest}"
