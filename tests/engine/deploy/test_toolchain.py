"""The Cortex-M toolchain wrappers against the real compilers and the real qemu-system-arm.

Nothing is skipped: without the tools these tests fail with the apt command that installs them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from searches.engine.deploy.qemu import plugin_path, qemu_command, qemu_run
from searches.engine.deploy.toolchain import (
    APT_COMMAND,
    ARM_TOOLS,
    DEFAULT_STACK_BYTES,
    HOST_TOOLS,
    QEMU_TOOLS,
    TARGETS,
    UNSUPPORTED,
    ArmImage,
    BoardTooSmall,
    CompileError,
    LinkOverflow,
    QemuError,
    QemuTimeout,
    Target,
    ToolchainMissing,
    UnsupportedCore,
    arm_link,
    find_tools,
    symbol_sizes,
    target_for,
)

pytestmark = pytest.mark.engine

HELLO = r"""
#include <stdint.h>
#include "semihost.h"
static int8_t buf[64];
static volatile uint32_t initialised = 12345u; /* in .data: checks the copy from flash */
int main(void)
{
    int i;
    for (i = 0; i < 64; i++) buf[i] = (int8_t)(i * 3 - 100);
    sh_puts("hello\n");
    sh_put_hex_line("o ", buf, 4);
    sh_put_uint_line("v ", initialised);
    return EXIT_STATUS;
}
"""

# A counted loop: LOOPS iterations of exactly three instructions (subs, nop, bne).
LOOP = """
    .syntax unified
    .thumb
    .text
    .thumb_func
    .globl main
main:
    ldr r0, =LOOPS
1:  subs r0, #1
    nop
    bne 1b
    movs r0, #0
    bx lr
"""

HANG = 'int main(void) { for (;;) { __asm__ volatile(""); } }\n'
FAULT = 'int main(void) { __asm__ volatile("udf #0"); return 0; }\n'
BIG = "static const volatile char table[40000] = {1};\nint main(void) { return table[0] - 1; }\n"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    try:
        find_tools(HOST_TOOLS + ARM_TOOLS + QEMU_TOOLS)
    except ToolchainMissing as exc:
        pytest.fail(str(exc))


def build(
    tmp_path: Path,
    source: str,
    core: str = "cortex-m4f",
    *,
    suffix: str = ".c",
    defines: tuple[str, ...] = (),
    flash_limit_bytes: int = 256 * 1024,
    ram_limit_bytes: int = 64 * 1024,
    stack_bytes: int = DEFAULT_STACK_BYTES,
) -> ArmImage:
    src = tmp_path / f"prog{suffix}"
    src.write_text(source)
    return arm_link(
        [src],
        tmp_path / f"prog-{core}.elf",
        target=TARGETS[core],
        flash_limit_bytes=flash_limit_bytes,
        ram_limit_bytes=ram_limit_bytes,
        stack_bytes=stack_bytes,
        defines=defines,
    )


@pytest.mark.parametrize("core", list(TARGETS))
def test_every_core_boots_with_semihosting(tmp_path: Path, core: str) -> None:
    image = build(tmp_path, HELLO, core, defines=("EXIT_STATUS=0",))
    run = qemu_run(image)
    assert run.output == "hello\no 9c9fa2a5\nv 12345\n"
    assert run.exit_status == 0


def test_the_exit_status_comes_back(tmp_path: Path) -> None:
    image = build(tmp_path, HELLO, defines=("EXIT_STATUS=7",))
    assert qemu_run(image, check=False).exit_status == 7
    with pytest.raises(QemuError, match="status 7"):
        qemu_run(image)


def test_plugin_counts_instructions_exactly(tmp_path: Path) -> None:
    counts: dict[int, int | None] = {}
    for loops in (1000, 3000):
        image = build(tmp_path, LOOP, suffix=".S", defines=(f"LOOPS={loops}",))
        counts[loops] = qemu_run(image, count_instructions=True).instructions
    assert counts[3000] is not None and counts[1000] is not None
    assert counts[3000] - counts[1000] == 3 * 2000

    # the same total as QEMU's own one-instruction-per-block trace (the slow reference)
    trace = tmp_path / "trace.log"
    cmd = qemu_command(image, image.target, tmp_path / "sh.txt")
    cmd[-2:-2] = ["-singlestep", "-d", "exec,nochain", "-D", str(trace)]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    traced = sum(line.startswith("Trace") for line in trace.read_text().splitlines())
    assert traced == counts[3000]


def test_plugin_is_built_once_per_source(tmp_path: Path) -> None:
    first = plugin_path(tmp_path)
    assert first.parent == tmp_path and first.name.startswith("insn_count-")
    mtime = first.stat().st_mtime_ns
    assert plugin_path(tmp_path) == first
    assert first.stat().st_mtime_ns == mtime


def test_sizes_count_data_bss_and_the_stack(tmp_path: Path) -> None:
    image = build(tmp_path, HELLO, defines=("EXIT_STATUS=0",), stack_bytes=1024)
    sizes = image.sizes
    assert sizes.data == 4  # `initialised`
    assert sizes.bss >= 64 + 1024  # buf + the reserved stack
    assert sizes.flash_bytes == sizes.text + sizes.data
    assert sizes.ram_bytes == sizes.data + sizes.bss
    symbols = symbol_sizes(image.elf)
    assert symbols["buf"] == 64 and symbols["initialised"] == 4
    assert symbol_sizes(image.elf, "init") == {"initialised": 4}


def test_an_oversized_image_fails_at_link_time(tmp_path: Path) -> None:
    with pytest.raises(LinkOverflow) as caught:
        build(tmp_path, BIG, flash_limit_bytes=32 * 1024)
    assert "region `FLASH' overflowed" in caught.value.output
    assert 40000 - 32 * 1024 < caught.value.overflows["FLASH"] < 40000 - 32 * 1024 + 1024
    assert "FLASH by" in str(caught.value)


def test_the_stack_must_fit_in_ram(tmp_path: Path) -> None:
    with pytest.raises(LinkOverflow) as caught:
        build(tmp_path, HELLO, defines=("EXIT_STATUS=0",), ram_limit_bytes=2048, stack_bytes=4096)
    assert set(caught.value.overflows) == {"RAM"}
    assert "4096-byte stack" in str(caught.value)


def test_compile_errors_carry_the_compiler_output(tmp_path: Path) -> None:
    with pytest.raises(CompileError) as caught:
        build(tmp_path, "int main(void) { int unused; return 0; }\n")
    assert "unused variable" in caught.value.output


def test_a_hang_times_out(tmp_path: Path) -> None:
    image = build(tmp_path, HANG)
    with pytest.raises(QemuTimeout, match="did not finish within 1 s"):
        qemu_run(image, timeout_s=1)


def test_a_fault_is_reported(tmp_path: Path) -> None:
    image = build(tmp_path, FAULT)
    with pytest.raises(QemuError, match=r"faulted on mps2-an386 \(exception 3\)"):
        qemu_run(image)


def test_an_image_larger_than_the_board_does_not_run(tmp_path: Path) -> None:
    image = build(tmp_path, BIG, core="cortex-m3")
    small = Target(**{**image.target.__dict__, "board_flash_bytes": 32 * 1024})
    with pytest.raises(BoardTooSmall, match="mps2-an385 has 32768"):
        qemu_run(ArmImage(**{**image.__dict__, "target": small}))


def test_missing_tools_name_the_apt_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolchainMissing) as caught:
        find_tools(ARM_TOOLS + QEMU_TOOLS)
    message = str(caught.value)
    assert "arm-none-eabi-gcc" in message and "qemu-system-arm" in message
    assert APT_COMMAND in message
    assert "--no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm" in message


@pytest.mark.parametrize("core", ["avr", "xtensa-lx7"])
def test_non_cortex_cores_are_unsupported(core: str) -> None:
    with pytest.raises(UnsupportedCore, match="not supported by the Cortex-M verification"):
        target_for(core)


def test_targets_cover_the_cortex_cores_of_the_resource_model() -> None:
    from searches.engine.resources.latency import CORES

    assert set(TARGETS) | set(UNSUPPORTED) == set(CORES)
