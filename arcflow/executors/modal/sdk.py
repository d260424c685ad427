"""The real Modal backend: ``modal.Sandbox`` driven through Modal's ``.aio`` API from trio.

Every call crosses into asyncio through :func:`trio_asyncio.aio_as_trio`
inside the trio-asyncio loop that the runtime opens once at the top.
Neither ``modal`` nor ``trio_asyncio`` is imported before
:meth:`ModalBackend.start`, so importing arcflow never patches asyncio.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import trio

from ..._trio_asyncio import import_trio_asyncio
from ...errors import ConfigError
from .config import ModalConfig
from .credentials import MISSING_CREDENTIALS_HELP, find_modal_credentials
from .sandboxes import (
    SandboxCreationThrottled,
    SandboxHandle,
    SandboxLifetimeExceeded,
    SandboxRequest,
)

if TYPE_CHECKING:  # pragma: no cover
    import modal

logger = logging.getLogger("arcflow.executors.modal")


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
