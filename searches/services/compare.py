"""Several runs side by side: Pareto fronts under shared limits, hypervolume against evaluations,
the best candidate of each run, and the settings that differ.

The objectives are the dashboard's default axes, validation error and peak SRAM, both
minimised.  Hypervolume is measured against one reference point for all the compared runs
(error 1, the largest SRAM limit shown, else the largest SRAM seen), so the curves share a
scale; a candidate over the shown limits adds nothing to it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from django.http import QueryDict

from searches.models import Candidate, SearchRun, name_datasets

MAX_RUNS = 8
KB = 1024
# A run's settings as the comparison lists them: (label, how to read it from the run).
SETTINGS: tuple[tuple[str, Any], ...] = (
    ("Strategy", lambda r: r.get_strategy_display()),
    ("Dataset", lambda r: r.dataset_name),
    ("Profile", lambda r: r.profile.name if r.profile else "—"),
    ("Budget", lambda r: r.budget),
    ("Epochs", lambda r: _fidelity(r).get("epochs")),
    ("Train subset", lambda r: _fidelity(r).get("train_subset") or "all"),
    ("Seed", lambda r: (r.config or {}).get("seed")),
    ("Sparsity gene", lambda r: (r.config or {}).get("sparsity") or "off"),
)


class CompareError(ValueError):
    """The runs asked for cannot be compared; says why."""


@dataclass(frozen=True)
class Limits:
    """The limits the comparison shows; None leaves a resource free."""

    sram_bytes: int | None
    flash_bytes: int | None

    def allows(self, c: Candidate) -> bool:
        return (self.sram_bytes is None or (c.peak_sram_bytes or 0) <= self.sram_bytes) and (
            self.flash_bytes is None or (c.flash_bytes or 0) <= self.flash_bytes
        )


def _fidelity(run: SearchRun) -> dict[str, Any]:
    return (run.config or {}).get("fidelity") or {}


def run_limits(run: SearchRun) -> dict[str, int | None]:
    limits = (run.config or {}).get("limits") or {}
    return {"sram_bytes": limits.get("sram_bytes"), "flash_bytes": limits.get("flash_bytes")}


def runs_for(user: Any, ids: list[int]) -> list[SearchRun]:
    """The user's runs with these ids, in the order asked; other users' ids are unknown ids."""
    ids = list(dict.fromkeys(ids))
    if not 2 <= len(ids) <= MAX_RUNS:
        raise CompareError(f"choose between 2 and {MAX_RUNS} runs to compare (got {len(ids)})")
    found = {r.pk: r for r in SearchRun.objects.for_user(user).filter(pk__in=ids).select_related("profile")}
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise CompareError(f"no run of yours has the id {', '.join(missing)}")
    return name_datasets(found[i] for i in ids)


def parse_request(user: Any, query: QueryDict) -> tuple[list[Any], Limits]:
    """The runs (``runs=1&runs=2`` or ``runs=1,2``) and limits (``sram_kb``, ``flash_kb``) asked for."""
    ids = []
    for part in ",".join(query.getlist("runs")).split(","):
        if part.strip():
            if not part.strip().isdigit():
                raise CompareError(f"a run id is a number, not {part.strip()!r}")
            ids.append(int(part))
    sram, flash = _kb(query, "sram_kb"), _kb(query, "flash_kb")
    runs = runs_for(user, ids)
    return runs, shown_limits(runs, sram, flash)


def _kb(query: QueryDict, name: str) -> int | None:
    text = query.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CompareError(f"{name} must be a number of KB, not {text!r}") from None
    if not 0 < value <= 1024 * 1024:
        raise CompareError(f"{name} must lie in (0, 1048576] KB")
    return int(value * KB)


def shown_limits(runs: list[SearchRun], sram_bytes: int | None, flash_bytes: int | None) -> Limits:
    """The limits asked for, else the strictest among the runs' own."""

    def strictest(key: str) -> int | None:
        values = [v for r in runs if (v := run_limits(r)[key])]
        return min(values) if values else None

    return Limits(
        sram_bytes if sram_bytes is not None else strictest("sram_bytes"),
        flash_bytes if flash_bytes is not None else strictest("flash_bytes"),
    )


def _trained(run: SearchRun) -> list[Candidate]:
    rows = run.candidates.filter(status=Candidate.Status.DONE, val_accuracy__isnull=False)
    rows = rows.exclude(peak_sram_bytes__isnull=True).defer("architecture", "export_report")
    return list(rows.order_by("index"))


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The 2-D Pareto front of (x, y) points, both minimised, sorted by x."""
    out: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not out or y < out[-1][1]:
            out.append((x, y))
    return out


def hypervolume_curve(points: list[tuple[float, float]], ref: tuple[float, float]) -> list[float]:
    """Hypervolume of the first 1, 2, … points (in order) against ``ref``, normalised to [0, 1]."""
    rx, ry = ref
    area = rx * ry
    xs: list[float] = []
    ys: list[float] = []
    curve: list[float] = []
    for x, y in points:
        if x < rx and y < ry:
            _insert(xs, ys, x, y)
        total, prev_x = 0.0, rx
        # The front is sorted by x with y falling: sum the slabs from the right.
        for fx, fy in zip(reversed(xs), reversed(ys), strict=True):
            total += (prev_x - fx) * (ry - fy)
            prev_x = fx
        curve.append(total / area if area > 0 else 0.0)
    return curve


def _insert(xs: list[float], ys: list[float], x: float, y: float) -> None:
    i = bisect.bisect_left(xs, x)
    if (i > 0 and ys[i - 1] <= y) or (i < len(xs) and xs[i] == x and ys[i] <= y):
        return  # dominated
    j = i
    while j < len(xs) and ys[j] >= y:
        j += 1
    xs[i:j] = [x]
    ys[i:j] = [y]


def compare(runs: list[SearchRun], limits: Limits) -> dict[str, Any]:
    """Everything the comparison page and the API show."""
    trained = {r.pk: _trained(r) for r in runs}
    seen = [c.peak_sram_bytes or 0 for rows in trained.values() for c in rows]
    ref = (float(limits.sram_bytes or max(seen, default=1)), 1.0)
    return {
        "limits": {"sram_bytes": limits.sram_bytes, "flash_bytes": limits.flash_bytes},
        "reference": {"peak_sram_bytes": ref[0], "error": ref[1]},
        "runs": [_run_entry(r, trained[r.pk], limits, ref) for r in runs],
        "settings": settings_table(runs),
    }


def _point(c: Candidate) -> tuple[float, float]:
    return float(c.peak_sram_bytes or 0), 1.0 - float(c.val_accuracy or 0.0)


def _run_entry(
    run: SearchRun, rows: list[Candidate], limits: Limits, ref: tuple[float, float]
) -> dict[str, Any]:
    allowed = [c for c in rows if limits.allows(c)]
    by_point = {_point(c): c for c in allowed}
    best = max(allowed, key=lambda c: (c.val_accuracy or 0.0, -(c.peak_sram_bytes or 0)), default=None)
    return {
        "id": run.pk,
        "name": str(run),
        "limits": run_limits(run),
        "evaluated": run.evaluated,
        "front": [_candidate_json(by_point[p]) for p in front(list(by_point))],
        "hypervolume": hypervolume_curve([_point(c) if limits.allows(c) else ref for c in rows], ref),
        "best": _candidate_json(best) if best else None,
    }


def _candidate_json(c: Candidate) -> dict[str, Any]:
    return {
        "id": c.pk,
        "label": c.label,
        "val_accuracy": c.val_accuracy,
        "error": None if c.val_accuracy is None else 1.0 - c.val_accuracy,
        "peak_sram_bytes": c.peak_sram_bytes,
        "flash_bytes": c.flash_bytes,
        "macs": c.macs,
    }


def settings_table(runs: list[SearchRun]) -> list[dict[str, Any]]:
    """One row per setting with each run's value; ``differs`` marks the ones worth reading."""
    rows = []
    for label, read in SETTINGS:
        values = [read(r) for r in runs]
        shown = [", ".join(map(str, v)) if isinstance(v, list) else v for v in values]
        rows.append({"label": label, "values": shown, "differs": len({str(v) for v in shown}) > 1})
    return rows
