"""Local processes standing in for Modal containers.

A :class:`LocalProcess` is one subprocess in a session (and process group) of
its own, its stdout/stderr collected into :class:`OutputBuffer` objects that
readers address by byte offset (as the task command router does), its stdin fed
in offset order.  A :class:`LocalSandbox` runs one such process as a sandbox's
entrypoint: optional cold start, lifetime (``timeout``), terminate, and the
final ``GenericResult`` the way Modal reports it; ``exec`` runs more processes
in the same "container".  Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modal_proto import api_pb2

__all__ = ["LocalExec", "LocalProcess", "LocalSandbox", "OutputBuffer"]

GenericStatus = api_pb2.GenericResult

#: Seconds to wait for a finished process's pipes to reach EOF before giving up on
#: processes that escaped the process group (e.g. with setsid).
PIPE_DRAIN_TIMEOUT_S = 2.0


class OutputBuffer:
    """Bytes written by a process, addressable by absolute offset, keeping the newest ``retention``."""

    def __init__(self, retention: int | None = None) -> None:
        self._data = bytearray()
        self._start = 0
        self._retention = retention
        self.eof = False
        self._changed = asyncio.Event()

    @property
    def end(self) -> int:
        """Offset one past the last byte written so far."""
        return self._start + len(self._data)

    def append(self, chunk: bytes) -> None:
        self._data.extend(chunk)
        if self._retention is not None and len(self._data) > self._retention:
            drop = len(self._data) - self._retention
            del self._data[:drop]
            self._start += drop
        self._notify()

    def close(self) -> None:
        self.eof = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def getvalue(self) -> bytes:
        """Everything still retained."""
        return bytes(self._data)

    async def read(self, offset: int, max_bytes: int) -> tuple[int, bytes] | None:
        """``(starting_offset, data)`` from ``offset`` on, waiting for data; None at EOF.

        ``starting_offset`` is greater than ``offset`` when that part was dropped.
        """
        while True:
            offset = max(offset, self._start)
            if offset < self.end:
                begin = offset - self._start
                return offset, bytes(self._data[begin : begin + max_bytes])
            if self.eof:
                return None
            await self._changed.wait()


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's subprocess protocol, also telling us the moment the process exits."""

    def __init__(self, on_exit: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_exit = on_exit

    def process_exited(self) -> None:
        super().process_exited()
        self._on_exit()


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class LocalProcess:
    """One subprocess in its own session, with offset-addressed stdio."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        capture_stdout: bool = True,
        capture_stderr: bool = True,
        retention: int | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.capture_stdout = capture_stdout
        self.capture_stderr = capture_stderr
        self.stdout = OutputBuffer(retention)
        self.stderr = OutputBuffer(retention)
        self.pid: int | None = None
        #: asyncio's returncode: negative for "killed by signal -N".
        self.returncode: int | None = None
        self.spawn_error: str | None = None
        self.spawned = asyncio.Event()
        self.exited = asyncio.Event()
        self.stdin_offset = 0
        self.stdin_closed = False
        self.stdin_discarded = 0
        self._stdin_lock = asyncio.Lock()
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._transport: asyncio.SubprocessTransport | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self.returncode is None

    async def spawn(self) -> bool:
        """Start the process; False (and stderr saying why, exit code 127) if it cannot start."""
        loop = asyncio.get_running_loop()

        def protocol() -> _ExitProtocol:
            return _ExitProtocol(self._on_exit, limit=2**16, loop=loop)

        pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        try:
            transport, proto = await loop.subprocess_exec(
                protocol,
                *self.argv,
                stdin=pipe,
                stdout=pipe if self.capture_stdout else devnull,
                stderr=pipe if self.capture_stderr else devnull,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self.spawn_error = f"failed to start {self.argv[0]!r}: {exc}"
            self.stderr.append(self.spawn_error.encode() + b"\n")
            self.returncode = 127
            self._close_buffers()
            self.spawned.set()
            self.exited.set()
            return False
        self._transport = transport
        self._proc = asyncio.subprocess.Process(transport, proto, loop)
        self.pid = self._proc.pid
        if transport.get_returncode() is not None:
            self._on_exit()
        for reader, buffer in ((self._proc.stdout, self.stdout), (self._proc.stderr, self.stderr)):
            if reader is None:
                buffer.close()
            else:
                self._pumps.append(asyncio.create_task(self._pump(reader, buffer)))
        self.spawned.set()
        return True

    def abandon(self) -> None:
        """Never going to start (terminated during its cold start)."""
        self._close_buffers()
        self.spawned.set()
        self.exited.set()

    def _close_buffers(self) -> None:
        self.stdout.close()
        self.stderr.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, buffer: OutputBuffer) -> None:
        try:
            while chunk := await reader.read(65536):
                buffer.append(chunk)
        finally:
            buffer.close()

    def _on_exit(self) -> None:
        # Called the moment the process exits.  (asyncio's Process.wait() in 3.11 also
        # waits for the pipes to close, which a grandchild may keep open.)
        if self._transport is not None and self.returncode is None:
            self.returncode = self._transport.get_returncode()
            self.exited.set()

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (the process and everything it started)."""
        if self.pid is not None:
            _kill_group(self.pid, sig)

    async def stop(self, grace: float = 0.0) -> None:
        """Kill the process group (SIGTERM, then SIGKILL after ``grace`` seconds), reap, drain."""
        if self.pid is None:
            return
        if self.returncode is None and grace > 0:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exited.wait(), grace)
        self.signal_group(signal.SIGKILL)
        await self.exited.wait()
        await self.drain()

    async def drain(self) -> None:
        """After exit: wait for the pipes to reach EOF (bounded), then close the buffers."""
        if self._pumps:
            _, pending = await asyncio.wait(self._pumps, timeout=PIPE_DRAIN_TIMEOUT_S)
            for task in pending:
                task.cancel()
        self._close_buffers()
        if self._transport is not None:
            self._transport.close()

    def kill_now(self) -> None:
        """Synchronous SIGKILL of the group (server shutdown path)."""
        self.signal_group(signal.SIGKILL)

    async def write_stdin(self, offset: int, data: bytes, eof: bool) -> str | None:
        """Write ``data`` at stdin ``offset`` (bytes before our offset are duplicates and skipped).

        Waits until the process has started.  Returns an error message for a gap
        (offset beyond what was written) or data after EOF; None when accepted.
        Data for a process that has exited (or closed its stdin) is accepted and
        discarded, as a pipe would.
        """
        async with self._stdin_lock:
            await self.spawned.wait()
            if offset > self.stdin_offset:
                return f"stdin offset {offset} is beyond the {self.stdin_offset} bytes written"
            data = data[self.stdin_offset - offset :]
            if data and self.stdin_closed:
                return "stdin was already closed (EOF)"
            stdin = self._proc.stdin if self._proc is not None else None
            if data:
                # Count the bytes as written once they are in the pipe's buffer, before
                # waiting for the process to take them: a retry of this write (the client
                # gave up waiting) must not write them twice.
                self.stdin_offset += len(data)
                if stdin is not None and self.returncode is None and not stdin.is_closing():
                    try:
                        stdin.write(data)
                        await stdin.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        self.stdin_discarded += len(data)
                else:
                    self.stdin_discarded += len(data)
            if eof and not self.stdin_closed:
                self.stdin_closed = True
                if stdin is not None:
                    with contextlib.suppress(OSError):
                        stdin.close()
            return None

    def exit_status(self) -> tuple[int | None, int | None]:
        """``(code, signal)`` once exited: exactly one of them is set."""
        if self.returncode is None:
            return None, None
        if self.returncode < 0:
            return None, -self.returncode
        return self.returncode, None


@dataclass
class LocalExec:
    """A process started by ``Sandbox.exec`` (TaskExecStart)."""

    exec_id: str
    process: LocalProcess
    timeout: float | None
    started_at: float = field(default_factory=time.monotonic)
    timed_out: bool = False
    deadline_task: asyncio.Task[None] | None = None


class LocalSandbox:
    """A sandbox: its entrypoint process, lifetime, termination and result."""

    def __init__(
        self,
        *,
        sandbox_id: str,
        task_id: str,
        app_id: str,
        environment_name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str | None,
        timeout: float,
        start_delay: float,
        terminate_grace: float,
        created_at: float,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        image_id: str = "",
        definition: api_pb2.Sandbox | None = None,
        retention: int | None = None,
        version: int = 2,
        on_started: Callable[[LocalSandbox], None] | None = None,
        on_finished: Callable[[LocalSandbox], None] | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.task_id = task_id
        self.app_id = app_id
        self.environment_name = environment_name
        self.name = name
        self.tags: dict[str, str] = dict(tags or {})
        self.image_id = image_id
        self.definition = definition if definition is not None else api_pb2.Sandbox()
        self.timeout = timeout
        self.start_delay = start_delay
        self.terminate_grace = terminate_grace
        self.created_at = created_at
        self.version = version
        self.env = dict(env)
        self.cwd = cwd
        self.retention = retention
        self.process = LocalProcess(argv, env=env, cwd=cwd, retention=retention)
        self.execs: dict[str, LocalExec] = {}
        #: Variables from secrets and ``env=`` (what the sandbox gets beyond the inherited ones).
        self.injected_env: dict[str, str] = {}
        #: Last SandboxStdinWrite index seen (V1 stdin is indexed, not offset-addressed).
        self.v1_stdin_index = 0
        self.state = "starting"
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.result: api_pb2.GenericResult | None = None
        self.terminated_by: str | None = None
        self.finished = asyncio.Event()
        self._terminate = asyncio.Event()
        self._on_started = on_started
        self._on_finished = on_finished
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sandbox {self.sandbox_id}")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def request_terminate(self, reason: str = "terminate") -> bool:
        """Ask the sandbox to stop; True if it was still running (not already asked, not finished)."""
        if self.result is not None or self._terminate.is_set():
            return False
        self.terminated_by = reason
        self._terminate.set()
        return True

    async def _run(self) -> None:
        try:
            if self.start_delay > 0 and await _wait_event(self._terminate, self.start_delay):
                self.process.abandon()
                self._finish(GenericStatus.GENERIC_STATUS_TERMINATED, exitcode=137)
                return
            if self._terminate.is_set():
                self.process.abandon()
                self._finish(GenericStatus.GENERIC_STATUS_TERMINATED, exitcode=137)
                return
            started = await self.process.spawn()
            self.state = "running"
            self.started_at = time.monotonic()
            if self._on_started is not None:
                self._on_started(self)
            if not started:
                self._finish(
                    GenericStatus.GENERIC_STATUS_FAILURE,
                    exitcode=127,
                    exception=self.process.spawn_error or "",
                )
                return
            outcome = await self._first_of_exit_terminate_lifetime()
            if outcome == "exit":
                # The container goes away with its entrypoint: kill what it left behind.
                await self.process.stop()
                code, sig = self.process.exit_status()
                exitcode = code if code is not None else 128 + (sig or 0)
                status = (
                    GenericStatus.GENERIC_STATUS_SUCCESS
                    if exitcode == 0
                    else GenericStatus.GENERIC_STATUS_FAILURE
                )
                await self._stop_execs()
                self._finish(status, exitcode=exitcode)
            elif outcome == "terminate":
                await self.process.stop(self.terminate_grace)
                await self._stop_execs()
                self._finish(GenericStatus.GENERIC_STATUS_TERMINATED, exitcode=137)
            else:
                self.terminated_by = "lifetime"
                await self.process.stop()
                await self._stop_execs()
                self._finish(
                    GenericStatus.GENERIC_STATUS_TIMEOUT,
                    exitcode=124,
                    exception=f"Sandbox reached its lifetime of {self.timeout:g}s and was killed",
                )
        except asyncio.CancelledError:
            self.kill_now()
            if self.result is None:
                self._finish(GenericStatus.GENERIC_STATUS_TERMINATED, exitcode=137)
            raise

    async def _first_of_exit_terminate_lifetime(self) -> str:
        assert self.started_at is not None
        remaining = max(0.0, self.started_at + self.timeout - time.monotonic())
        exit_wait = asyncio.ensure_future(self.process.exited.wait())
        term_wait = asyncio.ensure_future(self._terminate.wait())
        try:
            done, _ = await asyncio.wait(
                {exit_wait, term_wait}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            exit_wait.cancel()
            term_wait.cancel()
        if exit_wait in done:
            return "exit"
        if term_wait in done:
            return "terminate"
        return "lifetime"

    async def _stop_execs(self) -> None:
        for ex in list(self.execs.values()):
            await ex.process.stop()

    def kill_now(self) -> None:
        """SIGKILL the entrypoint's process group and every exec's, synchronously."""
        self.process.kill_now()
        for ex in self.execs.values():
            ex.process.kill_now()

    def _finish(self, status: int, *, exitcode: int, exception: str = "") -> None:
        if self.result is not None:
            return
        self.result = api_pb2.GenericResult(status=status, exitcode=exitcode, exception=exception)  # type: ignore[arg-type]
        self.state = "finished"
        self.finished_at = time.monotonic()
        self.finished.set()
        if self._on_finished is not None:
            self._on_finished(self)

    async def wait_finished(self, seconds: float | None) -> bool:
        """True once finished, False if ``seconds`` passed first (None: forever)."""
        if self.result is not None:
            return True
        if seconds is not None and seconds <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), seconds)
        return self.result is not None

    # -- exec -------------------------------------------------------------------------

    async def start_exec(
        self,
        exec_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        capture_stdout: bool,
        capture_stderr: bool,
        lifetime: float | None,
    ) -> LocalExec:
        existing = self.execs.get(exec_id)
        if existing is not None:  # TaskExecStart is idempotent on exec_id
            return existing
        process = LocalProcess(
            argv,
            env={**self.env, **env},
            cwd=cwd or self.cwd,
            capture_stdout=capture_stdout,
            capture_stderr=capture_stderr,
            retention=self.retention,
        )
        ex = LocalExec(exec_id=exec_id, process=process, timeout=lifetime)
        self.execs[exec_id] = ex
        await process.spawn()
        if lifetime:
            ex.deadline_task = asyncio.create_task(self._exec_deadline(ex, lifetime))
        return ex

    @staticmethod
    async def _exec_deadline(ex: LocalExec, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ex.process.exited.wait(), seconds)
            return
        ex.timed_out = True
        await ex.process.stop()


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """True if ``event`` was set within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
