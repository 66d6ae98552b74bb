"""Strategy benchmark: aging evolution, MemNAS and random search at the same evaluation budget.

Each (dataset, strategy, seed) run trains real candidates in-process (no database) until the
evaluation budget or its time limit is spent.  Quality is the hypervolume dominated by the
evaluated candidates on (val error, peak SRAM, flash, MACs), each objective divided by the
profile's bound and the reference point at 1 in every objective (a candidate over any bound
adds nothing), measured after every evaluation and averaged over seeds.  Usage:

    python bench/bench_strategies.py [--budget 60] [--seeds 0 1 2] [--datasets digits fashion-mnist]
        [--strategies aging_evolution memnas random] [--epochs N] [--train-subset N]
        [--minutes-per-run M] [--jobs 2] [--fresh] [--write]

Runs go to separate processes (``--jobs`` at a time, one torch thread each) and each run's
curve is cached as JSON under var/bench_strategies/ (keyed by its settings), so an
interrupted benchmark resumes where it stopped; ``--fresh`` ignores the cache.  ``--write``
replaces the "Search strategies" section of docs/benchmarks.md and draws the curves to
docs/strategies.png (matplotlib), or docs/strategies.svg when matplotlib is not installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import replace_section
from searches.engine.space.sampling import SpaceConfig
from searches.engine.strategies.base import EvalResult
from searches.engine.strategies.config import Bounds, Limits, SearchConfig
from searches.engine.strategies.driver import SearchEvent, run_search
from searches.engine.strategies.objectives import pareto_front
from searches.engine.strategies.registry import make_strategy
from searches.engine.training.train import Fidelity

TITLE = "Search strategies"
CACHE = ROOT / "var" / "bench_strategies"
STRATEGY_LABELS = {"aging_evolution": "aging evolution", "memnas": "MemNAS", "random": "random search"}


@dataclass(frozen=True)
class Setting:
    """A dataset's profile (hard limits = bounds for SRAM and flash), error and MACs bounds, fidelity."""

    sram_bytes: int
    flash_bytes: int
    error: float
    macs: int
    fidelity: Fidelity

    def bounds(self) -> Bounds:
        return Bounds(self.error, self.sram_bytes, self.flash_bytes, self.macs)


# Digits: the 2 KB / 4 KB profile and fidelity of bench_search.py and the CLI; its error
# bound is the CLI's 0.05 doubled, because 0.05 leaves most short-trained candidates outside the
# box.  Fashion-MNIST: μNAS's 64 KB / 64 KB / 30M MACs bounds; the error bound is loosened from
# μNAS's 0.10 (45 epochs) to 0.25 for the search fidelity (2 epochs on 10,000 images).
SETTINGS: dict[str, Setting] = {
    "digits": Setting(2 * 1024, 4 * 1024, 0.10, 1_000_000, Fidelity(10, None, 32, 1e-2)),
    # 4,000 training images keep 540 fashion runs near 15 minutes on 2 cores
    "fashion-mnist": Setting(64_000, 64_000, 0.25, 30_000_000, Fidelity(train_subset=4000)),
}


# ---- hypervolume ---------------------------------------------------------------------------


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact volume dominated by ``points`` (minimised) inside the box below ``reference``.

    Slicing along the last objective: between consecutive values of it, the cross-section is
    the (d-1)-dimensional hypervolume of the points at or below the slice.  Exponential in the
    dimension but fast for the few-dozen-point fronts a search produces in four objectives.
    """
    ref = tuple(float(r) for r in reference)
    inside = [tuple(float(x) for x in p) for p in points if all(x < r for x, r in zip(p, ref, strict=True))]
    return _hypervolume(inside, ref)


def _hypervolume(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    front = sorted({points[i] for i in pareto_front(points)}, key=lambda p: p[-1])
    total = 0.0
    for i, p in enumerate(front):
        upper = front[i + 1][-1] if i + 1 < len(front) else ref[-1]
        if upper > p[-1]:
            total += (upper - p[-1]) * _hypervolume([q[:-1] for q in front[: i + 1]], ref[:-1])
    return total


def normalise(objectives: Sequence[float], bounds: Bounds) -> tuple[float, ...]:
    """Objectives divided by their bounds (every bound must be set)."""
    scaled = []
    for f, b in zip(objectives, bounds.as_tuple(), strict=True):
        if b is None:
            raise ValueError("normalising needs every bound")
        scaled.append(f / b)
    return tuple(scaled)


def hypervolume_curve(points: Sequence[Sequence[float] | None], bounds: Bounds) -> list[float]:
    """Hypervolume after each evaluation (None = a failed one) of normalised objectives, reference 1."""
    curve: list[float] = []
    front: list[tuple[float, ...]] = []
    ones = (1.0,) * len(bounds.as_tuple())
    for point in points:
        if point is not None:
            candidates = [*front, normalise(point, bounds)]
            front = [candidates[i] for i in pareto_front(candidates)]
        curve.append(hypervolume(front, ones))
    return curve


# ---- one run --------------------------------------------------------------------------------


def make_config(dataset: Any, strategy: str, seed: int, budget: int, setting: Setting) -> SearchConfig:
    """The run's search config; population and sample size follow the CLI's rule (services/runs.py)."""
    population = max(4, min(100, budget // 3))
    return SearchConfig(
        space=SpaceConfig(dataset.input_shape, dataset.classes),
        budget=budget,
        bounds=setting.bounds(),
        limits=Limits(sram_bytes=setting.sram_bytes, flash_bytes=setting.flash_bytes),
        strategy=strategy,  # type: ignore[arg-type]
        population=population,
        sample_size=max(2, min(25, population // 4)),
        seed=seed,
        fidelity=asdict(setting.fidelity) | {"seed": seed},
    )


def run_one(
    dataset_name: str, strategy_name: str, seed: int, budget: int, setting: Setting, minutes: float
) -> dict[str, Any]:
    """Run one search; returns its evaluations (objectives or None for failures) and timings."""
    from searches.engine.training.datasets import load_dataset
    from searches.engine.training.train import train_and_evaluate

    dataset = load_dataset(dataset_name)
    config = make_config(dataset, strategy_name, seed, budget, setting)
    fidelity = Fidelity(**config.fidelity)
    strategy = make_strategy(config)
    start = time.monotonic()
    deadline = start + minutes * 60
    evaluations: list[dict[str, Any]] = []

    def evaluate(arch, proposal):  # type: ignore[no-untyped-def]
        r = train_and_evaluate(arch, dataset, fidelity)
        return EvalResult(r.val_accuracy, r.test_accuracy, metrics={"seconds": r.total_seconds})

    def on_event(event: SearchEvent) -> None:
        if event.kind not in ("evaluated", "failed"):
            return
        row: dict[str, Any] = {"t": time.monotonic() - start, "objectives": None}
        if event.member is not None:
            row["objectives"] = list(event.member.objectives)
            row["test"] = event.member.result.test_accuracy
        evaluations.append(row)

    run_search(strategy, evaluate, on_event, should_stop=lambda: time.monotonic() > deadline)
    return {
        "dataset": dataset_name,
        "strategy": strategy_name,
        "seed": seed,
        "budget": budget,
        "evaluations": evaluations,
        "seconds": time.monotonic() - start,
        "rejected": strategy.counters.get("rejected", 0),
        "stop_reason": strategy.stop_reason,
    }


# ---- many runs, cached ----------------------------------------------------------------------------


def _key(dataset: str, strategy: str, seed: int, budget: int, setting: Setting, minutes: float) -> str:
    settings = json.dumps([dataset, strategy, seed, budget, asdict(setting), minutes], sort_keys=True)
    return f"{dataset}-{strategy}-{seed}-{hashlib.sha256(settings.encode()).hexdigest()[:10]}"


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run, from the cache when there, else in ``args.jobs`` subprocesses at a time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    todo, results = [], []
    for dataset in args.datasets:
        setting = dataset_setting(dataset, args)
        for strategy in args.strategies:
            for seed in args.seeds:
                path = (
                    CACHE
                    / f"{_key(dataset, strategy, seed, args.budget, setting, args.minutes_per_run)}.json"
                )
                if path.exists() and not args.fresh:
                    results.append(json.loads(path.read_text()))
                else:
                    todo.append((dataset, strategy, seed, path))
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    while todo or running:
        while todo and len(running) < args.jobs:
            dataset, strategy, seed, path = todo.pop(0)
            print(f"running {dataset} {strategy} seed {seed}", flush=True)
            command = [
                sys.executable,
                __file__,
                *_run_args(args),
                "--one",
                dataset,
                strategy,
                str(seed),
                str(path),
            ]
            running.append((subprocess.Popen(command), path))
        time.sleep(0.5)
        for proc, path in list(running):
            if proc.poll() is not None:
                running.remove((proc, path))
                if proc.returncode != 0:
                    raise SystemExit(f"run {path.name} failed with exit status {proc.returncode}")
                results.append(json.loads(path.read_text()))
    return results


def _run_args(args: argparse.Namespace) -> list[str]:
    out = ["--budget", str(args.budget), "--minutes-per-run", str(args.minutes_per_run)]
    if args.epochs is not None:
        out += ["--epochs", str(args.epochs)]
    if args.train_subset is not None:
        out += ["--train-subset", str(args.train_subset)]
    return out


def dataset_setting(dataset: str, args: argparse.Namespace) -> Setting:
    """The dataset's setting with the command line's fidelity overrides."""
    setting = SETTINGS[dataset]
    fidelity = setting.fidelity
    if args.epochs is not None:
        fidelity = replace(fidelity, epochs=args.epochs)
    if args.train_subset is not None:
        fidelity = replace(fidelity, train_subset=args.train_subset)
    return replace(setting, fidelity=fidelity)


# ---- report -----------------------------------------------------------------------------------------


def curves(
    results: list[dict[str, Any]], args: argparse.Namespace
) -> dict[tuple[str, str], list[list[float]]]:
    """(dataset, strategy) -> one hypervolume curve per seed."""
    out: dict[tuple[str, str], list[list[float]]] = {}
    for r in results:
        bounds = dataset_setting(r["dataset"], args).bounds()
        points = [e["objectives"] for e in r["evaluations"]]
        out.setdefault((r["dataset"], r["strategy"]), []).append(hypervolume_curve(points, bounds))
    return out


def _at(curve: list[float], n: int) -> float:
    """Hypervolume after ``n`` evaluations (a run stopped early keeps its last value)."""
    return curve[min(n, len(curve)) - 1] if curve else 0.0


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def report(results: list[dict[str, Any]], args: argparse.Namespace, plot_name: str) -> str:
    by_curve = curves(results, args)
    checkpoints = sorted({max(1, args.budget // 4), max(1, args.budget // 2), args.budget})
    lines = [
        f"Command: `python bench/bench_strategies.py {' '.join(sys.argv[1:])}`",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch CPU, "
        f"{args.jobs} run(s) at a time.",
        "",
        f"Budget {args.budget} evaluations per run, seeds {', '.join(map(str, args.seeds))}; objectives "
        "(val error, peak SRAM, flash, MACs) divided by the bounds below, reference point 1. Aging "
        "evolution uses the CLI's population rule, MemNAS its defaults (λ 0.5, β 0.7, top-4).",
        "",
        "| dataset | SRAM / flash limit = bound | error bound | MACs bound | fidelity |",
        "|---|---|---|---|---|",
    ]
    for dataset in args.datasets:
        s = dataset_setting(dataset, args)
        f = s.fidelity
        lines.append(
            f"| {dataset} | {s.sram_bytes:,} B / {s.flash_bytes:,} B | {s.error} | {s.macs:,} | "
            f"{f.epochs} epochs, subset {f.train_subset or 'all'}, batch {f.batch_size}, lr {f.lr} |"
        )
    lines += [
        "",
        "Hypervolume (mean ± sd over seeds) after n evaluations; minutes = mean wall time per run.",
        "",
        "| dataset | strategy | "
        + " | ".join(f"n = {n}" for n in checkpoints)
        + " | best val acc | minutes |",
        "|---|---|" + "---|" * len(checkpoints) + "---|---|",
    ]
    for dataset in args.datasets:
        for strategy in args.strategies:
            runs = [r for r in results if r["dataset"] == dataset and r["strategy"] == strategy]
            if not runs:
                continue
            hv = by_curve[(dataset, strategy)]
            best = [
                max((1 - e["objectives"][0] for e in r["evaluations"] if e["objectives"]), default=0.0)
                for r in runs
            ]
            minutes = statistics.mean(r["seconds"] for r in runs) / 60
            cells = [_mean_sd([_at(c, n) for c in hv]) for n in checkpoints]
            label = STRATEGY_LABELS.get(strategy, strategy)
            lines.append(
                f"| {dataset} | {label} | "
                + " | ".join(cells)
                + f" | {statistics.mean(best):.3f} | {minutes:.1f} |"
            )
    short = [r for r in results if len(r["evaluations"]) < r["budget"]]
    if short:
        lines += ["", f"{len(short)} run(s) stopped before the budget (time limit or no feasible candidate)."]
    lines += ["", f"![hypervolume against evaluations]({plot_name})"]
    return "\n".join(lines)


# ---- plot ---------------------------------------------------------------------------------------------

COLOURS = {"aging_evolution": "#1f77b4", "memnas": "#d62728", "random": "#7f7f7f"}


def _mean_curve(runs: list[list[float]], n: int) -> tuple[list[float], list[float], list[float]]:
    cols = [[_at(c, i) for c in runs] for i in range(1, n + 1)]
    return [statistics.mean(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def plot(
    by_curve: dict[tuple[str, str], list[list[float]]], datasets: list[str], budget: int, path: Path
) -> Path:
    """Mean hypervolume (band: min-max over seeds) against evaluations, one panel per dataset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = path.with_suffix(".svg")
        path.write_text(_svg(by_curve, datasets, budget))
        return path
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for (d, strategy), runs in sorted(by_curve.items()):
            if d != dataset:
                continue
            mean, lo, hi = _mean_curve(runs, budget)
            xs = range(1, budget + 1)
            ax.plot(xs, mean, color=COLOURS.get(strategy), label=STRATEGY_LABELS.get(strategy, strategy))
            ax.fill_between(xs, lo, hi, color=COLOURS.get(strategy), alpha=0.15)
        ax.set_title(dataset)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("hypervolume (normalised, ref 1)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _svg(by_curve: dict[tuple[str, str], list[list[float]]], datasets: list[str], budget: int) -> str:
    """The same figure as plain SVG, for machines without matplotlib."""
    w, h, pad = 420, 280, 45
    top = max((v for runs in by_curve.values() for c in runs for v in c), default=0.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(datasets)}" height="{h}" font-size="11">'
    ]
    for k, dataset in enumerate(datasets):
        x0 = k * w

        def xy(i: int, v: float, x0: int = x0) -> str:
            x = x0 + pad + (w - 2 * pad) * (i - 1) / max(budget - 1, 1)
            return f"{x:.1f},{h - pad - (h - 2 * pad) * v / top:.1f}"

        parts.append(f'<text x="{x0 + w / 2}" y="16" text-anchor="middle">{dataset}</text>')
        parts.append(
            f'<rect x="{x0 + pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" '
            'fill="none" stroke="#999"/>'
        )
        parts.append(
            f'<text x="{x0 + w / 2}" y="{h - 10}" text-anchor="middle">evaluations (1..{budget})</text>'
        )
        parts.append(f'<text x="{x0 + 4}" y="{pad - 6}">hypervolume (max {top:.3f})</text>')
        for row, ((d, strategy), runs) in enumerate(sorted(by_curve.items())):
            if d != dataset:
                continue
            mean, lo, hi = _mean_curve(runs, budget)
            colour = COLOURS.get(strategy, "#000")
            band = [xy(i + 1, v) for i, v in enumerate(hi)] + [
                xy(i + 1, v) for i, v in reversed(list(enumerate(lo)))
            ]
            parts.append(f'<polygon points="{" ".join(band)}" fill="{colour}" opacity="0.15"/>')
            line = " ".join(xy(i + 1, v) for i, v in enumerate(mean))
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            label = STRATEGY_LABELS.get(strategy, strategy)
            parts.append(
                f'<text x="{x0 + pad + 6}" y="{pad + 14 + 13 * (row % 3)}" fill="{colour}">{label}</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# ---- command line -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=60, help="evaluations per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--strategies", nargs="+", default=list(STRATEGY_LABELS), choices=list(STRATEGY_LABELS)
    )
    parser.add_argument("--epochs", type=int, help="override the dataset's fidelity")
    parser.add_argument("--train-subset", type=int, help="override the dataset's fidelity")
    parser.add_argument("--minutes-per-run", type=float, default=120.0, help="wall-clock limit of one run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one torch thread each)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached runs")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md and the plot")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "strategies.png")
    parser.add_argument(
        "--one", nargs=4, metavar=("DATASET", "STRATEGY", "SEED", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.one:
        dataset, strategy, seed, out = args.one
        result = run_one(
            dataset, strategy, int(seed), args.budget, dataset_setting(dataset, args), args.minutes_per_run
        )
        Path(out).write_text(json.dumps(result))
        return

    results = run_all(args)
    plot_path = args.plot
    if args.write:
        plot_path = plot(curves(results, args), args.datasets, args.budget, args.plot)
    try:
        plot_name = str(plot_path.relative_to(args.docs.parent))
    except ValueError:
        plot_name = str(plot_path)
    text = report(results, args, plot_name)
    print(text)
    if args.write:
        replace_section(args.docs, TITLE, text)


if __name__ == "__main__":
    main()
