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
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from ..errors import ExecutorSpecError
from ..models import ExecutionResult, Scenario
from .base import ExecutionContext, Executor
from .output import (
    DEFAULT_STDERR_LIMIT,
    DEFAULT_STDOUT_LIMIT,
    OutputCapture,
    error_result,
    read_stream,
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
        payload = json.dumps(scenario.to_json()).encode()
        try:
            process = await trio.lowlevel.open_process(
                list(self.command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._child_env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            return error_result(
                "ProcessStartError",
                f"cannot start {shlex.join(self.command)}: {type(exc).__name__}: {exc}",
                details,
            )
        details["pid"] = process.pid
        context.details.update(details)  # a timed-out or cancelled attempt still shows its pid
        stdout = OutputCapture(self.stdout_limit, keep="head")
        stderr = OutputCapture(self.stderr_limit, keep="tail")
        finished = False
        try:
            details["exit_code"] = await self._communicate(process, payload, stdout, stderr)
            finished = True
        finally:
            # _dispose is shielded itself and every wait in it is bounded (kill_grace_s, then
            # _REAP_TIMEOUT_S after SIGKILL; closing the pipes is forceful).
            await self._dispose(process, finished=finished)  # noqa: ASYNC102 - shielded, bounded inside
        return result_from_output(
            exit_code=details["exit_code"], stdout=stdout, stderr=stderr, details=details
        )

    async def _communicate(
        self,
        process: trio.Process,
        payload: bytes,
        stdout: OutputCapture,
        stderr: OutputCapture,
    ) -> int:
        """Feed stdin and drain stdout and stderr while the child runs; its exit code.

        Once the child exits, its process group is killed: nothing it left
        behind keeps the scenario (or its pipes) open.
        """
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_input, process.stdin, payload)
            nursery.start_soon(read_stream, process.stdout, stdout)
            nursery.start_soon(read_stream, process.stderr, stderr)
            code = await process.wait()
            _signal_group(process, signal.SIGKILL)
        return code

    async def _dispose(self, process: trio.Process, *, finished: bool) -> None:
        """Make sure the child and its process group are gone, and close the pipes.

        Unless the child ran to completion: SIGTERM to the group, wait up to
        ``kill_grace_s``, then SIGKILL to the group and reap.  Shielded, so it
        runs to the end even while the run is being cancelled.
        """
        with trio.CancelScope(shield=True):
            if not finished:
                _signal_group(process, signal.SIGTERM)
                with trio.move_on_after(self.kill_grace_s):
                    await process.wait()
                _signal_group(process, signal.SIGKILL)
                with trio.move_on_after(_REAP_TIMEOUT_S):
                    await process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    await trio.aclose_forcefully(stream)


async def _send_input(stdin: trio.abc.SendStream, payload: bytes) -> None:
    """Write the scenario and close stdin.

    A child that exits (or closes stdin) without reading it all is not an
    error here: its exit code and stdout tell what happened.
    """
    try:
        await stdin.send_all(payload)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stdin)


def _signal_group(process: trio.Process, sig: signal.Signals) -> None:
    """Send ``sig`` to the child's process group (its session), or to the child alone."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, sig)
        elif process.returncode is None:
            process.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone
