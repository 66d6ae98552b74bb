"""What the candidate page and the API show about one candidate: layers, memory, board fit, export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from searches.engine.deploy.report import STEPS
from searches.engine.resources.latency import CORES, latency_label, latency_ms
from searches.engine.resources.report import ResourceReport, analyze
from searches.engine.space import arch as arch_format
from searches.models import Candidate, Core, HardwareProfile
from searches.services import export


@dataclass(frozen=True)
class BoardFit:
    """Whether a model fits one board preset, and its predicted latency at that board's clock."""

    profile: HardwareProfile
    fits_sram: bool
    fits_flash: bool
    latency_ms: float
    latency_label: str

    @property
    def fits(self) -> bool:
        return self.fits_sram and self.fits_flash


def analyze_candidate(candidate: Candidate) -> ResourceReport:
    return analyze(arch_format.from_json(candidate.architecture))


def layer_rows(report: ResourceReport) -> list[dict[str, Any]]:
    return [
        {
            "name": layer.name,
            "op": layer.kind,
            "output_shape": "x".join(str(d) for d in layer.output_shape),
            "params": layer.params,
            "flash_bytes": layer.flash_bytes,
            "macs": layer.macs,
        }
        for layer in report.layers
    ]


def memory_data(report: ResourceReport) -> dict[str, Any]:
    """The memory timeline of the optimal and the default execution order, for the chart."""
    plan = report.memory
    return {
        "order": list(plan.order),
        "timeline": list(plan.timeline),
        "live_sets": [list(s) for s in plan.live_sets],
        "default_order": [op.id for op in report.graph.ops],
        "default_timeline": list(plan.default_timeline),
        "default_live_sets": [list(s) for s in plan.default_live_sets],
        "tensor_bytes": report.graph.tensor_bytes(),
        "peak_bytes": plan.peak_bytes,
        "default_peak_bytes": plan.default_peak_bytes,
    }


def board_fits(report: ResourceReport) -> list[BoardFit]:
    """Every board preset, in the presets' order; presets have no latency budget to check.

    The latency is the calibrated instruction model's at the board's core and clock."""
    return [
        BoardFit(
            profile=preset,
            fits_sram=report.peak_sram_bytes <= preset.sram_bytes,
            fits_flash=report.flash_bytes <= preset.flash_bytes,
            latency_ms=latency_ms(report.graph, preset.core, preset.clock_mhz),
            latency_label=latency_label(preset.core),
        )
        for preset in HardwareProfile.objects.presets()
        if preset.core in CORES
    ]


def resources_json(report: ResourceReport) -> dict[str, Any]:
    """The API's ``resources`` of a candidate: totals, layers and memory timeline."""
    return {
        "peak_sram_bytes": report.peak_sram_bytes,
        "flash_bytes": report.flash_bytes,
        "macs": report.macs,
        "params": report.params,
        "layers": [
            {**row, "output_shape": list(layer.output_shape)}
            for row, layer in zip(layer_rows(report), report.layers, strict=True)
        ],
        "memory": memory_data(report),
    }


def export_steps(report: dict[str, Any] | None, unreached: str = "pending") -> list[dict[str, Any]]:
    """The verification's four steps in order: each as reported, else with status ``unreached``."""
    done = {step.get("key"): step for step in (report or {}).get("steps") or []}
    return [
        done.get(key) or {"key": key, "title": title, "status": unreached, "numbers": {}}
        for key, title in STEPS
    ]


def measured_latency(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What Verify counted: instructions per inference and instructions x CPI, or None before it ran.

    Reports written before the calibrated model have no CPI: they assumed one cycle per
    instruction, which is what they get here too."""
    step = next((s for s in (report or {}).get("steps") or [] if s.get("key") == "instructions"), None)
    numbers = (step or {}).get("numbers") or {}
    if step is None or step.get("status") != "passed" or numbers.get("instructions_per_inference") is None:
        return None
    return {
        "instructions": numbers["instructions_per_inference"],
        "cycles_per_instruction": numbers.get("cycles_per_instruction", 1.0),
        "latency_ms": numbers.get("estimated_latency_ms"),
        "clock_mhz": numbers.get("clock_mhz"),
        "predicted_instructions": numbers.get("predicted_instructions"),
    }


def _unreached(candidate: Candidate, ran: bool) -> str:
    """What a step the report lacks is: waiting its turn, skipped by a finished check, or never asked for."""
    if candidate.export_busy:
        return "pending"
    return "skipped" if ran else "not run"


def export_context(candidate: Candidate) -> dict[str, Any]:
    """The candidate page's Export section: what can be downloaded and how the verification went."""
    report = candidate.export_report or {}
    trained = candidate.is_trained
    target = export.target_for(candidate.run)
    ran = bool(report.get("steps")) or bool(report.get("error"))
    return {
        "trained": trained,
        "name": export.c_name(candidate),
        "target": target,
        "core_label": Core(target.core).label if target.core in Core.values else target.core,
        "status": candidate.export_status,
        "status_label": candidate.get_export_status_display(),
        "busy": candidate.export_busy,
        "ran": ran,
        "steps": export_steps(report, _unreached(candidate, ran)),
        "error": report.get("error"),
        "summary": report.get("summary"),
        "seconds": report.get("seconds"),
        "finished": candidate.export_finished,
        "missing_tools": export.missing_tools() if trained else [],
        "install_command": export.INSTALL_COMMAND,
        "input_note": export.input_note(candidate.run) if trained else "",
        "measured": measured_latency(report),
    }


def export_json(candidate: Candidate) -> dict[str, Any]:
    """The API's ``export`` of a candidate: verification status, target and report."""
    target = export.target_for(candidate.run)
    return {
        "name": export.c_name(candidate),
        "status": candidate.export_status,
        "target": target.to_json(),
        "requested": candidate.export_requested,
        "finished": candidate.export_finished,
        "report": candidate.export_report,
    }
