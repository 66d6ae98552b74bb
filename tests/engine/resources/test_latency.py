"""The calibrated latency model: its loop counts, its fitted coefficients and its errors."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import pytest

from searches.engine.resources.graph import build_graph
from searches.engine.resources.latency import (
    CORES,
    FAMILY_VARIANTS,
    coefficients,
    features,
    instructions_to_ms,
    latency_label,
    latency_ms,
    predict_instructions,
)
from searches.engine.resources.opgraph import OpGraph
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling, same_padding

pytestmark = pytest.mark.engine

ARCH = Architecture(
    (8, 8, 1),
    10,
    (
        ConvBlock((ConvLayer("conv2d", 3, 8),)),
        ConvBlock((ConvLayer("dwconv2d", 3, None), ConvLayer("conv1x1", 1, 8))),
        ConvBlock((ConvLayer("conv1x1", 1, 8),), branch=True),
    ),
    Pooling("max", 2),
    (Dense(16),),
)


def _graph(arch: Architecture = ARCH) -> OpGraph:
    return build_graph(arch)[0]


def _with_filters(filters: int) -> Architecture:
    first = ConvBlock((ConvLayer("conv2d", 3, filters),))
    return replace(ARCH, conv_blocks=(first, *ARCH.conv_blocks[1:]))


def test_every_core_family_has_fitted_coefficients() -> None:
    data = coefficients()
    assert set(data["families"]) == set(FAMILY_VARIANTS)
    assert "bench/bench_latency.py --calibrate" in data["command"]
    for weights in data["families"].values():
        assert weights and all(value > 0 for value in weights.values())


@pytest.mark.parametrize("core", sorted(CORES))
def test_more_filters_cost_more_instructions_on_every_core(core: str) -> None:
    counts = [predict_instructions(_graph(_with_filters(f)), core) for f in (4, 8, 16, 32)]
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_latency_is_instructions_times_cpi_over_clock() -> None:
    graph = _graph()
    insns = predict_instructions(graph, "cortex-m4f")
    assert latency_ms(graph, "cortex-m4f", 80.0) == pytest.approx(insns * 1.3 / 80e3)
    assert instructions_to_ms(2_063_794, "cortex-m4f", 80.0) == pytest.approx(2_063_794 * 1.3 / 80e3)
    # the M7 runs the M4's code (same family) at a lower estimated CPI
    assert predict_instructions(graph, "cortex-m7") == insns
    assert latency_ms(graph, "cortex-m7", 80.0) < latency_ms(graph, "cortex-m4f", 80.0)


def test_the_dsp_kernels_need_fewer_instructions_than_plain_c() -> None:
    graph = _graph(_with_filters(32))
    m0, m3, m4 = (predict_instructions(graph, c) for c in ("cortex-m0plus", "cortex-m3", "cortex-m4f"))
    assert m4 < m3 < m0


def test_bad_input_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown core 'cortex-a53'"):
        latency_ms(_graph(), "cortex-a53", 80.0)
    with pytest.raises(ValueError, match="clock_mhz must be positive"):
        latency_ms(_graph(), "cortex-m4f", 0.0)
    with pytest.raises(ValueError, match="unknown kernel variant 'neon'"):
        features(_graph(), "neon")
    # a graph read back from JSON has lost the kernel sizes the loops depend on
    with pytest.raises(ValueError, match="no attributes"):
        predict_instructions(OpGraph.from_json(_graph().to_json()), "cortex-m4f")


def test_uncalibrated_cores_say_so() -> None:
    assert latency_label("cortex-m4f") == "estimated (calibrated model)"
    for core in ("avr", "xtensa-lx7"):
        assert not CORES[core].calibrated
        assert "uncalibrated" in latency_label(core)


# ---- the loop counts against a brute-force walk of the kernels --------------------------------------


def _dw_taps(ih: int, iw: int, k: int, stride: int, padding: str) -> dict[str, int]:
    """Classify every tap of every output pixel of nnk_dwconv2d the slow way."""
    oh, ow = (-(-ih // stride), -(-iw // stride)) if padding == "same" else ((ih - k) // stride + 1,) * 2
    top = same_padding(ih, k, stride)[0] if padding == "same" else 0
    left = same_padding(iw, k, stride)[0] if padding == "same" else 0
    counts = {"interior": 0, "valid": 0, "off_row": 0, "off_col": 0}
    for oy in range(oh):
        for ox in range(ow):
            iy0, ix0 = oy * stride - top, ox * stride - left
            if iy0 >= 0 and ix0 >= 0 and iy0 + k <= ih and ix0 + k <= iw:
                counts["interior"] += 1
                continue
            for ky in range(k):
                for kx in range(k):
                    iy, ix = iy0 + ky, ix0 + kx
                    key = "off_row" if not 0 <= iy < ih else ("off_col" if not 0 <= ix < iw else "valid")
                    counts[key] += 1
    return counts


@pytest.mark.parametrize(
    ("size", "k", "stride", "padding"),
    [(8, 3, 1, "same"), (9, 5, 2, "same"), (7, 7, 1, "same"), (10, 3, 2, "valid"), (28, 7, 2, "same")],
)
def test_depthwise_border_taps_match_a_brute_force_walk(size: int, k: int, stride: int, padding: str) -> None:
    arch = Architecture(
        (size, size, 9), 10, (ConvBlock((ConvLayer("dwconv2d", k, None, stride, padding),)),), None, ()
    )
    f = defaultdict(float, features(_graph(arch), "dsp"))  # 9 channels: two groups of four, a single
    taps = _dw_taps(size, size, k, stride, padding)
    assert f["dw_in_quad"] == 2 * taps["interior"] and f["dw_in_single_tap"] == taps["interior"] * k * k
    assert f["dw_border_single_tap"] == taps["valid"]
    assert f["dw_border_single_offrow"] == taps["off_row"]
    assert f["dw_border_single_offcol"] == taps["off_col"]
    assert f["dw_border_quad_tap"] == 2 * taps["valid"]


def test_pointwise_blocks_follow_the_variant() -> None:
    # 5x5 pixels (one left over after pairs), 7 output channels (one left over after pairs)
    arch = Architecture((5, 5, 6), 10, (ConvBlock((ConvLayer("conv1x1", 1, 7),)),), None, ())
    dsp, m0 = (defaultdict(float, features(_graph(arch), v)) for v in ("dsp", "plain1"))
    assert (
        dsp["pw_dot22_call"] == 12 * 3 and dsp["pw_dot2_call"] == 12 * 1 + 1 * 3 and dsp["pw_dot_call"] == 1
    )
    assert dsp["pw_dot22_step"] == 36 and dsp["pw_dot22_byte"] == 36 * 2  # 6 bytes: one 4-byte step, 2 left
    assert m0.get("pw_dot22_call", 0) == 0 and m0["pw_dot2_call"] == 25 * 3 and m0["pw_dot_call"] == 25
    assert m0["pw_dot2_byte"] == 25 * 3 * 6 and m0.get("pw_dot2_step", 0) == 0
    assert dsp["pw_requant"] == m0["pw_requant"] == 25 * 7


def test_convolution_pairs_pixels_with_the_same_valid_taps() -> None:
    # 6 wide, k3 'same': column 0 and column 5 are padded, 1..4 interior and pair up
    arch = Architecture((6, 6, 4), 10, (ConvBlock((ConvLayer("conv2d", 3, 2),)),), None, ())
    dsp, m0 = (defaultdict(float, features(_graph(arch), v)) for v in ("dsp", "plain1"))
    assert dsp["conv_pass"] == 6 * 4  # columns 0, (1,2), (3,4), 5 on each of 6 rows
    assert m0["conv_pass"] == 36
    assert dsp["conv_requant"] == m0["conv_requant"] == 36 * 2
