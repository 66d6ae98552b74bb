"""The op graph as bitmasks, shared by the peak-SRAM solvers: op indices, readers, live bytes.

An op set is an int whose bit ``i`` is op ``i`` of the graph's topological order; a *downset*
(the ops already run) determines exactly which tensors are resident.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from searches.engine.resources.opgraph import OpGraph

# Bigger than any live total a real graph can reach, small enough that adding a
# few byte counts to it cannot overflow int64.
INF = 1 << 60
# The same for the int32 lattice DP, used when every cost of a block stays below it.
INF32 = 1 << 30

# --------------------------------------------------------------------------- indexing


@dataclass(frozen=True)
class Index:
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


def build_index(graph: OpGraph) -> Index:
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
    preds = tuple(op_mask(producer[t] for t in ins if producer[t] >= 0) for ins in inputs)
    return Index(
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


def op_mask(ops: Iterable[int]) -> int:
    m = 0
    for v in ops:
        m |= 1 << v
    return m


def resident_bytes(ix: Index, done: int) -> int:
    """Bytes held after the ops in ``done`` ran: written (or inputs) and still awaited (or outputs)."""
    total = 0
    for t, nbytes in enumerate(ix.size):
        p = ix.producer[t]
        written = p < 0 or (done >> p) & 1
        awaited = ix.readers[t] == 0 or ix.readers[t] & ~done
        if written and awaited:
            total += nbytes
    return total


def freed_bytes(ix: Index, done: int, v: int) -> int:
    """Bytes released by running ``v`` after ``done``: inputs whose readers are then all done."""
    after = done | (1 << v)
    return sum(ix.size[t] for t in ix.inputs[v] if ix.readers[t] & ~after == 0)


def bits(mask: int) -> Iterable[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low
