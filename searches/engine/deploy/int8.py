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

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ADD_LEFT_SHIFT = 20  # TFLite's headroom for int8 Add
REFERENCE_BATCH = 16
WEIGHTED = ("conv2d", "conv1x1", "dwconv2d", "dense")
FORMAT = "nasweb.int8"
# v2: scales are float32 values (as TFLite stores them), weights carry their per-channel
# scales, multipliers come from the float32 scales and dense layers round once.  Older files
# are re-quantised on demand by the web layer.
VERSION = 2

IntArray = npt.NDArray[np.int64]


class QuantizationError(ValueError):
    """A model that cannot be quantised faithfully (names the layer and why)."""


def float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (TFLite stores every scale as float32)."""
    return float(np.float32(value))


@dataclass(frozen=True)
class QParams:
    """real = scale · (q - zero_point); ``scale`` is a float32 value, as in a .tflite file."""

    scale: float
    zero_point: int


@dataclass
class WeightedOp:
    """The int8 constants of a conv or dense op, in the C layout.

    conv/1x1: OHWI ``(Co, k, k, Ci)``; depthwise: ``(k, k, C)``; dense: ``(out, in)``.
    ``bias`` holds the input zero-point term folded in (``b - zp_in·Σw``); ``weight_scale`` is
    the float32 scale of each output channel, from which the multipliers were derived.
    """

    weights: npt.NDArray[np.int8]
    bias: npt.NDArray[np.int32]
    multiplier: npt.NDArray[np.int32]
    shift: npt.NDArray[np.int8]
    act_min: int
    act_max: int
    weight_scale: npt.NDArray[np.float32]

    def plain_bias(self, input_zero_point: int) -> npt.NDArray[np.int32]:
        """The bias without the folded zero-point term (what TFLite stores): ``b`` itself."""
        w = self.weights.astype(np.int64)
        sums = w.sum(axis=(0, 1)) if w.ndim == 3 else w.reshape(len(w), -1).sum(axis=1)
        return (self.bias.astype(np.int64) + input_zero_point * sums).astype(np.int32)


@dataclass(frozen=True)
class AddParams:
    """Rescaling of an n-input Add (TFLite int8 scheme)."""

    multipliers: tuple[int, ...]
    shifts: tuple[int, ...]
    out_multiplier: int
    out_shift: int


@dataclass
class QuantModel:
    """A fully quantised candidate: op graph, per-tensor qparams and per-op integer constants."""

    arch: Architecture
    qparams: dict[str, QParams]
    weighted: dict[str, WeightedOp]
    adds: dict[str, AddParams] = field(default_factory=dict)

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
        """Float NHWC images → int8 model input, as TFLite's QUANTIZE op computes it.

        float32 division ``x / scale`` (both float32), rounded half away from zero, plus the
        zero point, clamped to int8; the header's ``<name>_quantize_input`` does the same.
        """
        x32 = np.asarray(x, dtype=np.float32)
        if not np.all(np.isfinite(x32)):
            raise ValueError("quantize_input takes finite values (found NaN or infinity)")
        # Clipped first so every value below is exact in float64; beyond ±512 it saturates anyway.
        r = np.clip(x32 / np.float32(self.input_scale), -512, 512).astype(np.float64)
        q = np.sign(r) * np.floor(np.abs(r) + 0.5) + self.input_zero_point
        return np.clip(q, -128, 127).astype(np.int8)

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
                op: [list(a.multipliers), list(a.shifts), a.out_multiplier, a.out_shift]
                for op, a in self.adds.items()
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
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError(f"not a nasweb int8 model v{VERSION}")
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
            op: AddParams(tuple(m), tuple(s), int(om), int(os_))
            for op, (m, s, om, os_) in meta["adds"].items()
        }
        qparams = {t: QParams(float(s), int(z)) for t, (s, z) in meta["qparams"].items()}
        return cls(from_json(meta["arch"]), qparams, weighted, adds)
