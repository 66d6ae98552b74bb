"""Quantisation-aware training whose forward pass computes the deployed int8 model exactly.

:class:`QATModel` wraps a trained :class:`ArchNet` and runs the candidate's op graph twice
per batch:

* an **integer path**, the exported int8 scheme itself: batchnorm folded, per-output-channel
  symmetric weights in [-127, 127], per-tensor asymmetric activations, folded int32 bias,
  requantisation rounded as LiteRT does (dense once, through its own switch), ReLU as the clamp, pooling and
  Add as the C kernels do them.  Its kernels are :mod:`.int8_scheme`'s, the very functions the
  integer reference runs, so its predictions are the reference's (a test checks it);
* a **float path** with fake-quantised weights (straight-through rounding) whose values are
  replaced by the integer path's dequantised values (``y + (deq - y).detach()``), so the loss
  sees the int8 network's logits while gradients flow through the float one.

Activation ranges start from calibration (as post-training quantisation does) and follow a
moving min/max (always containing 0) while training; batchnorm statistics are frozen (folding
uses the running ones).  :meth:`QATModel.ranges` are what the exporter's ``quantize`` takes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from searches.engine.resources.graph import build_graph
from searches.engine.resources.opgraph import Op
from searches.engine.space.arch import Architecture
from searches.engine.training.int8_scheme import (
    CONV_KINDS,
    IntArray,
    QParams,
    activation_qparams,
    add_chain,
    add_chain_int,
    add_chain_params,
    conv_int,
    dense_int,
    float_forward,
    float_params,
    op_pads,
    pool_int,
    pool_window,
    quantize_input,
    quantize_weighted,
)
from searches.engine.training.model import ArchNet, ConvUnit

RANGE_MOMENTUM = 0.9
CALIBRATION_BATCH = 256

Ranges = dict[str, tuple[float, float]]


class QATModel(nn.Module):
    """An :class:`ArchNet` trained through the int8 model it deploys as (NCHW in, logits out)."""

    def __init__(self, arch: Architecture, net: ArchNet, ranges: Ranges | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.net = net
        self.graph = build_graph(arch)[0]
        self._ranges: Ranges = dict(ranges or {})
        if ranges is not None:
            missing = [t for op in self.graph.ops for t in _quantised_outputs(op) if t not in ranges]
            if missing:
                raise ValueError(f"no activation range for {', '.join(missing)} (given {len(ranges)} ranges)")
        self._modules_by_op: dict[str, nn.Module] = {}
        for b, block in enumerate(arch.conv_blocks):
            for i, layer in enumerate(block.layers):
                self._modules_by_op[f"b{b}l{i}_{layer.op}"] = net.blocks[b][i]  # type: ignore[index]
        for i, dense in enumerate(net.dense):
            self._modules_by_op[f"dense{i}"] = dense
        self._modules_by_op["logits"] = net.logits

    # ---- ranges and quantisation parameters --------------------------------------------

    def ranges(self) -> Ranges:
        """The activation range of every tensor (pooled tensors keep their input's)."""
        return dict(self._ranges)

    def qparams(self) -> dict[str, QParams]:
        """Per-tensor int8 parameters, as the exporter derives them from :meth:`ranges`."""
        qp = {"input": activation_qparams(*self._ranges["input"])}
        for op in self.graph.ops:
            for out in _quantised_outputs(op):
                qp[out] = activation_qparams(*self._ranges[out])
            if op.kind in ("maxpool", "avgpool"):
                qp[op.outputs[0]] = qp[op.inputs[0]]
        return qp

    @torch.no_grad()
    def calibrate(self, x: npt.NDArray[Any]) -> None:
        """Set every range to min/max of the float network on NHWC images ``x`` (post-training style)."""
        lo: dict[str, float] = {}
        hi: dict[str, float] = {}
        params = float_params(self.arch, self.net)
        for start in range(0, len(x), CALIBRATION_BATCH):
            batch = torch.from_numpy(np.asarray(x[start : start + CALIBRATION_BATCH], dtype=np.float64))
            for t, v in float_forward(self.graph, params, batch.permute(0, 3, 1, 2)).items():
                lo[t] = min(lo.get(t, 0.0), float(v.min()))
                hi[t] = max(hi.get(t, 0.0), float(v.max()))
        self._ranges = {t: (lo[t], hi[t]) for t in lo}

    def _track(self, tensor: str, y: torch.Tensor) -> None:
        if not self.training:
            return
        lo, hi = min(float(y.min()), 0.0), max(float(y.max()), 0.0)
        old_lo, old_hi = self._ranges[tensor]
        m = RANGE_MOMENTUM
        self._ranges[tensor] = (m * old_lo + (1 - m) * lo, m * old_hi + (1 - m) * hi)

    # ---- forward -----------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the int8 model (dequantised) for an NCHW batch, differentiable by STE."""
        return self._run(x)[0]

    @torch.no_grad()
    def int8_logits(self, x: npt.NDArray[Any]) -> npt.NDArray[np.int8]:
        """The int8 logits ``(N, classes)`` for float NHWC images, as the C code computes them."""
        was = self.training
        self.eval()
        try:
            qp = self.qparams()
            exact = float_params(self.arch, self.net)
            image_codes = quantize_input(np.asarray(x), qp["input"]).astype(np.int64)
            codes: dict[str, IntArray] = {"input": image_codes}
            for op in self.graph.ops:  # the integer path alone: no float values to track or pass on
                codes[op.outputs[0]] = self._integer(op, codes, qp, exact)
            return codes["logits"].astype(np.int8)
        finally:
            self.train(was)

    def train(self, mode: bool = True) -> QATModel:
        """Training mode moves the ranges; batchnorm stays frozen either way (it is folded)."""
        super().train(mode)
        self.net.eval()
        return self

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, IntArray]:
        self._track("input", x.detach())
        qp = self.qparams()
        images = x.detach().permute(0, 2, 3, 1).numpy()
        codes: dict[str, IntArray] = {"input": quantize_input(images, qp["input"]).astype(np.int64)}
        values = {"input": _dequantize(codes["input"], qp["input"])}
        exact = float_params(self.arch, self.net)
        for op in self.graph.ops:
            out = op.outputs[0]
            y = self._float(op, values)
            if op.kind == "add":  # the partial sums of its chain are activations too
                for a, b, link_out in add_chain(op)[:-1]:
                    values[link_out] = values[a] + values[b]
                    self._track(link_out, values[link_out].detach())
            for tensor in _quantised_outputs(op):
                if tensor == out:
                    self._track(out, y.detach())
                qp[tensor] = activation_qparams(*self._ranges[tensor])
            codes[out] = self._integer(op, codes, qp, exact)
            values[out] = _straight_through(y, codes[out], qp[out], bool(op.attrs.get("relu")))
        return values["logits"], codes["logits"]

    def _float(self, op: Op, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The op on float values with fake-quantised, batchnorm-folded weights."""
        src = values[op.inputs[0]]
        if op.kind in CONV_KINDS:
            unit = self._modules_by_op[op.id]
            assert isinstance(unit, ConvUnit)
            w, b = _fold(unit)
            top, bottom, left, right = op_pads(op, src.shape[2], src.shape[3])
            groups = src.shape[1] if op.kind == "dwconv2d" else 1
            stride = int(op.attrs["stride"])  # type: ignore[call-overload]
            y = F.conv2d(F.pad(src, (left, right, top, bottom)), _fake_weight(w), b, stride, groups=groups)
            return F.relu(y) if op.attrs["relu"] else y
        if op.kind == "dense":
            layer = self._modules_by_op[op.id]
            assert isinstance(layer, nn.Linear)
            flat = src.permute(0, 2, 3, 1).flatten(1) if src.dim() == 4 else src
            y = F.linear(flat, _fake_weight(layer.weight), layer.bias)
            return F.relu(y) if op.attrs["relu"] else y
        if op.kind in ("maxpool", "avgpool"):
            kh, kw = pool_window(op, src.shape[2], src.shape[3])
            pool = F.max_pool2d if op.kind == "maxpool" else F.avg_pool2d
            return pool(src, (kh, kw), (kh, kw))
        if op.kind == "add":
            return sum((values[t] for t in op.inputs[1:]), values[op.inputs[0]])
        raise ValueError(f"{op.id}: unsupported op kind {op.kind!r}")  # pragma: no cover

    def _integer(
        self,
        op: Op,
        codes: dict[str, IntArray],
        qp: dict[str, QParams],
        params: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> IntArray:
        """The op on int8 codes, with the constants the exporter would emit right now."""
        src, out = op.inputs[0], op.outputs[0]
        if op.kind in CONV_KINDS or op.kind == "dense":
            w, b = params[op.id]
            constants = quantize_weighted(op, w, b, qp[src], qp[out])
            if op.kind == "dense":
                return dense_int(constants, codes[src], qp[out].zero_point)
            return conv_int(op, constants, codes[src], qp[src].zero_point, qp[out].zero_point)
        if op.kind in ("maxpool", "avgpool"):
            return pool_int(op, codes[src])
        if op.kind == "add":
            zero_points = {t: q.zero_point for t, q in qp.items()}
            return add_chain_int(op, add_chain_params(op, qp), codes, zero_points)
        raise ValueError(f"{op.id}: unsupported op kind {op.kind!r}")  # pragma: no cover


# ---- helpers ------------------------------------------------------------------------------


def _quantised_outputs(op: Op) -> list[str]:
    """The tensors ``op`` gives qparams of their own: pooling none, an Add its partial sums too."""
    if op.kind in ("maxpool", "avgpool"):
        return []
    if op.kind == "add":
        return [out for _, _, out in add_chain(op)]
    return [op.outputs[0]]


def _fold(unit: ConvUnit) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable batchnorm folding with the frozen running statistics."""
    w = unit.conv.weight
    b = unit.conv.bias if unit.conv.bias is not None else torch.zeros(w.shape[0])
    bn = unit.bn
    if bn is None:
        return w, b
    assert bn.running_mean is not None and bn.running_var is not None
    gamma = bn.weight if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(b)
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)
    return w * factor.view(-1, 1, 1, 1), (b - bn.running_mean) * factor + beta


def _fake_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric fake quantisation to [-127, 127], straight-through."""
    per_channel = w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)
    scale = torch.where(per_channel > 0, per_channel / 127.0, torch.ones_like(per_channel))
    return w + (torch.clamp(torch.round(w.detach() / scale), -127, 127) * scale - w.detach())


def _dequantize(codes: IntArray, qp: QParams) -> torch.Tensor:
    """int8 codes (NHWC or N x features) as float32 values (NCHW or N x features)."""
    real = torch.from_numpy((qp.scale * (codes - qp.zero_point)).astype(np.float32))
    return real.permute(0, 3, 1, 2) if real.dim() == 4 else real


def _straight_through(y: torch.Tensor, codes: IntArray, qp: QParams, relu: bool) -> torch.Tensor:
    """The integer path's values with the float path's gradient (zero where int8 saturates)."""
    low = qp.scale * ((max(-128, qp.zero_point) if relu else -128) - qp.zero_point)
    high = qp.scale * (127 - qp.zero_point)
    clamped = torch.clamp(y, low, high)
    return clamped + (_dequantize(codes, qp) - clamped).detach()
