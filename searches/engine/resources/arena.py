"""Fixed offsets for every tensor in one static arena, for a given execution order.

The memory model's peak (:mod:`searches.engine.resources.memory`) is the largest sum of live tensor
bytes over the steps of the order: a lower bound for any arena.  Placing tensors at fixed
offsets can fragment, so the exporter's arena is what this planner packs, and the resource
model reports that number; the two are equal whenever packing reaches the bound (which
``tests/engine/resources/test_arena.py`` measures over random architectures).

Tensors live at a step overlap in time and may not overlap in space; an op's output never
shares bytes with its inputs (the kernels are not in-place).  Offsets are byte offsets with
no alignment padding: the kernels read activations byte-wise or with unaligned word loads.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from searches.engine.resources.memory import MemoryPlan
from searches.engine.resources.opgraph import OpGraph

RANDOM_TRIES = 64


@dataclass(frozen=True)
class ArenaPlan:
    """Byte offset of every tensor, the arena size, and the memory model's lower bound."""

    offsets: dict[str, int]
    size: int
    lower_bound: int

    @property
    def fragmentation_bytes(self) -> int:
        """Bytes the packing needs beyond the peak of live tensors (0 when optimal)."""
        return self.size - self.lower_bound


@dataclass(frozen=True)
class _Item:
    id: str
    size: int
    first: int
    last: int


def _items(graph: OpGraph, plan: MemoryPlan) -> list[_Item]:
    spans: dict[str, list[int]] = {}
    for step, live in enumerate(plan.live_sets):
        for t in live:
            spans.setdefault(t, [step, step])[1] = step
    sizes = graph.tensor_bytes()
    return [_Item(t, sizes[t], first, last) for t, (first, last) in spans.items() if sizes[t] > 0]


def _pack(items: Sequence[_Item]) -> tuple[dict[str, int], int]:
    """Place items in the given order, each in the tightest gap among those it overlaps in time."""
    placed: list[tuple[_Item, int]] = []
    offsets: dict[str, int] = {}
    size = 0
    for item in items:
        busy = sorted(
            (off, off + other.size)
            for other, off in placed
            if other.first <= item.last and item.first <= other.last
        )
        best, best_gap, cursor = None, None, 0
        for start, end in busy:
            gap = start - cursor
            if gap >= item.size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, end)
        offset = cursor if best is None else best
        offsets[item.id] = offset
        placed.append((item, offset))
        size = max(size, offset + item.size)
    return offsets, size


_ORDERS: tuple[Callable[[_Item], tuple[int, ...]], ...] = (
    lambda i: (-i.size, i.first),
    lambda i: (i.first, -i.size),
    lambda i: (-(i.last - i.first), -i.size),
)


def plan_arena(graph: OpGraph, plan: MemoryPlan, seed: int = 0) -> ArenaPlan:
    """Offsets for the tensors of ``graph`` run in ``plan.order``; stops early at the lower bound."""
    items = _items(graph, plan)
    bound = plan.peak_bytes
    best: tuple[dict[str, int], int] | None = None
    for key in _ORDERS:
        candidate = _pack(sorted(items, key=key))
        if best is None or candidate[1] < best[1]:
            best = candidate
        if best[1] == bound:
            break
    rng = random.Random(seed)
    tries = 0
    while best is not None and best[1] > bound and tries < RANDOM_TRIES:
        shuffled = list(items)
        rng.shuffle(shuffled)
        candidate = _pack(shuffled)
        if candidate[1] < best[1]:
            best = candidate
        tries += 1
    offsets, size = best if best is not None else ({}, 0)
    return ArenaPlan(offsets, size, bound)


def check_arena(graph: OpGraph, plan: MemoryPlan, arena: ArenaPlan) -> None:
    """Raise AssertionError if two tensors live at the same step overlap in the arena."""
    sizes = graph.tensor_bytes()
    for step, live in enumerate(plan.live_sets):
        spans = sorted((arena.offsets[t], arena.offsets[t] + sizes[t], t) for t in live if sizes[t] > 0)
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            if start < end:
                raise AssertionError(f"step {step}: {a} and {b} overlap in the arena")
        if spans and spans[-1][1] > arena.size:
            raise AssertionError(f"step {step}: {spans[-1][2]} ends beyond the arena")
