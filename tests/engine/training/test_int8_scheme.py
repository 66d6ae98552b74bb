"""The integer convolution's two summation paths agree exactly.

:func:`conv_int` sums ``w·q`` with oneDNN's direct float32 convolution where that is exact and
with a float32/float64 tap loop otherwise; both must give the same integers on every shape the
search space produces (strides, depthwise, 1x1, many channels, batch 1 and large batches).
"""

from __future__ import annotations

import numpy as np
import pytest

from searches.engine.resources.opgraph import Op
from searches.engine.training import int8_scheme
from searches.engine.training.int8_scheme import _onednn_sums, _tap_sums, direct_conv_is_exact


def _case(rng: np.random.Generator, n: int, size: int, c: int, oc: int, k: int, stride: int, depthwise: bool):
    # weights as large as the float32 bound allows: 128·Σ|w| just under 2^24 per channel
    fan_in = k * k * (1 if depthwise else c)
    limit = max(1, min(127, (2**24 - 1) // (128 * fan_in)))
    shape = (k, k, c) if depthwise else (oc, k, k, c)
    weights = rng.integers(-limit, limit + 1, shape).astype(np.int8)
    codes = rng.integers(-128, 128, (n, size, size, c)).astype(np.float32)
    return codes, weights


@pytest.mark.skipif(not direct_conv_is_exact(), reason="no oneDNN float32 convolution here")
@pytest.mark.parametrize(
    ("n", "size", "c", "oc", "k", "stride", "depthwise"),
    [
        (1, 5, 1, 3, 3, 1, False),
        (1, 28, 1, 23, 3, 1, False),
        (64, 26, 23, 34, 5, 1, False),
        (16, 14, 64, 64, 3, 1, False),  # the shape class where an auto backend might pick Winograd
        (8, 12, 96, 128, 1, 1, False),
        (32, 27, 34, 34, 7, 2, True),
        (4, 16, 128, 128, 3, 2, True),
        (200, 9, 9, 17, 5, 2, False),
    ],
)
def test_onednn_sums_equal_the_tap_loop(n, size, c, oc, k, stride, depthwise) -> None:
    rng = np.random.default_rng(n * 1000 + size * 10 + k)
    codes, weights = _case(rng, n, size, c, oc, k, stride, depthwise)
    zp = int(rng.integers(-128, 128))
    pads = (1, 0, 2, 1) if k > 1 else (0, 0, 0, 0)
    top, bottom, left, right = pads
    padded = np.pad(codes, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=zp)
    expected = _tap_sums(padded.astype(np.float64), weights.astype(np.float64), k, stride, depthwise)
    got = _onednn_sums(codes.astype(np.int64), pads, zp, weights, stride, depthwise)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected.astype(np.int64))


def _never(*args: object) -> None:
    raise AssertionError("the float32 oneDNN path ran on weights whose sums need float64")


def test_conv_int_sums_in_float64_when_float32_would_not_be_exact(monkeypatch) -> None:
    """Weights whose sums can pass 2^24 never reach the float32 path (the bound is per channel)."""
    rng = np.random.default_rng(3)
    monkeypatch.setattr(int8_scheme, "_onednn_sums", _never)
    weights = (rng.choice([-1, 1], (4, 3, 3, 200)) * rng.integers(100, 128, (4, 3, 3, 200))).astype(np.int8)
    assert 128 * int(np.abs(weights.astype(np.int64)).reshape(4, -1).sum(axis=1).max()) >= 2**24
    p = int8_scheme.WeightedOp(
        weights=weights,
        bias=np.zeros(4, dtype=np.int32),
        multiplier=np.full(4, 1 << 30, dtype=np.int32),
        shift=np.full(4, -20, dtype=np.int8),
        act_min=-128,
        act_max=127,
        weight_scale=np.ones(4, dtype=np.float32),
    )
    op = Op("op", "conv2d", ("x",), ("y",), {"kernel": 3, "stride": 1, "padding": "same"})
    x = rng.integers(-128, 128, (2, 6, 6, 200)).astype(np.int64)
    y = int8_scheme.conv_int(op, p, x, 3, 0)
    # the same sums by a plain integer loop over the 3x3 window
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=3)
    sums = np.zeros((2, 6, 6, 4), dtype=np.int64)
    for ky in range(3):
        for kx in range(3):
            sums += padded[:, ky : ky + 6, kx : kx + 6, :] @ weights[:, ky, kx, :].astype(np.int64).T
    expected = np.clip(int8_scheme.requantize(sums, p.multiplier, p.shift), -128, 127)
    assert np.array_equal(y, expected)
