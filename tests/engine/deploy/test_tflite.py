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
from searches.engine.deploy.int8 import QParams, QuantModel, float32
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import run_int8
from searches.engine.deploy.tflite import OPERATOR_VERSIONS, tflite_model
from searches.engine.resources.graph import build_graph
from searches.engine.resources.report import analyze
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.training.datasets import load_digits
from searches.engine.training.int8_scheme import add_chain_params
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


def branches(n: int) -> Architecture:
    """n parallel 1x1 branches merged by one n-input Add, then global pooling and logits."""
    branch = [ConvBlock((ConvLayer("conv1x1", 1, 6, relu=j % 2 == 0),), branch=True) for j in range(n - 1)]
    blocks = (ConvBlock((ConvLayer("conv2d", 3, 6),)), *branch)
    return Architecture((8, 8, 1), 5, blocks, Pooling("avg", "global"), ())


@pytest.mark.parametrize("n", [3, 4])
def test_an_n_input_add_is_a_chain_of_adds_identical_in_litert_c_and_run_int8(n: int) -> None:
    arch = branches(n)
    (add,) = [op for op in build_graph(arch)[0].ops if op.kind == "add"]
    assert len(add.inputs) == n
    qm = random_quant_model(arch, seed=n)
    partials = [f"{add.outputs[0]}/sum{k}" for k in range(1, n - 1)]
    assert all(t in qm.qparams for t in partials) and len(qm.adds[add.id]) == n - 1
    x = np.random.default_rng(n).integers(-128, 128, (64, 8, 8, 1), dtype=np.int8)
    want = run_int8(qm, x)
    assert np.array_equal(litert(tflite_model(qm), x), want)
    with tempfile.TemporaryDirectory() as d:
        header = generate_header(qm, f"add{n}")
        c_out = np.frombuffer(compile_and_run(Path(d), f"add{n}", header.text, x), dtype=np.int8)
    assert np.array_equal(c_out.reshape(want.shape), want)
    # The chain runs in the output buffer: the arena is the resource model's peak, no more.
    assert header.arena_bytes == analyze(arch).peak_sram_bytes

    # The file: n - 1 ADDs, each partial sum an int8 tensor at nasweb's scale and zero point.
    interpreter = Interpreter(
        model_content=tflite_model(qm), experimental_op_resolver_type=OpResolverType.BUILTIN_REF
    )
    interpreter.allocate_tensors()
    adds = [d for d in interpreter._get_ops_details() if d["op_name"] == "ADD"]
    assert len(adds) == n - 1
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    outs = [tensors[d["outputs"][0]] for d in adds]
    assert [t["name"] for t in outs] == [*partials, add.outputs[0]]
    for t in outs:
        q = qm.qparams[t["name"]]
        assert t["dtype"] == np.int8 and t["quantization"] == (pytest.approx(q.scale, rel=0), q.zero_point)


def test_partial_sums_round_at_their_own_scale() -> None:
    """The chain is the definition: one rounding of x0 + x1 + x2 would give other bytes."""
    arch = branches(3)
    qm = random_quant_model(arch, seed=3)
    x = np.random.default_rng(3).integers(-128, 128, (64, 8, 8, 1), dtype=np.int8)
    coarse = dict(qm.qparams)
    (partial,) = [t for t in qm.qparams if t.endswith("/sum1")]
    coarse[partial] = QParams(float32(qm.qparams[partial].scale * 8), qm.qparams[partial].zero_point)
    (add,) = [op for op in qm.graph.ops if op.kind == "add"]
    coarser = QuantModel(arch, coarse, qm.weighted, {**qm.adds, add.id: add_chain_params(add, coarse)})
    assert not np.array_equal(run_int8(coarser, x), run_int8(qm, x))
    assert np.array_equal(litert(tflite_model(coarser), x), run_int8(coarser, x))


@pytest.mark.slow
def test_200_random_architectures_run_identically_in_litert() -> None:
    """Random weights and inputs, every architecture (3- and 4-way Adds as chains of ADDs)."""
    archs = sample_archs(200, seed=2024)
    failures, chained = [], 0
    for i, arch in enumerate(archs):
        qm = random_quant_model(arch, seed=i)
        chained += any(op.kind == "add" and len(op.inputs) > 2 for op in qm.graph.ops)
        x = np.random.default_rng(i).integers(-128, 128, (8, *arch.input_shape), dtype=np.int8)
        if not np.array_equal(litert(tflite_model(qm), x), run_int8(qm, x)):
            failures.append(arch.dumps())
    assert len(archs) == 200 and chained > 0
    assert not failures, "\n".join(failures[:3])
