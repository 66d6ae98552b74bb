"""Instructions per MAC of the int8 kernels (searches/engine/deploy/c/kernels.h) on a Cortex-M4.

Run ``python bench/bench_kernels.py`` (writes the "Kernel instructions per MAC (Cortex-M4)"
section of docs/benchmarks.md; ``--no-docs`` only prints).

Each kernel is built twice for the Cortex-M4F (mps2-an386) at -O2: plain C (``-DNNK_NO_DSP``)
and with the DSP extension (SXTB16 + SMLAD).  A small program fills random int8 inputs and
weights, then calls the kernel ``REPS`` times; REPS is a volatile constant, so the images for 1
and 2 calls have identical code and the difference of their instruction counts (nasweb's QEMU
plugin, exact) is one kernel call.  Shapes are passed through volatile variables, so the
kernel is compiled generically, as the exported header compiles it for a model that calls it
at several shapes.  The count includes everything the call does: loops, padding, the
requantisation of every output.  Both variants print a checksum of their outputs: equal
checksums mean the DSP variant is bit-exact with plain C on these inputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import replace_section
from searches.engine.deploy.qemu import qemu_run
from searches.engine.deploy.toolchain import TARGETS, arm_link, tool_version

DOCS = ROOT / "docs" / "benchmarks.md"
TITLE = "Kernel instructions per MAC (Cortex-M4)"
COMMAND = "python bench/bench_kernels.py"
GOAL = 3.0


@dataclass(frozen=True)
class Case:
    """One kernel call: a C expression with its shapes and its MAC count."""

    label: str
    kernel: str
    shape: str
    setup: dict[str, int]
    call: str
    macs: int
    in_bytes: int
    w_bytes: int
    out_bytes: int
    channels: int


def _cases() -> list[Case]:
    return [
        Case(
            "conv2d 3x3, same padding",
            "conv2d",
            "16x16x16 -> 16x16x16",
            {"H": 16, "W": 16, "C": 16, "K": 3, "OC": 16},
            "nnk_conv2d(in, H, W, C, w, bias, mult, shift, out, H, W, OC, K, 1, 1, 1, -3, 5, -128, 127)",
            16 * 16 * 16 * 9 * 16,
            16 * 16 * 16,
            16 * 9 * 16,
            16 * 16 * 16,
            16,
        ),
        Case(
            "conv1x1 (pointwise)",
            "conv1x1",
            "16x16x32 -> 16x16x32",
            {"P": 256, "C": 32, "OC": 32},
            "nnk_conv1x1(in, P, C, w, bias, mult, shift, out, OC, 5, -128, 127)",
            256 * 32 * 32,
            256 * 32,
            32 * 32,
            256 * 32,
            32,
        ),
        Case(
            "depthwise 3x3, same padding",
            "dwconv2d",
            "16x16x32 -> 16x16x32",
            {"H": 16, "W": 16, "C": 32, "K": 3},
            "nnk_dwconv2d(in, H, W, C, w, bias, mult, shift, out, H, W, K, 1, 1, 1, -3, 5, -128, 127)",
            16 * 16 * 32 * 9,
            16 * 16 * 32,
            9 * 32,
            16 * 16 * 32,
            32,
        ),
        Case(
            "requantise one output (nnk_requant + nnk_saturate)",
            "requant",
            "1024 values",
            {"N": 1024},
            "for (j = 0; j < N; ++j) "
            "out[j] = nnk_saturate(nnk_requant(acc[j], mult[j & 63], shift[j & 63]) + 5, -128, 127)",
            0,
            0,
            0,
            1024,
            64,
        ),
        Case(
            "dense",
            "dense",
            "512 -> 64",
            {"N": 512, "OC": 64},
            "nnk_dense(in, N, w, bias, mult, shift, out, OC, 5, -128, 127)",
            512 * 64,
            512,
            512 * 64,
            64,
            64,
        ),
    ]


PROGRAM = r"""
#include <stdint.h>
#include "kernels.h"
#include "semihost.h"

static volatile const uint32_t reps = REPS;
static int8_t in[IN_BYTES + 1];
static int32_t acc[OUT_BYTES];
static int8_t w[W_BYTES + 1];
static int8_t out[OUT_BYTES];
static int32_t bias[CHANNELS];
static int32_t mult[CHANNELS];
static int8_t shift[CHANNELS];
SHAPES

static uint32_t state = 12345u;
static int8_t next_byte(void)
{
    state = state * 1664525u + 1013904223u;
    return (int8_t)(state >> 24);
}

int main(void)
{
    uint32_t i, sum = 0;
    int32_t j = 0;
    for (i = 0; i < IN_BYTES; ++i) in[i] = next_byte();
    for (i = 0; i < W_BYTES; ++i) w[i] = (int8_t)(next_byte() | 1); /* no -128: weights are symmetric */
    for (i = 0; i < OUT_BYTES; ++i) acc[i] = (int32_t)(state = state * 1664525u + 1013904223u) >> 12;
    for (i = 0; i < CHANNELS; ++i) {
        bias[i] = (int32_t)(next_byte()) * 37;
        mult[i] = 1518500250 + (int32_t)(next_byte()) * 1000000; /* M0 in [2^30, 2^31) */
        shift[i] = (int8_t)(-7 - (int32_t)(i % 3u));
    }
    for (i = 0; i < reps; ++i) {
        CALL;
    }
    (void)j;
    for (i = 0; i < OUT_BYTES; ++i) sum = sum * 31u + (uint8_t)out[i];
    sh_put_uint_line("checksum ", sum);
    return 0;
}
"""


def _source(case: Case, reps: int) -> str:
    shapes = "\n".join(f"static volatile int32_t v_{k} = {v};" for k, v in case.setup.items())
    call = case.call
    for k in sorted(case.setup, key=len, reverse=True):
        call = _replace_word(call, k, f"v_{k}")
    text = PROGRAM.replace("SHAPES", shapes).replace("CALL", call).replace("REPS", f"{reps}u")
    for key, value in (
        ("IN_BYTES", case.in_bytes),
        ("W_BYTES", case.w_bytes),
        ("OUT_BYTES", case.out_bytes),
        ("CHANNELS", case.channels),
    ):
        text = text.replace(key, f"{value}u")
    return text


def _replace_word(text: str, word: str, by: str) -> str:
    return re.sub(rf"(?<![A-Za-z_]){word}(?![A-Za-z_0-9])", by, text)


def measure(case: Case, dsp: bool, directory: Path) -> tuple[float, int, int]:
    """(instructions per MAC, instructions of one call, output checksum) for one variant."""
    target = TARGETS["cortex-m4f"]
    counts, checksums = [], set()
    for reps in (1, 2):
        src = directory / f"{case.kernel}-{'dsp' if dsp else 'plain'}-{reps}.c"
        src.write_text(_source(case, reps))
        image = arm_link(
            [src],
            src.with_suffix(".elf"),
            target=target,
            flash_limit_bytes=target.board_flash_bytes,
            ram_limit_bytes=target.board_ram_bytes,
            defines=() if dsp else ("NNK_NO_DSP",),
            extra_flags=("-Wno-unused-function", "-Wno-type-limits"),
        )
        run = qemu_run(image, count_instructions=True)
        assert run.instructions is not None
        counts.append(run.instructions)
        checksums.add(run.output.strip())
    if len(checksums) != 1:
        raise RuntimeError(f"{case.label}: outputs differ between 1 and 2 calls")
    per_call = counts[1] - counts[0]
    return per_call / (case.macs or case.out_bytes), per_call, int(checksums.pop().split()[-1])


def report(directory: Path) -> list[str]:
    """The markdown body of the section."""
    rows, notes = [], []
    for case in _cases():
        plain, plain_call, plain_sum = measure(case, False, directory)
        dsp, dsp_call, dsp_sum = measure(case, True, directory)
        exact = "yes" if plain_sum == dsp_sum else "**no**"
        print(f"{case.label}: plain {plain:.3f} ({plain_call}), DSP {dsp:.3f} ({dsp_call}) per unit")
        if not case.macs:
            notes.append(
                f"Requantising one output (`nnk_requant` + `nnk_saturate`, looped over {case.out_bytes} "
                f"random accumulators, loop included): {plain:.1f} instructions in the plain build, "
                f"{dsp:.1f} in the DSP build (bit-exact: {exact})."
            )
            continue
        rows.append(
            (
                case.label,
                case.shape,
                f"{case.macs:,}",
                f"{plain:.2f}",
                f"{dsp:.2f}",
                f"{1 - dsp / plain:.0%}",
                exact,
                "met" if dsp <= GOAL else "**missed**",
            )
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        "kernel",
        "shape (HxWxC)",
        "MACs per call",
        "plain C insns/MAC",
        "DSP insns/MAC",
        "fewer",
        "bit-exact",
        f"≤ {GOAL:g}",
    )
    table = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    return [
        f"Command: `{COMMAND}` ({tool_version('arm-none-eabi-gcc')}, -O2; "
        f"{tool_version('qemu-system-arm')}; host CPython {platform.python_version()}; "
        f"1-minute load average {load:.1f}). Instruction counts are exact and do not depend on the load.",
        "",
        "Instructions executed by one call of each kernel of `searches/engine/deploy/c/kernels.h` on a",
        "Cortex-M4F (`-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16`, QEMU mps2-an386),",
        "divided by the call's multiply-accumulates.  Counted with nasweb's TCG plugin as the",
        "difference between images that call the kernel once and twice (same code, the repeat",
        "count is a volatile constant); shapes are runtime values, so the kernel is compiled",
        "generically.  Everything the call does is included: loops, padding taps, requantising",
        "every output.  Plain C is built with `-DNNK_NO_DSP`; the DSP variant uses SXTB16 + SMLAD",
        "(dot products) and SMLABB/SMLATT (depthwise).  Bit-exact: both variants' output",
        f"checksums are equal.  Goal: at most {GOAL:g} instructions per MAC.  Instructions are not",
        "cycles: on a real M4 loads take 1-2 cycles and SMLAD one.",
        "",
        *table,
        "",
        *notes,
    ]


def main() -> None:
    """Run the benchmark, print the section and (unless --no-docs) write it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-docs", action="store_true", help="print only, do not touch docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nasweb-bench-kernels-") as tmp:
        body = report(Path(tmp))
    print("\n".join([f"## {TITLE}", "", *body]))
    if not args.no_docs:
        replace_section(DOCS, TITLE, "\n".join(body))


if __name__ == "__main__":
    main()
