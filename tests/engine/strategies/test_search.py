from __future__ import annotations

import hashlib
import json
import math
import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searches.engine.resources.report import analyze
from searches.engine.space.arch import Architecture
from searches.engine.space.sampling import SpaceConfig
from searches.engine.strategies.aging import AgingEvolution
from searches.engine.strategies.base import (
    EvalFailure,
    EvalResult,
    Member,
    Proposal,
    SearchStrategy,
    arch_hash,
)
from searches.engine.strategies.config import Bounds, Limits, SearchConfig
from searches.engine.strategies.driver import SearchEvent, run_search
from searches.engine.strategies.objectives import dominates, draw_lambdas, fitness, pareto_front
from searches.engine.strategies.random_search import RandomSearch
from searches.engine.strategies.registry import from_state_json, make_strategy

pytestmark = pytest.mark.engine

SPACE = SpaceConfig(input_shape=(8, 8, 1), classes=4)
BOUNDS = Bounds(error=0.2, peak_sram_bytes=2_000, flash_bytes=4_000, macs=200_000)


def config(**overrides: object) -> SearchConfig:
    base: dict[str, object] = {
        "space": SPACE,
        "budget": 12,
        "bounds": BOUNDS,
        "population": 4,
        "sample_size": 3,
        "seed": 7,
    }
    base.update(overrides)
    return SearchConfig(**base)  # type: ignore[arg-type]


def fake_evaluate(architecture: Architecture, proposal: Proposal) -> EvalResult:
    """Cheap, deterministic: bigger networks score better, a key-derived jitter breaks ties."""
    jitter = int(hashlib.sha256(architecture.key().encode()).hexdigest()[:8], 16) / 2**32
    accuracy = 1 - 1 / (2 + math.log1p(proposal.resources["macs"]) / 4) - 0.05 * jitter
    return EvalResult(val_accuracy=accuracy, test_accuracy=accuracy - 0.01)


def step(strategy: SearchStrategy, log: list[dict[str, object]]) -> None:
    """Ask until a feasible proposal comes, evaluate and tell it; log every proposal."""
    while True:
        proposal = strategy.ask()
        assert proposal is not None
        log.append(proposal.to_json())
        if not proposal.rejected:
            break
    strategy.tell(proposal.id, fake_evaluate(proposal.architecture, proposal))


def round_trip(strategy: SearchStrategy) -> SearchStrategy:
    return from_state_json(json.loads(json.dumps(strategy.state_to_json())))


# ---- objective -----------------------------------------------------------------------------


def test_fitness_matches_hand_computed_values() -> None:
    f = (0.1, 2_000, 9_000, 60_000_000)
    bounds = Bounds(error=0.2, peak_sram_bytes=1_000, flash_bytes=3_000, macs=30_000_000)
    # ratios 0.5, 2, 3, 2 divided by the lambdas: 1, 2, 12, 4
    assert fitness(f, bounds, (0.5, 1.0, 0.25, 0.5), cap=10) == pytest.approx(-12)


def test_fitness_caps_each_ratio_before_weighting() -> None:
    f = (0.1, 50_000, 1, 1)
    bounds = Bounds(error=0.2, peak_sram_bytes=1_000, flash_bytes=3_000, macs=30_000_000)
    # SRAM ratio 50 is capped at 10, then divided by its lambda 0.5
    assert fitness(f, bounds, (1.0, 0.5, 1.0, 1.0), cap=10) == pytest.approx(-20)


def test_fitness_ignores_objectives_without_a_bound() -> None:
    f = (0.1, 2_000, 9_000, 60_000_000)
    bounds = Bounds(error=0.2, peak_sram_bytes=1_000, macs=30_000_000)
    assert fitness(f, bounds, (0.5, 1.0, 0.25, 0.5), cap=10) == pytest.approx(-4)
    with pytest.raises(ValueError, match="at least one bound"):
        fitness(f, Bounds(), (1, 1, 1, 1), cap=10)


class _FixedRng(random.Random):
    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self.values = values

    def random(self) -> float:
        return self.values.pop(0)


def test_lambdas_are_floored() -> None:
    lambdas = draw_lambdas(_FixedRng([0.01, 0.5, 0.0, 0.99]), floor=0.05)
    assert lambdas == (0.05, 0.5, 0.05, 0.99)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="bound"):
        config(bounds=Bounds())
    with pytest.raises(ValueError, match="population"):
        config(population=0)
    with pytest.raises(ValueError, match="positive"):
        Bounds(error=0)
    with pytest.raises(ValueError, match="core"):
        Limits(latency_ms=5)
    config(strategy="random", bounds=Bounds())  # random search needs no objective


def test_config_json_round_trip() -> None:
    cfg = config(limits=Limits(sram_bytes=1000, core="cortex-m4f", clock_mhz=80), fidelity={"epochs": 3})
    assert SearchConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


# ---- Pareto front --------------------------------------------------------------------------------


def brute_force_front(points: list[tuple[int, ...]]) -> list[int]:
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(*[st.integers(0, 4)] * 4), max_size=40))
def test_pareto_front_matches_brute_force(points: list[tuple[int, ...]]) -> None:
    assert pareto_front(points) == brute_force_front(points)


def test_dominates() -> None:
    assert dominates((1, 2), (1, 3))
    assert not dominates((1, 2), (1, 2))
    assert not dominates((0, 3), (1, 2))


# ---- aging evolution -------------------------------------------------------------------------


def test_population_is_constant_after_warm_up_and_the_oldest_leaves() -> None:
    strategy = AgingEvolution(config(budget=14))
    told: list[Member] = []
    log: list[dict[str, object]] = []
    while not strategy.is_done():
        step(strategy, log)
        told = [*told, *[m for m in strategy.population if m not in told]]
        assert [m.id for m in strategy.population] == [m.id for m in told[-4:]]
    assert len(told) == 14
    origins = [p["origin"] for p in log if p["reject_reason"] is None]
    assert origins[:4] == ["random"] * 4
    assert "mutation" in origins[4:]
    assert all(p["parent_id"] is not None for p in log if p["origin"] == "mutation")


def test_archive_is_the_pareto_front_of_everything_told() -> None:
    strategy = AgingEvolution(config(budget=15))
    members: list[Member] = []
    run_search(strategy, fake_evaluate, on_event=lambda e: members.extend([e.member] if e.member else []))
    front = pareto_front([m.objectives for m in members])
    assert [m.id for m in strategy.archive] == [members[i].id for i in front]


def test_no_duplicates_are_proposed() -> None:
    events: list[SearchEvent] = []
    run_search(AgingEvolution(config(budget=15)), fake_evaluate, events.append)
    keys = [e.proposal.architecture.key() for e in events if e.kind in ("proposed", "rejected")]
    assert len(keys) == len(set(keys)) >= 15


# ---- feasibility -----------------------------------------------------------------------------------


def test_children_over_the_limits_are_rejected_before_training() -> None:
    limits = Limits(sram_bytes=600, flash_bytes=1_500, latency_ms=0.5, core="cortex-m0plus", clock_mhz=48)
    strategy = AgingEvolution(config(budget=15, limits=limits))
    events: list[SearchEvent] = []
    run_search(strategy, fake_evaluate, events.append)
    trained = [e.proposal for e in events if e.kind == "proposed"]
    rejected = [e.proposal for e in events if e.kind == "rejected"]
    assert len(trained) == 15
    for proposal in trained:
        report = analyze(proposal.architecture)
        assert report.peak_sram_bytes <= 600
        assert report.flash_bytes <= 1_500
        assert proposal.resources["latency_ms"] <= 0.5
    assert rejected, "these limits should reject some children"
    for proposal in rejected:
        assert proposal.status == "rejected"
        assert "exceeds the limit" in (proposal.reject_reason or "")
        assert strategy.config.limits.violations(proposal.resources)
    assert strategy.counters["rejected"] == len(rejected)


def test_children_over_the_macs_limit_are_rejected_with_the_reason() -> None:
    strategy = AgingEvolution(config(budget=12, limits=Limits(macs=40_000)))
    events: list[SearchEvent] = []
    run_search(strategy, fake_evaluate, events.append)
    trained = [e.proposal for e in events if e.kind == "proposed"]
    rejected = [e.proposal for e in events if e.kind == "rejected"]
    assert len(trained) == 12 and all(analyze(p.architecture).macs <= 40_000 for p in trained)
    assert rejected, "this limit should reject some children"
    for proposal in rejected:
        assert f"{proposal.resources['macs']:,} MACs exceed the limit 40,000" in (
            proposal.reject_reason or ""
        )
    assert Limits.from_json(Limits(macs=5).to_json()).macs == 5
    with pytest.raises(ValueError, match="MACs limit must be at least 1"):
        Limits(macs=0)


def test_impossible_limits_stop_the_search_with_a_reason() -> None:
    strategy = AgingEvolution(config(limits=Limits(flash_bytes=1), max_random_tries=5))
    assert strategy.ask() is None
    assert strategy.is_done()
    assert "flash" in (strategy.stop_reason or "")


# ---- budget and asynchrony -------------------------------------------------------------------------


def test_asking_past_the_budget_returns_none_until_everything_is_told() -> None:
    strategy = RandomSearch(config(strategy="random", budget=3))
    proposals = [strategy.ask() for _ in range(3)]
    assert strategy.ask() is None
    assert not strategy.is_done()
    for p in proposals:
        assert p is not None
        strategy.tell(p.id, EvalFailure("worker lost"))
    assert strategy.is_done()
    assert strategy.counters["failed"] == 3
    with pytest.raises(ValueError, match="not outstanding"):
        strategy.tell(proposals[0].id, EvalFailure("again"))  # type: ignore[union-attr]


def ask_feasible(strategy: SearchStrategy) -> Proposal:
    while True:
        proposal = strategy.ask()
        assert proposal is not None
        if not proposal.rejected:
            return proposal


def test_many_outstanding_asks_told_out_of_order() -> None:
    strategy = AgingEvolution(config(budget=16))
    told_ids: set[int] = set()
    while not strategy.is_done():
        batch = [ask_feasible(strategy) for _ in range(min(3, strategy.config.budget - strategy.asked))]
        assert [p.id for p in strategy.outstanding] == [p.id for p in batch]
        for proposal in reversed(batch):
            if proposal.parent_id is not None:
                assert proposal.parent_id in told_ids  # parents come from told members only
            strategy.tell(proposal.id, fake_evaluate(proposal.architecture, proposal))
            told_ids.add(proposal.id)
        assert len(strategy.population) == min(len(told_ids), 4)
    assert strategy.told == strategy.asked == 16
    assert not strategy.outstanding


# ---- resume -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy_name", ["aging_evolution", "random"])
@pytest.mark.parametrize(("before", "after"), [(2, 2), (3, 3)])
def test_save_and_load_between_steps_changes_nothing(strategy_name: str, before: int, after: int) -> None:
    cfg = config(strategy=strategy_name, population=2, budget=10)
    straight, straight_log = make_strategy(cfg), list[dict[str, object]]()
    for _ in range(before + after):
        step(straight, straight_log)

    resumed, resumed_log = make_strategy(cfg), list[dict[str, object]]()
    for _ in range(before):
        step(resumed, resumed_log)
    resumed = round_trip(resumed)
    for _ in range(after):
        step(resumed, resumed_log)

    assert resumed_log == straight_log
    assert resumed.state_to_json() == straight.state_to_json()


def test_save_and_load_with_outstanding_proposals() -> None:
    cfg = config(population=3, budget=12)

    def run(save_midway: bool) -> tuple[list[int], dict[str, object]]:
        strategy: SearchStrategy = make_strategy(cfg)
        ids = []
        for round_ in range(4):
            batch = [ask_feasible(strategy) for _ in range(3)]
            ids += [p.id for p in batch]
            if save_midway and round_ == 1:
                strategy = round_trip(strategy)
                batch = strategy.outstanding
            for proposal in batch[::-1]:
                strategy.tell(proposal.id, fake_evaluate(proposal.architecture, proposal))
        return ids, strategy.state_to_json()

    assert run(save_midway=True) == run(save_midway=False)


def test_a_state_saved_before_canonical_keys_learns_them_on_load() -> None:
    strategy = AgingEvolution(config(population=3, budget=12))
    log: list[dict[str, object]] = []
    for _ in range(5):
        step(strategy, log)
    old = strategy.state_to_json()
    del old["key_version"]
    old["seen"] = ["0" * 32]  # hashes of the old, non-canonical keys: none match any more
    resumed = from_state_json(json.loads(json.dumps(old)))
    for member in resumed.population:
        assert arch_hash(member.architecture) in resumed.state_to_json()["seen"]
    assert resumed.state_to_json()["key_version"] == strategy.state_to_json()["key_version"]


def test_the_same_seed_gives_the_same_search() -> None:
    logs = []
    for _ in range(2):
        log: list[dict[str, object]] = []
        strategy = AgingEvolution(config(budget=8))
        while not strategy.is_done():
            step(strategy, log)
        logs.append(log)
    assert logs[0] == logs[1]


# ---- random search and the driver -----------------------------------------------------------------------


def test_random_search_baseline() -> None:
    strategy = RandomSearch(config(strategy="random", bounds=Bounds(), budget=8))
    events: list[SearchEvent] = []
    archive = run_search(strategy, fake_evaluate, events.append)
    assert strategy.is_done()
    assert [e.kind for e in events] == ["proposed", "evaluated"] * 8
    assert all(e.proposal.origin == "random" and e.proposal.parent_id is None for e in events)
    assert strategy.population == []
    assert archive
    assert archive == strategy.archive


def test_run_search_records_failures_and_stops_on_request() -> None:
    calls = []

    def flaky(architecture: Architecture, proposal: Proposal) -> EvalResult:
        calls.append(proposal.id)
        if len(calls) % 2:
            raise RuntimeError("out of memory")
        return fake_evaluate(architecture, proposal)

    strategy = AgingEvolution(config(budget=20))
    events: list[SearchEvent] = []
    run_search(strategy, flaky, events.append, should_stop=lambda: len(calls) >= 6)
    failed = [e for e in events if e.kind == "failed"]
    assert len(calls) == 6
    assert len(failed) == 3
    assert all(isinstance(e.result, EvalFailure) and "out of memory" in e.result.reason for e in failed)
    assert not strategy.is_done()
    assert strategy.told == 6


def test_ids_increase_in_ask_order() -> None:
    events: list[SearchEvent] = []
    run_search(AgingEvolution(config(budget=10)), fake_evaluate, events.append)
    ids = [e.proposal.id for e in events if e.kind in ("proposed", "rejected")]
    assert all(a < b for a, b in pairwise(ids))


# ---- sparsity gene (μNAS with structured pruning) ------------------------------------------


def test_sparsity_gene_is_drawn_mutated_and_kept_in_range() -> None:
    strategy = make_strategy(config(sparsity=(0.1, 0.6), population=3, budget=12))
    proposals: list[Proposal] = []
    for _ in range(12):
        proposal = ask_feasible(strategy)
        proposals.append(proposal)
        strategy.tell(proposal.id, fake_evaluate(proposal.architecture, proposal))
    assert all(p.sparsity is not None and 0.1 <= p.sparsity <= 0.6 for p in proposals)
    children = [p for p in proposals if p.origin == "mutation"]
    assert children and all("sparsity" in p.description and "→" in p.description for p in children)
    assert len({round(p.sparsity or 0, 6) for p in proposals}) > 3  # genes differ


def test_without_the_option_no_sparsity_is_drawn() -> None:
    strategy = make_strategy(config(population=3))
    assert all(ask_feasible(strategy).sparsity is None for _ in range(3))


def test_sparsity_config_round_trips_and_is_validated() -> None:
    cfg = config(sparsity=(0.05, 0.9))
    assert SearchConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    with pytest.raises(ValueError, match="sparsity"):
        config(sparsity=(0.5, 0.2))
    with pytest.raises(ValueError, match="sparsity"):
        config(sparsity=(0.0, 0.99))
    old = cfg.to_json()
    del old["sparsity"]  # a config stored before the option existed
    assert SearchConfig.from_json(old).sparsity is None


def test_resume_with_the_sparsity_gene_is_exact() -> None:
    cfg = config(sparsity=(0.1, 0.8), population=2, budget=10)
    straight, straight_log = make_strategy(cfg), list[dict[str, object]]()
    for _ in range(6):
        step(straight, straight_log)
    resumed, resumed_log = make_strategy(cfg), list[dict[str, object]]()
    for _ in range(3):
        step(resumed, resumed_log)
    resumed = round_trip(resumed)
    for _ in range(3):
        step(resumed, resumed_log)
    assert resumed_log == straight_log


def test_a_pruned_members_objectives_are_its_measured_resources() -> None:
    strategy = make_strategy(config(sparsity=(0.3, 0.3)))
    proposal = ask_feasible(strategy)
    pruned = {**proposal.resources, "peak_sram_bytes": 1, "flash_bytes": 2, "macs": 3}
    member = strategy.tell(proposal.id, EvalResult(0.9, 0.9, metrics={"resources": pruned}))
    assert member is not None and member.objectives == (pytest.approx(0.1), 1, 2, 3)
