"""Write a quantised candidate as a full-integer int8 TFLite flatbuffer (LiteRT, TFLite Micro).

The file holds nasweb's own :class:`QuantModel` — the same float32 scales, zero points, int8
weights and int32 biases — so LiteRT computes the bytes the C header and :func:`run_int8`
compute (docs/export.md gives the per-op rounding).  It is built with the ``tflite``
package's generated schema code (``flatbuffers`` underneath), never by hand.

Mapping from nasweb's op graph (NHWC, batch 1), operators in the resource model's optimal
execution order:

* conv2d / conv1x1 → CONV_2D, depthwise → DEPTHWISE_CONV_2D (multiplier 1); weights
  per-channel quantised (OHWI, depthwise 1HWC), bias int32 *without* nasweb's folded
  zero-point term (LiteRT subtracts the input zero point itself), padding SAME or VALID
  (TensorFlow's SAME puts the extra row/column at the bottom/right, as nasweb does);
* dense → RESHAPE to (1, features) where its input is 4-D, then FULLY_CONNECTED;
* maxpool / avgpool → MAX_POOL_2D / AVERAGE_POOL_2D with stride = window, VALID padding
  (global pooling: the window is the whole feature map);
* add → one ADD per link of its chain (``int8_scheme.add_chain``): an Add of n inputs is
  n - 1 ADDs whose partial sums are int8 tensors with nasweb's calibrated scale and zero point;
* ReLU → fused activation RELU, whose clamp [max(-128, zp_out), 127] is nasweb's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np
import numpy.typing as npt
import tflite as T

from searches.engine.deploy.int8 import QuantModel
from searches.engine.resources.opgraph import Op
from searches.engine.resources.report import analyze
from searches.engine.training.int8_scheme import add_chain

SCHEMA_VERSION = 3
# Builtin operator → the version this file declares (TFLite's op_version rules for int8
# inputs); TFLite Micro registers every one of these.
OPERATOR_VERSIONS = {
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 4,
    "MAX_POOL_2D": 2,
    "AVERAGE_POOL_2D": 2,
    "ADD": 2,
    "RESHAPE": 1,
    "QUANTIZE": 1,
}
_BUFFER_ALIGNMENT = 16  # constant data aligned for int32 loads on any core


class TFLiteExportError(ValueError):
    """The model uses something a .tflite file cannot express with identical results."""


@dataclass(frozen=True)
class _Quant:
    scales: npt.NDArray[np.float32]
    zero_points: npt.NDArray[np.int64]
    axis: int = 0


@dataclass
class _TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: int
    quant: _Quant | None
    data: bytes | None = None


class _Writer:
    def __init__(self, qm: QuantModel) -> None:
        self.qm = qm
        self.report = analyze(qm.arch)
        self.shapes = {t.id: t.shape for t in self.report.graph.tensors}
        self.tensors: list[_TensorSpec] = []
        self.index: dict[str, int] = {}
        self.codes: list[str] = []
        # (opcode index, inputs, outputs, options type, options builder)
        self.ops: list[tuple[int, list[int], list[int], int, tuple[Any, ...] | None]] = []

    # ---- tensors ---------------------------------------------------------------------

    def tensor(self, spec: _TensorSpec) -> int:
        self.tensors.append(spec)
        return len(self.tensors) - 1

    def activation(self, tensor_id: str, shape: tuple[int, ...] | None = None) -> int:
        if tensor_id not in self.index:
            q = self.qm.qparams[tensor_id]
            if shape is None:
                h, w, c = self.shapes[tensor_id]
                shape = (1, h, w, c)
            quant = _Quant(np.array([q.scale], np.float32), np.array([q.zero_point]))
            self.index[tensor_id] = self.tensor(_TensorSpec(tensor_id, shape, T.TensorType.INT8, quant))
        return self.index[tensor_id]

    def opcode(self, name: str) -> int:
        if name not in self.codes:
            self.codes.append(name)
        return self.codes.index(name)

    # ---- operators -------------------------------------------------------------------

    def weighted(self, op: Op) -> None:
        p = self.qm.weighted[op.id]
        src, dst = op.inputs[0], op.outputs[0]
        s_in = self.qm.qparams[src].scale
        channels = len(p.bias)
        zeros = np.zeros(channels, np.int64)
        weights = p.weights
        axis = 0
        if op.kind == "dwconv2d":
            weights = weights.reshape(1, *weights.shape)  # (k, k, C) → (1, k, k, C)
            axis = 3
        w_index = self.tensor(
            _TensorSpec(
                f"{op.id}/weights",
                tuple(weights.shape),
                T.TensorType.INT8,
                _Quant(p.weight_scale.astype(np.float32), zeros, axis),
                np.ascontiguousarray(weights, dtype=np.int8).tobytes(),
            )
        )
        # The scale LiteRT expects on the bias: s_in·s_w, from the float32 values, as float32.
        bias_scale = (s_in * p.weight_scale.astype(np.float64)).astype(np.float32)
        b_index = self.tensor(
            _TensorSpec(
                f"{op.id}/bias",
                (channels,),
                T.TensorType.INT32,
                _Quant(bias_scale, zeros, 0),
                p.plain_bias(self.qm.qparams[src].zero_point).astype("<i4").tobytes(),
            )
        )
        relu = bool(op.attrs.get("relu"))
        if p.act_min != (max(-128, self.qm.qparams[dst].zero_point) if relu else -128) or p.act_max != 127:
            raise TFLiteExportError(f"{op.id}: its clamp is not TFLite's RELU/NONE range")
        act = T.ActivationFunctionType.RELU if relu else T.ActivationFunctionType.NONE
        if op.kind == "dense":
            x = self._flat_input(src)
            out = self.activation(dst, (1, channels))
            self.add_op(
                "FULLY_CONNECTED",
                [x, w_index, b_index],
                [out],
                T.BuiltinOptions.FullyConnectedOptions,
                ("fc", act),
            )
            return
        stride = int(op.attrs["stride"])  # type: ignore[call-overload]
        padding = T.Padding.SAME if op.attrs["padding"] == "same" else T.Padding.VALID
        x, out = self.activation(src), self.activation(dst)
        if op.kind == "dwconv2d":
            options = ("dw", padding, stride, act)
            self.add_op(
                "DEPTHWISE_CONV_2D",
                [x, w_index, b_index],
                [out],
                T.BuiltinOptions.DepthwiseConv2DOptions,
                options,
            )
        else:
            options = ("conv", padding, stride, act)
            self.add_op("CONV_2D", [x, w_index, b_index], [out], T.BuiltinOptions.Conv2DOptions, options)

    def _dense_outputs(self) -> set[str]:
        return {op.outputs[0] for op in self.report.graph.ops if op.kind == "dense"}

    def _flat_input(self, src: str) -> int:
        """The dense layer's input as (1, features): a RESHAPE of a 4-D tensor, once."""
        if src in self._dense_outputs():
            return self.activation(src)
        flat_id = f"{src}/flat"
        if flat_id not in self.index:
            h, w, c = self.shapes[src]
            q = self.qm.qparams[src]
            quant = _Quant(np.array([q.scale], np.float32), np.array([q.zero_point]))
            shape_index = self.tensor(
                _TensorSpec(
                    f"{src}/flat_shape",
                    (2,),
                    T.TensorType.INT32,
                    None,
                    np.array([1, h * w * c], "<i4").tobytes(),
                )
            )
            flat = self.tensor(_TensorSpec(flat_id, (1, h * w * c), T.TensorType.INT8, quant))
            self.index[flat_id] = flat
            x = self.activation(src)
            self.add_op(
                "RESHAPE",
                [x, shape_index],
                [flat],
                T.BuiltinOptions.ReshapeOptions,
                ("reshape", (1, h * w * c)),
            )
        return self.index[flat_id]

    def pool(self, op: Op) -> None:
        src, dst = op.inputs[0], op.outputs[0]
        h, w, _ = self.shapes[src]
        size = op.attrs["size"]
        kh, kw = (h, w) if size == "global" else (int(size), int(size))  # type: ignore[call-overload]
        name = "MAX_POOL_2D" if op.kind == "maxpool" else "AVERAGE_POOL_2D"
        options = ("pool", kh, kw)
        self.add_op(
            name, [self.activation(src)], [self.activation(dst)], T.BuiltinOptions.Pool2DOptions, options
        )

    def add(self, op: Op) -> None:
        """One ADD per link of the Add's chain; partial sums are tensors with their own qparams."""
        oh, ow, oc = self.shapes[op.outputs[0]]
        for left, right, out in add_chain(op):
            ins = [self.activation(t, (1, oh, ow, oc)) for t in (left, right)]
            self.add_op(
                "ADD", ins, [self.activation(out, (1, oh, ow, oc))], T.BuiltinOptions.AddOptions, ("add",)
            )

    def add_op(
        self,
        name: str,
        inputs: list[int],
        outputs: list[int],
        options_type: int,
        options: tuple[Any, ...] | None,
    ) -> None:
        self.ops.append((self.opcode(name), inputs, outputs, options_type, options))

    def build(self, float_input: bool) -> None:
        input_index = self.activation("input")
        if float_input:
            h, w, c = self.shapes["input"]
            real = self.tensor(_TensorSpec("input_float", (1, h, w, c), T.TensorType.FLOAT32, None))
            self.add_op("QUANTIZE", [real], [input_index], T.BuiltinOptions.NONE, None)
            input_index = real
        ops = {op.id: op for op in self.report.graph.ops}
        for op_id in self.report.memory.order:
            op = ops[op_id]
            if op.kind in ("conv2d", "conv1x1", "dwconv2d", "dense"):
                self.weighted(op)
            elif op.kind in ("maxpool", "avgpool"):
                self.pool(op)
            elif op.kind == "add":
                self.add(op)
            else:  # pragma: no cover - build_graph emits only the kinds above
                raise TFLiteExportError(f"{op.id}: no TFLite operator for {op.kind!r}")
        self.inputs = [input_index]
        self.outputs = [self.index["logits"]]


# ---- serialisation -------------------------------------------------------------------------


def _int_vector(builder: flatbuffers.Builder, values: npt.NDArray[np.generic]) -> int:
    return int(builder.CreateNumpyVector(np.ascontiguousarray(values)))


def _quantization(builder: flatbuffers.Builder, quant: _Quant) -> int:
    scales = _int_vector(builder, quant.scales.astype("<f4"))
    zero_points = _int_vector(builder, quant.zero_points.astype("<i8"))
    T.QuantizationParametersStart(builder)
    T.QuantizationParametersAddScale(builder, scales)
    T.QuantizationParametersAddZeroPoint(builder, zero_points)
    T.QuantizationParametersAddQuantizedDimension(builder, quant.axis)
    return int(T.QuantizationParametersEnd(builder))


def _buffer(builder: flatbuffers.Builder, data: bytes | None) -> int:
    vector = None
    if data:
        builder.Prep(_BUFFER_ALIGNMENT, len(data))  # the payload starts aligned
        vector = _int_vector(builder, np.frombuffer(data, dtype=np.uint8))
    T.BufferStart(builder)
    if vector is not None:
        T.BufferAddData(builder, vector)
    return int(T.BufferEnd(builder))


def _options(builder: flatbuffers.Builder, options: tuple[Any, ...] | None) -> int | None:
    if options is None:
        return None
    kind, *args = options
    if kind in ("conv", "dw"):
        padding, stride, act = args
        table = "Conv2DOptions" if kind == "conv" else "DepthwiseConv2DOptions"
        getattr(T, f"{table}Start")(builder)
        for field, value in (("Padding", padding), ("StrideW", stride), ("StrideH", stride)):
            getattr(T, f"{table}Add{field}")(builder, value)
        getattr(T, f"{table}AddFusedActivationFunction")(builder, act)
        getattr(T, f"{table}AddDilationWFactor")(builder, 1)
        getattr(T, f"{table}AddDilationHFactor")(builder, 1)
        if kind == "dw":
            T.DepthwiseConv2DOptionsAddDepthMultiplier(builder, 1)
        return int(getattr(T, f"{table}End")(builder))
    if kind == "fc":
        T.FullyConnectedOptionsStart(builder)
        T.FullyConnectedOptionsAddFusedActivationFunction(builder, args[0])
        return int(T.FullyConnectedOptionsEnd(builder))
    if kind == "pool":
        kh, kw = args
        T.Pool2DOptionsStart(builder)
        T.Pool2DOptionsAddPadding(builder, T.Padding.VALID)
        T.Pool2DOptionsAddStrideW(builder, kw)
        T.Pool2DOptionsAddStrideH(builder, kh)
        T.Pool2DOptionsAddFilterWidth(builder, kw)
        T.Pool2DOptionsAddFilterHeight(builder, kh)
        T.Pool2DOptionsAddFusedActivationFunction(builder, T.ActivationFunctionType.NONE)
        return int(T.Pool2DOptionsEnd(builder))
    if kind == "reshape":
        shape = _int_vector(builder, np.array(args[0], "<i4"))
        T.ReshapeOptionsStart(builder)
        T.ReshapeOptionsAddNewShape(builder, shape)
        return int(T.ReshapeOptionsEnd(builder))
    T.AddOptionsStart(builder)
    T.AddOptionsAddFusedActivationFunction(builder, T.ActivationFunctionType.NONE)
    return int(T.AddOptionsEnd(builder))


def _offsets_vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return int(builder.EndVector())


def _serialise(w: _Writer, description: str) -> bytes:
    builder = flatbuffers.Builder(1024)
    # Buffer 0 is the empty sentinel every activation points to; constants get their own.
    buffers = [_buffer(builder, None)]
    tensor_offsets = []
    for spec in w.tensors:
        buffer_index = 0
        if spec.data is not None:
            buffers.append(_buffer(builder, spec.data))
            buffer_index = len(buffers) - 1
        name = builder.CreateString(spec.name)
        shape = _int_vector(builder, np.array(spec.shape, "<i4"))
        quant = _quantization(builder, spec.quant) if spec.quant is not None else None
        T.TensorStart(builder)
        T.TensorAddShape(builder, shape)
        T.TensorAddType(builder, spec.dtype)
        T.TensorAddBuffer(builder, buffer_index)
        T.TensorAddName(builder, name)
        if quant is not None:
            T.TensorAddQuantization(builder, quant)
        tensor_offsets.append(int(T.TensorEnd(builder)))
    operator_offsets = []
    for code_index, inputs, outputs, options_type, options in w.ops:
        ins = _int_vector(builder, np.array(inputs, "<i4"))
        outs = _int_vector(builder, np.array(outputs, "<i4"))
        opts = _options(builder, options)
        T.OperatorStart(builder)
        T.OperatorAddOpcodeIndex(builder, code_index)
        T.OperatorAddInputs(builder, ins)
        T.OperatorAddOutputs(builder, outs)
        if opts is not None:
            T.OperatorAddBuiltinOptionsType(builder, options_type)
            T.OperatorAddBuiltinOptions(builder, opts)
        operator_offsets.append(int(T.OperatorEnd(builder)))
    tensors = _offsets_vector(builder, tensor_offsets)
    operators = _offsets_vector(builder, operator_offsets)
    sub_inputs = _int_vector(builder, np.array(w.inputs, "<i4"))
    sub_outputs = _int_vector(builder, np.array(w.outputs, "<i4"))
    graph_name = builder.CreateString("main")
    T.SubGraphStart(builder)
    T.SubGraphAddTensors(builder, tensors)
    T.SubGraphAddInputs(builder, sub_inputs)
    T.SubGraphAddOutputs(builder, sub_outputs)
    T.SubGraphAddOperators(builder, operators)
    T.SubGraphAddName(builder, graph_name)
    subgraph = int(T.SubGraphEnd(builder))
    code_offsets = []
    for name in w.codes:
        code = getattr(T.BuiltinOperator, name)
        T.OperatorCodeStart(builder)
        T.OperatorCodeAddDeprecatedBuiltinCode(builder, min(code, 127))
        T.OperatorCodeAddBuiltinCode(builder, code)
        T.OperatorCodeAddVersion(builder, OPERATOR_VERSIONS[name])
        code_offsets.append(int(T.OperatorCodeEnd(builder)))
    codes = _offsets_vector(builder, code_offsets)
    subgraphs = _offsets_vector(builder, [subgraph])
    buffer_vector = _offsets_vector(builder, buffers)
    text = builder.CreateString(description)
    T.ModelStart(builder)
    T.ModelAddVersion(builder, SCHEMA_VERSION)
    T.ModelAddOperatorCodes(builder, codes)
    T.ModelAddSubgraphs(builder, subgraphs)
    T.ModelAddDescription(builder, text)
    T.ModelAddBuffers(builder, buffer_vector)
    builder.Finish(T.ModelEnd(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_model(
    qm: QuantModel, description: str = "nasweb int8 model", *, float_input: bool = False
) -> bytes:
    """The .tflite bytes of ``qm``: int8 input (1, H, W, C), int8 logits (1, classes).

    ``float_input`` puts a QUANTIZE op in front, so the file takes float32 images (its first
    op then computes what :meth:`QuantModel.quantize_input` computes).
    """
    w = _Writer(qm)
    w.build(float_input)
    return _serialise(w, description)
