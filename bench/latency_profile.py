"""Instructions of one inference per layer, from QEMU: calibration data for the latency model.

``python bench/latency_profile.py --seed 202 --index 3 --target cortex-m4f`` exports the
``index``-th architecture of bench_latency's draw ``seed`` (or ``--arch FILE``) with random
weights, builds it into nasweb's QEMU harness and runs one inference with a plugin that counts
instructions and notes the running count at marked addresses (bench/c/insn_marks.c).  The marks
are the entry of each layer function (``<name>_layer_<op>``, never inlined) and the instruction
after its call in ``<name>_run``, found in the disassembly: the difference is everything the
layer ran, out-of-line kernels and library helpers (the M0+'s 64-bit multiply) included.

bench_latency.py --calibrate fits the latency model to these per-layer counts (``profile_header``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PLUGIN_SOURCE = ROOT / "bench" / "c" / "insn_marks.c"


_CALL = re.compile(r"^\s*([0-9a-f]+):\s+bl\s+([0-9a-f]+) <(\w+)>")


def _calls(elf: Path, caller: str) -> list[tuple[int, int, str]]:
    """(address of the call, callee address, callee) of each BL in ``caller``'s disassembly."""
    text = subprocess.run(
        ["arm-none-eabi-objdump", "-d", "--no-show-raw-insn", f"--disassemble={caller}", str(elf)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [(int(m[1], 16), int(m[2], 16), m[3]) for line in text.splitlines() if (m := _CALL.match(line))]


def profile_header(header: Any, xq: Any, expected: Any, target: str, directory: Path) -> dict[str, float]:
    """Instructions of one inference of ``header`` on ``target``: per op id everything its layer
    function ran (out-of-line kernels and library helpers included), and "run" for the rest of
    ``<name>_run`` (its input and output copies, the calls); its outputs must equal
    ``expected`` byte for byte."""
    from bench.bench_models import write_harness
    from searches.engine.deploy.qemu import plugin_path, qemu_command
    from searches.engine.deploy.toolchain import C_DIR, TARGETS, arm_link

    name = header.name
    write_harness(header, xq, directory)
    t = TARGETS[target]
    image = arm_link(
        [C_DIR / "verify_qemu.c"],
        directory / f"{target}.elf",
        target=t,
        flash_limit_bytes=t.board_flash_bytes,
        ram_limit_bytes=t.board_ram_bytes,
        include_dirs=[directory],
        defines=["MODEL_REPETITIONS=1u"],
    )
    prefix = f"{name}_layer_"
    layers = [
        (at, to, callee[len(prefix) :])
        for at, to, callee in _calls(image.elf, f"{name}_run")
        if callee.startswith(prefix)
    ]
    runs = [(at, to) for at, to, callee in _calls(image.elf, "main") if callee == f"{name}_run"]
    if not runs or not layers:
        raise RuntimeError(f"{name} on {target}: cannot find the calls of {name}_run and its layers")
    marks = sorted({a for at, to, *_ in [*layers, *runs] for a in (to, at + 4)})
    log, printed = directory / "marks.log", directory / "semihosting.txt"
    cmd = qemu_command(image, t, printed, plugin=plugin_path(source=PLUGIN_SOURCE), plugin_log=log)
    i = cmd.index("-plugin") + 1
    cmd[i] += ",marks=" + ":".join(f"{a:x}" for a in marks)
    subprocess.run(cmd, capture_output=True, timeout=600, check=True)
    if "o " + expected.astype("int8").tobytes().hex() not in printed.read_text().splitlines():
        raise RuntimeError(f"{name} on {target}: output differs from the integer reference")
    first: dict[int, int] = {}
    for line in log.read_text().splitlines():
        if line.startswith("mark "):
            _, pc, count = line.split()
            first.setdefault(int(pc, 16), int(count))  # one inference: each mark runs once
    counts = {op: float(first[at + 4] - first[to]) for at, to, op in layers}
    # main calls <name>_run in two loops; one inference runs the first
    at, to = next((at, to) for at, to in runs if at + 4 in first)
    counts["run"] = float(first[at + 4] - first[to]) - sum(counts.values())
    return counts


def model_inputs(arch_json: dict[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """(header, one random int8 input, its reference output) of a random-weight model, as
    bench_latency builds them."""
    import numpy as np

    from bench.bench_models import _quant_model
    from searches.engine.deploy.header import generate_header
    from searches.engine.deploy.reference import run_int8
    from searches.engine.space.arch import from_json

    arch = from_json(arch_json)
    qm = _quant_model(arch, seed=seed)
    xq = np.random.default_rng(seed).integers(-128, 128, (1, *arch.input_shape), dtype=np.int8)
    return generate_header(qm, "net"), xq, run_int8(qm, xq)[0]


def main() -> None:
    from bench.bench_latency import pick_archs

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=202)
    parser.add_argument("--per-task", type=int, default=25)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--arch", type=Path, help="an architecture JSON file instead of a drawn one")
    parser.add_argument("--target", default="cortex-m4f")
    args = parser.parse_args()
    if args.arch:
        item = {"arch": json.loads(args.arch.read_text()), "seed": 0}
    else:
        item = pick_archs(args.seed, args.per_task)[args.index]
    with tempfile.TemporaryDirectory(prefix="nasweb-profile-") as tmp:
        counts = profile_header(*model_inputs(item["arch"], item["seed"]), args.target, Path(tmp))
    for key, n in counts.items():
        print(f"{key:32s} {n:>12,.0f}")
    print(f"{'total':32s} {sum(counts.values()):>12,.0f}")


if __name__ == "__main__":
    main()
