"""Adaptive batch sizing: the AIMD controller alone, and driving the real batcher."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing
from conftest import quickstart_args

from arcflow.adaptive import AdaptiveBatchSize, AdaptiveConfig
from arcflow.batcher import run_batcher
from arcflow.errors import ConfigError
from arcflow.models import Batch, FlushReason, Outcome, Status

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def outcome(i: int) -> Outcome:
    return Outcome(
        run_id="r",
        scenario_id=f"s{i}",
        attempt=1,
        status=Status.PASSED,
        started_at=T0,
        finished_at=T0,
    )


def controller(initial: int = 100, **kw: object) -> AdaptiveBatchSize:
    cfg = AdaptiveConfig(
        **{"minimum": 10, "maximum": 1000, "target_latency": 0.5, "step": 10, **kw}
    )  # type: ignore[arg-type]
    return AdaptiveBatchSize(cfg, initial=initial)


def test_fast_full_batches_grow_additively() -> None:
    """A full batch written under the target adds `step` records to the limit."""
    c = controller()
    assert c.current() == 100
    assert c.observe(100, 0.1) == 110
    assert c.observe(110, 0.1) == 120
    assert c.increases == 2


def test_slow_batches_shrink_multiplicatively() -> None:
    """A write over the target halves the size the sample was taken at."""
    c = controller(initial=400)
    assert c.observe(400, 0.9) == 200
    assert c.observe(200, 0.9) == 100
    assert c.decreases == 2


def test_partial_batches_do_not_grow_the_limit() -> None:
    """A batch cut by its deadline (smaller than the limit) is no evidence that bigger is fine."""
    c = controller()
    assert c.observe(30, 0.01) == 100
    assert c.increases == 0


def test_stale_sample_does_not_shrink_twice() -> None:
    """A batch built before a decrease (twice the new limit) does not halve the limit again."""
    c = controller(initial=400)
    c.observe(400, 1.0)  # -> 200
    assert c.observe(400, 1.0) == 200  # the other in-flight batch of 400, also slow
    assert c.decreases == 1


def test_limit_stays_within_bounds() -> None:
    """The limit never leaves [minimum, maximum], whatever the latencies."""
    c = controller(initial=995)
    assert c.observe(995, 0.0) == 1000
    assert c.observe(1000, 0.0) == 1000
    small = controller(initial=12)
    assert small.observe(12, 5.0) == 10
    assert small.observe(10, 5.0) == 10


def test_default_step_is_a_tenth_of_the_starting_size() -> None:
    """Without a step, the increase is initial // 10 (at least 1)."""
    assert AdaptiveBatchSize(AdaptiveConfig(), initial=500).step == 50
    assert AdaptiveBatchSize(AdaptiveConfig(minimum=1), initial=5).step == 1


def test_converges_near_the_target_latency() -> None:
    """With latency proportional to size, AIMD oscillates around the size that meets the target."""
    c = AdaptiveBatchSize(
        AdaptiveConfig(minimum=10, maximum=100_000, target_latency=0.5), initial=100
    )
    per_record = 0.001  # 1 ms per record: the target is met at 500 records
    sizes = []
    for _ in range(300):
        size = c.current()
        c.observe(size, size * per_record)
        sizes.append(size)
    tail = sizes[-100:]
    assert min(tail) >= 250 and max(tail) <= 520


def test_bad_bounds_are_config_errors() -> None:
    """min > max, or a starting size outside the bounds, names the values."""
    with pytest.raises(ConfigError, match="minimum=50 and maximum=10"):
        AdaptiveConfig(minimum=50, maximum=10)
    with pytest.raises(
        ConfigError, match="batch_size=5: with adaptive batching it must be between"
    ):
        AdaptiveBatchSize(AdaptiveConfig(minimum=10), initial=5)
    with pytest.raises(ConfigError, match="target_latency"):
        AdaptiveConfig(target_latency=0)


def test_hook_feeds_the_batch_length() -> None:
    """on_batch_written(batch, inserted, latency) samples len(batch) and the latency."""
    c = controller()
    batch = Batch("b", tuple(outcome(i) for i in range(100)), FlushReason.SIZE)
    c.on_batch_written(batch, 100, 0.01)
    assert c.current() == 110 and c.last_latency == 0.01


async def test_batcher_follows_the_controller(autojump_clock: trio.testing.MockClock) -> None:
    """run_batcher reads controller.current at each batch: slow writes shrink the next batches."""
    c = controller(initial=40, minimum=10, step=10)
    out_send, out_recv = trio.open_memory_channel[Outcome](1000)
    batch_send, batch_recv = trio.open_memory_channel[Batch](0)
    sizes: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_batcher(out_recv, batch_send, batch_size=c.current, flush_interval=60.0)
        )
        async with out_send:
            for i in range(200):
                out_send.send_nowait(outcome(i))
        async for batch in batch_recv:
            sizes.append(len(batch))
            # The "writer": the first two writes are slow, the rest fast.
            c.on_batch_written(batch, len(batch), 1.0 if len(sizes) <= 2 else 0.01)
    assert sum(sizes) == 200
    assert sizes[:4] == [40, 20, 10, 20]
    assert sizes[4] == 30


@pytest.mark.parametrize(("target", "grows"), [("60", True), ("0.000001", False)])
def test_cli_adaptive_batching_moves_the_stored_batch_sizes(
    dsn: str,
    run_id: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    target: str,
    grows: bool,
    db_query_sync: Any,
) -> None:
    """`run --adaptive-batching`: fast writes grow the batches in arcflow.batches, slow ones shrink them."""
    import json
    from pathlib import Path

    from arcflow import cli

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    code = cli.main(
        [
            *quickstart_args(dsn, run_id, tmp_path),
            "--json",
            "--adaptive-batching",
            "--batch-size",
            "20",
            "--min-batch-size",
            "10",
            "--max-batch-size",
            "200",
            "--target-latency",
            target,
            # One writer connection: batches commit in the order the controller sized them.
            "--writer-connections",
            "1",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["written"] == 300
    rows = db_query_sync(
        "SELECT size FROM arcflow.batches WHERE run_id = $1 AND reason = 'size' ORDER BY written_at, batch_id",
        run_id,
    )
    sizes = [r["size"] for r in rows]
    assert sizes[0] == 20
    if grows:
        assert max(sizes) > 20 and sizes == sorted(sizes)
    else:
        assert sizes[-1] == 10 and sizes == sorted(sizes, reverse=True)


@pytest.fixture
def db_query_sync(dsn: str) -> Any:
    """``db_query_sync(sql, *args)`` -> rows, for tests that are not async."""
    from conftest import query

    def run(sql: str, *args: Any) -> Any:
        return trio.run(query, dsn, sql, *args)

    return run
