"""bench/bench_strategies.py's own logic: strategy specs with MemNAS options and the λ sweep's pick."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from bench.bench_strategies import (
    SETTINGS,
    make_config,
    parse_strategy,
    selected_model,
    strategy_label,
    sweep_rows,
)
from searches.engine.training.datasets import load_digits


def test_a_strategy_spec_carries_memnas_options() -> None:
    assert parse_strategy("memnas") == ("memnas", {})
    assert parse_strategy("aging_evolution") == ("aging_evolution", {})
    assert parse_strategy("memnas:top_k=2,lambda=0.25,seed_backbone=single_blocks,grow=false") == (
        "memnas",
        {"top_k": 2, "lambda": 0.25, "seed_backbone": "single_blocks", "grow": False},
    )
    assert strategy_label("memnas:top_k=8") == "MemNAS (top_k=8)"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("grid", "unknown strategy 'grid'"),
        ("random:top_k=2", "only MemNAS takes options"),
        ("memnas:top_k", "name=value"),
        ("memnas:topk=2", "unknown MemNAS option"),
        ("memnas:lambda=2", "lambda"),
        ("memnas:ranker=tree", "ranker must be one of"),
    ],
)
def test_a_wrong_strategy_spec_is_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_strategy(spec)


def test_the_options_reach_the_search_config() -> None:
    config = make_config(load_digits(), "memnas:top_k=2,lambda=0", 0, 30, SETTINGS["digits"])
    assert (config.strategy, config.strategy_options) == ("memnas", {"top_k": 2, "lambda": 0})


def _row(id: int, accuracy: float, sram: int, flash: int) -> dict[str, Any]:
    return {"id": id, "objectives": [1 - accuracy, sram, flash, 1000]}


# The first backbone (id 1, a round 0 winner) is not the first evaluation; 3 is small and poor,
# 4 large and accurate.
EVALUATIONS = [
    _row(0, 0.50, 1000, 1000),
    _row(1, 0.60, 800, 800),
    {"id": 2, "objectives": None},
    _row(3, 0.55, 200, 300),
    _row(4, 0.90, 4000, 5000),
]


def _run(spec: str, seed: int = 0) -> dict[str, Any]:
    trajectory = [{"round": 0, "backbone": 1, "why": "round 0"}, {"round": 1, "backbone": 4}]
    return {"dataset": "digits", "strategy": spec, "seed": seed, "evaluations": EVALUATIONS,
            "trajectory": trajectory, "seconds": 60.0, "budget": 5}  # fmt: skip


def test_the_sweep_picks_by_y_against_the_first_backbone() -> None:
    assert selected_model(_run("memnas:lambda=0"))["id"] == 3  # type: ignore[index]
    assert selected_model(_run("memnas:lambda=1"))["id"] == 4  # type: ignore[index]
    # λ 0.5: 4 gains (0.9-0.6)/0.6 = 0.5 in accuracy but loses far more in memory; 3 loses
    # 8% in accuracy and saves 70-75% of the memory.
    assert selected_model(_run("memnas:lambda=0.5"))["id"] == 3  # type: ignore[index]
    # With the budget scale (memory changes divided by 10 kB limits) the same growth costs
    # 0.175 of Y against a 0.25 accuracy gain, so 4 is picked.
    assert selected_model(_run("memnas:lambda=0.5"), (10_000.0, 10_000.0))["id"] == 4  # type: ignore[index]
    assert selected_model({**_run("memnas"), "evaluations": [{"id": 0, "objectives": None}]}) is None


def test_sweep_rows_average_the_picks_over_seeds() -> None:
    args = argparse.Namespace(
        datasets=["digits"], strategies=["memnas:lambda=0", "memnas:lambda=1"], budget=5,
        epochs=None, train_subset=None,
    )  # fmt: skip
    results = [_run(spec, seed) for spec in args.strategies for seed in (0, 1)]
    rows = sweep_rows(results, args)
    assert [(r["lambda"], r["sram"], r["flash"]) for r in rows] == [(0.0, 200, 300), (1.0, 4000, 5000)]
    assert rows[1]["error"] == pytest.approx(0.1) and rows[0]["best_acc"] == pytest.approx(0.9)


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_one(tmp_path) -> None:
    """A real benchmark run is SIGKILLed mid-search; run again, it continues from its last evaluation."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests._processes import REPO, wait_for

    def command(out: str) -> list[str]:
        # 4 epochs so that the run is still going when it is killed (one candidate: ~0.1 s each epoch)
        return [
            sys.executable, "bench/bench_strategies.py", "--budget", "6", "--epochs", "4",
            "--one", "digits", "random", "0", out,
        ]  # fmt: skip

    whole = tmp_path / "whole.json"
    subprocess.run(command(str(whole)), cwd=REPO, check=True, capture_output=True, timeout=300)
    cut = tmp_path / "cut.json"
    partial = tmp_path / "cut.partial.json"

    def evaluations_saved() -> int:
        try:
            return len(json.loads(partial.read_text())["evaluations"])
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    proc = subprocess.Popen(command(str(cut)), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: evaluations_saved() >= 2 or proc.poll() is not None, 240, "two evaluations saved")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    saved = evaluations_saved()
    assert 2 <= saved < 6 and not cut.exists(), "the run must be killed mid-search"
    time.sleep(0.1)
    resumed = subprocess.run(
        command(str(cut)), cwd=REPO, check=True, capture_output=True, text=True, timeout=300
    )

    assert f"resuming cut.partial.json: {saved} evaluations" in resumed.stdout
    assert not partial.exists()
    a, b = json.loads(whole.read_text()), json.loads(cut.read_text())
    assert [e["id"] for e in b["evaluations"]] == [e["id"] for e in a["evaluations"]]
    assert [e["objectives"] for e in b["evaluations"]] == [e["objectives"] for e in a["evaluations"]]
    # the time before the kill is carried over: the clock never goes back
    times = [e["t"] for e in b["evaluations"]]
    assert times == sorted(times)
