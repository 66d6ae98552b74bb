"""MemNAS's two ranking models on real search data: held-out pairwise accuracy within rounds.

Usage::

    python bench/bench_memnas_ranking.py [--seeds 0 1] [--budget 42] [--top-k 6] [--no-docs]

First it runs real MemNAS searches on digits (the strategy benchmark's 2 KB / 4 KB profile and
fidelity; every child really trained) and keeps, per round, the children trained from one
backbone with their measured validation accuracy (cached under var/bench/memnas-ranking/).
Then, for every round k after the first two, a fresh model of each kind is fitted on rounds
before k and ranks round k's children: the score is the fraction of pairs of children with
different accuracies that it orders correctly (0.5 = chance), averaged over rounds and seeds.
The per-candidate GRU scores each child alone; the list ranker runs a second GRU across the
round's children, as MemNAS's structure-correlation controller does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import replace_section
from bench.bench_strategies import SETTINGS, make_config
from searches.engine.space.arch import Architecture
from searches.engine.strategies.base import EvalResult, Proposal
from searches.engine.strategies.driver import SearchEvent, run_search
from searches.engine.strategies.memnas.controller import Controller, ListController, encode, pairwise_accuracy
from searches.engine.strategies.memnas.strategy import pack, unpack
from searches.engine.strategies.registry import make_strategy
from searches.engine.training.datasets import load_dataset
from searches.engine.training.train import Fidelity, train_and_evaluate

DOCS = ROOT / "docs" / "benchmarks.md"
CACHE = ROOT / "var" / "bench" / "memnas-ranking"
TITLE = "MemNAS ranking models (held-out pairwise accuracy)"
FIT_STEPS, FIT_LR, HIDDEN = 60, 0.02, 24
MIN_HISTORY_LISTS = 2


def collect(seed: int, budget: int, top_k: int) -> list[dict[str, Any]]:
    """Every trained child of a real MemNAS digits search: packed arch, resources, accuracy, list."""
    path = CACHE / f"digits-seed{seed}-budget{budget}-top{top_k}.json"
    if path.exists():
        return json.loads(path.read_text())
    dataset = load_dataset("digits")
    setting = SETTINGS["digits"]
    config = make_config(dataset, "memnas", seed, budget, setting)
    config = dataclasses.replace(config, strategy_options={"top_k": top_k})
    fidelity = Fidelity(**config.fidelity)
    rows: list[dict[str, Any]] = []

    def evaluate(arch: Architecture, proposal: Proposal) -> EvalResult:
        r = train_and_evaluate(arch, dataset, fidelity)
        return EvalResult(r.val_accuracy, r.test_accuracy)

    def on_event(event: SearchEvent) -> None:
        if event.kind == "evaluated" and event.member is not None:
            p = event.proposal
            rows.append(
                {
                    "arch": pack(p.architecture),
                    "resources": dict(p.resources),
                    "accuracy": event.member.result.val_accuracy,
                    "list": -1 if p.parent_id is None else p.parent_id,
                }
            )

    run_search(make_strategy(config), evaluate, on_event)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return rows


def rolling_accuracy(rows: list[dict[str, Any]], kind: str) -> list[float]:
    """Within-list pairwise accuracy on each list, of a model fitted on the lists before it."""
    order: list[int] = []
    for r in rows:
        if r["list"] not in order:
            order.append(r["list"])
    sequences = [encode(unpack(r["arch"]), r["resources"]) for r in rows]
    scores = []
    for k in range(MIN_HISTORY_LISTS, len(order)):
        train = [i for i, r in enumerate(rows) if r["list"] in order[:k]]
        test = [i for i, r in enumerate(rows) if r["list"] == order[k]]
        targets = [rows[i]["accuracy"] for i in test]
        if len(set(targets)) < 2:
            continue
        x = [sequences[i] for i in train]
        y = [rows[i]["accuracy"] for i in train]
        if kind == "list":
            model: Controller | ListController = ListController(HIDDEN, seed=0)
            assert isinstance(model, ListController)
            model.fit(x, y, FIT_STEPS, FIT_LR, groups=[rows[i]["list"] for i in train])
        else:
            model = Controller(HIDDEN, seed=0)
            model.fit(x, y, FIT_STEPS, FIT_LR)
        scores.append(pairwise_accuracy(model.score([sequences[i] for i in test]), targets))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budget", type=int, default=42)
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    start = time.monotonic()
    results: dict[str, list[float]] = {"candidate": [], "list": []}
    lists = pairs = 0
    for seed in args.seeds:
        rows = collect(seed, args.budget, args.top_k)
        for kind in results:
            results[kind] += rolling_accuracy(rows, kind)
        lists += len({r["list"] for r in rows})
        pairs += len(rows)
    lines = [
        f"Command: `python bench/bench_memnas_ranking.py --seeds {' '.join(map(str, args.seeds))} "
        f"--budget {args.budget} --top-k {args.top_k}` (CPython {platform.python_version()}; "
        f"{time.monotonic() - start:.0f} s, the searches taken from the cache when there).",
        "",
        f"Real MemNAS searches on digits (2 KB SRAM / 4 KB flash, every child trained at the strategy "
        f"benchmark's fidelity), {len(args.seeds)} seeds, {pairs} trained candidates in {lists} lists "
        "(the children of one backbone). For each list after the first two, a fresh model fitted on "
        "the lists before it ranks the list's children by predicted accuracy; the score is the share "
        "of pairs it orders like the measured validation accuracy (0.5 = chance).",
        "",
        "| ranking model | held-out lists | mean pairwise accuracy | median |",
        "|---|---|---|---|",
    ]
    for kind, label in (
        ("candidate", "per-candidate GRU (default)"),
        ("list", "list ranker (encoder + ranking GRU)"),
    ):
        values = results[kind]
        mean = statistics.mean(values) if values else float("nan")
        median = statistics.median(values) if values else float("nan")
        lines.append(f"| {label} | {len(values)} | {mean:.3f} | {median:.3f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_docs:
        replace_section(DOCS, TITLE, text)


if __name__ == "__main__":
    main()
