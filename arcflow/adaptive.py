"""Adaptive batch sizing: AIMD on the measured write latency.

The batcher reads its size limit from a zero-argument callable at the start
of each batch (``run_batcher(batch_size=controller.current)``); the writer's
``on_batch_written(batch, inserted, latency)`` hook feeds the controller::

    controller = AdaptiveBatchSize(AdaptiveConfig(minimum=10, maximum=5000, target_latency=0.5),
                                   initial=100)
    Runtime(..., on_batch_written=controller.on_batch_written, batch_size_source=controller.current)

The rule, per committed write of ``n`` records taking ``latency`` seconds:

* **additive increase**: the write was at or under the target and the batch
  was full (``n >= current()``; a smaller batch was cut by its deadline and
  says nothing about bigger ones): the limit becomes ``n + step``.
* **multiplicative decrease**: the write took longer than the target: the
  limit becomes ``n * decrease`` (at most the current limit).

Both are computed from ``n``, the size the sample was taken at, not from the
current limit, so a batch built before the last change (one can wait in the
channel) never moves the limit twice for the same cause.  The limit always
stays within ``[minimum, maximum]``.
"""

from __future__ import annotations

import math

import attrs

from .errors import ConfigError
from .models import Batch
from .validators import fraction, optional, positive, whole


@attrs.frozen
class AdaptiveConfig:
    """Bounds and target of the adaptive batch size."""

    #: The limit never goes below this many records.
    minimum: int = attrs.field(default=10, validator=whole(1, 100_000))
    #: ...nor above this many.
    maximum: int = attrs.field(default=10_000, validator=whole(1, 100_000))
    #: Seconds one batch write should take.
    target_latency: float = attrs.field(default=0.5, validator=positive)
    #: Records added after a fast full batch (default: a tenth of the starting size, at least 1).
    step: int | None = attrs.field(default=None, validator=optional(whole(1)))
    #: Factor applied after a slow write.
    decrease: float = attrs.field(default=0.5, validator=fraction)

    def __attrs_post_init__(self) -> None:
        if self.minimum > self.maximum:
            raise ConfigError(
                f"invalid minimum={self.minimum} and maximum={self.maximum}: "
                "the minimum batch size must not exceed the maximum"
            )


class AdaptiveBatchSize:
    """An AIMD controller for the batch size; ``current`` is the callable the batcher reads."""

    def __init__(self, config: AdaptiveConfig | None = None, *, initial: int = 100) -> None:
        self.config = config or AdaptiveConfig()
        cfg = self.config
        if not cfg.minimum <= initial <= cfg.maximum:
            raise ConfigError(
                f"invalid batch_size={initial}: with adaptive batching it must be between "
                f"min_batch_size={cfg.minimum} and max_batch_size={cfg.maximum}"
            )
        self._size = initial
        self.step = cfg.step if cfg.step is not None else max(1, initial // 10)
        #: Changes so far, by direction (``increase``, ``decrease``).
        self.increases = 0
        self.decreases = 0
        #: The latency of the last sample, seconds.
        self.last_latency = 0.0

    def current(self) -> int:
        """The batch size limit to use for the next batch."""
        return self._size

    def observe(self, size: int, latency: float) -> int:
        """Feed one committed write of ``size`` records that took ``latency`` seconds."""
        if size <= 0 or not math.isfinite(latency) or latency < 0:
            return self._size
        cfg = self.config
        self.last_latency = latency
        if latency > cfg.target_latency:
            lower = max(cfg.minimum, int(size * cfg.decrease))
            if lower < self._size:
                self._size = lower
                self.decreases += 1
        elif size >= self._size:
            higher = min(cfg.maximum, size + self.step)
            if higher > self._size:
                self._size = higher
                self.increases += 1
        return self._size

    def on_batch_written(self, batch: Batch, inserted: int, latency: float) -> None:
        """The writer's hook: every committed write is one sample."""
        self.observe(len(batch), latency)

    def describe(self) -> str:
        """One line for the progress display: bounds and target."""
        cfg = self.config
        return f"adaptive {cfg.minimum}..{cfg.maximum}, target {cfg.target_latency * 1000:.0f} ms"


__all__ = ["AdaptiveBatchSize", "AdaptiveConfig"]
