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
* requantisation: ``M = s_in·s_w/s_out = M0·2^(shift-31)``, rounded as LiteRT 2.3.0 does:
  twice (double rounding) for convolutions, once for dense layers;
  ReLU is the clamp ``[max(-128, zp_out), 127]``;
* max/avg pooling keep their input's scale and zero point; Add rescales its inputs to a
  common scale with a 2^20 headroom shift, as TFLite's int8 Add does.

Integer sums are exact in float64 (every partial sum stays far below 2^53), so the
reference runs its dot products through BLAS and does all rounding in int64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from searches.engine.deploy.fixedpoint import quantize_multiplier
from searches.engine.deploy.int8 import (
    ADD_LEFT_SHIFT,
    WEIGHTED,
    AddParams,
    QParams,
    QuantizationError,
    QuantModel,
    WeightedOp,
    float32,
)
from searches.engine.resources.graph import build_graph
from searches.engine.resources.opgraph import Op, OpGraph
from searches.engine.space.arch import Architecture, same_padding
from searches.engine.training.model import ArchNet, ConvUnit

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


def op_pads(op: Op, h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of a conv op on an hxw input."""
    if op.attrs["padding"] != "same":
        return 0, 0, 0, 0
    k, s = int(op.attrs["kernel"]), int(op.attrs["stride"])  # type: ignore[call-overload]
    return (*same_padding(h, k, s), *same_padding(w, k, s))


def pool_window(op: Op, h: int, w: int) -> tuple[int, int]:
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
            top, bottom, left, right = op_pads(op, src.shape[2], src.shape[3])
            groups = src.shape[1] if op.kind == "dwconv2d" else 1
            y = F.conv2d(F.pad(src, (left, right, top, bottom)), w, b, int(op.attrs["stride"]), groups=groups)  # type: ignore[call-overload]
            out = F.relu(y) if op.attrs["relu"] else y
        elif op.kind in ("maxpool", "avgpool"):
            kh, kw = pool_window(op, src.shape[2], src.shape[3])
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
    # The zero point comes from the exact range, the scale is kept as float32 (as TFLite does).
    return QParams(float32(scale), zero_point)


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
    # float32 scales, as a .tflite file stores them; everything below derives from those.
    w_scale = np.where(per_channel > 0, per_channel / 127.0, 1.0).astype(np.float32).astype(np.float64)
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
    # LiteRT's kernels: (double)s_in · (double)s_w / (double)s_out, from the float32 scales.
    pairs = [quantize_multiplier(float(s)) for s in bias_scale / s_out.scale]
    relu = bool(op.attrs.get("relu"))
    return WeightedOp(
        weights=q_w.astype(np.int8),
        bias=folded.astype(np.int32),
        multiplier=np.array([m for m, _ in pairs], dtype=np.int32),
        shift=np.array([s for _, s in pairs], dtype=np.int8),
        act_min=max(-128, s_out.zero_point) if relu else -128,
        act_max=127,
        weight_scale=w_scale.astype(np.float32),
    )


def _add_params(inputs: list[QParams], out: QParams) -> AddParams:
    # LiteRT's int8 ADD, in double from the float32 scales (nasweb's n-input form generalises it).
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
