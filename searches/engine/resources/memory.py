"""Exact peak-SRAM planning for an :class:`~searches.engine.resources.opgraph.OpGraph`.

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
from collections.abc import Sequence
from dataclasses import dataclass

from searches.engine.resources.chains import as_chain_block, solve_chains
from searches.engine.resources.dag import INF, Index, bits, build_index, freed_bytes, op_mask, resident_bytes
from searches.engine.resources.opgraph import OpGraph

METHOD_SERIES_PARALLEL = "series-parallel"
METHOD_DOWNSET_DP = "downset-dp"


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


# --------------------------------------------------------------------------- timelines


def _positions(ix: Index, order: Sequence[str]) -> list[int]:
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


def _lifetimes(ix: Index, seq: Sequence[int]) -> list[tuple[int, int]]:
    """Return the inclusive (first, last) live step of every tensor under the op sequence ``seq``."""
    step_of = [0] * ix.n_ops
    for k, v in enumerate(seq):
        step_of[v] = k
    last_step = len(seq) - 1
    spans = []
    for t, p in enumerate(ix.producer):
        first = step_of[p] if p >= 0 else 0
        last = max((step_of[v] for v in bits(ix.readers[t])), default=last_step)
        spans.append((first, last))
    return spans


def _timeline(ix: Index, spans: Sequence[tuple[int, int]], steps: int) -> list[int]:
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


def _live_sets(ix: Index, spans: Sequence[tuple[int, int]], steps: int) -> tuple[tuple[str, ...], ...]:
    live: list[list[str]] = [[] for _ in range(steps)]
    for t, (first, last) in enumerate(spans):
        for k in range(first, last + 1):
            live[k].append(ix.tensor_ids[t])
    return tuple(tuple(ids) for ids in live)


def step_timeline(graph: OpGraph, order: Sequence[str]) -> list[int]:
    """Return the live bytes at each step of ``order``; ValueError unless it is a topological permutation."""
    ix = build_index(graph)
    seq = _positions(ix, order)
    return _timeline(ix, _lifetimes(ix, seq), len(seq))


# --------------------------------------------------------------------------- blocks


def _cut_flags(ix: Index) -> list[bool]:
    """Flag the ops comparable with every other op (every order runs the same ops before them)."""
    n = ix.n_ops
    anc = [0] * n
    for v in range(n):
        for p in bits(ix.preds[v]):
            anc[v] |= anc[p] | (1 << p)
    desc = [0] * n
    for v in reversed(range(n)):
        for p in bits(ix.preds[v]):
            desc[p] |= desc[v] | (1 << v)
    return [(anc[v] | desc[v]).bit_count() == n - 1 for v in range(n)]


def _segments(ix: Index) -> list[list[int]]:
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


# --------------------------------------------------------------------------- general DAGs


def _solve_downsets(ix: Index, block: Sequence[int], before: int, held: int) -> tuple[int, list[int]]:
    """Return the exact best peak of a block and an order, by best-first search over downsets.

    States are sets of executed ops (bitmasks); the cost of a path is its largest step,
    so states pop in order of that bottleneck (Dijkstra).  One safe pruning: if an
    available op fits under the bottleneck so far and frees at least what it writes,
    running it next is never worse (any completion can move it to the front without
    raising a later step), so it becomes the only successor.  Exponential in the width
    of the block (the number of downsets), fine for small or narrow blocks.
    """
    goal = before | op_mask(block)
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
            if reach < best.get(nxt, INF):
                best[nxt] = reach
                parent[nxt] = (done, v)
                heapq.heappush(heap, (reach, neg_depth - 1, nxt, new_mem))
    raise AssertionError("goal unreachable")  # pragma: no cover - validate() rules this out


def _moves(
    ix: Index, block: Sequence[int], done: int, mem: int, bottleneck: int
) -> list[tuple[int, int, int]]:
    """Return (op, step bytes, bytes held after) for the ops worth trying next from ``done``."""
    moves = []
    for v in block:
        if (done >> v) & 1 or ix.preds[v] & ~done:
            continue
        step = mem + ix.out_bytes[v]
        after = step - freed_bytes(ix, done, v)
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
    ix = build_index(graph)
    seq: list[int] = []
    peak, done, held = 0, 0, resident_bytes(ix, 0)
    method = METHOD_SERIES_PARALLEL
    for segment in _segments(ix):
        if len(segment) == 1:
            seg_peak, order = held + ix.out_bytes[segment[0]], segment
        elif not force_general and (chains := as_chain_block(ix, segment)) is not None:
            above, order = solve_chains(chains)
            seg_peak = held - chains.shared_bytes + above
        else:
            method = METHOD_DOWNSET_DP
            seg_peak, order = _solve_downsets(ix, segment, done, held)
        peak = max(peak, seg_peak)
        for v in order:
            held += ix.out_bytes[v] - freed_bytes(ix, done, v)
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
    ix = build_index(graph)
    n = ix.n_ops
    waiting = [r.bit_count() for r in ix.readers]
    # network inputs are held from the start; a tensor nobody reads is held to the end
    held = sum(nbytes for t, nbytes in enumerate(ix.size) if ix.producer[t] < 0)
    best = INF if n else 0

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
