"""The resource report of a candidate: exact peak SRAM (the arena), flash, MACs, layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from searches.engine.resources.arena import ArenaPlan, plan_arena
from searches.engine.resources.graph import LayerInfo, build_graph
from searches.engine.resources.memory import MemoryPlan, plan_memory
from searches.engine.resources.opgraph import OpGraph
from searches.engine.space.arch import Architecture


@dataclass(frozen=True)
class ResourceReport:
    graph: OpGraph
    layers: list[LayerInfo]
    memory: MemoryPlan
    arena: ArenaPlan

    @property
    def peak_sram_bytes(self) -> int:
        """The exported arena's size: the live-tensor peak unless fixed offsets fragment."""
        return self.arena.size

    @property
    def flash_bytes(self) -> int:
        return sum(layer.flash_bytes for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report printed by ``manage.py analyze --json``."""
        return {
            "peak_sram_bytes": self.peak_sram_bytes,
            "live_peak_bytes": self.memory.peak_bytes,
            "default_order_peak_sram_bytes": self.memory.default_peak_bytes,
            "flash_bytes": self.flash_bytes,
            "macs": self.macs,
            "params": self.params,
            "order": list(self.memory.order),
            "timeline": list(self.memory.timeline),
            "default_order": [op.id for op in self.graph.ops],
            "default_timeline": list(self.memory.default_timeline),
            "solver": self.memory.method,
            "layers": [
                {
                    "name": layer.name,
                    "op": layer.kind,
                    "output_shape": list(layer.output_shape),
                    "params": layer.params,
                    "flash_bytes": layer.flash_bytes,
                    "macs": layer.macs,
                }
                for layer in self.layers
            ],
            "graph": {
                "tensors": [{"id": t.id, "bytes": t.bytes} for t in self.graph.tensors],
                "ops": [
                    {"id": o.id, "inputs": list(o.inputs), "outputs": list(o.outputs)} for o in self.graph.ops
                ],
            },
        }


def analyze(arch: Architecture) -> ResourceReport:
    """Exact resource report of the int8 deployment of ``arch`` (peak SRAM is the arena size)."""
    graph, layers = build_graph(arch)
    memory = plan_memory(graph)
    return ResourceReport(graph, layers, memory, plan_arena(graph, memory))
