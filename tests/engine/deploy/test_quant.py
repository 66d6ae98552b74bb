"""int8 quantisation: fixed-point helpers against plain-integer definitions, and the model."""

from __future__ import annotations

import io
import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from searches.engine.deploy.int8 import QParams, QuantizationError, QuantModel
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import run_int8
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, loads
from searches.engine.space.sampling import SpaceConfig, random_architecture
from searches.engine.training.int8_scheme import (
    activation_qparams,
    quantize_multiplier,
    requantize,
    requantize_single,
)
from searches.engine.training.model import build_model, to_nchw

TWO_31 = 1 << 31


def srdhm(a: int, b: int) -> int:
    """gemmlowp's SaturatingRoundingDoublingHighMul on Python integers."""
    if a == b == -TWO_31:
        return TWO_31 - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    total = ab + nudge
    return abs(total) // TWO_31 * (1 if total >= 0 else -1)  # C division truncates


def rounding_divide(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def literal_requant(acc: int, m0: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    x = max(-TWO_31, min(TWO_31 - 1, acc * (1 << left)))
    return rounding_divide(srdhm(x, m0), right)


def test_quantize_multiplier_encodes_the_real_multiplier() -> None:
    for m in (1e-9, 0.0007, 0.25, 0.4999999, 0.5, 0.75, 1.0, 3.7, 1234.5):
        m0, shift = quantize_multiplier(m)
        assert 1 << 30 <= m0 < 1 << 31
        assert m0 * 2.0 ** (shift - 31) == pytest.approx(m, rel=1e-9)


def test_quantize_multiplier_edge_cases() -> None:
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(1e-12) == (0, 0)  # below 2^-31: TFLite drops it to zero
    with pytest.raises(QuantizationError):
        quantize_multiplier(float("nan"))
    with pytest.raises(QuantizationError):
        quantize_multiplier(2.0**40)


def test_requantize_matches_the_integer_definition() -> None:
    rng = random.Random(3)
    accs, mults, shifts, expected = [], [], [], []
    for _ in range(5000):
        acc = rng.choice([rng.randint(-(2**31), 2**31 - 1), rng.randint(-5000, 5000), 0, -1, 1])
        m0, shift = quantize_multiplier(rng.choice([rng.uniform(1e-6, 1.0), rng.uniform(1, 64)]))
        accs.append(acc)
        mults.append(m0)
        shifts.append(shift)
        expected.append(literal_requant(acc, m0, shift))
    got = requantize(np.array(accs), np.array(mults), np.array(shifts))
    assert got.tolist() == expected


def test_requantize_rounds_half_away_from_zero_in_the_shift() -> None:
    m0, shift = quantize_multiplier(0.25)  # exact high multiply, rounding in the shift
    assert requantize(np.array([6, -6, 10, -10]), m0, shift).tolist() == [2, -2, 3, -3]


def literal_single(acc: int, m0: int, shift: int) -> int:
    """TFLite's single rounding: round(acc·m0 / 2^(31-shift)), halves up, on Python integers."""
    total = 31 - shift
    q, r = divmod(acc * m0, 1 << total)  # floor division
    return q + (1 if 2 * r >= 1 << total else 0)


def test_requantize_single_matches_the_integer_definition() -> None:
    rng = random.Random(4)
    accs, mults, shifts, expected = [], [], [], []
    for _ in range(5000):
        acc = rng.choice([rng.randint(-(2**31), 2**31 - 1), rng.randint(-5000, 5000), 0, -1, 1])
        m0, shift = quantize_multiplier(rng.choice([rng.uniform(1e-6, 1.0), rng.uniform(1, 4)]))
        accs.append(acc)
        mults.append(m0)
        shifts.append(shift)
        expected.append(max(-TWO_31, min(TWO_31 - 1, literal_single(acc, m0, shift))))
    got = requantize_single(np.array(accs), np.array(mults), np.array(shifts))
    assert got.tolist() == expected


def test_single_and_double_rounding_differ_on_negative_halves() -> None:
    m0, shift = quantize_multiplier(0.25)
    # -6/4 = -1.5: single rounding rounds half up (-1), double rounding away from zero (-2).
    assert requantize_single(np.array([6, -6, 5, -5]), m0, shift).tolist() == [2, -1, 1, -1]
    assert requantize(np.array([-6]), m0, shift).tolist() == [-2]


def test_activation_qparams_represent_zero_exactly() -> None:
    for lo, hi in ((0.0, 6.0), (-1.0, 1.0), (-3.3, 0.2), (0.5, 2.0), (-2.0, -1.0)):
        q = activation_qparams(lo, hi)
        assert -128 <= q.zero_point <= 127
        assert q.scale * (-128 - q.zero_point) <= min(lo, 0) + q.scale  # range kept, up to rounding
        assert q.scale * (127 - q.zero_point) >= max(hi, 0) - q.scale
    assert activation_qparams(0.0, 0.0) == QParams(1.0, -128)


ARCH = """{
  "format": "nasweb.arch", "version": 1, "input_shape": [8, 8, 1], "classes": 10,
  "conv_blocks": [
    {"branch": false, "layers": [{"op": "conv2d", "kernel": 3, "filters": 8, "stride": 1,
                                  "batchnorm": true, "relu": true}]},
    {"branch": false, "layers": [{"op": "dwconv2d", "kernel": 3, "stride": 2, "relu": true},
                                 {"op": "conv1x1", "filters": 12, "batchnorm": true}]},
    {"branch": true, "layers": [{"op": "conv2d", "kernel": 5, "filters": 12, "stride": 2,
                                 "relu": false}]}
  ],
  "pooling": {"type": "avg", "size": "global"},
  "dense": [{"units": 16}]
}"""


def _model(seed: int = 0) -> tuple[QuantModel, torch.nn.Module, np.ndarray]:
    arch = loads(ARCH)
    torch.manual_seed(seed)
    model = build_model(arch).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics exercise folding
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    x = np.random.default_rng(seed).random((200, 8, 8, 1)).astype(np.float32)
    return quantize(arch, model, x[:100]), model, x[100:]


def test_int8_reference_tracks_the_float_model() -> None:
    qm, model, x = _model()
    with torch.no_grad():
        ref = model(to_nchw(x)).numpy()
    got = qm.dequantize_output(run_int8(qm, qm.quantize_input(x)))
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_weights_and_biases_follow_the_int8_spec() -> None:
    qm, _, _ = _model()
    for op_id, p in qm.weighted.items():
        assert p.weights.dtype == np.int8 and p.weights.min() >= -127, op_id
        assert p.bias.dtype == np.int32 and p.multiplier.dtype == np.int32
        assert np.all((p.multiplier == 0) | (p.multiplier >= 1 << 30)), op_id
    conv = qm.weighted["b0l0_conv2d"]
    assert conv.weights.shape == (8, 3, 3, 1)  # OHWI
    assert np.abs(conv.weights).reshape(8, -1).max(axis=1).tolist() == [127] * 8  # per channel
    assert qm.weighted["b1l0_dwconv2d"].weights.shape == (3, 3, 8)
    assert qm.weighted["b0l0_conv2d"].act_min == max(-128, qm.qparams["b0l0_conv2d"].zero_point)
    assert qm.weighted["b2l0_conv2d"].act_min == -128  # no ReLU
    assert qm.qparams["pool"] == qm.qparams["add1"]  # pooling keeps its input's parameters


def test_save_and_load_round_trip() -> None:
    qm, _, x = _model()
    buffer = io.BytesIO()
    qm.save(buffer)
    buffer.seek(0)
    again = QuantModel.load(buffer)
    assert again.arch == qm.arch and again.qparams == qm.qparams and again.adds == qm.adds
    xq = qm.quantize_input(x[:20])
    assert np.array_equal(run_int8(again, xq), run_int8(qm, xq))


def _as_v2(qm: QuantModel, drop_partials: bool) -> io.BytesIO:
    """``qm`` saved, then its meta rewritten the way format v2 stored Adds (one entry per op)."""
    buffer = io.BytesIO()
    qm.save(buffer)
    buffer.seek(0)
    with np.load(buffer) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["version"] = 2
    meta["adds"] = {op: links[0] for op, links in meta["adds"].items()}
    if drop_partials:
        meta["qparams"] = {t: q for t, q in meta["qparams"].items() if "/sum" not in t}
        meta["adds"] = {op: [[*a[0], 1], [*a[1], 0], *a[2:]] for op, a in meta["adds"].items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    out.seek(0)
    return out


def test_v2_files_load_when_every_add_has_two_inputs() -> None:
    qm, _, x = _model()
    assert all(len(links) == 1 for links in qm.adds.values())
    again = QuantModel.load(_as_v2(qm, drop_partials=False))
    assert again.adds == qm.adds and again.qparams == qm.qparams
    xq = qm.quantize_input(x[:20])
    assert np.array_equal(run_int8(again, xq), run_int8(qm, xq))


def test_v2_files_with_an_n_input_add_are_refused() -> None:
    """v2 rounded a 3-input Add once; v3 chains it, so the old constants mean something else."""
    one_by_one = ConvBlock((ConvLayer("conv1x1", 1, 4),))
    blocks = (one_by_one, replace(one_by_one, branch=True), replace(one_by_one, branch=True))
    arch = Architecture((8, 8, 1), 3, blocks, None, ())
    qm = quantize(arch, build_model(arch).eval(), np.random.default_rng(0).random((8, 8, 8, 1)))
    assert [len(links) for links in qm.adds.values()] == [2]
    again = io.BytesIO()
    qm.save(again)
    again.seek(0)
    assert QuantModel.load(again).adds == qm.adds and "add0/sum1" in qm.qparams
    with pytest.raises(ValueError, match="add0 adds 3 inputs in one rounding"):
        QuantModel.load(_as_v2(qm, drop_partials=True))


def test_load_rejects_other_files() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(b'{"format": "other"}', dtype=np.uint8))
    buffer.seek(0)
    with pytest.raises(ValueError, match="not a nasweb int8 model"):
        QuantModel.load(buffer)


def test_run_int8_checks_its_input() -> None:
    qm, _, x = _model()
    with pytest.raises(ValueError, match="int8"):
        run_int8(qm, x)
    with pytest.raises(ValueError, match="shape"):
        run_int8(qm, np.zeros((1, 4, 4, 1), dtype=np.int8))


def test_calibration_needs_samples() -> None:
    arch = loads(ARCH)
    with pytest.raises(QuantizationError, match="at least one"):
        quantize(arch, build_model(arch), np.zeros((0, 8, 8, 1), dtype=np.float32))


def test_random_architectures_stay_close_to_float() -> None:
    rng = random.Random(7)
    config = SpaceConfig((8, 8, 1), 10)
    x = np.random.default_rng(7).random((64, 8, 8, 1)).astype(np.float32)
    for i in range(10):
        arch = random_architecture(rng, config)
        torch.manual_seed(i)
        model = build_model(arch).eval()
        qm = quantize(arch, model, x)
        with torch.no_grad():
            ref = model(to_nchw(x)).numpy()
        got = qm.dequantize_output(run_int8(qm, qm.quantize_input(x)))
        assert np.abs(got - ref).max() <= 0.08 * np.abs(ref).max() + 1e-6, arch.dumps()
