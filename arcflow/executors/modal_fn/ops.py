"""(asyncio) What runs on the SDK's event loop for ``modal-fn:``: spawn, wait, cancel.

:class:`FunctionOps` holds the function, the connections for waits (:class:`Lanes`), the
background canceller and the ledger; every coroutine here runs on the modal SDK's own
loop, started by :class:`~.sdk.FunctionBackend` (one crossing from trio per step).

Waits are long polls (``FunctionGetOutputs`` holds its stream until the output is there,
up to 55 s), and one client multiplexes every call on one HTTP/2 connection, whose server
caps the streams open at once (100 is common; the SDK queues calls beyond it).  A
thousand calls in flight would hold every stream, and spawns and cancels would queue
behind waits.  So waits go to :class:`Lanes`: at most ``waits_per_connection`` per
connection, more connections (clients of their own) opened as needed, up to
``max_connections``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import attrs

from ...retry import Backoff
from ..modal.lifecycle import bounded_gather, describe, transient_errors
from . import _internals
from .calls import CallRefused, CallReport, CallRequest, CallUnavailable, RemoteFailure
from .config import ModalFnConfig
from .ledger import CallKey, CallLedger

logger = logging.getLogger("arcflow.executors.modal_fn")

#: Seconds before opening another connection is tried again after a failure.
_OPEN_RETRY_S = 30.0
#: Cancels the background canceller sends at once.
_PARALLEL_CANCELS = 32


@attrs.define
class LiveStats:
    """What Modal reports about the function (``Function.get_current_stats()``), and what
    the asyncio side counts.  Written on the SDK's loop, read from trio (plain numbers)."""

    backlog: int | None = None
    runners: int | None = None
    running_inputs: int | None = None
    #: Stats reads that failed.
    stats_failures: int = 0
    #: Spawns whose fate is unknown (cancelled or timed out before Modal answered): a call
    #: may run that nobody knows of (function calls cannot be listed by tag).
    uncertain_spawns: int = 0
    #: Calls cancelled on Modal's side, and cancels retried later and confirmed then.
    cancels: int = 0
    cancels_later: int = 0
    #: Connections opened for waits beyond the first one.
    extra_connections: int = 0


@attrs.define(eq=False)
class _Lane:
    client: Any  # the implementation object of a modal client
    owned: bool
    waits: int = 0


class Lanes:
    """(asyncio) Connections for waits: at most ``per`` waits each, more opened on demand.

    The first lane is the function's own client (it also carries spawns, cancels and
    stats, which take a stream only briefly); the others are clients of their own, made by
    ``make()`` (None when it cannot make one: then every wait shares the first).
    """

    def __init__(
        self,
        main: Any,
        *,
        per: int,
        maximum: int,
        make: Callable[[], Coroutine[Any, Any, Any]],
        on_open: Callable[[], None] = lambda: None,
    ) -> None:
        self.lanes: list[_Lane] = [_Lane(main, owned=False)]
        self.per = per
        self.maximum = maximum
        self._make = make
        self._on_open = on_open
        self._opening: asyncio.Future[None] | None = None
        self._blocked_until = -float("inf")

    @contextlib.asynccontextmanager
    async def lane(self) -> AsyncIterator[Any]:
        """A client to wait on, its wait counted while the block runs."""
        chosen = await self._pick()
        chosen.waits += 1
        try:
            yield chosen.client
        finally:
            chosen.waits -= 1

    async def _pick(self) -> _Lane:
        while True:
            best = min(self.lanes, key=lambda lane: lane.waits)
            if (
                best.waits < self.per
                or len(self.lanes) >= self.maximum
                or time.monotonic() < self._blocked_until
            ):
                return best
            if self._opening is None:
                self._opening = asyncio.ensure_future(self._open())
            await asyncio.shield(self._opening)

    async def _open(self) -> None:
        try:
            client = await self._make()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            client = None
            logger.warning(
                "modal-fn: cannot open another connection to Modal (%s); waits share the "
                "ones open (retried in %gs)",
                describe(exc),
                _OPEN_RETRY_S,
            )
        finally:
            self._opening = None
        if client is None:
            self._blocked_until = time.monotonic() + _OPEN_RETRY_S
            return
        self.lanes.append(_Lane(client, owned=True))
        self._on_open()

    async def close(self) -> None:
        owned, self.lanes = [lane for lane in self.lanes if lane.owned], self.lanes[:1]
        for lane in owned:
            with contextlib.suppress(Exception):
                await lane.client.close()


class FunctionOps:
    """The asyncio side of :class:`FunctionBackend`; every coroutine runs on the SDK loop."""

    def __init__(self, config: ModalFnConfig, *, app_name: str, function_name: str) -> None:
        self.config = config
        self.app_name = app_name
        self.function_name = function_name
        self.modal: Any = None
        self.function: Any = None
        self.lanes: Lanes | None = None
        self.live = LiveStats()
        self.canceller = Canceller(self)
        #: The run's call ids in its database (None: not recorded).
        self.ledger: CallLedger | None = None
        self._transient: tuple[type[BaseException], ...] = ()
        self._stats_task: asyncio.Task[None] | None = None
        self._warned_single = False

    # -- set-up -------------------------------------------------------------------------

    async def connect(self, modal_: Any) -> None:
        """Look the function up (raises NotFoundError, AuthError, ConnectionError); start
        reading its stats."""
        self.modal = modal_
        self._transient = transient_errors(modal_)
        fn = modal_.Function.from_name(
            self.app_name, self.function_name, environment_name=self.config.environment_name
        )
        await fn.hydrate.aio()
        self.function = fn
        cfg = self.config

        def opened() -> None:
            self.live.extra_connections += 1

        self.lanes = Lanes(
            _internals.impl(fn).client,
            per=cfg.waits_per_connection,
            maximum=cfg.max_connections,
            make=self._new_client,
            on_open=opened,
        )
        if cfg.stats_interval_s > 0:
            self._stats_task = asyncio.ensure_future(self._read_stats())

    async def _new_client(self) -> Any:
        """Another client (connection) with the same token; None if there is no token to use."""
        from modal.config import config as modal_config

        token_id, token_secret = modal_config.get("token_id"), modal_config.get("token_secret")
        if not (token_id and token_secret):
            if not self._warned_single:
                self._warned_single = True
                logger.info(
                    "modal-fn: no token id/secret to open more connections with (OAuth "
                    "credentials?): every wait shares one connection"
                )
            return None
        client = await self.modal.Client.from_credentials.aio(token_id, token_secret)
        return _internals.impl(client)

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, self._transient)

    # -- one attempt ----------------------------------------------------------------------

    async def call(self, request: CallRequest, report: CallReport) -> None:
        """Spawn, note the id (report, ledger), wait for the result: one crossing."""
        call_id = await self.spawn(request)
        report.call_id = call_id
        key = (request.run_id, (request.scenario_id, request.epoch, request.attempt))
        if self.ledger is not None:
            self.ledger.spawned(key[0], key[1], call_id)
        await self.wait(call_id, report, key)

    async def spawn(self, request: CallRequest) -> str:
        """Spawn the call; cancelled, wait (bounded) for a spawn already sent and cancel
        the call it made."""
        task = asyncio.ensure_future(self._spawn(request))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await self._settle(task)
            raise

    async def _spawn(self, request: CallRequest) -> str:
        modal_ = self.modal
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.spawn_timeout_s):
                call = await self.function.spawn.aio(dict(request.payload))
        except modal_.exception.ResourceExhaustedError as exc:
            raise CallRefused(describe(exc), retry_after=_internals.retry_after(exc)) from None
        except TimeoutError:
            self.live.uncertain_spawns += 1
            raise CallUnavailable(
                f"Modal did not answer the spawn within {cfg.spawn_timeout_s:g}s "
                "(ModalFnConfig.spawn_timeout_s)",
                ambiguous=True,
            ) from None
        except Exception as exc:
            if not self.is_transient(exc):
                raise
            self.live.uncertain_spawns += 1
            raise CallUnavailable(describe(exc), ambiguous=True) from None
        return str(call.object_id)

    async def _settle(self, task: asyncio.Future[str]) -> None:
        if not task.done():
            await asyncio.wait({task}, timeout=self.config.cancel_timeout_s)
        if not task.done():
            task.cancel()
            self.live.uncertain_spawns += 1
            logger.warning(
                "modal-fn: a cancelled spawn got no answer within %gs; if Modal made the call, "
                "it runs to its end (its id is unknown)",
                self.config.cancel_timeout_s,
            )
            return
        if task.cancelled() or task.exception() is not None:
            return
        await self.abandon(task.result())

    async def abandon(self, call_id: str) -> None:
        """Cancel a call nobody will wait for (its attempt was cancelled as it was spawned)."""
        await self.cancel_or_later(call_id)

    # -- wait -----------------------------------------------------------------------------

    async def wait(
        self, call_id: str, report: CallReport, key: tuple[str, CallKey] | None = None
    ) -> None:
        """Wait for the result into ``report``; cancelled, cancel the call first."""
        cancelling: asyncio.Future[None] | None = None
        report.call_id = call_id
        try:
            await self._wait(call_id, report)
        except asyncio.CancelledError:
            cancelling = asyncio.ensure_future(self._cancel_for(call_id, report, key))
            raise
        finally:
            if cancelling is not None:
                await cancelling

    async def _wait(self, call_id: str, report: CallReport) -> None:
        modal_ = self.modal
        assert self.lanes is not None
        async with self.lanes.lane() as client:
            while True:
                try:
                    response = await _internals.poll_outputs(
                        client, call_id, _internals.OUTPUTS_POLL_S
                    )
                except modal_.exception.NotFoundError as exc:
                    report.gone = f"Modal does not know call {call_id}: {describe(exc)}"
                    return
                except Exception as exc:
                    if self.is_transient(exc) or isinstance(
                        exc, modal_.exception.ResourceExhaustedError
                    ):
                        raise CallUnavailable(describe(exc)) from None
                    raise
                if response.outputs:
                    break
                if response.num_unfinished_inputs == 0:
                    report.gone = (
                        f"the output of call {call_id} has expired (Modal keeps results for "
                        "a limited time)"
                    )
                    return
            item = response.outputs[0]
            try:
                value = await _internals.output_value(client, item)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # the remote exception, whatever it is
                report.failure = self._failure(exc, item)
                return
        report.value = value
        report.returned = True

    def _failure(self, exc: BaseException, item: Any) -> RemoteFailure:
        cfg = self.config
        remote_tb = str(getattr(item.result, "traceback", "") or "")
        text = remote_tb or "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        tail = "\n".join(text.rstrip().splitlines()[-cfg.traceback_lines :])
        message = str(exc).strip() or repr(exc)
        if len(message) > cfg.error_message_limit:
            message = message[: cfg.error_message_limit] + " [...]"
        from modal_proto import api_pb2

        return RemoteFailure(
            type_name=type(exc).__name__,
            message=message,
            traceback_tail=tail,
            timed_out=isinstance(exc, self.modal.exception.FunctionTimeoutError),
            terminated=item.result.status == api_pb2.GenericResult.GENERIC_STATUS_TERMINATED,
        )

    # -- cancel ---------------------------------------------------------------------------

    async def _cancel_for(
        self, call_id: str, report: CallReport, key: tuple[str, CallKey] | None
    ) -> None:
        if await self.cancel(call_id):
            report.cancelled = True
            if key is not None and self.ledger is not None:
                self.ledger.cancelled(key[0], key[1], call_id)
        else:
            report.cancel_pending = True
            self.canceller.later(call_id)

    async def cancel(self, call_id: str) -> bool:
        """Cancel a call; True once Modal confirmed (or does not know it), bounded."""
        modal_ = self.modal
        try:
            async with asyncio.timeout(self.config.cancel_timeout_s):
                await modal_.FunctionCall.from_id(call_id).cancel.aio()
        except modal_.exception.NotFoundError:
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning(
                "modal-fn: could not cancel call %s (%s); retrying in the background",
                call_id,
                "timed out" if isinstance(exc, TimeoutError) else describe(exc),
            )
            return False
        self.live.cancels += 1
        return True

    async def cancel_or_later(self, call_id: str) -> bool:
        """Cancel now, or hand the call to the background canceller."""
        if await self.cancel(call_id):
            return True
        self.canceller.later(call_id)
        return False

    # -- stats and the end ----------------------------------------------------------------

    async def _read_stats(self) -> None:
        live = self.live
        while True:
            try:
                async with asyncio.timeout(10):
                    stats = await self.function.get_current_stats.aio()
                live.backlog = int(stats.backlog)
                live.runners = int(stats.num_total_runners)
                live.running_inputs = int(stats.num_running_inputs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                live.stats_failures += 1
                logger.debug("modal-fn: reading the function's stats failed: %s", describe(exc))
            await asyncio.sleep(self.config.stats_interval_s)

    async def close(self, deadline_s: float) -> None:
        """End of the run: stop the stats, send the cancels pending, close connections."""
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(BaseException):
                await self._stats_task
            self._stats_task = None
        try:
            async with asyncio.timeout(deadline_s):
                await self.canceller.drain()
        except TimeoutError:
            self.canceller.stop()  # its task must not outlive the run on the SDK's loop
            left = sorted(self.canceller.ids)
            logger.warning(
                "modal-fn: %d call(s) could not be cancelled (Modal did not answer in time): "
                "%s; they run until they end or reach the function's timeout",
                len(left),
                ", ".join(left[:10]),
            )
        if self.ledger is not None:
            await self.ledger.close(deadline_s)
        if self.lanes is not None:
            await self.lanes.close()


class Canceller:
    """(asyncio) Cancels that failed when they should have happened, retried until Modal
    answers (with backoff)."""

    def __init__(self, ops: FunctionOps) -> None:
        self.ops = ops
        self.ids: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def outstanding(self) -> int:
        return len(self.ids)

    def later(self, call_id: str) -> None:
        self.ids.add(call_id)
        if self._task is None or self._task.done():
            self._idle.clear()
            self._task = asyncio.ensure_future(self._run())

    async def drain(self) -> None:
        if self.ids and (self._task is None or self._task.done()):
            self._idle.clear()
            self._task = asyncio.ensure_future(self._run())
        await self._idle.wait()

    def stop(self) -> None:
        """Stop retrying (the run is over); the ids left stay in ``ids`` for the warning."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        cfg = self.ops.config
        backoff = Backoff(base=cfg.backoff_s, cap=cfg.backoff_max_s)
        tries = backoff.start(clock=time.monotonic)
        try:
            while self.ids:
                ids = sorted(self.ids)
                done = await bounded_gather([self.ops.cancel(i) for i in ids], _PARALLEL_CANCELS)
                for call_id, ok in zip(ids, done, strict=True):
                    if ok:
                        self.ids.discard(call_id)
                        self.ops.live.cancels_later += 1
                        logger.warning("modal-fn: cancelled call %s once Modal answered", call_id)
                if self.ids:
                    await asyncio.sleep(tries.next_delay() or cfg.backoff_max_s)
        finally:
            self._idle.set()
