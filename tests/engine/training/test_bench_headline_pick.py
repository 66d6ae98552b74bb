"""bench/bench_headline.py's choice of the candidates it trains for deployment."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench.bench_headline import build_cell, objective_bounds, pick
from searches.engine.strategies.config import Bounds
from searches.engine.strategies.objectives import draw_lambdas, fitness


def entry(name: str, val: float, macs: int, flash: int = 10_000) -> dict[str, Any]:
    return {"arch": {"name": name}, "val": val, "macs": macs, "flash_bytes": flash}


# n_val = 6000, best p = 0.89: one standard error is sqrt(0.89 * 0.11 / 6000) = 0.00404.
LOG = [
    entry("small", 0.8900, 1_000_000, 12_000),
    entry("medium", 0.8880, 9_000_000, 47_000),
    entry("large", 0.8861, 25_000_000, 30_000),  # tied: 0.8900 - 0.8861 = 0.0039 < 0.00404
    entry("outside", 0.8855, 29_000_000, 60_000),  # 0.0045 below the best: not tied
    entry("small", 0.8700, 1_000_000, 12_000),  # the same architecture evaluated again
]


def names(chosen: list[dict[str, Any]]) -> list[str]:
    return [c["arch"]["name"] for c in chosen]


def test_val_takes_the_best_distinct_architectures() -> None:
    assert names(pick(LOG, 2, "val", 6000)) == ["small", "medium"]
    assert names(pick(LOG, 5, "val", 6000)) == ["small", "medium", "large", "outside"]


def test_the_largest_among_those_tied_with_the_best() -> None:
    assert names(pick(LOG, 1, "macs", 6000)) == ["large"]
    assert names(pick(LOG, 3, "macs", 6000)) == ["large", "medium", "small"]
    assert names(pick(LOG, 1, "flash", 6000)) == ["medium"]
    assert names(pick(LOG, 3, "flash", 6000)) == ["medium", "large", "small"]


def test_fewer_tied_fill_up_by_accuracy() -> None:
    assert names(pick(LOG, 4, "flash", 6000)) == ["medium", "large", "small", "outside"]
    # With many more validation images the standard error shrinks and only the best is tied.
    assert names(pick(LOG, 2, "macs", 600_000)) == ["small", "medium"]


def test_objective_error_keeps_the_error_bound_alone() -> None:
    bounds = Bounds(error=0.10, peak_sram_bytes=64_000, flash_bytes=64_000, macs=30_000_000)
    assert objective_bounds(bounds, "all") == bounds
    assert objective_bounds(bounds, "error") == Bounds(error=0.10)
    with pytest.raises(ValueError, match="unknown objective 'size'"):
        objective_bounds(bounds, "size")


def test_an_error_only_search_prefers_the_more_accurate_larger_model() -> None:
    """Under μNAS's four objectives some λ draws prefer a smaller, less accurate model; error alone never."""
    bounds = Bounds(error=0.10, peak_sram_bytes=64_000, flash_bytes=64_000, macs=30_000_000)
    small, large = (0.12, 20_000, 10_000, 1_000_000), (0.10, 60_000, 60_000, 25_000_000)
    rng = random.Random(0)
    draws = [draw_lambdas(rng, 0.05) for _ in range(200)]

    def small_wins(b: Bounds) -> int:
        return sum(fitness(small, b, lam, 10.0) > fitness(large, b, lam, 10.0) for lam in draws)

    assert small_wins(objective_bounds(bounds, "all")) > 0
    assert small_wins(objective_bounds(bounds, "error")) == 0


def test_a_build_that_overflows_says_by_how_much() -> None:
    assert build_cell("passed", {"flash_bytes": 74_108, "ram_bytes": 40_480}) == "passed: 74,108 B / 40,480 B"
    assert build_cell("failed", {"flash_overflow_bytes": 8_572}) == "failed: over the flash by 8,572 B"
    assert build_cell("failed", {}) == "failed"
