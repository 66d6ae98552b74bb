"""The series-parallel solver of the peak-SRAM planner: fork-join blocks of parallel chains.

A block made of parallel single-input/single-output chains that all read one shared tensor is
solved exactly by reducing every chain to the positions where pausing it can help
(:func:`pause_points`) and running a bottleneck DP over the product lattice of those
positions; :func:`searches.engine.resources.memory.plan_memory` explains where it is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from math import prod
from typing import Any

import numpy as np
import numpy.typing as npt

from searches.engine.resources.dag import INF, INF32, Index, op_mask

# --------------------------------------------------------------------------- fork-join chains


@dataclass(frozen=True)
class ChainBlock:
    """A block of parallel chains that all start from one shared tensor."""

    chains: tuple[tuple[int, ...], ...]  # op indices along each chain
    sizes: tuple[tuple[int, ...], ...]  # bytes written by each op of each chain
    shared_bytes: int  # bytes of the fork tensor freed once every chain started (0 if kept)


def as_chain_block(ix: Index, block: Sequence[int]) -> ChainBlock | None:
    """Recognise a fork-join block; return None unless the chain memory model is exact for it."""
    members = op_mask(block)
    if any(len(ix.inputs[v]) != 1 or len(ix.outputs[v]) != 1 for v in block):
        return None
    heads = [v for v in block if not _inside(ix.producer[ix.inputs[v][0]], members)]
    fork = {ix.inputs[v][0] for v in heads}
    if len(fork) != 1:
        return None
    chains, sizes, seen = [], [], 0
    for head in heads:
        chain = _follow_chain(ix, head, members)
        if chain is None:
            return None
        seen |= op_mask(chain)
        chains.append(tuple(chain))
        sizes.append(tuple(ix.size[ix.outputs[v][0]] for v in chain))
    if seen != members:
        return None
    (x,) = fork
    # a block is a run of the default order, so the ops before it are exactly those listed earlier
    before = (1 << block[0]) - 1
    # X is released inside the block only when no op after the block still reads it
    released = ix.readers[x] & ~(members | before) == 0
    return ChainBlock(tuple(chains), tuple(sizes), ix.size[x] if released else 0)


def _inside(op: int, members: int) -> bool:
    return op >= 0 and bool((members >> op) & 1)


def _follow_chain(ix: Index, head: int, members: int) -> list[int] | None:
    """Walk a chain from ``head``; None if an inner tensor is read by anything but the next link."""
    chain = [head]
    while True:
        y = ix.outputs[chain[-1]][0]
        inside = ix.readers[y] & members
        if not inside:
            return chain
        if ix.readers[y] != inside or inside.bit_count() != 1:
            return None
        chain.append(inside.bit_length() - 1)


def _pause_points(resident: Sequence[int]) -> list[int]:
    """Positions of a chain where pausing it can help, given ``resident[p]`` held after ``p`` ops.

    Position 0 (not started) and the end are always kept.  An inner position ``q`` is
    dropped if pausing there is never needed, by two exchange arguments that hold
    whatever the other chains do:

    * forward: a later ``q2`` with ``resident[q2] <= min(resident[q..q2])`` reached by
      steps no costlier than the step into ``q`` -- run on to ``q2`` at once instead;
    * backward: an earlier ``q2 >= 1`` with ``resident[q2] < resident[p]`` for all
      ``p`` in ``(q2, q]`` left by steps no costlier than the step out of ``q`` -- wait
      at ``q2`` and catch up just before resuming (never back to 0: starting a chain
      can release the fork tensor, so delaying a start is not free).

    Each rewrite lowers the multiset of ``(resident, -position)`` pauses, so applying
    them repeatedly ends in a schedule that pauses at kept positions only.
    """
    m = len(resident) - 1
    step = [resident[p] + resident[p + 1] for p in range(m)]  # chain-local cost of step p -> p+1
    kept = [0]
    for q in range(1, m):
        if not (_runs_on(resident, step, q) or _waits_back(resident, step, q)):
            kept.append(q)
    if m > 0:
        kept.append(m)
    return kept


def _runs_on(resident: Sequence[int], step: Sequence[int], q: int) -> bool:
    lowest = resident[q]
    for q2 in range(q + 1, len(resident)):
        if step[q2 - 1] > step[q - 1]:
            return False
        if resident[q2] <= lowest:
            return True
        lowest = min(lowest, resident[q2])
    return False


def _waits_back(resident: Sequence[int], step: Sequence[int], q: int) -> bool:
    lowest = resident[q]
    for q2 in range(q - 1, 0, -1):
        if step[q2] > step[q]:
            return False
        if resident[q2] < lowest:
            return True
        lowest = min(lowest, resident[q2])
    return False


@dataclass(frozen=True)
class _Lattice:
    """Per-chain pause points and the cost terms of moving between consecutive ones."""

    points: list[list[int]]  # kept positions per chain
    held: list[list[int]]  # bytes held by the chain at each kept position
    hill: list[list[int]]  # cost of the run into point c, minus what the chain held before it
    late_hill: list[list[int]]  # from the start only: costliest step after the first one


def _lattice(block: ChainBlock) -> _Lattice:
    points, held, hill, late_hill = [], [], [], []
    for sizes in block.sizes:
        resident = [0, *sizes]
        step = [resident[p] + resident[p + 1] for p in range(len(sizes))]
        pts = _pause_points(resident)
        h, late = [0], [-INF]
        for a, b in pairwise(pts):
            if a == 0:
                # the first step always has X live; later ones only while another chain waits
                h.append(step[0])
                late.append(max(step[1:b], default=-INF))
            else:
                h.append(max(step[a:b]) - resident[a])
                late.append(-INF)
        points.append(pts)
        held.append([resident[p] for p in pts])
        hill.append(h)
        late_hill.append(late)
    return _Lattice(points, held, hill, late_hill)


def solve_chains(block: ChainBlock) -> tuple[int, list[int]]:
    """Return the min over interleavings of the chains' peak (above the block's base) and an order.

    Bottleneck DP over the product lattice of pause points, one antichain (level) at a
    time so that numpy does the inner loops.  Cost: O(k * prod(pause points)).
    """
    lat = _lattice(block)
    shape = tuple(len(p) for p in lat.points)
    # every cost is a sum of distinct block tensors, so this bounds them all; int32 halves the traffic
    bound = block.shared_bytes + sum(map(sum, block.sizes))
    dtype = np.int32 if bound < INF32 else np.int64
    cost = _move_costs(lat, shape, block.shared_bytes, dtype)
    strides = [prod(shape[j + 1 :]) for j in range(len(shape))]
    level = sum(_along(np.arange(n, dtype=np.int16), j, len(shape)) for j, n in enumerate(shape))
    best = _level_dp(np.broadcast_to(level, shape).ravel(), strides, cost)
    return int(best[-1]), _unwind(block, lat, best, cost, shape)


def _along(values: npt.NDArray[Any], axis: int, ndim: int) -> npt.NDArray[Any]:
    """View a 1-D array as lying along ``axis`` of an ``ndim``-dimensional grid (for broadcasting)."""
    return values.reshape([-1 if d == axis else 1 for d in range(ndim)])


def _move_costs(
    lat: _Lattice, shape: tuple[int, ...], shared: int, dtype: type[np.signedinteger[Any]]
) -> npt.NDArray[np.signedinteger[Any]]:
    """cost[s, j]: the costliest step of moving chain j into lattice state s (flat); a huge value if none."""
    k = len(shape)
    inf = INF32 if dtype is np.int32 else INF
    held = sum(_along(np.asarray(h, dtype=dtype), j, k) for j, h in enumerate(lat.held))
    waiting = sum(_along(np.arange(n) == 0, j, k).astype(np.int8) for j, n in enumerate(shape))
    held = np.broadcast_to(held, shape)
    x_any = np.broadcast_to(np.where(waiting > 0, shared, 0).astype(dtype), shape)
    x_other = np.broadcast_to(np.where(waiting > 1, shared, 0).astype(dtype), shape)
    cost = np.full((*shape, k), inf, dtype=dtype)
    for j in range(k):
        # slicing along axis j pairs every state with its predecessor on chain j
        src = tuple(slice(0, -1) if d == j else slice(None) for d in range(k))
        dst = tuple(slice(1, None) if d == j else slice(None) for d in range(k))
        late_hill = [max(h, -inf) for h in lat.late_hill[j][1:]]
        early = _along(np.asarray(lat.hill[j][1:], dtype=dtype), j, k) + x_any[src]
        late = _along(np.asarray(late_hill, dtype=dtype), j, k) + x_other[src]
        cost[(*dst, j)] = held[src] + np.maximum(early, late)
    return cost.reshape(-1, k)


def _level_dp(
    level: npt.NDArray[np.int16], strides: list[int], cost: npt.NDArray[np.signedinteger[Any]]
) -> npt.NDArray[np.signedinteger[Any]]:
    """best[s] = min over axes j of max(best[s - stride_j], cost[s, j]), one lattice level at a time."""
    by_level = np.argsort(level, kind="stable").astype(np.int32)
    bounds = np.searchsorted(level[by_level], np.arange(int(level.max()) + 2))
    # best is padded in front so that s - stride_j is always a valid index; where chain j has
    # no predecessor the cost is huge anyway, so whatever sits there does not matter
    pad = max(strides)
    shifts = np.array([pad - st for st in strides], dtype=np.int32)
    cost_sorted = cost[by_level]
    best = np.zeros(pad + len(level), dtype=cost.dtype)
    for lo, hi in pairwise(bounds[1:]):
        rows = by_level[lo:hi]
        preds = np.take(best, rows[:, None] + shifts)
        best[rows + pad] = np.maximum(preds, cost_sorted[lo:hi]).min(axis=1)
    return best[pad:]


def _unwind(
    block: ChainBlock,
    lat: _Lattice,
    best: npt.NDArray[np.signedinteger[Any]],
    cost: npt.NDArray[np.signedinteger[Any]],
    shape: tuple[int, ...],
) -> list[int]:
    """Walk an optimal lattice path back from the end and expand it into op indices."""
    runs: list[list[int]] = []
    state = [n - 1 for n in shape]
    s = len(best) - 1
    while s:
        for j, c in enumerate(state):
            stride = prod(shape[j + 1 :])
            if c and max(best[s - stride], cost[s, j]) == best[s]:
                a, b = lat.points[j][c - 1], lat.points[j][c]
                runs.append(list(block.chains[j][a:b]))
                state[j] -= 1
                s -= stride
                break
        else:  # pragma: no cover - the DP guarantees a witness
            raise AssertionError("no optimal predecessor")
    return [v for run in reversed(runs) for v in run]
