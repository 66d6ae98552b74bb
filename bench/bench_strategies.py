"""Strategy benchmark: aging evolution, MemNAS and random search at the same evaluation budget.

Each (dataset, strategy, seed) run trains real candidates in-process (no database) until the
evaluation budget or its time limit is spent.  Quality is the hypervolume dominated by the
evaluated candidates on (val error, peak SRAM, flash, MACs), each objective divided by the
profile's bound and the reference point at 1 in every objective (a candidate over any bound
adds nothing), measured after every evaluation and averaged over seeds.  Usage:

    python bench/bench_strategies.py [--budget 60] [--seeds 0 1 2] [--datasets digits fashion-mnist]
        [--strategies aging_evolution memnas random] [--epochs N] [--train-subset N]
        [--minutes-per-run M] [--jobs 2] [--fresh] [--write [--title T] [--plot P]]
    python bench/bench_strategies.py --lambda-sweep [--lambdas 0 0.25 0.5 0.75 1]
        [--memnas-options top_k=4,...] [--datasets fashion-mnist] ... [--write]

A strategy may carry MemNAS options, ``memnas:top_k=2,seed_backbone=single_blocks``: each such
spelling is a separate row (that is how the MemNAS defaults were chosen).  ``--lambda-sweep``
runs MemNAS once per λ and reports, per λ, the model the search's own score prefers over the
whole run (the highest Y against the first backbone): its error, peak SRAM and flash, the
analogue of the MemNAS paper's λ figure, drawn to docs/memnas_lambda.png.

Runs go to separate processes (``--jobs`` at a time, one torch thread each) and each run's
curve is stored as JSON under bench/results/strategies/ (keyed by its settings; committed, so
that a benchmark longer than one sitting is finished by the next one, on any machine).  A run
in progress saves its strategy's state and its curve after every evaluation
(``<key>.partial.json``) and a killed or interrupted run resumes from there, its wall time
carried over; ``--fresh`` ignores both.  ``--write``
replaces the "Search strategies" section of docs/benchmarks.md and draws the curves to
docs/strategies.png (matplotlib), or docs/strategies.svg when matplotlib is not installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
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

from bench._report import replace_section, write_atomically
from searches.engine.space.sampling import SpaceConfig
from searches.engine.strategies.base import EvalResult
from searches.engine.strategies.config import Bounds, Limits, SearchConfig
from searches.engine.strategies.driver import SearchEvent, run_search
from searches.engine.strategies.memnas.strategy import efficiency_score, memory_scale
from searches.engine.strategies.objectives import pareto_front
from searches.engine.strategies.options import MemNASConfig
from searches.engine.strategies.registry import from_state_json, make_strategy
from searches.engine.training.train import Fidelity

TITLE = "Search strategies"
SWEEP_TITLE = "MemNAS λ sweep"
CACHE = ROOT / "bench" / "results" / "strategies"
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


# ---- strategy specs --------------------------------------------------------------------------


def _option_value(text: str) -> Any:
    """``"4"`` -> 4, ``"0.5"`` -> 0.5, ``"true"`` -> True, anything else stays a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(text: str) -> dict[str, Any]:
    """``"top_k=2,lambda=0.25"`` -> {"top_k": 2, "lambda": 0.25} (MemNAS's JSON option names)."""
    options: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"a strategy option is written name=value, got {item!r}")
        options[key.strip()] = _option_value(value.strip())
    return options


def parse_strategy(spec: str) -> tuple[str, dict[str, Any]]:
    """``"memnas:top_k=2"`` -> ("memnas", {"top_k": 2}); the options are validated by MemNASConfig."""
    name, _, rest = spec.partition(":")
    if name not in STRATEGY_LABELS:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_LABELS)}")
    options = parse_options(rest)
    if options and name != "memnas":
        raise ValueError(f"only MemNAS takes options, got {spec!r}")
    if name == "memnas":
        MemNASConfig.from_json(options)  # raises ValueError naming the bad option
    return name, options


def strategy_label(spec: str) -> str:
    name, options = parse_strategy(spec)
    label = STRATEGY_LABELS[name]
    if options:
        label += " (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"
    return label


def _strategy_arg(spec: str) -> str:
    try:
        parse_strategy(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return spec


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
    """The run's search config; population and sample size follow the CLI's rule (services/runs.py).

    ``strategy`` is a spec (``memnas:top_k=2``): its options become ``strategy_options``.
    """
    name, options = parse_strategy(strategy)
    population = max(4, min(100, budget // 3))
    return SearchConfig(
        space=SpaceConfig(dataset.input_shape, dataset.classes),
        budget=budget,
        bounds=setting.bounds(),
        limits=Limits(sram_bytes=setting.sram_bytes, flash_bytes=setting.flash_bytes),
        strategy=name,  # type: ignore[arg-type]
        strategy_options=options,
        population=population,
        sample_size=max(2, min(25, population // 4)),
        seed=seed,
        fidelity=asdict(setting.fidelity) | {"seed": seed},
    )


def run_one(
    dataset_name: str,
    strategy_name: str,
    seed: int,
    budget: int,
    setting: Setting,
    minutes: float,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Run one search; returns its evaluations (objectives or None for failures) and timings.

    With ``checkpoint`` the strategy's state and the evaluations so far are saved there after
    every evaluation, and a run finding one resumes from it (the time already spent counts).
    """
    from searches.engine.training.datasets import load_dataset
    from searches.engine.training.train import train_and_evaluate

    dataset = load_dataset(dataset_name)
    config = make_config(dataset, strategy_name, seed, budget, setting)
    fidelity = Fidelity(**config.fidelity)
    strategy = make_strategy(config)
    evaluations: list[dict[str, Any]] = []
    spent = 0.0
    if checkpoint is not None and checkpoint.exists():
        saved = json.loads(checkpoint.read_text())
        strategy = from_state_json(saved["state"])
        evaluations, spent = saved["evaluations"], saved["seconds"]
        print(f"resuming {checkpoint.name}: {len(evaluations)} evaluations, {spent / 60:.1f} min", flush=True)
    start = time.monotonic() - spent
    deadline = start + minutes * 60

    def evaluate(arch, proposal):  # type: ignore[no-untyped-def]
        r = train_and_evaluate(arch, dataset, fidelity)
        return EvalResult(r.val_accuracy, r.test_accuracy, metrics={"seconds": r.total_seconds})

    def on_event(event: SearchEvent) -> None:
        if event.kind not in ("evaluated", "failed"):
            return
        row: dict[str, Any] = {"t": time.monotonic() - start, "id": event.proposal.id, "objectives": None}
        if event.member is not None:
            row["objectives"] = list(event.member.objectives)
            row["test"] = event.member.result.test_accuracy
        evaluations.append(row)
        if checkpoint is not None:
            state = {"state": strategy.state_to_json(), "evaluations": evaluations}
            write_atomically(checkpoint, json.dumps(state | {"seconds": time.monotonic() - start}))

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
        # MemNAS: each round's scores and backbone moves, for the λ sweep's reference model
        "trajectory": getattr(strategy, "trajectory", None),
    }


# ---- many runs, cached ----------------------------------------------------------------------------


# MemNAS settings added after runs were stored, at the value that reproduces those runs: left out
# of the hash at that value, so the stored runs keep their names.
HASH_OMITS = {"on_stall": "best_child"}


def _key(dataset: str, strategy: str, seed: int, budget: int, setting: Setting, minutes: float) -> str:
    """The stored run's name; the hash covers every MemNAS setting, defaults included, so that a
    changed default never passes off an old run as one of the new default."""
    name, options = parse_strategy(strategy)
    resolved = MemNASConfig.from_json(options).to_json() if name == "memnas" else {}
    for setting_name, before in HASH_OMITS.items():  # stored runs stay theirs
        if resolved.get(setting_name) == before:
            del resolved[setting_name]
    settings = json.dumps(
        [dataset, strategy, seed, budget, asdict(setting), minutes, resolved], sort_keys=True
    )
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
    if args.fresh:
        out.append("--fresh")
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


def _memnas_defaults() -> str:
    d = MemNASConfig()
    return (
        f"its defaults (λ {d.lam}, β {d.beta}, top-{d.top_k}, seed {d.seed_backbone}, ranker {d.ranker}, "
        f"memory scale {d.memory_scale}, on stall {d.on_stall})"
    )


def _best_accuracy(run: dict[str, Any], n: int) -> float:
    """Best validation accuracy among the first ``n`` evaluations (0 when none trained)."""
    return max((1 - e["objectives"][0] for e in run["evaluations"][:n] if e["objectives"]), default=0.0)


def report(results: list[dict[str, Any]], args: argparse.Namespace, plot_name: str) -> str:
    by_curve = curves(results, args)
    default = {max(1, args.budget // 4), max(1, args.budget // 2), args.budget}
    chosen = {n for n in args.at if 1 <= n <= args.budget} | {args.budget}
    checkpoints = sorted(chosen if args.at else default)
    lines = [
        f"Command: `python bench/bench_strategies.py {shlex.join(sys.argv[1:])}`",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch CPU, "
        f"{args.jobs} run(s) at a time.",
        "",
        f"Budget {args.budget} evaluations per run, seeds {', '.join(map(str, args.seeds))}; objectives "
        "(val error, peak SRAM, flash, MACs) divided by the bounds below, reference point 1. Aging "
        f"evolution uses the CLI's population rule, MemNAS {_memnas_defaults()} unless the row says "
        "otherwise.",
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
        + " | "
        + " | ".join(f"best val acc, n = {n}" for n in checkpoints[1:])
        + " | minutes |",
        "|---|---|" + "---|" * len(checkpoints) + "---|" * len(checkpoints[1:]) + "---|",
    ]
    for dataset in args.datasets:
        for strategy in args.strategies:
            runs = [r for r in results if r["dataset"] == dataset and r["strategy"] == strategy]
            if not runs:
                continue
            hv = by_curve[(dataset, strategy)]
            minutes = statistics.mean(r["seconds"] for r in runs) / 60
            cells = [_mean_sd([_at(c, n) for c in hv]) for n in checkpoints]
            best = [f"{statistics.mean(_best_accuracy(r, n) for r in runs):.3f}" for n in checkpoints[1:]]
            lines.append(
                f"| {dataset} | {strategy_label(strategy)} | "
                + " | ".join(cells + best)
                + f" | {minutes:.1f} |"
            )
    short = [r for r in results if len(r["evaluations"]) < r["budget"]]
    if short:
        lines += ["", f"{len(short)} run(s) stopped before the budget (time limit or no feasible candidate)."]
    lines += ["", f"![hypervolume against evaluations]({plot_name})"]
    return "\n".join(lines)


# ---- plot ---------------------------------------------------------------------------------------------

COLOURS = {"aging_evolution": "#1f77b4", "memnas": "#d62728", "random": "#7f7f7f"}
SVG_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


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
            (line,) = ax.plot(xs, mean, color=COLOURS.get(strategy), label=strategy_label(strategy))
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
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
            colour = COLOURS.get(strategy, SVG_COLOURS[row % len(SVG_COLOURS)])
            band = [xy(i + 1, v) for i, v in enumerate(hi)] + [
                xy(i + 1, v) for i, v in reversed(list(enumerate(lo)))
            ]
            parts.append(f'<polygon points="{" ".join(band)}" fill="{colour}" opacity="0.15"/>')
            line = " ".join(xy(i + 1, v) for i, v in enumerate(mean))
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            label = strategy_label(strategy)
            parts.append(
                f'<text x="{x0 + pad + 6}" y="{pad + 14 + 13 * (row % 6)}" fill="{colour}">{label}</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# ---- λ sweep ------------------------------------------------------------------------------------


def selected_model(run: dict[str, Any], scale: tuple[float, float] | None = None) -> dict[str, Any] | None:
    """The evaluated candidate with the highest Y (the run's λ and β) against the run's first backbone.

    MemNAS's score is relative to the current backbone, so over a whole run it is taken against
    the first one (the seed, or round 0's winner): λ = 0 then prefers the smallest network met,
    λ = 1 the most accurate.  ``scale``: the (SRAM, flash) a memory change is divided by, as the
    run's own score did with the budget memory scale (None: the paper's, the backbone's memory).
    None when nothing was trained.
    """
    trained = [e for e in run["evaluations"] if e["objectives"]]
    if not trained:
        return None
    _, options = parse_strategy(run["strategy"])
    config = MemNASConfig.from_json(options)
    first = next((t["backbone"] for t in run.get("trajectory") or [] if "backbone" in t), None)
    reference = next((e for e in trained if e.get("id") == first), trained[0])

    def triple(e: dict[str, Any]) -> tuple[float, float, float]:
        error, sram, flash, _ = e["objectives"]
        return (1 - error, float(sram), float(flash))

    ref = triple(reference)
    return max(trained, key=lambda e: efficiency_score(*triple(e), ref, config.lam, config.beta, scale))


def sweep_rows(results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per (dataset, λ): the selected model's error, SRAM, flash and MACs, averaged over seeds."""
    rows = []
    for dataset in args.datasets:
        setting = dataset_setting(dataset, args)
        bounds = setting.bounds()
        for spec in args.strategies:
            runs = [r for r in results if r["dataset"] == dataset and r["strategy"] == spec]
            options = MemNASConfig.from_json(parse_strategy(spec)[1])
            limits = Limits(sram_bytes=setting.sram_bytes, flash_bytes=setting.flash_bytes)
            scale = memory_scale(options, limits, bounds)
            picked = [m for m in (selected_model(r, scale) for r in runs) if m is not None]
            if not picked:
                continue
            means = [statistics.mean(m["objectives"][i] for m in picked) for i in range(4)]
            hv = [
                _at(hypervolume_curve([e["objectives"] for e in r["evaluations"]], bounds), args.budget)
                for r in runs
            ]
            rows.append(
                {
                    "dataset": dataset,
                    "lambda": MemNASConfig.from_json(parse_strategy(spec)[1]).lam,
                    "error": means[0],
                    "sram": means[1],
                    "flash": means[2],
                    "macs": means[3],
                    "best_acc": statistics.mean(_best_accuracy(r, args.budget) for r in runs),
                    "hypervolume": statistics.mean(hv),
                    "evaluated": statistics.mean(len(r["evaluations"]) for r in runs),
                    "minutes": statistics.mean(r["seconds"] for r in runs) / 60,
                }
            )
    return rows


def sweep_report(rows: list[dict[str, Any]], args: argparse.Namespace, plot_name: str) -> str:
    lines = [
        f"Command: `python bench/bench_strategies.py {shlex.join(sys.argv[1:])}`",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch CPU, "
        f"{args.jobs} run(s) at a time.",
        "",
        f"MemNAS, budget {args.budget} evaluations per λ, seeds {', '.join(map(str, args.seeds))}, other "
        f"options {args.memnas_options or 'at their defaults'}. The model reported is the one the search's "
        "own score prefers over the whole run: the highest Y (that λ, β) against the first backbone "
        "(numbers: mean over seeds).",
        "",
        "| dataset | fidelity | SRAM / flash limit |",
        "|---|---|---|",
    ]
    for dataset in args.datasets:
        s = dataset_setting(dataset, args)
        f = s.fidelity
        lines.append(
            f"| {dataset} | {f.epochs} epochs, subset {f.train_subset or 'all'}, batch {f.batch_size}, "
            f"lr {f.lr} | {s.sram_bytes:,} B / {s.flash_bytes:,} B |"
        )
    lines += [
        "",
        "| dataset | λ | error | peak SRAM (B) | flash (B) | MACs | best val acc (any) | hypervolume "
        "| evaluated | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['lambda']:g} | {r['error']:.3f} | {r['sram']:,.0f} | {r['flash']:,.0f} "
            f"| {r['macs']:,.0f} | {r['best_acc']:.3f} | {r['hypervolume']:.4f} | {r['evaluated']:.0f} "
            f"| {r['minutes']:.1f} |"
        )
    lines += [
        "",
        "Full size (three seeds, budget 60, both cores): `python bench/bench_strategies.py --lambda-sweep "
        "--datasets fashion-mnist --budget 60 --seeds 0 1 2 --jobs 2 --write`. Interpretation: "
        'docs/pruning-and-memnas.md, "λ".',
        "",
        f"![error and memory of the selected model against λ]({plot_name})",
    ]
    return "\n".join(lines)


def sweep_plot(rows: list[dict[str, Any]], datasets: list[str], path: Path) -> Path:
    """Error (left axis) and peak SRAM / flash in KB (right axis) against λ, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        mine = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["lambda"])
        lams = [r["lambda"] for r in mine]
        ax.plot(lams, [100 * r["error"] for r in mine], "o-", color="#d62728", label="error")
        ax.set_xlabel("λ")
        ax.set_ylabel("error (%)", color="#d62728")
        memory = ax.twinx()
        memory.plot(lams, [r["sram"] / 1000 for r in mine], "s--", color="#1f77b4", label="peak SRAM")
        memory.plot(lams, [r["flash"] / 1000 for r in mine], "^--", color="#2ca02c", label="flash")
        memory.set_yscale("log")  # λ = 1 grows networks a hundred times the size of λ = 0
        memory.set_ylabel("memory (kB, log scale)")
        handles = ax.get_legend_handles_labels()[0] + memory.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="upper center", fontsize=8)
        ax.set_title(f"MemNAS on {dataset}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


# ---- command line -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=60, help="evaluations per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--strategies",
        nargs="+",
        type=_strategy_arg,
        default=list(STRATEGY_LABELS),
        help="aging_evolution, random, memnas or memnas:OPTION=VALUE,... (MemNAS options, e.g. top_k=2)",
    )
    parser.add_argument("--lambda-sweep", action="store_true", help="MemNAS once per λ (see --lambdas)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument(
        "--memnas-options",
        default="",
        help="λ sweep: other MemNAS options, e.g. top_k=4,seed_backbone=minimal",
    )
    parser.add_argument("--epochs", type=int, help="override the dataset's fidelity")
    parser.add_argument("--train-subset", type=int, help="override the dataset's fidelity")
    parser.add_argument("--minutes-per-run", type=float, default=120.0, help="wall-clock limit of one run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one torch thread each)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached runs")
    parser.add_argument(
        "--at", type=int, nargs="+", default=[], help="report hypervolume after these evaluations too"
    )
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md and the plot")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--title", help=f"section of --docs to replace (default {TITLE!r} or {SWEEP_TITLE!r})"
    )
    parser.add_argument("--plot", type=Path, help="default docs/strategies.png or docs/memnas_lambda.png")
    parser.add_argument(
        "--one", nargs=4, metavar=("DATASET", "STRATEGY", "SEED", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.one:
        dataset, strategy, seed, out = args.one
        path = Path(out)
        partial = path.with_name(path.name.replace(".json", ".partial.json"))
        if args.fresh:
            partial.unlink(missing_ok=True)
        result = run_one(
            dataset,
            strategy,
            int(seed),
            args.budget,
            dataset_setting(dataset, args),
            args.minutes_per_run,
            checkpoint=partial,
        )
        write_atomically(path, json.dumps(result))
        partial.unlink(missing_ok=True)
        return

    if args.lambda_sweep:
        extra = parse_options(args.memnas_options)
        extra.pop("lambda", None)
        specs = []
        for lam in args.lambdas:
            options = ",".join(f"{k}={v}" for k, v in {"lambda": lam, **extra}.items())
            specs.append(_strategy_arg(f"memnas:{options}"))
        args.strategies = specs
    default_plot = "memnas_lambda.png" if args.lambda_sweep else "strategies.png"
    plot_path = (args.plot or ROOT / "docs" / default_plot).resolve()
    results = run_all(args)
    if args.lambda_sweep:
        rows = sweep_rows(results, args)
        if args.write:
            plot_path = sweep_plot(rows, args.datasets, plot_path)
    elif args.write:
        plot_path = plot(curves(results, args), args.datasets, args.budget, plot_path)
    try:
        plot_name = str(plot_path.relative_to(args.docs.parent))
    except ValueError:
        plot_name = str(plot_path)
    if args.lambda_sweep:
        text = sweep_report(rows, args, plot_name)
    else:
        text = report(results, args, plot_name)
    print(text)
    if args.write:
        replace_section(args.docs, args.title or (SWEEP_TITLE if args.lambda_sweep else TITLE), text)


if __name__ == "__main__":
    main()
