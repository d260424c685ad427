"""``modal:COMMAND ARGS`` — one Modal Sandbox per scenario.

Each scenario gets a fresh sandbox running ``COMMAND ARGS``; the contract is
the ``process:`` executor's: scenario JSON on the command's stdin, a JSON
result on its stdout, logs on stderr, and the same outcome mapping (see
:func:`arcflow.executors.process.result_from_output`).

Modal's client is asyncio; arcflow is trio.  Calls go through Modal's
``.aio`` API wrapped in :func:`trio_asyncio.aio_as_trio`, inside the
trio-asyncio loop that the runtime opens once at the top.  Neither ``modal``
nor ``trio_asyncio`` is imported until :meth:`ModalExecutor.start`, so
``import arcflow`` never patches asyncio.

What protects your Modal bill and quota:

* a creation-rate limit (``max_creations_per_second``, a token bucket on
  trio's clock shared by every producer) and a cap on sandboxes being created
  at once (``max_starting``);
* creations refused for rate limit or capacity (Modal raises
  ``modal.exception.ResourceExhaustedError``) are retried with exponential
  backoff and full jitter, ``create_attempts`` times in all;
* the creation call itself is shielded from cancellation (for at most
  ``create_timeout_s``), because a sandbox the server already made would
  otherwise be unknown to us and run until its own timeout;
* ``terminate()`` runs in a shielded ``finally`` (at most
  ``terminate_timeout_s``) whenever the sandbox did not exit on its own:
  timeouts and cancellations never leak a sandbox;
* every sandbox gets a lifetime (``timeout_s``, or the attempt's timeout plus
  a margin) so even a lost client cannot keep it running.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shlex
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import trio

from ...errors import ExecutorSpecError, leaf_exceptions
from ...models import ExecutionResult, Scenario, Status
from ..base import ExecutionContext, Executor
from ..output import OutputCapture, result_from_output
from ..ratelimit import RateLimiter
from .config import ModalConfig
from .sandboxes import (
    SandboxCreationThrottled,
    SandboxFactory,
    SandboxHandle,
    SandboxLifetimeExceeded,
    SandboxRequest,
)
from .sdk import ModalBackend

logger = logging.getLogger("arcflow.executors.modal")

#: Sandbox lifetime when neither ModalConfig.timeout_s nor the attempt sets one (Modal's default).
DEFAULT_SANDBOX_TIMEOUT_S = 300
#: Seconds a sandbox may outlive its attempt's timeout: the producer cancels first.
SANDBOX_TIMEOUT_MARGIN_S = 30


class ModalExecutor(Executor):
    """Runs ``command`` in a new Modal Sandbox per scenario.

    ``sandbox_factory`` replaces Modal itself (tests, other sandbox providers):
    when given, :meth:`start` checks no Modal credentials and imports nothing.
    ``rng`` is the random source of the creation backoff's jitter.
    """

    kind = "modal"

    def __init__(
        self,
        command: Sequence[str],
        config: ModalConfig | None = None,
        *,
        sandbox_factory: SandboxFactory | None = None,
        rng: random.Random | None = None,
    ) -> None:
        argv = [str(part) for part in command]
        if not argv or not argv[0]:
            raise ExecutorSpecError(
                "empty modal command: expected modal:COMMAND ARGS, "
                "for example modal:python /app/score.py"
            )
        self.command: tuple[str, ...] = tuple(argv)
        self.config = config or ModalConfig()
        self._backend: ModalBackend | None = None
        if sandbox_factory is None:
            self._backend = ModalBackend(self.config)
            sandbox_factory = self._backend.create
        self._create_sandbox: SandboxFactory = sandbox_factory
        self._rate = RateLimiter(self.config.max_creations_per_second, self.config.creation_burst)
        self._starting = trio.CapacityLimiter(self.config.max_starting)
        self._rng = rng or random.Random()
        self._backoff = self.config.creation_backoff()

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

    async def start(self) -> None:
        """Check credentials, look up the app and build the image, before any scenario.

        Raises :class:`ConfigError` when credentials are missing or rejected.
        """
        if self._backend is not None:
            await self._backend.start()

    async def run(self, scenario: Scenario, context: ExecutionContext) -> ExecutionResult:
        state = _SandboxRun(
            details={
                "kind": self.kind,
                "command": list(self.command),
                "app": self.config.app_name,
                "sandbox_id": None,
                "exit_code": None,
                "creation_attempts": 0,
            },
            known=context.details,
        )
        request = SandboxRequest(
            command=self.command,
            timeout_s=self._sandbox_timeout(context),
            scenario_id=scenario.id,
            run_id=context.run_id,
            attempt=context.attempt,
        )
        try:
            try:
                await self._create_with_retries(request, state)
            except SandboxCreationThrottled as exc:
                return state.error(
                    "SandboxCreationThrottled",
                    f"Modal refused to create the sandbox {state.details['creation_attempts']} "
                    f"times (rate limit or no capacity): {exc}",
                )
            except Exception as exc:
                return state.error(type(exc).__name__, f"cannot create the sandbox: {exc}")
            assert state.sandbox is not None
            return await self._exchange(state, scenario)
        finally:
            if state.sandbox is not None and not state.exited:
                # _terminate runs under move_on_after(terminate_timeout_s, shield=True) itself.
                await self._terminate(state.sandbox)  # noqa: ASYNC102 - shielded and bounded inside

    def _sandbox_timeout(self, context: ExecutionContext) -> int:
        """The sandbox lifetime: configured, else the attempt's timeout plus a margin."""
        if self.config.timeout_s is not None:
            return self.config.timeout_s
        if context.timeout_s is not None:
            return math.ceil(context.timeout_s) + SANDBOX_TIMEOUT_MARGIN_S
        return DEFAULT_SANDBOX_TIMEOUT_S

    async def _create_with_retries(self, request: SandboxRequest, state: _SandboxRun) -> None:
        """Create the sandbox into ``state.sandbox``.

        Retries :class:`SandboxCreationThrottled` up to ``create_attempts``
        times in all, sleeping with exponential backoff and full jitter between
        attempts.  Escalates the last throttle error, and any other error at once.
        """
        attempts = self.config.create_attempts
        for attempt in range(1, attempts + 1):
            state.details["creation_attempts"] = attempt
            try:
                await self._create_once(request, state)
                return
            except SandboxCreationThrottled as exc:
                if attempt == attempts:
                    raise
                delay = self._backoff.delay(attempt, self._rng)
                logger.info(
                    "sandbox creation for scenario %r throttled (%s); retry %d/%d in %.1fs",
                    request.scenario_id,
                    exc,
                    attempt,
                    attempts - 1,
                    delay,
                )
                await trio.sleep(delay)

    async def _create_once(self, request: SandboxRequest, state: _SandboxRun) -> None:
        """One creation: within the starting cap and the creation rate, shielded.

        The shield keeps a cancellation from abandoning a creation the server
        may already have carried out: the caller's ``finally`` then sees the
        sandbox in ``state`` and terminates it.  Raises ``trio.TooSlowError``
        after ``create_timeout_s``.
        """
        async with self._starting:
            await self._rate.acquire()
            with trio.move_on_after(self.config.create_timeout_s, shield=True) as scope:
                state.sandbox = await self._create_sandbox(request)
                state.details["sandbox_id"] = state.sandbox.object_id
                state.known.update(state.details)
            if scope.cancelled_caught:
                raise trio.TooSlowError(
                    f"Modal did not create the sandbox within {self.config.create_timeout_s:g}s "
                    "(ModalConfig.create_timeout_s)"
                )

    async def _exchange(self, state: _SandboxRun, scenario: Scenario) -> ExecutionResult:
        """Send the scenario, read stdout and stderr, wait for the exit, map the outcome."""
        sandbox = state.sandbox
        assert sandbox is not None
        stdout = OutputCapture(self.config.stdout_limit, keep="head")
        stderr = OutputCapture(self.config.stderr_limit, keep="tail")
        payload = json.dumps(scenario.to_json()).encode()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(state.send_input, payload)
                nursery.start_soon(_read_chunks, sandbox.stdout(), stdout)
                nursery.start_soon(_read_chunks, sandbox.stderr(), stderr)
                nursery.start_soon(state.wait_for_exit)
        except Exception as exc:
            error_type, message = _describe_error(exc)
            return state.error(
                error_type, f"lost contact with sandbox {sandbox.object_id}: {message}"
            )
        if state.lifetime_exceeded:
            return state.error(
                "SandboxTimeout",
                f"sandbox {sandbox.object_id} reached its lifetime of "
                f"{self._sandbox_timeout_hint()} and Modal stopped it",
                status=Status.TIMEOUT,
            )
        assert state.exit_code is not None
        result = result_from_output(
            exit_code=state.exit_code,
            stdout=stdout,
            stderr=stderr,
            details=state.details,
            subject="sandbox command",
        )
        if state.input_error is not None and result.status is Status.ERROR:
            note = f" (writing the scenario to stdin failed: {state.input_error})"
            result = attrs.evolve(result, error_message=f"{result.error_message}{note}")
        return result

    def _sandbox_timeout_hint(self) -> str:
        if self.config.timeout_s is not None:
            return f"{self.config.timeout_s}s (ModalConfig.timeout_s)"
        return "its timeout"

    async def _terminate(self, sandbox: SandboxHandle) -> None:
        """Terminate a sandbox that did not exit on its own.

        Shielded and bounded by ``terminate_timeout_s``; a failure is logged,
        not raised (the sandbox still stops at its own lifetime).
        """
        with trio.move_on_after(self.config.terminate_timeout_s, shield=True) as scope:
            try:
                await sandbox.terminate()
            except Exception as exc:
                logger.warning(
                    "could not terminate sandbox %s: %s: %s; it stops at its own timeout",
                    sandbox.object_id,
                    type(exc).__name__,
                    exc,
                )
        if scope.cancelled_caught:
            logger.warning(
                "terminating sandbox %s took over %gs; it stops at its own timeout",
                sandbox.object_id,
                self.config.terminate_timeout_s,
            )


@attrs.define
class _SandboxRun:
    """What one run knows about its sandbox; read by its ``finally``."""

    details: dict[str, Any]
    #: The attempt's ``ExecutionContext.details``: the sandbox id is copied there as
    #: soon as it is known, so a timed-out or cancelled attempt still records it.
    known: dict[str, Any] = attrs.field(factory=dict)
    sandbox: SandboxHandle | None = None
    exit_code: int | None = None
    exited: bool = False
    lifetime_exceeded: bool = False
    input_error: str | None = None

    async def send_input(self, payload: bytes) -> None:
        """Send the scenario; a failure is noted, not raised.

        A command that exits without reading stdin is judged by its exit code
        and stdout, as with the process executor.
        """
        assert self.sandbox is not None
        try:
            await self.sandbox.send_input(payload)
        except Exception as exc:
            self.input_error = f"{type(exc).__name__}: {exc}"
            logger.debug("sandbox %s: %s", self.sandbox.object_id, self.input_error)

    async def wait_for_exit(self) -> None:
        """Wait for the sandbox to finish and record how."""
        assert self.sandbox is not None
        try:
            self.exit_code = await self.sandbox.wait()
        except SandboxLifetimeExceeded:
            self.lifetime_exceeded = True
        self.exited = True
        self.details["exit_code"] = self.exit_code

    def error(
        self, error_type: str, message: str, status: Status = Status.ERROR
    ) -> ExecutionResult:
        return ExecutionResult(
            status=status,
            error_type=error_type,
            error_message=message,
            executor=dict(self.details),
        )


async def _read_chunks(chunks: AsyncIterator[bytes | str], capture: OutputCapture) -> None:
    """Read a sandbox stream to EOF into ``capture`` (beyond its limit, read and drop)."""
    async for chunk in chunks:
        capture.feed(chunk)


def _describe_error(exc: BaseException) -> tuple[str, str]:
    """(type name, message) of the first real error inside nursery exception groups."""
    leaves = leaf_exceptions(exc)
    first = leaves[0]
    message = str(first) or repr(first)
    if len(leaves) > 1:
        message += f" (and {len(leaves) - 1} more error(s))"
    return type(first).__name__, message
