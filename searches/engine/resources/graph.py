"""Lower an :class:`Architecture` to the int8 operator graph the exporter will emit.

Every number here describes the deployed int8 model at batch 1: one byte per activation
element, batchnorm folded into the conv, ReLU fused into requantisation, flatten free.

Constant data per conv/dense layer (what goes to flash, in this order):

====================  ======  ==============================================
array                 type    elements
====================  ======  ==============================================
weights               int8    conv: Co·k·k·Ci, 1x1: Co·Ci, dw: C·k·k, dense: out·in
bias                  int32   one per output channel (zero-point term folded in)
multiplier            int32   one per output channel (Q31 requantisation M0)
shift                 int8    one per output channel (requantisation exponent)
====================  ======  ==============================================

Per-tensor scalars (zero points, Add and pooling rescales) are compiled into the code as
immediates; they are not arrays and are not counted as model flash.
"""

from __future__ import annotations

from dataclasses import dataclass

from searches.engine.resources.opgraph import Op, OpGraph, Tensor
from searches.engine.space.arch import (
    Architecture,
    ConvLayer,
    Shape,
    feature_shape,
    layer_output_shape,
    validate,
)

BYTES_PER_CHANNEL = 4 + 4 + 1  # int32 bias + int32 multiplier + int8 shift


@dataclass(frozen=True)
class LayerInfo:
    """One operator of the deployed model, as the memory report lists it."""

    name: str
    kind: str
    input_shapes: tuple[Shape, ...]
    output_shape: Shape
    params: int
    flash_bytes: int
    macs: int
    relu: bool = False


def _elements(shape: Shape) -> int:
    return shape[0] * shape[1] * shape[2]


class _Builder:
    def __init__(self, input_shape: Shape) -> None:
        self.tensors: list[Tensor] = [Tensor("input", _elements(input_shape), input_shape)]
        self.ops: list[Op] = []
        self.layers: list[LayerInfo] = []
        self.shapes: dict[str, Shape] = {"input": input_shape}

    def add(self, info: LayerInfo, inputs: tuple[str, ...], attrs: dict[str, object]) -> str:
        self.tensors.append(Tensor(info.name, _elements(info.output_shape), info.output_shape))
        self.ops.append(Op(info.name, info.kind, inputs, (info.name,), attrs))
        self.layers.append(info)
        self.shapes[info.name] = info.output_shape
        return info.name

    def conv_layer(self, name: str, layer: ConvLayer, src: str) -> str:
        shape = self.shapes[src]
        pooled, out = layer_output_shape(layer, shape)
        if pooled is not None:
            info = LayerInfo(f"{name}_prepool", "maxpool", (shape,), pooled, 0, 0, _elements(pooled) * 4)
            src = self.add(info, (src,), {"size": 2, "stride": 2})
            shape = pooled
        cin, cout = shape[2], out[2]
        k = layer.kernel
        if layer.op == "dwconv2d":
            weights = cin * k * k
            macs = out[0] * out[1] * cin * k * k
        else:
            weights = cout * k * k * cin
            macs = out[0] * out[1] * cout * k * k * cin
        info = LayerInfo(
            f"{name}_{layer.op}",
            layer.op,
            (shape,),
            out,
            params=weights + cout,
            flash_bytes=weights + BYTES_PER_CHANNEL * cout,
            macs=macs,
            relu=layer.relu,
        )
        attrs: dict[str, object] = {
            "kernel": k,
            "stride": layer.stride,
            "padding": layer.padding,
            "batchnorm": layer.batchnorm,
            "relu": layer.relu,
        }
        return self.add(info, (src,), attrs)


def build_graph(arch: Architecture) -> tuple[OpGraph, list[LayerInfo]]:
    """The op graph (ops in default order) and one LayerInfo per op, same order."""
    validate(arch)
    b = _Builder(tuple(arch.input_shape))  # type: ignore[arg-type]
    current = "input"
    for g, group in enumerate(arch.groups()):
        outs = []
        for block_index in group:
            src = current
            for i, layer in enumerate(arch.conv_blocks[block_index].layers):
                src = b.conv_layer(f"b{block_index}l{i}", layer, src)
            outs.append(src)
        if len(outs) == 1:
            current = outs[0]
        else:
            shape = b.shapes[outs[0]]
            info = LayerInfo(
                f"add{g}",
                "add",
                tuple(b.shapes[o] for o in outs),
                shape,
                0,
                0,
                (len(outs) - 1) * _elements(shape),
            )
            current = b.add(info, tuple(outs), {})
    current = _pooling(arch, b, current)
    features = _elements(b.shapes[current])
    for i, d in enumerate(arch.dense):
        current = _dense(b, f"dense{i}", current, features, d.units, relu=True)
        features = d.units
    _dense(b, "logits", current, features, arch.classes, relu=False)
    graph = OpGraph(tuple(b.tensors), tuple(b.ops))
    return graph, b.layers


def _pooling(arch: Architecture, b: _Builder, src: str) -> str:
    if arch.pooling is None:
        return src
    shape = b.shapes[src]
    out = feature_shape(arch)
    window = shape[0] * shape[1] if arch.pooling.size == "global" else int(arch.pooling.size) ** 2
    size = "global" if arch.pooling.size == "global" else arch.pooling.size
    info = LayerInfo("pool", f"{arch.pooling.type}pool", (shape,), out, 0, 0, _elements(out) * window)
    return b.add(info, (src,), {"size": size, "stride": size})


def _dense(b: _Builder, name: str, src: str, n_in: int, n_out: int, relu: bool) -> str:
    info = LayerInfo(
        name,
        "dense",
        (b.shapes[src],),
        (1, 1, n_out),
        params=n_in * n_out + n_out,
        flash_bytes=n_in * n_out + BYTES_PER_CHANNEL * n_out,
        macs=n_in * n_out,
        relu=relu,
    )
    return b.add(info, (src,), {"relu": relu})
