"""The generated header on the host: 200 random architectures, bit-exact against the reference.

Architectures come from ``manage.py sample_archs`` (8x8x1 digits-shaped inputs keep the C
small enough to compile 200 models in about a minute); weights are PyTorch's random
initialisation with random batchnorm statistics.  For each model the arena equals the
reported peak SRAM, the constant arrays equal the reported flash, the header compiles
warning-free as strict C99, and its outputs equal :func:`run_int8` byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from searches.engine.deploy.header import c_identifier, generate_header
from searches.engine.deploy.int8 import QParams, QuantModel, float32
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import run_int8
from searches.engine.resources.report import analyze
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, load_many
from searches.engine.training.model import build_model

ROOT = Path(__file__).resolve().parents[3]
COUNT = 200
INPUTS = 12
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-O2"]
TINY = Architecture((8, 8, 1), 3, (ConvBlock((ConvLayer("conv2d", 3, 2),)),), None, ())
HARNESS = """#include <stdio.h>
#define {U}_IMPLEMENTATION
#include "{n}.h"
int main(void)
{{
    int8_t in[{U}_INPUT_SIZE], out[{U}_OUTPUT_SIZE];
    while (fread(in, 1, sizeof in, stdin) == sizeof in) {{
        {n}_run(in, out);
        fwrite(out, 1, sizeof out, stdout);
    }}
    return 0;
}}
"""


def sample_archs(count: int, seed: int) -> list[Architecture]:
    command = [
        sys.executable,
        "manage.py",
        "sample_archs",
        "--count",
        str(count),
        "--seed",
        str(seed),
        "--input",
        "8x8x1",
    ]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return load_many(out)


def random_quant_model(arch: Architecture, seed: int) -> QuantModel:
    torch.manual_seed(seed)
    model = build_model(arch).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    calibration = np.random.default_rng(seed).random((32, *arch.input_shape)).astype(np.float32)
    return quantize(arch, model, calibration)


def compile_and_run(workdir: Path, name: str, header: str, inputs: np.ndarray) -> bytes:
    (workdir / f"{name}.h").write_text(header)
    (workdir / f"{name}.c").write_text(HARNESS.format(U=name.upper(), n=name))
    exe = workdir / name
    build = subprocess.run(
        ["gcc", *CFLAGS, "-o", str(exe), str(workdir / f"{name}.c")], capture_output=True, text=True
    )
    assert build.returncode == 0, f"{name}: gcc failed\n{build.stderr[:4000]}"
    return subprocess.run([str(exe)], input=inputs.tobytes(), capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="nasweb-host-") as d:
        yield Path(d)


@pytest.mark.slow
def test_200_random_architectures_are_bit_exact_on_the_host(workdir: Path) -> None:
    archs = sample_archs(COUNT, seed=2024)
    assert len(archs) == COUNT

    def check(item: tuple[int, Architecture]) -> str | None:
        i, arch = item
        qm = random_quant_model(arch, seed=i)
        report = analyze(arch)
        name = c_identifier(f"model_{i}")
        header = generate_header(qm, name)
        assert header.arena_bytes == report.peak_sram_bytes, arch.dumps()
        assert header.flash_bytes == report.flash_bytes, arch.dumps()
        assert f"#define {name.upper()}_ARENA_SIZE {report.peak_sram_bytes}\n" in header.text
        inputs = np.random.default_rng(i).integers(-128, 128, (INPUTS, *arch.input_shape), dtype=np.int8)
        c_out = np.frombuffer(compile_and_run(workdir, name, header.text, inputs), dtype=np.int8)
        expected = run_int8(qm, inputs)
        if not np.array_equal(c_out.reshape(expected.shape), expected):
            return f"model {i} differs from the reference: {arch.dumps()}"
        return None

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        failures = [f for f in pool.map(check, enumerate(archs)) if f]
    assert not failures, "\n".join(failures[:5])


def test_header_api_and_layout(workdir: Path) -> None:
    arch = sample_archs(1, seed=5)[0]
    qm = random_quant_model(arch, seed=5)
    header = generate_header(qm, "demo_net")
    text = header.text
    for macro in (
        "INPUT_H",
        "INPUT_W",
        "INPUT_C",
        "INPUT_SIZE",
        "OUTPUT_SIZE",
        "ARENA_SIZE",
        "FLASH_BYTES",
        "MACS",
        "INPUT_SCALE",
        "INPUT_ZERO_POINT",
        "OUTPUT_SCALE",
        "OUTPUT_ZERO_POINT",
    ):
        assert f"#define DEMO_NET_{macro} " in text
    assert "int demo_net_run(const int8_t *input, int8_t *output);" in text
    declarations, _, implementation = text.partition("#if defined(DEMO_NET_IMPLEMENTATION)")
    assert "static const" not in declarations and "static const int8_t demo_net_param_" in implementation
    # The declarations alone compile in a second translation unit next to the implementation.
    (workdir / "demo_net.h").write_text(text)
    (workdir / "user.c").write_text(
        '#include "demo_net.h"\nint use(const int8_t *x, int8_t *y) { return demo_net_run(x, y); }\n'
    )
    (workdir / "impl.c").write_text(
        '#define DEMO_NET_IMPLEMENTATION\n#include "demo_net.h"\n#include "demo_net.h"\n'
    )
    for source in ("user.c", "impl.c"):
        build = subprocess.run(
            ["gcc", *CFLAGS, "-c", str(workdir / source), "-o", str(workdir / f"{source}.o")],
            capture_output=True,
            text=True,
        )
        assert build.returncode == 0, build.stderr


def test_names_must_be_c_identifiers() -> None:
    arch = sample_archs(1, seed=6)[0]
    qm = random_quant_model(arch, seed=6)
    with pytest.raises(ValueError, match="C identifier"):
        generate_header(qm, "My Model")
    assert c_identifier("Run 12 / cand-34") == "run_12_cand_34"
    assert c_identifier("7up") == "m_7up"


QUANTISER_HARNESS = """#include <stdio.h>
#define {U}_IMPLEMENTATION
#include "{n}.h"
int main(void)
{{
    float x[{U}_INPUT_SIZE];
    int8_t q[{U}_INPUT_SIZE];
    while (fread(x, sizeof x[0], {U}_INPUT_SIZE, stdin) == {U}_INPUT_SIZE) {{
        {n}_quantize_input(x, q);
        fwrite(q, 1, sizeof q, stdout);
    }}
    return 0;
}}
"""


@pytest.mark.parametrize(
    ("scale", "zero_point"),
    [(1 / 255, -128), (1 / 256, -128), (0.0123, 5), (0.0041, -3), (1.0, -128)],
)
def test_the_c_quantiser_equals_quantize_input(workdir: Path, scale: float, zero_point: int) -> None:
    """Every pixel level v/255 and v/16, ties of the scale and random floats, through gcc."""
    arch = TINY
    qm = random_quant_model(arch, seed=0)
    qm.qparams = {**qm.qparams, "input": QParams(float32(scale), zero_point)}
    rng = np.random.default_rng(7)
    ties = (np.arange(-300, 300) + 0.5) * float32(scale)
    values = np.concatenate(
        [np.arange(256) / 255, np.arange(17) / 16, ties, rng.uniform(-3, 3, 5000), rng.normal(0, 0.3, 5000)]
    ).astype(np.float32)
    size = int(np.prod(arch.input_shape))
    x = np.resize(values, (len(values) // size + 1) * size).reshape(-1, *arch.input_shape)
    name = c_identifier(f"quantiser_{zero_point + 200}_{len(str(scale))}")
    (workdir / f"{name}.h").write_text(generate_header(qm, name).text)
    (workdir / f"{name}.c").write_text(QUANTISER_HARNESS.format(U=name.upper(), n=name))
    exe = workdir / name
    subprocess.run(["gcc", *CFLAGS, "-o", str(exe), str(workdir / f"{name}.c")], check=True)
    c_bytes = subprocess.run(
        [str(exe)], input=x.astype("<f4").tobytes(), capture_output=True, check=True
    ).stdout
    assert np.array_equal(np.frombuffer(c_bytes, dtype=np.int8), qm.quantize_input(x).reshape(-1))


def test_quantize_input_follows_tflite_float32_semantics() -> None:
    """1/255 is stored as float32 (0.0039215689, above 1/255): 0.5 lands just below the tie."""
    arch = TINY
    qm = random_quant_model(arch, seed=0)
    qm.qparams = {**qm.qparams, "input": QParams(float32(1 / 255), -128)}
    x = np.full((1, *arch.input_shape), 0.5, dtype=np.float32)
    assert qm.quantize_input(x).reshape(-1)[0] == -1
    # A true tie rounds half away from zero (TfLiteRound), not to even.
    qm.qparams = {**qm.qparams, "input": QParams(0.25, 0)}
    ties = np.resize(np.array([0.125, -0.125, 0.375], np.float32), (1, *arch.input_shape))
    assert qm.quantize_input(ties).reshape(-1)[:3].tolist() == [1, -1, 2]
