"""Post-training int8 quantisation (TFLite int8 spec): calibration ranges, then the int8 model.

The quantised model is the deployed model: the C exporter prints exactly these arrays and
scalars, and :func:`searches.engine.deploy.reference.run_int8` computes, with integers only,
the bytes the C code must output.  The scheme's rules (per-channel symmetric weights, per
tensor asymmetric activations, folded batchnorm and bias, float32 scales, requantisation
rounded as LiteRT does: twice for convolutions, once for dense layers; ReLU as the clamp) are
in :mod:`searches.engine.training.int8_scheme`, shared with quantisation-aware training;
activation ranges here are min/max on calibration samples unless a QAT model's learnt ranges
are given.  An Add of n > 2 inputs is a chain of binary Adds whose partial sums are
activations like any other: calibrated, with their own scale and zero point.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from searches.engine.deploy.int8 import QuantModel
from searches.engine.resources.graph import build_graph
from searches.engine.resources.opgraph import OpGraph
from searches.engine.space.arch import Architecture
from searches.engine.training.int8_scheme import (
    WEIGHTED,
    AddParams,
    QParams,
    QuantizationError,
    WeightedOp,
    activation_qparams,
    add_chain,
    add_chain_params,
    float_forward,
    float_params,
    quantize_weighted,
)
from searches.engine.training.model import ArchNet

# ---- calibration -----------------------------------------------------------------------


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


def quantize(
    arch: Architecture,
    model: ArchNet,
    calibration_x: npt.NDArray[Any],
    ranges: dict[str, tuple[float, float]] | None = None,
) -> QuantModel:
    """Quantise a trained float model with activation ranges from ``calibration_x`` (NHWC floats).

    ``ranges`` (per tensor id, e.g. those a quantisation-aware training learnt) replace the
    calibration ranges where given.
    """
    if len(calibration_x) == 0:
        raise QuantizationError("calibration needs at least one sample")
    graph = build_graph(arch)[0]
    model = model.eval()
    with torch.no_grad():
        params = float_params(arch, model)
        ranges = {**_ranges(graph, params, calibration_x), **(ranges or {})}
    qparams: dict[str, QParams] = {"input": activation_qparams(*ranges["input"])}
    for op in graph.ops:
        out = op.outputs[0]
        if op.kind in ("maxpool", "avgpool"):
            qparams[out] = qparams[op.inputs[0]]  # pooling keeps its input's quantisation
        elif op.kind == "add":  # the output and every partial sum of the chain
            for _, _, link_out in add_chain(op):
                qparams[link_out] = activation_qparams(*ranges[link_out])
        else:
            qparams[out] = activation_qparams(*ranges[out])
    weighted: dict[str, WeightedOp] = {}
    adds: dict[str, tuple[AddParams, ...]] = {}
    for op in graph.ops:
        if op.kind in WEIGHTED:
            w, b = params[op.id]
            weighted[op.id] = quantize_weighted(op, w, b, qparams[op.inputs[0]], qparams[op.outputs[0]])
        elif op.kind == "add":
            adds[op.id] = add_chain_params(op, qparams)
    return QuantModel(arch, qparams, weighted, adds)
