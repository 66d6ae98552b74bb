"""The zip bundle builds and runs: `make host`, `make arm` and `make run-qemu` on the unzipped files."""

from __future__ import annotations

import io
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from searches.engine.deploy.bundle import bundle_zip
from searches.engine.deploy.int8 import QuantModel
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import run_int8
from searches.engine.deploy.toolchain import (
    ARM_TOOLS,
    HOST_TOOLS,
    QEMU_TOOLS,
    TARGETS,
    ToolchainMissing,
    find_tools,
)
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.training.model import build_model

pytestmark = pytest.mark.engine

ARCH = Architecture(
    (6, 6, 2),
    5,
    (ConvBlock((ConvLayer("conv2d", 3, 8), ConvLayer("dwconv2d", 3, None))),),
    Pooling("avg", 2),
    (Dense(12),),
)
FLASH = 32 * 1024
SRAM = 8 * 1024


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    try:
        find_tools(("make", *HOST_TOOLS, *ARM_TOOLS, *QEMU_TOOLS))
    except ToolchainMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def qm() -> QuantModel:
    torch.manual_seed(3)
    calibration = np.random.default_rng(3).random((32, 6, 6, 2), dtype=np.float32)
    return quantize(ARCH, build_model(ARCH).eval(), calibration)


def unzip(data: bytes, into: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(into)
    (folder,) = into.iterdir()
    return folder


def make(folder: Path, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-s", target], cwd=folder, capture_output=True, text=True, timeout=120)


def expected_output(qm: QuantModel, header: str, name: str) -> str:
    """What main.c prints: its fixed input, quantised in float32 as the C code does, run by the reference."""
    scale = np.float32(re.search(rf"#define {name.upper()}_INPUT_SCALE (\S+)f", header)[1])  # type: ignore[index]
    x = (np.arange(int(np.prod(qm.input_shape))) % 11).astype(np.float32) / np.float32(10)
    q = np.clip(np.rint(x / scale) + qm.input_zero_point, -128, 127).astype(np.int8)
    logits = run_int8(qm, q.reshape(1, *qm.input_shape))[0]
    return f"logits: {' '.join(map(str, logits))}\nclass: {int(np.argmax(logits))}\n"


@pytest.mark.parametrize("core", ["cortex-m4f", "cortex-m0plus"])
def test_the_bundle_builds_and_runs_on_host_and_qemu(qm: QuantModel, tmp_path: Path, core: str) -> None:
    folder = unzip(bundle_zip(qm, "kws", core=core, flash_limit_bytes=FLASH, sram_limit_bytes=SRAM), tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "Makefile",
        "README.md",
        "cortex_m.ld",
        "kws.h",
        "main.c",
        "semihost.h",
        "startup.S",
    ]
    expected = expected_output(qm, (folder / "kws.h").read_text(), "kws")

    for target in ("host", "arm"):
        built = make(folder, target)
        assert built.returncode == 0, built.stderr
        assert "warning" not in built.stderr, built.stderr
    assert make(folder, "run-host").stdout == expected
    ran = make(folder, "run-qemu")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == expected

    makefile = (folder / "Makefile").read_text()
    assert f"FLASH_SIZE   = {FLASH}" in makefile and f"RAM_SIZE     = {SRAM}" in makefile
    assert " ".join(TARGETS[core].cflags) in makefile


def test_the_profile_budget_is_the_link_limit(qm: QuantModel, tmp_path: Path) -> None:
    data = bundle_zip(qm, "kws", core="cortex-m3", flash_limit_bytes=1024, sram_limit_bytes=SRAM)
    built = make(unzip(data, tmp_path), "arm")
    assert built.returncode != 0
    assert "region `FLASH' overflowed by" in built.stderr


def test_the_readme_explains_input_and_output(qm: QuantModel) -> None:
    data = bundle_zip(qm, "kws", core="cortex-m7", flash_limit_bytes=FLASH, sram_limit_bytes=SRAM)
    readme = zipfile.ZipFile(io.BytesIO(data)).read("kws/README.md").decode()
    assert "q = clamp(round(x / KWS_INPUT_SCALE) + KWS_INPUT_ZERO_POINT, -128, 127)" in readme
    assert "HWC" in readme and "(y * 6 + x) * 2 + c" in readme
    assert "KWS_OUTPUT_SCALE * (q - KWS_OUTPUT_ZERO_POINT)" in readme
    assert f"{qm.input_zero_point}" in readme and "mps2-an500" in readme


def test_non_cortex_bundles_build_on_the_host_only(qm: QuantModel, tmp_path: Path) -> None:
    folder = unzip(
        bundle_zip(qm, "kws", core="avr", flash_limit_bytes=FLASH, sram_limit_bytes=SRAM), tmp_path
    )
    assert make(folder, "host").returncode == 0
    refused = make(folder, "arm")
    assert refused.returncode != 0 and "only for Cortex-M cores" in refused.stderr


def test_the_zip_is_deterministic(qm: QuantModel) -> None:
    def once() -> bytes:
        return bundle_zip(qm, "kws", core="cortex-m33", flash_limit_bytes=FLASH, sram_limit_bytes=SRAM)

    assert once() == once()
