"""Digits under 2 KB SRAM / 4 KB flash: the best deployable int8 model, and search-vs-deployment ranks.

Issue 10's two digits benchmarks, run on the engine in-process (no database, no web server):

(a) an aging-evolution search on digits under 2 KB SRAM and 4 KB flash (the CLI's configuration,
    as ``bench_search.py``) for ``--minutes``; the top ``--top`` candidates of its Pareto front
    (validation accuracy vs peak SRAM) by validation accuracy are trained for deployment with
    the digits recipe (``searches/services/deployment.py``).  Reported per candidate: the
    search-fidelity float and int8 (post-training quantised) test accuracy, the
    deployment-trained float and int8 test accuracy, epochs and time of each phase; then the
    Pareto front of the deployable models (int8 test accuracy vs peak SRAM).
(b) ``--rank`` distinct candidates of the same search spread evenly over its validation-accuracy
    ranks (not only the top) are trained for deployment with the same recipe (``--rank-epochs``
    float epochs when given, to fit a time budget); Spearman's rho and Kendall's tau between the
    search-fidelity validation accuracy and the deployment-trained int8 test accuracy.

Every int8 accuracy is the integer reference's (``searches.engine.deploy.reference``) on the test
split, which selects nothing.  Usage:

    python bench/bench_deployable.py --minutes 3 --top 3 --rank 20 --rank-epochs 20 --seed 0 --write

``--write`` replaces the "Deployable digits models" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
from scipy import stats

from bench._report import replace_section
from bench.bench_deploy import int8_test, services
from bench.bench_search import FLASH_KB, SRAM_KB, make_config
from searches.engine.space.arch import Architecture
from searches.engine.strategies.base import EvalResult
from searches.engine.strategies.driver import SearchEvent, run_search
from searches.engine.strategies.registry import make_strategy
from searches.engine.training.datasets import Dataset, load_dataset
from searches.engine.training.deployment import Recipe, train_for_deployment
from searches.engine.training.train import Fidelity, TrainResult, train_and_evaluate

SECTION = "Deployable digits models"


@dataclass
class Found:
    """One candidate the search trained."""

    arch: Architecture
    result: TrainResult
    resources: dict[str, int]


def search(minutes: float, seed: int, data: Dataset) -> tuple[list[Found], Fidelity]:
    """The CLI's digits search for ``minutes``; every distinct trained candidate."""
    config = make_config(seed, budget=10_000)
    fidelity = Fidelity(**config.fidelity)
    strategy = make_strategy(config)
    trained: dict[str, TrainResult] = {}
    found: dict[str, Found] = {}

    def evaluate(arch, proposal):  # type: ignore[no-untyped-def]
        r = train_and_evaluate(arch, data, fidelity)
        trained[proposal.id] = r
        return EvalResult(r.val_accuracy, r.test_accuracy, metrics={"seconds": r.total_seconds})

    def on_event(event: SearchEvent) -> None:
        if event.kind == "evaluated" and event.proposal.id in trained:
            arch = event.proposal.architecture
            found.setdefault(
                arch.key(), Found(arch, trained[event.proposal.id], dict(event.proposal.resources))
            )

    deadline = time.monotonic() + minutes * 60
    run_search(strategy, evaluate, on_event, should_stop=lambda: time.monotonic() > deadline)
    return list(found.values()), fidelity


def pareto(points: list[tuple[float, int]]) -> list[int]:
    """Indices of the points no other beats on accuracy (higher) and SRAM (lower) at once."""
    return [
        i
        for i, (acc, sram) in enumerate(points)
        if not any(a >= acc and s <= sram and (a > acc or s < sram) for a, s in points)
    ]


def spread(found: list[Found], n: int) -> list[Found]:
    """``n`` candidates at evenly spaced validation-accuracy ranks, the best and the worst included."""
    ranked = sorted(found, key=lambda f: -f.result.val_accuracy)
    if len(ranked) <= n:
        return ranked
    return [ranked[round(i * (len(ranked) - 1) / (n - 1))] for i in range(n)]


def deploy(f: Found, data: Dataset, recipe: Recipe, tmp: str, name: str) -> dict[str, Any]:
    """Search-fidelity and deployment-trained numbers of one candidate."""
    t0 = time.perf_counter()
    result = train_for_deployment(f.arch, data, recipe, Path(tmp) / f"{name}.pt")
    seconds = time.perf_counter() - t0
    row = {
        "arch": f.arch.key(),
        "sram": f.resources["peak_sram_bytes"],
        "flash": f.resources["flash_bytes"],
        "macs": f.resources["macs"],
        "search_val": f.result.val_accuracy,
        "search_float": f.result.test_accuracy,
        "search_int8": int8_test(f.arch, f.result.state_dict, data, recipe),
        "search_epochs": f.result.epochs,
        "search_s": f.result.total_seconds,
        "deploy_val_int8": result.int8_val_accuracy,
        "deploy_float": result.test_accuracy,
        "deploy_int8": int8_test(f.arch, result.state_dict, data, recipe, result.ranges),
        "deploy_epochs": f"{recipe.epochs} + {recipe.qat_epochs} QAT",
        "best_epoch": result.best_epoch,
        "deploy_s": seconds,
    }
    print(
        name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True
    )
    return row


def correlations(xs: list[float], ys: list[float]) -> tuple[str, str]:
    """Spearman's rho and Kendall's tau (tie-corrected, tau-b) with their p-values, as table cells."""
    rho = stats.spearmanr(xs, ys)
    tau = stats.kendalltau(xs, ys)
    return f"{rho.statistic:.2f} ({rho.pvalue:.2g})", f"{tau.statistic:.2f} ({tau.pvalue:.2g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="search time")
    parser.add_argument("--top", type=int, default=3, help="Pareto candidates trained for deployment (a)")
    parser.add_argument("--rank", type=int, default=20, help="candidates for the rank correlation (b)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="float epochs for (a); the recipe's if unset"
    )
    parser.add_argument(
        "--rank-epochs", type=int, default=None, help="float epochs for (b); the recipe's if unset"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args()
    if args.rank < 3:
        parser.error("--rank must be >= 3 for a rank correlation")
    torch.set_num_threads(1)
    deployment, _ = services()
    recipe: Recipe = deployment.DEFAULT_RECIPES["digits"]  # type: ignore[attr-defined]
    if args.epochs is not None:
        recipe = replace(recipe, epochs=args.epochs)
    rank_recipe = recipe if args.rank_epochs is None else replace(recipe, epochs=args.rank_epochs)
    data = load_dataset("digits")
    started = time.time()
    t0 = time.perf_counter()
    found, fidelity = search(args.minutes, args.seed, data)
    search_s = time.perf_counter() - t0
    print(f"search: {len(found)} distinct candidates in {search_s:.0f} s", flush=True)

    front = [
        found[i] for i in pareto([(f.result.val_accuracy, f.resources["peak_sram_bytes"]) for f in found])
    ]
    top = sorted(front, key=lambda f: -f.result.val_accuracy)[: args.top]
    chosen = spread(found, args.rank)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        best = [deploy(f, data, recipe, tmp, f"top{i}") for i, f in enumerate(top)]
        top_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = {r["arch"]: r for r in best} if rank_recipe == recipe else {}
        ranked = [
            done.get(f.arch.key()) or deploy(f, data, rank_recipe, tmp, f"rank{i}")
            for i, f in enumerate(chosen)
        ]
        rank_s = time.perf_counter() - t0
    if args.json is not None:
        args.json.write_text(json.dumps({"top": best, "rank": ranked}, indent=1))
    report(args, fidelity, recipe, rank_recipe, len(found), (search_s, top_s, rank_s), best, ranked, started)


def report(
    args: argparse.Namespace,
    fidelity: Fidelity,
    recipe: Recipe,
    rank_recipe: Recipe,
    n_found: int,
    phase_s: tuple[float, float, float],
    best: list[dict[str, Any]],
    ranked: list[dict[str, Any]],
    started: float,
) -> None:
    search_s, top_s, rank_s = phase_s
    cmd = f"python bench/bench_deployable.py --minutes {args.minutes:g} --top {args.top} --rank {args.rank}"
    if args.epochs is not None:
        cmd += f" --epochs {args.epochs}"
    if args.rank_epochs is not None:
        cmd += f" --rank-epochs {args.rank_epochs}"
    lines = [
        f"Command: `nice -n 19 {cmd} --seed {args.seed} --write`",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, torch CPU, one thread, shared with "
        f"other engineers' jobs (load average ~10); {(time.time() - started) / 60:.0f} minutes in all.",
        "",
        f"Search: aging evolution on digits, {SRAM_KB} KB SRAM / {FLASH_KB} KB flash, {args.minutes:g} min "
        f"({search_s:.0f} s), {n_found} distinct candidates at the search's fidelity "
        f"({fidelity.epochs} epochs, "
        f"batch {fidelity.batch_size}, the whole training split less validation). Deployment recipe: "
        f"{recipe.epochs} float + {recipe.qat_epochs} QAT epochs, batch {recipe.batch_size}, lr "
        f"{recipe.lr:g} / {recipe.qat_lr:g}, no augmentation, weight averaging "
        f"{'off' if not recipe.average_last else f'over the last {recipe.average_last} float epochs'}.",
        "",
        f"**(a) The top {len(best)} Pareto candidates (val accuracy vs peak SRAM) trained for deployment** "
        f"({top_s / 60:.1f} min). Test accuracies; int8 = the integer reference.",
        "",
        "| SRAM / flash B | MACs | search val | search float / int8 | deployed float / **int8** "
        "| best epoch | search s | deploy s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in best:
        lines.append(
            f"| {r['sram']:,} / {r['flash']:,} | {r['macs']:,} | {r['search_val']:.3f} "
            f"| {r['search_float']:.3f} / {r['search_int8']:.3f} "
            f"| {r['deploy_float']:.3f} / **{r['deploy_int8']:.3f}** "
            f"| {r['best_epoch']} | {r['search_s']:.1f} | {r['deploy_s']:.0f} |"
        )
    pool = best + [r for r in ranked if r["arch"] not in {b["arch"] for b in best}]
    front = sorted(
        (pool[i] for i in pareto([(r["deploy_int8"], r["sram"]) for r in pool])), key=lambda r: r["sram"]
    )
    winner = max(best, key=lambda r: r["deploy_val_int8"])
    lines += [
        "",
        "Best deployable model (chosen by int8 validation accuracy): "
        f"**{winner['deploy_int8'] * 100:.1f} % int8 "
        f"test** in {winner['sram']:,} B SRAM / {winner['flash']:,} B flash (its search-fidelity int8: "
        f"{winner['search_int8'] * 100:.1f} %).",
        "",
        f"Pareto front of the deployable models, int8 test accuracy vs peak SRAM, over all "
        f"{len(pool)} deployment-trained candidates of (a) and (b) "
        f"((b)'s with {rank_recipe.epochs} float epochs):",
        "",
        "| peak SRAM B | flash B | int8 test | from |",
        "|---|---|---|---|",
    ]
    for r in front:
        lines.append(
            f"| {r['sram']:,} | {r['flash']:,} | {r['deploy_int8']:.3f} | {'(a)' if r in best else '(b)'} |"
        )
    lines += [
        "",
        f"**(b) Rank correlation over {len(ranked)} candidates** spread evenly over the search's "
        f"validation-accuracy ranks ({ranked[-1]['search_val']:.3f} to {ranked[0]['search_val']:.3f}), "
        f"each trained for deployment with {rank_recipe.epochs} float + {rank_recipe.qat_epochs} QAT epochs "
        f"({rank_s / 60:.1f} min):",
        "",
        "| search fidelity | deployment-trained | Spearman rho (p) | Kendall tau (p) |",
        "|---|---|---|---|",
    ]
    pairs = [
        ("val accuracy", "int8 test", "search_val", "deploy_int8"),
        ("float test", "float test", "search_float", "deploy_float"),
        ("int8 test (PTQ)", "int8 test", "search_int8", "deploy_int8"),
    ]
    half = sorted(ranked, key=lambda r: -r["search_val"])[: len(ranked) // 2]
    for subset, label in ((ranked, ""), (half, f" (top {len(half)} by search val only)")):
        for left, right, a, b in pairs[: 3 if subset is ranked else 1]:
            rho, tau = correlations([r[a] for r in subset], [r[b] for r in subset])
            lines.append(f"| {left}{label} | {right} | {rho} | {tau} |")
    body = "\n".join(lines)
    print(body)
    if args.write:
        replace_section(ROOT / "docs" / "benchmarks.md", SECTION, body)


if __name__ == "__main__":
    main()
