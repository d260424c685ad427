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

import importlib
import json
import logging
import math
import os
import random
import shlex
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from .._trio_asyncio import import_trio_asyncio
from ..errors import ConfigError, ExecutorSpecError
from ..models import ExecutionResult, Scenario, Status
from ._limits import RateLimiter
from .base import ExecutionContext, Executor
from .process import (
    DEFAULT_STDERR_LIMIT,
    DEFAULT_STDOUT_LIMIT,
    OutputCapture,
    result_from_output,
)

if TYPE_CHECKING:  # pragma: no cover
    import modal

logger = logging.getLogger(__name__)

#: Sandbox lifetime when neither ModalConfig.timeout_s nor the attempt sets one (Modal's default).
DEFAULT_SANDBOX_TIMEOUT_S = 300
#: Seconds a sandbox may outlive its attempt's timeout: the producer cancels first.
SANDBOX_TIMEOUT_MARGIN_S = 30

MISSING_CREDENTIALS_HELP = (
    "Run `modal token new` (it opens a browser and writes ~/.modal.toml), or set both "
    "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (create a token at https://modal.com/settings/tokens)."
)


class SandboxCreationThrottled(Exception):
    """Modal refused to create a sandbox for now: rate limit or no capacity.

    The default sandbox factory raises it for ``modal.exception.ResourceExhaustedError``;
    a custom factory raises it for whatever its backend says when it is busy.
    :class:`ModalExecutor` retries it with backoff.
    """


class SandboxLifetimeExceeded(Exception):
    """The sandbox reached its own lifetime (``timeout``) and Modal stopped it."""


class SandboxHandle(Protocol):
    """One running sandbox, seen from trio.  The default factory wraps ``modal.Sandbox``."""

    @property
    def object_id(self) -> str:
        """The sandbox's real id (``sb-...``), stored in the outcome."""
        ...

    async def send_input(self, data: bytes) -> None:
        """Write ``data`` to the command's stdin, then close it (EOF)."""
        ...

    def stdout(self) -> AsyncIterator[bytes | str]:
        """The command's stdout, chunk by chunk, until EOF."""
        ...

    def stderr(self) -> AsyncIterator[bytes | str]:
        """The command's stderr, chunk by chunk, until EOF."""
        ...

    async def wait(self) -> int:
        """Wait for the command to exit; its exit code.

        Raises :class:`SandboxLifetimeExceeded` if the sandbox hit its timeout.
        """
        ...

    async def terminate(self) -> None:
        """Stop the sandbox (no-op if it has already finished)."""
        ...


@attrs.frozen
class SandboxRequest:
    """What one sandbox creation asks for."""

    command: tuple[str, ...]
    #: Lifetime in whole seconds: Modal stops the sandbox after it.
    timeout_s: int
    scenario_id: str
    run_id: str
    attempt: int


#: Creates a sandbox and returns it once it is running.  Raise
#: :class:`SandboxCreationThrottled` to have the creation retried.
SandboxFactory = Callable[[SandboxRequest], Awaitable[SandboxHandle]]


def _is_positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _positive(kind: type | tuple[type, ...] = (int, float), *, optional: bool = False) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if optional and value is None:
            return
        if not (isinstance(value, kind) and _is_positive_number(value)):
            names = kind.__name__ if isinstance(kind, type) else "number"
            raise ConfigError(
                f"ModalConfig.{attribute.name} must be a positive {names}"
                f"{' or None' if optional else ''}, got {value!r}"
            )

    return check


def _names(value: Sequence[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@attrs.frozen(kw_only=True)
class ModalConfig:
    """How sandboxes are made: app, image, resources and the protections around creation."""

    #: Modal app the sandboxes belong to (created if missing).
    app_name: str = attrs.field(default="arcflow")
    #: Registry image tag (``python:3.12-slim``), or None for ``Image.debian_slim()``.
    image: str | None = None
    #: pip packages installed on top of the image.
    pip: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: Names of Modal secrets injected as environment variables.
    secrets: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: CPU cores requested per sandbox (fractional allowed), or None for Modal's default.
    cpu: float | None = attrs.field(default=None, validator=_positive(optional=True))
    #: Memory requested per sandbox in MiB, or None for Modal's default.
    memory: int | None = attrs.field(default=None, validator=_positive(int, optional=True))
    #: Sandbox lifetime in seconds; None: the attempt's timeout plus a margin, else 300.
    timeout_s: int | None = attrs.field(default=None, validator=_positive(int, optional=True))
    #: Sandbox creations per second, across all producers.
    max_creations_per_second: float = attrs.field(default=4.0, validator=_positive())
    #: Creations allowed back to back before the rate applies.
    creation_burst: int = attrs.field(default=1, validator=_positive(int))
    #: Sandboxes being created at the same time, at most.
    max_starting: int = attrs.field(default=16, validator=_positive(int))
    #: Creation attempts in all when Modal answers rate limit / no capacity.
    create_attempts: int = attrs.field(default=6, validator=_positive(int))
    #: First backoff ceiling in seconds; doubles per retry (full jitter below it).
    create_backoff_s: float = attrs.field(default=1.0, validator=_positive())
    #: Largest backoff ceiling in seconds.
    create_backoff_max_s: float = attrs.field(default=30.0, validator=_positive())
    #: Longest a single (shielded) creation call may take.
    create_timeout_s: float = attrs.field(default=120.0, validator=_positive())
    #: Longest the shielded terminate() may take on cancellation.
    terminate_timeout_s: float = attrs.field(default=10.0, validator=_positive())
    #: Bytes of stdout kept; more is a StdoutTooLarge error.
    stdout_limit: int = attrs.field(default=DEFAULT_STDOUT_LIMIT, validator=_positive(int))
    #: Bytes of the end of stderr kept for error messages.
    stderr_limit: int = attrs.field(default=DEFAULT_STDERR_LIMIT, validator=_positive(int))

    @app_name.validator
    def _check_app_name(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"ModalConfig.app_name must be a non-empty string, got {value!r}")


class ModalExecutor(Executor):
    """Runs ``command`` in a new Modal Sandbox per scenario.

    ``sandbox_factory`` replaces Modal itself (tests, other sandbox providers):
    when given, :meth:`start` checks no Modal credentials and imports nothing.
    """

    kind = "modal"

    def __init__(
        self,
        command: Sequence[str],
        config: ModalConfig | None = None,
        *,
        sandbox_factory: SandboxFactory | None = None,
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

    @classmethod
    def from_spec(cls, rest: str, config: ModalConfig | None = None) -> ModalExecutor:
        """Parse ``COMMAND ARGS`` (shell quoting rules) run inside each sandbox."""
        try:
            argv = shlex.split(rest)
        except ValueError as exc:
            raise ExecutorSpecError(f"cannot parse executor 'modal:{rest}': {exc}") from None
        return cls(argv, config)

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
                delay = self._backoff(attempt)
                logger.info(
                    "sandbox creation for scenario %r throttled (%s); retry %d/%d in %.1fs",
                    request.scenario_id,
                    exc,
                    attempt,
                    attempts - 1,
                    delay,
                )
                await trio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**(attempt-1)))."""
        ceiling = min(
            self.config.create_backoff_max_s, self.config.create_backoff_s * 2 ** (attempt - 1)
        )
        return random.uniform(0, ceiling)

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


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _describe_error(exc: BaseException) -> tuple[str, str]:
    """(type name, message) of the first real error inside nursery exception groups."""
    leaves = _leaves(exc)
    first = leaves[0]
    message = str(first) or repr(first)
    if len(leaves) > 1:
        message += f" (and {len(leaves) - 1} more error(s))"
    return type(first).__name__, message


# --------------------------------------------------------------------------
# The real thing: Modal through trio-asyncio.


def find_modal_credentials(environ: Mapping[str, str] | None = None) -> str:
    """Where Modal will find a token: a description of the source.

    Mirrors Modal's own lookup: ``MODAL_TOKEN_ID`` and ``MODAL_TOKEN_SECRET``,
    else the profile (``MODAL_PROFILE``, else the active one, else
    ``default``) of ``MODAL_CONFIG_PATH`` or ``~/.modal.toml``.  Raises
    :class:`ConfigError` saying how to provide credentials when there are none.
    """
    environ = os.environ if environ is None else environ
    token_id = environ.get("MODAL_TOKEN_ID")
    token_secret = environ.get("MODAL_TOKEN_SECRET")
    if token_id and token_secret:
        return "the MODAL_TOKEN_ID and MODAL_TOKEN_SECRET environment variables"
    if token_id or token_secret:
        present, missing = (
            ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")
            if token_id
            else ("MODAL_TOKEN_SECRET", "MODAL_TOKEN_ID")
        )
        raise ConfigError(
            f"the modal: executor found {present} but not {missing} in the environment: "
            f"set both, or unset {present} to use ~/.modal.toml. {MISSING_CREDENTIALS_HELP}"
        )
    if environ.get("MODAL_OAUTH_REFRESH_TOKEN"):
        return "the MODAL_OAUTH_* environment variables"
    path = environ.get("MODAL_CONFIG_PATH") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".modal.toml"
    )
    profiles = _read_modal_toml(path)
    active = [name for name, values in profiles.items() if values.get("active") is True]
    name = environ.get("MODAL_PROFILE") or (active[0] if active else "default")
    profile = profiles.get(name, {})
    if (profile.get("token_id") and profile.get("token_secret")) or profile.get(
        "oauth_refresh_token"
    ):
        return f"profile {name!r} of {path}"
    where = f"no profile {name!r} with a token in {path}" if profiles else f"no {path}"
    raise ConfigError(
        "the modal: executor needs Modal credentials and found none "
        f"(no MODAL_TOKEN_ID/MODAL_TOKEN_SECRET in the environment, {where}). "
        f"{MISSING_CREDENTIALS_HELP}"
    )


def _read_modal_toml(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read Modal config {path}: {exc}") from exc
    return {key: value for key, value in data.items() if isinstance(value, dict)}


class ModalBackend:
    """Creates ``modal.Sandbox`` objects through Modal's ``.aio`` API from trio.

    :meth:`start` must run inside a trio-asyncio loop (``arcflow.Runtime``
    opens one); it imports ``modal`` and ``trio_asyncio`` lazily.
    """

    def __init__(self, config: ModalConfig) -> None:
        self.config = config
        self._modal: Any = None
        self._aio: Callable[[Any], Any] | None = None
        self._app: Any = None
        self._image: Any = None
        self._secrets: list[Any] = []
        self._start_lock = trio.Lock()

    async def start(self) -> None:
        """Credentials, imports, app lookup, image build and secret lookup; once.

        Raises :class:`ConfigError` for missing or rejected credentials,
        unknown secrets, a failed image build, or modal not installed.
        """
        async with self._start_lock:
            if self._app is not None:
                return
            source = await trio.to_thread.run_sync(find_modal_credentials)
            self._modal, self._aio = await _import_modal()
            try:
                await self._prepare()
            except self._modal.exception.AuthError as exc:
                raise ConfigError(
                    f"Modal rejected the credentials from {source}: {exc}. "
                    f"{MISSING_CREDENTIALS_HELP}"
                ) from exc
            logger.info("modal: app %r ready, credentials from %s", self.config.app_name, source)

    async def _prepare(self) -> None:
        modal_ = self._modal
        aio = self._aio
        assert aio is not None
        app = await aio(modal_.App.lookup.aio)(self.config.app_name, create_if_missing=True)
        secrets = []
        for name in self.config.secrets:
            secret = modal_.Secret.from_name(name)
            try:
                await aio(secret.hydrate.aio)()
            except modal_.exception.NotFoundError as exc:
                raise ConfigError(
                    f"Modal secret {name!r} not found (ModalConfig.secrets): create it with "
                    f"`modal secret create {name} KEY=VALUE`"
                ) from exc
            secrets.append(secret)
        image = (
            modal_.Image.from_registry(self.config.image)
            if self.config.image
            else modal_.Image.debian_slim()
        )
        if self.config.pip:
            image = image.pip_install(*self.config.pip)
        try:
            image = await aio(image.build.aio)(app)
        except modal_.exception.RemoteError as exc:
            raise ConfigError(
                f"building the Modal image ({self.config.image or 'debian_slim'}, "
                f"pip {list(self.config.pip)}) failed: {exc}"
            ) from exc
        self._secrets = secrets
        self._image = image
        self._app = app

    async def create(self, request: SandboxRequest) -> SandboxHandle:
        """``Sandbox.create.aio(*command, ...)``; throttling becomes SandboxCreationThrottled."""
        if self._app is None or self._aio is None:
            raise RuntimeError("ModalExecutor.start() must run before any scenario")
        modal_ = self._modal
        try:
            sandbox = await self._aio(modal_.Sandbox.create.aio)(
                *request.command,
                app=self._app,
                image=self._image,
                secrets=self._secrets,
                cpu=self.config.cpu,
                memory=self.config.memory,
                timeout=request.timeout_s,
            )
        except modal_.exception.ResourceExhaustedError as exc:
            raise SandboxCreationThrottled(str(exc) or type(exc).__name__) from exc
        return ModalSandbox(
            sandbox, aio=self._aio, sandbox_timeout_error=modal_.exception.SandboxTimeoutError
        )


async def _import_modal() -> tuple[Any, Callable[[Any], Any]]:
    """Import modal (in a thread: it is a heavy import) and check for a trio-asyncio loop."""
    try:
        modal_ = await trio.to_thread.run_sync(importlib.import_module, "modal")
    except ImportError as exc:
        raise ConfigError(
            "the modal: executor needs the modal package: pip install 'arcflow[modal]'"
        ) from exc
    trio_asyncio = import_trio_asyncio()

    if trio_asyncio.current_loop.get() is None:
        raise RuntimeError(
            "the modal: executor must run inside a trio-asyncio loop "
            "(`async with trio_asyncio.open_loop(): ...`); arcflow.Runtime opens one for you"
        )
    return modal_, trio_asyncio.aio_as_trio


class ModalSandbox:
    """A ``modal.Sandbox`` driven from trio: every call crosses into asyncio via ``aio``."""

    def __init__(
        self,
        sandbox: modal.Sandbox,
        *,
        aio: Callable[[Any], Any],
        sandbox_timeout_error: type[BaseException],
    ) -> None:
        self._sandbox = sandbox
        self._aio = aio
        self._timeout_error = sandbox_timeout_error

    @property
    def object_id(self) -> str:
        return str(self._sandbox.object_id)

    async def send_input(self, data: bytes) -> None:
        await self._aio(_send_and_close)(self._sandbox.stdin, data)

    def stdout(self) -> AsyncIterator[bytes | str]:
        return aiter(self._aio(self._sandbox.stdout))

    def stderr(self) -> AsyncIterator[bytes | str]:
        return aiter(self._aio(self._sandbox.stderr))

    async def wait(self) -> int:
        try:
            await self._aio(self._sandbox.wait.aio)(raise_on_termination=False)
        except self._timeout_error as exc:
            raise SandboxLifetimeExceeded(str(exc)) from exc
        code = self._sandbox.returncode
        return int(code) if code is not None else -1

    async def terminate(self) -> None:
        await self._aio(self._sandbox.terminate.aio)()


async def _send_and_close(stdin: Any, data: bytes) -> None:
    """(asyncio side) Write, close and flush a Modal StreamWriter."""
    stdin.write(data)
    stdin.write_eof()
    await stdin.drain.aio()
