"""The records that flow through the pipeline: scenarios in, outcomes out, batches to the store."""

from __future__ import annotations

import enum
import hashlib
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from .validators import whole

_sha256 = hashlib.sha256
_EMPTY_CONTENT_TAIL = ',"metadata":{},"tags":[],"timeout_s":null}'


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


def _canonical_json_slow(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _make_fast_canonical() -> Callable[[Any, int], list[str] | tuple[str, ...]] | None:
    """The C encoder ``json.dumps`` builds on every call, built once (None if unavailable).

    It has no circular-reference check (that needs per-call state); anything it
    cannot encode, including a cycle, is re-encoded by ``json.dumps`` to raise
    exactly the error ``json.dumps`` raises.
    """
    try:
        from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

        if c_make_encoder is None:  # pragma: no cover - CPython always has it
            return None

        def default(o: Any) -> Any:
            raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")

        encoder = c_make_encoder(
            None, default, encode_basestring, None, ":", ",", True, False, True
        )
        sample = {"b": [1, 2.5, None, True, "é\n"], "a": {"y": float("inf"), "x": ""}}
        if "".join(encoder(sample, 0)) != _canonical_json_slow(sample):  # pragma: no cover
            return None
        return encoder  # type: ignore[no-any-return]
    except Exception:  # pragma: no cover - a Python whose json module differs
        return None


_fast_canonical = _make_fast_canonical()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces, for hashing and stable storage.

    Byte for byte what ``json.dumps(value, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` returns, and the same errors, at about half the cost.
    """
    if _fast_canonical is not None:
        try:
            return "".join(_fast_canonical(value, 0))
        except Exception:
            pass  # let json.dumps raise its own error (or handle what the fast path did not)
    return _canonical_json_slow(value)


def _freeze_tags(value: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(value or ())


def _positive_or_none(_inst: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


@attrs.frozen(slots=False)  # dict-backed: built from a checked line with one dict update
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
    #: Which repeat this is (``--epochs K`` runs each scenario K times: 1 to K); not content.
    epoch: int = attrs.field(default=1, validator=whole(1))
    #: The content hash once computed (a scenario is immutable, so it is computed once).
    _hash: str | None = attrs.field(default=None, init=False, eq=False, repr=False)

    @id.validator
    def _check_id(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if not value:
            raise ValueError("scenario id must be a non-empty string")

    @classmethod
    def trusted(
        cls,
        id: str,
        input: Any,
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        timeout_s: float | None,
        epoch: int = 1,
    ) -> Scenario:
        """A scenario from values already checked (a scenario file line), without checking again.

        The values must be what the validators would accept: ``tags`` a tuple of
        strings, ``timeout_s`` None or a positive number.
        """
        scenario = object.__new__(cls)
        scenario.__dict__.update(
            id=id,
            input=input,
            tags=tags,
            metadata=metadata,
            timeout_s=timeout_s,
            epoch=epoch,
            _hash=None,
        )
        return scenario

    def repeat(self, epoch: int) -> Scenario:
        """This scenario as its ``epoch``-th repeat (the same content, and hash)."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__["epoch"] = epoch
        return copy

    @property
    def content_hash(self) -> str:
        """sha256 of the scenario's content (input, tags, metadata, timeout), hex.

        The hashed text is ``canonical_json({"input": ..., "tags": [...],
        "metadata": {...}, "timeout_s": ...})``; stored hashes depend on it, so
        it never changes.  Computed once per scenario.
        """
        digest = self._hash
        if digest is None:
            digest = self._compute_hash()
            object.__setattr__(self, "_hash", digest)
        return digest

    def _compute_hash(self) -> str:
        metadata = self.metadata
        if type(metadata) is dict and not metadata and not self.tags and self.timeout_s is None:
            # The common case, built without encoding the constant parts again:
            # the same text, since the keys sort as input < metadata < tags < timeout_s.
            body = '{"input":' + canonical_json(self.input) + _EMPTY_CONTENT_TAIL
        else:
            body = canonical_json(
                {
                    "input": self.input,
                    "tags": list(self.tags),
                    "metadata": metadata,
                    "timeout_s": self.timeout_s,
                }
            )
        # surrogatepass: a lone surrogate (a JSON "\ud800" escape) hashes instead of raising.
        return _sha256(body.encode("utf-8", "surrogatepass")).hexdigest()

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
        if self.epoch != 1:
            data["epoch"] = self.epoch
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
    #: Tokens, cost and other counters the scenario reported (see :data:`USAGE_KEYS`).
    usage: Mapping[str, float] | None = None


#: Usage counters stored in columns of their own; any other numeric key is kept in ``usage``.
USAGE_KEYS = ("input_tokens", "output_tokens", "cost_usd")


@attrs.frozen(slots=False)  # a dict-backed frozen class is built in half the time of a slotted one
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
    #: Tokens, cost and other counters the attempt reported (``input_tokens``,
    #: ``output_tokens``, ``cost_usd``, any other name), or None.
    usage: Mapping[str, float] | None = None
    #: Which repeat of the scenario this is (``--epochs K``: 1 to K).
    epoch: int = 1

    @classmethod
    def trusted(
        cls,
        run_id: str,
        scenario_id: str,
        attempt: int,
        status: Status,
        started_at: datetime,
        finished_at: datetime,
        score: float | None,
        output: Any,
        error_type: str | None,
        error_message: str | None,
        executor: Mapping[str, Any],
        worker: str,
        final: bool,
        scenario_hash: str | None,
        tags: tuple[str, ...],
        usage: Mapping[str, float] | None = None,
        epoch: int = 1,
    ) -> Outcome:
        """An outcome from values already of the right types (a producer's), built in one step.

        ``tags`` must be a tuple; no converter runs.
        """
        outcome = object.__new__(cls)
        outcome.__dict__.update(
            run_id=run_id,
            scenario_id=scenario_id,
            attempt=attempt,
            status=status,
            started_at=started_at,
            finished_at=finished_at,
            score=score,
            output=output,
            error_type=error_type,
            error_message=error_message,
            executor=executor,
            worker=worker,
            final=final,
            scenario_hash=scenario_hash,
            tags=tags,
            usage=usage,
            epoch=epoch,
        )
        return outcome

    @property
    def key(self) -> tuple[str, str, int, int]:
        """The idempotency key ``(run_id, scenario_id, epoch, attempt)``."""
        return (self.run_id, self.scenario_id, self.epoch, self.attempt)

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
            "usage": dict(self.usage) if self.usage is not None else None,
            "epoch": self.epoch,
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
            usage=data.get("usage"),
            epoch=int(data.get("epoch", 1)),
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

    def halves(self) -> tuple[Batch, Batch]:
        """The batch split in two (``ID.0`` and ``ID.1``), same reason: how poison is isolated."""
        mid = len(self.outcomes) // 2
        return (
            Batch(f"{self.id}.0", self.outcomes[:mid], self.reason, self.opened_at),
            Batch(f"{self.id}.1", self.outcomes[mid:], self.reason, self.opened_at),
        )


def new_batch_id() -> str:
    """A fresh, unique batch id."""
    return uuid.uuid4().hex[:16]


#: Called with each outcome once it is handed to the batcher (in the runtime's trio thread).
OutcomeHook = Callable[[Outcome], None]
#: Called after each committed write: the batch (or bisected part), rows inserted, latency in s.
BatchHook = Callable[[Batch, int, float], None]
