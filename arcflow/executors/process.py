"""``process:COMMAND ARGS`` — one subprocess per scenario, JSON in, JSON out.

For each scenario the command is started (no shell), the scenario's JSON
(:meth:`Scenario.to_json`) is written to its stdin, which is then closed, and
its stdout must hold one JSON value: ``null`` or an object with any of
``status`` (``passed``/``failed``), ``score`` and ``output``, exactly as a
``python:`` function returns.  Logs belong on stderr: its last few KiB are
kept for error messages.  The outcome mapping is
:func:`arcflow.executors.output.result_from_output`, shared with the sandbox
executors.

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

import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from ..errors import ExecutorSpecError
from ..models import ExecutionResult, Scenario
from ._handoff import run_in_thread
from .base import ExecutionContext, Executor
from .output import (
    DEFAULT_STDERR_LIMIT,
    DEFAULT_STDOUT_LIMIT,
    OutputCapture,
    error_result,
    result_from_output,
)

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
        # The whole life of the child (spawn, stdin, stdout and stderr, exit) runs in a worker
        # thread (one per running scenario: the runtime bounds those), as a thread pool calling
        # subprocess.run would: the event loop only waits for it.  A cancellation (timeout,
        # shutdown) kills the child's group from here and waits, bounded, for the thread to see
        # it go.
        child = _Child(self, json.dumps(scenario.to_json()).encode(), context.details, details)
        try:
            await run_in_thread(child.run, on_exit=child.finished)
        except BaseException:
            # Shielded and bounded inside (kill_grace_s, then _REAP_TIMEOUT_S after SIGKILL).
            await self._kill(child)  # noqa: ASYNC102 - shielded, bounded inside
            raise
        if child.start_error is not None:
            return error_result(
                "ProcessStartError",
                f"cannot start {shlex.join(self.command)}: {child.start_error}",
                details,
            )
        return result_from_output(
            exit_code=child.exit_code if child.exit_code is not None else -1,
            stdout=child.stdout,
            stderr=child.stderr,
            details=details,
        )

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
            popen = subprocess.Popen(
                ex.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=ex._child_env,
                cwd=ex.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self.start_error = f"{type(exc).__name__}: {exc}"
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
    """(worker thread) Write ``payload`` to stdin and close it, read stdout and stderr to EOF.

    When the child exits, its process group is killed at once, so the pipes
    reach EOF even if something it left behind held them open.  The exit is
    seen through a pidfd (no polling), or by polling where there is none.

    One ``poll`` object, no ``selectors``: an epoll selector costs a file
    descriptor and a system call per registration for a handful of pipes.
    """
    assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
    poller = select.poll()
    view = memoryview(payload)
    stdin_fd = popen.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    poller.register(stdin_fd, select.POLLOUT)
    readers = {popen.stdout.fileno(): stdout, popen.stderr.fileno(): stderr}
    for fd in readers:
        poller.register(fd, select.POLLIN)
    pidfd = _pidfd(popen.pid)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    exited = False
    try:
        while readers:
            events = poller.poll(None if pidfd is not None or exited else _POLL_S * 1000)
            if not exited and pidfd is None and popen.poll() is not None:
                exited = True
                _signal_group(popen.pid, signal.SIGKILL)
            for fd, _mask in events:
                if fd == pidfd:
                    exited = True
                    poller.unregister(fd)
                    _signal_group(popen.pid, signal.SIGKILL)
                elif fd == stdin_fd:
                    try:
                        view = view[os.write(stdin_fd, view[:_WRITE_CHUNK]) :]
                    except OSError:  # the child stopped reading: its exit code tells
                        view = view[:0]
                    if not view:
                        poller.unregister(stdin_fd)
                        popen.stdin.close()
                        stdin_fd = -1
                else:
                    chunk = os.read(fd, _READ_CHUNK)
                    if chunk:
                        readers[fd].feed(chunk)
                    else:
                        poller.unregister(fd)
                        del readers[fd]
    finally:
        if pidfd is not None:
            os.close(pidfd)


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


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group (session) led by ``pid``, if it is still there."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone
