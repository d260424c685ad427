"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs
from hypothesis import strategies as st

from arcflow.models import Outcome, Scenario, Status
from arcflow.stats import RuntimeStatistics

_T0 = datetime(2026, 1, 1, tzinfo=UTC)

json_scalars = st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)

scenario_ids = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs",)),
    min_size=1,
    max_size=24,
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A valid scenario with arbitrary JSON input, tags and metadata."""
    return Scenario(
        id=draw(scenario_ids),
        input=draw(json_values),
        tags=draw(st.lists(st.text(max_size=8), max_size=3)),
        metadata=draw(st.dictionaries(st.text(max_size=8), json_scalars, max_size=3)),
    )


def outcome(n: int, run_id: str = "r", **fields: object) -> Outcome:
    """A minimal passed outcome for scenario ``s{n}``."""
    values: dict[str, object] = {
        "run_id": run_id,
        "scenario_id": f"s{n}",
        "attempt": 1,
        "status": Status.PASSED,
        "started_at": _T0,
        "finished_at": _T0,
    }
    values.update(fields)
    return Outcome(**values)  # type: ignore[arg-type]


#: Gaps (seconds) between records arriving at the batcher.
arrival_gaps = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=3.0, allow_nan=False)),
    min_size=0,
    max_size=60,
)


def mid_run_statistics(**changes: Any) -> RuntimeStatistics:
    """A snapshot mid-run; override any field."""
    base = RuntimeStatistics(
        run_id="r-1",
        submitted=150,
        completed=120,
        running=8,
        by_status={"passed": 100, "failed": 15, "error": 5},
        written=100,
        already_written=0,
        dead_lettered=0,
        pending_in_batcher=12,
        outcome_queue=3,
        work_queue=16,
        batch_queue=1,
        by_flush_reason={"size": 2, "deadline": 1},
        batches_written=3,
        write_transactions=4,
        retries=0,
        breaker_state="closed",
        breaker_transitions={},
        spilled_batches=0,
        spilled_outcomes=0,
        replayed_outcomes=0,
        journal_bytes=1536,
        restarts={},
        elapsed=4.0,
        last_write_latency=0.0123,
        batch_size=50,
    )
    return attrs.evolve(base, **changes)


#: A suite's scenario ids: unique, of the kinds a file holds.
suite_ids = st.sets(scenario_ids, min_size=0, max_size=200)
