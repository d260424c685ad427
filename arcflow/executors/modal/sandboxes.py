"""What a sandbox is to the ``modal:`` executor: a handle, a request, and a backend's two signals.

The executor drives sandboxes only through :class:`SandboxHandle` and a
:data:`SandboxFactory`, so the real Modal backend (:mod:`.sdk`) and a test's
stand-in are interchangeable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import attrs


class SandboxCreationThrottled(Exception):
    """Modal refused to create a sandbox for now: rate limit or no capacity.

    The default sandbox factory raises it for ``modal.exception.ResourceExhaustedError``;
    a custom factory raises it for whatever its backend says when it is busy.
    :class:`ModalExecutor` retries it with backoff.
    """


class SandboxLifetimeExceeded(Exception):
    """The sandbox reached its own lifetime (``timeout``) and Modal stopped it."""


class SandboxHandle(Protocol):
    """One running sandbox, seen from trio.  The default factory wraps ``modal.Sandbox``."""

    @property
    def object_id(self) -> str:
        """The sandbox's real id (``sb-...``), stored in the outcome."""
        ...

    async def send_input(self, data: bytes) -> None:
        """Write ``data`` to the command's stdin, then close it (EOF)."""
        ...

    def stdout(self) -> AsyncIterator[bytes | str]:
        """The command's stdout, chunk by chunk, until EOF."""
        ...

    def stderr(self) -> AsyncIterator[bytes | str]:
        """The command's stderr, chunk by chunk, until EOF."""
        ...

    async def wait(self) -> int:
        """Wait for the command to exit; its exit code.

        Raises :class:`SandboxLifetimeExceeded` if the sandbox hit its timeout.
        """
        ...

    async def terminate(self) -> None:
        """Stop the sandbox (no-op if it has already finished)."""
        ...


@attrs.frozen
class SandboxRequest:
    """What one sandbox creation asks for."""

    command: tuple[str, ...]
    #: Lifetime in whole seconds: Modal stops the sandbox after it.
    timeout_s: int
    scenario_id: str
    run_id: str
    attempt: int


#: Creates a sandbox and returns it once it is running.  Raise
#: :class:`SandboxCreationThrottled` to have the creation retried.
SandboxFactory = Callable[[SandboxRequest], Awaitable[SandboxHandle]]
