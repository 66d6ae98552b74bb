"""Host gcc, the Arm bare-metal toolchain and qemu-system-arm, wrapped for the export checks.

Everything here shells out to the Debian tools (``gcc``, ``arm-none-eabi-gcc/size/nm``,
``qemu-system-arm``); when one is missing, :class:`ToolchainMissing` names it together with
the apt command that installs it, instead of a bare ``FileNotFoundError``.

Cortex-M images are built bare metal (``-nostdlib -ffreestanding``) from nasweb's own startup
(``c/startup.S``) and linker script (``c/cortex_m.ld``) whose FLASH and RAM regions come from
``--defsym``: linking with a profile's flash and SRAM budget makes an oversized model fail at
link time, reported as :class:`LinkOverflow` with the overflow bytes.  A reserved stack of
``stack_bytes`` (default :data:`DEFAULT_STACK_BYTES`) sits in RAM after ``.bss`` and counts
against the SRAM budget.

Images run under QEMU with semihosting (text captured through a ``-chardev file``, exit status
through SYS_EXIT_EXTENDED) and a timeout.  Instructions are counted exactly by a small TCG
plugin of our own (``c/insn_count.c``), built with the host gcc into a content-addressed
cache directory on first use.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

C_DIR = Path(__file__).resolve().parent / "c"
STARTUP = C_DIR / "startup.S"
LINKER_SCRIPT = C_DIR / "cortex_m.ld"
SEMIHOST_HEADER = C_DIR / "semihost.h"
PLUGIN_SOURCE = C_DIR / "insn_count.c"
PLUGIN_HEADER = C_DIR / "qemu_plugin_api.h"

APT_PACKAGES = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "qemu-system-arm")
APT_COMMAND = "apt-get install -y --no-install-recommends " + " ".join(APT_PACKAGES)

HOST_TOOLS = ("gcc",)
ARM_TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm")
QEMU_TOOLS = ("qemu-system-arm",)
# Which Debian package provides each tool, for the install hint.
TOOL_PACKAGES = {
    "gcc": "gcc",
    "arm-none-eabi-gcc": "gcc-arm-none-eabi",
    "arm-none-eabi-size": "binutils-arm-none-eabi (a dependency of gcc-arm-none-eabi)",
    "arm-none-eabi-nm": "binutils-arm-none-eabi (a dependency of gcc-arm-none-eabi)",
    "qemu-system-arm": "qemu-system-arm",
}

# Bytes reserved for the call stack of a Cortex-M image (after .bss, inside the SRAM budget).
# The kernels keep their state in registers and the arena, so the model itself needs a few
# hundred bytes; the verification reports the measured high-water mark against this reserve.
DEFAULT_STACK_BYTES = 2048
DEFAULT_QEMU_TIMEOUT_S = 60.0
DEFAULT_OPT = "-O2"
WARNING_FLAGS = ("-Wall", "-Wextra", "-pedantic", "-Werror")
HOST_CFLAGS = ("-std=c99", *WARNING_FLAGS, DEFAULT_OPT)
# No --gc-sections: the compiler already drops unreferenced static functions, and a model
# array whose few values the compiler folded into the code must stay in the image, so that the
# arrays' bytes in the ELF are the header's flash figure (the header marks them `used`).
BARE_METAL_FLAGS = ("-ffreestanding", "-nostdlib", "-Wl,-z,noexecstack")


# ---- errors ----------------------------------------------------------------------------


class ToolchainError(RuntimeError):
    """A build or run step failed; ``output`` holds the tool's own messages."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.output = output


class ToolchainMissing(ToolchainError):
    """Tools the export checks need are not installed (the message says how to install them)."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        packages = sorted({TOOL_PACKAGES.get(t, t) for t in self.missing})
        super().__init__(
            f"missing tools: {', '.join(self.missing)} (Debian packages: {', '.join(packages)}). "
            f"Install the Cortex-M toolchain and QEMU with: sudo {APT_COMMAND}"
        )


class UnsupportedCore(ToolchainError):
    """The profile's core has no Cortex-M build or QEMU board (AVR, Xtensa)."""


class CompileError(ToolchainError):
    """The compiler or linker rejected the program."""


class LinkOverflow(CompileError):
    """The image does not fit the memory regions; ``overflows`` maps region → bytes over."""

    def __init__(self, message: str, output: str, overflows: dict[str, int]) -> None:
        super().__init__(message, output)
        self.overflows = overflows


class BoardTooSmall(ToolchainError):
    """The image fits the profile but not the memory of the QEMU board that emulates its core."""


class QemuTimeout(ToolchainError):
    """The emulated program did not finish in time (a hang, a fault loop, or a far too slow model)."""


class QemuError(ToolchainError):
    """QEMU failed to start or the program ended with a non-zero status."""


# ---- tools -----------------------------------------------------------------------------


def find_tools(names: Sequence[str]) -> dict[str, str]:
    """Paths of ``names`` on PATH; raises :class:`ToolchainMissing` naming every missing one."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise ToolchainMissing(missing)
    return {name: path for name, path in found.items() if path is not None}


def missing_tools(names: Sequence[str] = HOST_TOOLS + ARM_TOOLS + QEMU_TOOLS) -> list[str]:
    """The tools among ``names`` that are not on PATH."""
    return [name for name in names if shutil.which(name) is None]


@functools.cache
def tool_version(name: str) -> str:
    """First line of ``name --version`` (``"not installed"`` if it is missing)."""
    path = shutil.which(name)
    if path is None:
        return "not installed"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def tool_versions(names: Sequence[str]) -> dict[str, str]:
    """``{tool: version line}`` for the given tools."""
    return {name: tool_version(name) for name in names}


def run_tool(cmd: Sequence[str], what: str, cwd: Path | None = None, timeout: float = 300) -> str:
    """Run a build command; raise :class:`CompileError` with its output if it fails."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ToolchainMissing([cmd[0]]) from exc
    except subprocess.TimeoutExpired as exc:
        raise CompileError(f"{what} took longer than {timeout:.0f} s", str(exc.stderr or "")) from exc
    output = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        raise CompileError(f"{what} failed (exit status {out.returncode})", output)
    return output


# ---- targets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """How to build for one core and which QEMU board runs it.

    ``flash_origin``/``ram_origin`` are where the board has memory; ``board_*_bytes`` is how
    much (the image must fit that to run, on top of fitting the profile's budget).
    """

    core: str
    label: str
    cflags: tuple[str, ...]
    machine: str
    cpu: str
    flash_origin: int
    board_flash_bytes: int
    ram_origin: int
    board_ram_bytes: int
    # nrf51 (micro:bit) memory sizes are device properties; QEMU sizes them to the image.
    sized_by_global: str | None = None
    notes: str = ""

    def qemu_memory_args(self, flash_needed: int, ram_needed: int) -> list[str]:
        """Extra QEMU options that give the board enough memory for an image (micro:bit only)."""
        if self.sized_by_global is None:
            return []
        flash = max(_round_up(flash_needed, 64 * 1024), 256 * 1024)
        ram = max(_round_up(ram_needed, 16 * 1024), 16 * 1024)
        return [
            "-global",
            f"{self.sized_by_global}.flash-size={flash}",
            "-global",
            f"{self.sized_by_global}.sram-size={ram}",
        ]


def _round_up(n: int, step: int) -> int:
    return (n + step - 1) // step * step


MIB = 1024 * 1024
_FP_M4 = ("-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")

TARGETS: dict[str, Target] = {
    t.core: t
    for t in (
        Target(
            "cortex-m0plus",
            "Cortex-M0+",
            ("-mcpu=cortex-m0plus", "-mthumb"),
            "microbit",
            "cortex-m0",
            0x0000_0000,
            0x1000_0000,  # nRF51 flash ends where the FICR starts
            0x2000_0000,
            64 * MIB,
            sized_by_global="nrf51-soc",
            notes="QEMU has no Cortex-M0+ model: the image (built for the M0+) runs on the "
            "micro:bit's Cortex-M0, the same ARMv6-M instruction set",
        ),
        Target(
            "cortex-m3",
            "Cortex-M3",
            ("-mcpu=cortex-m3", "-mthumb"),
            "mps2-an385",
            "cortex-m3",
            0x0000_0000,
            4 * MIB,
            0x2000_0000,
            4 * MIB,
            notes="mps2-an385 rather than lm3s6965evb, whose 64 KiB of SRAM is smaller than most profiles",
        ),
        Target(
            "cortex-m4f",
            "Cortex-M4F",
            ("-mcpu=cortex-m4", "-mthumb", *_FP_M4),
            "mps2-an386",
            "cortex-m4",
            0x0000_0000,
            4 * MIB,
            0x2000_0000,
            4 * MIB,
        ),
        Target(
            "cortex-m7",
            "Cortex-M7",
            ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
            "mps2-an500",
            "cortex-m7",
            0x0000_0000,
            4 * MIB,
            0x2000_0000,
            4 * MIB,
        ),
        Target(
            "cortex-m33",
            "Cortex-M33",
            ("-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
            "mps2-an505",
            "cortex-m33",
            0x1000_0000,  # the secure alias of SSRAM1: the core boots in the secure state
            4 * MIB,
            0x3800_0000,  # secure alias of SSRAM2 and SSRAM3 (2 + 2 MiB, contiguous)
            4 * MIB,
        ),
    )
}

UNSUPPORTED = {
    "avr": "AVR 8-bit cores are not supported by the Cortex-M verification (no avr-gcc build or "
    "QEMU board here); the host check still runs",
    "xtensa-lx7": "Xtensa LX7 (ESP32-S3) is not supported by the Cortex-M verification (it needs "
    "Espressif's toolchain and QEMU fork); the host check still runs",
}


def target_for(core: str) -> Target:
    """The Cortex-M target for a profile core key; :class:`UnsupportedCore` for AVR/Xtensa."""
    if core in TARGETS:
        return TARGETS[core]
    if core in UNSUPPORTED:
        raise UnsupportedCore(UNSUPPORTED[core])
    raise UnsupportedCore(f"unknown core {core!r}; the Cortex-M verification knows {', '.join(TARGETS)}")


# ---- host builds -----------------------------------------------------------------------


def host_compile(
    sources: Sequence[Path],
    output: Path,
    *,
    include_dirs: Sequence[Path] = (),
    cflags: Sequence[str] = HOST_CFLAGS,
) -> Path:
    """Compile and link a host program with gcc (warnings are errors by default)."""
    gcc = find_tools(HOST_TOOLS)["gcc"]
    cmd = [gcc, *cflags, *(f"-I{d}" for d in include_dirs), "-o", str(output), *map(str, sources)]
    run_tool(cmd, "host gcc build")
    return output


# ---- Cortex-M builds -------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Section totals of an ELF as arm-none-eabi-size (Berkeley format) reports them."""

    text: int
    data: int
    bss: int

    @property
    def flash_bytes(self) -> int:
        """What the image occupies in flash: code and constants, plus .data's initial values."""
        return self.text + self.data

    @property
    def ram_bytes(self) -> int:
        """What the image occupies in SRAM: .data + .bss (which includes the reserved stack)."""
        return self.data + self.bss


@dataclass(frozen=True)
class ArmImage:
    """A linked Cortex-M ELF with its sizes."""

    elf: Path
    target: Target
    sizes: Sizes
    stack_bytes: int
    flash_limit_bytes: int
    ram_limit_bytes: int


_OVERFLOW = re.compile(r"region [`']?(\w+)'? overflowed by (\d+) bytes")


def arm_compile_flags(target: Target, opt: str = DEFAULT_OPT) -> list[str]:
    """C flags for the target core (C99, warnings as errors, bare metal)."""
    return ["-std=c99", *WARNING_FLAGS, opt, *target.cflags]


def arm_link(
    sources: Sequence[Path],
    output: Path,
    *,
    target: Target,
    flash_limit_bytes: int,
    ram_limit_bytes: int,
    stack_bytes: int = DEFAULT_STACK_BYTES,
    include_dirs: Sequence[Path] = (),
    defines: Sequence[str] = (),
    opt: str = DEFAULT_OPT,
    extra_flags: Sequence[str] = (),
) -> ArmImage:
    """Compile and link a bare-metal image with nasweb's startup, within the given memory limits.

    Raises :class:`LinkOverflow` (with the bytes over, per region) when the image does not fit,
    :class:`CompileError` for any other compiler or linker error.
    """
    tools = find_tools(ARM_TOOLS)
    if flash_limit_bytes <= 0 or ram_limit_bytes <= 0:
        raise ValueError("flash and RAM limits must be positive")
    cmd = [
        tools["arm-none-eabi-gcc"],
        *arm_compile_flags(target, opt),
        *BARE_METAL_FLAGS,
        *extra_flags,
        *(f"-D{d}" for d in defines),
        *(f"-I{d}" for d in (C_DIR, *include_dirs)),
        "-T",
        str(LINKER_SCRIPT),
        f"-Wl,--defsym=__flash_origin={target.flash_origin:#x}",
        f"-Wl,--defsym=__flash_length={flash_limit_bytes}",
        f"-Wl,--defsym=__ram_origin={target.ram_origin:#x}",
        f"-Wl,--defsym=__ram_length={ram_limit_bytes}",
        f"-Wl,--defsym=__stack_size={stack_bytes}",
        "-o",
        str(output),
        str(STARTUP),
        *map(str, sources),
        "-lgcc",
    ]
    try:
        run_tool(cmd, f"arm-none-eabi-gcc build for {target.label}")
    except CompileError as exc:
        overflows = {m[1]: int(m[2]) for m in _OVERFLOW.finditer(exc.output)}
        if overflows:
            over = ", ".join(
                f"{region} by {n} bytes"
                + (f" (limit {flash_limit_bytes if region == 'FLASH' else ram_limit_bytes} bytes)")
                for region, n in overflows.items()
            )
            raise LinkOverflow(
                f"the image does not fit the memory budget: {over}; RAM includes a {stack_bytes}-byte stack",
                exc.output,
                overflows,
            ) from exc
        raise
    return ArmImage(output, target, arm_size(output), stack_bytes, flash_limit_bytes, ram_limit_bytes)


def arm_size(elf: Path) -> Sizes:
    """text/data/bss of an ELF from ``arm-none-eabi-size``."""
    size = find_tools(("arm-none-eabi-size",))["arm-none-eabi-size"]
    out = run_tool([size, "-B", str(elf)], "arm-none-eabi-size")
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and all(f.isdigit() for f in fields[:3]):
            return Sizes(int(fields[0]), int(fields[1]), int(fields[2]))
    raise ToolchainError("could not parse arm-none-eabi-size output", out)


def symbol_sizes(elf: Path, prefix: str = "") -> dict[str, int]:
    """``{symbol: bytes}`` of the defined data/code symbols whose name starts with ``prefix``."""
    nm = find_tools(("arm-none-eabi-nm",))["arm-none-eabi-nm"]
    out = run_tool([nm, "-S", "--defined-only", str(elf)], "arm-none-eabi-nm")
    sizes: dict[str, int] = {}
    for line in out.splitlines():
        fields = line.split()
        # "<address> <size> <type> <name>"; symbols without a size have three fields
        if len(fields) == 4 and fields[3].startswith(prefix):
            sizes[fields[3]] = int(fields[1], 16)
    return sizes
