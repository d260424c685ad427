"""The ``modal:`` executor's configuration: app, image, resources, and the limits around creation."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ...retry import Backoff
from ...validators import Check, fraction, non_negative, optional, positive, whole
from ..output import DEFAULT_STDERR_LIMIT, DEFAULT_STDOUT_LIMIT

#: A non-empty string.
_name = Check(lambda v: isinstance(v, str) and bool(v), "must be a non-empty string")

#: The creation rate a new Modal account allows (sandbox creations per second).
NEW_ACCOUNT_CREATION_RATE = 5.0
#: The creation rate is never raised above this many per second when no ceiling is given.
MAX_CREATION_RATE = 1000.0
#: The SDK buffers at most 16 MiB of stdin between drains: write the scenario in smaller pieces.
DEFAULT_STDIN_CHUNK_BYTES = 4 * 1024 * 1024
#: Lifetime of a pooled sandbox when ModalConfig.timeout_s is not set (seconds).
DEFAULT_POOL_LIFETIME_S = 3600
#: What a pooled sandbox runs between scenarios (the scenarios run beside it, with exec).
DEFAULT_POOL_ENTRYPOINT = ("sleep", "infinity")


def _argv(value: Sequence[str]) -> tuple[str, ...]:
    return tuple(str(part) for part in value)


#: A non-empty command whose first word is not empty.
_command = Check(
    lambda v: bool(v) and all(isinstance(p, str) for p in v) and bool(v[0]),
    "must be a non-empty command (a list of strings)",
)


def _names(value: Sequence[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@attrs.frozen(kw_only=True)
class ModalConfig:
    """How sandboxes are made: app, image, resources and the protections around creation.

    The creation rate adapts to what the account allows (AIMD): it starts at
    ``initial_creations_per_second``, doubles every ``rate_interval_s`` while
    creations are paced by it and succeed, then (after the first refusal)
    grows by a twentieth of the rate at the last refusal per interval, and
    is multiplied by ``rate_decrease`` when Modal answers RESOURCE_EXHAUSTED
    (at most once per second), honouring Modal's retry-after hint.  It never
    goes above ``max_creations_per_second`` when that is set.
    """

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
    #: Ceiling of the adaptive creation rate (creations per second); None: no ceiling.
    max_creations_per_second: float | None = attrs.field(default=None, validator=optional(positive))
    #: Creation rate at the start (capped by ``max_creations_per_second``).
    initial_creations_per_second: float = attrs.field(
        default=NEW_ACCOUNT_CREATION_RATE, validator=positive
    )
    #: Creations allowed back to back before the rate applies.
    creation_burst: int = attrs.field(default=1, validator=whole(1))
    #: Seconds between two increases of the creation rate.
    rate_interval_s: float = attrs.field(default=0.5, validator=positive)
    #: Factor applied to the creation rate on a refusal (multiplicative decrease).
    rate_decrease: float = attrs.field(default=0.7, validator=fraction)
    #: Sandboxes being created at the same time, at most.
    max_starting: int = attrs.field(default=64, validator=whole(1))
    #: Longest one attempt keeps retrying creations Modal refuses (rate limit, no capacity).
    create_retry_s: float = attrs.field(default=600.0, validator=positive)
    #: Longest one attempt keeps retrying while Modal's control plane is unreachable or
    #: failing (creation, and the wait for a running sandbox's exit).
    outage_retry_s: float = attrs.field(default=300.0, validator=positive)
    #: First backoff ceiling in seconds for those retries; doubles per retry (full jitter).
    create_backoff_s: float = attrs.field(default=0.5, validator=positive)
    #: Largest backoff ceiling in seconds.
    create_backoff_max_s: float = attrs.field(default=10.0, validator=positive)
    #: Longest a single creation call may take (the SDK itself has no timeout).
    create_timeout_s: float = attrs.field(default=60.0, validator=positive)
    #: Longest a terminate() call may take; a sandbox not terminated in time is retried
    #: in the background and found by its tags at the end of the run.
    terminate_timeout_s: float = attrs.field(default=10.0, validator=positive)
    #: Bytes of the scenario written to stdin per message (the SDK refuses more than 16 MiB).
    stdin_chunk_bytes: int = attrs.field(
        default=DEFAULT_STDIN_CHUNK_BYTES, validator=whole(1, 16 * 1024 * 1024)
    )
    #: Bytes of stdout kept; more is a StdoutTooLarge error.
    stdout_limit: int = attrs.field(default=DEFAULT_STDOUT_LIMIT, validator=whole(1))
    #: Bytes of the end of stderr kept for error messages.
    stderr_limit: int = attrs.field(default=DEFAULT_STDERR_LIMIT, validator=whole(1))
    #: Warm pool: this many long-lived sandboxes, each scenario run inside a free one with
    #: ``Sandbox.exec`` (see :mod:`.pool`); None: a new sandbox per scenario.
    pool: int | None = attrs.field(default=None, validator=optional(whole(1, 100_000)))
    #: Scenarios one pooled sandbox runs before it is terminated and replaced.
    pool_max_uses: int = attrs.field(default=100, validator=whole(1))
    #: A pooled sandbox is replaced, not lent, when less than the attempt's timeout plus this
    #: many seconds is left of its lifetime (``timeout_s``, else 3600 s in a pool).
    pool_lifetime_margin_s: float = attrs.field(default=30.0, validator=non_negative)
    #: What a pooled sandbox runs while it waits for scenarios (must not exit).
    pool_entrypoint: tuple[str, ...] = attrs.field(
        default=DEFAULT_POOL_ENTRYPOINT, converter=_argv, validator=_command
    )

    @property
    def rate_ceiling(self) -> float:
        """The highest creation rate: ``max_creations_per_second``, else :data:`MAX_CREATION_RATE`."""
        if self.max_creations_per_second is not None:
            return self.max_creations_per_second
        return MAX_CREATION_RATE

    @property
    def initial_rate(self) -> float:
        """The creation rate at the start."""
        return min(self.initial_creations_per_second, self.rate_ceiling)

    @property
    def pool_lifetime_s(self) -> int:
        """The lifetime of a pooled sandbox: ``timeout_s``, else :data:`DEFAULT_POOL_LIFETIME_S`."""
        return self.timeout_s if self.timeout_s is not None else DEFAULT_POOL_LIFETIME_S

    def outage_backoff(self) -> Backoff:
        """Delays between retries while the control plane is unreachable (full jitter)."""
        return Backoff(
            base=self.create_backoff_s,
            cap=self.create_backoff_max_s,
            max_elapsed=self.outage_retry_s,
        )

    def refusal_backoff(self) -> Backoff:
        """Delays after a refusal that came without a retry-after hint (full jitter)."""
        return Backoff(
            base=self.create_backoff_s,
            cap=self.create_backoff_max_s,
            max_elapsed=self.create_retry_s,
        )
