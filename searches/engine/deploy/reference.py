"""The integer reference: runs an int8 model with integers only, byte for byte what the C must output.

The kernels are :mod:`searches.engine.training.int8_scheme`'s, which quantisation-aware
training runs too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from searches.engine.deploy.int8 import REFERENCE_BATCH, QuantizationError, QuantModel
from searches.engine.training.int8_scheme import IntArray, add_chain_int, conv_int, dense_int, pool_int


def _run_batch(qm: QuantModel, x: IntArray) -> IntArray:
    values = {"input": x}
    zp = {t: q.zero_point for t, q in qm.qparams.items()}  # partial sums of Adds included
    for op in qm.graph.ops:
        src, out = values[op.inputs[0]], op.outputs[0]
        if op.kind in ("conv2d", "conv1x1", "dwconv2d"):
            values[out] = conv_int(op, qm.weighted[op.id], src, zp[op.inputs[0]], zp[out])
        elif op.kind == "dense":
            values[out] = dense_int(qm.weighted[op.id], src, zp[out])
        elif op.kind in ("maxpool", "avgpool"):
            values[out] = pool_int(op, src)
        elif op.kind == "add":
            add_chain_int(op, qm.adds[op.id], values, zp)
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
