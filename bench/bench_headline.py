"""Fashion-MNIST headline: a time-limited search, then its best candidates trained for deployment.

What a user does with nasweb on a 2-core machine, timed end to end:

1. **Search** (at most ``--search-minutes``): aging evolution with the CLI's Fashion-MNIST
   configuration (``manage.py search --dataset fashion-mnist --sram-kb 64 --flash-kb 64
   --max-macs 30000000``: default fidelity, μNAS bounds), ``--jobs`` candidates trained side by
   side with one torch thread each (as ``--jobs`` Celery workers would).  At the deadline the
   trainings in flight are abandoned.
2. **Train for deployment** (at most ``--deploy-minutes``): ``--top-k`` distinct candidates,
   ``--deploy-jobs`` at a time with the machine's cores shared between them, with the service's
   Fashion-MNIST recipe (augmentation with flips, AdamW, cosine schedule, QAT last); the float
   epochs are the most that fit the phase's time, planned from a timed probe of each model.
   ``--pick val`` takes the best by search validation accuracy; ``--pick flash`` (``macs``)
   takes, among the candidates tied with the best (within one standard error of its validation
   accuracy), the ones with the most weights (MACs): a 2-epoch search cannot tell tied
   candidates apart, and the larger ones gain more from long training.  Int8 accuracy is the
   integer reference's (equal to the C header's) on the test split.

    python bench/bench_headline.py [--search-minutes 60] [--deploy-minutes 60] [--jobs 2] \\
        [--top-k 1] [--deploy-jobs 1] [--pick flash] [--objective all] [--seed 0] [--write]

``--objective error`` searches on validation error alone, the SRAM, flash and MACs limits kept as
constraints (μNAS's objective, ``all``, also weighs the three resources against error).

The search's log is kept in var/headline/search.json; ``--reuse-search FILE`` trains from such a
log instead of searching again (the report says so).

``--write`` replaces the "Fashion-MNIST headline" section of docs/benchmarks.md and writes the
deployed architectures to docs/headline-fashion-mnist.json (``manage.py analyze`` reads it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F

from bench._report import replace_section
from searches.engine.deploy.int8 import QuantModel
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import int8_accuracy
from searches.engine.space.arch import Architecture
from searches.engine.space.arch import from_json as arch_from_json
from searches.engine.strategies.base import EvalFailure, EvalResult
from searches.engine.strategies.config import Bounds, SearchConfig
from searches.engine.strategies.registry import make_strategy
from searches.engine.training.augment import augment_batch
from searches.engine.training.datasets import Dataset, load_dataset
from searches.engine.training.deployment import (
    Recipe,
    calibration_indices,
    int8_accuracy_sim,
    train_for_deployment,
    within_one_se,
)
from searches.engine.training.model import build_model, to_nchw
from searches.engine.training.qat import QATModel, Ranges
from searches.engine.training.train import Fidelity, accuracy, split_indices, train_and_evaluate

DATASET = "fashion-mnist"
SRAM_KB, FLASH_KB, MAX_MACS = 64, 64, 30_000_000
PROBE_BATCHES = 12
MODELS = ROOT / "var" / "headline"  # the deployed models' weights, for --verify
# Time kept back in a deployment training's share for what the probe does not see (the final
# test evaluation, checkpoint writes, the machine's noise).
DEPLOY_MARGIN = 0.07

_data: Dataset | None = None


def _dataset() -> Dataset:
    global _data
    if _data is None:
        _data = load_dataset(DATASET, os.environ.get("NASWEB_FASHION_MNIST_DIR") or None)
    return _data


def _worker_init() -> None:
    torch.set_num_threads(1)
    _dataset()


# ---- phase 1: the search -----------------------------------------------------------------------


def evaluate(arch_json: dict[str, Any], fidelity: dict[str, Any]) -> dict[str, Any]:
    """Train one candidate at the search's fidelity (runs in a worker process)."""
    t0 = time.perf_counter()
    r = train_and_evaluate(arch_from_json(arch_json), _dataset(), Fidelity(**fidelity))
    return {"val": r.val_accuracy, "test": r.test_accuracy, "seconds": time.perf_counter() - t0}


OBJECTIVE_TEXT = {
    "all": "μNAS's objective (validation error, peak SRAM, flash and MACs under randomly drawn λ)",
    "error": "validation error as the only objective, the limits as constraints only (`--objective error`)",
}


def objective_bounds(bounds: Bounds, objective: str) -> Bounds:
    """The search's bounds for ``--objective``: ``all`` keeps μNAS's four; ``error`` keeps error alone.

    The limits are not bounds: with ``error`` a child over the SRAM, flash or MACs limit is still
    rejected before training, but among those within the limits a smaller one is no longer
    preferred, so the population does not drift toward models too small to gain from long training.
    """
    if objective == "all":
        return bounds
    if objective == "error":
        return Bounds(error=bounds.error)
    raise ValueError(f"unknown objective {objective!r}: expected 'all' or 'error'")


def search_config(seed: int, population: int, objective: str = "all") -> tuple[SearchConfig, Any]:
    """The CLI's Fashion-MNIST configuration (searches/services), with no database."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nasweb.settings")
    import django

    django.setup()
    from searches.services import runs

    limits = runs.limits_for(None, SRAM_KB, FLASH_KB, None, MAX_MACS)
    config = runs.make_config(_dataset(), limits, budget=1_000_000, seed=seed, population=population)
    return replace(config, bounds=objective_bounds(config.bounds, objective)), limits


def run_search(config: SearchConfig, minutes: float, pool: ProcessPoolExecutor, jobs: int) -> dict[str, Any]:
    """Ask → train (``jobs`` side by side in ``pool``) → tell until the deadline; every evaluation."""
    strategy = make_strategy(config)
    start = time.monotonic()
    deadline = start + minutes * 60
    in_flight: dict[Future[dict[str, Any]], Any] = {}
    log: list[dict[str, Any]] = []
    failed = 0
    while time.monotonic() < deadline:
        while len(in_flight) < jobs:
            proposal = strategy.ask()
            if proposal is None:
                break
            if proposal.rejected:
                continue
            arch = proposal.architecture.to_json()
            in_flight[pool.submit(evaluate, arch, config.fidelity)] = (proposal, arch)
        if not in_flight:
            break
        done, _ = wait(in_flight, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
        for future in done:
            proposal, arch = in_flight.pop(future)
            try:
                r = future.result()
            except Exception as exc:  # one candidate failing must not end the search
                strategy.tell(proposal.id, EvalFailure(f"{type(exc).__name__}: {exc}"))
                failed += 1
                continue
            strategy.tell(proposal.id, EvalResult(r["val"], r["test"], metrics={"seconds": r["seconds"]}))
            log.append({"t": time.monotonic() - start, "arch": arch, **r, **proposal.resources})
            if len(log) % 25 == 0:
                best = max(log, key=lambda e: e["val"])
                print(
                    f"search {log[-1]['t'] / 60:5.1f} min: {len(log)} trained, best val {best['val']:.4f}",
                    flush=True,
                )
    return {
        "log": log,
        "abandoned": len(in_flight),
        "failed": failed,
        "rejected": strategy.counters.get("rejected", 0),
        "seconds": time.monotonic() - start,
        "population": config.population,
        "sample_size": config.sample_size,
    }


# ---- phase 2: training for deployment ----------------------------------------------------------


def base_recipe() -> Recipe:
    """The service's Fashion-MNIST recipe, augmentation included (what the candidate page runs)."""
    from searches.engine.training.augment import for_dataset
    from searches.services.deployment import DEFAULT_RECIPES

    return replace(DEFAULT_RECIPES[DATASET], augment=for_dataset(DATASET, _dataset().input_shape))


def _timed(fn: Any, repeat: int) -> float:
    fn()  # warm-up (allocations, first-call overheads)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def probe(arch_json: dict[str, Any], recipe_json: dict[str, Any], threads: int) -> dict[str, float]:
    """Seconds per float epoch, per QAT epoch and per validation pass of this model and recipe."""
    torch.set_num_threads(threads)
    arch, recipe, data = arch_from_json(arch_json), Recipe.from_json(recipe_json), _dataset()
    train_idx, val_idx = split_indices(data.y_train, recipe.split)
    model = build_model(arch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = to_nchw(data.x_train[train_idx[: recipe.batch_size]]).contiguous()
    y = torch.from_numpy(data.y_train[train_idx[: recipe.batch_size]])

    def step(net: torch.nn.Module) -> None:
        batch = x if recipe.augment is None else augment_batch(x, recipe.augment, gen)
        loss = F.cross_entropy(net(batch), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    float_step = _timed(lambda: step(model), PROBE_BATCHES)
    qat = QATModel(arch, model)
    qat.calibrate(data.x_train[calibration_indices(train_idx)])
    qat = QATModel(arch, model, qat.ranges())
    qat.train()
    qat_step = _timed(lambda: step(qat), PROBE_BATCHES // 2)
    batches = len(train_idx) // recipe.batch_size
    sample = val_idx[:1000]
    xs = to_nchw(data.x_train[sample]).contiguous()
    ys = torch.from_numpy(data.y_train[sample])
    t0 = time.perf_counter()
    accuracy(model, xs, ys)
    int8_accuracy_sim(qat.eval(), data.x_train[sample], data.y_train[sample])
    per_image = (time.perf_counter() - t0) / len(sample)
    t0 = time.perf_counter()
    qat.calibrate(data.x_train[calibration_indices(train_idx)])  # a fixed 512 images, not per image
    val_pass = per_image * len(val_idx) + (time.perf_counter() - t0)
    return {"float_epoch": float_step * batches, "qat_epoch": qat_step * batches, "val_pass": val_pass}


def plan_epochs(recipe: Recipe, timing: dict[str, float], seconds: float) -> int:
    """The most float epochs that, with the recipe's QAT epochs, fit ``seconds``."""
    usable = seconds * (1 - DEPLOY_MARGIN)
    qat = recipe.qat_epochs * (timing["qat_epoch"] + timing["val_pass"])
    return int((usable - qat) // (timing["float_epoch"] + timing["val_pass"]))


def quantized(
    arch: Architecture, state: dict[str, torch.Tensor], split: Fidelity, ranges: Ranges | None = None
) -> QuantModel:
    """The int8 model of trained weights, calibrated on ``split``'s training images as the product does."""
    data = _dataset()
    model = build_model(arch)
    model.load_state_dict(state)
    train_idx, _ = split_indices(data.y_train, split)
    return quantize(arch, model.eval(), data.x_train[calibration_indices(train_idx)], ranges=ranges)


def deploy(
    arch_json: dict[str, Any], recipe_json: dict[str, Any], checkpoint: str, threads: int
) -> dict[str, Any]:
    """Train one model for deployment and measure its int8 test accuracy (in a worker process).

    The trained weights and int8 ranges are kept in var/headline/model-<n>.pt for ``--verify``.
    """
    t0 = time.perf_counter()
    arch, recipe, data = arch_from_json(arch_json), Recipe.from_json(recipe_json), _dataset()
    result = train_for_deployment(arch, data, recipe, checkpoint, threads=threads)
    qm = quantized(arch, result.state_dict, recipe.split, result.ranges)
    try:  # keeping the model must never cost the measurement
        MODELS.mkdir(parents=True, exist_ok=True)
        kept = {"arch": arch_json, "recipe": recipe_json, "state_dict": result.state_dict}
        torch.save(kept | {"ranges": json.dumps(result.ranges)}, MODELS / f"model-{Path(checkpoint).stem}.pt")
    except Exception as exc:
        print(f"could not keep the model: {exc}", flush=True)
    return {
        "float_test": result.test_accuracy,
        "int8_test": int8_accuracy(qm, data.x_test, data.y_test),
        "int8_val": result.int8_val_accuracy,
        "best_epoch": result.best_epoch,
        "history": [h.to_json() for h in result.history],
        "seconds": time.perf_counter() - t0,
    }


def search_int8(arch_json: dict[str, Any], fidelity: dict[str, Any]) -> float:
    """Int8 test accuracy of a candidate at the search's fidelity (post-training quantisation)."""
    arch, data, split = arch_from_json(arch_json), _dataset(), Fidelity(**fidelity)
    qm = quantized(arch, train_and_evaluate(arch, data, split).state_dict, split)
    return int8_accuracy(qm, data.x_test, data.y_test)


def distinct(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each architecture once (its best evaluation), best search validation accuracy first."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for entry in sorted(log, key=lambda e: -e["val"]):
        key = json.dumps(entry["arch"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def pick(log: list[dict[str, Any]], k: int, rule: str = "val", n_val: int = 6000) -> list[dict[str, Any]]:
    """The ``k`` candidates to train for deployment, chosen on validation only.

    ``val``: the best by search validation accuracy.  ``macs`` / ``flash``: among those within
    one standard error, sqrt(p(1-p)/n_val), of the best's accuracy p (a tie at the search's
    fidelity), the ones with the most MACs / the most flash (weights); fewer than ``k`` tied
    fill up by accuracy.
    """
    ranked = distinct(log)
    if rule == "val" or not ranked:
        return ranked[:k]
    top = ranked[0]["val"]
    tied = [e for e in ranked if within_one_se(e["val"], top, n_val)]
    size = {"macs": "macs", "flash": "flash_bytes"}[rule]
    chosen = sorted(tied, key=lambda e: -e[size])[:k]
    return chosen + [e for e in ranked if e not in chosen][: k - len(chosen)]


def run_deployment(
    chosen: list[dict[str, Any]], minutes: float, pool: ProcessPoolExecutor, jobs: int
) -> dict[str, Any]:
    start = time.monotonic()
    recipe = base_recipe()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    timings = [f.result() for f in [pool.submit(probe, c["arch"], recipe.to_json(), threads) for c in chosen]]
    rounds = -(-len(chosen) // jobs)  # trainings run ``jobs`` at a time
    share = (minutes * 60 - (time.monotonic() - start)) / rounds
    plans = [replace(recipe, epochs=max(1, plan_epochs(recipe, t, share))) for t in timings]
    for c, t, r in zip(chosen, timings, plans, strict=True):
        print(
            f"deploy: val {c['val']:.4f}, {c['macs']:,} MACs: float epoch {t['float_epoch']:.0f} s, "
            f"QAT epoch {t['qat_epoch']:.0f} s, validation {t['val_pass']:.0f} s -> {r.epochs} + "
            f"{r.qat_epochs} epochs",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        futures = [
            pool.submit(deploy, c["arch"], r.to_json(), str(Path(tmp) / f"{n}.pt"), threads)
            for n, (c, r) in enumerate(zip(chosen, plans, strict=True))
        ]
        results = [f.result() for f in futures]
    return {
        "results": results,
        "recipes": [r.to_json() for r in plans],
        "timings": timings,
        "threads": threads,
        "seconds": time.monotonic() - start,
    }


# ---- the deployed models' headers, verified --------------------------------------------------------


def build_cell(status: str, numbers: dict[str, Any]) -> str:
    """The Cortex-M build's table cell: the image's flash / RAM, or by how much it overflowed."""
    if status == "passed":
        return f"passed: {numbers.get('flash_bytes', 0):,} B / {numbers.get('ram_bytes', 0):,} B"
    over = [
        f"{region} by {numbers[f'{region}_overflow_bytes']:,} B"
        for region in ("flash", "ram")
        if f"{region}_overflow_bytes" in numbers
    ]
    return status + (f": over the {' and '.join(over)}" if over else "")


def verify_models(core: str, clock_mhz: float, flash_kb: int = FLASH_KB) -> str:
    """Build each kept model's C header and verify it as Verify does; a Markdown paragraph."""
    from searches.engine.deploy.verify import verify_export

    data = _dataset()
    lines = [
        "**The headers, verified** (`python bench/bench_headline.py --verify"
        + (f" --board-flash-kb {flash_kb}" if flash_kb != FLASH_KB else "")
        + f"`; {core} at {clock_mhz:g} MHz, {SRAM_KB} KB SRAM / {flash_kb} KB flash; the steps of the "
        "candidate page's Verify)",
        "",
        "| model | host: C int8 test accuracy (bit-exact with the reference) | Cortex-M build: flash / RAM "
        "| QEMU: outputs equal | instructions per inference |",
        "|---|---|---|---|---|",
    ]
    for path in sorted(MODELS.glob("model-*.pt")):
        kept = torch.load(path, map_location="cpu", weights_only=True)
        arch, recipe = arch_from_json(kept["arch"]), Recipe.from_json(kept["recipe"])
        ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in json.loads(kept["ranges"]).items()}
        qm = quantized(arch, kept["state_dict"], recipe.split, ranges)
        result = verify_export(
            qm,
            f"fmnist_{path.stem.replace('-', '_')}",
            core=core,
            flash_limit_bytes=flash_kb * 1024,
            sram_limit_bytes=SRAM_KB * 1024,
            clock_mhz=clock_mhz,
            test_x=data.x_test,
            test_y=data.y_test,
        )
        steps = {s.key: s for s in result.steps}
        for s in result.steps:
            print(f"{path.stem} {s.key}: {s.status} - {s.message}", flush=True)
        host, arm, qemu, count = (steps[k] for k in ("host", "arm_build", "qemu", "instructions"))
        n = int(path.stem.split("-")[1]) + 1
        lines.append(
            f"| {n} | {host.status}: {host.numbers.get('c_accuracy', float('nan')):.4f} "
            f"(reference {host.numbers.get('python_int8_accuracy', float('nan')):.4f}) "
            f"| {build_cell(arm.status, arm.numbers)} | {qemu.status} "
            f"| {round(count.numbers.get('instructions_per_inference', 0)):,} |"
        )
    return "\n".join(lines)


# ---- the report --------------------------------------------------------------------------------


PICK_TEXT = {
    "val": "the best by search validation accuracy",
    "macs": "among those within one standard error of the best search validation accuracy the "
    "ones with the most MACs (`--pick macs`)",
    "flash": "among those within one standard error of the best search validation accuracy the "
    "ones with the most weights, by flash size (`--pick flash`)",
}


def pareto(points: list[tuple[float, int]]) -> list[bool]:
    """Which (int8 accuracy, peak SRAM) points no other point beats on both."""
    return [not any(a2 >= a and s2 <= s and (a2, s2) != (a, s) for a2, s2 in points) for a, s in points]


def report(
    args: argparse.Namespace, search: dict[str, Any], chosen: list[dict[str, Any]], dep: dict[str, Any]
) -> str:
    log = search["log"]
    objective = search.get("objective", "all")  # a reused log keeps the objective it was searched with
    best = max(log, key=lambda e: e["val"])
    by_minute = [
        (m, max((e["val"] for e in log if e["t"] <= m * 60), default=0.0))
        for m in (5, 15, 30, 45, 60)
        if m <= args.search_minutes
    ]
    results = dep["results"]
    top = max(range(len(results)), key=lambda i: results[i]["int8_val"])  # selected on validation
    front = pareto([(r["int8_test"], c["peak_sram_bytes"]) for r, c in zip(results, chosen, strict=True)])
    load = os.getloadavg()[0]
    lines = [
        f"Command: `python bench/bench_headline.py --search-minutes {args.search_minutes:g} "
        f"--deploy-minutes {args.deploy_minutes:g} --jobs {args.jobs} --top-k {args.top_k} "
        f"--deploy-jobs {args.deploy_jobs} --pick {args.pick} --objective {objective} --seed {args.seed}"
        + (f" --reuse-search {args.reuse_search}" if args.reuse_search else "")
        + " --write`",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__} CPU; search: {args.jobs} processes of one thread; deployment: "
        f"{args.deploy_jobs} at a time, {dep['threads']} thread(s) each; 1-minute load "
        f"average {load:.1f} at the end. Architectures: docs/headline-fashion-mnist.json."
        + (
            f" The search is an earlier run's log ({args.reuse_search}), not searched again."
            if args.reuse_search
            else ""
        ),
        "",
        f"Fashion-MNIST (28x28x1, 60,000 train / 10,000 test) under {SRAM_KB} KB peak SRAM, "
        f"{FLASH_KB} KB flash and {MAX_MACS:,} MACs, as `manage.py search --dataset fashion-mnist "
        f"--sram-kb {SRAM_KB} --flash-kb {FLASH_KB} --max-macs {MAX_MACS}` configures it: aging "
        f"evolution, population {search['population']}, sample {search['sample_size']}, the default "
        f"fidelity (2 epochs on 10,000 images); {OBJECTIVE_TEXT[objective]}.",
        "",
        "**Search**",
        "",
        "| measure | value |",
        "|---|---|",
        f"| wall time | {search['seconds'] / 60:.1f} min |",
        f"| candidates trained / failed / abandoned at the deadline | {len(log)} / {search['failed']} / "
        f"{search['abandoned']} |",
        f"| children rejected before training (over the limits) | {search['rejected']} |",
        f"| best by validation accuracy: val / test (float, search fidelity) | {best['val']:.4f} / "
        f"{best['test']:.4f} |",
        f"| its peak SRAM / flash / MACs | {best['peak_sram_bytes']:,} B / {best['flash_bytes']:,} B / "
        f"{best['macs']:,} |",
        "| best validation accuracy after "
        + " / ".join(f"{m}" for m, _ in by_minute)
        + " min | "
        + " / ".join(f"{v:.4f}" for _, v in by_minute)
        + " |",
        "",
        f"**Training for deployment** ({dep['seconds'] / 60:.1f} min wall; {len(chosen)} distinct "
        f"candidate(s), {PICK_TEXT[args.pick]}, {args.deploy_jobs} at a time; recipe: batch "
        f"{dep['recipes'][0]['batch_size']}, AdamW lr {dep['recipes'][0]['lr']:g} on a cosine "
        f"schedule, weight decay {dep['recipes'][0]['weight_decay']:g}, augmentation "
        "(rotation ±0.2 rad with p 0.3, shifts ±2 px, horizontal flips), then "
        f"{dep['recipes'][0]['qat_epochs']} QAT epochs at lr {dep['recipes'][0]['qat_lr']:g}; the epoch "
        "kept is chosen on int8 validation accuracy by the rule "
        f"`select = {dep['recipes'][0].get('select')}`)",
        "",
        "| model | peak SRAM | flash | MACs | search val | search-fidelity int8 test (PTQ) | float + QAT "
        "epochs (kept) | float test | **int8 test** | time | int8 Pareto (vs SRAM) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, (c, r, recipe, on_front) in enumerate(zip(chosen, results, dep["recipes"], front, strict=True)):
        name = f"{n + 1}" + (" (selected)" if n == top else "")
        lines.append(
            f"| {name} | {c['peak_sram_bytes']:,} B | {c['flash_bytes']:,} B | {c['macs']:,} | "
            f"{c['val']:.4f} | {c['search_int8']:.4f} | {recipe['epochs']} + {recipe['qat_epochs']} "
            f"({r['best_epoch']}) | {r['float_test']:.4f} | **{r['int8_test']:.4f}** | "
            f"{r['seconds'] / 60:.1f} min | {'yes' if on_front else 'no'} |"
        )
    sel = results[top]
    lines += [
        "",
        f"The deployable model selected on int8 validation accuracy (model {top + 1}) scores "
        f"**{sel['int8_test']:.2%} int8** ({sel['float_test']:.2%} float) on the test split, "
        f"{sel['int8_test'] - chosen[top]['search_int8']:+.2%} over its search-fidelity int8 accuracy. "
        "Goal (issue 10): ≥ 93.0% int8 within 60 + 60 minutes; AutoMCU reports 91.28% under the same "
        f"SRAM and flash. {'Met' if sel['int8_test'] >= 0.93 else 'Not met'} here.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search-minutes", type=float, default=60.0)
    parser.add_argument("--deploy-minutes", type=float, default=60.0)
    parser.add_argument("--jobs", type=int, default=2, help="trainings side by side (one thread each)")
    parser.add_argument("--top-k", type=int, default=1, help="candidates trained for deployment")
    parser.add_argument(
        "--deploy-jobs", type=int, default=1, help="deployment trainings side by side (the cores shared out)"
    )
    parser.add_argument(
        "--pick",
        choices=("val", "macs", "flash"),
        default="flash",
        help="how the candidates to deploy are chosen",
    )
    parser.add_argument(
        "--objective",
        choices=("all", "error"),
        default="all",
        help="the search's objective: μNAS's four (all) or validation error within the limits (error)",
    )
    parser.add_argument("--reuse-search", default="", help="train from this search log instead of searching")
    parser.add_argument("--population", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="also write every number as JSON to this file")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="only verify the headers of the models the last run kept (var/headline/), as Verify does",
    )
    parser.add_argument("--core", default="cortex-m4f", help="with --verify: the Cortex-M core")
    parser.add_argument("--clock-mhz", type=float, default=80.0, help="with --verify: its clock")
    parser.add_argument(
        "--board-flash-kb",
        type=int,
        default=FLASH_KB,
        help="with --verify: the board's flash, which holds the kernels' code beside the model's arrays",
    )
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.verify:
        text = verify_models(args.core, args.clock_mhz, args.board_flash_kb)
        print(text)
        if args.write:
            replace_section(ROOT / "docs" / "benchmarks.md", "Fashion-MNIST headline: the headers", text)
        return
    config, _ = search_config(args.seed, args.population, args.objective)
    ctx = multiprocessing.get_context("spawn")
    if args.reuse_search:
        search = json.loads(Path(args.reuse_search).read_text())
    else:
        pool = ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_worker_init)
        try:
            search = run_search(config, args.search_minutes, pool, args.jobs) | {"objective": args.objective}
        finally:  # the trainings still in flight at the deadline are abandoned, not waited for
            for process in list(pool._processes.values()):  # no public way to stop them
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
        MODELS.mkdir(parents=True, exist_ok=True)
        (MODELS / "search.json").write_text(json.dumps(search))
    print(f"search done: {len(search['log'])} trained in {search['seconds'] / 60:.1f} min", flush=True)
    n_val = len(split_indices(_dataset().y_train, Fidelity(**config.fidelity))[1])
    chosen = pick(search["log"], args.top_k, args.pick, n_val)
    with ProcessPoolExecutor(args.deploy_jobs, mp_context=ctx, initializer=_worker_init) as pool:
        dep = run_deployment(chosen, args.deploy_minutes, pool, args.deploy_jobs)
        # Outside both phases' time: the chosen candidates' int8 accuracy at the search's fidelity.
        ptq = [pool.submit(search_int8, c["arch"], config.fidelity) for c in chosen]
        for c, f in zip(chosen, ptq, strict=True):
            c["search_int8"] = f.result()
    text = report(args, search, chosen, dep)
    print(text)
    record = {"args": vars(args), "search": search, "chosen": chosen, "deployment": dep}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1))
    if args.write:
        replace_section(ROOT / "docs" / "benchmarks.md", "Fashion-MNIST headline", text)
        archs = [c["arch"] for c in chosen]  # in the table's order
        (ROOT / "docs" / "headline-fashion-mnist.json").write_text(json.dumps(archs, indent=1) + "\n")


if __name__ == "__main__":
    main()
