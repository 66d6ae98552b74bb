"""The int8 model: per-tensor quantisation parameters and per-op integer constants, saved as .npz."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from searches.engine.resources.graph import build_graph
from searches.engine.resources.opgraph import OpGraph
from searches.engine.space.arch import Architecture, from_json

# The scheme's values and rules live where quantisation-aware training can share them.
from searches.engine.training.int8_scheme import ADD_LEFT_SHIFT as ADD_LEFT_SHIFT
from searches.engine.training.int8_scheme import WEIGHTED as WEIGHTED
from searches.engine.training.int8_scheme import AddParams as AddParams
from searches.engine.training.int8_scheme import IntArray as IntArray
from searches.engine.training.int8_scheme import QParams as QParams
from searches.engine.training.int8_scheme import QuantizationError as QuantizationError
from searches.engine.training.int8_scheme import WeightedOp as WeightedOp
from searches.engine.training.int8_scheme import float32 as float32
from searches.engine.training.int8_scheme import quantize_input

REFERENCE_BATCH = 16
FORMAT = "nasweb.int8"
# v2: scales are float32 values (as TFLite stores them), weights carry their per-channel
# scales, multipliers come from the float32 scales and dense layers round once.  Older files
# are re-quantised on demand by the web layer.
# v3: an Add of n > 2 inputs is a chain of binary Adds (one AddParams per link, partial sums
# with their own qparams).  v2 files whose Adds all have two inputs mean the same and load.
VERSION = 3


@dataclass
class QuantModel:
    """A fully quantised candidate: op graph, per-tensor qparams and per-op integer constants."""

    arch: Architecture
    qparams: dict[str, QParams]
    weighted: dict[str, WeightedOp]
    # Per Add op, the constants of each binary link of its chain (int8_scheme.add_chain).
    adds: dict[str, tuple[AddParams, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.graph: OpGraph = build_graph(self.arch)[0]

    # ---- facts the exporter and the web layer need ------------------------------------

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = self.arch.input_shape
        return (h, w, c)

    @property
    def classes(self) -> int:
        return self.arch.classes

    @property
    def input_scale(self) -> float:
        return self.qparams["input"].scale

    @property
    def input_zero_point(self) -> int:
        return self.qparams["input"].zero_point

    @property
    def output_scale(self) -> float:
        return self.qparams["logits"].scale

    @property
    def output_zero_point(self) -> int:
        return self.qparams["logits"].zero_point

    def quantize_input(self, x: npt.NDArray[Any]) -> npt.NDArray[np.int8]:
        """Float NHWC images → int8 model input, as TFLite's QUANTIZE op computes it."""
        return quantize_input(x, self.qparams["input"])

    def dequantize_output(self, q: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """int8 logits → float logits."""
        return self.output_scale * (np.asarray(q, dtype=np.float64) - self.output_zero_point)

    # ---- storage ---------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str] | io.BytesIO) -> None:
        """Write the model as an .npz (no pickle): arrays per op plus a JSON ``meta`` entry."""
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "arch": self.arch.to_json(),
            "qparams": {t: [q.scale, q.zero_point] for t, q in self.qparams.items()},
            "weighted": {op: [w.act_min, w.act_max] for op, w in self.weighted.items()},
            "adds": {
                op: [[list(a.multipliers), list(a.shifts), a.out_multiplier, a.out_shift] for a in links]
                for op, links in self.adds.items()
            },
        }
        arrays: dict[str, Any] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        for op, w in self.weighted.items():
            arrays[f"{op}.weights"] = w.weights
            arrays[f"{op}.bias"] = w.bias
            arrays[f"{op}.multiplier"] = w.multiplier
            arrays[f"{op}.shift"] = w.shift
            arrays[f"{op}.weight_scale"] = w.weight_scale
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | io.BytesIO) -> QuantModel:
        """Read a model written by :meth:`save`; ValueError on anything else."""
        with np.load(path, allow_pickle=False) as data:
            try:
                meta = json.loads(bytes(data["meta"]).decode())
            except (KeyError, ValueError) as exc:
                raise ValueError("not a nasweb int8 model: missing or unreadable meta") from exc
            if meta.get("format") != FORMAT or meta.get("version") not in (2, VERSION):
                raise ValueError(f"not a nasweb int8 model v{VERSION}")
            if meta["version"] == 2:
                meta["adds"] = _adds_from_v2(meta["adds"])
            weighted = {
                op: WeightedOp(
                    weights=data[f"{op}.weights"].astype(np.int8),
                    bias=data[f"{op}.bias"].astype(np.int32),
                    multiplier=data[f"{op}.multiplier"].astype(np.int32),
                    shift=data[f"{op}.shift"].astype(np.int8),
                    act_min=int(lo),
                    act_max=int(hi),
                    weight_scale=data[f"{op}.weight_scale"].astype(np.float32),
                )
                for op, (lo, hi) in meta["weighted"].items()
            }
        adds = {
            op: tuple(AddParams(tuple(m), tuple(s), int(om), int(os_)) for m, s, om, os_ in links)
            for op, links in meta["adds"].items()
        }
        qparams = {t: QParams(float(s), int(z)) for t, (s, z) in meta["qparams"].items()}
        return cls(from_json(meta["arch"]), qparams, weighted, adds)


def _adds_from_v2(adds: dict[str, Any]) -> dict[str, Any]:
    """v2's one-rounding n-input Adds as v3 chains: the same for two inputs, else refused."""
    for op, (multipliers, *_) in adds.items():
        if len(multipliers) != 2:
            raise ValueError(
                f"v2 int8 model: {op} adds {len(multipliers)} inputs in one rounding (v3 chains them)"
            )
    return {op: [entry] for op, entry in adds.items()}
