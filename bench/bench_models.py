"""Instructions per MAC of whole generated models on a Cortex-M4 and a Cortex-M0+, before and after.

Run ``python bench/bench_models.py --before-tree DIR`` where DIR is a checkout of the commit
to compare with (e.g. ``git worktree add --detach /tmp/nasweb-before 8ed88e8``); it writes the
"Whole models: instructions per MAC" section of docs/benchmarks.md (``--no-docs`` only prints).

Models: 10 random architectures of the μNAS space for the digits input (8x8x1) and 10 for
Fashion-MNIST (28x28x1), drawn with a fixed seed and kept when their size is realistic for
these tasks (peak SRAM and flash within the μNAS Fashion-MNIST bounds, 64,000 B, and enough
MACs that the convolutions matter).  Weights are PyTorch's random initialisation with random
batchnorm statistics, calibrated on random images: instruction counts do not depend on the
values (no data-dependent branches but rare requantisation shifts).  Each model's header is
built into nasweb's QEMU harness (c/verify_qemu.c) with one random input, run once and twice
with the plugin counting instructions; the difference is one inference.  The printed outputs
must equal the tree's own integer reference byte for byte, so every count is of a bit-exact
model.  The same models run through the other tree's exporter in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Whole models: instructions per MAC"
COMMAND = "python bench/bench_models.py --before-tree /tmp/nasweb-before  # a checkout of 8ed88e8"
CORES = ("cortex-m4f", "cortex-m0plus")
TASKS = (("digits", (8, 8, 1), 2_000, 10), ("Fashion-MNIST", (28, 28, 1), 20_000, 10))
BOUND_BYTES = 64_000
MAX_MACS = 3_000_000
SEED = 13


def _use_tree(tree: Path) -> None:
    sys.path.insert(0, str(tree))


def sample_realistic(rng: random.Random, shape: tuple[int, int, int], min_macs: int, count: int) -> list[Any]:
    """``count`` random architectures for ``shape`` of the size users search for: peak SRAM and
    flash at most BOUND_BYTES, MACs from ``min_macs`` to MAX_MACS (drawn from ``rng`` in order)."""
    from searches.engine.resources.report import analyze
    from searches.engine.space.sampling import SpaceConfig, random_architecture

    archs: list[Any] = []
    while len(archs) < count:
        arch = random_architecture(rng, SpaceConfig(shape, 10))
        r = analyze(arch)
        fits = r.peak_sram_bytes <= BOUND_BYTES and r.flash_bytes <= BOUND_BYTES
        if fits and min_macs <= r.macs <= MAX_MACS:
            archs.append(arch)
    return archs


def pick_archs() -> list[dict[str, Any]]:
    """10 realistic random architectures per task, as JSON objects with their task name."""
    return [
        {"task": task, "arch": arch.to_json()}
        for task, shape, min_macs, count in TASKS
        for arch in sample_realistic(random.Random(SEED), shape, min_macs, count)
    ]


def _quant_model(arch: Any, seed: int) -> Any:
    import numpy as np
    import torch

    from searches.engine.deploy.quantize import quantize
    from searches.engine.training.model import build_model

    torch.manual_seed(seed)
    model = build_model(arch).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    calibration = np.random.default_rng(seed).random((32, *arch.input_shape)).astype(np.float32)
    return quantize(arch, model, calibration)


def write_harness(header: Any, xq: Any, directory: Path) -> None:
    """The header, its model_glue.h and verify_inputs.h with the one input ``xq``, for
    c/verify_qemu.c (written here, not with the tree's verify module: an older tree's differs)."""
    upper = header.name.upper()
    (directory / f"{header.name}.h").write_text(header.text)
    (directory / "model_glue.h").write_text(
        f'#define {upper}_IMPLEMENTATION\n#include "{header.name}.h"\n'
        f"#define MODEL_INPUT_SIZE {upper}_INPUT_SIZE\n#define MODEL_OUTPUT_SIZE {upper}_OUTPUT_SIZE\n"
        f"#define model_run {header.name}_run\n"
    )
    values = ",".join(str(int(v)) for v in xq.reshape(-1))
    (directory / "verify_inputs.h").write_text(
        "#define MODEL_N_INPUTS 1u\n"
        f"static const int8_t model_inputs[1][MODEL_INPUT_SIZE] = {{{{{values}}}}};\n"
    )


def _count(header: Any, xq: Any, expected: Any, core: str, directory: Path) -> tuple[float, int]:
    """(instructions of one inference, text bytes of the image) on ``core``, outputs checked."""
    from searches.engine.deploy.qemu import qemu_run
    from searches.engine.deploy.toolchain import C_DIR, TARGETS, arm_link

    write_harness(header, xq, directory)
    target, counts, text = TARGETS[core], [], 0
    want = "o " + bytes(expected.astype("int8").tobytes()).hex()
    for reps in (1, 2):
        image = arm_link(
            [C_DIR / "verify_qemu.c"],
            directory / f"{core}-{reps}.elf",
            target=target,
            flash_limit_bytes=target.board_flash_bytes,
            ram_limit_bytes=target.board_ram_bytes,
            include_dirs=[directory],
            defines=[f"MODEL_REPETITIONS={reps}u"],
        )
        run = qemu_run(image, count_instructions=True, timeout_s=600)
        if want not in run.output.splitlines():
            raise RuntimeError(f"{header.name} on {core}: output differs from the integer reference")
        assert run.instructions is not None
        counts.append(run.instructions)
        text = image.sizes.text
    return float(counts[1] - counts[0]), text


def measure(tree: Path, picked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Instructions per MAC of every picked model on every core, exported by ``tree``."""
    _use_tree(tree)
    import numpy as np

    from searches.engine.deploy.header import generate_header
    from searches.engine.deploy.reference import run_int8
    from searches.engine.space.arch import from_json

    rows = []
    with tempfile.TemporaryDirectory(prefix="nasweb-bench-models-") as tmp:
        for i, item in enumerate(picked):
            arch = from_json(item["arch"])
            qm = _quant_model(arch, seed=i)
            header = generate_header(qm, f"model_{i}")
            xq = np.random.default_rng(i).integers(-128, 128, (1, *arch.input_shape), dtype=np.int8)
            expected = run_int8(qm, xq)[0]
            row: dict[str, Any] = {"task": item["task"], "macs": header.macs}
            for core in CORES:
                insns, text = _count(header, xq, expected, core, Path(tmp))
                row[core] = insns / header.macs
                row[f"{core} text"] = text
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    return rows


def _table(
    picked: list[dict[str, Any]], before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> list[str]:
    head = "| # | task | MACs | M4 before | M4 after | M4 speed-up | M0+ before | M0+ after | M0+ speed-up |"
    lines = [head, "|" + "---|" * 9]
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        m4, m0 = ("cortex-m4f", "cortex-m0plus")
        lines.append(
            f"| {i} | {a['task']} | {a['macs']:,} | {b[m4]:.2f} | {a[m4]:.2f} | {b[m4] / a[m4]:.2f}x "
            f"| {b[m0]:.2f} | {a[m0]:.2f} | {b[m0] / a[m0]:.2f}x |"
        )

    def total(rows: list[dict[str, Any]], core: str) -> float:
        return sum(r[core] * r["macs"] for r in rows) / sum(r["macs"] for r in rows)

    m4b, m4a, m0b, m0a = (total(r, c) for c in CORES for r in (before, after))
    lines.append(
        f"| all | (MAC-weighted) | {sum(r['macs'] for r in after):,} "
        f"| {m4b:.2f} | {m4a:.2f} | {m4b / m4a:.2f}x "
        f"| {m0b:.2f} | {m0a:.2f} | {m0b / m0a:.2f}x |"
    )
    text_b = sum(r["cortex-m4f text"] for r in before) / len(before)
    text_a = sum(r["cortex-m4f text"] for r in after) / len(after)
    return [
        *lines,
        "",
        f"Mean image text (code + weights + harness) on the M4: {text_b:,.0f} B before, "
        f"{text_a:,.0f} B after.",
    ]


def main() -> None:
    """Measure both trees, print the section and (unless --no-docs) write it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before-tree", type=Path, help="checkout of the commit to compare with")
    parser.add_argument("--measure-tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--picked", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-docs", action="store_true", help="print only, do not touch docs/benchmarks.md")
    args = parser.parse_args()
    if args.measure_tree:  # child process: one tree's numbers as JSON on stdout
        print(json.dumps(measure(args.measure_tree, json.loads(args.picked.read_text()))))
        return
    if args.before_tree is None:
        parser.error("--before-tree is required")
    _use_tree(ROOT)
    picked = pick_archs()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(picked, f)
    trees = (args.before_tree.resolve(), ROOT)
    results = []
    for tree in trees:
        cmd = [sys.executable, __file__, "--measure-tree", str(tree), "--picked", f.name]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        results.append(
            json.loads(
                subprocess.run(
                    cmd, env=env, capture_output=False, stdout=subprocess.PIPE, text=True, check=True
                ).stdout
            )
        )
    os.unlink(f.name)
    load = os.getloadavg()[0]
    body = [
        f"Command: `{COMMAND}`; 1-minute load average {load:.1f} (instruction counts are exact).",
        "",
        "Instructions per MAC of one inference of whole generated models (every layer, the",
        "input copy, pooling and Add included), counted under QEMU with nasweb's plugin:",
        "Cortex-M4F (DSP kernels) and Cortex-M0+ (plain C), before issue 13 (commit 8ed88e8)",
        "and after.  No search results were at hand, so the models are random architectures of",
        "the μNAS space (seed 13), 10 for the digits input (8x8x1) and 10 for Fashion-MNIST",
        "(28x28x1), kept when peak SRAM and flash are at most 64,000 B and MACs between 2,000",
        "(digits) or 20,000 (Fashion) and 3M; random weights (counts do not depend on them).",
        "Every run's outputs equal its tree's integer reference byte for byte.",
        "",
        *_table(picked, results[0], results[1]),
    ]
    print("\n".join([f"## {TITLE}", "", *body]))
    if not args.no_docs:
        sys.path.insert(0, str(ROOT))
        from bench._report import replace_section

        replace_section(ROOT / "docs" / "benchmarks.md", TITLE, "\n".join(body))


if __name__ == "__main__":
    main()
