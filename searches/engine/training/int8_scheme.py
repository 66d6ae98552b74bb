"""The int8 scheme's arithmetic, shared by the exporter and quantisation-aware training.

One definition of every rule the deployed int8 model follows (TFLite int8 spec), so that
the integer reference (:mod:`searches.engine.deploy.reference`, which equals the C) and the
QAT model (:mod:`searches.engine.training.qat`) cannot drift apart:

* weights: symmetric int8 in [-127, 127], one scale per output channel (depthwise: per
  channel), batchnorm folded in first;
* activations: asymmetric int8 per tensor (ranges always include 0, so zero padding is exact);
* bias: int32 at scale ``s_in·s_w[c]``, stored with the input zero-point term folded in
  (``b - zp_in·Σw``), so a kernel adds ``Σ w·q`` over valid taps and ``zp_in·Σ w`` over padded
  taps, exactly ``b + Σ w·(q - zp_in)``;
* scales are float32 values, as a .tflite file stores them, and everything derives from those;
* requantisation: ``M = s_in·s_w/s_out = M0·2^(shift-31)``, rounded as LiteRT 2.3.0 does:
  twice (double rounding) for convolutions and Add, once for dense layers
  (:func:`requantize_dense`, the one place that says which);
  ReLU is the clamp ``[max(-128, zp_out), 127]``;
* max/avg pooling keep their input's scale and zero point; Add rescales its inputs to a
  common scale with a 2^20 headroom shift, as TFLite's int8 Add does;
* an Add of n > 2 inputs is a chain of n - 1 such binary Adds (:func:`add_chain`):
  ``x0 + x1``, then ``+ x2``, ... each link rounded to int8 at the calibrated scale and zero
  point of its own partial sum (:func:`partial_sum_id`), as n - 1 TFLite ADD ops compute it.

The integer kernels take NHWC int64 arrays.  Integer sums are exact in float64 (every partial
sum stays far below 2^53), and in float32 where a layer's weights bound them below 2^24, so dot
products run through BLAS and all rounding is in int64.
It lives in ``training`` because training may not import ``deploy``; ``deploy`` imports it.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from searches.engine.resources.opgraph import Op, OpGraph
from searches.engine.space.arch import Architecture, same_padding
from searches.engine.training.model import ArchNet, ConvUnit

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ADD_LEFT_SHIFT = 20  # TFLite's headroom for int8 Add
WEIGHTED = ("conv2d", "conv1x1", "dwconv2d", "dense")
CONV_KINDS = ("conv2d", "conv1x1", "dwconv2d")

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
    """Rescaling of one binary int8 Add, TFLite's ADD (a link of an Add's chain)."""

    multipliers: tuple[int, ...]
    shifts: tuple[int, ...]
    out_multiplier: int
    out_shift: int


# ---- fixed-point arithmetic (vectorised, int64) --------------------------------------


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``m`` as (M0, shift) with m = M0·2^(shift-31), M0 ∈ [2^30, 2^31); tiny m → (0, 0)."""
    if m < 0 or not math.isfinite(m):
        raise QuantizationError(f"multiplier {m!r} is not a finite non-negative number")
    if m == 0:
        return 0, 0
    f, e = math.frexp(m)
    # std::round (half away from zero), as TFLite's QuantizeMultiplier; f·2^31 + 0.5 is exact.
    m0 = math.floor(f * (1 << 31) + 0.5)
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


def requantize_single(acc: IntArray, multiplier: Any, shift: Any) -> IntArray:
    """TFLite's single-rounding MultiplyByQuantizedMultiplier (its FULLY_CONNECTED), in int64.

    One rounding: (acc·M0 + 2^(30-shift)) >> (31-shift), half rounded up; |acc·M0| < 2^62,
    so nothing overflows int64.  The result saturates to int32 (LiteRT only asserts it fits).
    """
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(multiplier, dtype=np.int64)
    total = 31 - np.asarray(shift, dtype=np.int64)
    out = (acc * m + (np.int64(1) << (total - 1))) >> total
    return np.clip(out, INT32_MIN, INT32_MAX)


def requantize_dense(acc: IntArray, multiplier: Any, shift: Any) -> IntArray:
    """Requantisation of a dense (fully connected) layer: the one switch for its rounding rule.

    LiteRT 2.3.0 rounds FULLY_CONNECTED once (convolutions and Add twice).
    """
    return requantize_single(acc, multiplier, shift)


def rounded_average(total: IntArray, count: int) -> IntArray:
    """TFLite's integer average: (sum ± count/2) / count, truncating."""
    half = count // 2
    return np.where(total > 0, (total + half) // count, -((-total + half) // count))


# ---- quantisation parameters ---------------------------------------------------------


def activation_qparams(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0 or not math.isfinite(hi - lo):
        return QParams(1.0, -128 if lo == 0 else 0)
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    # The zero point comes from the exact range, the scale is kept as float32 (as TFLite does).
    return QParams(float32(scale), zero_point)


def quantize_input(x: npt.NDArray[Any], qp: QParams) -> npt.NDArray[np.int8]:
    """Float NHWC images → int8 model input, as TFLite's QUANTIZE op computes it.

    float32 division ``x / scale`` (both float32), rounded half away from zero, plus the
    zero point, clamped to int8; the header's ``<name>_quantize_input`` does the same.
    """
    x32 = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x32)):
        raise ValueError("quantize_input takes finite values (found NaN or infinity)")
    # Clipped first so every value below is exact in float64; beyond ±512 it saturates anyway.
    r = np.clip(x32 / np.float32(qp.scale), -512, 512).astype(np.float64)
    q = np.sign(r) * np.floor(np.abs(r) + 0.5) + qp.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def folded(unit: ConvUnit) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight (OIHW) and bias with the batchnorm folded in (eval statistics), float64."""
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
            params[f"b{b}l{i}_{layer.op}"] = folded(unit)
    for i, dense in enumerate(model.dense):
        assert isinstance(dense, torch.nn.Linear)
        params[f"dense{i}"] = (dense.weight.detach().double(), dense.bias.detach().double())
    params["logits"] = (model.logits.weight.detach().double(), model.logits.bias.detach().double())
    return params


def weight_scales(op: Op, w: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Per-output-channel symmetric scales of a float weight in torch layout (OIHW or out x in)."""
    axes = tuple(range(1, w.ndim))
    per_channel = np.abs(w).max(axis=axes)
    return np.where(per_channel > 0, per_channel / 127.0, 1.0)


def quantize_weighted(op: Op, w: torch.Tensor, b: torch.Tensor, s_in: QParams, s_out: QParams) -> WeightedOp:
    """The int8 constants of a conv or dense op from its folded float weight and bias."""
    w_np = w.numpy()
    # float32 scales, as a .tflite file stores them; everything below derives from those.
    w_scale = weight_scales(op, w_np).astype(np.float32).astype(np.float64)
    q = np.clip(np.round(w_np / w_scale.reshape([-1] + [1] * (w_np.ndim - 1))), -127, 127).astype(np.int64)
    if op.kind == "dwconv2d":
        q_w = q[:, 0].transpose(1, 2, 0)  # (C, 1, k, k) → (k, k, C)
    elif op.kind == "dense":
        q_w = q
    else:
        q_w = q.transpose(0, 2, 3, 1)  # OIHW → OHWI
    bias_scale = s_in.scale * w_scale
    q_b = np.clip(np.round(b.numpy() / bias_scale), -(2**30), 2**30).astype(np.int64)
    w_sum = q.reshape(q.shape[0], -1).sum(axis=1)
    folded_bias = q_b - s_in.zero_point * w_sum
    abs_sum = np.abs(q).reshape(q.shape[0], -1).sum(axis=1)
    # Every tap adds w·q (valid) or w·zp (padded), each at most 128·|w|.
    if np.any(np.abs(folded_bias) + 128 * abs_sum >= 2**31):
        raise QuantizationError(f"{op.id}: the int32 accumulator could overflow")
    # LiteRT's kernels: (double)s_in · (double)s_w / (double)s_out, from the float32 scales.
    pairs = [quantize_multiplier(float(s)) for s in bias_scale / s_out.scale]
    relu = bool(op.attrs.get("relu"))
    return WeightedOp(
        weights=q_w.astype(np.int8),
        bias=folded_bias.astype(np.int32),
        multiplier=np.array([m for m, _ in pairs], dtype=np.int32),
        shift=np.array([s for _, s in pairs], dtype=np.int8),
        act_min=max(-128, s_out.zero_point) if relu else -128,
        act_max=127,
        weight_scale=w_scale.astype(np.float32),
    )


def add_params(inputs: list[QParams], out: QParams) -> AddParams:
    """The rescaling constants of a binary int8 Add of ``inputs`` into ``out``."""
    if len(inputs) != 2:
        raise QuantizationError(f"an int8 Add link takes two inputs, got {len(inputs)}")
    # LiteRT's int8 ADD, in double from the float32 scales.
    twice_max = 2 * max(q.scale for q in inputs)
    pairs = [quantize_multiplier(q.scale / twice_max) for q in inputs]
    out_m, out_s = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * out.scale))
    return AddParams(tuple(m for m, _ in pairs), tuple(s for _, s in pairs), out_m, out_s)


def partial_sum_id(op: Op, k: int) -> str:
    """The tensor id of an Add's k-th partial sum ``x0 + ... + xk`` (1 <= k <= n - 2)."""
    if not 1 <= k <= len(op.inputs) - 2:
        raise ValueError(f"{op.id} has no partial sum {k} ({len(op.inputs)} inputs)")
    return f"{op.outputs[0]}/sum{k}"


def add_chain(op: Op) -> list[tuple[str, str, str]]:
    """The binary Adds an n-input Add runs, in order: ``(left, right, out)`` tensor ids.

    Link k adds input k + 1 to the partial sum of inputs 0..k; the last link writes the
    Add's output.  A two-input Add is one link.
    """
    if op.kind != "add" or len(op.inputs) < 2:
        raise ValueError(f"{op.id} is not an Add of two or more inputs")
    n = len(op.inputs)
    sums = [op.inputs[0], *(partial_sum_id(op, k) for k in range(1, n - 1)), op.outputs[0]]
    return [(sums[k], op.inputs[k + 1], sums[k + 1]) for k in range(n - 1)]


def add_chain_params(op: Op, qparams: dict[str, QParams]) -> tuple[AddParams, ...]:
    """The constants of every link of ``op``'s chain, from the qparams of its tensors."""
    return tuple(add_params([qparams[a], qparams[b]], qparams[out]) for a, b, out in add_chain(op))


def float_forward(
    graph: OpGraph, params: dict[str, tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Every tensor of the graph (NCHW float64) for an NCHW batch, following the graph's ops."""
    values = {"input": x}
    for op in graph.ops:
        src = values[op.inputs[0]]
        if op.kind in CONV_KINDS:
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
            # Every partial sum is a tensor of its own: calibration gives it a range.
            for left_id, right_id, link_out in add_chain(op):
                values[link_out] = values[left_id] + values[right_id]
            continue
        elif op.kind == "dense":
            w, b = params[op.id]
            y = F.linear(src.permute(0, 2, 3, 1).flatten(1) if src.dim() == 4 else src, w, b)
            out = F.relu(y) if op.attrs["relu"] else y
        else:  # pragma: no cover - build_graph emits only the kinds above
            raise QuantizationError(f"{op.id}: unsupported op kind {op.kind!r}")
        values[op.outputs[0]] = out
    return values


# ---- integer kernels (NHWC int64) -----------------------------------------------------


def op_pads(op: Op, h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of a conv op on an hxw input."""
    if op.attrs["padding"] != "same":
        return 0, 0, 0, 0
    k, s = int(op.attrs["kernel"]), int(op.attrs["stride"])  # type: ignore[call-overload]
    return (*same_padding(h, k, s), *same_padding(w, k, s))


def pool_window(op: Op, h: int, w: int) -> tuple[int, int]:
    size = op.attrs["size"]
    return (h, w) if size == "global" else (int(size), int(size))  # type: ignore[call-overload]


def _exact_float(weights: npt.NDArray[np.int8], channel_axis: int) -> type[np.floating[Any]]:
    """float32 when every partial sum of int8 x int8 products stays below 2^24 (exact), else float64.

    A partial sum is at most 128·Σ|w| of its output channel; float64 is exact far beyond int32.
    """
    magnitude = np.abs(np.moveaxis(weights.astype(np.int64), channel_axis, 0)).reshape(
        weights.shape[channel_axis], -1
    )
    return np.float32 if 128 * int(magnitude.sum(axis=1).max(initial=0)) < 2**24 else np.float64


def conv_int(op: Op, p: WeightedOp, x: IntArray, zp_in: int, zp_out: int) -> IntArray:
    """A conv, 1x1 or depthwise op on int8 codes, as the C kernel computes it."""
    k, stride = int(op.attrs["kernel"]), int(op.attrs["stride"])  # type: ignore[call-overload]
    _, h, w, _ = x.shape
    top, bottom, left, right = op_pads(op, h, w)
    # Padded taps hold the input zero point (real 0); with the folded bias this equals
    # b + Σ w·(q - zp) over the valid taps only.
    depthwise = op.kind == "dwconv2d"
    dtype = _exact_float(p.weights, channel_axis=-1 if depthwise else 0)
    pads = (top, bottom, left, right)
    if dtype is np.float32 and direct_conv_is_exact():
        acc = _onednn_sums(x, pads, zp_in, p.weights, stride, depthwise)
    else:
        spatial = ((0, 0), (top, bottom), (left, right), (0, 0))
        padded = np.pad(x.astype(dtype), spatial, constant_values=zp_in)
        acc = _tap_sums(padded, p.weights.astype(dtype), k, stride, depthwise).astype(np.int64)
    acc += p.bias.astype(np.int64)
    out = requantize(acc, p.multiplier, p.shift)
    out += zp_out
    return np.clip(out, p.act_min, p.act_max, out=out)


def _tap_sums(
    padded: npt.NDArray[Any], weights: npt.NDArray[Any], k: int, stride: int, depthwise: bool
) -> npt.NDArray[Any]:
    """Σ w·q per output (NHWC), one pass per kernel tap (exact in ``padded``'s dtype)."""
    n, hp, wp, _ = padded.shape
    oh, ow = (hp - k) // stride + 1, (wp - k) // stride + 1
    channels = weights.shape[-1] if depthwise else weights.shape[0]
    acc = np.zeros((n, oh, ow, channels), dtype=padded.dtype)
    for ky in range(k):
        for kx in range(k):
            rows = slice(ky, ky + stride * (oh - 1) + 1, stride)
            cols = slice(kx, kx + stride * (ow - 1) + 1, stride)
            tap = padded[:, rows, cols, :]
            if depthwise:
                acc += tap * weights[ky, kx]
            else:
                acc += tap @ weights[:, ky, kx, :].T
    return acc


def _onednn_sums(
    x: IntArray,
    pads: tuple[int, int, int, int],
    zp_in: int,
    weights: npt.NDArray[np.int8],
    stride: int,
    depthwise: bool,
) -> IntArray:
    """Σ w·q per output (NHWC, int64) by oneDNN's direct float32 convolution.

    ``x``: NHWC codes; ``pads`` (top, bottom, left, right) hold ``zp_in``.  Exact for the same
    reason the float32 tap loop is (every partial sum, in any order, is an integer below 2^24,
    and FMA of exact integers is exact); called explicitly, so no backend with transform-domain
    arithmetic (Winograd, FFT) is ever chosen for it.
    """
    top, bottom, left, right = pads
    nchw = torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float32)
    src = F.pad(nchw, (left, right, top, bottom), value=float(zp_in)).contiguous()
    if depthwise:  # (k, k, C) -> (C, 1, k, k)
        kernel = torch.from_numpy(weights.astype(np.float32)).permute(2, 0, 1).unsqueeze(1)
        groups = kernel.shape[0]
    else:  # OHWI -> OIHW
        kernel = torch.from_numpy(weights.astype(np.float32)).permute(0, 3, 1, 2)
        groups = 1
    with torch.inference_mode():
        y = torch.ops.aten.mkldnn_convolution(
            src, kernel.contiguous(), None, [0, 0], [stride, stride], [1, 1], groups
        )
        return y.permute(0, 2, 3, 1).to(torch.int64).numpy()


def direct_conv_is_exact() -> bool:
    """Whether oneDNN's float32 convolution runs here in plain IEEE float32 (no TF32/bf16 mode).

    Only on x86-64, where PyTorch's oneDNN has no Arm Compute Library backend whose algorithm
    choice this module does not control.
    """
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    modes = (
        getattr(torch.backends.mkldnn, "fp32_precision", "none"),
        getattr(getattr(torch.backends.mkldnn, "conv", None), "fp32_precision", "none"),
    )
    return torch.get_float32_matmul_precision() == "highest" and all(m in ("none", "ieee") for m in modes)


def dense_int(p: WeightedOp, x: IntArray, zp_out: int) -> IntArray:
    """A dense op on int8 codes (any shape per sample, flattened in its stored order)."""
    dtype = _exact_float(p.weights, channel_axis=0)
    acc = x.reshape(len(x), -1).astype(dtype) @ p.weights.astype(dtype).T
    out = requantize_dense(acc.astype(np.int64) + p.bias.astype(np.int64), p.multiplier, p.shift) + zp_out
    return np.clip(out, p.act_min, p.act_max)


def pool_int(op: Op, x: IntArray) -> IntArray:
    """Max or average pooling on int8 codes (the scale and zero point stay the input's)."""
    n, h, w, c = x.shape
    kh, kw = pool_window(op, h, w)
    oh, ow = h // kh, w // kw
    windows = x[:, : oh * kh, : ow * kw, :].reshape(n, oh, kh, ow, kw, c)
    if op.kind == "maxpool":
        return windows.max(axis=(2, 4))
    return np.clip(rounded_average(windows.sum(axis=(2, 4)), kh * kw), -128, 127)


def add_int(params: AddParams, xs: list[IntArray], zps: list[int], zp_out: int) -> IntArray:
    """A binary Add on int8 codes, rescaled as TFLite's int8 ADD."""
    total = np.zeros_like(xs[0])
    for x, zp, m, s in zip(xs, zps, params.multipliers, params.shifts, strict=True):
        total = total + requantize((x - zp) * (1 << ADD_LEFT_SHIFT), m, s)
    return np.clip(requantize(total, params.out_multiplier, params.out_shift) + zp_out, -128, 127)


def add_chain_int(
    op: Op, links: tuple[AddParams, ...], codes: dict[str, IntArray], zero_points: dict[str, int]
) -> IntArray:
    """An n-input Add on int8 codes: its chain of binary Adds, partial sums stored in ``codes``."""
    for (a, b, out), p in zip(add_chain(op), links, strict=True):
        codes[out] = add_int(p, [codes[a], codes[b]], [zero_points[a], zero_points[b]], zero_points[out])
    return codes[op.outputs[0]]
