"""The .tflite export under the real LiteRT 2.3.0 interpreter: the same bytes as run_int8 and the header.

LiteRT runs with its reference kernels (``OpResolverType.BUILTIN_REF``), the kernels nasweb's
rounding is defined against (docs/export.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import tflite
import torch
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from searches.engine.deploy.header import generate_header
from searches.engine.deploy.int8 import QuantModel
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import run_int8
from searches.engine.deploy.tflite import OPERATOR_VERSIONS, TFLiteExportError, tflite_model
from searches.engine.resources.graph import build_graph
from searches.engine.resources.report import analyze
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.training.datasets import load_digits
from searches.engine.training.model import build_model
from searches.engine.training.train import Fidelity, train_and_evaluate
from tests.engine.deploy.test_export_host import compile_and_run, random_quant_model, sample_archs

# Every op kind: conv (same and valid padding, stride 2), depthwise, 1x1, a two-way branch
# (ADD), pre-pool and max pooling, global average pooling and two dense layers (RESHAPE).
ARCH = Architecture(
    (8, 8, 1),
    10,
    (
        ConvBlock((ConvLayer("conv2d", 3, 8),)),
        ConvBlock((ConvLayer("dwconv2d", 3, None), ConvLayer("conv1x1", 1, 8))),
        ConvBlock((ConvLayer("conv1x1", 1, 8),), branch=True),
        ConvBlock((ConvLayer("conv2d", 3, 12, padding="valid", pre_pool=True, relu=False),)),
    ),
    Pooling("avg", "global"),
    (Dense(16),),
)


def litert(model: bytes, x: npt.NDArray[np.generic]) -> npt.NDArray[np.int8]:
    """LiteRT's reference kernels on every row of ``x``."""
    interpreter = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for row in x:
        interpreter.set_tensor(inp["index"], row[np.newaxis])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.array(rows, dtype=np.int8)


@pytest.fixture(scope="module")
def trained() -> tuple[QuantModel, npt.NDArray[np.float32]]:
    """ARCH trained on digits for two epochs (seconds) and quantised like a search does."""
    torch.manual_seed(0)
    digits = load_digits()
    result = train_and_evaluate(ARCH, digits, Fidelity(epochs=2, train_subset=None, batch_size=32, lr=1e-2))
    model = build_model(ARCH)
    model.load_state_dict(result.state_dict)
    qm = quantize(ARCH, model.eval(), digits.x_train[:512])
    return qm, digits.x_test


def test_a_trained_candidate_runs_identically_in_litert_and_c(trained: tuple) -> None:
    qm, x_test = trained
    xq = qm.quantize_input(x_test)
    want = run_int8(qm, xq)
    got = litert(tflite_model(qm), xq)
    assert got.shape == want.shape == (len(x_test), 10)
    assert np.array_equal(got, want)
    with tempfile.TemporaryDirectory() as d:
        header = generate_header(qm, "digits_model")
        c_out = np.frombuffer(compile_and_run(Path(d), "digits_model", header.text, xq), dtype=np.int8)
    assert np.array_equal(c_out.reshape(want.shape), want)


def test_litert_quantises_float_input_as_quantize_input(trained: tuple) -> None:
    qm, x_test = trained
    rng = np.random.default_rng(5)
    levels = np.concatenate([np.arange(256) / 255, np.arange(17) / 16, rng.uniform(-0.2, 1.2, 2000)])
    x = np.resize(levels.astype(np.float32), (len(levels) // 64 + 1) * 64).reshape(-1, 8, 8, 1)
    x = np.concatenate([x, x_test[:50]])
    got = litert(tflite_model(qm, float_input=True), x)
    assert np.array_equal(got, run_int8(qm, qm.quantize_input(x)))


def test_the_file_declares_int8_operators_in_the_optimal_order(trained: tuple) -> None:
    qm, _ = trained
    interpreter = Interpreter(
        model_content=tflite_model(qm), experimental_op_resolver_type=OpResolverType.BUILTIN_REF
    )
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == out["dtype"] == np.int8
    assert tuple(inp["shape"]) == (1, 8, 8, 1) and tuple(out["shape"]) == (1, 10)
    assert inp["quantization"] == (pytest.approx(qm.input_scale, rel=0), qm.input_zero_point)
    ops = [d["op_name"] for d in interpreter._get_ops_details()]
    expected = []
    kinds = {op.id: op.kind for op in build_graph(ARCH)[0].ops}
    names = {"conv2d": "CONV_2D", "conv1x1": "CONV_2D", "dwconv2d": "DEPTHWISE_CONV_2D", "add": "ADD"}
    names |= {"maxpool": "MAX_POOL_2D", "avgpool": "AVERAGE_POOL_2D", "dense": "FULLY_CONNECTED"}
    for op_id in analyze(ARCH).memory.order:
        if op_id == "dense0":
            expected.append("RESHAPE")
        expected.append(names[kinds[op_id]])
    assert ops == expected
    assert set(ops) <= set(OPERATOR_VERSIONS)


def test_constant_buffers_are_16_byte_aligned(trained: tuple) -> None:
    """int32 biases are read in place by TFLite Micro: unaligned words fault on a Cortex-M0."""
    data = tflite_model(trained[0])
    model = tflite.Model.GetRootAsModel(data, 0)
    starts = []
    for b in range(model.BuffersLength()):
        buffer = model.Buffers(b)
        if buffer.DataLength():
            starts.append(buffer._tab.Vector(buffer._tab.Offset(4)))
    assert len(starts) == 2 * len(trained[0].weighted) + 1  # weights and biases, one reshape shape
    assert all(start % 16 == 0 for start in starts)


def test_adds_of_more_than_two_branches_are_refused() -> None:
    arch = Architecture(
        (8, 8, 1),
        3,
        (
            ConvBlock((ConvLayer("conv1x1", 1, 4),)),
            ConvBlock((ConvLayer("conv1x1", 1, 4),), branch=True),
            ConvBlock((ConvLayer("conv1x1", 1, 4),), branch=True),
        ),
        None,
        (),
    )
    qm = random_quant_model(arch, seed=0)
    with pytest.raises(TFLiteExportError, match="add0 merges 3 branches"):
        tflite_model(qm)


@pytest.mark.slow
def test_200_random_architectures_run_identically_in_litert() -> None:
    """Random weights and inputs; architectures with a 3- or 4-way Add are refused (counted)."""
    archs = sample_archs(230, seed=2024)
    checked, refused, failures = 0, 0, []
    for i, arch in enumerate(archs):
        if checked == 200:
            break
        qm = random_quant_model(arch, seed=i)
        if any(op.kind == "add" and len(op.inputs) > 2 for op in qm.graph.ops):
            with pytest.raises(TFLiteExportError):
                tflite_model(qm)
            refused += 1
            continue
        x = np.random.default_rng(i).integers(-128, 128, (8, *arch.input_shape), dtype=np.int8)
        if not np.array_equal(litert(tflite_model(qm), x), run_int8(qm, x)):
            failures.append(arch.dumps())
        checked += 1
    assert checked == 200, f"only {checked} exportable architectures ({refused} refused)"
    assert not failures, "\n".join(failures[:3])
