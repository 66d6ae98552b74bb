"""Latency per core: instructions predicted from the generated kernels' loops x cycles per instruction.

The exported C (``deploy/c/kernels.h``, inlined into one function per layer with the layer's
shape constant) runs one of three kernel variants:

``dsp``     Cortex-M4/M7/M33: SXTB16 + SMLAD on four bytes a step, convolutions in 2 pixel x
            2 channel blocks, depthwise four channels a pass, dense four rows a pass;
``plain``   Cortex-M3: the same blocking with plain C multiply-accumulates;
``plain1``  Cortex-M0+: plain C, one pixel per pass, dense two rows a pass (eight low registers).

:func:`features` walks each operator's loops as those kernels do -- which output pixels pair up,
which are interior or on the border, how many 4-byte steps and leftover bytes each dot product
takes, how many padded taps a border pixel sums -- and counts the events whose cost is one
coefficient each.  The coefficients are fitted per core family by least squares (non-negative) to
QEMU instruction counts of random generated models (``bench/bench_latency.py --calibrate``) and
stored in ``latency_coefficients.json`` next to this file, with the command that produced them
and the held-out error.  This module must not import ``deploy/``: it only mirrors its loops.

latency = predicted instructions x cycles per instruction (CPI) / clock.  The CPIs are documented
estimates per core (docs/resource-model.md), not measurements: QEMU counts instructions, not
cycles.  AVR and Xtensa have no QEMU model here: they reuse a plain-C model (M0+ and M3) with an
estimated cycles-per-instruction factor and are labelled uncalibrated.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from searches.engine.resources.opgraph import Op, OpGraph
from searches.engine.space.arch import same_padding

COEFFICIENTS_PATH = Path(__file__).resolve().parent / "latency_coefficients.json"
VARIANTS = ("dsp", "plain", "plain1")


@dataclass(frozen=True)
class Core:
    key: str
    label: str
    family: str  # whose fitted coefficients predict the instruction count
    cycles_per_instruction: float
    calibrated: bool  # False: no QEMU measurement of this core; the family is a stand-in

    @property
    def variant(self) -> str:
        return FAMILY_VARIANTS[self.family]


# Core family -> kernel variant it compiles to (see the module docstring).
FAMILY_VARIANTS = {"cortex-m0plus": "plain1", "cortex-m3": "plain", "cortex-m4": "dsp", "cortex-m33": "dsp"}
FAMILY_LABELS = {
    "cortex-m0plus": "Cortex-M0+",
    "cortex-m3": "Cortex-M3",
    "cortex-m4": "Cortex-M4/M7",
    "cortex-m33": "Cortex-M33",
}

# Cycles per instruction are *estimates* for this code mix (loads, SMLAD/MUL, branches), from the
# cores' documented timings (docs/resource-model.md): single-issue M0+/M3/M4/M33 pay 2 cycles for
# most loads and 2-3 for a taken branch; the M7 dual-issues.  AVR runs the M0+'s plain-C model
# with a factor for doing 32-bit arithmetic 8 bits at a time; Xtensa LX7 the M3's.
CORES: dict[str, Core] = {
    c.key: c
    for c in (
        Core("avr", "AVR 8-bit", "cortex-m0plus", 4.0, calibrated=False),
        Core("cortex-m0plus", "Cortex-M0+", "cortex-m0plus", 1.4, calibrated=True),
        Core("cortex-m3", "Cortex-M3", "cortex-m3", 1.3, calibrated=True),
        Core("cortex-m4f", "Cortex-M4F", "cortex-m4", 1.3, calibrated=True),
        Core("cortex-m7", "Cortex-M7", "cortex-m4", 0.8, calibrated=True),
        Core("cortex-m33", "Cortex-M33", "cortex-m33", 1.3, calibrated=True),
        Core("xtensa-lx7", "Xtensa LX7", "cortex-m3", 1.2, calibrated=False),
    )
}


def core(key: str) -> Core:
    """The core called ``key``; a clear error naming the known ones otherwise."""
    if key not in CORES:
        raise ValueError(f"unknown core {key!r}; known: {', '.join(CORES)}")
    return CORES[key]


# ---- features: the generated loops, counted ----------------------------------------------------


def _span(lo: int, hi: int) -> tuple[int, int]:
    return lo, max(hi, lo)


def _conv_taps(origin: int, k: int, size: int) -> tuple[int, int]:
    """[lo, hi) of the kernel taps inside the input for a window starting at ``origin``."""
    return _span(-origin if origin < 0 else 0, size - origin if origin + k > size else k)


def _dot(f: dict[str, float], name: str, calls: int, n: int, dsp: bool) -> None:
    """``calls`` dot products of ``n`` bytes: 4-byte SIMD steps on DSP cores, then single bytes."""
    steps = n // 4 if dsp else 0
    f[f"{name}_call"] += calls
    f[f"{name}_step"] += calls * steps
    f[f"{name}_byte"] += calls * (n - 4 * steps)


def _padding_before(op: Op, ih: int, iw: int, k: int, stride: int) -> tuple[int, int]:
    """Rows above and columns left of the input that a window op pads (0, 0 for 'valid')."""
    if op.attrs["padding"] != "same":
        return 0, 0
    return same_padding(ih, k, stride)[0], same_padding(iw, k, stride)[0]


def _conv2d(f: dict[str, float], op: Op, shapes: dict[str, tuple[int, ...]], variant: str) -> None:
    ih, iw, ic = shapes[op.inputs[0]]
    oh, ow, oc = shapes[op.outputs[0]]
    k, stride = int(op.attrs["kernel"]), int(op.attrs["stride"])  # type: ignore[call-overload]
    top, left = _padding_before(op, ih, iw, k, stride)
    dsp, pairs = variant == "dsp", variant != "plain1"
    blocks = (oc + 1) // 2
    # Columns: nnk_conv2d pairs two pixels when both have the same valid taps.
    columns = []  # (pair, kx_lo, kx_hi)
    ox = 0
    while ox < ow:
        ix0 = ox * stride - left
        kx = _conv_taps(ix0, k, iw)
        pair = pairs and ox + 1 < ow and _conv_taps(ix0 + stride, k, iw) == kx
        columns.append((pair, *kx))
        ox += 2 if pair else 1
    # With 'valid' padding every window is whole: GCC sees constant row and byte counts and
    # unrolls the dot products; a single input channel makes them a few bytes long.
    prefix = "conv" + ("v" if op.attrs["padding"] == "valid" else "") + ("1" if ic == 1 else "")
    f["conv_row"] += oh
    for oy in range(oh):
        ky_lo, ky_hi = _conv_taps(oy * stride - top, k, ih)
        rows = ky_hi - ky_lo
        for pair, kx_lo, kx_hi in columns:
            f["conv_pass"] += 1
            f["conv_block"] += blocks
            dot = f"{prefix}_dot22" if pair else f"{prefix}_dot2"
            _dot(f, dot, (oc // 2) * rows, (kx_hi - kx_lo) * ic, dsp)
            # a lone last channel passes the same filter twice: GCC loads and unpacks it once
            _dot(f, f"{dot}s", (oc % 2) * rows, (kx_hi - kx_lo) * ic, dsp)
            if ky_lo > 0 or ky_hi < k or kx_lo > 0 or kx_hi < k:
                # nnk_padsum2: weight sums of the taps on padding, row by row
                f["pad_block"] += blocks
                f["pad_row"] += blocks * k
                for ky in range(k):
                    if ky < ky_lo or ky >= ky_hi:
                        _dot(f, "wsum", blocks, k * ic, dsp)
                    else:
                        _dot(f, "wsum", blocks, kx_lo * ic, dsp)
                        _dot(f, "wsum", blocks, (k - kx_hi) * ic, dsp)
            f["conv_requant"] += oc * (2 if pair else 1)


def _conv1x1(f: dict[str, float], op: Op, shapes: dict[str, tuple[int, ...]], variant: str) -> None:
    ih, iw, ic = shapes[op.inputs[0]]
    oc = shapes[op.outputs[0]][2]
    dsp, pixels = variant == "dsp", ih * iw
    pairs = pixels // 2 if variant != "plain1" else 0
    singles = pixels - 2 * pairs
    half, odd = oc // 2, oc % 2
    pw = "pw1" if ic == 1 else "pw"  # one input channel: each dot product is a single multiply
    f[f"{pw}_pass"] += pairs + singles
    f[f"{pw}_block"] += (pairs + singles) * (half + odd)
    _dot(f, f"{pw}_dot22", pairs * half, ic, dsp)
    _dot(f, f"{pw}_dot2", pairs * odd + singles * half, ic, dsp)
    _dot(f, f"{pw}_dot", singles * odd, ic, dsp)
    f[f"{pw}_requant"] += pixels * oc


def _dwconv2d(f: dict[str, float], op: Op, shapes: dict[str, tuple[int, ...]], variant: str) -> None:
    ih, iw, c = shapes[op.inputs[0]]
    oh, ow, _ = shapes[op.outputs[0]]
    k, stride = int(op.attrs["kernel"]), int(op.attrs["stride"])  # type: ignore[call-overload]
    top, left = _padding_before(op, ih, iw, k, stride)
    row_taps = [_conv_taps(oy * stride - top, k, ih) for oy in range(oh)]
    col_taps = [_conv_taps(ox * stride - left, k, iw) for ox in range(ow)]
    rows = sum(1 for lo, hi in row_taps if hi - lo == k)
    cols = sum(1 for lo, hi in col_taps if hi - lo == k)
    interior, pixels = rows * cols, oh * ow
    # A border pixel's kernel row is either off the input (every tap adds its weight to the
    # padding sum) or split into padding taps, valid taps (a multiply-accumulate) and padding
    # taps again: loops of a few trips whose setup is paid per row.
    valid = sum(hr - lr for lr, hr in row_taps) * sum(hc - lc for lc, hc in col_taps) - interior * k * k
    off_row = sum(k - (hr - lr) for lr, hr in row_taps) * ow * k
    off_col = pixels * k * k - interior * k * k - valid - off_row
    quads = c // 4 if variant == "dsp" else 0
    singles = c - 4 * quads
    # Interior taps sit kx * c bytes from the window's origin: Thumb-1 (the M0+) reaches an
    # offset over 255 only through a constant loaded from memory.  One channel is its own case:
    # GCC then walks the window with byte offsets and no channel loop.
    far = k * sum(1 for kx in range(k) if kx * c > 255)
    # A pass run once (one 4-channel pass, one left-over channel) is straight-line code; two or
    # more are a loop, the same code for every count (the kernel hides the count from GCC).
    # Either way a pass runs the same taps and rows, so those costs are shared by width.
    f["dw_pixel"] += pixels
    f["dw_border_pixel"] += pixels - interior
    for width, n in (("quad", quads), ("single", singles)):
        passes = f"{width}1" if n == 1 else width
        f[f"dw_in_{passes}"] += interior * n
        f[f"dw_border_{passes}"] += (pixels - interior) * n
        f[f"dw_in_{width}_tap"] += interior * n * k * k
        f[f"dw_in_{width}_far"] += interior * n * far
        f[f"dw_in_{width}_row"] += interior * n * k
        f[f"dw_border_{width}_tap"] += valid * n
        f[f"dw_border_{width}_offrow"] += off_row * n
        f[f"dw_border_{width}_offcol"] += off_col * n
        f[f"dw_border_{width}_row"] += (pixels - interior) * n * k
    f["dw_requant"] += pixels * c


def _dense(f: dict[str, float], op: Op, shapes: dict[str, tuple[int, ...]], variant: str) -> None:
    ih, iw, ic = shapes[op.inputs[0]]
    n_in, n_out = ih * iw * ic, shapes[op.outputs[0]][2]
    dsp, rows = variant == "dsp", 2 if variant == "plain1" else 4  # ARMv6-M: two rows a pass
    _dot(f, f"fc_dot{rows}", n_out // rows, n_in, dsp)
    _dot(f, "fc_dot", n_out % rows, n_in, dsp)
    f["fc_requant"] += n_out


def _pool(f: dict[str, float], op: Op, shapes: dict[str, tuple[int, ...]], variant: str) -> None:
    ih, iw, c = shapes[op.inputs[0]]
    oh, ow, _ = shapes[op.outputs[0]]
    size = op.attrs["size"]
    kh, kw = (ih, iw) if size == "global" else (int(size), int(size))  # type: ignore[call-overload]
    # GCC unrolls a window of up to 3 x 3 completely (its loops have constant trip counts)
    name, out = (f"{op.kind}{kh}x{kw}" if kh * kw <= 9 else op.kind), oh * ow * c
    f[f"{name}_pixel"] += oh * ow
    f[f"{name}_out"] += out
    f[f"{name}_row"] += out * kh
    f[f"{name}_tap"] += out * kh * kw


def _add(f: dict[str, float], op: Op, shapes: dict[str, tuple[int, ...]], variant: str) -> None:
    h, w, c = shapes[op.outputs[0]]
    # An n-input Add runs as a chain of n - 1 binary nnk_add calls over every element.
    links = len(op.inputs) - 1
    f["add_call"] += links
    f["add_elem"] += h * w * c * links


_OPS = {
    "conv2d": _conv2d,
    "conv1x1": _conv1x1,
    "dwconv2d": _dwconv2d,
    "dense": _dense,
    "maxpool": _pool,
    "avgpool": _pool,
    "add": _add,
}


def layer_features(graph: OpGraph, variant: str) -> list[tuple[Op, dict[str, float]]]:
    """Each operator with the event counts of its layer function, for kernel ``variant``.

    Every feature name starts with its op kind's prefix (``conv_``, ``pw_``, ``dw_``, ``fc_``,
    ``maxpool_``, ``avgpool_``, ``add_``, ``pad_``/``wsum_`` for conv2d's padded-tap sums, and
    ``op_<kind>`` for the call itself), so a layer's cost is fitted from that op kind's layers
    alone."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel variant {variant!r}; known: {', '.join(VARIANTS)}")
    shapes = {t.id: t.shape for t in graph.tensors}
    layers = []
    for op in graph.ops:
        if op.kind not in _OPS:
            raise ValueError(f"op {op.id!r}: no latency model for op kind {op.kind!r}")
        if op.kind in ("conv2d", "dwconv2d", "maxpool", "avgpool") and not op.attrs:
            raise ValueError(f"op {op.id!r} has no attributes (kernel, stride...): build it with build_graph")
        f: dict[str, float] = defaultdict(float)
        f[f"op_{op.kind}"] = 1.0
        _OPS[op.kind](f, op, shapes, variant)
        layers.append((op, {n: v for n, v in f.items() if v}))
    return layers


def run_features(graph: OpGraph) -> dict[str, float]:
    """Event counts of ``<name>_run`` itself: the input copy and one call per layer."""
    return {"run": 1.0, "copy_in": float(graph.tensors[0].bytes), "run_call": float(len(graph.ops))}


def features(graph: OpGraph, variant: str) -> dict[str, float]:
    """Event counts of one inference of ``graph`` compiled to kernel ``variant`` (see module doc)."""
    total: dict[str, float] = defaultdict(float, run_features(graph))
    for _, f in layer_features(graph, variant):
        for name, value in f.items():
            total[name] += value
    return dict(total)


# ---- the fitted model ---------------------------------------------------------------------------


@cache
def _coefficients(path: Path = COEFFICIENTS_PATH) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def coefficients() -> dict[str, Any]:
    """The checked-in fit: {"families": {family: {feature: instructions}}, "command": ..., ...}."""
    return _coefficients()


def predict_instructions(graph: OpGraph, core_key: str) -> float:
    """Predicted instructions of one inference (``<name>_run``) of ``graph`` on ``core_key``."""
    c = core(core_key)
    weights: dict[str, float] = coefficients()["families"][c.family]
    return sum(weights.get(name, 0.0) * value for name, value in features(graph, c.variant).items())


def _check_clock(clock_mhz: float) -> None:
    if not clock_mhz > 0:
        raise ValueError(f"clock_mhz must be positive, got {clock_mhz}")


def instructions_to_ms(instructions: float, core_key: str, clock_mhz: float) -> float:
    """instructions x the core's estimated cycles per instruction / clock, in milliseconds."""
    _check_clock(clock_mhz)
    return instructions * core(core_key).cycles_per_instruction / (clock_mhz * 1e3)


def latency_ms(graph: OpGraph, core_key: str, clock_mhz: float) -> float:
    """Estimated latency of one inference: predicted instructions x CPI(core) / clock."""
    _check_clock(clock_mhz)
    return instructions_to_ms(predict_instructions(graph, core_key), core_key, clock_mhz)


def latency_label(core_key: str) -> str:
    """How the latency of ``core_key`` is estimated, for the UI and reports."""
    c = core(core_key)
    if c.calibrated:
        return "estimated (calibrated model)"
    return f"estimated (uncalibrated: {FAMILY_LABELS[c.family]} model, no QEMU for {c.label})"
