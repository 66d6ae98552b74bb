"""Instructions per MAC and code size of the int8 kernels (searches/engine/deploy/c/kernels.h).

Run ``python bench/bench_kernels.py`` (writes the "Kernel instructions per MAC" section of
docs/benchmarks.md; ``--no-docs`` only prints; ``--json`` also prints one JSON object on the
last line: ``{"cortex-m4": {"conv2d_3x3": {"plain": X, "dsp": Y}, ...}, "cortex-m0plus":
{"conv2d_3x3": {"plain": X}, ...}}`` in instructions per MAC).

Each kernel is built at -O2 for the Cortex-M4F (mps2-an386) twice, plain C (``-DNNK_NO_DSP``)
and with the DSP extension, and for the Cortex-M0+ (plain C, run on QEMU's micro:bit M0).  The
kernel is called exactly as the generated header calls it: with the layer's shape as literal
arguments, inlined, so its loops are specialised for that shape.  A small program fills
random int8 inputs and weights, then calls the kernel ``REPS`` times; REPS is a volatile
constant, so the images for 1 and 2 calls have identical code and the difference of their
instruction counts (nasweb's QEMU plugin, exact) is one kernel call, everything included:
loops, padding, the requantisation of every output.  The call sits in its own non-inlined
function, whose size (plus the out-of-line helpers it calls) is the kernel's code size.
All variants print a checksum of their outputs: equal checksums mean the builds agree.
"""

from __future__ import annotations

import argparse
import json
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
from searches.engine.deploy.toolchain import TARGETS, arm_link, symbol_sizes, tool_version

DOCS = ROOT / "docs" / "benchmarks.md"
TITLE = "Kernel instructions per MAC (Cortex-M4, Cortex-M0+)"
OLD_TITLE = "Kernel instructions per MAC (Cortex-M4)"
COMMAND = "python bench/bench_kernels.py --json"
# Issue 13's goal for the DSP build: 0.9 x CMSIS-NN 7.0.0's count on the same shape and data.
GOALS = {"conv2d_3x3": 2.10, "conv1x1": 2.43, "dwconv_3x3": 7.26, "dense": 1.79}
# Before issue 13 (commit 8ed88e8, generic out-of-line kernels, the same shapes and data):
# Cortex-M4 plain / DSP from that commit's bench, Cortex-M0+ from the same bench built for it.
BEFORE = {
    "conv2d_3x3": (4.34, 3.27, 9.47),
    "conv1x1": (4.78, 3.39, 9.37),
    "dwconv_3x3": (23.13, 10.40, 41.32),
    "dense": (5.08, 2.60, 7.23),
}
# Helpers the kernels call out of line (the rare shifts); their bytes count as kernel code.
HELPERS = ("nnk_requant_any", "nnk_requant_single_any", "nnk_padsum2")


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
            "conv2d_3x3",
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
            "dwconv_3x3",
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
static int32_t acc[ACC_WORDS];
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

/* The call as the header makes it; its own function so that its code can be measured. */
__attribute__((noinline)) static void kernel_call(void)
{
    int32_t j = 0;
    CALL;
    (void)j;
}

int main(void)
{
    uint32_t i, sum = 0;
    for (i = 0; i < IN_BYTES; ++i) in[i] = next_byte();
    for (i = 0; i < W_BYTES; ++i) w[i] = (int8_t)(next_byte() | 1); /* no -128: weights are symmetric */
    for (i = 0; i < ACC_WORDS; ++i) acc[i] = (int32_t)(state = state * 1664525u + 1013904223u) >> 12;
    for (i = 0; i < CHANNELS; ++i) {
        bias[i] = (int32_t)(next_byte()) * 37;
        mult[i] = 1518500250 + (int32_t)(next_byte()) * 1000000; /* M0 in [2^30, 2^31) */
        shift[i] = (int8_t)(-7 - (int32_t)(i % 3u));
    }
    for (i = 0; i < reps; ++i) kernel_call();
    for (i = 0; i < OUT_BYTES; ++i) sum = sum * 31u + (uint8_t)out[i];
    sh_put_uint_line("checksum ", sum);
    return 0;
}
"""


def _source(case: Case, reps: int) -> str:
    # literal shapes, exactly as the generated header passes them
    shapes = "\n".join(f"#define v_{k} {v}" for k, v in case.setup.items())
    call = case.call
    for k in sorted(case.setup, key=len, reverse=True):
        call = _replace_word(call, k, f"v_{k}")
    text = PROGRAM.replace("SHAPES", shapes).replace("CALL", call).replace("REPS", f"{reps}u")
    for key, value in (
        ("IN_BYTES", case.in_bytes),
        ("W_BYTES", case.w_bytes),
        ("OUT_BYTES", case.out_bytes),
        ("ACC_WORDS", case.out_bytes if not case.macs else 1),
        ("CHANNELS", case.channels),
    ):
        text = text.replace(key, f"{value}u")
    return text


def _replace_word(text: str, word: str, by: str) -> str:
    return re.sub(rf"(?<![A-Za-z_]){word}(?![A-Za-z_0-9])", by, text)


@dataclass(frozen=True)
class Measured:
    """One build of one kernel: instructions per MAC (or per output), per call, and its code."""

    per_unit: float
    per_call: int
    checksum: int
    code_bytes: int


def measure(case: Case, core: str, dsp: bool, directory: Path) -> Measured:
    """Count one call of ``case`` on ``core`` (a key of TARGETS), with or without the DSP path."""
    target = TARGETS[core]
    counts, checksums, code = [], set(), 0
    for reps in (1, 2):
        src = directory / f"{case.kernel}-{core}-{'dsp' if dsp else 'plain'}-{reps}.c"
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
        sizes = symbol_sizes(image.elf)
        code = sizes.get("kernel_call", 0) + sum(sizes.get(h, 0) for h in HELPERS)
    if len(checksums) != 1:
        raise RuntimeError(f"{case.label}: outputs differ between 1 and 2 calls")
    per_call = counts[1] - counts[0]
    return Measured(
        per_call / (case.macs or case.out_bytes), per_call, int(checksums.pop().split()[-1]), code
    )


BUILDS = (("cortex-m4f", False), ("cortex-m4f", True), ("cortex-m0plus", False))


def run_all(directory: Path) -> dict[str, dict[tuple[str, bool], Measured]]:
    """Every case in every build: {kernel: {(core, dsp): Measured}}."""
    results: dict[str, dict[tuple[str, bool], Measured]] = {}
    for case in _cases():
        results[case.kernel] = {}
        for core, dsp in BUILDS:
            m = measure(case, core, dsp, directory)
            results[case.kernel][(core, dsp)] = m
            build = f"{core} {'DSP' if dsp else 'plain'}"
            print(
                f"{case.label}, {build}: {m.per_unit:.3f} per unit "
                f"({m.per_call} per call, {m.code_bytes} B code)"
            )
    return results


def as_json(results: dict[str, dict[tuple[str, bool], Measured]]) -> dict[str, dict[str, dict[str, float]]]:
    """The issue's JSON: instructions per MAC of the four MAC kernels, rounded to 3 decimals."""
    keys = [k for k in results if k in GOALS]
    return {
        "cortex-m4": {
            k: {
                "plain": round(results[k][("cortex-m4f", False)].per_unit, 3),
                "dsp": round(results[k][("cortex-m4f", True)].per_unit, 3),
            }
            for k in keys
        },
        "cortex-m0plus": {
            k: {"plain": round(results[k][("cortex-m0plus", False)].per_unit, 3)} for k in keys
        },
    }


def report(results: dict[str, dict[tuple[str, bool], Measured]]) -> list[str]:
    """The markdown body of the section."""
    rows, notes = [], []
    for case in _cases():
        r = results[case.kernel]
        plain, dsp, m0 = r[("cortex-m4f", False)], r[("cortex-m4f", True)], r[("cortex-m0plus", False)]
        exact = "yes" if plain.checksum == dsp.checksum == m0.checksum else "**no**"
        if not case.macs:
            notes.append(
                f"Requantising one output (`nnk_requant` + `nnk_saturate`, looped over {case.out_bytes} "
                f"random accumulators, loop included): {plain.per_unit:.1f} instructions in the plain M4 "
                f"build, {dsp.per_unit:.1f} in the DSP build, {m0.per_unit:.1f} on the M0+ (checksums "
                f"equal: {exact})."
            )
            continue
        b_plain, b_dsp, b_m0 = BEFORE[case.kernel]
        goal = GOALS[case.kernel]
        rows.append(
            (
                case.label,
                case.shape,
                f"{case.macs:,}",
                f"{b_plain:.2f} → **{plain.per_unit:.2f}**",
                f"{b_dsp:.2f} → **{dsp.per_unit:.2f}**",
                f"≤ {goal:.2f} ({'met' if dsp.per_unit <= goal else '**missed**'})",
                f"{b_m0:.2f} → **{m0.per_unit:.2f}**",
                f"{plain.code_bytes:,} / {dsp.code_bytes:,} / {m0.code_bytes:,}",
                exact,
            )
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        "kernel",
        "shape (HxWxC)",
        "MACs per call",
        "M4 plain C",
        "M4 DSP",
        "goal (DSP)",
        "M0+ plain C",
        "code bytes (M4 plain / DSP / M0+)",
        "checksums equal",
    )
    table = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    return [
        f"Command: `{COMMAND}` ({tool_version('arm-none-eabi-gcc')}, -O2; "
        f"{tool_version('qemu-system-arm')}; host CPython {platform.python_version()}; "
        f"1-minute load average {load:.1f}). Instruction counts are exact and do not depend on the load.",
        "",
        "Instructions executed by one call of each kernel of `searches/engine/deploy/c/kernels.h`,",
        "divided by the call's multiply-accumulates (padded taps count as MACs, as in CMSIS-NN's",
        "comparison of issue 13), before → after issue 13.  Cortex-M4F",
        "(`-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16`, QEMU mps2-an386), plain C",
        "(`-DNNK_NO_DSP`) and DSP (SXTB16 + SMLAD/SMLABB); Cortex-M0+ (`-mcpu=cortex-m0plus`, run",
        "on QEMU's micro:bit Cortex-M0, same ARMv6-M instructions).  Counted with nasweb's TCG",
        "plugin as the difference between images that call the kernel once and twice.  The kernel",
        "is called as the generated header calls it, with the layer's shape as literals: it is",
        "inlined and specialised for that shape (before: one generic out-of-line copy, shapes",
        "passed at run time).  Code bytes: the specialised call plus the out-of-line helpers it",
        "uses, i.e. what each layer of that shape adds to the image (before, every layer shared one",
        "copy of a few hundred bytes).  Goal: 0.9 x CMSIS-NN 7.0.0 on the same shapes and data",
        "(issue 13).  Instructions are not cycles: on a real M4 loads take 1-2 cycles and SMLAD one.",
        "Bit-exactness against the integer reference is tested by",
        "`tests/engine/deploy/test_kernels.py` (random shapes, strides, paddings, zero points on",
        "the host, M0+, M4 and M33) and the 200-model `tests/engine/deploy/test_export_host.py`.",
        "",
        *table,
        "",
        *notes,
    ]


def main() -> None:
    """Run the benchmark, print the section and (unless --no-docs) write it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-docs", action="store_true", help="print only, do not touch docs/benchmarks.md")
    parser.add_argument("--json", action="store_true", help="end with the JSON summary on one line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nasweb-bench-kernels-") as tmp:
        results = run_all(Path(tmp))
    body = report(results)
    print("\n".join([f"## {TITLE}", "", *body]))
    if not args.no_docs:
        replace_section(DOCS, TITLE, "\n".join(body))
        remove_section(DOCS, OLD_TITLE)
    if args.json:
        print(json.dumps(as_json(results)))


def remove_section(path: Path, title: str) -> None:
    """Drop the ``## title`` section (this benchmark's section before it covered the M0+)."""
    text = path.read_text()
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    path.write_text(pattern.sub("", text, count=1))


if __name__ == "__main__":
    main()
