"""The integer reference: runs an int8 model with integers only, byte for byte what the C must output.

Integer sums are exact in float64 (every partial sum stays far below 2^53), so the
reference runs its dot products through BLAS and does all rounding in int64.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from searches.engine.deploy.fixedpoint import requantize, requantize_single, rounded_average
from searches.engine.deploy.int8 import (
    ADD_LEFT_SHIFT,
    REFERENCE_BATCH,
    AddParams,
    IntArray,
    QuantizationError,
    QuantModel,
    WeightedOp,
)
from searches.engine.deploy.quantize import op_pads, pool_window
from searches.engine.resources.opgraph import Op

# ---- integer reference -----------------------------------------------------------------


def _conv(op: Op, p: WeightedOp, x: IntArray, zp_in: int, zp_out: int) -> IntArray:
    k, stride = int(op.attrs["kernel"]), int(op.attrs["stride"])  # type: ignore[call-overload]
    n, h, w, _ = x.shape
    top, bottom, left, right = op_pads(op, h, w)
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


def _finish(
    acc_f64: npt.NDArray[np.float64], p: WeightedOp, zp_out: int, *, single: bool = False
) -> IntArray:
    acc = acc_f64.astype(np.int64) + p.bias.astype(np.int64)
    # LiteRT rounds FULLY_CONNECTED once, convolutions twice.
    out = (requantize_single if single else requantize)(acc, p.multiplier, p.shift) + zp_out
    return np.clip(out, p.act_min, p.act_max)


def _pool(op: Op, x: IntArray) -> IntArray:
    n, h, w, c = x.shape
    kh, kw = pool_window(op, h, w)
    oh, ow = h // kh, w // kw
    windows = x[:, : oh * kh, : ow * kw, :].reshape(n, oh, kh, ow, kw, c)
    if op.kind == "maxpool":
        return windows.max(axis=(2, 4))
    return np.clip(rounded_average(windows.sum(axis=(2, 4)), kh * kw), -128, 127)


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
            values[out] = _finish(flat @ p.weights.astype(np.float64).T, p, zp[out], single=True)
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
