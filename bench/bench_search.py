"""Digits search benchmark: best test accuracy under 2 KB SRAM and 4 KB flash within a time limit.

Runs the engine's aging evolution in-process (no database) with the CLI's defaults for
digits and stops when the wall-clock budget is spent.  Usage:

    python bench/bench_search.py [--minutes 10] [--seed 0] [--write]

``--write`` replaces the "Digits search" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import replace_section
from searches.engine.strategies.base import EvalResult
from searches.engine.strategies.config import Limits, SearchConfig
from searches.engine.strategies.driver import SearchEvent, run_search
from searches.engine.strategies.registry import make_strategy
from searches.engine.training.datasets import load_dataset
from searches.engine.training.train import Fidelity, train_and_evaluate

SRAM_KB, FLASH_KB = 2, 4


def make_config(seed: int, budget: int) -> SearchConfig:
    """The CLI's digits configuration (searches/services/runs.py), with no database."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nasweb.settings")
    import django

    django.setup()
    from searches.services.runs import make_config as service_config

    dataset = load_dataset("digits")
    limits = Limits(sram_bytes=SRAM_KB * 1024, flash_bytes=FLASH_KB * 1024)
    return service_config(dataset, limits, budget=budget, seed=seed, population=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    config = make_config(args.seed, budget=10_000)
    dataset = load_dataset("digits")
    fidelity = Fidelity(**config.fidelity)
    strategy = make_strategy(config)
    deadline = time.monotonic() + args.minutes * 60
    log: list[dict[str, float]] = []
    start = time.monotonic()

    def evaluate(arch, proposal):  # type: ignore[no-untyped-def]
        r = train_and_evaluate(arch, dataset, fidelity)
        return EvalResult(r.val_accuracy, r.test_accuracy, metrics={"seconds": r.total_seconds})

    def on_event(event: SearchEvent) -> None:
        if event.kind == "evaluated" and event.result is not None:
            log.append(
                {
                    "t": time.monotonic() - start,
                    "val": event.result.val_accuracy,
                    "test": event.result.test_accuracy or 0.0,
                    **event.proposal.resources,
                }
            )

    run_search(strategy, evaluate, on_event, should_stop=lambda: time.monotonic() > deadline)
    best = max(log, key=lambda r: r["val"])  # selected on validation, reported on test
    by_minute = {m: max((r["val"] for r in log if r["t"] <= m * 60), default=0.0) for m in (1, 2, 5, 10)}
    rejected = strategy.counters.get("rejected", 0)
    lines = [
        f"Command: `python bench/bench_search.py --minutes {args.minutes:g} --seed {args.seed} --write`",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch CPU.",
        "",
        f"Aging evolution on digits (8x8x1, 1,437 train / 360 test), limits {SRAM_KB} KB SRAM and "
        f"{FLASH_KB} KB flash (hard filter), population {config.population}, sample {config.sample_size}, "
        f"fidelity {json.dumps(config.fidelity)}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| candidates trained in {args.minutes:g} min | {len(log)} |",
        f"| children rejected before training (over the limits) | {rejected} |",
        f"| best candidate by validation accuracy: val / **test** accuracy | {best['val']:.3f} / "
        f"**{best['test']:.3f}** |",
        f"| its peak SRAM / flash / MACs | {best['peak_sram_bytes']:,} B / {best['flash_bytes']:,} B / "
        f"{best['macs']:,} |",
        "| best validation accuracy after 1 / 2 / 5 / 10 min | "
        + " / ".join(f"{by_minute[m]:.3f}" for m in (1, 2, 5, 10))
        + " |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(ROOT / "docs" / "benchmarks.md", "Digits search", text)


if __name__ == "__main__":
    main()
