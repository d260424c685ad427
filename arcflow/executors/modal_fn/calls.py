"""What a function call is to the ``modal-fn:`` executor: a request, a runner, a report.

The executor drives calls through a :class:`FunctionRunner`.  An attempt is one step,
one crossing from trio to the SDK's event loop (a thread wake-up costs more than the
call's own bookkeeping, so the happy path pays it once):

* :meth:`FunctionRunner.call` sends the call (``Function.spawn``), notes its id
  (``fc-...``) in the report the moment it exists, and waits for its result into the
  same :class:`CallReport`: the value, or the remote failure, or that Modal no longer has
  the call.  It raises :class:`CallRefused` / :class:`CallUnavailable` when Modal refuses
  or cannot be reached: before the call exists (``report.call_id`` is None) the executor
  spawns again, after (the wait failed) it waits again;
* :meth:`FunctionRunner.wait` waits for a call known by id (such a retry, or a call a
  previous process left in flight, on resume);
* :meth:`FunctionRunner.cancel` cancels a call by id (one nobody will wait for).

Cancelled, ``call`` and ``wait`` cancel the call on Modal's side (bounded) before they
return, and a spawn cancelled in flight is waited for (bounded) and its call cancelled.

The real backend (:mod:`.sdk`) and a test's stand-in are interchangeable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs


class CallRefused(Exception):
    """Modal refused the call for now (RESOURCE_EXHAUSTED: rate limit, backlog full).

    ``retry_after``: Modal's hint, in seconds, if it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CallUnavailable(Exception):
    """The control plane is unreachable, timed out or failed transiently; it may pass.

    ``ambiguous``: a spawn that may have reached Modal (a call may exist that nobody knows).
    """

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


@attrs.frozen
class CallRequest:
    """One call: the scenario as the function's single argument, and whose attempt it is."""

    #: The scenario as a JSON-safe dict (``Scenario.to_json()``).
    payload: Mapping[str, Any]
    run_id: str
    scenario_id: str
    epoch: int
    attempt: int


@attrs.frozen
class RemoteFailure:
    """How a call failed on Modal's side: the remote exception, as the SDK re-raised it."""

    #: The exception's type name (``KeyError``, ``FunctionTimeoutError``, ``RemoteError``).
    type_name: str
    #: Its message.
    message: str
    #: The end of the remote traceback (may be empty).
    traceback_tail: str = ""
    #: The function ran out of its own Modal-side timeout (``FunctionTimeoutError``).
    timed_out: bool = False
    #: Modal terminated the call (it was cancelled, or its container was stopped).
    terminated: bool = False


@attrs.define(eq=False)
class CallReport:
    """How one call (or wait) ended, filled by :meth:`FunctionRunner.call` and
    :meth:`FunctionRunner.wait` (possibly from another thread: read it only once they have
    returned or given up)."""

    #: The call's id, set as soon as the spawn returned it.
    call_id: str | None = None
    #: The call returned; ``value`` is what it returned.
    returned: bool = False
    value: Any = None
    #: The call raised (remotely) or Modal ended it (timeout, internal failure).
    failure: RemoteFailure | None = None
    #: Modal no longer has the call or its output (unknown id, output expired): why.
    gone: str | None = None
    #: The call was cancelled on Modal's side (the wait was cancelled) and Modal confirmed it.
    cancelled: bool = False
    #: Cancelling it failed; it is retried in the background until Modal answers.
    cancel_pending: bool = False

    def details(self) -> dict[str, Any]:
        """What the outcome's ``executor`` details record about the wait."""
        out: dict[str, Any] = {}
        if self.cancelled:
            out["cancelled"] = True
        if self.cancel_pending:
            out["cancel_pending"] = True
        return out


class FunctionRunner(Protocol):
    """Spawns calls of one deployed function and waits for them (:class:`~.sdk.FunctionBackend`,
    or a stand-in)."""

    async def call(self, request: CallRequest, report: CallReport) -> None:
        """Spawn the call (``report.call_id``) and wait for its result into ``report``.

        Raises :class:`CallRefused` or :class:`CallUnavailable` for what the executor
        retries (before the call exists: ``report.call_id`` is None).  Cancelled, it
        leaves no call running that it knows of."""
        ...

    async def wait(
        self, call_id: str, report: CallReport, key: tuple[str, tuple[str, int, int]] | None = None
    ) -> None:
        """Wait for the call's result into ``report`` (``key``: the run and the attempt the
        call belongs to, for the record of a cancel).  Raises :class:`CallUnavailable`
        when the control plane could not be reached (the executor retries the wait).

        Cancelled (even before its first step), it cancels the call on Modal's side,
        noting in ``report`` whether Modal confirmed, then lets the cancellation go on."""
        ...

    async def cancel(self, call_id: str) -> bool:
        """Cancel a call by id; True once Modal confirmed (a failure is retried in the
        background)."""
        ...
