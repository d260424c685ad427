"""Choosing scenarios: ids, tags, shards, a reproducible sample, a limit, what failed before.

A :class:`Selection` is applied to a scenario file as it is read: the
filters (``ids``, ``tags``, ``exclude_tags``, ``shard``, ``only_failed``)
decide scenario by scenario; ``sample`` keeps a reproducible ``N`` of what
the filters let through (the ``N`` whose ``blake2b(seed:id)`` is smallest,
found in the validation pass, so memory holds ``N`` keys, not the file);
``limit`` keeps the first ``N`` of what is left, in file order.

Shards split a suite by a hash of the id: ``shard=(i, n)`` keeps the ids
whose hash modulo ``n`` is ``i - 1``.  The ``n`` shards of a suite are
disjoint and together they are the suite, so ``n`` machines can run one
suite into one run id without overlap.

A run records its selection (in its config); ``--resume`` keeps it.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .errors import ConfigError
from .validators import optional, whole

__all__ = ["Selection", "parse_shard", "shard_of"]


def shard_of(scenario_id: str, count: int) -> int:
    """The shard (1-based) of ``scenario_id`` among ``count``, from a hash of the id."""
    digest = hashlib.blake2b(scenario_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1


def sample_key(scenario_id: str, seed: int) -> int:
    """The key a sample orders ids by: the ``N`` smallest are the sample."""
    text = f"{seed}:{scenario_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` as (I, N), with 1 <= I <= N; ConfigError saying so otherwise."""
    head, sep, tail = text.partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index = count = 0
    if not sep or not 1 <= index <= count:
        raise ConfigError(f"invalid shard {text!r}: expected I/N with 1 <= I <= N, e.g. 2/4")
    return index, count


def _id_set(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _check_shard(_inst: Any, _attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (
        isinstance(value, tuple) and len(value) == 2 and 1 <= value[0] <= value[1]
    ):
        raise ConfigError(f"invalid shard={value!r}: expected (I, N) with 1 <= I <= N")


@attrs.frozen(kw_only=True)
class Selection:
    """Which scenarios of a file a run takes (see the module docs)."""

    #: Only these ids (empty: any).
    ids: frozenset[str] = attrs.field(factory=frozenset, converter=_id_set)
    #: Only scenarios with at least one of these tags (empty: any).
    tags: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: No scenario with any of these tags.
    exclude_tags: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: (I, N): only shard I of N.
    shard: tuple[int, int] | None = attrs.field(default=None, validator=_check_shard)
    #: Only the ids that ended failed, error or timeout in this run (resolved at start).
    only_failed: str | None = None
    #: A reproducible sample of this many.
    sample: int | None = attrs.field(default=None, validator=optional(whole(1)))
    #: The sample's seed.
    seed: int = attrs.field(default=0, validator=whole(0))
    #: At most this many, the first in file order.
    limit: int | None = attrs.field(default=None, validator=optional(whole(1)))
    #: The ids ``only_failed`` resolved to (set by the runtime; not part of ``describe()``).
    failed_ids: frozenset[str] | None = attrs.field(default=None, eq=False)

    @property
    def everything(self) -> bool:
        """True if this selection takes every scenario."""
        return self == Selection()

    def matches(self, scenario_id: str, tags: Iterable[str]) -> bool:
        """The filters (ids, tags, exclude_tags, shard, only_failed) for one scenario."""
        if self.ids and scenario_id not in self.ids:
            return False
        if self.failed_ids is not None and scenario_id not in self.failed_ids:
            return False
        if self.tags or self.exclude_tags:
            have = set(tags)
            if self.tags and not have.intersection(self.tags):
                return False
            if have.intersection(self.exclude_tags):
                return False
        return not (
            self.shard is not None and shard_of(scenario_id, self.shard[1]) != self.shard[0]
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-safe form, stored with the run (empty when everything is taken)."""
        out: dict[str, Any] = {}
        if self.ids:
            out["ids"] = sorted(self.ids)
        for name in ("tags", "exclude_tags"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        if self.shard is not None:
            out["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        for name in ("only_failed", "sample", "limit"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.sample is not None:
            out["seed"] = self.seed
        return out

    @classmethod
    def from_description(cls, data: Mapping[str, Any]) -> Selection:
        """Inverse of :meth:`describe` (a resumed run's stored selection)."""
        shard = parse_shard(data["shard"]) if data.get("shard") else None
        return cls(
            ids=data.get("ids", ()),
            tags=data.get("tags", ()),
            exclude_tags=data.get("exclude_tags", ()),
            shard=shard,
            only_failed=data.get("only_failed"),
            sample=data.get("sample"),
            seed=data.get("seed", 0),
            limit=data.get("limit"),
        )


class Sampler:
    """Finds, in one pass, the ``size`` smallest sample keys among the ids it is shown."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self._heap: list[int] = []  # max-heap of the smallest keys, negated

    def add(self, scenario_id: str) -> None:
        key = -sample_key(scenario_id, self.seed)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, key)
        elif key > self._heap[0]:
            heapq.heapreplace(self._heap, key)

    @property
    def threshold(self) -> int | None:
        """The largest key in the sample (keys at or below it are in), or None if empty."""
        return -self._heap[0] if self._heap else None
