"""qemu-system-arm: run a Cortex-M image with semihosting and count its instructions exactly."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from searches.engine.deploy.toolchain import (
    C_DIR,
    DEFAULT_QEMU_TIMEOUT_S,
    HOST_TOOLS,
    PLUGIN_HEADER,
    PLUGIN_SOURCE,
    QEMU_TOOLS,
    WARNING_FLAGS,
    ArmImage,
    BoardTooSmall,
    QemuError,
    QemuTimeout,
    Target,
    arm_size,
    find_tools,
    run_tool,
    tool_version,
)

# ---- QEMU ------------------------------------------------------------------------------


@dataclass
class QemuRun:
    """What an emulated program printed (semihosting), its exit status and its instruction count."""

    exit_status: int
    output: str
    seconds: float
    instructions: int | None = None
    command: list[str] = field(default_factory=list)


def cache_dir() -> Path:
    """Where built helpers (the QEMU plugin) are kept: $NASWEB_CACHE_DIR or ~/.cache/nasweb."""
    env = os.environ.get("NASWEB_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nasweb"


def plugin_path(directory: Path | None = None, source: Path = PLUGIN_SOURCE) -> Path:
    """The instruction-counting plugin (or another plugin ``source`` written against the same
    API header), built with the host gcc on first use.

    The file name carries a hash of the plugin sources and the gcc version, so an edited
    plugin is rebuilt and concurrent builders never overwrite a file QEMU is loading.
    """
    directory = directory or cache_dir()
    gcc = find_tools(HOST_TOOLS)["gcc"]
    digest = hashlib.sha256()
    for part in (source.read_bytes(), PLUGIN_HEADER.read_bytes(), tool_version("gcc").encode()):
        digest.update(part)
    so = directory / f"{source.stem}-{digest.hexdigest()[:16]}.so"
    if so.exists():
        return so
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        flags = ["-shared", "-fPIC", "-std=c99", *WARNING_FLAGS, "-O2", f"-I{C_DIR}"]
        run_tool([gcc, *flags, "-o", tmp, str(source)], f"building the QEMU plugin {source.name}")
        os.replace(tmp, so)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return so


def qemu_command(
    image: ArmImage | Path,
    target: Target,
    semihosting_file: Path,
    *,
    plugin: Path | None = None,
    plugin_log: Path | None = None,
) -> list[str]:
    """The qemu-system-arm command line that runs ``image`` with semihosting to a file."""
    elf = image.elf if isinstance(image, ArmImage) else image
    sizes = image.sizes if isinstance(image, ArmImage) else arm_size(elf)
    qemu = find_tools(QEMU_TOOLS)["qemu-system-arm"]
    cmd = [
        qemu,
        "-M",
        target.machine,
        "-cpu",
        target.cpu,
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-chardev",
        f"file,id=sh0,path={semihosting_file}",
        "-semihosting-config",
        "enable=on,target=native,chardev=sh0",
        *target.qemu_memory_args(sizes.flash_bytes, sizes.ram_bytes),
    ]
    if plugin is not None:
        if plugin_log is None:
            raise ValueError("plugin_log is required with a plugin")
        cmd += ["-plugin", str(plugin), "-d", "plugin", "-D", str(plugin_log)]
    return [*cmd, "-kernel", str(elf)]


def check_fits_board(image: ArmImage) -> None:
    """Raise :class:`BoardTooSmall` if the image exceeds the memory of its QEMU board."""
    t, s = image.target, image.sizes
    if s.flash_bytes > t.board_flash_bytes or s.ram_bytes > t.board_ram_bytes:
        raise BoardTooSmall(
            f"the image needs {s.flash_bytes} bytes of flash and {s.ram_bytes} of RAM; QEMU's "
            f"{t.machine} has {t.board_flash_bytes} and {t.board_ram_bytes}"
        )


_INSNS = re.compile(r"^insns: (\d+)$", re.M)


def qemu_run(
    image: ArmImage,
    *,
    timeout_s: float = DEFAULT_QEMU_TIMEOUT_S,
    count_instructions: bool = False,
    check: bool = True,
    workdir: Path | None = None,
) -> QemuRun:
    """Run an image under qemu-system-arm with semihosting; optionally count its instructions.

    Raises :class:`QemuTimeout` after ``timeout_s``, and :class:`QemuError` when QEMU fails or
    (with ``check``) the program exits with a non-zero status; the error carries what it printed.
    """
    check_fits_board(image)
    plugin = plugin_path() if count_instructions else None
    with tempfile.TemporaryDirectory(prefix="nasweb-qemu-", dir=workdir) as tmp:
        out_file, log_file = Path(tmp) / "semihosting.txt", Path(tmp) / "plugin.log"
        cmd = qemu_command(image, image.target, out_file, plugin=plugin, plugin_log=log_file)
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            printed = out_file.read_text(errors="replace") if out_file.exists() else ""
            raise QemuTimeout(
                f"the program did not finish within {timeout_s:g} s under QEMU {image.target.machine} "
                "(a hang, a fault loop, or an image far too slow to emulate)",
                printed,
            ) from exc
        seconds = time.perf_counter() - start
        printed = out_file.read_text(errors="replace") if out_file.exists() else ""
        instructions = None
        if plugin is not None:
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            match = _INSNS.search(log)
            if match is None:
                raise QemuError("the instruction-counting plugin printed no count", log + proc.stderr)
            instructions = int(match[1])
    if proc.returncode != 0 and (check or proc.returncode < 0):
        detail = printed + proc.stderr
        if proc.returncode >= 128 and "nasweb: fault" in printed:
            raise QemuError(
                f"the program faulted on {image.target.machine} (exception {proc.returncode - 128})", detail
            )
        raise QemuError(f"the program exited with status {proc.returncode} under QEMU", detail)
    return QemuRun(proc.returncode, printed, seconds, instructions, cmd)
