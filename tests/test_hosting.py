"""arcflow.tune_gc: what the CLI, as the host, does to the garbage collector."""

from __future__ import annotations

import gc

import arcflow
from arcflow.hosting import GC_THRESHOLD


def test_tune_gc_sets_the_thresholds_freezes_and_returns_the_old_ones() -> None:
    """tune_gc() raises all three thresholds, moves live objects out of the collector's way."""
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        kept = [[i] for i in range(1000)]
        assert arcflow.tune_gc() == (700, 10, 10)
        assert gc.get_threshold() == GC_THRESHOLD
        assert GC_THRESHOLD[0] >= 50_000 and GC_THRESHOLD[1] >= 100
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
