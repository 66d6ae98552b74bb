"""The export verification's report: its four steps, their statuses, messages and numbers, as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASSED, FAILED, SKIPPED, UNAVAILABLE, RUNNING = "passed", "failed", "skipped", "unavailable", "running"
STEPS: tuple[tuple[str, str], ...] = (
    ("host", "Host build (gcc): bit-exact outputs and accuracy"),
    ("arm_build", "Cortex-M build (arm-none-eabi-gcc) within the profile's flash and SRAM"),
    ("qemu", "Run under QEMU: outputs identical to the reference"),
    ("instructions", "Instructions per inference (QEMU) and latency (instructions x CPI)"),
)
SHORT_TITLES = {
    "host": "host build",
    "arm_build": "Cortex-M build",
    "qemu": "QEMU run",
    "instructions": "instruction count",
}
# A step runs only if these steps passed.
DEPENDS_ON = {"host": (), "arm_build": (), "qemu": ("arm_build",), "instructions": ("qemu",)}


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
