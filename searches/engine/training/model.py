"""Build the float PyTorch model of a candidate and train it on the CPU, deterministically.

The model mirrors :mod:`searches.engine.resources.graph` layer for layer, so its trained weights map
1:1 onto the deployed int8 graph:

* input is NCHW (``(N, C, H, W)``); the architecture's ``(H, W, C)`` shapes are kept, only
  the memory order differs;
* a conv layer is: optional 2x2/2 max pre-pool, TensorFlow 'same' zero padding (the
  extra row/column goes bottom/right: asymmetric padding is an explicit ``F.pad``, symmetric
  padding is left to the conv, which computes the same numbers faster), a conv with
  ``bias=True`` (the bias is where batchnorm is folded at export), optional BatchNorm2d,
  optional ReLU; ``dwconv2d`` is a grouped conv with ``groups = C``;
* parallel blocks of a group run on the same input and their outputs are summed;
* pooling is avg/max of size ``s`` with stride ``s`` (no padding, floor) or global;
* the feature map is flattened in **H, W, C order** (permuted to NHWC first), which is the
  order the C export flattens in, so dense weights need no reordering;
* hidden dense layers have ReLU and 0.15 dropout before them (training only, as μNAS);
  the classifier outputs logits.

Parameter counts equal ``sum(LayerInfo.params)`` of :func:`graph.build_graph` when no
layer has batchnorm; each batchnorm adds ``2·C`` trainable parameters (gamma, beta; its
running mean/var are buffers), which folding removes again at export.

Module names follow the architecture: ``blocks.{b}.{i}.conv`` is layer ``i`` of block ``b``
(``b{b}l{i}`` in the graph), ``dense.{i}`` the hidden dense layers and ``logits`` the
classifier.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from searches.engine.space.arch import (
    Architecture,
    ConvLayer,
    Shape,
    layer_output_shape,
    same_padding,
    validate,
)

DROPOUT = 0.15


# ---- model -----------------------------------------------------------------------------


class ConvUnit(nn.Module):
    """One conv layer of a block: pre-pool, 'same' pad, conv (+bias), batchnorm, ReLU."""

    def __init__(self, layer: ConvLayer, in_shape: Shape) -> None:
        super().__init__()
        pooled, out = layer_output_shape(layer, in_shape)
        h, w, c = pooled or in_shape
        self.pre_pool = layer.pre_pool
        self.relu = layer.relu
        self.pad: tuple[int, int, int, int] | None = None
        conv_pad = (0, 0)
        if layer.padding == "same":
            top, bottom = same_padding(h, layer.kernel, layer.stride)
            left, right = same_padding(w, layer.kernel, layer.stride)
            if top == bottom and left == right:
                # Symmetric: the conv's own zero padding gives the same numbers without
                # F.pad's copy (measured ~10% faster training, docs/benchmarks.md).
                conv_pad = (top, left)
            else:
                self.pad = (left, right, top, bottom)
        groups = c if layer.op == "dwconv2d" else 1
        self.conv = nn.Conv2d(
            c, out[2], layer.kernel, stride=layer.stride, padding=conv_pad, groups=groups, bias=True
        )
        self.bn = nn.BatchNorm2d(out[2]) if layer.batchnorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to an NCHW batch."""
        if self.pre_pool:
            x = F.max_pool2d(x, 2, 2)
        if self.pad is not None:
            x = F.pad(x, self.pad)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class ArchNet(nn.Module):
    """The float model of an :class:`Architecture`; takes NCHW input, returns logits."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        block_shapes = validate(arch)
        self.arch = arch
        self.groups = arch.groups()
        blocks: list[nn.Sequential] = []
        shape: Shape = tuple(arch.input_shape)  # type: ignore[assignment]
        for group in self.groups:
            for b in group:
                blocks.append(self._block(arch, b, shape))
            shape = block_shapes[group[0]]
        self.blocks = nn.ModuleList(blocks)
        self.pool = arch.pooling
        features = _features(arch, shape)
        dense: list[nn.Linear] = []
        for d in arch.dense:
            dense.append(nn.Linear(features, d.units))
            features = d.units
        self.dense = nn.ModuleList(dense)
        self.dropout = nn.Dropout(DROPOUT)
        self.logits = nn.Linear(features, arch.classes)

    @staticmethod
    def _block(arch: Architecture, b: int, shape: Shape) -> nn.Sequential:
        units = []
        for layer in arch.conv_blocks[b].layers:
            units.append(ConvUnit(layer, shape))
            shape = layer_output_shape(layer, shape)[1]
        return nn.Sequential(*units)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv trunk and pooling: NCHW in, NCHW feature map out."""
        for group in self.groups:
            out = self.blocks[group[0]](x)
            for b in group[1:]:
                out = out + self.blocks[b](x)
            x = out
        if self.pool is None:
            return x
        if self.pool.size == "global":
            return x.mean((2, 3), keepdim=True) if self.pool.type == "avg" else x.amax((2, 3), keepdim=True)
        s = int(self.pool.size)
        return F.avg_pool2d(x, s, s) if self.pool.type == "avg" else F.max_pool2d(x, s, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an NCHW batch."""
        # Flatten in H, W, C order: the order the int8 export lays the feature map out in.
        x = self.features(x).permute(0, 2, 3, 1).flatten(1)
        for layer in self.dense:
            x = F.relu(layer(self.dropout(x)))
        return self.logits(x)


def _features(arch: Architecture, shape: Shape) -> int:
    h, w, c = shape
    if arch.pooling is None:
        return h * w * c
    if arch.pooling.size == "global":
        return c
    s = int(arch.pooling.size)
    return (h // s) * (w // s) * c


def build_model(arch: Architecture) -> ArchNet:
    """The float model of ``arch`` (PyTorch default initialisation; seed torch first)."""
    return ArchNet(arch)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def to_nchw(x: np.ndarray) -> torch.Tensor:
    """A float32 NCHW tensor from NHWC images (a channels-last view when possible, no copy)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(0, 3, 1, 2)
