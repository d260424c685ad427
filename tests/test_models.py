"""The records: a scenario's content hash and the canonical JSON it is computed from."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import json_values, scenarios

from arcflow.models import Scenario, canonical_json


def reference_hash(s: Scenario) -> str:
    body = json.dumps(
        {"input": s.input, "tags": list(s.tags), "metadata": s.metadata, "timeout_s": s.timeout_s},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(body.encode()).hexdigest()


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.none() | st.floats(min_value=0.001, max_value=1e6))
def test_content_hash_is_the_canonical_sha256(scenario: Scenario, timeout: float | None) -> None:
    """The content hash is sha256 of the canonical JSON of input, tags, metadata and timeout."""
    s = Scenario(scenario.id, scenario.input, scenario.tags, scenario.metadata, timeout)
    assert s.content_hash == reference_hash(s)
    bare = Scenario(scenario.id, scenario.input)
    assert bare.content_hash == reference_hash(bare)


@settings(max_examples=300, deadline=None)
@given(json_values | st.floats(allow_nan=True))
def test_canonical_json_is_json_dumps(value: Any) -> None:
    """canonical_json gives byte for byte what json.dumps with sorted keys gives."""
    assert canonical_json(value) == json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def test_canonical_json_raises_what_json_dumps_raises() -> None:
    """Values json.dumps refuses (cycles, unknown types) raise the same errors."""
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        canonical_json(circular)
    with pytest.raises(TypeError, match="not JSON serializable"):
        canonical_json({"x": object()})
    with pytest.raises(TypeError):
        Scenario("s", input={"x": {1, 2}}).content_hash  # noqa: B018
