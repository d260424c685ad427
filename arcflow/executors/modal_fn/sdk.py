"""The real backend of ``modal-fn:``: a deployed Modal Function called through the SDK.

:class:`FunctionBackend` is the :class:`~.calls.FunctionRunner` of
:class:`~.executor.ModalFnExecutor`.  Each of its calls crosses once from trio to the
modal SDK's own event loop (:class:`~arcflow.executors.modal.bridge.LoopBridge`) and runs
there as one coroutine of :class:`~.ops.FunctionOps`: an attempt's spawn, the id noted in
the run's ledger and the whole wait for the result (with the cancel on Modal's side when
it is cancelled) are one crossing.

Neither ``modal`` nor ``trio_asyncio`` is imported before :meth:`FunctionBackend.start`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import trio

from ...errors import ConfigError
from ..modal.bridge import LoopBridge
from ..modal.credentials import MISSING_CREDENTIALS_HELP
from ..modal.sdk import open_sdk
from . import _internals
from .calls import CallReport, CallRequest
from .config import ModalFnConfig
from .ledger import CallKey, CallLedger, LedgerStats
from .ops import FunctionOps, LiveStats

logger = logging.getLogger("arcflow.executors.modal_fn")


T = TypeVar("T")

#: Extra seconds a cancelled call gets beyond its own bounded clean-up.
_UNWIND_MARGIN_S = 5.0
#: Seconds the end of the run may spend on cancels still pending.
CLOSE_TIMEOUT_S = 8.0


class FunctionBackend:
    """Calls ``app_name/function_name`` from trio, one crossing to the SDK's loop per step."""

    def __init__(self, config: ModalFnConfig, *, app_name: str, function_name: str) -> None:
        self.config = config
        self.app_name = app_name
        self.function_name = function_name
        self.ops = FunctionOps(config, app_name=app_name, function_name=function_name)
        self._bridge: LoopBridge | None = None
        self._modal: Any = None
        self._source = ""
        self._lock = trio.Lock()

    @property
    def live(self) -> LiveStats:
        return self.ops.live

    @property
    def cancels_pending(self) -> int:
        return self.ops.canceller.outstanding

    @property
    def connections(self) -> int:
        lanes = self.ops.lanes
        return len(lanes.lanes) if lanes is not None else 0

    # -- start --------------------------------------------------------------------------

    async def start(self) -> None:
        """Credentials, ``import modal``, the SDK's loop, the function's lookup; once.

        Raises :class:`ConfigError` for missing or rejected credentials, modal not
        installed, an unreachable control plane, or a function Modal does not know.
        """
        async with self._lock:
            if self._bridge is not None:
                return
            self._source, modal_, bridge = await open_sdk("modal-fn:", _internals.check)
            self._modal = modal_
            await self._start_call(bridge, lambda: self.ops.connect(modal_))
            self._bridge = bridge
            logger.info(
                "modal-fn: function %s/%s found, credentials from %s",
                self.app_name,
                self.function_name,
                self._source,
            )

    async def _start_call(self, bridge: LoopBridge, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        modal_ = self._modal
        env = self.config.environment_name
        where = f"app {self.app_name!r}" + (f" of environment {env!r}" if env else "")
        try:
            return await bridge.run(fn, unwind_s=_UNWIND_MARGIN_S)
        except modal_.exception.AuthError as exc:
            raise ConfigError(
                f"Modal rejected the credentials from {self._source}: {exc}. "
                f"{MISSING_CREDENTIALS_HELP}"
            ) from exc
        except modal_.exception.NotFoundError as exc:
            raise ConfigError(
                f"Modal has no function {self.function_name!r} in {where} ({exc}). Deploy it "
                "first, for example `modal deploy examples/modal_app.py` (app 'arcflow-example', "
                "function 'score'), then run with --executor modal-fn:APP/FUNCTION "
                "(and --modal-fn-environment NAME if it is not in your default environment)"
            ) from exc
        except modal_.exception.ConnectionError as exc:
            url = os.environ.get("MODAL_SERVER_URL") or "api.modal.com"
            raise ConfigError(
                f"cannot reach Modal ({url}) while looking up {self.function_name!r} in {where}: "
                f"{exc}"
            ) from exc

    def _require(self) -> LoopBridge:
        if self._bridge is None:
            raise RuntimeError("ModalFnExecutor.start() must run before any scenario")
        return self._bridge

    # -- the runner -----------------------------------------------------------------------

    async def call(self, request: CallRequest, report: CallReport) -> None:
        bridge = self._require()
        await bridge.run(
            lambda: self.ops.call(request, report),
            unwind_s=2 * self.config.cancel_timeout_s + _UNWIND_MARGIN_S,
        )

    async def wait(
        self, call_id: str, report: CallReport, key: tuple[str, CallKey] | None = None
    ) -> None:
        bridge = self._require()
        await bridge.run(
            lambda: self.ops.wait(call_id, report, key),
            unwind_s=self.config.cancel_timeout_s + _UNWIND_MARGIN_S,
            always_start=True,
        )

    async def cancel(self, call_id: str) -> bool:
        bridge = self._require()
        return await bridge.run(
            lambda: self.ops.cancel_or_later(call_id),
            unwind_s=self.config.cancel_timeout_s + _UNWIND_MARGIN_S,
            always_start=True,
        )

    # -- the ledger (the call ids in the run's database) ---------------------------------------

    def use_database(self, dsn: str | None, *, function: str) -> None:
        cfg = self.config
        self.ops.ledger = CallLedger(
            dsn,
            function=function,
            interval_s=cfg.ledger_interval_s,
            timeout_s=cfg.ledger_timeout_s,
            max_pending=cfg.ledger_max_pending,
        )

    @property
    def ledger_stats(self) -> LedgerStats | None:
        ledger = self.ops.ledger
        return ledger.stats if ledger is not None else None

    async def prepare_ledger(self, run_id: str, *, resume: bool) -> dict[CallKey, str]:
        """Create the ledger's table and start its writer; on resume, the calls in flight."""
        ledger = self.ops.ledger
        bridge = self._require()
        if ledger is None:
            return {}

        async def go() -> dict[CallKey, str]:
            assert ledger is not None
            async with asyncio.timeout(3 * self.config.ledger_timeout_s):
                await ledger.prepare()
                return await ledger.in_flight(run_id) if resume else {}

        try:
            return await bridge.run(go, unwind_s=_UNWIND_MARGIN_S)
        except BaseException:
            self.ops.ledger = None
            with trio.move_on_after(5, shield=True):
                await bridge.run(lambda: ledger.close(1.0), unwind_s=_UNWIND_MARGIN_S)
            raise

    async def aclose(self) -> None:
        """Stop reading stats, send the cancels still pending (bounded), close connections."""
        if self._bridge is None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT_S + _UNWIND_MARGIN_S, shield=True):
            await self._bridge.run(
                lambda: self.ops.close(CLOSE_TIMEOUT_S), unwind_s=_UNWIND_MARGIN_S
            )
