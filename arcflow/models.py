"""The records that flow through the pipeline: scenarios in, outcomes out, batches to the store."""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs


class Status(enum.StrEnum):
    """How a scenario ended.

    ``failed`` means the scenario ran and did not pass; ``error`` means the
    executor or the infrastructure broke.
    """

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


#: Statuses that ``--attempts`` retries and ``--retry-errors`` re-runs on resume.
RETRYABLE_STATUSES = frozenset({Status.ERROR, Status.TIMEOUT})


class FlushReason(enum.StrEnum):
    """Why the batcher handed a batch to the writer."""

    SIZE = "size"
    DEADLINE = "deadline"
    SHUTDOWN = "shutdown"

    def __str__(self) -> str:
        return self.value


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces, for hashing and stable storage."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _freeze_tags(value: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(value or ())


def _positive_or_none(_inst: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


@attrs.frozen
class Scenario:
    """One unit of work: what an executor runs.

    Only ``id`` is required.  ``content_hash`` covers everything but the id,
    so a resumed run can refuse a scenario whose content changed.
    """

    id: str = attrs.field(validator=attrs.validators.instance_of(str))
    input: Any = attrs.field(factory=dict)
    tags: tuple[str, ...] = attrs.field(factory=tuple, converter=_freeze_tags)
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    timeout_s: float | None = attrs.field(default=None, validator=_positive_or_none)

    @id.validator
    def _check_id(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if not value:
            raise ValueError("scenario id must be a non-empty string")

    @property
    def content_hash(self) -> str:
        """sha256 of the scenario's content (input, tags, metadata, timeout), hex."""
        body = canonical_json(
            {
                "input": self.input,
                "tags": list(self.tags),
                "metadata": self.metadata,
                "timeout_s": self.timeout_s,
            }
        )
        return hashlib.sha256(body.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The scenario as the JSON object a scenario file line or a process executor sees."""
        data: dict[str, Any] = {
            "id": self.id,
            "input": self.input,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
        }
        if self.timeout_s is not None:
            data["timeout_s"] = self.timeout_s
        return data


@attrs.frozen
class ExecutionResult:
    """What an executor reports for one run of one scenario.

    The producer adds the run id, attempt, timings and worker to make an
    :class:`Outcome`.
    """

    status: Status
    score: float | None = None
    output: Any = None
    error_type: str | None = None
    error_message: str | None = None
    executor: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Outcome:
    """The recorded result of one attempt of one scenario in one run.

    ``(run_id, scenario_id, attempt)`` is its key: writing the same outcome
    twice stores one row.
    """

    run_id: str
    scenario_id: str
    attempt: int
    status: Status
    started_at: datetime
    finished_at: datetime
    score: float | None = None
    output: Any = None
    error_type: str | None = None
    error_message: str | None = None
    executor: Mapping[str, Any] = attrs.field(factory=dict)
    worker: str = ""
    final: bool = True
    scenario_hash: str | None = None
    tags: tuple[str, ...] = attrs.field(factory=tuple, converter=_freeze_tags)

    @property
    def key(self) -> tuple[str, str, int]:
        """The idempotency key ``(run_id, scenario_id, attempt)``."""
        return (self.run_id, self.scenario_id, self.attempt)

    @property
    def duration_ms(self) -> float:
        """Wall time of the attempt in milliseconds."""
        return (self.finished_at - self.started_at).total_seconds() * 1000.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict of the outcome (journal entries and dead-letter payloads)."""
        return {
            "run_id": self.run_id,
            "scenario_id": self.scenario_id,
            "attempt": self.attempt,
            "status": self.status.value,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "score": self.score,
            "output": self.output,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "executor": dict(self.executor),
            "worker": self.worker,
            "final": self.final,
            "scenario_hash": self.scenario_hash,
            "tags": list(self.tags),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        """Inverse of :meth:`to_json`."""
        return cls(
            run_id=data["run_id"],
            scenario_id=data["scenario_id"],
            attempt=int(data["attempt"]),
            status=Status(data["status"]),
            started_at=datetime.fromisoformat(data["started_at"]),
            finished_at=datetime.fromisoformat(data["finished_at"]),
            score=data.get("score"),
            output=data.get("output"),
            error_type=data.get("error_type"),
            error_message=data.get("error_message"),
            executor=data.get("executor") or {},
            worker=data.get("worker") or "",
            final=bool(data.get("final", True)),
            scenario_hash=data.get("scenario_hash"),
            tags=data.get("tags") or (),
        )


@attrs.frozen
class Batch:
    """Outcomes flushed together; written in one transaction."""

    id: str
    outcomes: tuple[Outcome, ...]
    reason: FlushReason
    #: trio clock time at which the batch's first record arrived at the batcher.
    opened_at: float = 0.0

    def __len__(self) -> int:
        return len(self.outcomes)
