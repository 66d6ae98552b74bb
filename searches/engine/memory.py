"""Exact peak-SRAM planning for an :class:`~searches.engine.opgraph.OpGraph`.

Memory model: ops run one at a time.  While op ``v`` runs, every tensor that has
been written (network inputs count as written before the first step) and that
still has a reader at or after ``v`` (network outputs stay until the last step)
is live; an op's inputs and outputs are therefore live together and nothing is
reused in place.  The peak of an execution order is its largest per-step live
total, and the peak SRAM of a graph is the smallest peak over *all* topological
orders.

How :func:`plan_memory` finds that minimum exactly:

* A *cut op* is comparable with every other op, so every order runs the same ops
  before it.  Cut ops split the graph into independent *blocks* (the ops between
  two consecutive cuts): the live total of a step inside a block depends only on
  the order inside that block, so the optimum is the concatenation of per-block
  optima.
* A block made of parallel single-input/single-output chains that all read one
  shared tensor ``X`` (a μNAS fork-join; inner chain tensors read only by the next
  link) is solved by the series-parallel solver: every chain is reduced to the few
  positions where pausing it can ever help (see :func:`_pause_points`) and a
  bottleneck DP runs over the product lattice of those positions.  That accounts
  for ``X`` exactly, because whether ``X`` is live only depends on which chains
  have started (if an op after the block, e.g. a residual add, also reads ``X``,
  it is simply live throughout).  Cost O(k * prod(pause points)): about 3-4
  points per 4-op chain, so 8 x 4 takes a few ms.
* Any other block goes to a best-first search over downsets (sets of executed
  ops), which is exact for any DAG but exponential in the block's width.

``brute_force_peak`` enumerates every order and is meant for tests on small graphs.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from math import prod
from typing import Any

import numpy as np
import numpy.typing as npt

from searches.engine.opgraph import OpGraph

METHOD_SERIES_PARALLEL = "series-parallel"
METHOD_DOWNSET_DP = "downset-dp"

# Bigger than any live total a real graph can reach, small enough that adding a
# few byte counts to it cannot overflow int64.
_INF = 1 << 60
# The same for the int32 lattice DP, used when every cost of a block stays below it.
_INF32 = 1 << 30


@dataclass(frozen=True)
class MemoryPlan:
    """The optimal execution order of a graph next to its default order, with per-step lifetimes.

    ``timeline[k]`` is the live bytes while ``order[k]`` runs and ``live_sets[k]`` the ids
    of those live tensors (in graph order); the ``default_*`` fields describe
    ``graph.ops`` as listed.  ``method`` is ``"series-parallel"`` when every block
    between cut ops was a fork-join solved by the lattice DP (or there were none) and
    ``"downset-dp"`` when at least one block needed the general search.
    """

    peak_bytes: int
    order: tuple[str, ...]
    timeline: tuple[int, ...]
    live_sets: tuple[tuple[str, ...], ...]
    default_peak_bytes: int
    default_timeline: tuple[int, ...]
    default_live_sets: tuple[tuple[str, ...], ...]
    method: str

    def live_tensors(self, step: int, *, default: bool = False) -> tuple[str, ...]:
        """Return the ids of the tensors live at ``step`` of the optimal (or the default) order."""
        return (self.default_live_sets if default else self.live_sets)[step]

    @property
    def saved_bytes(self) -> int:
        """Return how many bytes the optimal order saves over the default one."""
        return self.default_peak_bytes - self.peak_bytes

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict (lists instead of tuples) for the dashboard."""
        return {
            "peak_bytes": self.peak_bytes,
            "order": list(self.order),
            "timeline": list(self.timeline),
            "live_sets": [list(s) for s in self.live_sets],
            "default_peak_bytes": self.default_peak_bytes,
            "default_timeline": list(self.default_timeline),
            "default_live_sets": [list(s) for s in self.default_live_sets],
            "method": self.method,
        }


# --------------------------------------------------------------------------- indexing


@dataclass(frozen=True)
class _Index:
    """Integer view of a graph: ops and tensors by position, op sets as bitmasks."""

    op_ids: tuple[str, ...]
    tensor_ids: tuple[str, ...]
    size: tuple[int, ...]  # bytes per tensor
    producer: tuple[int, ...]  # op index per tensor, -1 for a network input
    readers: tuple[int, ...]  # bitmask of the ops reading each tensor
    inputs: tuple[tuple[int, ...], ...]  # distinct tensors read, per op
    outputs: tuple[tuple[int, ...], ...]  # distinct tensors written, per op
    preds: tuple[int, ...]  # bitmask of the direct predecessors of each op
    out_bytes: tuple[int, ...]  # bytes written by each op

    @property
    def n_ops(self) -> int:
        return len(self.op_ids)


def _index(graph: OpGraph) -> _Index:
    graph.validate()
    tensor_pos = {t.id: i for i, t in enumerate(graph.tensors)}
    producer = [-1] * len(graph.tensors)
    readers = [0] * len(graph.tensors)
    inputs: list[tuple[int, ...]] = []
    outputs: list[tuple[int, ...]] = []
    for v, op in enumerate(graph.ops):
        # dict.fromkeys dedupes while keeping order: an op reading a tensor twice holds it once
        ins = tuple(dict.fromkeys(tensor_pos[t] for t in op.inputs))
        outs = tuple(dict.fromkeys(tensor_pos[t] for t in op.outputs))
        for t in ins:
            readers[t] |= 1 << v
        for t in outs:
            producer[t] = v
        inputs.append(ins)
        outputs.append(outs)
    size = tuple(t.bytes for t in graph.tensors)
    preds = tuple(_mask(producer[t] for t in ins if producer[t] >= 0) for ins in inputs)
    return _Index(
        op_ids=tuple(op.id for op in graph.ops),
        tensor_ids=tuple(t.id for t in graph.tensors),
        size=size,
        producer=tuple(producer),
        readers=tuple(readers),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        preds=preds,
        out_bytes=tuple(sum(size[t] for t in outs) for outs in outputs),
    )


def _mask(ops: Iterable[int]) -> int:
    m = 0
    for v in ops:
        m |= 1 << v
    return m


def _resident_bytes(ix: _Index, done: int) -> int:
    """Bytes held after the ops in ``done`` ran: written (or inputs) and still awaited (or outputs)."""
    total = 0
    for t, nbytes in enumerate(ix.size):
        p = ix.producer[t]
        written = p < 0 or (done >> p) & 1
        awaited = ix.readers[t] == 0 or ix.readers[t] & ~done
        if written and awaited:
            total += nbytes
    return total


def _freed_bytes(ix: _Index, done: int, v: int) -> int:
    """Bytes released by running ``v`` after ``done``: inputs whose readers are then all done."""
    after = done | (1 << v)
    return sum(ix.size[t] for t in ix.inputs[v] if ix.readers[t] & ~after == 0)


# --------------------------------------------------------------------------- timelines


def _positions(ix: _Index, order: Sequence[str]) -> list[int]:
    """Map an order of op ids to op indices, raising ValueError unless it is a topological permutation."""
    pos = {op_id: v for v, op_id in enumerate(ix.op_ids)}
    if len(order) != len(pos) or set(order) != set(pos):
        raise ValueError("order is not a permutation of the graph's ops")
    seq = [pos[op_id] for op_id in order]
    done = 0
    for v in seq:
        if ix.preds[v] & ~done:
            raise ValueError(f"order runs {ix.op_ids[v]!r} before one of its producers")
        done |= 1 << v
    return seq


def _lifetimes(ix: _Index, seq: Sequence[int]) -> list[tuple[int, int]]:
    """Return the inclusive (first, last) live step of every tensor under the op sequence ``seq``."""
    step_of = [0] * ix.n_ops
    for k, v in enumerate(seq):
        step_of[v] = k
    last_step = len(seq) - 1
    spans = []
    for t, p in enumerate(ix.producer):
        first = step_of[p] if p >= 0 else 0
        last = max((step_of[v] for v in _bits(ix.readers[t])), default=last_step)
        spans.append((first, last))
    return spans


def _timeline(ix: _Index, spans: Sequence[tuple[int, int]], steps: int) -> list[int]:
    # difference array over steps: +bytes at a tensor's first live step, -bytes after its last
    delta = [0] * (steps + 1)
    for t, (first, last) in enumerate(spans):
        delta[first] += ix.size[t]
        delta[last + 1] -= ix.size[t]
    running, out = 0, []
    for d in delta[:steps]:
        running += d
        out.append(running)
    return out


def _live_sets(ix: _Index, spans: Sequence[tuple[int, int]], steps: int) -> tuple[tuple[str, ...], ...]:
    live: list[list[str]] = [[] for _ in range(steps)]
    for t, (first, last) in enumerate(spans):
        for k in range(first, last + 1):
            live[k].append(ix.tensor_ids[t])
    return tuple(tuple(ids) for ids in live)


def step_timeline(graph: OpGraph, order: Sequence[str]) -> list[int]:
    """Return the live bytes at each step of ``order``; ValueError unless it is a topological permutation."""
    ix = _index(graph)
    seq = _positions(ix, order)
    return _timeline(ix, _lifetimes(ix, seq), len(seq))


# --------------------------------------------------------------------------- blocks


def _cut_flags(ix: _Index) -> list[bool]:
    """Flag the ops comparable with every other op (every order runs the same ops before them)."""
    n = ix.n_ops
    anc = [0] * n
    for v in range(n):
        for p in _bits(ix.preds[v]):
            anc[v] |= anc[p] | (1 << p)
    desc = [0] * n
    for v in reversed(range(n)):
        for p in _bits(ix.preds[v]):
            desc[p] |= desc[v] | (1 << v)
    return [(anc[v] | desc[v]).bit_count() == n - 1 for v in range(n)]


def _bits(mask: int) -> Iterable[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _segments(ix: _Index) -> list[list[int]]:
    """Split the default order into cut ops (singletons) and the blocks of ops between cuts."""
    segments: list[list[int]] = []
    current: list[int] = []
    for v, is_cut in enumerate(_cut_flags(ix)):
        if not is_cut:
            current.append(v)
            continue
        if current:
            segments.append(current)
            current = []
        segments.append([v])
    if current:
        segments.append(current)
    return segments


# --------------------------------------------------------------------------- fork-join chains


@dataclass(frozen=True)
class _ChainBlock:
    """A block of parallel chains that all start from one shared tensor."""

    chains: tuple[tuple[int, ...], ...]  # op indices along each chain
    sizes: tuple[tuple[int, ...], ...]  # bytes written by each op of each chain
    shared_bytes: int  # bytes of the fork tensor freed once every chain started (0 if kept)


def _as_chain_block(ix: _Index, block: Sequence[int]) -> _ChainBlock | None:
    """Recognise a fork-join block; return None unless the chain memory model is exact for it."""
    members = _mask(block)
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
        seen |= _mask(chain)
        chains.append(tuple(chain))
        sizes.append(tuple(ix.size[ix.outputs[v][0]] for v in chain))
    if seen != members:
        return None
    (x,) = fork
    # a block is a run of the default order, so the ops before it are exactly those listed earlier
    before = (1 << block[0]) - 1
    # X is released inside the block only when no op after the block still reads it
    released = ix.readers[x] & ~(members | before) == 0
    return _ChainBlock(tuple(chains), tuple(sizes), ix.size[x] if released else 0)


def _inside(op: int, members: int) -> bool:
    return op >= 0 and bool((members >> op) & 1)


def _follow_chain(ix: _Index, head: int, members: int) -> list[int] | None:
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


def _lattice(block: _ChainBlock) -> _Lattice:
    points, held, hill, late_hill = [], [], [], []
    for sizes in block.sizes:
        resident = [0, *sizes]
        step = [resident[p] + resident[p + 1] for p in range(len(sizes))]
        pts = _pause_points(resident)
        h, late = [0], [-_INF]
        for a, b in pairwise(pts):
            if a == 0:
                # the first step always has X live; later ones only while another chain waits
                h.append(step[0])
                late.append(max(step[1:b], default=-_INF))
            else:
                h.append(max(step[a:b]) - resident[a])
                late.append(-_INF)
        points.append(pts)
        held.append([resident[p] for p in pts])
        hill.append(h)
        late_hill.append(late)
    return _Lattice(points, held, hill, late_hill)


def _solve_chains(block: _ChainBlock) -> tuple[int, list[int]]:
    """Return the min over interleavings of the chains' peak (above the block's base) and an order.

    Bottleneck DP over the product lattice of pause points, one antichain (level) at a
    time so that numpy does the inner loops.  Cost: O(k * prod(pause points)).
    """
    lat = _lattice(block)
    shape = tuple(len(p) for p in lat.points)
    # every cost is a sum of distinct block tensors, so this bounds them all; int32 halves the traffic
    bound = block.shared_bytes + sum(map(sum, block.sizes))
    dtype = np.int32 if bound < _INF32 else np.int64
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
    inf = _INF32 if dtype is np.int32 else _INF
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
    block: _ChainBlock,
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


# --------------------------------------------------------------------------- general DAGs


def _solve_downsets(ix: _Index, block: Sequence[int], before: int, held: int) -> tuple[int, list[int]]:
    """Return the exact best peak of a block and an order, by best-first search over downsets.

    States are sets of executed ops (bitmasks); the cost of a path is its largest step,
    so states pop in order of that bottleneck (Dijkstra).  One safe pruning: if an
    available op fits under the bottleneck so far and frees at least what it writes,
    running it next is never worse (any completion can move it to the front without
    raising a later step), so it becomes the only successor.  Exponential in the width
    of the block (the number of downsets), fine for small or narrow blocks.
    """
    goal = before | _mask(block)
    best = {before: 0}
    parent: dict[int, tuple[int, int]] = {}
    heap: list[tuple[int, int, int, int]] = [(0, 0, before, held)]
    while heap:
        bottleneck, neg_depth, done, mem = heapq.heappop(heap)
        if done == goal:
            return bottleneck, _trace(parent, before, goal)
        if bottleneck > best[done]:
            continue
        for v, step, new_mem in _moves(ix, block, done, mem, bottleneck):
            nxt = done | (1 << v)
            reach = max(bottleneck, step)
            if reach < best.get(nxt, _INF):
                best[nxt] = reach
                parent[nxt] = (done, v)
                heapq.heappush(heap, (reach, neg_depth - 1, nxt, new_mem))
    raise AssertionError("goal unreachable")  # pragma: no cover - validate() rules this out


def _moves(
    ix: _Index, block: Sequence[int], done: int, mem: int, bottleneck: int
) -> list[tuple[int, int, int]]:
    """Return (op, step bytes, bytes held after) for the ops worth trying next from ``done``."""
    moves = []
    for v in block:
        if (done >> v) & 1 or ix.preds[v] & ~done:
            continue
        step = mem + ix.out_bytes[v]
        after = step - _freed_bytes(ix, done, v)
        if step <= bottleneck and after <= mem:
            return [(v, step, after)]
        moves.append((v, step, after))
    return moves


def _trace(parent: dict[int, tuple[int, int]], start: int, goal: int) -> list[int]:
    seq = []
    state = goal
    while state != start:
        state, v = parent[state]
        seq.append(v)
    return seq[::-1]


# --------------------------------------------------------------------------- entry points


def plan_memory(graph: OpGraph, *, force_general: bool = False) -> MemoryPlan:
    """Return the exact minimum peak SRAM over all topological orders, with an order reaching it.

    ``force_general`` sends every block to the downset solver (slow; for cross-checks).
    """
    ix = _index(graph)
    seq: list[int] = []
    peak, done, held = 0, 0, _resident_bytes(ix, 0)
    method = METHOD_SERIES_PARALLEL
    for segment in _segments(ix):
        if len(segment) == 1:
            seg_peak, order = held + ix.out_bytes[segment[0]], segment
        elif not force_general and (chains := _as_chain_block(ix, segment)) is not None:
            above, order = _solve_chains(chains)
            seg_peak = held - chains.shared_bytes + above
        else:
            method = METHOD_DOWNSET_DP
            seg_peak, order = _solve_downsets(ix, segment, done, held)
        peak = max(peak, seg_peak)
        for v in order:
            held += ix.out_bytes[v] - _freed_bytes(ix, done, v)
            done |= 1 << v
        seq.extend(order)
    spans, default_spans = _lifetimes(ix, seq), _lifetimes(ix, range(ix.n_ops))
    timeline, default_timeline = _timeline(ix, spans, ix.n_ops), _timeline(ix, default_spans, ix.n_ops)
    if max(timeline, default=0) != peak:  # pragma: no cover - guards the solvers' bookkeeping
        raise AssertionError(f"solver peak {peak} disagrees with its order's timeline {max(timeline)}")
    return MemoryPlan(
        peak_bytes=peak,
        order=tuple(ix.op_ids[v] for v in seq),
        timeline=tuple(timeline),
        live_sets=_live_sets(ix, spans, ix.n_ops),
        default_peak_bytes=max(default_timeline, default=0),
        default_timeline=tuple(default_timeline),
        default_live_sets=_live_sets(ix, default_spans, ix.n_ops),
        method=method,
    )


def brute_force_peak(graph: OpGraph) -> int:
    """Return the min peak over all topological orders by depth-first enumeration (small graphs only).

    Independent of the solvers: it tracks how many readers each tensor still waits
    for.  Branches whose running peak already reaches the best complete order are cut
    and cheaper steps are tried first; neither changes the minimum.
    """
    ix = _index(graph)
    n = ix.n_ops
    waiting = [r.bit_count() for r in ix.readers]
    # network inputs are held from the start; a tensor nobody reads is held to the end
    held = sum(nbytes for t, nbytes in enumerate(ix.size) if ix.producer[t] < 0)
    best = _INF if n else 0

    def visit(done: int, held: int, running: int) -> None:
        nonlocal best
        if done.bit_count() == n:
            best = min(best, running)
            return
        ready = [v for v in range(n) if not (done >> v) & 1 and not ix.preds[v] & ~done]
        for v in sorted(ready, key=lambda u: ix.out_bytes[u]):
            peak = max(running, held + ix.out_bytes[v])
            if peak >= best:
                continue
            released = 0
            for t in ix.inputs[v]:
                waiting[t] -= 1
                released += ix.size[t] if waiting[t] == 0 else 0
            visit(done | (1 << v), held + ix.out_bytes[v] - released, peak)
            for t in ix.inputs[v]:
                waiting[t] += 1

    visit(0, held, 0)
    return best
