"""The real Modal backend: sandboxes made and run through Modal's ``.aio`` API from trio.

:class:`ModalBackend` is the :class:`~.sandboxes.SandboxRunner` of
:class:`~.executor.ModalExecutor`.  Each of its calls crosses once from trio to the
modal SDK's own event loop (:mod:`.bridge`) and runs there as one coroutine of
:class:`~.lifecycle.SandboxOps`: one crossing to create a sandbox, one to run it to
completion, each cancelled as a unit.

Neither ``modal`` nor ``trio_asyncio`` is imported before :meth:`ModalBackend.start`
(or :meth:`~ModalBackend.connect`), so importing arcflow never patches asyncio.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import trio

from ...errors import ConfigError
from ..base import raise_open_files_limit
from . import _internals
from .bridge import LoopBridge
from .config import ModalConfig
from .credentials import MISSING_CREDENTIALS_HELP, find_modal_credentials
from .lifecycle import Opened, ReaperStats, SandboxOps
from .sandboxes import CreatedSandbox, SandboxReport, SandboxRequest

logger = logging.getLogger("arcflow.executors.modal")

T = TypeVar("T")

#: The SDK retries a throttled call by itself, without limit, unless this is 0: arcflow
#: sets it (when the user did not) so that refusals reach its adaptive creation rate.
THROTTLE_ENV = "MODAL_MAX_THROTTLE_WAIT"
#: Seconds the end-of-run sweep of this process's sandboxes may take.
CLOSE_TIMEOUT_S = 8.0
#: Extra seconds a cancelled call gets beyond its own bounded clean-up.
_UNWIND_MARGIN_S = 5.0


class ModalBackend:
    """Creates and runs ``modal.Sandbox`` objects from trio; one per attempt.

    ``client_tag`` marks the sandboxes of this process (tag ``arcflow-client``), so that
    what is left at the end of the run (or after a crash, with the run's tag) is found.
    """

    def __init__(self, config: ModalConfig, *, client_tag: str) -> None:
        self.config = config
        self.ops = SandboxOps(config, client_tag=client_tag)
        self._bridge: LoopBridge | None = None
        self._modal: Any = None
        self._source = ""
        self._prepared = False
        self._lock = trio.Lock()

    # -- start --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Credentials, ``import modal``, the SDK's loop and the app; once.

        Raises :class:`ConfigError` for missing or rejected credentials, or modal not
        installed (or a modal release whose internals arcflow does not know).
        """
        if self._bridge is not None:
            return
        self._source, modal_, bridge = await open_sdk("modal:", _internals.check)
        self._modal = modal_
        await self._call(bridge, lambda: self.ops.connect(modal_), "looking up the app")
        self._bridge = bridge

    async def start(self) -> None:
        """:meth:`connect`, then resolve the secrets and build the image; once.

        Raises :class:`ConfigError` for credentials, unknown secrets, a failed image build.
        """
        async with self._lock:
            if self._prepared:
                return
            await self.connect()
            assert self._bridge is not None
            await self._call(self._bridge, self.ops.prepare, "preparing the image and secrets")
            self._prepared = True
            logger.info(
                "modal: app %r ready, credentials from %s", self.config.app_name, self._source
            )

    async def _call(
        self, bridge: LoopBridge, fn: Callable[[], Coroutine[Any, Any, T]], what: str
    ) -> T:
        modal_ = self._modal
        try:
            return await bridge.run(fn, unwind_s=_UNWIND_MARGIN_S)
        except modal_.exception.AuthError as exc:
            raise ConfigError(
                f"Modal rejected the credentials from {self._source}: {exc}. "
                f"{MISSING_CREDENTIALS_HELP}"
            ) from exc
        except modal_.exception.NotFoundError as exc:
            raise ConfigError(
                f"Modal could not find what ModalConfig names while {what}: {exc} "
                "(a secret: create it with `modal secret create NAME KEY=VALUE`)"
            ) from exc
        except modal_.exception.RemoteError as exc:
            raise ConfigError(
                f"building the Modal image ({self.config.image or 'debian_slim'}, "
                f"pip {list(self.config.pip)}) failed: {exc}"
            ) from exc
        except modal_.exception.ConnectionError as exc:
            where = os.environ.get("MODAL_SERVER_URL") or "api.modal.com"
            raise ConfigError(f"cannot reach Modal ({where}) while {what}: {exc}") from exc

    def _require(self) -> LoopBridge:
        if self._bridge is None or not self._prepared:
            raise RuntimeError("ModalExecutor.start() must run before any scenario")
        return self._bridge

    # -- the runner -----------------------------------------------------------------------

    async def create(self, request: SandboxRequest) -> CreatedSandbox:
        bridge = self._require()
        cfg = self.config
        return await bridge.run(
            lambda: self.ops.create(request),
            unwind_s=2 * cfg.terminate_timeout_s + _UNWIND_MARGIN_S,
            abandon=self.ops.abandon,
        )

    async def finish(self, sandbox: CreatedSandbox, stdin: bytes, report: SandboxReport) -> None:
        bridge = self._require()
        assert isinstance(sandbox, Opened)
        await bridge.run(
            lambda: self.ops.finish(sandbox, stdin, report),
            unwind_s=self.config.terminate_timeout_s + _UNWIND_MARGIN_S,
            always_start=True,
        )

    # -- a warm pool (PoolRunner) ------------------------------------------------------------

    async def exec_in(
        self,
        sandbox: CreatedSandbox,
        command: tuple[str, ...],
        stdin: bytes,
        report: SandboxReport,
    ) -> None:
        bridge = self._require()
        assert isinstance(sandbox, Opened)
        await bridge.run(
            lambda: self.ops.exec_in(sandbox, command, stdin, report),
            unwind_s=self.config.terminate_timeout_s + _UNWIND_MARGIN_S,
            always_start=True,
        )

    async def retire(self, sandbox: CreatedSandbox) -> None:
        bridge = self._require()
        assert isinstance(sandbox, Opened)
        await bridge.run(
            lambda: self.ops.retire(sandbox), unwind_s=_UNWIND_MARGIN_S, always_start=True
        )

    # -- by tags --------------------------------------------------------------------------

    async def sweep(
        self, tags: Mapping[str, str], *, dry_run: bool = False
    ) -> tuple[list[str], list[str]]:
        """Terminate the app's running sandboxes carrying all ``tags``: (found, terminated)."""
        await self.connect()
        assert self._bridge is not None
        return await self._bridge.run(
            lambda: self.ops.sweep(tags, dry_run=dry_run), unwind_s=_UNWIND_MARGIN_S
        )

    async def aclose(self) -> None:
        """Terminate what this process left running (bounded), and stop retrying."""
        if self._bridge is None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT_S + _UNWIND_MARGIN_S, shield=True):
            await self._bridge.run(
                lambda: self.ops.close(CLOSE_TIMEOUT_S), unwind_s=_UNWIND_MARGIN_S
            )

    @property
    def reaper_stats(self) -> ReaperStats:
        return self.ops.reaper.stats


async def open_sdk(kind: str, check: Callable[[Any], None]) -> tuple[str, Any, LoopBridge]:
    """What both Modal executors start with: the credentials, ``import modal``, ``check``
    of the SDK internals arcflow reads, Modal's throttling handed to arcflow, the open
    files limit raised, and a bridge to the SDK's own event loop.

    Returns where the credentials came from, the ``modal`` module and the bridge.
    Raises :class:`ConfigError` naming ``kind`` (``"modal:"``) for missing credentials,
    modal not installed, or a modal release whose internals arcflow does not know.
    """
    source = await trio.to_thread.run_sync(find_modal_credentials)
    try:
        modal_ = await trio.to_thread.run_sync(importlib.import_module, "modal")
    except ImportError as exc:
        raise ConfigError(
            f"the {kind} executor needs the modal package: pip install 'arcflow[modal]'"
        ) from exc
    try:
        check(modal_)
    except RuntimeError as exc:
        raise ConfigError(str(exc)) from None
    _own_throttling()
    raise_open_files_limit("modal", "each running sandbox holds a connection")
    loop = await trio.to_thread.run_sync(_internals.sdk_loop)
    return source, modal_, LoopBridge(loop)


def _own_throttling() -> None:
    """Have the SDK raise RESOURCE_EXHAUSTED instead of retrying it on its own."""
    value = os.environ.get(THROTTLE_ENV)
    if value is None:
        os.environ[THROTTLE_ENV] = "0"
    elif value.strip() != "0":
        logger.warning(
            "modal: %s=%s: the SDK waits out refusals itself, so arcflow's adaptive creation "
            "rate sees them late; unset it (arcflow then sets 0)",
            THROTTLE_ENV,
            value,
        )
