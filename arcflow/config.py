"""Validated, frozen configuration for the runtime and its actors.

Every value is checked when the object is built; a bad one raises
:class:`arcflow.ConfigError` naming the field and what would be valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

import attrs

from .retry import Backoff
from .validators import non_negative, optional, positive, whole


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with full jitter for transient write failures.

    Delay before retry *n* (1-based) is uniform in ``[0, min(max_delay, base_delay * 2**(n-1))]``.
    Defaults follow the data-pipeline seed: 1 s, 2 s, 4 s, capped at 30 s, 3 retries.
    """

    #: Retries after the first attempt (0 disables retrying).
    max_retries: int = attrs.field(default=3, validator=whole(0, 1000))
    #: Delay cap for the first retry, in seconds.
    base_delay: float = attrs.field(default=1.0, validator=positive)
    #: No single delay is longer than this.
    max_delay: float = attrs.field(default=30.0, validator=positive)
    #: Give up retrying once this many seconds have passed since the first attempt.
    max_elapsed: float = attrs.field(default=60.0, validator=positive)

    def backoff(self) -> Backoff:
        """This policy as the retry primitive the writer's loops draw their delays from."""
        return Backoff(
            base=self.base_delay,
            cap=self.max_delay,
            max_retries=self.max_retries,
            max_elapsed=self.max_elapsed,
        )


@attrs.frozen
class BreakerConfig:
    """When the writer's circuit breaker opens and when it probes again."""

    #: Consecutive infrastructure failures that open the breaker.
    failure_threshold: int = attrs.field(default=5, validator=whole(1))
    #: Seconds the breaker stays open before letting one probe through.
    cooldown: float = attrs.field(default=5.0, validator=positive)


@attrs.frozen
class SupervisorConfig:
    """Restart intensity (at most ``max_restarts`` in ``period`` seconds) and backoff."""

    #: Crashes allowed within ``period`` before the runtime fails.
    max_restarts: int = attrs.field(default=5, validator=whole(0))
    #: The sliding window of the restart intensity, in seconds.
    period: float = attrs.field(default=60.0, validator=positive)
    #: Delay before the first restart; doubles with each crash in the window.
    backoff_base: float = attrs.field(default=0.1, validator=positive)
    #: Longest delay before a restart.
    backoff_max: float = attrs.field(default=5.0, validator=positive)

    def backoff(self) -> Backoff:
        """Restart delays: ``backoff_base * 2**(n-1)`` before the n-th restart, capped, no jitter."""
        return Backoff(base=self.backoff_base, cap=self.backoff_max, jitter=False)


@attrs.frozen
class RuntimeConfig:
    """Everything the runtime needs besides the executor and the database.

    Defaults are the documented CLI defaults.
    """

    #: Producers running scenarios at once.
    concurrency: int = attrs.field(default=8, validator=whole(1, 100_000))
    #: A batch is flushed when it holds this many outcomes.
    batch_size: int = attrs.field(default=100, validator=whole(1, 100_000))
    #: ...or when its oldest outcome has waited this many seconds.
    flush_interval: float = attrs.field(default=30.0, validator=positive)
    #: Bound of the scenario channel (source -> producers); default
    #: min(2 x concurrency, max(32, concurrency / 10)).
    work_buffer: int | None = attrs.field(default=None, validator=optional(whole(1)))
    #: Bound of the outcome channel (producers -> batcher); default 4 x batch_size (at most
    #: batch_size + 20,000): room for what producers finish while the writer takes a batch,
    #: so that they do not wait on it (at 20,000 concurrent scenarios and batches of 1,000, a
    #: buffer of one batch had producers blocked on it for 70% of their attempts).
    outcome_buffer: int | None = attrs.field(default=None, validator=optional(whole(0)))
    #: Batches waiting for the writer (batcher -> writer).
    batch_buffer: int = attrs.field(default=1, validator=whole(0, 16))
    #: Database connections the writer writes through, one batch each at a time: while
    #: one waits for its commit to reach the disk, the next copies its batch.
    writer_connections: int = attrs.field(default=2, validator=whole(1, 8))
    #: Default per-scenario timeout in seconds (a scenario's own timeout_s wins).
    timeout: float | None = attrs.field(default=None, validator=optional(positive))
    #: Times each scenario runs (epochs 1 to K), for pass@k and the variance of scores.
    epochs: int = attrs.field(default=1, validator=whole(1, 1000))
    #: Attempts per scenario; error and timeout outcomes are retried up to this many.
    attempts: int = attrs.field(default=1, validator=whole(1, 100))
    #: Base delay in seconds between attempts of one scenario (doubles each time).
    attempt_backoff: float = attrs.field(default=1.0, validator=non_negative)
    #: Longest delay in seconds between two attempts of one scenario.
    attempt_backoff_max: float = attrs.field(default=60.0, validator=positive)
    #: Cost budget in US dollars (the outcomes' ``usage.cost_usd``): once spent, no new
    #: scenario starts (running ones finish; ``--resume`` goes on).  None: no budget.
    max_cost: float | None = attrs.field(default=None, validator=optional(non_negative))
    #: Seconds running scenarios get to finish after a shutdown request.
    grace: float = attrs.field(default=30.0, validator=non_negative)
    #: Seconds the final flush and journal writes may take at shutdown.
    shutdown_timeout: float = attrs.field(default=30.0, validator=positive)
    #: Folder for the embedded database and the spill journals.
    data_dir: Path = attrs.field(default=Path(".arcflow"), converter=Path)
    #: Spill journal size cap in bytes; at the cap the writer stops pulling.
    journal_max_bytes: int = attrs.field(default=1 << 30, validator=whole(1024))
    #: Seconds a database statement may take before it counts as a transient failure.
    statement_timeout: float = attrs.field(default=30.0, validator=positive)
    #: Shared runs: seconds a worker's claim stays its own without a heartbeat; past
    #: it, another worker may take the scenario (heartbeats come every third of it).
    lease: float = attrs.field(default=30.0, validator=positive)
    #: Seconds of silence after which a TCP connection to the database is probed, and
    #: about how long unacknowledged data may wait: a half-open connection is found in
    #: seconds, not at the statement timeout.
    tcp_keepalive: float = attrs.field(default=10.0, validator=positive)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    breaker: BreakerConfig = attrs.field(factory=BreakerConfig)
    supervisor: SupervisorConfig = attrs.field(factory=SupervisorConfig)

    def attempt_backoff_policy(self) -> Backoff:
        """Delays between attempts of one scenario: ``attempt_backoff * 2**(n-1)``, capped, no jitter."""
        return Backoff(base=self.attempt_backoff, cap=self.attempt_backoff_max, jitter=False)

    @property
    def effective_work_buffer(self) -> int:
        """Scenarios queued for the producers: ``work_buffer``, else 2 x concurrency, at most
        the larger of 32 and a tenth of the concurrency.

        Producers pull as soon as they are free, so a deep queue mostly means scenarios
        read early; 32 keeps the source ahead of 1,000 producers.  Past that, attempts end
        in bursts (a scheduler round at 10,000 concurrent sleeps ends dozens at once), and
        a queue that holds a burst lets the source refill it in one step instead of one
        step per scenario: at 10,000 concurrent, 3.8 -> 2.9 task steps per scenario.
        """
        if self.work_buffer is not None:
            return self.work_buffer
        return min(2 * self.concurrency, max(32, self.concurrency // 10))

    @property
    def effective_outcome_buffer(self) -> int:
        if self.outcome_buffer is not None:
            return self.outcome_buffer
        return min(4 * self.batch_size, self.batch_size + 20_000)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-safe dict of every value (stored with the run)."""

        def conv(_inst: Any, _field: Any, value: Any) -> Any:
            return str(value) if isinstance(value, Path) else value

        return attrs.asdict(self, value_serializer=conv)


class RuntimeOptions(TypedDict, total=False):
    """The fields of :class:`RuntimeConfig` as keyword arguments of ``Runtime(...)``.

    Typed, so that ``mypy --strict`` rejects a misspelt option
    (``batch_sise=500``) or a value of the wrong type; at run time the
    :class:`RuntimeConfig` validators check the values.  Kept equal to the
    config's fields by a test.
    """

    concurrency: int
    batch_size: int
    flush_interval: float
    work_buffer: int | None
    outcome_buffer: int | None
    batch_buffer: int
    writer_connections: int
    timeout: float | None
    epochs: int
    attempts: int
    attempt_backoff: float
    attempt_backoff_max: float
    max_cost: float | None
    grace: float
    shutdown_timeout: float
    data_dir: Path | str
    journal_max_bytes: int
    statement_timeout: float
    lease: float
    tcp_keepalive: float
    retry: RetryPolicy
    breaker: BreakerConfig
    supervisor: SupervisorConfig
