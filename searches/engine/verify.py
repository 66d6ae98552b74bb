"""Verify an exported C header: bit-exact on the host, fits the profile on Cortex-M, runs under QEMU.

:func:`verify_export` runs four steps on a quantised model and its generated header:

1. **host** — gcc (``-std=c99 -Wall -Wextra -pedantic -Werror``) builds the header with a
   harness that runs every test input from a binary file; the output bytes of the first
   ``n_inputs`` must equal :func:`~searches.engine.quant.run_int8`'s and the C accuracy over
   the whole test split must equal :func:`~searches.engine.quant.int8_accuracy`.
2. **arm_build** — arm-none-eabi-gcc builds the smallest application around the model for the
   profile's core with the same warning flags, linked with the profile's flash and SRAM as
   memory regions (an oversized model fails to link); it reports flash (text+data) and RAM
   (data+bss, including a reserved stack) from arm-none-eabi-size and checks that the model's
   constant arrays (``nm -S``, symbols ``<name>_param_*``) equal the header's predicted flash.
3. **qemu** — an image with ``n_inputs`` test inputs compiled in as a const array runs under
   qemu-system-arm with semihosting and a timeout; its outputs must equal the reference.
4. **instructions** — the same image with every inference repeated once more; the difference
   of the two instruction counts (nasweb's TCG plugin, exact) over ``n_inputs`` is the
   instructions per inference, shown with a latency *estimate* at the profile's clock
   assuming one cycle per instruction (QEMU is not cycle-accurate).

Each step records a status (passed/failed/skipped/unavailable), a message, its numbers and the
versions of the tools it used; a step whose prerequisite did not pass is skipped, saying why.
Missing tools or a core without a Cortex-M target make a step *unavailable*, with the install
hint or the reason in its message.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from searches.engine import toolchain as tc
from searches.engine.export import CHeader, generate_header
from searches.engine.quant import QuantModel, int8_accuracy, run_int8
from searches.engine.resources import latency_ms

PASSED, FAILED, SKIPPED, UNAVAILABLE, RUNNING = "passed", "failed", "skipped", "unavailable", "running"
STEPS: tuple[tuple[str, str], ...] = (
    ("host", "Host build (gcc): bit-exact outputs and accuracy"),
    ("arm_build", "Cortex-M build (arm-none-eabi-gcc) within the profile's flash and SRAM"),
    ("qemu", "Run under QEMU: outputs identical to the reference"),
    ("instructions", "Instructions per inference (QEMU) and estimated latency"),
)
SHORT_TITLES = {
    "host": "host build",
    "arm_build": "Cortex-M build",
    "qemu": "QEMU run",
    "instructions": "instruction count",
}
# A step runs only if these steps passed.
DEPENDS_ON = {"host": (), "arm_build": (), "qemu": ("arm_build",), "instructions": ("qemu",)}
HOST_RUN_TIMEOUT_S = 300.0
CYCLES_PER_INSTRUCTION = 1.0


@dataclass
class StepResult:
    """The outcome of one verification step."""

    key: str
    title: str
    status: str = RUNNING
    message: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    log: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the web layer stores it on the candidate)."""
        return {
            "key": self.key,
            "title": self.title,
            "status": self.status,
            "message": self.message,
            "numbers": dict(self.numbers),
            "tools": dict(self.tools),
            "seconds": round(self.seconds, 3),
            "log": self.log,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepResult:
        return cls(
            **{
                k: data[k]
                for k in ("key", "title", "status", "message", "numbers", "tools", "seconds", "log")
            }
        )


@dataclass
class ExportVerification:
    """All four steps' results for one header, one core and one memory budget."""

    name: str
    core: str
    flash_limit_bytes: int
    sram_limit_bytes: int
    clock_mhz: float
    steps: list[StepResult]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True only if every step passed (an unavailable step is not a pass)."""
        return all(step.status == PASSED for step in self.steps)

    def step(self, key: str) -> StepResult:
        """The result of the step named ``key``."""
        return next(s for s in self.steps if s.key == key)

    @property
    def summary(self) -> str:
        """One line: passed, or the first step that did not pass and why."""
        if self.passed:
            return "all verification steps passed"
        bad = next(s for s in self.steps if s.status != PASSED)
        return f"{bad.title}: {bad.status}: {bad.message}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole verification."""
        return {
            "name": self.name,
            "core": self.core,
            "flash_limit_bytes": self.flash_limit_bytes,
            "sram_limit_bytes": self.sram_limit_bytes,
            "clock_mhz": self.clock_mhz,
            "passed": self.passed,
            "summary": self.summary,
            "seconds": round(self.seconds, 3),
            "steps": [s.to_json() for s in self.steps],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportVerification:
        return cls(
            name=data["name"],
            core=data["core"],
            flash_limit_bytes=data["flash_limit_bytes"],
            sram_limit_bytes=data["sram_limit_bytes"],
            clock_mhz=data["clock_mhz"],
            steps=[StepResult.from_json(s) for s in data["steps"]],
            seconds=data.get("seconds", 0.0),
        )


class _StepFailed(Exception):
    """Ends a step with a status other than passed."""

    def __init__(self, status: str, message: str, log: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.log = log


def _tail(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


# ---- the generated C around the header -----------------------------------------------


def _write_sources(directory: Path, header: CHeader) -> None:
    """The header plus model_glue.h, which maps its names to the harnesses' MODEL_* names."""
    upper = header.name.upper()
    (directory / f"{header.name}.h").write_text(header.text)
    (directory / "model_glue.h").write_text(
        f"/* Generated by nasweb's export verification. */\n"
        f"#define {upper}_IMPLEMENTATION\n"
        f'#include "{header.name}.h"\n'
        f"#define MODEL_INPUT_SIZE {upper}_INPUT_SIZE\n"
        f"#define MODEL_OUTPUT_SIZE {upper}_OUTPUT_SIZE\n"
        f"#define model_run {header.name}_run\n"
    )


def _inputs_header(xq: npt.NDArray[np.int8]) -> str:
    """verify_inputs.h: the test inputs as one const array in flash."""
    rows = []
    for x in xq.reshape(len(xq), -1):
        values = ",".join(str(int(v)) for v in x)
        rows.append("    {" + values + "}")
    return (
        "/* Generated by nasweb's export verification: test inputs, int8 HWC. */\n"
        f"#define MODEL_N_INPUTS {len(xq)}u\n"
        "static const int8_t model_inputs[MODEL_N_INPUTS][MODEL_INPUT_SIZE] = {\n"
        + ",\n".join(rows)
        + "\n};\n"
    )


def _parse_outputs(printed: str, n: int, classes: int) -> npt.NDArray[np.int8]:
    lines = [line[2:] for line in printed.splitlines() if line.startswith("o ")]
    if len(lines) != n:
        raise _StepFailed(FAILED, f"the program printed {len(lines)} outputs, expected {n}", printed)
    raw = b"".join(bytes.fromhex(line) for line in lines)
    out = np.frombuffer(raw, dtype=np.int8)
    if out.size != n * classes:
        raise _StepFailed(FAILED, f"the outputs have {out.size} bytes, expected {n * classes}", printed)
    return out.reshape(n, classes)


def _stack_used(printed: str) -> int | None:
    for line in printed.splitlines():
        if line.startswith("stack "):
            return int(line.split()[1])
    return None


def _first_mismatch(got: npt.NDArray[np.int8], want: npt.NDArray[np.int8]) -> str:
    bad = np.argwhere(got != want)
    if len(bad) == 0:
        return ""
    i, j = (int(v) for v in bad[0])
    return (
        f"{len(bad)} of {want.size} output bytes differ; first at input {i}, logit {j}: "
        f"C {int(got[i, j])}, Python {int(want[i, j])}"
    )


# ---- the steps -------------------------------------------------------------------------


@dataclass
class _Context:
    qm: QuantModel
    header: CHeader
    directory: Path
    core: str
    flash_limit_bytes: int
    sram_limit_bytes: int
    clock_mhz: float
    test_x: npt.NDArray[Any]
    test_y: npt.NDArray[Any]
    n_inputs: int
    stack_bytes: int
    qemu_timeout_s: float
    xq: npt.NDArray[np.int8] = field(init=False)
    reference: npt.NDArray[np.int8] = field(init=False)
    qemu_image: tc.ArmImage | None = None

    def __post_init__(self) -> None:
        self.xq = self.qm.quantize_input(self.test_x)
        self.reference = run_int8(self.qm, self.xq[: self.n_inputs])


def _step_host(ctx: _Context, step: StepResult) -> None:
    step.tools = tc.tool_versions(tc.HOST_TOOLS)
    _require(tc.HOST_TOOLS)
    exe = ctx.directory / "verify_host"
    try:
        tc.host_compile([tc.C_DIR / "verify_host.c"], exe, include_dirs=[ctx.directory])
    except tc.CompileError as exc:
        raise _StepFailed(FAILED, f"{exc.message}: {_first_line(exc.output)}", exc.output) from exc
    inputs, outputs = ctx.directory / "test_inputs.bin", ctx.directory / "test_outputs.bin"
    inputs.write_bytes(ctx.xq.tobytes())
    start = time.perf_counter()
    proc = subprocess.run(
        [str(exe), str(inputs), str(outputs)],
        capture_output=True,
        text=True,
        timeout=HOST_RUN_TIMEOUT_S,
        check=False,
    )
    run_seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise _StepFailed(FAILED, f"the host program exited with status {proc.returncode}", proc.stderr)
    got = np.frombuffer(outputs.read_bytes(), dtype=np.int8)
    n, classes = len(ctx.xq), ctx.qm.classes
    if got.size != n * classes:
        raise _StepFailed(
            FAILED, f"the host program wrote {got.size} bytes for {n} inputs, expected {n * classes}"
        )
    got = got.reshape(n, classes)
    c_accuracy = float((got.argmax(axis=1) == np.asarray(ctx.test_y)).mean())
    python_accuracy = int8_accuracy(ctx.qm, ctx.test_x, ctx.test_y)
    mismatch = _first_mismatch(got[: ctx.n_inputs], ctx.reference)
    step.numbers = {
        "test_inputs": n,
        "compared_inputs": len(ctx.reference),
        "output_bytes_differing": int((got[: ctx.n_inputs] != ctx.reference).sum()),
        "c_accuracy": c_accuracy,
        "python_int8_accuracy": python_accuracy,
        "host_run_seconds": round(run_seconds, 3),
    }
    if mismatch:
        raise _StepFailed(FAILED, f"host C output differs from the Python int8 reference: {mismatch}")
    if c_accuracy != python_accuracy:
        raise _StepFailed(
            FAILED,
            f"C accuracy {c_accuracy:.4%} differs from the Python int8 accuracy {python_accuracy:.4%} "
            f"over {n} test inputs",
        )
    step.message = (
        f"outputs of {len(ctx.reference)} inputs identical to the Python int8 reference; "
        f"accuracy over {n} test inputs {c_accuracy:.2%} in C and in Python"
    )


def _step_arm_build(ctx: _Context, step: StepResult) -> None:
    step.tools = tc.tool_versions(tc.ARM_TOOLS)
    target = _target(ctx.core)
    _require(tc.ARM_TOOLS)
    try:
        image = tc.arm_link(
            [tc.C_DIR / "verify_deploy.c"],
            ctx.directory / "deploy.elf",
            target=target,
            flash_limit_bytes=ctx.flash_limit_bytes,
            ram_limit_bytes=ctx.sram_limit_bytes,
            stack_bytes=ctx.stack_bytes,
            include_dirs=[ctx.directory],
        )
    except tc.LinkOverflow as exc:
        step.numbers = {f"{region.lower()}_overflow_bytes": n for region, n in exc.overflows.items()}
        raise _StepFailed(FAILED, exc.message, exc.output) from exc
    except tc.CompileError as exc:
        raise _StepFailed(FAILED, f"{exc.message}: {_first_line(exc.output)}", exc.output) from exc
    params = tc.symbol_sizes(image.elf, f"{ctx.header.name}_param_")
    arena = tc.symbol_sizes(image.elf, f"{ctx.header.name}_arena").get(f"{ctx.header.name}_arena")
    model_bytes = sum(params.values())
    step.numbers = {
        "flags": " ".join(tc.arm_compile_flags(target)),
        "text": image.sizes.text,
        "data": image.sizes.data,
        "bss": image.sizes.bss,
        "flash_bytes": image.sizes.flash_bytes,
        "ram_bytes": image.sizes.ram_bytes,
        "flash_limit_bytes": ctx.flash_limit_bytes,
        "sram_limit_bytes": ctx.sram_limit_bytes,
        "stack_reserved_bytes": ctx.stack_bytes,
        "model_array_bytes": model_bytes,
        "model_arrays": len(params),
        "predicted_flash_bytes": ctx.header.flash_bytes,
        "arena_bytes": arena,
        "predicted_arena_bytes": ctx.header.arena_bytes,
    }
    if model_bytes != ctx.header.flash_bytes:
        raise _StepFailed(
            FAILED,
            f"the model arrays in the ELF take {model_bytes} bytes, "
            f"the prediction says {ctx.header.flash_bytes}",
        )
    if arena != ctx.header.arena_bytes:
        found = "no arena symbol" if arena is None else f"an arena of {arena} bytes"
        raise _StepFailed(FAILED, f"the ELF has {found}; the prediction says {ctx.header.arena_bytes} bytes")
    step.message = (
        f"{target.label}: flash {image.sizes.flash_bytes} of {ctx.flash_limit_bytes} bytes, RAM "
        f"{image.sizes.ram_bytes} of {ctx.sram_limit_bytes} "
        f"(arena {arena}, stack reserve {ctx.stack_bytes}); "
        f"model arrays {model_bytes} bytes = predicted flash"
    )


def _step_qemu(ctx: _Context, step: StepResult) -> None:
    step.tools = tc.tool_versions(tc.QEMU_TOOLS + tc.ARM_TOOLS[:1])
    target = _target(ctx.core)
    _require(tc.QEMU_TOOLS)
    (ctx.directory / "verify_inputs.h").write_text(_inputs_header(ctx.xq[: ctx.n_inputs]))
    image = _qemu_image(ctx, target, repetitions=1)
    run = _run_qemu(ctx, image, count=False)
    got = _parse_outputs(run.output, len(ctx.reference), ctx.qm.classes)
    stack = _stack_used(run.output)
    step.numbers = {
        "machine": target.machine,
        "cpu": target.cpu,
        "inputs": len(ctx.reference),
        "image_flash_bytes": image.sizes.flash_bytes,
        "image_ram_bytes": image.sizes.ram_bytes,
        "stack_used_bytes": stack,
        "stack_reserved_bytes": ctx.stack_bytes,
        "emulation_seconds": round(run.seconds, 3),
        "command": " ".join(run.command),
    }
    if target.notes:
        step.numbers["board_note"] = target.notes
    mismatch = _first_mismatch(got, ctx.reference)
    if mismatch:
        raise _StepFailed(
            FAILED, f"QEMU output differs from the Python int8 reference: {mismatch}", run.output
        )
    if stack is None or stack >= ctx.stack_bytes:
        raise _StepFailed(FAILED, f"the stack overflowed its {ctx.stack_bytes}-byte reserve", run.output)
    ctx.qemu_image = image
    step.message = (
        f"outputs of {len(ctx.reference)} inputs on {target.machine} ({target.cpu}) identical to the "
        f"reference; stack high-water {stack} of {ctx.stack_bytes} bytes"
    )


def _step_instructions(ctx: _Context, step: StepResult) -> None:
    step.tools = {
        **tc.tool_versions(tc.QEMU_TOOLS + tc.HOST_TOOLS),
        "plugin": "nasweb insn_count (searches/engine/c/insn_count.c, QEMU plugin API v1)",
    }
    target = _target(ctx.core)
    _require(tc.QEMU_TOOLS + tc.HOST_TOOLS)
    assert ctx.qemu_image is not None
    once = _run_qemu(ctx, ctx.qemu_image, count=True)
    twice = _run_qemu(ctx, _qemu_image(ctx, target, repetitions=2), count=True)
    assert once.instructions is not None and twice.instructions is not None
    n = len(ctx.reference)
    for run in (once, twice):
        if not np.array_equal(_parse_outputs(run.output, n, ctx.qm.classes), ctx.reference):
            raise _StepFailed(FAILED, "an instruction-counting run printed different outputs", run.output)
    per_inference = (twice.instructions - once.instructions) / n
    macs = ctx.header.macs
    estimate_ms = per_inference * CYCLES_PER_INSTRUCTION / (ctx.clock_mhz * 1e3)
    step.numbers = {
        "instructions_per_inference": round(per_inference, 1),
        "instructions_per_mac": round(per_inference / macs, 3) if macs else None,
        "macs": macs,
        "counts": [once.instructions, twice.instructions],
        "inferences_in_difference": n,
        "clock_mhz": ctx.clock_mhz,
        "estimated_latency_ms": round(estimate_ms, 4),
        "estimate_assumption": f"{CYCLES_PER_INSTRUCTION:g} cycle per instruction at {ctx.clock_mhz:g} MHz "
        "(QEMU counts instructions exactly but is not cycle-accurate; wait states and stalls are ignored)",
        "resource_model_latency_ms": round(latency_ms(macs, ctx.core, ctx.clock_mhz), 4),
        "emulation_seconds": round(once.seconds + twice.seconds, 3),
    }
    step.message = (
        f"{per_inference:,.0f} instructions per inference (mean over {n} inputs"
        + (f", {per_inference / macs:.2f} per MAC" if macs else "")
        + f"); estimated latency {estimate_ms:.3g} ms at {ctx.clock_mhz:g} MHz, an estimate assuming "
        "1 cycle per instruction"
    )


def _qemu_image(ctx: _Context, target: tc.Target, repetitions: int) -> tc.ArmImage:
    """The QEMU harness image, linked with the board's memory (step 2 already checked the budget)."""
    try:
        return tc.arm_link(
            [tc.C_DIR / "verify_qemu.c"],
            ctx.directory / f"qemu_x{repetitions}.elf",
            target=target,
            flash_limit_bytes=target.board_flash_bytes,
            ram_limit_bytes=target.board_ram_bytes,
            stack_bytes=ctx.stack_bytes,
            include_dirs=[ctx.directory],
            defines=[f"MODEL_REPETITIONS={repetitions}u"],
        )
    except tc.CompileError as exc:
        raise _StepFailed(FAILED, f"{exc.message}: {_first_line(exc.output)}", exc.output) from exc


def _run_qemu(ctx: _Context, image: tc.ArmImage, count: bool) -> tc.QemuRun:
    try:
        return tc.qemu_run(
            image, timeout_s=ctx.qemu_timeout_s, count_instructions=count, workdir=ctx.directory
        )
    except tc.BoardTooSmall as exc:
        raise _StepFailed(UNAVAILABLE, exc.message) from exc
    except tc.ToolchainMissing:
        raise
    except tc.ToolchainError as exc:
        raise _StepFailed(FAILED, exc.message, exc.output) from exc


def _target(core: str) -> tc.Target:
    try:
        return tc.target_for(core)
    except tc.UnsupportedCore as exc:
        raise _StepFailed(UNAVAILABLE, exc.message) from exc


def _require(tools: tuple[str, ...]) -> None:
    try:
        tc.find_tools(tools)
    except tc.ToolchainMissing as exc:
        raise _StepFailed(UNAVAILABLE, exc.message) from exc


def _first_line(output: str) -> str:
    for line in output.splitlines():
        if "error" in line or "overflow" in line:
            return line.strip()
    return output.strip().splitlines()[0] if output.strip() else "no output"


_STEP_FUNCTIONS: dict[str, Callable[[_Context, StepResult], None]] = {
    "host": _step_host,
    "arm_build": _step_arm_build,
    "qemu": _step_qemu,
    "instructions": _step_instructions,
}


# ---- entry point -----------------------------------------------------------------------


@contextmanager
def _directory(workdir: str | Path | None) -> Iterator[Path]:
    if workdir is not None:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="nasweb-verify-") as tmp:
            yield Path(tmp)


def verify_export(
    qm: QuantModel,
    name: str,
    *,
    core: str,
    flash_limit_bytes: int,
    sram_limit_bytes: int,
    clock_mhz: float,
    test_x: npt.NDArray[Any],
    test_y: npt.NDArray[Any],
    n_inputs: int = 20,
    workdir: str | Path | None = None,
    progress: Callable[[StepResult], None] | None = None,
    stack_bytes: int = tc.DEFAULT_STACK_BYTES,
    qemu_timeout_s: float = tc.DEFAULT_QEMU_TIMEOUT_S,
) -> ExportVerification:
    """Run the four verification steps on ``qm``'s header; see the module docstring.

    ``test_x`` are float NHWC images, ``test_y`` their labels (the whole test split).
    ``progress`` is called with each step's result when the step starts (status "running")
    and again when it ends.  Files go to a temporary directory removed afterwards, unless
    ``workdir`` is given (then they stay there for inspection).
    """
    if len(test_x) == 0 or len(test_x) != len(test_y):
        raise ValueError("verify_export needs test images and as many labels")
    if n_inputs < 1:
        raise ValueError("n_inputs must be at least 1")
    started = time.perf_counter()
    header = generate_header(qm, name)
    steps = [StepResult(key, title) for key, title in STEPS]
    with _directory(workdir) as directory:
        _write_sources(directory, header)
        ctx = _Context(
            qm,
            header,
            directory,
            core,
            flash_limit_bytes,
            sram_limit_bytes,
            clock_mhz,
            test_x,
            test_y,
            min(n_inputs, len(test_x)),
            stack_bytes,
            qemu_timeout_s,
        )
        done: dict[str, StepResult] = {}
        for step in steps:
            _run_step(ctx, step, done, progress)
    return ExportVerification(
        name=header.name,
        core=core,
        flash_limit_bytes=flash_limit_bytes,
        sram_limit_bytes=sram_limit_bytes,
        clock_mhz=clock_mhz,
        steps=steps,
        seconds=time.perf_counter() - started,
    )


def _run_step(
    ctx: _Context,
    step: StepResult,
    done: dict[str, StepResult],
    progress: Callable[[StepResult], None] | None,
) -> None:
    if progress is not None:
        progress(step)
    start = time.perf_counter()
    try:
        _check_prerequisites(step, done)
        _STEP_FUNCTIONS[step.key](ctx, step)
        step.status = PASSED
    except _StepFailed as exc:
        step.status, step.message, step.log = exc.status, exc.message, _tail(exc.log)
    except tc.ToolchainMissing as exc:
        step.status, step.message = UNAVAILABLE, exc.message
    except subprocess.TimeoutExpired as exc:
        step.status, step.message = FAILED, f"timed out after {exc.timeout:g} s"
    step.seconds = time.perf_counter() - start
    done[step.key] = step
    if progress is not None:
        progress(step)


def _check_prerequisites(step: StepResult, done: dict[str, StepResult]) -> None:
    """Skip a step whose prerequisite failed; one whose prerequisite was unavailable is unavailable too."""
    for key in DEPENDS_ON[step.key]:
        before = done[key]
        if before.status == UNAVAILABLE:
            if before.message.startswith("needs the "):  # already says which step and why
                raise _StepFailed(UNAVAILABLE, before.message)
            raise _StepFailed(
                UNAVAILABLE, f"needs the {SHORT_TITLES[key]}, which was unavailable: {before.message}"
            )
        if before.status != PASSED:
            verb = "failed" if before.status == FAILED else "was skipped"
            raise _StepFailed(SKIPPED, f"skipped: it needs the {SHORT_TITLES[key]}, which {verb}")
