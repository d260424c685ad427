"""The frozen snapshot ``Runtime.statistics()`` returns, assembled from the actors' own counts.

Each actor owns the numbers it writes (:class:`~arcflow.writer.WriterStats`,
:class:`~arcflow.batcher.BatcherStats`, :class:`~arcflow.producers.ProducerStats`,
the breaker's transitions, the supervisors' restarts, :class:`IntakeStats`
for what the runtime was handed); nothing else writes them.  The pipeline reads them all into one
:class:`RuntimeStatistics` (``Pipeline.statistics``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class RuntimeStatistics:
    """One consistent snapshot of every counter and gauge of a runtime."""

    #: The run these numbers belong to.
    run_id: str
    #: Scenarios accepted by the source or by ``submit()``.
    submitted: int
    #: Scenarios whose last attempt has finished (an outcome was produced).
    completed: int
    #: Scenarios currently running in producers.
    running: int
    #: Outcomes produced, by status (every attempt counts).
    by_status: dict[str, int]
    #: Outcomes whose row is in ``arcflow.outcomes`` (inserted by this runtime).
    written: int
    #: Outcomes whose key was already stored (a retried or replayed write); not new rows.
    already_written: int
    #: Outcomes stored in ``arcflow.dead_letters`` instead.
    dead_lettered: int
    #: Outcomes waiting in the batcher's partial batch.
    pending_in_batcher: int
    #: Outcomes queued between producers and the batcher.
    outcome_queue: int
    #: Scenarios queued between the source and the producers.
    work_queue: int
    #: Batches queued between the batcher and the writer.
    batch_queue: int
    #: Batches flushed by the batcher, by reason (``size``, ``deadline``, ``shutdown``).
    by_flush_reason: dict[str, int]
    #: Batches written to PostgreSQL (each in one transaction).
    batches_written: int
    #: Write transactions committed (batches, bisected parts and journal replays).
    write_transactions: int
    #: Whole-batch retries after transient failures.
    retries: int
    #: Current circuit-breaker state (``closed``, ``open``, ``half_open``).
    breaker_state: str
    #: Breaker transitions so far, keyed ``"closed->open"`` and so on.
    breaker_transitions: dict[str, int]
    #: Batches appended to the spill journal.
    spilled_batches: int
    #: Outcomes appended to the spill journal.
    spilled_outcomes: int
    #: Outcomes replayed from the journal into PostgreSQL.
    replayed_outcomes: int
    #: Bytes in the spill journal now.
    journal_bytes: int
    #: Actor restarts by the supervisor, by actor name.
    restarts: dict[str, int]
    #: Seconds since the runtime started.
    elapsed: float
    #: Last batch write latency in seconds (0 before the first).
    last_write_latency: float
    #: Current batch size target (changes only with adaptive batching).
    batch_size: int
    #: Batches in the spill journal now, waiting to be replayed.
    journal_batches: int = 0
    #: Journal appends that failed (disk full, read-only, I/O error) and were retried.
    journal_write_errors: int = 0
    #: What is wrong with the journal while it refuses writes (None when it takes them).
    journal_error: str | None = None
    #: Tokens in, as the outcomes so far reported them (``usage.input_tokens``).
    input_tokens: int = 0
    #: Tokens out, as the outcomes so far reported them (``usage.output_tokens``).
    output_tokens: int = 0
    #: Cost in US dollars, as the outcomes so far reported it (``usage.cost_usd``).
    cost_usd: float = 0.0
    #: The executor's own counters and gauges (``Executor.statistics()``), e.g. Modal's
    #: current creation rate and refusals.
    executor: dict[str, float] = attrs.field(factory=dict)
    #: A shared run's worker (empty otherwise): its id, the scenarios it claimed, the
    #: claims it found taken, the live workers and the run's claims by state, as of its
    #: last heartbeat.
    fleet: dict[str, Any] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-safe dict."""
        return attrs.asdict(self)


@attrs.define
class UsageTotals:
    """Tokens and cost reported by outcomes, added up by whoever counts them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, usage: Mapping[str, float] | None) -> None:
        """Count one outcome's ``usage`` (None: nothing)."""
        if usage:
            self.input_tokens += int(usage.get("input_tokens", 0))
            self.output_tokens += int(usage.get("output_tokens", 0))
            self.cost_usd += float(usage.get("cost_usd", 0.0))

    def plus(self, other: UsageTotals) -> UsageTotals:
        """These totals and ``other``'s, added."""
        return UsageTotals(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
        )


@attrs.define
class IntakeStats:
    """What the runtime was handed; written by its intake (``submit``, ``record``, the file source)."""

    #: Scenarios accepted by the source or by ``submit()``.
    submitted: int = 0
    #: Finished outcomes handed over with ``record()``, by status.
    recorded: Counter[str] = attrs.field(factory=Counter)
    #: Tokens and cost those outcomes reported.
    usage: UsageTotals = attrs.field(factory=UsageTotals)
