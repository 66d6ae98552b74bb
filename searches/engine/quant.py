"""Post-training int8 quantisation (TFLite int8 spec) and the integer reference that runs it.

The quantised model is the deployed model: the C exporter prints exactly these arrays and
scalars, and :func:`run_int8` computes, with integers only, the bytes the C code must output.

* weights: symmetric int8 in [-127, 127], one scale per output channel (depthwise: per
  channel), batchnorm folded in first;
* activations: asymmetric int8 per tensor, ranges from min/max on calibration samples
  (always including 0, so that zero padding is exact);
* bias: int32 at scale ``s_in·s_w[c]``, stored with the input zero-point term folded in
  (``b - zp_in·Σw``), so a kernel adds ``Σ w·q`` over valid taps and ``zp_in·Σ w`` over padded
  taps — exactly ``b + Σ w·(q - zp_in)``;
* requantisation: ``M = s_in·s_w/s_out = M0·2^(shift-31)``, TFLite's default double rounding;
  ReLU is the clamp ``[max(-128, zp_out), 127]``;
* max/avg pooling keep their input's scale and zero point; Add rescales its inputs to a
  common scale with a 2^20 headroom shift, as TFLite's int8 Add does.

Integer sums are exact in float64 (every partial sum stays far below 2^53), so the
reference runs its dot products through BLAS and does all rounding in int64.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from searches.engine.arch import Architecture, from_json, same_padding
from searches.engine.graph import build_graph
from searches.engine.opgraph import Op, OpGraph
from searches.engine.training import ArchNet, ConvUnit

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ADD_LEFT_SHIFT = 20  # TFLite's headroom for int8 Add
REFERENCE_BATCH = 16
WEIGHTED = ("conv2d", "conv1x1", "dwconv2d", "dense")
FORMAT = "nasweb.int8"
VERSION = 1

IntArray = npt.NDArray[np.int64]


class QuantizationError(ValueError):
    """A model that cannot be quantised faithfully (names the layer and why)."""


@dataclass(frozen=True)
class QParams:
    """real = scale · (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass
class WeightedOp:
    """The int8 constants of a conv or dense op, in the C layout.

    conv/1x1: OHWI ``(Co, k, k, Ci)``; depthwise: ``(k, k, C)``; dense: ``(out, in)``.
    """

    weights: npt.NDArray[np.int8]
    bias: npt.NDArray[np.int32]
    multiplier: npt.NDArray[np.int32]
    shift: npt.NDArray[np.int8]
    act_min: int
    act_max: int


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
        """Float NHWC images → int8 model input (round half to even, then clamp)."""
        q = np.round(np.asarray(x, dtype=np.float64) / self.input_scale) + self.input_zero_point
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
                )
                for op, (lo, hi) in meta["weighted"].items()
            }
        adds = {
            op: AddParams(tuple(m), tuple(s), int(om), int(os_))
            for op, (m, s, om, os_) in meta["adds"].items()
        }
        qparams = {t: QParams(float(s), int(z)) for t, (s, z) in meta["qparams"].items()}
        return cls(from_json(meta["arch"]), qparams, weighted, adds)


# ---- fixed-point arithmetic (vectorised, int64) --------------------------------------


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``m`` as (M0, shift) with m = M0·2^(shift-31), M0 ∈ [2^30, 2^31); tiny m → (0, 0)."""
    if m < 0 or not math.isfinite(m):
        raise QuantizationError(f"multiplier {m!r} is not a finite non-negative number")
    if m == 0:
        return 0, 0
    f, e = math.frexp(m)
    m0 = round(f * (1 << 31))
    if m0 == 1 << 31:
        m0 //= 2
        e += 1
    if e < -31:
        return 0, 0
    if e > 30:
        raise QuantizationError(f"multiplier {m:.3g} is too large for a 31-bit left shift")
    return m0, e


def requantize(acc: IntArray, multiplier: Any, shift: Any) -> IntArray:
    """TFLite's MultiplyByQuantizedMultiplier (double rounding), element-wise, in int64.

    A positive shift first multiplies by 2^shift with int32 saturation (well defined, and
    the C kernel does the same).  The rounding high multiply
    trunc((ab + (ab >= 0 ? 2^30 : 1 - 2^30)) / 2^31) equals floor((ab + 2^30) / 2^31) for
    every integer ab, which is an add and an arithmetic shift.
    """
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if np.any(s > 0):
        acc = np.clip(acc << np.maximum(s, 0), INT32_MIN, INT32_MAX)
    right = np.maximum(-s, 0)
    # M0 < 2^31, so the INT32_MIN·INT32_MIN saturation case cannot occur.
    high = acc * m
    high += 1 << 30
    high >>= 31
    # Rounding right shift, half away from zero: floor((high + 2^(r-1) - [high < 0]) / 2^r)
    # for r > 0; the same as gemmlowp's remainder/threshold form, in fewer passes.
    negative = (high < 0) & (right > 0)
    high += (np.int64(1) << right) >> 1
    high -= negative
    high >>= right
    return high


def _rounded_average(total: IntArray, count: int) -> IntArray:
    """TFLite's integer average: (sum ± count/2) / count, truncating."""
    half = count // 2
    return np.where(total > 0, (total + half) // count, -((-total + half) // count))


# ---- calibration -----------------------------------------------------------------------


def _folded(unit: ConvUnit) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight (OIHW) and bias with the batchnorm folded in (eval statistics)."""
    w = unit.conv.weight.detach().double()
    b = unit.conv.bias.detach().double() if unit.conv.bias is not None else torch.zeros(w.shape[0])
    if unit.bn is None:
        return w, b
    bn = unit.bn
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    assert bn.running_mean is not None and bn.running_var is not None
    mean, var = bn.running_mean.double(), bn.running_var.double()
    factor = gamma / torch.sqrt(var + bn.eps)
    return w * factor.view(-1, 1, 1, 1), (b - mean) * factor + beta


def float_params(arch: Architecture, model: ArchNet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Float (weight, bias) per weighted op id, batchnorm folded; conv weights OIHW."""
    params: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for b, block in enumerate(arch.conv_blocks):
        for i, layer in enumerate(block.layers):
            unit = model.blocks[b][i]  # type: ignore[index]
            assert isinstance(unit, ConvUnit)
            params[f"b{b}l{i}_{layer.op}"] = _folded(unit)
    for i, dense in enumerate(model.dense):
        assert isinstance(dense, torch.nn.Linear)
        params[f"dense{i}"] = (dense.weight.detach().double(), dense.bias.detach().double())
    params["logits"] = (model.logits.weight.detach().double(), model.logits.bias.detach().double())
    return params


def _pads(op: Op, h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of a conv op on an hxw input."""
    if op.attrs["padding"] != "same":
        return 0, 0, 0, 0
    k, s = int(op.attrs["kernel"]), int(op.attrs["stride"])  # type: ignore[call-overload]
    return (*same_padding(h, k, s), *same_padding(w, k, s))


def _pool_window(op: Op, h: int, w: int) -> tuple[int, int]:
    size = op.attrs["size"]
    return (h, w) if size == "global" else (int(size), int(size))  # type: ignore[call-overload]


def float_forward(
    graph: OpGraph, params: dict[str, tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Every tensor of the graph (NCHW float64) for an NCHW batch, following the graph's ops."""
    values = {"input": x}
    for op in graph.ops:
        src = values[op.inputs[0]]
        if op.kind in ("conv2d", "conv1x1", "dwconv2d"):
            w, b = params[op.id]
            top, bottom, left, right = _pads(op, src.shape[2], src.shape[3])
            groups = src.shape[1] if op.kind == "dwconv2d" else 1
            y = F.conv2d(F.pad(src, (left, right, top, bottom)), w, b, int(op.attrs["stride"]), groups=groups)  # type: ignore[call-overload]
            out = F.relu(y) if op.attrs["relu"] else y
        elif op.kind in ("maxpool", "avgpool"):
            kh, kw = _pool_window(op, src.shape[2], src.shape[3])
            pool = F.max_pool2d if op.kind == "maxpool" else F.avg_pool2d
            out = pool(src, (kh, kw), (kh, kw))
        elif op.kind == "add":
            out = sum((values[t] for t in op.inputs[1:]), values[op.inputs[0]])
        elif op.kind == "dense":
            w, b = params[op.id]
            y = F.linear(src.permute(0, 2, 3, 1).flatten(1) if src.dim() == 4 else src, w, b)
            out = F.relu(y) if op.attrs["relu"] else y
        else:  # pragma: no cover - build_graph emits only the kinds above
            raise QuantizationError(f"{op.id}: unsupported op kind {op.kind!r}")
        values[op.outputs[0]] = out
    return values


def _ranges(
    graph: OpGraph, params: dict[str, tuple[torch.Tensor, torch.Tensor]], x: npt.NDArray[Any]
) -> dict[str, tuple[float, float]]:
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for start in range(0, len(x), 256):
        batch = torch.from_numpy(np.asarray(x[start : start + 256], dtype=np.float64)).permute(0, 3, 1, 2)
        for t, v in float_forward(graph, params, batch).items():
            lo[t] = min(lo.get(t, 0.0), float(v.min()))
            hi[t] = max(hi.get(t, 0.0), float(v.max()))
    return {t: (lo[t], hi[t]) for t in lo}


def activation_qparams(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0 or not math.isfinite(hi - lo):
        return QParams(1.0, -128 if lo == 0 else 0)
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    return QParams(scale, zero_point)


# ---- quantisation ------------------------------------------------------------------------


def _quantize_weighted(op: Op, w: torch.Tensor, b: torch.Tensor, s_in: QParams, s_out: QParams) -> WeightedOp:
    w_np = w.numpy()
    if op.kind == "dwconv2d":
        w_np = w_np[:, 0].transpose(1, 2, 0)  # (C, 1, k, k) → (k, k, C)
        per_channel = np.abs(w_np).max(axis=(0, 1))
    elif op.kind == "dense":
        per_channel = np.abs(w_np).max(axis=1)
    else:
        w_np = w_np.transpose(0, 2, 3, 1)  # OIHW → OHWI
        per_channel = np.abs(w_np).reshape(w_np.shape[0], -1).max(axis=1)
    w_scale = np.where(per_channel > 0, per_channel / 127.0, 1.0)
    channel_axis = -1 if op.kind == "dwconv2d" else 0
    shape = [1] * w_np.ndim
    shape[channel_axis] = -1
    q_w = np.clip(np.round(w_np / w_scale.reshape(shape)), -127, 127).astype(np.int64)
    bias_scale = s_in.scale * w_scale
    q_b = np.clip(np.round(b.numpy() / bias_scale), -(2**30), 2**30).astype(np.int64)
    w_sum = q_w.sum(axis=(0, 1)) if op.kind == "dwconv2d" else q_w.reshape(q_w.shape[0], -1).sum(axis=1)
    folded = q_b - s_in.zero_point * w_sum
    magnitude = np.abs(q_w)
    if op.kind == "dwconv2d":
        abs_sum = magnitude.sum(axis=(0, 1))
    else:
        abs_sum = magnitude.reshape(len(magnitude), -1).sum(axis=1)
    # Every tap adds w·q (valid) or w·zp (padded), each at most 128·|w|.
    if np.any(np.abs(folded) + 128 * abs_sum >= 2**31):
        raise QuantizationError(f"{op.id}: the int32 accumulator could overflow")
    pairs = [quantize_multiplier(float(s)) for s in bias_scale / s_out.scale]
    relu = bool(op.attrs.get("relu"))
    return WeightedOp(
        weights=q_w.astype(np.int8),
        bias=folded.astype(np.int32),
        multiplier=np.array([m for m, _ in pairs], dtype=np.int32),
        shift=np.array([s for _, s in pairs], dtype=np.int8),
        act_min=max(-128, s_out.zero_point) if relu else -128,
        act_max=127,
    )


def _add_params(inputs: list[QParams], out: QParams) -> AddParams:
    twice_max = 2 * max(q.scale for q in inputs)
    pairs = [quantize_multiplier(q.scale / twice_max) for q in inputs]
    out_m, out_s = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * out.scale))
    return AddParams(tuple(m for m, _ in pairs), tuple(s for _, s in pairs), out_m, out_s)


def quantize(arch: Architecture, model: ArchNet, calibration_x: npt.NDArray[Any]) -> QuantModel:
    """Quantise a trained float model with activation ranges from ``calibration_x`` (NHWC floats)."""
    if len(calibration_x) == 0:
        raise QuantizationError("calibration needs at least one sample")
    graph = build_graph(arch)[0]
    model = model.eval()
    with torch.no_grad():
        params = float_params(arch, model)
        ranges = _ranges(graph, params, calibration_x)
    qparams: dict[str, QParams] = {"input": activation_qparams(*ranges["input"])}
    for op in graph.ops:
        out = op.outputs[0]
        if op.kind in ("maxpool", "avgpool"):
            qparams[out] = qparams[op.inputs[0]]  # pooling keeps its input's quantisation
        else:
            qparams[out] = activation_qparams(*ranges[out])
    weighted: dict[str, WeightedOp] = {}
    adds: dict[str, AddParams] = {}
    for op in graph.ops:
        if op.kind in WEIGHTED:
            w, b = params[op.id]
            weighted[op.id] = _quantize_weighted(op, w, b, qparams[op.inputs[0]], qparams[op.outputs[0]])
        elif op.kind == "add":
            adds[op.id] = _add_params([qparams[t] for t in op.inputs], qparams[op.outputs[0]])
    return QuantModel(arch, qparams, weighted, adds)


# ---- integer reference -----------------------------------------------------------------


def _conv(op: Op, p: WeightedOp, x: IntArray, zp_in: int, zp_out: int) -> IntArray:
    k, stride = int(op.attrs["kernel"]), int(op.attrs["stride"])  # type: ignore[call-overload]
    n, h, w, _ = x.shape
    top, bottom, left, right = _pads(op, h, w)
    # Padded taps hold the input zero point (real 0); with the folded bias this equals
    # b + Σ w·(q - zp) over the valid taps only.
    padded = np.pad(
        x.astype(np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=zp_in
    )
    oh = (h + top + bottom - k) // stride + 1
    ow = (w + left + right - k) // stride + 1
    weights = p.weights.astype(np.float64)
    channels = weights.shape[-1] if op.kind == "dwconv2d" else weights.shape[0]
    acc = np.zeros((n, oh, ow, channels), dtype=np.float64)
    for ky in range(k):
        for kx in range(k):
            rows = slice(ky, ky + stride * (oh - 1) + 1, stride)
            cols = slice(kx, kx + stride * (ow - 1) + 1, stride)
            tap = padded[:, rows, cols, :]
            if op.kind == "dwconv2d":
                acc += tap * weights[ky, kx]
            else:
                acc += tap @ weights[:, ky, kx, :].T
    return _finish(acc, p, zp_out)


def _finish(acc_f64: npt.NDArray[np.float64], p: WeightedOp, zp_out: int) -> IntArray:
    acc = acc_f64.astype(np.int64) + p.bias.astype(np.int64)
    out = requantize(acc, p.multiplier, p.shift) + zp_out
    return np.clip(out, p.act_min, p.act_max)


def _pool(op: Op, x: IntArray) -> IntArray:
    n, h, w, c = x.shape
    kh, kw = _pool_window(op, h, w)
    oh, ow = h // kh, w // kw
    windows = x[:, : oh * kh, : ow * kw, :].reshape(n, oh, kh, ow, kw, c)
    if op.kind == "maxpool":
        return windows.max(axis=(2, 4))
    return np.clip(_rounded_average(windows.sum(axis=(2, 4)), kh * kw), -128, 127)


def _add(params: AddParams, xs: list[IntArray], zps: list[int], zp_out: int) -> IntArray:
    total = np.zeros_like(xs[0])
    for x, zp, m, s in zip(xs, zps, params.multipliers, params.shifts, strict=True):
        total = total + requantize((x - zp) * (1 << ADD_LEFT_SHIFT), m, s)
    return np.clip(requantize(total, params.out_multiplier, params.out_shift) + zp_out, -128, 127)


def _run_batch(qm: QuantModel, x: IntArray) -> IntArray:
    values = {"input": x}
    zp = {t: q.zero_point for t, q in qm.qparams.items()}
    for op in qm.graph.ops:
        src, out = values[op.inputs[0]], op.outputs[0]
        if op.kind in ("conv2d", "conv1x1", "dwconv2d"):
            values[out] = _conv(op, qm.weighted[op.id], src, zp[op.inputs[0]], zp[out])
        elif op.kind == "dense":
            p = qm.weighted[op.id]
            flat = src.reshape(len(src), -1).astype(np.float64)
            values[out] = _finish(flat @ p.weights.astype(np.float64).T, p, zp[out])
        elif op.kind in ("maxpool", "avgpool"):
            values[out] = _pool(op, src)
        elif op.kind == "add":
            xs = [values[t] for t in op.inputs]
            values[out] = _add(qm.adds[op.id], xs, [zp[t] for t in op.inputs], zp[out])
        else:  # pragma: no cover
            raise QuantizationError(f"{op.id}: unsupported op kind {op.kind!r}")
    return values["logits"]


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def run_int8(qm: QuantModel, xq: npt.NDArray[Any], batch_size: int = REFERENCE_BATCH) -> npt.NDArray[np.int8]:
    """The int8 logits ``(N, classes)`` for int8 NHWC inputs, computed as the C code does."""
    xq = np.asarray(xq)
    if xq.dtype != np.int8:
        raise ValueError(f"run_int8 takes int8 inputs, got {xq.dtype}")
    if xq.shape[1:] != qm.input_shape:
        raise ValueError(f"inputs have shape {xq.shape[1:]}, the model takes {qm.input_shape}")
    out = np.empty((len(xq), qm.classes), dtype=np.int8)
    for s in _batches(len(xq), batch_size):
        out[s] = _run_batch(qm, xq[s].astype(np.int64))
    return out


def predict(qm: QuantModel, x: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Predicted classes (first maximal int8 logit, as the C example picks) for float images."""
    return run_int8(qm, qm.quantize_input(x)).argmax(axis=1)


def int8_accuracy(qm: QuantModel, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> float:
    """Accuracy of the int8 model on float NHWC images ``x`` with labels ``y``."""
    if len(x) == 0:
        raise ValueError("int8_accuracy needs at least one sample")
    return float((predict(qm, x) == np.asarray(y)).mean())
