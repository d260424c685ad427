"""(asyncio) Sandboxes on the SDK's event loop: create, feed, read, wait, terminate, detach, sweep.

Everything here runs on the modal SDK's own event loop (see :mod:`.bridge`), so the
``.aio`` calls inside are direct awaits.  :class:`SandboxOps` holds what the calls
need (the ``modal`` module, the app, the image, the secrets) and what outlives one
attempt: the sandboxes still to terminate and the creations that may have made a
sandbox nobody knows (:class:`Reaper`).

One attempt's call pattern, chosen so that nothing holds a control-plane stream for
long (one client shares one HTTP/2 connection, 100 streams by default, and the SDK
queues calls beyond that):

* ``Sandbox.create`` with the tags, under ``create_timeout_s``;
* stdin in chunks of ``stdin_chunk_bytes``, each drained, EOF always sent (router);
* stdout and stderr read as bytes to EOF, concurrently (router);
* then ``wait()``, which answers at once since the output ended with the process
  (control plane), retried with backoff while the control plane is unreachable;
* ``terminate()`` at once on cancellation, bounded; ``detach()`` always.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import attrs

from ...retry import Backoff
from . import _internals
from .config import ModalConfig
from .sandboxes import (
    SandboxCreationThrottled,
    SandboxCreationUnavailable,
    SandboxReport,
    SandboxRequest,
)

log = logging.getLogger("arcflow.executors.modal")

T = TypeVar("T")

#: Tag names arcflow sets on every sandbox.
TAG_MARK = "arcflow"
TAG_RUN = "arcflow-run"
TAG_SCENARIO = "arcflow-scenario"
TAG_ATTEMPT = "arcflow-attempt"
TAG_CLIENT = "arcflow-client"
TAG_TRY = "arcflow-try"
#: On a warm pool's sandboxes (instead of the scenario and attempt tags).
TAG_POOL = "arcflow-pool"
#: Seconds detach() may take (it only closes a connection).
_DETACH_TIMEOUT_S = 5.0
#: Terminations the reaper and the sweeps run at once.
_PARALLEL_TERMINATIONS = 32
#: The exit code of a sandbox Modal stopped at its lifetime.
_LIFETIME_EXIT_CODE = 124


@attrs.define(eq=False)
class Opened:
    """A sandbox this process created (the ``modal.Sandbox``, used on the SDK loop only)."""

    sandbox: Any
    object_id: str


@attrs.define
class ReaperStats:
    """What the background terminations did."""

    #: Sandboxes handed over because terminate() or the wait failed.
    pending: int = 0
    #: ... and terminated later, once Modal answered.
    terminated_later: int = 0
    #: Sandboxes of uncertain creations (cancelled, timed out) found by their tags and terminated.
    orphans_terminated: int = 0
    #: Sandboxes still running at the end of the run, found by their tags and terminated.
    swept: int = 0


class SandboxOps:
    """The asyncio side of :class:`~.sdk.ModalBackend`; every coroutine runs on the SDK loop."""

    def __init__(self, config: ModalConfig, *, client_tag: str) -> None:
        self.config = config
        self.client_tag = client_tag
        self.modal: Any = None
        self.app: Any = None
        self.image: Any = None
        self.secrets: list[Any] = []
        self.reaper = Reaper(self)
        self._transient: tuple[type[BaseException], ...] = ()
        #: Pooled sandboxes being terminated in the background (:meth:`retire`).
        self._retiring: set[asyncio.Task[None]] = set()

    # -- set-up -------------------------------------------------------------------------

    async def connect(self, modal_: Any) -> None:
        """Look up the app (created if missing)."""
        self.modal = modal_
        self._transient = transient_errors(modal_)
        self.app = await modal_.App.lookup.aio(self.config.app_name, create_if_missing=True)

    async def prepare(self) -> None:
        """Resolve the secrets and build the image (raises the SDK's errors)."""
        modal_ = self.modal
        secrets = []
        for name in self.config.secrets:
            secret = modal_.Secret.from_name(name)
            await secret.hydrate.aio()
            secrets.append(secret)
        image = (
            modal_.Image.from_registry(self.config.image)
            if self.config.image
            else modal_.Image.debian_slim()
        )
        if self.config.pip:
            image = image.pip_install(*self.config.pip)
        self.image = await image.build.aio(self.app)
        self.secrets = secrets

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` may pass: control plane unreachable, reset, timed out or failing."""
        return isinstance(exc, self._transient)

    # -- one attempt ----------------------------------------------------------------------

    async def create(self, request: SandboxRequest) -> Opened:
        """Create the sandbox; cancelled, leave none behind (see :meth:`_settle`)."""
        call = asyncio.ensure_future(self._create_call(request))
        try:
            sandbox = await asyncio.shield(call)
        except asyncio.CancelledError:
            await self._settle(call, request)
            raise
        return Opened(sandbox, str(sandbox.object_id))

    async def _create_call(self, request: SandboxRequest) -> Any:
        modal_ = self.modal
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.create_timeout_s):
                return await modal_.Sandbox.create.aio(
                    *request.command,
                    app=self.app,
                    image=self.image,
                    secrets=self.secrets,
                    cpu=cfg.cpu,
                    memory=cfg.memory,
                    timeout=request.timeout_s,
                    tags=dict(request.tags),
                )
        except modal_.exception.ResourceExhaustedError as exc:
            raise SandboxCreationThrottled(
                describe(exc), retry_after=_internals.retry_after(exc)
            ) from None
        except TimeoutError:
            self.reaper.suspect(request.tags)
            raise SandboxCreationUnavailable(
                f"Modal did not answer the creation within {cfg.create_timeout_s:g}s "
                "(ModalConfig.create_timeout_s)",
                ambiguous=True,
            ) from None
        except Exception as exc:
            if not self.is_transient(exc):
                raise
            self.reaper.suspect(request.tags)
            raise SandboxCreationUnavailable(describe(exc), ambiguous=True) from None

    async def _settle(self, call: asyncio.Future[Any], request: SandboxRequest) -> None:
        """A cancelled creation: Modal may already have made the sandbox.  Wait (bounded) for
        the answer and terminate what it made; past the bound, the reaper finds it by tags."""
        if not call.done():
            await asyncio.wait({call}, timeout=self.config.terminate_timeout_s)
        if not call.done():
            call.cancel()
            self.reaper.suspect(request.tags)
            return
        if call.cancelled() or call.exception() is not None:
            return  # refused or failed: no sandbox (an uncertain failure is a suspect already)
        await self.abandon(Opened(call.result(), str(call.result().object_id)))

    async def abandon(self, opened: Opened) -> None:
        """Terminate and detach a sandbox nobody will run (its attempt was cancelled)."""
        report = SandboxReport(stdout=_null_capture(), stderr=_null_capture())
        await self.terminate(opened, report)
        await self.detach(opened)

    async def finish(self, opened: Opened, stdin: bytes, report: SandboxReport) -> None:
        """Feed, read, wait; on cancellation terminate at once; always detach."""
        sandbox = opened.sandbox
        tasks: list[asyncio.Task[None]] = []
        terminating: asyncio.Task[None] | None = None
        try:
            readers = [
                asyncio.ensure_future(self._read(sandbox, "stdout", report.stdout)),
                asyncio.ensure_future(self._read(sandbox, "stderr", report.stderr)),
            ]
            tasks = [*readers, asyncio.ensure_future(self._write(sandbox, stdin, report))]
            exc = await _first_failure(readers)
            if exc is not None:
                report.error = (
                    "SandboxOutputLost",
                    f"lost the output of sandbox {opened.object_id}: {describe(exc)}",
                )
                await self.terminate(opened, report)
                return
            await self._wait_exit(opened, report)
        except asyncio.CancelledError:
            # Terminate now, not after the cancelled reads and wait have unwound.
            terminating = asyncio.ensure_future(self.terminate(opened, report))
            raise
        finally:
            await _unwind(tasks, terminating)
            await self.detach(opened)

    async def _read(self, sandbox: Any, stream: str, capture: Any) -> None:
        """(a sandbox's or an exec's) ``stream`` read as raw bytes into ``capture``."""
        async for chunk in _internals.raw_output(sandbox, stream):
            capture.feed(chunk)

    async def _write(self, sandbox: Any, data: bytes, report: SandboxReport) -> None:
        """Write ``data`` in drained chunks, then EOF; a failure is noted, EOF still sent."""
        await self._feed(sandbox.stdin, data, report, f"sandbox {sandbox.object_id}")

    async def _feed(self, stdin: Any, data: bytes, report: SandboxReport, label: str) -> None:
        """Write ``data`` to ``stdin`` in drained chunks, then EOF; a failure is noted in
        ``report.input_error`` and EOF is still sent."""
        size = self.config.stdin_chunk_bytes
        try:
            view = memoryview(data)
            start = 0
            while True:
                piece = view[start : start + size]
                start += len(piece)
                if piece:
                    stdin.write(piece)
                if start >= len(data):
                    stdin.write_eof()
                await stdin.drain.aio()
                if start >= len(data):
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            report.input_error = describe(exc)
            log.debug("%s: writing stdin failed: %s", label, report.input_error)
        # The command must not wait for input that will never come: send EOF alone.
        try:
            _internals.drop_unsent_stdin(stdin)
            stdin.write_eof()
            async with asyncio.timeout(self.config.terminate_timeout_s):
                await stdin.drain.aio()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the first error is the one reported
            log.debug("%s: sending EOF failed too: %s", label, describe(exc))

    async def _wait_exit(self, opened: Opened, report: SandboxReport) -> None:
        """Learn how the sandbox ended; retried while the control plane is unreachable."""
        modal_ = self.modal
        sandbox = opened.sandbox
        tries = self.config.outage_backoff().start(clock=time.monotonic)
        while True:
            try:
                await sandbox.wait.aio(raise_on_termination=False)
            except modal_.exception.SandboxTimeoutError:
                report.lifetime_exceeded = True
                report.exit_code = _returncode(sandbox)
                return
            except Exception as exc:
                if not (self.is_transient(exc) or _is_throttle(modal_, exc)):
                    raise
                delay = tries.next_delay()
                if delay is None:
                    report.error = (
                        "ModalContactLost",
                        f"lost contact with Modal while waiting for sandbox {opened.object_id} "
                        f"to exit, for {tries.elapsed:.0f}s (ModalConfig.outage_retry_s): "
                        f"{describe(exc)}; it is terminated once Modal answers again",
                    )
                    report.terminate_pending = True
                    self.reaper.terminate_later(opened.object_id)
                    return
                log.info(
                    "sandbox %s: waiting for its exit failed (%s); retry in %.1fs",
                    opened.object_id,
                    describe(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            report.exit_code = _returncode(sandbox)
            return

    # -- a warm pool's sandboxes ----------------------------------------------------------

    async def exec_in(
        self, opened: Opened, command: tuple[str, ...], stdin: bytes, report: SandboxReport
    ) -> None:
        """Run ``command`` in a long-lived sandbox with ``Sandbox.exec``: feed, read, wait.

        The same contract as :meth:`finish` for one scenario's command; a failure to start
        it or to follow it is ``report.error``.  Cancelled, the sandbox is terminated at
        once (Modal has no way to stop one exec).  The sandbox is never detached here.
        """
        sandbox = opened.sandbox
        tasks: list[asyncio.Task[None]] = []
        terminating: asyncio.Task[None] | None = None
        try:
            try:
                # Bounded like a creation: the first exec also waits for the container start.
                async with asyncio.timeout(self.config.create_timeout_s):
                    process = await sandbox.exec.aio(*command, text=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = (
                    f"Modal did not start it within {self.config.create_timeout_s:g}s "
                    "(ModalConfig.create_timeout_s)"
                    if isinstance(exc, TimeoutError)
                    else describe(exc)
                )
                report.error = (
                    "SandboxExecFailed",
                    f"could not start the command in sandbox {opened.object_id}: {why}",
                )
                await self._note_finished(opened, report)
                return
            label = f"sandbox {opened.object_id} exec"
            readers = [
                # The raw reader under the SDK's (as for a sandbox's own output): no
                # synchronicity step per chunk, which cost about a sixth of the client's CPU.
                asyncio.ensure_future(self._read(process, "stdout", report.stdout)),
                asyncio.ensure_future(self._read(process, "stderr", report.stderr)),
            ]
            # The exit is asked for at once, beside the reads: one round trip less per scenario.
            waiter = asyncio.ensure_future(self._wait_exec(opened, process, report))
            tasks = [
                *readers,
                asyncio.ensure_future(self._feed(process.stdin, stdin, report, label)),
                waiter,
            ]
            first = await _first_failure(readers)
            if first is not None:
                report.error = (
                    "SandboxOutputLost",
                    f"lost the output of the command in sandbox {opened.object_id}: "
                    f"{describe(first)}",
                )
                return
            await waiter
            if report.exit_code != 0:
                await self._note_finished(opened, report)
        except asyncio.CancelledError:
            terminating = asyncio.ensure_future(self.terminate(opened, report))
            raise
        finally:
            await _unwind(tasks, terminating)

    async def _wait_exec(self, opened: Opened, process: Any, report: SandboxReport) -> None:
        """The exec's exit code; the SDK retries a lost router by itself, bounded here."""
        try:
            async with asyncio.timeout(self.config.outage_retry_s):
                report.exit_code = int(await process.wait.aio())
        except TimeoutError:
            report.error = (
                "ModalContactLost",
                f"could not learn how the command in sandbox {opened.object_id} ended within "
                f"{self.config.outage_retry_s:g}s (ModalConfig.outage_retry_s)",
            )

    async def _note_finished(self, opened: Opened, report: SandboxReport) -> None:
        """After a failed command: whether the sandbox itself has ended (it died, or reached
        its lifetime), bounded; unknown counts as alive (the error recycles it anyway)."""
        try:
            async with asyncio.timeout(self.config.terminate_timeout_s):
                code = await opened.sandbox.poll.aio()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("sandbox %s: poll failed: %s", opened.object_id, describe(exc))
            return
        if code is not None:
            report.sandbox_finished = True
            if int(code) == _LIFETIME_EXIT_CODE:
                report.lifetime_exceeded = True

    async def retire(self, opened: Opened) -> None:
        """Terminate and detach a pooled sandbox in the background (:meth:`close` waits)."""
        task = asyncio.ensure_future(self._retire(opened))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, opened: Opened) -> None:
        report = SandboxReport(stdout=_null_capture(), stderr=_null_capture())
        try:
            await self.terminate(opened, report)
        finally:
            await self.detach(opened)

    async def terminate(self, opened: Opened, report: SandboxReport) -> None:
        """terminate(), bounded; when it fails, the reaper retries until Modal answers."""
        try:
            async with asyncio.timeout(self.config.terminate_timeout_s):
                await opened.sandbox.terminate.aio()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "could not terminate sandbox %s (%s); retrying in the background",
                opened.object_id,
                "timed out" if isinstance(exc, TimeoutError) else describe(exc),
            )
            report.terminate_pending = True
            self.reaper.terminate_later(opened.object_id)
            return
        report.terminated = True

    async def detach(self, opened: Opened) -> None:
        """Close the sandbox's connection (to its task command router) now."""
        try:
            async with asyncio.timeout(_DETACH_TIMEOUT_S):
                await opened.sandbox.detach.aio()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # nothing to do about it
            log.debug("detaching sandbox %s failed: %s", opened.object_id, describe(exc))

    # -- by id and by tags ----------------------------------------------------------------

    async def terminate_id(self, sandbox_id: str) -> bool:
        """Terminate a sandbox known by id; True when Modal confirmed (or it is gone)."""
        modal_ = self.modal
        try:
            async with asyncio.timeout(self.config.terminate_timeout_s):
                sandbox = await modal_.Sandbox.from_id.aio(sandbox_id)
                try:
                    await sandbox.terminate.aio()
                finally:
                    await sandbox.detach.aio()
        except modal_.exception.NotFoundError:
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # retried by the caller
            log.debug("terminating sandbox %s failed: %s", sandbox_id, describe(exc))
            return False
        return True

    async def list_ids(self, tags: Mapping[str, str]) -> list[str]:
        """Ids of the running sandboxes of the app that carry all of ``tags``."""
        ids = []
        async with asyncio.timeout(self.config.terminate_timeout_s * 3):
            async for sandbox in self.modal.Sandbox.list.aio(
                app_id=self.app.app_id, tags=dict(tags)
            ):
                ids.append(str(sandbox.object_id))
        return ids

    async def sweep(
        self, tags: Mapping[str, str], *, dry_run: bool = False
    ) -> tuple[list[str], list[str]]:
        """Terminate every running sandbox of the app carrying ``tags``: (found, terminated)."""
        found = await self.list_ids(tags)
        if dry_run or not found:
            return found, []
        done = await bounded_gather(
            [self.terminate_id(sandbox_id) for sandbox_id in found], _PARALLEL_TERMINATIONS
        )
        return found, [sid for sid, ok in zip(found, done, strict=True) if ok]

    async def close(self, deadline_s: float) -> None:
        """End of the run: terminate what this process left running, within ``deadline_s``."""
        try:
            async with asyncio.timeout(deadline_s):
                if self._retiring:
                    await asyncio.wait(set(self._retiring))
                _, terminated = await self.sweep({TAG_CLIENT: self.client_tag})
                self.reaper.stats.swept += len(terminated)
                if terminated:
                    log.warning(
                        "modal: terminated %d sandbox(es) of this run still running at its end",
                        len(terminated),
                    )
                await self.reaper.drain()
        except TimeoutError:
            left = self.reaper.outstanding()
            if left:
                log.warning(
                    "modal: %d sandbox(es) may still run (Modal did not answer in time): %s; "
                    "they stop at their lifetime, or run `python -m arcflow modal sweep RUN_ID`",
                    len(left),
                    ", ".join(left[:10]),
                )


class Reaper:
    """(asyncio) Terminations that could not happen when they should have, retried until Modal
    answers: sandboxes whose terminate() failed, and creations that may have made a sandbox
    (found by their ``arcflow-try`` tag)."""

    def __init__(self, ops: SandboxOps) -> None:
        self.ops = ops
        self.stats = ReaperStats()
        self._ids: set[str] = set()
        self._tries: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def outstanding_count(self) -> int:
        """Sandboxes and uncertain creations still to terminate (read from any thread)."""
        return len(self._ids) + len(self._tries)

    def outstanding(self) -> list[str]:
        return sorted(self._ids) + [f"(creation {key})" for key in sorted(self._tries)]

    def terminate_later(self, sandbox_id: str) -> None:
        self.stats.pending += 1
        self._ids.add(sandbox_id)
        self._kick()

    def suspect(self, tags: Mapping[str, str]) -> None:
        key = tags.get(TAG_TRY)
        if key:
            self._tries.add(key)
            self._kick()

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._idle.clear()
            self._task = asyncio.ensure_future(self._run())

    async def drain(self) -> None:
        """Wait until nothing is left to terminate."""
        if self._ids or self._tries:
            self._kick()
        await self._idle.wait()

    async def _run(self) -> None:
        cfg = self.ops.config
        backoff = Backoff(base=cfg.create_backoff_s, cap=cfg.create_backoff_max_s)
        tries = backoff.start(clock=time.monotonic)
        try:
            while self._ids or self._tries:
                progress = await self._round()
                if not (self._ids or self._tries):
                    break
                if progress:
                    tries = backoff.start(clock=time.monotonic)
                delay = tries.next_delay() or cfg.create_backoff_max_s
                await asyncio.sleep(delay)
        finally:
            self._idle.set()

    async def _round(self) -> bool:
        ops = self.ops
        progress = False
        ids = sorted(self._ids)
        done = await bounded_gather([ops.terminate_id(sid) for sid in ids], _PARALLEL_TERMINATIONS)
        for sid, ok in zip(ids, done, strict=True):
            if ok:
                self._ids.discard(sid)
                self.stats.terminated_later += 1
                progress = True
                log.warning("modal: terminated sandbox %s once Modal answered again", sid)
        for key in sorted(self._tries):
            try:
                found, terminated = await ops.sweep({TAG_CLIENT: ops.client_tag, TAG_TRY: key})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried next round
                log.debug(
                    "modal: looking for the sandbox of creation %s failed: %s", key, describe(exc)
                )
                continue
            if len(terminated) == len(found):
                self._tries.discard(key)
                progress = True
                self.stats.orphans_terminated += len(terminated)
                for sid in terminated:
                    log.warning("modal: terminated sandbox %s of an uncertain creation", sid)
        return progress


async def bounded_gather(calls: list[Awaitable[T]], limit: int) -> list[T]:
    """Await ``calls`` with at most ``limit`` at once; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with semaphore:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


def transient_errors(modal_: Any) -> tuple[type[BaseException], ...]:
    """Errors that may pass: what the SDK raises once its own retries of a lost, reset, timed out
    or failing control plane are spent."""
    from grpclib.exceptions import StreamTerminatedError

    errors: list[type[BaseException]] = [
        modal_.exception.ServiceError,  # UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, UNKNOWN
        modal_.exception.InternalError,
        modal_.exception.ConnectionError,
        StreamTerminatedError,
        OSError,
        TimeoutError,
    ]
    try:
        from h2.exceptions import ProtocolError

        errors.append(ProtocolError)
    except ImportError:  # pragma: no cover - h2 comes with grpclib
        pass
    return tuple(errors)


def _is_throttle(modal_: Any, exc: BaseException) -> bool:
    return isinstance(exc, modal_.exception.ResourceExhaustedError)


def _returncode(sandbox: Any) -> int:
    code = sandbox.returncode
    return int(code) if code is not None else -1


def describe(exc: BaseException) -> str:
    """``Type: message`` (the type alone when there is no message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _null_capture() -> Any:
    from ..output import OutputCapture

    return OutputCapture(0, keep="head")


async def _first_failure(readers: list[asyncio.Task[None]]) -> BaseException | None:
    """Wait for a command's output readers to end; the first one's error, if one failed."""
    await asyncio.wait(readers)
    for reader in readers:
        exc = reader.exception()
        if exc is not None:
            return exc
    return None


async def _unwind(tasks: list[asyncio.Task[None]], terminating: asyncio.Task[None] | None) -> None:
    """Cancel what is left of a command's tasks, wait for them and for a terminate under way."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    if terminating is not None:
        await terminating
