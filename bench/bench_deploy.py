"""Training for deployment: int8 test accuracy gained over the search's fidelity, per recipe variant.

Draws ``--pool`` random architectures that fit the data set's limits (digits: 2 KB SRAM, 4 KB
flash; Fashion-MNIST: 64 KB, 64 KB, 30M MACs) and trains each at the search's fidelity (a small
random search); the best ``--candidates`` by validation accuracy are quantised (post-training,
integer reference), then trained for deployment with each recipe variant and measured with the
integer reference.  Reports the mean int8
test accuracy and time per variant, the gain over the search fidelity, and the Spearman rank
correlation between search-fidelity validation accuracy and deployment int8 test accuracy.

    python bench/bench_deploy.py --dataset digits --pool 16 --candidates 3 \\
        --variants default,no-augment,no-qat,plain,epochs/2 --write

``avgN`` is the default recipe averaging the weights of its last N float epochs; with
``--recipe-seeds 0,1`` every candidate is trained once per seed, and the table adds the paired
difference to the first variant and the last epoch's int8 test accuracy (no model selection):

    python bench/bench_deploy.py --dataset digits --pool 16 --candidates 3 \\
        --variants default,avg10,avg30 --recipe-seeds 0,1

(its table went to docs/benchmarks.md, "Training for deployment: weight averaging (digits)", by
hand: ``--write`` would replace the "Training for deployment (digits)" section).

The Fashion-MNIST headline (a 60-minute search, then the top candidates trained for
deployment) runs through the CLI instead, on an otherwise idle machine:

    python manage.py search --dataset fashion-mnist --sram-kb 64 --flash-kb 64 --max-macs 30000000 \\
        --budget 150 --seed 0 --deploy-top-k 3

``--write`` replaces the "Training for deployment (<dataset>)" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

from bench._report import replace_section
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import int8_accuracy
from searches.engine.resources.report import analyze
from searches.engine.space.arch import Architecture
from searches.engine.space.sampling import SpaceConfig, random_architecture
from searches.engine.training.augment import for_dataset
from searches.engine.training.datasets import Dataset, load_dataset
from searches.engine.training.deployment import Recipe, calibration_indices, train_for_deployment
from searches.engine.training.model import build_model
from searches.engine.training.train import split_indices, train_and_evaluate

LIMITS = {"digits": (2 * 1024, 4 * 1024, None), "fashion-mnist": (64 * 1024, 64 * 1024, 30_000_000)}


def services() -> tuple[object, object]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nasweb.settings")
    import django

    django.setup()
    from searches.services import deployment, runs

    return deployment, runs


def variants(base: Recipe, dataset: str, shape: tuple[int, int, int]) -> dict[str, Recipe]:
    aug = for_dataset(dataset, shape)
    base = replace(base, augment=aug)
    return {
        "default": base,
        "no-augment": replace(base, augment=None),
        "no-qat": replace(base, qat_epochs=0),
        "plain": replace(base, augment=None, qat_epochs=0),
        "epochs/2": replace(base, epochs=max(1, base.epochs // 2)),
        "epochs*2": replace(base, epochs=base.epochs * 2),
        "batch*2": replace(base, batch_size=base.batch_size * 2),
        "first": replace(base, select="first"),
        "latest": replace(base, select="latest"),
        "1se": replace(base, select="1se"),
    }


def recipe_variant(name: str, table: dict[str, Recipe]) -> Recipe:
    """A named variant; ``avgN`` is the default recipe averaging the weights of its last N float epochs."""
    if name in table:
        return table[name]
    if name.startswith("avg") and name[3:].isdigit():
        return replace(table["default"], average_last=int(name[3:]))
    raise SystemExit(f"unknown variant {name!r}: one of {', '.join(table)} or avgN")


def feasible(rng: random.Random, space: SpaceConfig, dataset: str) -> Architecture:
    sram, flash, macs = LIMITS[dataset]
    while True:
        arch = random_architecture(rng, space)
        r = analyze(arch)
        if r.peak_sram_bytes <= sram and r.flash_bytes <= flash and (macs is None or r.macs <= macs):
            return arch


def int8_test(
    arch: Architecture, state: dict[str, torch.Tensor], data: Dataset, recipe: Recipe, ranges=None
) -> float:
    model = build_model(arch)
    model.load_state_dict(state)
    train_idx, _ = split_indices(data.y_train, recipe.split)
    qm = quantize(arch, model.eval(), data.x_train[calibration_indices(train_idx)], ranges=ranges)
    return int8_accuracy(qm, data.x_test, data.y_test)


def last_epoch_int8(arch: Architecture, data: Dataset, recipe: Recipe, checkpoint: Path) -> float:
    """Int8 test accuracy of the training's last epoch (no model selection), from its checkpoint."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved = json.loads(payload["meta"])["ranges"]
    ranges = None if saved is None else {t: (lo, hi) for t, (lo, hi) in saved.items()}
    return int8_test(arch, payload["model"], data, recipe, ranges)


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        for r, i in enumerate(order):
            out[i] = float(r)
        return out

    ra, rb = ranks(a), ranks(b)
    return statistics.correlation(ra, rb) if len(a) > 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(LIMITS))
    parser.add_argument("--pool", type=int, default=16, help="architectures trained at search fidelity")
    parser.add_argument(
        "--candidates", type=int, default=3, help="the best of the pool trained for deployment"
    )
    parser.add_argument("--variants", default="default,no-augment,no-qat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epochs", type=int, default=None, help="float epochs (the data set's recipe's if unset)"
    )
    parser.add_argument(
        "--recipe-seeds", default="0", help="deployment-training seeds; every candidate is trained with each"
    )
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    deployment, runs = services()
    data = load_dataset(args.dataset, os.environ.get("NASWEB_FASHION_MNIST_DIR") or None)
    shape = tuple(data.input_shape)
    base = deployment.DEFAULT_RECIPES.get(args.dataset, deployment.GENERIC_RECIPE)  # type: ignore[attr-defined]
    if args.epochs is not None:
        base = replace(base, epochs=args.epochs)
    table = variants(base, args.dataset, shape)
    chosen = {name: recipe_variant(name, table) for name in args.variants.split(",")}
    seeds = [int(s) for s in args.recipe_seeds.split(",")]
    fidelity = runs.default_fidelity(args.dataset)  # type: ignore[attr-defined]
    rng = random.Random(args.seed)
    space = SpaceConfig(shape, data.classes)
    rows: list[dict[str, object]] = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        pool = []
        for _ in range(args.pool):
            arch = feasible(rng, space, args.dataset)
            t0 = time.perf_counter()
            pool.append((arch, train_and_evaluate(arch, data, fidelity), time.perf_counter() - t0))
        pool.sort(key=lambda entry: -entry[1].val_accuracy)
        for n, (arch, search, seconds) in enumerate(pool[: args.candidates]):
            search_int8 = int8_test(arch, search.state_dict, data, base)
            for seed in seeds:
                row: dict[str, object] = {
                    "candidate": n,
                    "seed": seed,
                    "search_val": search.val_accuracy,
                    "search_int8": search_int8,
                    "search_s": seconds,
                }
                for name, recipe in chosen.items():
                    recipe = replace(recipe, seed=seed)
                    t0 = time.perf_counter()
                    checkpoint = Path(tmp) / f"{n}-{seed}-{name}.pt"
                    result = train_for_deployment(arch, data, recipe, checkpoint)
                    row[name] = int8_test(arch, result.state_dict, data, recipe, result.ranges)
                    row[f"{name}_float"] = result.test_accuracy
                    row[f"{name}_s"] = time.perf_counter() - t0
                    row[f"{name}_picked_avg"] = int(
                        recipe.average_last > 0 and result.best_epoch == recipe.epochs
                    )
                    row[f"{name}_last"] = last_epoch_int8(arch, data, recipe, checkpoint)
                rows.append(row)
                print(n, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    report(args, chosen, rows, fidelity, time.time() - started)


def report(
    args: argparse.Namespace,
    chosen: dict[str, Recipe],
    rows: list[dict[str, object]],
    fidelity: object,
    secs: float,
) -> None:
    def mean(key: str) -> float:
        return statistics.fmean(float(r[key]) for r in rows)  # type: ignore[arg-type]

    lines = [
        f"Command: `python bench/bench_deploy.py --dataset {args.dataset} --pool {args.pool} "
        f"--candidates {args.candidates} "
        f"--variants {args.variants} --seed {args.seed}"
        + (f" --epochs {args.epochs}" if args.epochs is not None else "")
        + (f" --recipe-seeds {args.recipe_seeds}" if args.recipe_seeds != "0" else "")
        + " --write`",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, torch CPU, one thread, shared with other "
        f"engineers' test runs; {secs / 60:.0f} minutes in all.",
        "",
        f"The best {len({r['candidate'] for r in rows})} of {args.pool} random architectures within "
        f"{args.dataset}'s limits by "
        f"validation accuracy at the search's fidelity ({fidelity}), each then trained for deployment "
        f"with each variant and each deployment-training seed ({args.recipe_seeds}: {len(rows)} trainings "
        "per variant); int8 accuracies are the integer reference's on the test split.",
        "",
        "| variant | float / QAT epochs | batch | augmentation | weights averaged | mean int8 test "
        "| gain over search fidelity | vs first variant: mean (wins / ties / losses) "
        "| last epoch, no selection: int8 test (vs first) | mean time |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| search fidelity (PTQ) | — | — | — | — | {mean('search_int8'):.4f} | — | — | — "
        f"| {mean('search_s'):.1f} s |",
    ]
    first = next(iter(chosen))
    for name, recipe in chosen.items():
        aug = "none" if recipe.augment is None else recipe.augment.describe()
        diffs = [float(r[name]) - float(r[first]) for r in rows]  # type: ignore[arg-type]
        paired = (
            "—"
            if name == first
            else f"{statistics.fmean(diffs):+.4f} ({sum(d > 0 for d in diffs)} / "
            f"{sum(d == 0 for d in diffs)} / {sum(d < 0 for d in diffs)})"
        )
        averaged = "no"
        if recipe.average_last:
            picked = sum(int(r[f"{name}_picked_avg"]) for r in rows)  # type: ignore[call-overload]
            averaged = f"last {recipe.average_last} (selected {picked} of {len(rows)})"
        last = mean(name + "_last")
        last_cell = f"{last:.4f}" + ("" if name == first else f" ({last - mean(first + '_last'):+.4f})")
        lines.append(
            f"| {name} | {recipe.epochs} / {recipe.qat_epochs} | {recipe.batch_size} | {aug} | {averaged} "
            f"| {mean(name):.4f} | "
            f"{mean(name) - mean('search_int8'):+.4f} | {paired} | {last_cell} | {mean(name + '_s'):.1f} s |"
        )
    once = [r for r in rows if r["seed"] == rows[0]["seed"]]  # one row per candidate
    rho = spearman([float(r["search_val"]) for r in once], [float(r[first]) for r in once])  # type: ignore[arg-type]
    lines += [
        "",
        f"Spearman rank correlation, search-fidelity val accuracy vs `{first}` int8 test: "
        f"{rho:.2f} ({len(once)} candidates, seed {rows[0]['seed']}).",
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        replace_section(ROOT / "docs" / "benchmarks.md", f"Training for deployment ({args.dataset})", body)


if __name__ == "__main__":
    main()
