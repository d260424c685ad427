"""What a sandbox is to the ``modal:`` executor: a request, a runner, a report, and two refusals.

The executor drives sandboxes through a :class:`SandboxRunner` in two calls per
attempt, each one crossing from trio to the SDK's event loop once:

1. :meth:`SandboxRunner.create` makes the sandbox (or raises
   :class:`SandboxCreationThrottled` / :class:`SandboxCreationUnavailable` when
   Modal refuses or cannot be reached; the executor retries those);
2. :meth:`SandboxRunner.finish` runs it to completion: writes the scenario to
   stdin, reads stdout and stderr into the report's captures, waits for the exit,
   and, whatever happens (cancellation included), leaves the sandbox terminated or
   exited and detached.

The real Modal backend (:mod:`.sdk`) and a test's stand-in are interchangeable.

A warm pool (:mod:`.pool`) drives long-lived sandboxes through a :class:`PoolRunner`
instead: ``create`` (the same call, the pool's entrypoint as the command), then
:meth:`PoolRunner.exec_in` once per scenario, then :meth:`PoolRunner.retire`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from ..output import OutputCapture


class SandboxCreationThrottled(Exception):
    """Modal refused to create a sandbox for now: rate limit or no capacity (RESOURCE_EXHAUSTED).

    ``retry_after``: Modal's hint, in seconds, if it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SandboxCreationUnavailable(Exception):
    """The creation failed for a reason that may pass: the control plane is unreachable,
    timed out or failed transiently.  ``ambiguous``: the request may have reached Modal, so
    a sandbox may exist (the backend then finds it by its tags and terminates it)."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


@attrs.frozen
class SandboxRequest:
    """What one sandbox creation asks for."""

    command: tuple[str, ...]
    #: Lifetime in whole seconds: Modal stops the sandbox after it.
    timeout_s: int
    scenario_id: str
    run_id: str
    attempt: int
    #: Tags set on the sandbox at creation (run, scenario, attempt, this process).
    tags: Mapping[str, str] = attrs.field(factory=dict)
    #: A warm pool's sandbox (:mod:`.pool`): it runs many scenarios, not ``scenario_id``'s.
    pooled: bool = False


class CreatedSandbox(Protocol):
    """A sandbox that exists, as far as the executor is concerned."""

    @property
    def object_id(self) -> str:
        """The sandbox's real id (``sb-...``), stored in the outcome."""
        ...


@attrs.define(eq=False)
class SandboxReport:
    """How one sandbox ran, filled by :meth:`SandboxRunner.finish` (possibly from another
    thread, so read it only once ``finish`` has returned or given up)."""

    stdout: OutputCapture
    stderr: OutputCapture
    exit_code: int | None = None
    #: The sandbox reached its lifetime and Modal stopped it.
    lifetime_exceeded: bool = False
    #: Writing the scenario to stdin failed: the error, as ``Type: message``.
    input_error: str | None = None
    #: The output could not be read to the end, or the exit not learned: ``(type, message)``.
    error: tuple[str, str] | None = None
    #: terminate() was called (cancellation, lost output) and Modal confirmed it.
    terminated: bool = False
    #: The sandbox may still run: a terminate is retried in the background until Modal answers.
    terminate_pending: bool = False
    #: (pool) The sandbox itself had ended when its scenario's command ended (it died).
    sandbox_finished: bool = False

    def details(self) -> dict[str, Any]:
        """What the outcome's ``executor`` details record about the run."""
        out: dict[str, Any] = {"exit_code": self.exit_code}
        if self.input_error is not None:
            out["stdin_error"] = self.input_error
        if self.terminated:
            out["terminated"] = True
        if self.terminate_pending:
            out["terminate_pending"] = True
        if self.sandbox_finished:
            out["sandbox_finished"] = True
        return out


class SandboxRunner(Protocol):
    """Makes sandboxes and runs them to completion (:class:`~.sdk.ModalBackend`, or a stand-in)."""

    async def create(self, request: SandboxRequest) -> CreatedSandbox:
        """Create the sandbox.  Raises :class:`SandboxCreationThrottled` or
        :class:`SandboxCreationUnavailable` for what the executor retries.

        Cancelled, it leaves no sandbox behind (it waits, within a bound, for a
        creation already sent and terminates what it made)."""
        ...

    async def finish(self, sandbox: CreatedSandbox, stdin: bytes, report: SandboxReport) -> None:
        """Send ``stdin`` (then EOF), read the output into ``report``, wait for the exit.

        Cancelled, it terminates the sandbox at once, then lets the cancellation
        finish.  It leaves the sandbox exited or terminated, and detached.
        """
        ...


class PoolRunner(SandboxRunner, Protocol):
    """A :class:`SandboxRunner` that can also run commands inside a long-lived sandbox."""

    async def exec_in(
        self,
        sandbox: CreatedSandbox,
        command: tuple[str, ...],
        stdin: bytes,
        report: SandboxReport,
    ) -> None:
        """Run ``command`` in ``sandbox`` (``Sandbox.exec``): ``stdin`` then EOF, the output
        into ``report``, the exit code; ``report.sandbox_finished`` when the sandbox had ended.

        Cancelled, it terminates the sandbox at once (the only way to stop the command),
        then lets the cancellation finish.  It never detaches the sandbox.
        """
        ...

    async def retire(self, sandbox: CreatedSandbox) -> None:
        """Terminate (unless it already ended) and detach ``sandbox``, in the background;
        the runner's close waits for it."""
        ...
