"""Multi-fidelity (ASHA rungs) against single fidelity at equal CPU time, float against int8 error.

Four arms per seed: fidelity schedule off/asha x error objective float/int8, each an aging
evolution run in-process (no database) with the CLI's configuration for the data set, stopped
when the process has spent ``--cpu-seconds`` of CPU time (CPU, not wall time: the machine is
shared).  Every candidate is trained on one thread and quantised to int8 exactly as a worker
does (searches.services.artifacts), so the int8 accuracies are the stored ones.

Reported per arm (mean and per-seed values over the seeds):

- *best deployable accuracy*: the int8 **test** accuracy of the candidate the run would pick,
  i.e. the best validation accuracy under the run's own error objective (float or int8), at
  its highest rung;
- *hypervolume* of every trained candidate's (int8 test error, peak SRAM) at its highest rung,
  reference point (error 1, the SRAM limit), normalised to [0, 1];
- candidates started (rung 0) and promotions.

Usage:

    python bench/bench_fidelity.py [--dataset digits] [--seeds 0 1 2] [--cpu-seconds 60]
        [--population 20] [--arms off:float,asha:float] [--jobs 2] [--fresh] [--write]

Each finished run is stored as JSON under bench/results/fidelity/ (keyed by its settings;
committed), and a later invocation with the same settings reads it instead of running it again:
a comparison of many CPU-hours is finished over several sittings (``--fresh`` runs everything
again).  ``--arms`` picks some of the four arms.

``--write`` replaces the data set's "Multi-fidelity and the int8 objective (digits)" or
"(Fashion-MNIST)" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import replace_section, write_atomically

ARMS = (("off", "float"), ("off", "int8"), ("asha", "float"), ("asha", "int8"))
# (peak SRAM, flash) limits in bytes: the CLI's digits demo, and bench_strategies' Fashion-MNIST.
LIMITS = {"digits": (2048, 4096), "fashion-mnist": (64_000, 64_000)}
SECTION = "Multi-fidelity and the int8 objective"
DATASET_TITLES = {"digits": "digits", "fashion-mnist": "Fashion-MNIST"}
RESULTS = ROOT / "bench" / "results" / "fidelity"


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nasweb.settings")
    import django

    django.setup()


def run_arm(
    dataset_name: str, seed: int, schedule: str, objective: str, cpu_seconds: float, population: int
) -> dict[str, Any]:
    """One search, stopped after ``cpu_seconds`` of this process's CPU time; its summary."""
    _django()
    import torch

    from searches.engine.strategies.asha import rung_epochs
    from searches.engine.strategies.base import EvalResult, Member, Proposal
    from searches.engine.strategies.config import Limits
    from searches.engine.strategies.driver import SearchEvent, run_search
    from searches.engine.strategies.registry import make_strategy
    from searches.engine.training.model import build_model
    from searches.engine.training.train import Fidelity, train_and_evaluate
    from searches.services.artifacts import evaluation_threads, int8_accuracies, quantize_trained
    from searches.services.compare import hypervolume_curve
    from searches.services.runs import get_dataset, make_config

    torch.set_num_threads(1)
    dataset = get_dataset(dataset_name)
    sram, flash = LIMITS[dataset_name]
    limits = Limits(sram_bytes=sram, flash_bytes=flash)
    config = make_config(dataset, limits, budget=100_000, seed=seed, population=population)
    config = dataclasses.replace(config, fidelity_schedule=schedule, error_objective=objective)
    fidelity = Fidelity(**config.fidelity)
    states: dict[str, dict[str, torch.Tensor]] = {}

    def evaluate(arch: Any, proposal: Proposal) -> EvalResult:
        if proposal.rung > 0:
            assert proposal.resume_weights is not None
            before = rung_epochs(fidelity.epochs, config.asha_eta, proposal.rung - 1)
            total = rung_epochs(fidelity.epochs, config.asha_eta, proposal.rung)
            extra = dataclasses.replace(fidelity, epochs=total - before)
            result = train_and_evaluate(arch, dataset, extra, initial_state=states[proposal.resume_weights])
        else:
            result = train_and_evaluate(arch, dataset, fidelity)
        name = f"{proposal.id}-rung-{proposal.rung}"
        states[name] = result.state_dict
        model = build_model(arch)
        model.load_state_dict(result.state_dict)
        with evaluation_threads():
            qm = quantize_trained(arch, model.eval(), dataset, fidelity)
            int8_val, int8_test = int8_accuracies(qm, dataset, fidelity)
        return EvalResult(
            result.val_accuracy,
            result.test_accuracy,
            metrics={"weights": name, "int8_val_accuracy": int8_val, "int8_test_accuracy": int8_test},
        )

    strategy = make_strategy(config)
    latest: dict[int, Member] = {}  # every candidate at its highest rung

    def on_event(event: SearchEvent) -> None:
        if event.member is not None:
            latest[event.member.id] = event.member

    start = time.process_time()
    run_search(strategy, evaluate, on_event, should_stop=lambda: time.process_time() - start > cpu_seconds)
    members = list(latest.values())
    best = max(members, key=lambda m: (m.accuracy(config.error_objective), -m.id))
    points = [
        (1.0 - m.result.metrics["int8_test_accuracy"], float(m.resources["peak_sram_bytes"])) for m in members
    ]
    points.sort(key=lambda p: p[0])
    hv = hypervolume_curve(points, (1.0, float(limits.sram_bytes or 1)))[-1] if points else 0.0
    return {
        "dataset": dataset_name,
        "seed": seed,
        "schedule": schedule,
        "objective": objective,
        "cpu_seconds": time.process_time() - start,
        "population": population,
        "candidates": strategy.told,
        "promotions": strategy.counters.get("promotions", 0),
        "best_int8_test": best.result.metrics["int8_test_accuracy"],
        "best_float_test": best.result.test_accuracy,
        "best_rung": best.rung,
        "best_sram": best.resources["peak_sram_bytes"],
        "hypervolume": hv,
        "fidelity": config.fidelity,
    }


def parse_arms(text: str) -> list[tuple[str, str]]:
    """``off:float,asha:int8`` -> [("off", "float"), ("asha", "int8")]; unknown arms are refused."""
    arms = []
    for item in text.split(","):
        arm = tuple(item.strip().split(":"))
        if arm not in ARMS:
            known = ", ".join(f"{s}:{o}" for s, o in ARMS)
            raise SystemExit(f"unknown arm {item.strip()!r}: one of {known}")
        arms.append((arm[0], arm[1]))
    return arms


def result_path(dataset: str, seed: int, schedule: str, objective: str, cpu: float, population: int) -> Path:
    """Where a run with these settings is stored (the hash also covers the limits)."""
    settings = json.dumps([dataset, seed, schedule, objective, cpu, population, LIMITS[dataset]])
    digest = hashlib.sha256(settings.encode()).hexdigest()[:10]
    return RESULTS / f"{dataset}-{schedule}-{objective}-{seed}-{digest}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(LIMITS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cpu-seconds", type=float, default=60.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--population", type=int, default=20, help="aging evolution's population (smaller for short runs)"
    )
    parser.add_argument(
        "--arms",
        default=",".join(f"{s}:{o}" for s, o in ARMS),
        help="schedule:objective pairs to run, comma-separated (default: all four)",
    )
    parser.add_argument("--fresh", action="store_true", help="run again what is stored")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    arms = parse_arms(args.arms)
    tasks = [
        (args.dataset, seed, s, o, args.cpu_seconds, args.population) for seed in args.seeds for s, o in arms
    ]
    wall = time.monotonic()
    rows, todo = [], []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        path = result_path(*task)
        if path.exists() and not args.fresh:
            rows.append(json.loads(path.read_text()))
        else:
            todo.append(task)
    print(f"{len(rows)} run(s) stored, {len(todo)} to run", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for task, row in zip(todo, pool.map(run_arm, *zip(*todo, strict=True)) if todo else [], strict=True):
            print(json.dumps(row), flush=True)  # each run as it finishes: a cut-short bench still tells
            write_atomically(result_path(*task), json.dumps(row))
            rows.append(row)
    wall = time.monotonic() - wall
    text = report(args, rows, wall)
    print(text)
    if args.write:
        replace_section(ROOT / "docs" / "benchmarks.md", f"{SECTION} ({DATASET_TITLES[args.dataset]})", text)


def report(args: argparse.Namespace, rows: list[dict[str, Any]], wall: float) -> str:
    seeds = " ".join(str(s) for s in args.seeds)
    sram, flash = LIMITS[args.dataset]
    fidelity = {k: v for k, v in rows[0]["fidelity"].items() if k != "seed"}  # the seed is the run's
    lines = [
        f"Command: `nice -n 19 python bench/bench_fidelity.py --dataset {args.dataset} --seeds {seeds} "
        f"--cpu-seconds {args.cpu_seconds:g} --population {args.population} --jobs {args.jobs}"
        + ("" if parse_arms(args.arms) == list(ARMS) else f" --arms {args.arms}")
        + " --write`",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch CPU, "
        f"{args.jobs} run(s) at a time, {wall / 60:.1f} min wall for the runs not already stored in "
        "bench/results/fidelity/ (shared with other work).",
        "",
        f"Aging evolution on {args.dataset}, limits {sram:,} B SRAM / {flash:,} B flash, "
        f"population {args.population}, "
        f"{args.cpu_seconds:g} CPU-seconds per run, rung-0 fidelity {fidelity}; ASHA with "
        "eta 3 and max rung 2 (rungs of 1x, 3x, 9x the epochs). Best deployable = int8 test accuracy of "
        "the candidate with the best validation accuracy under the run's own objective; hypervolume "
        "of all candidates' (int8 test error, peak SRAM), reference (1, SRAM limit).",
        "",
        "| schedule | error objective | best deployable (int8 test) | hypervolume | candidates "
        "| promotions |",
        "|---|---|---|---|---|---|",
    ]
    for schedule, objective in parse_arms(args.arms):
        arm = [r for r in rows if r["schedule"] == schedule and r["objective"] == objective]
        best = ", ".join(f"{r['best_int8_test']:.3f}" for r in arm)
        hv = ", ".join(f"{r['hypervolume']:.4f}" for r in arm)
        lines.append(
            f"| {schedule} | {objective} | {statistics.mean(r['best_int8_test'] for r in arm):.3f} ({best}) "
            f"| {statistics.mean(r['hypervolume'] for r in arm):.4f} ({hv}) "
            f"| {statistics.mean(r['candidates'] for r in arm):.0f} "
            f"| {statistics.mean(r['promotions'] for r in arm):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
