"""The ``modal:`` executor's configuration: app, image, resources, and the limits around creation."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ...retry import Backoff
from ...validators import Check, optional, positive, whole
from ..output import DEFAULT_STDERR_LIMIT, DEFAULT_STDOUT_LIMIT

#: A non-empty string.
_name = Check(lambda v: isinstance(v, str) and bool(v), "must be a non-empty string")


def _names(value: Sequence[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@attrs.frozen(kw_only=True)
class ModalConfig:
    """How sandboxes are made: app, image, resources and the protections around creation."""

    #: Modal app the sandboxes belong to (created if missing).
    app_name: str = attrs.field(default="arcflow", validator=_name)
    #: Registry image tag (``python:3.12-slim``), or None for ``Image.debian_slim()``.
    image: str | None = None
    #: pip packages installed on top of the image.
    pip: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: Names of Modal secrets injected as environment variables.
    secrets: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: CPU cores requested per sandbox (fractional allowed), or None for Modal's default.
    cpu: float | None = attrs.field(default=None, validator=optional(positive))
    #: Memory requested per sandbox in MiB, or None for Modal's default.
    memory: int | None = attrs.field(default=None, validator=optional(whole(1)))
    #: Sandbox lifetime in seconds; None: the attempt's timeout plus a margin, else 300.
    timeout_s: int | None = attrs.field(default=None, validator=optional(whole(1)))
    #: Sandbox creations per second, across all producers.
    max_creations_per_second: float = attrs.field(default=4.0, validator=positive)
    #: Creations allowed back to back before the rate applies.
    creation_burst: int = attrs.field(default=1, validator=whole(1))
    #: Sandboxes being created at the same time, at most.
    max_starting: int = attrs.field(default=16, validator=whole(1))
    #: Creation attempts in all when Modal answers rate limit / no capacity.
    create_attempts: int = attrs.field(default=6, validator=whole(1))
    #: First backoff ceiling in seconds; doubles per retry (full jitter below it).
    create_backoff_s: float = attrs.field(default=1.0, validator=positive)
    #: Largest backoff ceiling in seconds.
    create_backoff_max_s: float = attrs.field(default=30.0, validator=positive)
    #: Longest a single (shielded) creation call may take.
    create_timeout_s: float = attrs.field(default=120.0, validator=positive)
    #: Longest the shielded terminate() may take on cancellation.
    terminate_timeout_s: float = attrs.field(default=10.0, validator=positive)
    #: Bytes of stdout kept; more is a StdoutTooLarge error.
    stdout_limit: int = attrs.field(default=DEFAULT_STDOUT_LIMIT, validator=whole(1))
    #: Bytes of the end of stderr kept for error messages.
    stderr_limit: int = attrs.field(default=DEFAULT_STDERR_LIMIT, validator=whole(1))

    def creation_backoff(self) -> Backoff:
        """Delays between creation attempts refused for rate limit or capacity (full jitter)."""
        return Backoff(
            base=self.create_backoff_s,
            cap=self.create_backoff_max_s,
            max_retries=self.create_attempts - 1,
        )
