"""verify_export against the real gcc, arm-none-eabi-gcc and qemu-system-arm, on a random-weight model.

Nothing is skipped: without the tools the fixture fails with the apt command that installs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from searches.engine.deploy import verify as verify_module
from searches.engine.deploy.header import generate_header
from searches.engine.deploy.int8 import QuantModel
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import int8_accuracy
from searches.engine.deploy.report import (
    FAILED,
    PASSED,
    RUNNING,
    SKIPPED,
    UNAVAILABLE,
    ExportVerification,
    StepResult,
)
from searches.engine.deploy.toolchain import (
    APT_COMMAND,
    ARM_TOOLS,
    DEFAULT_STACK_BYTES,
    HOST_TOOLS,
    QEMU_TOOLS,
    TARGETS,
    ToolchainMissing,
    find_tools,
)
from searches.engine.deploy.verify import verify_export
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.training.model import build_model

pytestmark = pytest.mark.engine

# Every kernel but avgpool: conv, depthwise (8 channels: the 4-wide DSP path), 1x1, a branch
# (add), max pooling and dense.
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
NAME = "tiny"
FLASH = 64 * 1024
SRAM = 16 * 1024


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    try:
        find_tools(HOST_TOOLS + ARM_TOOLS + QEMU_TOOLS)
    except ToolchainMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def qm() -> QuantModel:
    torch.manual_seed(0)
    model = build_model(ARCH).eval()
    calibration = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    return quantize(ARCH, model, calibration)


@pytest.fixture(scope="module")
def test_split() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(1)
    return rng.random((300, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 300)


def run(
    qm: QuantModel,
    split: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    core: str = "cortex-m4f",
    **kw: object,
) -> ExportVerification:
    options: dict[str, object] = {"flash_limit_bytes": FLASH, "sram_limit_bytes": SRAM, "clock_mhz": 64.0}
    options.update(kw)
    return verify_export(qm, NAME, core=core, test_x=split[0], test_y=split[1], **options)  # type: ignore[arg-type]


def statuses(result: ExportVerification) -> dict[str, str]:
    return {step.key: step.status for step in result.steps}


def test_it_passes_every_step_on_a_cortex_m4(qm: QuantModel, test_split: tuple) -> None:
    result = run(qm, test_split)
    assert result.passed, result.summary
    header = generate_header(qm, NAME)

    host = result.step("host").numbers
    assert host["test_inputs"] == 300 and host["compared_inputs"] == 20
    assert host["output_bytes_differing"] == 0
    assert host["c_accuracy"] == host["python_int8_accuracy"] == int8_accuracy(qm, *test_split)

    build = result.step("arm_build").numbers
    assert build["model_array_bytes"] == header.flash_bytes == build["predicted_flash_bytes"]
    assert build["arena_bytes"] == header.arena_bytes
    assert build["flash_bytes"] == build["text"] + build["data"] <= FLASH
    assert build["ram_bytes"] == build["data"] + build["bss"] <= SRAM
    assert build["ram_bytes"] >= header.arena_bytes + DEFAULT_STACK_BYTES
    assert "-mcpu=cortex-m4" in build["flags"] and "-Werror" in build["flags"]

    qemu = result.step("qemu").numbers
    assert qemu["machine"] == "mps2-an386"
    assert 0 < qemu["stack_used_bytes"] < DEFAULT_STACK_BYTES

    insns = result.step("instructions")
    per_inference = insns.numbers["instructions_per_inference"]
    assert per_inference > header.macs  # at least one instruction per MAC, even with SMLAD
    # instructions x the M4F's estimated 1.3 cycles per instruction at 64 MHz
    assert insns.numbers["cycles_per_instruction"] == 1.3
    assert insns.numbers["estimated_latency_ms"] == pytest.approx(per_inference * 1.3 / 64e3, rel=1e-3)
    assert "1.3 cycles per instruction (estimated CPI)" in insns.message
    predicted = insns.numbers["predicted_instructions"]
    error_pct = (predicted / per_inference - 1) * 100
    assert insns.numbers["prediction_error_pct"] == pytest.approx(error_pct, abs=0.01)
    for step in result.steps:
        assert step.tools, step.key


@pytest.mark.parametrize("core", ["cortex-m0plus", "cortex-m3", "cortex-m7", "cortex-m33"])
def test_it_passes_on_the_other_cortex_m_cores(qm: QuantModel, test_split: tuple, core: str) -> None:
    result = run(qm, test_split, core=core, n_inputs=5)
    assert result.passed, result.summary
    assert result.step("qemu").numbers["machine"] == TARGETS[core].machine


def test_an_oversized_model_fails_at_link_time(qm: QuantModel, test_split: tuple) -> None:
    result = run(qm, test_split, core="cortex-m3", flash_limit_bytes=2048, sram_limit_bytes=2048)
    assert statuses(result) == {"host": PASSED, "arm_build": FAILED, "qemu": SKIPPED, "instructions": SKIPPED}
    build = result.step("arm_build")
    assert build.numbers["flash_overflow_bytes"] > 0 and build.numbers["ram_overflow_bytes"] > 0
    assert "FLASH by" in build.message and "RAM by" in build.message
    assert "region `FLASH' overflowed" in build.log
    assert "needs the Cortex-M build, which failed" in result.step("qemu").message
    assert not result.passed


@pytest.mark.parametrize("core", ["avr", "xtensa-lx7"])
def test_non_cortex_cores_are_unavailable_but_the_host_check_runs(
    qm: QuantModel, test_split: tuple, core: str
) -> None:
    result = run(qm, test_split, core=core, n_inputs=3)
    assert statuses(result) == {
        "host": PASSED,
        "arm_build": UNAVAILABLE,
        "qemu": UNAVAILABLE,
        "instructions": UNAVAILABLE,
    }
    assert all("not supported by the Cortex-M verification" in s.message for s in result.steps[1:])


def test_missing_tools_are_reported_with_the_install_command(
    qm: QuantModel, test_split: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    result = run(qm, test_split, n_inputs=3)
    assert set(statuses(result).values()) == {UNAVAILABLE}
    assert all(APT_COMMAND in s.message for s in result.steps)


def test_a_difference_from_the_reference_fails_host_and_qemu(
    qm: QuantModel, test_split: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = verify_module.run_int8

    def off_by_one(model: QuantModel, xq: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
        out = real(model, xq).copy()
        out[-1, 3] = np.int8(out[-1, 3] ^ 1)
        return out

    monkeypatch.setattr(verify_module, "run_int8", off_by_one)
    result = run(qm, test_split, core="cortex-m0plus", n_inputs=4)
    assert statuses(result) == {"host": FAILED, "arm_build": PASSED, "qemu": FAILED, "instructions": SKIPPED}
    assert "1 of 40 output bytes differ; first at input 3, logit 3" in result.step("host").message
    assert "QEMU output differs" in result.step("qemu").message


class HalfToEvenQuantiser(QuantModel):
    """nasweb's old Python quantiser: float64 division, ties to even (differs from the C's)."""

    def quantize_input(self, x: npt.NDArray[np.generic]) -> npt.NDArray[np.int8]:
        q = np.round(np.asarray(x, dtype=np.float64) / self.input_scale) + self.input_zero_point
        return np.clip(q, -128, 127).astype(np.int8)


def test_a_quantiser_that_differs_from_the_c_fails_the_host_step(qm: QuantModel, test_split: tuple) -> None:
    wrong = HalfToEvenQuantiser(qm.arch, qm.qparams, qm.weighted, qm.adds)
    # Pixels on the scale's ties: the two quantisers disagree on every even one.
    x = ((np.arange(300 * 64) % 40 + 0.5) * qm.input_scale).astype(np.float32).reshape(300, 8, 8, 1)
    assert not np.array_equal(wrong.quantize_input(x), qm.quantize_input(x))
    result = run(wrong, (x, test_split[1]), core="cortex-m0plus", n_inputs=4)
    assert result.step("host").status == FAILED
    assert "the C quantiser (<name>_quantize_input) differs from Python's" in result.step("host").message
    assert result.step("host").numbers["input_bytes_differing"] > 0
    assert run(qm, (x, test_split[1]), core="cortex-m0plus", n_inputs=4).step("host").status == PASSED


def test_progress_sees_each_step_start_and_end(qm: QuantModel, test_split: tuple) -> None:
    seen: list[tuple[str, str]] = []
    run(qm, test_split, core="avr", n_inputs=2, progress=lambda s: seen.append((s.key, s.status)))
    assert seen == [
        ("host", RUNNING),
        ("host", PASSED),
        ("arm_build", RUNNING),
        ("arm_build", UNAVAILABLE),
        ("qemu", RUNNING),
        ("qemu", UNAVAILABLE),
        ("instructions", RUNNING),
        ("instructions", UNAVAILABLE),
    ]


def test_workdir_keeps_the_build_and_json_round_trips(
    qm: QuantModel, test_split: tuple, tmp_path: Path
) -> None:
    result = run(qm, test_split, core="cortex-m3", n_inputs=2, workdir=tmp_path)
    assert result.passed, result.summary
    assert {"tiny.h", "model_glue.h", "deploy.elf", "qemu_x1.elf", "qemu_x2.elf"} <= {
        p.name for p in tmp_path.iterdir()
    }
    data = json.loads(json.dumps(result.to_json()))
    assert data["passed"] is True and data["summary"] == "all verification steps passed"
    again = ExportVerification.from_json(data)
    assert again.passed and again.step("instructions").numbers == result.step("instructions").numbers
    assert StepResult.from_json(data["steps"][0]).key == "host"


def test_one_element_arrays_stay_in_the_image(test_split: tuple) -> None:
    # A depthwise layer on a one-channel input has one-element bias/multiplier/shift arrays,
    # whose values the compiler folds into the code; they must still count as flash.
    arch = Architecture(
        (8, 8, 1),
        10,
        (ConvBlock((ConvLayer("dwconv2d", 3, None), ConvLayer("conv2d", 3, 4))),),
        Pooling("avg", 2),
        (),
    )
    torch.manual_seed(1)
    calibration = np.random.default_rng(2).random((16, 8, 8, 1), dtype=np.float32)
    small = quantize(arch, build_model(arch).eval(), calibration)
    result = run(small, test_split, core="cortex-m3", n_inputs=2)
    build = result.step("arm_build")
    assert build.status == PASSED, build.message
    assert build.numbers["model_array_bytes"] == generate_header(small, NAME).flash_bytes


# Each layer is a function of its own (NNK_LAYER in kernels.h).  With plain noinline, GCC 12.2
# removed the call to this model's 8x8x4 -> 8x8x1 pointwise layer, whose output only the Add
# reads, on the DSP cores: every output differed.  The test pins that it runs.
ADD_ARCH = Architecture(
    (8, 8, 1),
    10,
    (
        ConvBlock((ConvLayer("dwconv2d", 3, None, batchnorm=False),)),
        ConvBlock(
            (ConvLayer("conv1x1", 1, 4), ConvLayer("conv1x1", 1, 1, batchnorm=False)),
            branch=True,
        ),
    ),
    Pooling("avg", "global"),
    (Dense(232), Dense(40), Dense(30)),
)


@pytest.mark.parametrize("core", ["cortex-m4f", "cortex-m33"])
def test_a_layer_read_only_by_an_add_still_runs(test_split: tuple, core: str) -> None:
    torch.manual_seed(101010)
    model = build_model(ADD_ARCH).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    calibration = np.random.default_rng(101010).random((32, 8, 8, 1), dtype=np.float32)
    result = run(quantize(ADD_ARCH, model, calibration), test_split, core=core, n_inputs=20)
    assert result.passed, result.summary
