"""The operator graph that every resource number is computed on.

An :class:`OpGraph` is a DAG of operators and the activation tensors they read and
write.  Tensors carry their size in bytes (int8: one byte per element, batch 1).
A tensor with no producer is a network input; one with no consumer is a network
output.  The order of ``ops`` is the *default* execution order (the order the
architecture lists its layers in) and must be topological.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Tensor:
    id: str
    bytes: int
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class Op:
    id: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, object] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class OpGraph:
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]

    def tensor_bytes(self) -> dict[str, int]:
        return {t.id: t.bytes for t in self.tensors}

    def producers(self) -> dict[str, str]:
        """Map tensor id -> id of the op that writes it (inputs are absent)."""
        return {t: op.id for op in self.ops for t in op.outputs}

    def consumers(self) -> dict[str, list[str]]:
        """Map tensor id -> ids of the ops that read it, in default order."""
        users: dict[str, list[str]] = {t.id: [] for t in self.tensors}
        for op in self.ops:
            for t in op.inputs:
                users[t].append(op.id)
        return users

    def validate(self) -> None:
        """Raise ValueError unless ids are unique, references resolve and ``ops`` is topological."""
        tensor_ids = [t.id for t in self.tensors]
        if len(set(tensor_ids)) != len(tensor_ids):
            raise ValueError("duplicate tensor id")
        op_ids = [op.id for op in self.ops]
        if len(set(op_ids)) != len(op_ids):
            raise ValueError("duplicate op id")
        known = set(tensor_ids)
        written: set[str] = set()
        for op in self.ops:
            for t in (*op.inputs, *op.outputs):
                if t not in known:
                    raise ValueError(f"op {op.id!r} refers to unknown tensor {t!r}")
            for t in op.outputs:
                if t in written:
                    raise ValueError(f"tensor {t!r} has two producers")
                written.add(t)
        available = {t for t in known if t not in written}
        for op in self.ops:
            missing = [t for t in op.inputs if t not in available]
            if missing:
                raise ValueError(f"op {op.id!r} reads {missing[0]!r} before it is written")
            available.update(op.outputs)

    def to_json(self) -> dict[str, object]:
        return {
            "tensors": [{"id": t.id, "bytes": t.bytes, "shape": list(t.shape)} for t in self.tensors],
            "ops": [
                {"id": op.id, "kind": op.kind, "inputs": list(op.inputs), "outputs": list(op.outputs)}
                for op in self.ops
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OpGraph:
        tensors = tuple(
            Tensor(str(t["id"]), int(t["bytes"]), tuple(t.get("shape", ()))) for t in data["tensors"]
        )
        ops = tuple(
            Op(str(o["id"]), str(o.get("kind", "op")), tuple(o["inputs"]), tuple(o["outputs"]))
            for o in data["ops"]
        )
        return cls(tensors, ops)
