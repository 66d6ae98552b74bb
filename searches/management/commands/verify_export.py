"""``manage.py verify_export CANDIDATE_ID``: the export verification of the candidate page, in-process.

Runs host bit-exactness, the Cortex-M build and the QEMU run for the run's target, prints each
step as it finishes and a summary, stores the report on the candidate (the page shows it) and
exits non-zero unless every step passed.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from searches.engine.deploy.report import PASSED, RUNNING, StepResult
from searches.models import Candidate
from searches.services import export

MARKS = {PASSED: "ok", "failed": "FAILED", "skipped": "skipped", "unavailable": "unavailable"}


class Command(BaseCommand):
    help = "Verify a trained candidate's C export: host bit-exactness, Cortex-M build sizes, QEMU run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("candidate_id", type=int, help="the candidate's id (in its page's address)")
        parser.add_argument(
            "--inputs", type=int, default=export.VERIFY_INPUTS, help="test inputs compared byte by byte"
        )
        parser.add_argument("--keep", metavar="DIR", help="build in DIR and keep the files there")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["inputs"] < 1:
            raise CommandError("--inputs must be at least 1")
        candidate = self._candidate(options["candidate_id"])
        target = export.target_for(candidate.run)
        self.stdout.write(
            f"Verifying candidate {candidate.index} of run #{candidate.run_id} as {export.c_name(candidate)} "
            f"for {target.label}: {target.core} at {target.clock_mhz:g} MHz, "
            f"flash {target.flash_bytes:,} B, SRAM {target.sram_bytes:,} B"
        )
        outcome = export.verify(
            candidate, workdir=options["keep"], progress=self._progress, n_inputs=options["inputs"]
        )
        if outcome.error:
            raise CommandError(f"verification failed: {outcome.error}")
        assert outcome.verification is not None
        self.stdout.write("")
        self.stdout.write(render_summary(outcome.verification.to_json()))
        if outcome.status != Candidate.ExportStatus.PASSED:
            summary = outcome.verification.summary
            if export.missing_tools() and export.INSTALL_COMMAND not in summary:
                summary += f" (install the tools with: sudo {export.INSTALL_COMMAND})"
            raise CommandError(f"verification {outcome.status}: {summary}")
        self.stdout.write(self.style.SUCCESS("export verified: every step passed"))

    def _candidate(self, pk: int) -> Candidate:
        candidate = Candidate.objects.select_related("run", "run__profile").filter(pk=pk).first()
        if candidate is None:
            raise CommandError(f"no candidate with id {pk}")
        if candidate.status != Candidate.Status.DONE or not candidate.weights:
            raise CommandError(
                f"candidate {pk} (#{candidate.index} of run #{candidate.run_id}) is "
                f"{candidate.get_status_display().lower()} and has no trained weights: nothing to export"
            )
        return candidate

    def _progress(self, step: StepResult) -> None:
        if step.status == RUNNING:
            self.stdout.write(f"  … {step.title}")
            return
        mark = MARKS.get(step.status, step.status)
        self.stdout.write(f"  [{mark}] {step.title} ({step.seconds:.1f} s): {step.message}")
        if step.status not in (PASSED, "skipped") and step.log:
            for line in step.log.strip().splitlines()[-8:]:
                self.stdout.write(f"      {line}")


def render_summary(report: dict[str, Any]) -> str:
    """The key numbers of a verification report, one per line."""
    steps = {step["key"]: step for step in report.get("steps", [])}
    lines = []
    host = steps.get("host", {}).get("numbers", {})
    if host:
        lines.append(
            f"host:         {host.get('compared_inputs')} outputs bit-exact; accuracy on "
            f"{host.get('test_inputs')} test images C {_pct(host.get('c_accuracy'))}, "
            f"Python int8 {_pct(host.get('python_int8_accuracy'))}"
        )
    arm = steps.get("arm_build", {}).get("numbers", {})
    if arm.get("flash_bytes") is not None:
        lines.append(
            f"Cortex-M:     flash {arm['flash_bytes']:,} of {arm['flash_limit_bytes']:,} B, "
            f"RAM {arm['ram_bytes']:,} of {arm['sram_limit_bytes']:,} B"
        )
        lines.append(
            f"model arrays: {arm['model_array_bytes']:,} B (predicted flash "
            f"{arm['predicted_flash_bytes']:,} B), arena {arm.get('arena_bytes')} B "
            f"(predicted {arm.get('predicted_arena_bytes')} B)"
        )
    qemu = steps.get("qemu", {}).get("numbers", {})
    if qemu:
        where = f"{qemu.get('machine')} ({qemu.get('cpu')})"
        lines.append(f"QEMU:         {qemu.get('inputs')} inputs identical on {where}")
    insn = steps.get("instructions", {}).get("numbers", {})
    if insn.get("instructions_per_inference") is not None:
        lines.append(
            f"instructions: {insn['instructions_per_inference']:,.0f} per inference; latency "
            f"{insn['estimated_latency_ms']:.3g} ms at {insn['clock_mhz']:g} MHz (instructions x "
            f"{insn.get('cycles_per_instruction', 1.0):g} cycles per instruction, an estimated CPI)"
        )
    lines.append(f"total:        {report.get('seconds', 0):.1f} s")
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"
