"""The int8 kernels on random shapes, strides, paddings and zero points, byte for byte.

Every case calls one kernel of ``c/kernels.h`` as the generated header does (literal
arguments, so the inlined, shape-specialised code is what runs) and compares its output with
the integer reference (:mod:`searches.engine.deploy.reference`).  One program holds all cases
and runs on every path the kernels have: the host compiler (plain C), a Cortex-M0+ (plain C
on Thumb-1) and the Cortex-M4 and M33 (DSP extension) under QEMU.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from searches.engine.deploy.int8 import WeightedOp
from searches.engine.deploy.qemu import qemu_run
from searches.engine.deploy.toolchain import (
    C_DIR,
    HOST_CFLAGS,
    TARGETS,
    arm_link,
    host_compile,
    missing_tools,
)
from searches.engine.resources.opgraph import Op
from searches.engine.space.arch import same_padding
from searches.engine.training.int8_scheme import conv_int, dense_int, requantize

CASES_PER_KIND = 14
PROGRAM_HEAD = """#include <stdint.h>
#include "kernels.h"
#ifdef HOST
#include <stdio.h>
static void emit(const int8_t *b, int n)
{
    int i;
    printf("o ");
    for (i = 0; i < n; ++i) printf("%02x", (unsigned)(uint8_t)b[i]);
    printf("\\n");
}
#else
#include "semihost.h"
static void emit(const int8_t *b, int n)
{
    int i;
    for (i = 0; i < n; i += 256) /* 256 bytes a line */
        sh_put_hex_line(i == 0 ? "o " : "+ ", b + i, (size_t)(n - i));
}
#endif
"""


@dataclass(frozen=True)
class Case:
    """A kernel call (C statement), its constant arrays and the reference output."""

    arrays: str
    call: str
    expected: bytes


def _c_array(ctype: str, name: str, values: np.ndarray) -> str:
    body = ", ".join(str(int(v)) for v in values.reshape(-1))
    return f"static const {ctype} {name}[{values.size}] = {{{body}}};\n"


def _params(rng: np.random.Generator, w_shape: tuple[int, ...], channels: int, fan_in: int) -> WeightedOp:
    weights = rng.integers(-127, 128, w_shape).astype(np.int8)
    mult = rng.integers(1 << 30, 1 << 31, channels)
    mult[rng.random(channels) < 0.1] = 1 << 30
    # a right shift that keeps most outputs inside int8, sometimes the rare r <= 1 and left shifts
    typical = -int(np.ceil(np.log2(127 * 127 * np.sqrt(fan_in) + 1))) + 6
    shift = typical + rng.integers(-2, 3, channels)
    rare = rng.random(channels) < 0.15
    shift[rare] = rng.integers(-1, 3, int(rare.sum()))
    zp_out = int(rng.integers(-128, 128))
    bias_range = int(5000 * np.sqrt(fan_in))
    act_min, act_max = (max(-128, zp_out), 127) if rng.random() < 0.5 else (-128, 127)
    if rng.random() < 0.15:
        act_max = int(rng.integers(act_min, 128))
    return WeightedOp(
        weights=weights,
        bias=rng.integers(-bias_range, bias_range + 1, channels).astype(np.int32),
        multiplier=mult.astype(np.int32),
        shift=shift.astype(np.int8),
        act_min=act_min,
        act_max=act_max,
        weight_scale=np.ones(channels, dtype=np.float32),  # unused: the kernels see M0 and shift
    ), zp_out  # type: ignore[return-value]


def _conv_case(rng: np.random.Generator, i: int, kind: str) -> Case:
    k = int(rng.choice([3, 5, 7])) if kind == "dwconv2d" else int(rng.choice([1, 3, 5]))
    padding = str(rng.choice(["same", "valid"]))
    stride = int(rng.integers(1, 3))
    lo = k if padding == "valid" else 1
    h, w = int(rng.integers(lo, lo + 8)), int(rng.integers(lo, lo + 8))
    c = int(rng.integers(1, 14))
    oc = c if kind == "dwconv2d" else int(rng.integers(1, 8))
    w_shape = (k, k, c) if kind == "dwconv2d" else (oc, k, k, c)
    p, zp_out = _params(rng, w_shape, oc, k * k * (1 if kind == "dwconv2d" else c))  # type: ignore[misc]
    zp_in = int(rng.integers(-128, 128))
    x = rng.integers(-128, 128, (1, h, w, c)).astype(np.int64)
    op = Op("op", kind, ("x",), ("y",), {"kernel": k, "stride": stride, "padding": padding})
    y = conv_int(op, p, x, zp_in, zp_out)
    _, oh, ow, _ = y.shape
    top = same_padding(h, k, stride)[0] if padding == "same" else 0
    left = same_padding(w, k, stride)[0] if padding == "same" else 0
    out_dims = f"{oh}, {ow}, {oc}" if kind == "conv2d" else f"{oh}, {ow}"
    call = (
        f"nnk_{kind}(x{i}, {h}, {w}, {c}, w{i}, b{i}, m{i}, s{i}, out, {out_dims}, {k}, {stride}, "
        f"{top}, {left}, {zp_in}, {zp_out}, {p.act_min}, {p.act_max})"
    )
    return Case(_arrays(i, x, p), f"{call}; emit(out, {y.size});", y.astype(np.int8).tobytes())


def _conv1x1_case(rng: np.random.Generator, i: int) -> Case:
    pixels, ic, oc = int(rng.integers(1, 14)), int(rng.integers(1, 38)), int(rng.integers(1, 10))
    p, zp_out = _params(rng, (oc, 1, 1, ic), oc, ic)  # type: ignore[misc]
    x = rng.integers(-128, 128, (1, 1, pixels, ic)).astype(np.int64)
    op = Op("op", "conv1x1", ("x",), ("y",), {"kernel": 1, "stride": 1, "padding": "valid"})
    y = conv_int(op, p, x, int(rng.integers(-128, 128)), zp_out)
    act = f"{zp_out}, {p.act_min}, {p.act_max}"
    call = f"nnk_conv1x1(x{i}, {pixels}, {ic}, w{i}, b{i}, m{i}, s{i}, out, {oc}, {act})"
    return Case(_arrays(i, x, p), f"{call}; emit(out, {y.size});", y.astype(np.int8).tobytes())


def _dense_case(rng: np.random.Generator, i: int) -> Case:
    n_in, n_out = int(rng.integers(1, 90)), int(rng.integers(1, 12))
    p, zp_out = _params(rng, (n_out, n_in), n_out, n_in)  # type: ignore[misc]
    x = rng.integers(-128, 128, (1, n_in)).astype(np.int64)
    y = dense_int(p, x, zp_out)
    act = f"{zp_out}, {p.act_min}, {p.act_max}"
    call = f"nnk_dense(x{i}, {n_in}, w{i}, b{i}, m{i}, s{i}, out, {n_out}, {act})"
    return Case(_arrays(i, x, p), f"{call}; emit(out, {y.size});", y.astype(np.int8).tobytes())


def _arrays(i: int, x: np.ndarray, p: WeightedOp) -> str:
    return (
        _c_array("int8_t", f"x{i}", x)
        + _c_array("int8_t", f"w{i}", p.weights)
        + _c_array("int32_t", f"b{i}", p.bias)
        + _c_array("int32_t", f"m{i}", p.multiplier)
        + _c_array("int8_t", f"s{i}", p.shift)
    )


def cases(seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    out: list[Case] = []
    for _ in range(CASES_PER_KIND):
        out.append(_conv_case(rng, len(out), "conv2d"))
        out.append(_conv_case(rng, len(out), "dwconv2d"))
        out.append(_conv1x1_case(rng, len(out)))
        out.append(_dense_case(rng, len(out)))
    return out


def program(all_cases: list[Case]) -> str:
    biggest = max(len(c.expected) for c in all_cases)
    body = "".join(f"    {c.call}\n" for c in all_cases)
    arrays = "".join(c.arrays for c in all_cases)
    main = f"int main(void)\n{{\n{body}    return 0;\n}}\n"
    return f"{PROGRAM_HEAD}{arrays}static int8_t out[{biggest}];\n{main}"


def outputs(printed: str) -> list[bytes]:
    got: list[bytes] = []
    for line in printed.splitlines():
        if line.startswith("o "):
            got.append(bytes.fromhex(line[2:]))
        elif line.startswith("+ "):
            got[-1] += bytes.fromhex(line[2:])
    return got


def check(printed: str, all_cases: list[Case]) -> None:
    got = outputs(printed)
    assert len(got) == len(all_cases)
    pairs = enumerate(zip(got, all_cases, strict=True))
    wrong = [c.call.split("(")[0] + f" case {i}" for i, (g, c) in pairs if g != c.expected]
    assert not wrong, f"{len(wrong)} cases differ from the reference: {wrong}"


@pytest.fixture(scope="module")
def the_cases() -> list[Case]:
    return cases(seed=13)


def test_the_cases_cover_the_output_range(the_cases: list[Case]) -> None:
    values = np.frombuffer(b"".join(c.expected for c in the_cases), dtype=np.int8)
    # neither all saturated nor all equal: the comparison can fail
    assert len(np.unique(values)) > 200
    assert np.mean((values == -128) | (values == 127)) < 0.5


def test_plain_c_on_the_host_is_bit_exact(the_cases: list[Case], tmp_path: Path) -> None:
    src = tmp_path / "kernels_test.c"
    src.write_text(program(the_cases))
    exe = host_compile(
        [src],
        tmp_path / "kernels_test",
        include_dirs=[C_DIR],
        cflags=(*HOST_CFLAGS, "-DHOST", "-Wno-unused-function"),
    )
    check(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout, the_cases)


@pytest.mark.skipif(bool(missing_tools()), reason="needs arm-none-eabi-gcc and qemu-system-arm")
@pytest.mark.parametrize("core", ["cortex-m0plus", "cortex-m4f", "cortex-m33"])
def test_every_cortex_m_path_is_bit_exact(the_cases: list[Case], tmp_path: Path, core: str) -> None:
    src = tmp_path / "kernels_test.c"
    src.write_text(program(the_cases))
    target = TARGETS[core]
    image = arm_link(
        [src],
        tmp_path / "kernels_test.elf",
        target=target,
        flash_limit_bytes=target.board_flash_bytes,
        ram_limit_bytes=target.board_ram_bytes,
        extra_flags=("-Wno-unused-function",),
    )
    check(qemu_run(image).output, the_cases)


def test_requantisation_is_exact_for_every_shift_path(tmp_path: Path) -> None:
    """nnk_requant's shortcuts (right shifts 0, 1 and >= 2) equal the TFLite definition,
    including the extremes of the accumulator and of the multiplier."""
    rng = np.random.default_rng(5)
    accs = np.concatenate(
        [
            rng.integers(-(1 << 31), 1 << 31, 3000),
            rng.integers(-5000, 5000, 3000),
            [-(1 << 31), (1 << 31) - 1, -1, 0, 1, -(1 << 30), 1 << 30],
        ]
    )
    n = len(accs)
    mults = rng.integers(1 << 30, 1 << 31, n)
    mults[:50] = 1 << 30
    mults[50:100] = (1 << 31) - 1
    # mostly the shortcuts' edges (0, -1, -2), the rest from -12 to the rare left shifts
    shifts = np.where(rng.random(n) < 0.6, rng.integers(-2, 1, n), rng.integers(-12, 3, n))
    table = ",".join(f"{{{a}LL, {m}, {s}}}" for a, m, s in zip(accs, mults, shifts, strict=True))
    src = tmp_path / "requant_test.c"
    src.write_text(
        '#include <stdint.h>\n#include <stdio.h>\n#include "kernels.h"\n'
        f"static const struct {{ long long acc; int32_t mult, shift; }} t[] = {{{table}}};\n"
        "int main(void) {\n"
        "    unsigned i;\n"
        "    for (i = 0; i < sizeof t / sizeof t[0]; ++i)\n"
        '        printf("%ld\\n", (long)nnk_requant((int32_t)t[i].acc, t[i].mult, t[i].shift));\n'
        "    return 0;\n}\n"
    )
    exe = host_compile(
        [src], tmp_path / "requant_test", include_dirs=[C_DIR], cflags=(*HOST_CFLAGS, "-Wno-unused-function")
    )
    printed = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    got = [int(v) for v in printed.split()]
    want = requantize(accs.astype(np.int64), mults.astype(np.int64), shifts.astype(np.int64)).tolist()
    assert got == want
