"""``process:COMMAND ARGS`` — one subprocess per scenario, JSON in, JSON out.

For each scenario the command is started (no shell), the scenario's JSON
(:meth:`Scenario.to_json`) is written to its stdin, which is then closed, and
its stdout must hold one JSON value: ``null`` or an object with any of
``status`` (``passed``/``failed``), ``score`` and ``output``, exactly as a
``python:`` function returns.  Logs belong on stderr: its last few KiB are
kept for error messages.  The outcome mapping is
:func:`arcflow.executors.output.result_from_output`, shared with the sandbox
executors.

Where the kernel can say when a child exits (a pidfd, Linux 5.3+), the
child is started and watched from the event loop itself, without a thread:
``subprocess.Popen`` in the trio thread (it returns once the command is
exec'd, well under a millisecond for a small program), then one epoll set
per child holding its pipes and its pidfd, which the loop waits on.  That
takes half the CPU per child of driving it from a worker thread (no thread
wake-ups, no contention with the loop for the interpreter lock), which is
what keeps ``process:`` level with a thread pool calling ``subprocess.run``
(docs/benchmarks.md).  Elsewhere (macOS, older kernels) a worker thread
drives each child to its end, seeing its exit by polling.

The child runs in its own session (process group), so a Ctrl-C at the
terminal reaches the runtime, which decides what to do, not the scenario.
When the child exits, whatever it left in its group (a background helper, a
grandchild holding stdout open) is killed with SIGKILL, so a scenario ends
when its command ends.  When ``run`` is cancelled (timeout, shutdown), the
whole group gets SIGTERM, then SIGKILL after ``kill_grace_s``, and the child
is reaped before ``run`` returns.

The child's environment is minimal: :data:`BASE_ENV` (``PATH``, ``HOME``,
the locale and a few more) from arcflow's own environment, the variables
named in ``pass_env``, and ``env``.  arcflow's database settings
(``ARCFLOW_*``, ``PG*``) are never passed on, so a scenario cannot read (or
echo into its output) the database password.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import select
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import trio

from ..errors import ExecutorSpecError
from ..models import ExecutionResult, Scenario
from ._handoff import run_in_thread
from .base import ExecutionContext, Executor, raise_open_files_limit
from .output import (
    DEFAULT_STDERR_LIMIT,
    DEFAULT_STDOUT_LIMIT,
    OutputCapture,
    error_result,
    result_from_output,
)

log = logging.getLogger("arcflow.executors.process")

#: Variables a child gets from arcflow's environment without being named (and every ``LC_*``).
BASE_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TERM",
)

#: Prefixes of arcflow's own settings, which ``pass_env`` refuses to pass on.
PRIVATE_PREFIXES = ("ARCFLOW_", "PG")


def child_environment(
    pass_env: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a ``process:`` child: :data:`BASE_ENV`, ``LC_*``, ``pass_env``, ``env``.

    Raises :class:`ExecutorSpecError` if ``pass_env`` names one of arcflow's own
    settings (``ARCFLOW_*``, ``PG*``); give such a value explicitly in ``env``.
    """
    source = os.environ if environ is None else environ
    for name in pass_env:
        if name.upper().startswith(PRIVATE_PREFIXES):
            raise ExecutorSpecError(
                f"--pass-env {name}: arcflow's own settings (ARCFLOW_*, PG*) are never passed to "
                f"scenarios; if a scenario needs such a value, give it with --env {name}=VALUE"
            )
    wanted = {*BASE_ENV, *pass_env}
    child = {k: v for k, v in source.items() if k in wanted or k.startswith("LC_")}
    child.update(env or {})
    return child


#: Seconds between SIGTERM and SIGKILL when a run is cancelled.
DEFAULT_KILL_GRACE_S = 2.0
#: Seconds to wait for the kernel to report a SIGKILLed child as exited.
_REAP_TIMEOUT_S = 5.0
#: Bytes read from a pipe, and written to stdin, at a time.
_READ_CHUNK = 64 * 1024
_WRITE_CHUNK = 64 * 1024
#: Seconds between checks whether the child has exited while its pipes stay open.
_POLL_S = 0.05


def resolve_command(command: Sequence[str], *, spec: str | None = None) -> list[str]:
    """Check that ``command[0]`` names an executable, on PATH or by path.

    Raises :class:`ExecutorSpecError` naming the command otherwise.
    """
    argv = [os.fspath(part) for part in command]
    where = f" (executor 'process:{spec}')" if spec is not None else ""
    if not argv or not argv[0]:
        raise ExecutorSpecError(
            f"empty process command{where}: expected process:COMMAND ARGS, "
            "for example process:python score.py"
        )
    program = argv[0]
    if os.sep in program or (os.altsep and os.altsep in program):
        if not os.path.isfile(program):
            raise ExecutorSpecError(f"command {program!r} not found{where}: no such file")
        if not os.access(program, os.X_OK):
            raise ExecutorSpecError(
                f"command {program!r} is not executable{where}: chmod +x it, "
                "or name its interpreter first (process:python script.py)"
            )
    elif shutil.which(program) is None:
        raise ExecutorSpecError(
            f"command {program!r} not found on PATH{where}: install it, give its full path, "
            "or fix PATH"
        )
    return argv


class ProcessExecutor(Executor):
    """Runs ``command`` once per scenario; see the module docstring for the contract."""

    kind = "process"

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        pass_env: Sequence[str] = (),
        cwd: str | os.PathLike[str] | None = None,
        stdout_limit: int = DEFAULT_STDOUT_LIMIT,
        stderr_limit: int = DEFAULT_STDERR_LIMIT,
        kill_grace_s: float = DEFAULT_KILL_GRACE_S,
        _spec: str | None = None,
    ) -> None:
        if stdout_limit <= 0 or stderr_limit <= 0:
            raise ExecutorSpecError(
                f"stdout_limit and stderr_limit must be positive byte counts, "
                f"got {stdout_limit} and {stderr_limit}"
            )
        if not kill_grace_s >= 0:
            raise ExecutorSpecError(f"kill_grace_s must be >= 0 seconds, got {kill_grace_s!r}")
        if cwd is not None and not os.path.isdir(cwd):
            raise ExecutorSpecError(f"cwd {os.fspath(cwd)!r} is not a directory")
        self.command: tuple[str, ...] = tuple(resolve_command(command, spec=_spec))
        self.env: dict[str, str] = dict(env or {})
        self.pass_env: tuple[str, ...] = tuple(pass_env)
        self._child_env = child_environment(self.pass_env, self.env)
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.stdout_limit = stdout_limit
        self.stderr_limit = stderr_limit
        self.kill_grace_s = float(kill_grace_s)
        self._told_out_of_files = False

    @classmethod
    def from_spec(cls, rest: str, **options: Any) -> ProcessExecutor:
        """Parse ``COMMAND ARGS`` with shell quoting rules (no shell runs it).

        ``options`` are the constructor's keyword arguments.
        """
        try:
            argv = shlex.split(rest)
        except ValueError as exc:
            raise ExecutorSpecError(f"cannot parse executor 'process:{rest}': {exc}") from None
        return cls(argv, _spec=rest, **options)

    async def start(self) -> None:
        raise_open_files_limit(self.kind, "each running scenario holds its pipes and a pidfd")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "command": list(self.command),
            "cwd": self.cwd,
            "env_keys": sorted(self.env),
            "pass_env": list(self.pass_env),
            "stdout_limit": self.stdout_limit,
            "stderr_limit": self.stderr_limit,
        }

    async def run(self, scenario: Scenario, context: ExecutionContext) -> ExecutionResult:
        details: dict[str, Any] = {
            "kind": self.kind,
            "command": list(self.command),
            "pid": None,
            "exit_code": None,
        }
        payload = json.dumps(scenario.to_json()).encode()
        if WATCH_IN_LOOP:
            return await self._run_in_loop(payload, context, details)
        return await self._run_in_thread(payload, context, details)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._child_env,
            cwd=self.cwd,
            start_new_session=True,
        )

    def _start_failed(self, exc: OSError) -> str:
        """What to record for a child that could not be started; out of files, say why once."""
        if exc.errno in (errno.EMFILE, errno.ENFILE) and not self._told_out_of_files:
            self._told_out_of_files = True
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.warning(
                "process: out of file descriptors (open files limit %s, hard %s): each running "
                "scenario holds 4-5 (its pipes, a pidfd, an epoll set); such scenarios end as "
                "ProcessStartError. Lower --concurrency, or raise the limit (ulimit -Hn, "
                "LimitNOFILE= for a systemd service)",
                "unlimited" if soft == resource.RLIM_INFINITY else soft,
                "unlimited" if hard == resource.RLIM_INFINITY else hard,
            )
        return f"{type(exc).__name__}: {exc}"

    def _result(
        self,
        details: dict[str, Any],
        exit_code: int | None,
        stdout: OutputCapture,
        stderr: OutputCapture,
        start_error: str | None = None,
    ) -> ExecutionResult:
        if start_error is not None:
            return error_result(
                "ProcessStartError",
                f"cannot start {shlex.join(self.command)}: {start_error}",
                details,
            )
        return result_from_output(
            exit_code=exit_code if exit_code is not None else -1,
            stdout=stdout,
            stderr=stderr,
            details=details,
        )

    @trio.lowlevel.enable_ki_protection  # a Ctrl-C waits for the next checkpoint: no stray child
    async def _run_in_loop(
        self, payload: bytes, context: ExecutionContext, details: dict[str, Any]
    ) -> ExecutionResult:
        """Start the child from the event loop and watch its pipes and its pidfd from there."""
        await trio.lowlevel.checkpoint_if_cancelled()
        stdout = OutputCapture(self.stdout_limit, keep="head")
        stderr = OutputCapture(self.stderr_limit, keep="tail")
        try:
            popen = self._spawn()
        except OSError as exc:
            return self._result(details, None, stdout, stderr, self._start_failed(exc))
        details["pid"] = popen.pid
        context.details.update(details)  # a timed-out or cancelled attempt still shows its pid
        pidfd = watch = None
        try:
            try:
                pidfd = os.pidfd_open(popen.pid)
                watch = select.epoll()
            except OSError as exc:  # out of file descriptors: the child cannot be watched
                _signal_group(popen.pid, signal.SIGKILL)
                return self._result(
                    details, None, stdout, stderr, f"cannot watch it: {self._start_failed(exc)}"
                )
            pipes = _Pipes(popen, payload, stdout, stderr, watch, pidfd)
            while pipes.readers:
                await trio.lowlevel.wait_readable(watch.fileno())
                pipes.handle(watch.poll(0))
            if not pipes.exited:  # it closed its stdout and stderr but runs on
                await trio.lowlevel.wait_readable(pidfd)
        except BaseException:
            if pidfd is not None:
                await self._stop_watched(popen.pid, pidfd)  # noqa: ASYNC102 - shielded, bounded
            raise
        finally:
            # What the command left in its group (a helper holding stdout open) goes with it.
            _signal_group(popen.pid, signal.SIGKILL)
            for stream in (popen.stdin, popen.stdout, popen.stderr):
                if stream is not None:
                    stream.close()
            if watch is not None:
                watch.close()
            if pidfd is not None:
                os.close(pidfd)
            # It has exited (or, after a failed stop, is left to subprocess to reap later).
            details["exit_code"] = popen.poll()
        return self._result(details, details["exit_code"], stdout, stderr)

    async def _stop_watched(self, pid: int, pidfd: int) -> None:
        """SIGTERM to the child's group, SIGKILL after ``kill_grace_s``; wait for its exit."""
        with trio.CancelScope(shield=True):
            _signal_group(pid, signal.SIGTERM)
            with trio.move_on_after(self.kill_grace_s):
                await trio.lowlevel.wait_readable(pidfd)
                return
            _signal_group(pid, signal.SIGKILL)
            with trio.move_on_after(_REAP_TIMEOUT_S):
                await trio.lowlevel.wait_readable(pidfd)

    async def _run_in_thread(
        self, payload: bytes, context: ExecutionContext, details: dict[str, Any]
    ) -> ExecutionResult:
        """Drive the child from a worker thread (no pidfd): the loop only waits for it."""
        # A cancellation (timeout, shutdown) kills the child's group from here and waits,
        # bounded, for the thread to see it go.
        child = _Child(self, payload, context.details, details)
        try:
            await run_in_thread(child.run, on_exit=child.finished)
        except BaseException:
            # Shielded and bounded inside (kill_grace_s, then _REAP_TIMEOUT_S after SIGKILL).
            await self._kill(child)  # noqa: ASYNC102 - shielded, bounded inside
            raise
        return self._result(details, child.exit_code, child.stdout, child.stderr, child.start_error)

    async def _kill(self, child: _Child) -> None:
        """SIGTERM to the child's group, SIGKILL after ``kill_grace_s``; wait for its thread."""
        with trio.CancelScope(shield=True):
            with child.lock:
                child.stopping = True
                popen = child.popen
            if popen is None:
                await child.started.wait()
                popen = child.popen
                if popen is None:
                    return
            _signal_group(popen.pid, signal.SIGTERM)
            with trio.move_on_after(self.kill_grace_s):
                await child.done.wait()
            if not child.done.is_set():
                _signal_group(popen.pid, signal.SIGKILL)
                with trio.move_on_after(_REAP_TIMEOUT_S):
                    await child.done.wait()


class _Child:
    """One child process, driven to its end in a worker thread by :meth:`run`.

    ``started`` and ``done`` are trio events, so the trio side can kill the
    child and wait for the thread even after it abandoned the thread on
    cancellation.  Both are set when the thread has finished (:meth:`finished`,
    called in the trio thread with the thread's result, so it costs no extra
    wake-up); ``started`` is also set by the thread, through the trio token,
    once the child exists, but only if the trio side is waiting for it
    (``stopping``, under ``lock``): on the common path nothing is woken for it.
    """

    def __init__(
        self,
        executor: ProcessExecutor,
        payload: bytes,
        known: dict[str, Any],
        details: dict[str, Any],
    ) -> None:
        self.executor = executor
        self.payload = payload
        self.known = known
        self.details = details
        self.stdout = OutputCapture(executor.stdout_limit, keep="head")
        self.stderr = OutputCapture(executor.stderr_limit, keep="tail")
        self.popen: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.start_error: str | None = None
        #: Set by the trio side when the attempt is cancelled: do not start a child any more.
        self.stopping = False
        #: Guards ``stopping`` and ``popen`` between the trio side and the thread.
        self.lock = threading.Lock()
        self.started = trio.Event()
        self.done = trio.Event()
        self._token = trio.lowlevel.current_trio_token()

    def _set(self, event: trio.Event) -> None:
        try:
            self._token.run_sync_soon(event.set)
        except trio.RunFinishedError:  # pragma: no cover - the run outlives its scenarios
            pass

    def finished(self) -> None:
        """(trio thread) The worker thread is done with the child (or never started it)."""
        self.started.set()
        self.done.set()

    def run(self) -> None:
        """(worker thread) Start the child, feed it, drain it, wait for it, kill its leftovers."""
        ex = self.executor
        if self.stopping:
            return
        try:
            popen = ex._spawn()
        except OSError as exc:
            self.start_error = ex._start_failed(exc)
            return
        self.details["pid"] = popen.pid
        self.known.update(self.details)  # a timed-out or cancelled attempt still shows its pid
        with self.lock:
            self.popen = popen
            waited_for = self.stopping
        if waited_for:
            self._set(self.started)
        try:
            _exchange(popen, self.payload, self.stdout, self.stderr)
        finally:
            # What the command left in its group (a helper holding stdout open) goes with it.
            _signal_group(popen.pid, signal.SIGKILL)
            for stream in (popen.stdin, popen.stdout, popen.stderr):
                if stream is not None:
                    stream.close()
            self.exit_code = popen.wait()
            self.details["exit_code"] = self.exit_code


def _exchange(
    popen: subprocess.Popen[bytes], payload: bytes, stdout: OutputCapture, stderr: OutputCapture
) -> None:
    """(worker thread) Write ``payload`` to stdin and close it, read stdout and stderr to EOF,
    wait for the child's exit.

    The exit is seen through a pidfd where there is one, or by polling.  One
    ``poll`` object, no ``selectors``: an epoll selector costs a file
    descriptor and a system call per registration for a handful of pipes.
    """
    poller = select.poll()
    pidfd = _pidfd(popen.pid)
    try:
        pipes = _Pipes(popen, payload, stdout, stderr, poller, pidfd)
        while pipes.readers:
            events = poller.poll(None if pidfd is not None or pipes.exited else _POLL_S * 1000)
            if not pipes.exited and pidfd is None and popen.poll() is not None:
                pipes.exited = True
                _signal_group(popen.pid, signal.SIGKILL)
            pipes.handle(events)
        if not pipes.exited:  # it closed its stdout and stderr but runs on
            popen.wait()
    finally:
        if pidfd is not None:
            os.close(pidfd)


class _Poller(Protocol):
    def register(self, fd: int, eventmask: int = ..., /) -> None: ...
    def unregister(self, fd: int, /) -> None: ...


class _Pipes:
    """A child's pipes as one exchange: ``payload`` into stdin, stdout and stderr drained to EOF.

    Driven by whoever waits on ``poller`` (a ``poll`` object in a worker
    thread, an ``epoll`` set the event loop waits on) and hands its events to
    :meth:`handle`; done when ``readers`` is empty.  The payload is written
    at once as far as the pipe takes it, and stdin closed, so a small payload
    costs no wake-up.  When the child exits (``pidfd`` readable), its process
    group is killed at once, so the pipes reach EOF even if something it left
    behind holds them open.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        payload: bytes,
        stdout: OutputCapture,
        stderr: OutputCapture,
        poller: _Poller,
        pidfd: int | None,
    ) -> None:
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        self.popen = popen
        self.poller = poller
        self.pidfd = pidfd
        self.exited = False
        self.stdin_fd = popen.stdin.fileno()
        os.set_blocking(self.stdin_fd, False)
        self.pending = memoryview(payload)
        self.readers = {popen.stdout.fileno(): stdout, popen.stderr.fileno(): stderr}
        for fd in self.readers:
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        if self._write():
            poller.register(self.stdin_fd, select.POLLOUT)
        else:
            self._close_stdin()

    def _write(self) -> bool:
        """Write what stdin takes of the payload now; is there more?"""
        try:
            self.pending = self.pending[os.write(self.stdin_fd, self.pending[:_WRITE_CHUNK]) :]
        except BlockingIOError:
            pass
        except OSError:  # the child stopped reading: its exit code tells
            self.pending = self.pending[:0]
        return bool(self.pending)

    def _close_stdin(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        self.stdin_fd = -1

    def handle(self, events: list[tuple[int, int]]) -> None:
        """Act on the poller's ``(fd, mask)`` events."""
        for fd, _mask in events:
            if fd == self.pidfd:
                self.exited = True
                self.poller.unregister(fd)
                _signal_group(self.popen.pid, signal.SIGKILL)
            elif fd == self.stdin_fd:
                if not self._write():
                    self.poller.unregister(fd)
                    self._close_stdin()
            elif fd in self.readers:
                chunk = os.read(fd, _READ_CHUNK)
                if chunk:
                    self.readers[fd].feed(chunk)
                else:
                    self.poller.unregister(fd)
                    del self.readers[fd]


def _pidfd(pid: int) -> int | None:
    """A file descriptor readable when ``pid`` exits (Linux 5.3+), or None."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
        return fd
    except OSError:
        return None


def _can_watch_in_loop() -> bool:
    """Whether this kernel gives pidfds (and epoll): then children are watched from the loop."""
    if not hasattr(select, "epoll"):
        return False
    fd = _pidfd(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return True


#: Whether ``process:`` children are started and watched from the event loop (see the module
#: docstring); otherwise each is driven by a worker thread.
WATCH_IN_LOOP = _can_watch_in_loop()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group (session) led by ``pid``, if it is still there."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone
