"""``manage.py analyze ARCH.json``: an ST-style memory report of one or more architectures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from searches.engine.resources.latency import CORES, latency_label, latency_ms, predict_instructions
from searches.engine.resources.report import ResourceReport, analyze
from searches.engine.space.arch import Architecture, ArchitectureError, load_many


class Command(BaseCommand):
    help = "Print peak SRAM, flash and MACs of the int8 deployment of architecture JSON files."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", help="architecture JSON files (an object or a list each)")
        parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
        parser.add_argument("--core", choices=sorted(CORES), help="add a latency estimate for this core")
        parser.add_argument("--clock-mhz", type=float, default=None, help="clock for the latency estimate")

    def handle(self, *args: Any, **options: Any) -> None:
        if (options["core"] is None) != (options["clock_mhz"] is None):
            raise CommandError("--core and --clock-mhz go together")
        items: list[tuple[str, Architecture]] = []
        many = len(options["paths"]) > 1
        for path in options["paths"]:
            archs, is_list = _read(Path(path))
            many = many or is_list
            items += [(path if not is_list else f"{path}[{i}]", a) for i, a in enumerate(archs)]
        reports = [(name, analyze(a)) for name, a in items]
        if options["json"]:
            payload = [self._json(r, options) for _, r in reports]
            self.stdout.write(json.dumps(payload if many else payload[0], indent=2))
            return
        for name, report in reports:
            self.stdout.write(render_report(name, report, options["core"], options["clock_mhz"]))

    def _json(self, report: ResourceReport, options: dict[str, Any]) -> dict[str, Any]:
        data = report.to_json()
        if options["core"]:
            core, clock = options["core"], options["clock_mhz"]
            data["latency_ms_estimate"] = latency_ms(report.graph, core, clock)
            data["instructions_estimate"] = round(predict_instructions(report.graph, core))
            data["latency_method"] = latency_label(core)
        return data


def _read(path: Path) -> tuple[list[Architecture], bool]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}") from exc
    try:
        archs = load_many(text)
    except ArchitectureError as exc:
        raise CommandError(f"{path}: {exc}") from exc
    return archs, text.lstrip().startswith("[")


def render_report(name: str, report: ResourceReport, core: str | None, clock_mhz: float | None) -> str:
    """The human-readable report: a per-layer table and the totals."""
    rows = [("#", "layer", "op", "output", "params", "flash B", "MACs")]
    for i, layer in enumerate(report.layers):
        shape = "x".join(map(str, layer.output_shape))
        rows.append(
            (
                str(i),
                layer.name,
                layer.kind,
                shape,
                f"{layer.params:,}",
                f"{layer.flash_bytes:,}",
                f"{layer.macs:,}",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    left = {1, 2, 3}
    lines = [f"{name}", ""]
    for r in rows:
        cells = [
            cell.ljust(w) if c in left else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    plan = report.memory
    lines += [
        "",
        f"  weights (ro, flash)       {report.flash_bytes:>12,} B",
        f"  activations (rw, peak)    {report.peak_sram_bytes:>12,} B   optimal order ({plan.method})",
        f"  default-order peak        {plan.default_peak_bytes:>12,} B",
        f"  MACs                      {report.macs:>12,}",
        f"  params                    {report.params:>12,}",
    ]
    if core and clock_mhz:
        estimate = latency_ms(report.graph, core, clock_mhz)
        insns = predict_instructions(report.graph, core)
        cpi = CORES[core].cycles_per_instruction
        lines += [
            f"  instructions (predicted)  {insns:>12,.0f}     {latency_label(core)}",
            f"  latency (estimate)        {estimate:>12.3f} ms   {CORES[core].label} @ {clock_mhz:g} MHz, "
            f"{cpi:g} cycles per instruction (estimated)",
        ]
    lines.append(f"  optimal order: {' -> '.join(plan.order)}")
    return "\n".join(lines) + "\n"
