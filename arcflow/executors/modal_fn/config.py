"""The ``modal-fn:`` executor's configuration: environment, retries, waits per connection."""

from __future__ import annotations

import attrs

from ...retry import Backoff
from ...validators import Check, non_negative, positive, whole

#: None, or a non-empty string.
_name = Check(lambda v: v is None or (isinstance(v, str) and bool(v)), "must be a non-empty string")


@attrs.frozen(kw_only=True)
class ModalFnConfig:
    """How the deployed function is found and called, and how long refusals and outages are
    retried.

    Every call is spawned (``Function.spawn``), its id (``fc-...``) recorded at once, and
    its result waited for on a connection of a small pool: a wait is a long poll that holds
    one HTTP/2 stream for as long as the call runs, so at most ``waits_per_connection``
    waits share a connection and more connections are opened as needed (up to
    ``max_connections``), leaving the first one's streams free for spawns and cancels.
    """

    #: Modal environment the app is deployed in; None: the profile's (or ``MODAL_ENVIRONMENT``).
    environment_name: str | None = attrs.field(default=None, validator=_name)
    #: Longest one attempt keeps retrying spawns Modal refuses (RESOURCE_EXHAUSTED: rate
    #: limit, backlog full).
    spawn_retry_s: float = attrs.field(default=600.0, validator=positive)
    #: Longest one attempt keeps retrying while Modal's control plane is unreachable or
    #: failing (the spawn, and the wait for the result).
    outage_retry_s: float = attrs.field(default=300.0, validator=positive)
    #: First backoff ceiling of those retries in seconds; doubles per retry (full jitter).
    backoff_s: float = attrs.field(default=0.5, validator=positive)
    #: Largest backoff ceiling in seconds.
    backoff_max_s: float = attrs.field(default=10.0, validator=positive)
    #: Longest one spawn call may take (the SDK has no timeout of its own).
    spawn_timeout_s: float = attrs.field(default=60.0, validator=positive)
    #: Longest a cancel of a call may take; a cancel not confirmed in time is retried in the
    #: background until Modal answers (and once more at the end of the run).
    cancel_timeout_s: float = attrs.field(default=10.0, validator=positive)
    #: Waits for results (long polls) sharing one connection, at most.
    waits_per_connection: int = attrs.field(default=64, validator=whole(1))
    #: Connections to Modal's control plane, at most (the first one also carries the spawns).
    max_connections: int = attrs.field(default=32, validator=whole(1))
    #: Seconds between two reads of the function's backlog and running inputs (0: never).
    stats_interval_s: float = attrs.field(default=2.0, validator=non_negative)
    #: Lines of the end of a remote traceback kept in an error outcome's message.
    traceback_lines: int = attrs.field(default=20, validator=whole(1))
    #: Bytes of a remote error's message kept, at most.
    error_message_limit: int = attrs.field(default=4096, validator=whole(64))
    #: Seconds the call ids noted wait for more before they are written in one transaction
    #: (a process that dies in that window re-runs those calls on resume).
    ledger_interval_s: float = attrs.field(default=0.05, validator=positive)
    #: Calls whose id is still to be written to the run's database, at most (while the
    #: database is away); beyond it the oldest are dropped (they re-run on resume).
    ledger_max_pending: int = attrs.field(default=100_000, validator=whole(1))
    #: Run state the executor keeps in the run's database (the function-call ids); False
    #: keeps none (``--resume`` then re-runs calls that were in flight).
    record_calls: bool = True
    #: Seconds a ledger write may take before it is given up for now.
    ledger_timeout_s: float = attrs.field(default=5.0, validator=positive)

    def outage_backoff(self) -> Backoff:
        """Delays between retries while the control plane is unreachable (full jitter)."""
        return Backoff(base=self.backoff_s, cap=self.backoff_max_s, max_elapsed=self.outage_retry_s)

    def refusal_backoff(self) -> Backoff:
        """Delays after a refusal that came without a retry-after hint (full jitter)."""
        return Backoff(base=self.backoff_s, cap=self.backoff_max_s, max_elapsed=self.spawn_retry_s)
