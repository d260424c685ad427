"""Counters the actors update, and the frozen snapshot ``Runtime.statistics()`` returns."""

from __future__ import annotations

from collections import Counter
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

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-safe dict."""
        return attrs.asdict(self)


@attrs.define
class Counters:
    """Mutable counters shared by the actors of one runtime (single trio thread)."""

    submitted: int = 0
    completed: int = 0
    running: int = 0
    by_status: Counter[str] = attrs.field(factory=Counter)
    written: int = 0
    already_written: int = 0
    dead_lettered: int = 0
    pending_in_batcher: int = 0
    by_flush_reason: Counter[str] = attrs.field(factory=Counter)
    batches_written: int = 0
    write_transactions: int = 0
    retries: int = 0
    spilled_batches: int = 0
    spilled_outcomes: int = 0
    replayed_outcomes: int = 0
    restarts: Counter[str] = attrs.field(factory=Counter)
    last_write_latency: float = 0.0
    batch_size: int = 0
