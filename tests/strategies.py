"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

from arcflow.models import Outcome, Scenario, Status

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
