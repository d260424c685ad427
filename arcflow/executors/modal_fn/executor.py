"""``modal-fn:APP/FUNCTION`` — a deployed Modal Function called once per scenario.

Each attempt spawns one call of the function with the scenario as its only argument (the
JSON-safe dict a ``process:`` command reads on stdin), records the call's id (``fc-...``)
at once (in the outcome's details and in the run's database), and waits for its result,
which is what a ``python:`` function returns (``None``, or a mapping of ``status``,
``score``, ``output``, ``usage``).  A remote exception is an ``error`` outcome with the
exception's type and the end of the remote traceback; the function's own Modal-side
timeout is a ``timeout``.

What protects the bill and the run:

* an attempt that times out or is cancelled (Ctrl-C) cancels its call on Modal's side
  before it ends, bounded by ``cancel_timeout_s``; a cancel Modal does not confirm is
  retried in the background, and once more at the end of the run;
* spawns Modal refuses (RESOURCE_EXHAUSTED) are retried: after Modal's retry-after hint
  (which holds every producer's spawns until it has passed), else with backoff, for at
  most ``spawn_retry_s``; spawns and waits that fail because the control plane is
  unreachable are retried with backoff for at most ``outage_retry_s``;
* ``--resume`` waits for the calls that were in flight when a process died (their ids are
  in ``arcflow.modal_calls``) while Modal still has their results, and spawns them again
  when it does not.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import attrs
import trio

from ...errors import ExecutorSpecError
from ...models import ExecutionResult, Scenario, Status
from ...retry import Tries
from ..base import ExecutionContext, Executor, result_from_mapping
from .calls import CallRefused, CallReport, CallRequest, CallUnavailable, FunctionRunner
from .config import ModalFnConfig
from .ledger import TABLE as CALLS_TABLE
from .ledger import CallKey

logger = logging.getLogger("arcflow.executors.modal_fn")


@attrs.define
class ModalFnStats:
    """The executor's counters, read by :meth:`ModalFnExecutor.statistics`."""

    #: Spawn calls sent, calls spawned, refused (RESOURCE_EXHAUSTED), failed because the
    #: control plane was unreachable or failing.
    spawn_calls: int = 0
    spawned: int = 0
    refused: int = 0
    unavailable: int = 0
    #: Attempts that gave up spawning.
    spawn_failures: int = 0
    #: Calls waited for now, and results received.
    running: int = 0
    finished: int = 0
    #: Calls that raised remotely (or that Modal ended).
    remote_errors: int = 0
    #: Calls cancelled on Modal's side (timeouts, Ctrl-C), and cancels left pending.
    cancelled: int = 0
    cancel_pending: int = 0
    #: Waits retried because the control plane could not be reached.
    wait_retries: int = 0
    #: Calls of a previous process re-attached on resume, and those Modal no longer had.
    reattached: int = 0
    reattach_gone: int = 0


def parse_target(rest: str) -> tuple[str, str]:
    """``APP/FUNCTION`` into its two names; :class:`ExecutorSpecError` saying what is expected."""
    app, sep, function = rest.strip().partition("/")
    if (
        not sep
        or not app
        or not function
        or "/" in function
        or any(c.isspace() for c in rest.strip())
    ):
        raise ExecutorSpecError(
            f"invalid executor 'modal-fn:{rest}': expected modal-fn:APP/FUNCTION, the deployed "
            "app's name and the function's, for example modal-fn:arcflow-example/score"
        )
    return app, function


class ModalFnExecutor(Executor):
    """Calls the deployed function ``function_name`` of app ``app_name`` once per scenario.

    Retries, within one attempt: spawns Modal refuses (after its hint, else with backoff,
    for ``spawn_retry_s``), spawns and waits while the control plane is unreachable (with
    backoff, for ``outage_retry_s``).  Escalates: past those budgets, an ``error``
    outcome (``FunctionCallThrottled``, ``ModalUnavailable``, ``ModalContactLost``) for
    the producer's ``--attempts``; at start, a :class:`ConfigError` (exit 2) for missing
    credentials or a function Modal does not have.

    ``runner`` replaces Modal itself (tests): when given, :meth:`start` checks no Modal
    credentials and imports nothing.  ``rng`` is the random source of the backoffs' jitter.
    """

    kind = "modal-fn"

    def __init__(
        self,
        app_name: str,
        function_name: str,
        config: ModalFnConfig | None = None,
        *,
        runner: FunctionRunner | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not app_name or not function_name:
            raise ExecutorSpecError("modal-fn: needs an app name and a function name")
        self.app_name = app_name
        self.function_name = function_name
        self.config = cfg = config or ModalFnConfig()
        self.backend: Any = None
        if runner is None:
            from .sdk import FunctionBackend

            self.backend = FunctionBackend(cfg, app_name=app_name, function_name=function_name)
            runner = self.backend
        self._runner: FunctionRunner = runner
        self._rng = rng or random.Random()
        self._refusal_policy = cfg.refusal_backoff()
        self._outage_policy = cfg.outage_backoff()
        self.stats = ModalFnStats()
        #: Calls a previous process had in flight, by attempt (filled on resume).
        self._in_flight: dict[CallKey, str] = {}
        #: Spawns wait until then (trio time): Modal's retry-after hint holds every producer.
        self._hold_until = -float("inf")

    @classmethod
    def from_spec(cls, rest: str, **options: Any) -> ModalFnExecutor:
        """Parse ``APP/FUNCTION``; ``options`` are the constructor's (``config=ModalFnConfig(...)``)."""
        app, function = parse_target(rest)
        return cls(app, function, **options)

    @property
    def target(self) -> str:
        return f"{self.app_name}/{self.function_name}"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "app": self.app_name,
            "function": self.function_name,
            **attrs.asdict(self.config),
        }

    def statistics(self) -> dict[str, float]:
        """Calls in flight, spawned, refused, cancelled; Modal's backlog and running inputs."""
        s = self.stats
        out: dict[str, float] = {
            "modal_fn_calls_running": s.running,
            "modal_fn_calls_spawned": s.spawned,
            "modal_fn_calls_finished": s.finished,
            "modal_fn_spawn_refusals": s.refused,
            "modal_fn_spawn_unavailable": s.unavailable,
            "modal_fn_remote_errors": s.remote_errors,
            "modal_fn_calls_cancelled": s.cancelled,
        }
        if s.reattached or self._in_flight:
            out["modal_fn_calls_reattached"] = s.reattached
        backend = self.backend
        if backend is not None:
            live = backend.live
            if live.backlog is not None:
                out["modal_fn_backlog"] = live.backlog
            if live.running_inputs is not None:
                out["modal_fn_running_inputs"] = live.running_inputs
            if live.runners is not None:
                out["modal_fn_containers"] = live.runners
            out["modal_fn_connections"] = backend.connections
            out["modal_fn_cancels_pending"] = backend.cancels_pending
            if live.uncertain_spawns:
                out["modal_fn_uncertain_spawns"] = live.uncertain_spawns
            ledger = backend.ledger_stats
            if ledger is not None:
                out["modal_fn_ids_pending"] = ledger.pending
                out["modal_fn_ids_recorded"] = ledger.written
        return out

    # -- lifecycle --------------------------------------------------------------------------

    def use_database(self, dsn: str | None) -> None:
        """Record the call ids in the run's database (``arcflow.modal_calls``)."""
        if self.config.record_calls and self.backend is not None:
            self.backend.use_database(dsn, function=self.target)

    async def start(self) -> None:
        """Check credentials and look the function up, before any scenario.

        Raises :class:`ConfigError` (exit 2) when credentials are missing or rejected, or
        Modal has no such function (saying what to deploy).
        """
        if self.backend is not None:
            await self.backend.start()

    async def begin_run(self, run_id: str, *, resume: bool) -> None:
        """Prepare the call ids' table; on ``--resume``, read the calls left in flight."""
        if self.backend is None:
            return
        try:
            self._in_flight = await self.backend.prepare_ledger(run_id, resume=resume)
        except Exception as exc:
            logger.warning(
                "modal-fn: run %s: cannot use %s (%s: %s); call ids are not recorded%s",
                run_id,
                CALLS_TABLE,
                type(exc).__name__,
                exc,
                " and calls left in flight are spawned again" if resume else "",
            )
            return
        if self._in_flight:
            logger.warning(
                "modal-fn: run %s: %d call(s) were in flight when the last process ended; "
                "their results are waited for instead of spawning them again",
                run_id,
                len(self._in_flight),
            )

    async def aclose(self) -> None:
        """Write the ids still pending; send the cancels still pending; close connections."""
        if self.backend is not None:
            with trio.CancelScope(shield=True):
                await self.backend.aclose()

    # -- one attempt ------------------------------------------------------------------------

    async def run(self, scenario: Scenario, context: ExecutionContext) -> ExecutionResult:
        details: dict[str, Any] = {
            "kind": self.kind,
            "app": self.app_name,
            "function": self.function_name,
            "function_call_id": None,
        }
        key: CallKey = (scenario.id, scenario.epoch, context.attempt)
        stats = self.stats
        stats.running += 1
        try:
            call_id = self._in_flight.pop(key, None) if self._in_flight else None
            if call_id is not None:
                result = await self._reattach(call_id, key, context, details)
                if result is not None:
                    return result
            request = CallRequest(
                payload=scenario.to_json(),
                run_id=context.run_id,
                scenario_id=scenario.id,
                epoch=scenario.epoch,
                attempt=context.attempt,
            )
            report = CallReport()
            try:
                failed = await self._call(request, report, details)
                if failed is None and not _ended(report):
                    failed = await self._wait(report, key, context.run_id, details)
            finally:
                self._note(report, context, details)
            if failed is not None:
                return failed
            if report.gone is not None:
                return _error(details, "FunctionCallGone", report.gone)
            return self._result(report, details)
        finally:
            stats.running -= 1

    async def _reattach(
        self, call_id: str, key: CallKey, context: ExecutionContext, details: dict[str, Any]
    ) -> ExecutionResult | None:
        """Wait for a call a previous process left in flight; None when there is nothing to
        wait for (Modal no longer has it, or stopped it): the scenario runs again."""
        details["function_call_id"] = call_id
        details["reattached"] = True
        context.details.update(details)
        report = CallReport(call_id=call_id)
        try:
            failed = await self._wait(report, key, context.run_id, details)
        finally:
            self._note(report, context, details, spawned=False)
        if failed is not None:
            return failed
        terminated = report.failure is not None and report.failure.terminated
        if report.gone is None and not terminated:
            self.stats.reattached += 1
            return self._result(report, details)
        self.stats.reattach_gone += 1
        details["reattached"] = False
        details["reattach_gone"] = report.gone or f"call {call_id} was terminated on Modal's side"
        details["function_call_id"] = None
        details.pop("cancelled", None)
        return None

    async def _call(
        self, request: CallRequest, report: CallReport, details: dict[str, Any]
    ) -> ExecutionResult | None:
        """Spawn the call and wait for it (one step), retrying refusals and outages before
        the call exists; an error result when it gives up, None otherwise (the report says
        how the call ended, or that its wait is to be retried)."""
        cfg = self.config
        stats = self.stats
        # Started at the first refusal / outage only: most attempts need neither.
        refusals: Tries | None = None
        outage: Tries | None = None
        refused = unavailable = 0
        details["spawn_attempts"] = 0
        while True:
            if trio.current_time() < self._hold_until:
                until = self._hold_until
                if refusals is not None:  # no longer than this attempt's spawn budget has left
                    left = max(cfg.spawn_retry_s - refusals.elapsed, 0.0)
                    until = min(until, trio.current_time() + left)
                await trio.sleep_until(until)
            delay: float | None = None
            details["spawn_attempts"] += 1
            stats.spawn_calls += 1
            try:
                await self._runner.call(request, report)
            except CallRefused as exc:
                stats.refused += 1
                refused += 1
                details["spawn_refusals"] = refused
                if refusals is None:
                    refusals = self._refusal_policy.start(rng=self._rng)
                if refusals.elapsed >= cfg.spawn_retry_s:
                    stats.spawn_failures += 1
                    return _error(
                        details,
                        "FunctionCallThrottled",
                        f"Modal refused to start the call {refused} times in "
                        f"{refusals.elapsed:.0f}s (rate limit or backlog full; "
                        f"ModalFnConfig.spawn_retry_s): {exc}",
                    )
                if exc.retry_after is not None and exc.retry_after > 0:
                    # Modal's hint holds every producer's spawns, not only this one's.
                    self._hold_until = max(self._hold_until, trio.current_time() + exc.retry_after)
                else:
                    delay = refusals.next_delay()
                logger.debug("scenario %r: spawn refused (%s)", request.scenario_id, exc)
            except CallUnavailable as exc:
                if report.call_id is not None:
                    stats.wait_retries += 1
                    return None  # the call exists, its wait failed: the caller waits again
                stats.unavailable += 1
                unavailable += 1
                details["spawn_unavailable"] = unavailable
                if outage is None:
                    outage = self._outage_policy.start(rng=self._rng)
                delay = outage.next_delay()
                if delay is None:
                    stats.spawn_failures += 1
                    return _error(
                        details,
                        "ModalUnavailable",
                        f"could not reach Modal to start the call for {outage.elapsed:.0f}s "
                        f"({unavailable} tries; ModalFnConfig.outage_retry_s): {exc}",
                    )
                logger.info(
                    "scenario %r: spawn failed (%s); retry in %.1fs",
                    request.scenario_id,
                    exc,
                    delay,
                )
            except Exception as exc:
                if report.call_id is None:
                    stats.spawn_failures += 1
                    return _error(details, type(exc).__name__, f"cannot start the call: {exc}")
                await self._give_up(report)
                return _error(
                    details, type(exc).__name__, f"waiting for call {report.call_id}: {exc}"
                )
            else:
                return None
            if delay:
                await trio.sleep(delay)

    async def _wait(
        self, report: CallReport, key: CallKey, run_id: str, details: dict[str, Any]
    ) -> ExecutionResult | None:
        """Wait for the call ``report.call_id`` into ``report``, retrying while the control
        plane is unreachable; an error result when it gives up."""
        call_id = report.call_id
        assert call_id is not None
        outage: Tries | None = None
        while True:
            try:
                await self._runner.wait(call_id, report, (run_id, key))
            except CallUnavailable as exc:
                self.stats.wait_retries += 1
                if outage is None:
                    outage = self._outage_policy.start(rng=self._rng)
                delay = outage.next_delay()
                if delay is None:
                    await self._give_up(report)
                    return _error(
                        details,
                        "ModalContactLost",
                        f"lost contact with Modal while waiting for call {call_id}, for "
                        f"{outage.elapsed:.0f}s (ModalFnConfig.outage_retry_s): {exc}; the "
                        "call is cancelled once Modal answers again",
                    )
                logger.info("call %s: waiting failed (%s); retry in %.1fs", call_id, exc, delay)
                try:
                    await trio.sleep(delay)
                except trio.Cancelled:
                    # A timeout or Ctrl-C between two waits: nobody waits for the call now.
                    await self._give_up(report)  # noqa: ASYNC102 - shielded and bounded inside
                    raise
                continue
            return None

    async def _give_up(self, report: CallReport) -> None:
        """A call nobody will wait for: cancel it now, or in the background once Modal answers."""
        assert report.call_id is not None
        with trio.move_on_after(self.config.cancel_timeout_s + 5, shield=True):
            if await self._runner.cancel(report.call_id):
                report.cancelled = True
                return
        report.cancel_pending = True

    def _note(
        self,
        report: CallReport,
        context: ExecutionContext,
        details: dict[str, Any],
        *,
        spawned: bool = True,
    ) -> None:
        """Note how the call ended (details, counters), whatever ended it."""
        stats = self.stats
        if report.call_id is not None:
            details["function_call_id"] = report.call_id
            if spawned:
                stats.spawned += 1
        details.update(report.details())
        context.details.update(details)
        if report.cancelled:
            stats.cancelled += 1
        if report.cancel_pending:
            stats.cancel_pending += 1

    def _result(self, report: CallReport, details: dict[str, Any]) -> ExecutionResult:
        """The outcome of a call that ended: its value as a result, or its remote failure."""
        stats = self.stats
        stats.finished += 1
        failure = report.failure
        if failure is None:
            return result_from_mapping(report.value, executor=details)
        stats.remote_errors += 1
        message = failure.message
        if failure.traceback_tail:
            message = f"{message}\nremote traceback (end):\n{failure.traceback_tail}"
        return _error(
            details,
            failure.type_name,
            message,
            status=Status.TIMEOUT if failure.timed_out else Status.ERROR,
        )


def _ended(report: CallReport) -> bool:
    """The call returned, failed, or is gone: nothing more to wait for."""
    return report.returned or report.failure is not None or report.gone is not None


def _error(
    details: dict[str, Any], error_type: str, message: str, status: Status = Status.ERROR
) -> ExecutionResult:
    return ExecutionResult(
        status=status, error_type=error_type, error_message=message, executor=dict(details)
    )
