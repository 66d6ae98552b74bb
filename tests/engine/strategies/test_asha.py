"""ASHA rungs: promotion decisions, how members are updated, the int8 error objective, exact resume."""

from __future__ import annotations

import json
import random

import pytest

from searches.engine.space.arch import Architecture
from searches.engine.strategies.asha import Rungs, promotion_order, rung_epochs
from searches.engine.strategies.base import EvalFailure, EvalResult, Proposal, SearchStrategy
from searches.engine.strategies.config import SearchConfig
from searches.engine.strategies.driver import run_search
from searches.engine.strategies.objectives import pareto_front
from searches.engine.strategies.registry import from_state_json, make_strategy
from tests.engine.strategies.test_search import config, fake_evaluate

pytestmark = pytest.mark.engine


def asha(**overrides: object) -> SearchConfig:
    return config(**{"fidelity_schedule": "asha", "asha_eta": 3, "asha_max_rung": 2, **overrides})


def rung_evaluate(architecture: Architecture, proposal: Proposal) -> EvalResult:
    """Higher rungs score better; the int8 model a little worse; weights named per rung."""
    base = fake_evaluate(architecture, proposal).val_accuracy
    accuracy = base + 0.02 * proposal.rung
    return EvalResult(
        accuracy,
        accuracy - 0.01,
        metrics={
            "weights": f"c{proposal.id}-r{proposal.rung}.pt",
            "int8_val_accuracy": accuracy - 0.003 * (proposal.id % 5),
        },
    )


def results(*errors: float) -> list[tuple[int, tuple[float, ...]]]:
    """One rung's results: candidate i has error errors[i] and the same resources as every other."""
    return [(i, (e, 100, 100, 100)) for i, e in enumerate(errors)]


# ---- the rungs alone ---------------------------------------------------------------------------


def test_rung_epochs_grow_by_eta() -> None:
    assert [rung_epochs(10, 3, k) for k in range(3)] == [10, 30, 90]


def test_nothing_is_promoted_before_a_rung_holds_eta_results() -> None:
    rungs = Rungs(eta=3, max_rung=2)
    rungs.record(0, 1, (0.2, 1, 1, 1))
    rungs.record(0, 2, (0.1, 1, 1, 1))
    assert rungs.next_promotion() is None
    rungs.record(0, 3, (0.3, 1, 1, 1))
    assert rungs.next_promotion() == (2, 0)


def test_the_top_one_over_eta_are_promoted_once_each() -> None:
    rungs = Rungs(eta=3, max_rung=2)
    for i, error in enumerate([0.5, 0.1, 0.4, 0.2, 0.3, 0.6]):
        rungs.record(0, i, (error, 1, 1, 1))
    assert rungs.next_promotion() == (1, 0)
    rungs.mark_promoted(1, 0)
    assert rungs.next_promotion() == (3, 0)
    rungs.mark_promoted(3, 0)
    # 6 results, eta 3: the quota of two is used up, whatever comes of the promotions.
    assert rungs.next_promotion() is None


def test_a_candidate_pushed_out_of_the_top_is_not_promoted() -> None:
    rungs = Rungs(eta=3, max_rung=2)
    for i, error in enumerate([0.3, 0.4, 0.5]):
        rungs.record(0, i, (error, 1, 1, 1))
    rungs.mark_promoted(0, 0)
    for i, error in enumerate([0.1, 0.2, 0.6], start=3):
        rungs.record(0, i, (error, 1, 1, 1))
    # Top 2 of 6 are now 3 and 4; 0 was promoted earlier (ASHA never takes a promotion back).
    assert rungs.next_promotion() == (3, 0)


def test_the_highest_rung_with_a_due_promotion_goes_first() -> None:
    rungs = Rungs(eta=2, max_rung=2)
    for i, error in enumerate([0.5, 0.4, 0.3, 0.2]):
        rungs.record(0, i, (error, 1, 1, 1))
    rungs.mark_promoted(3, 0)
    rungs.mark_promoted(2, 0)
    rungs.record(1, 3, (0.15, 1, 1, 1))
    rungs.record(1, 2, (0.25, 1, 1, 1))
    assert rungs.next_promotion() == (3, 1)


def test_the_top_rung_is_never_promoted_from() -> None:
    rungs = Rungs(eta=2, max_rung=1)
    for i in range(4):
        rungs.record(0, i, (0.1 * i, 1, 1, 1))
        rungs.mark_promoted(i, 0)
        rungs.record(1, i, (0.1 * i, 1, 1, 1))
    assert rungs.next_promotion() is None


def test_ranking_is_pareto_rank_then_error() -> None:
    # 0 is dominated by 2 (worse error, same size); 1 is small and Pareto-optimal despite its error.
    points = [(0, (0.30, 500, 500, 500)), (1, (0.40, 100, 100, 100)), (2, (0.20, 500, 500, 500))]
    assert promotion_order(points) == [2, 1, 0]
    # Equal points keep completion order.
    assert promotion_order(results(0.2, 0.2, 0.1)) == [2, 0, 1]


def test_rungs_json_round_trip() -> None:
    rungs = Rungs(eta=3, max_rung=2)
    for i in range(4):
        rungs.record(0, i, (0.1 * i, 1, 2, 3))
    rungs.mark_promoted(0, 0)
    again = Rungs.from_json(json.loads(json.dumps(rungs.to_json())))
    assert again == rungs


# ---- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fidelity_schedule": "hyperband"}, "unknown fidelity schedule 'hyperband'; known: off, asha"),
        ({"fidelity_schedule": "asha", "asha_eta": 1}, "eta must be an integer from 2 to 10, got 1"),
        ({"fidelity_schedule": "asha", "asha_max_rung": 0}, "max rung must be an integer from 1 to 4, got 0"),
        ({"fidelity_schedule": "asha", "asha_max_rung": 5}, "max rung must be an integer from 1 to 4, got 5"),
        ({"error_objective": "int4"}, "unknown error objective 'int4'; known: float, int8"),
        (
            {"fidelity_schedule": "asha", "asha_eta": 10, "asha_max_rung": 3, "fidelity": {"epochs": 10}},
            "top rung would train 10 x 10\\^3 = 10,000 epochs per candidate; at most 2,000",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_reason(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_settings_round_trip_and_old_configs_load_with_defaults() -> None:
    cfg = asha(asha_eta=4, asha_max_rung=3, error_objective="int8")
    assert SearchConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    old = {k: v for k, v in config().to_json().items() if not k.startswith(("asha", "fidelity_s", "error"))}
    loaded = SearchConfig.from_json(old)
    assert (loaded.fidelity_schedule, loaded.error_objective) == ("off", "float")


# ---- the strategy with rungs ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["aging_evolution", "random", "memnas"])
def test_a_finished_search_has_promoted_exactly_the_top_of_every_rung(strategy: str) -> None:
    search = make_strategy(asha(strategy=strategy, budget=14))
    promotions: list[Proposal] = []

    def evaluate(architecture: Architecture, proposal: Proposal) -> EvalResult:
        if proposal.rung:
            promotions.append(proposal)
        return rung_evaluate(architecture, proposal)

    run_search(search, evaluate)
    rungs = search.rungs
    assert rungs is not None and search.is_done()
    assert rungs.counts()[0] == 14
    for rung in range(2):
        # The final top 1/eta are all promoted; earlier promotions stand even when later results
        # pushed them out of the top (asynchronous: ASHA never waits, never takes one back).
        top = promotion_order(rungs.results[rung])[: len(rungs.results[rung]) // 3]
        assert set(top) <= rungs.promoted[rung]
        assert {i for i, _ in rungs.results[rung + 1]} == rungs.promoted[rung]
    for proposal in promotions:
        # Continued from the rung below's weights; the budget counts new candidates only.
        assert proposal.resume_weights == f"c{proposal.id}-r{proposal.rung - 1}.pt"
        assert proposal.description == f"promoted to rung {proposal.rung}"
    assert search.asked == 14 and search.counters["promotions"] == len(promotions) == sum(rungs.counts()[1:])


def test_members_and_the_front_use_the_highest_rung_result() -> None:
    search = make_strategy(asha(budget=12))
    run_search(search, rung_evaluate)
    members = search._members
    top = {m.id for m in members.values() if m.rung == 2}
    assert len(top) == 1
    for member in members.values():
        assert member.result.metrics["weights"] == f"c{member.id}-r{member.rung}.pt"
    ordered = sorted(members.values(), key=lambda m: m.born)
    expected = [ordered[i].id for i in pareto_front([m.objectives for m in ordered])]
    assert [m.id for m in search.archive] == expected
    for member in search.population:
        assert member is members[member.id]


def test_an_updated_member_keeps_its_age_and_place_and_an_aged_out_one_stays_out() -> None:
    search = make_strategy(asha(budget=30, population=4, sample_size=2))
    first_born: dict[int, int] = {}
    while not search.is_done():
        proposal = search.ask()
        assert proposal is not None
        if proposal.rejected:
            continue
        population = [m.id for m in search.population]
        member = search.tell(proposal.id, rung_evaluate(proposal.architecture, proposal))
        assert member is not None
        first_born.setdefault(member.id, member.born)
        assert member.born == first_born[member.id]
        if proposal.rung:
            # In place: same members in the same order; absent members are not brought back.
            assert [m.id for m in search.population] == population
    assert search.counters["promotions"] >= 3


def test_a_failed_promotion_leaves_the_member_as_it_was() -> None:
    search = make_strategy(asha(budget=3))
    for _ in range(3):
        proposal = search.ask()
        assert proposal is not None and not proposal.rejected and proposal.rung == 0
        search.tell(proposal.id, rung_evaluate(proposal.architecture, proposal))
    promotion = search.ask()
    assert promotion is not None and promotion.rung == 1
    before = search._members[promotion.id]
    assert search.tell(promotion.id, EvalFailure("out of memory")) is None
    assert search._members[promotion.id] is before
    assert search.counters["promotions_failed"] == 1
    assert search.ask() is None and search.is_done()


def test_the_int8_objective_ranks_by_int8_error() -> None:
    float_search = make_strategy(asha(budget=9))
    int8_search = make_strategy(asha(budget=9, error_objective="int8"))
    run_search(float_search, rung_evaluate)
    run_search(int8_search, rung_evaluate)
    member = next(iter(int8_search._members.values()))
    assert int8_search.objectives(member)[0] == pytest.approx(1 - member.result.metrics["int8_val_accuracy"])
    for search, key in ((float_search, "float"), (int8_search, "int8")):
        rung0 = search.rungs.results[0]  # type: ignore[union-attr]
        for candidate_id, objectives in rung0:
            m = search._members[candidate_id]
            if m.rung == 0:
                assert objectives == m.objectives_for(key)  # type: ignore[arg-type]


def test_memnas_promotions_decide_how_long_never_what_is_trained() -> None:
    """With ASHA, MemNAS proposes exactly the children and backbones it proposes without it.

    Its decisions (Y, backbone moves, the controller's labels) use rung-0 results, so a child is
    compared with a backbone trained alike, while the front and the rows use the highest rung.
    """

    def rung0(cfg: SearchConfig) -> tuple[list[object], list[object], SearchStrategy]:
        search = make_strategy(cfg)
        proposals: list[object] = []

        def evaluate(architecture: Architecture, proposal: Proposal) -> EvalResult:
            if proposal.rung == 0:
                proposals.append((proposal.id, architecture.key(), proposal.parent_id))
            return rung_evaluate(architecture, proposal)

        run_search(search, evaluate)
        return proposals, search.trajectory, search  # type: ignore[attr-defined]

    plain, plain_moves, _ = rung0(config(strategy="memnas", budget=24))
    with_rungs, moves, search = rung0(asha(strategy="memnas", budget=24))
    assert with_rungs == plain and moves == plain_moves
    assert search.counters["promotions"] >= 3
    promoted = [m for m in search._members.values() if m.rung > 0]
    assert promoted and all(m.result.metrics["weights"].endswith(f"-r{m.rung}.pt") for m in promoted)
    # The front is built from the highest rung; the backbone keeps its rung-0 result.
    assert any(m.rung > 0 for m in search.archive)
    assert search.backbone is not None and search.backbone.rung == 0  # type: ignore[attr-defined]


def test_memnas_trains_promotions_while_a_round_is_out() -> None:
    """A round waits for its own proposals only: a due promotion is handed out beside it."""
    search = make_strategy(asha(strategy="memnas", budget=30))
    pending: list[Proposal] = []
    overlapped = False
    while not search.is_done():
        proposal = search.ask()
        if proposal is None:
            done = pending.pop(0)
            search.tell(done.id, rung_evaluate(done.architecture, done))
            continue
        if proposal.rejected:
            continue
        overlapped = overlapped or (proposal.rung == 0 and any(p.rung > 0 for p in pending))
        pending.append(proposal)
    assert overlapped


def test_a_candidate_that_could_not_be_quantised_counts_as_error_one_under_int8() -> None:
    search = make_strategy(config(budget=1, error_objective="int8"))
    proposal = search.ask()
    assert proposal is not None
    member = search.tell(proposal.id, EvalResult(0.9, 0.9))
    assert member is not None and search.objectives(member)[0] == 1.0


# ---- exact resume ---------------------------------------------------------------------------------


def drive(strategy: SearchStrategy, parallel: int, seed: int, resume_every_step: bool) -> list[object]:
    """An asynchronous run: ``parallel`` outstanding, results told in a seeded random order.

    With ``resume_every_step`` the strategy is saved to JSON and rebuilt before every ask and tell.
    """
    order = random.Random(seed)
    log: list[object] = []
    pending: list[Proposal] = []
    while not strategy.is_done():
        while len(pending) < parallel:
            if resume_every_step:
                strategy = from_state_json(json.loads(json.dumps(strategy.state_to_json())))
            proposal = strategy.ask()
            if proposal is None:
                break
            log.append(proposal.to_json())
            if not proposal.rejected:
                pending.append(proposal)
        if not pending:
            break
        done = pending.pop(order.randrange(len(pending)))
        if resume_every_step:
            strategy = from_state_json(json.loads(json.dumps(strategy.state_to_json())))
        strategy.tell(done.id, rung_evaluate(done.architecture, done))
        log.append(["told", done.id, done.rung])
    log.append(strategy.state_to_json())
    return log


@pytest.mark.parametrize("strategy", ["aging_evolution", "random", "memnas"])
def test_a_resumed_asha_run_continues_identically(strategy: str) -> None:
    cfg = asha(strategy=strategy, budget=16, error_objective="int8")
    straight = drive(make_strategy(cfg), parallel=3, seed=5, resume_every_step=False)
    resumed = drive(make_strategy(cfg), parallel=3, seed=5, resume_every_step=True)
    assert resumed == straight
    assert any(isinstance(e, dict) and e.get("rung") == 2 for e in straight)


def test_pareto_ranks_peel_fronts_one_after_another() -> None:
    from searches.engine.strategies.objectives import pareto_ranks

    rng = random.Random(3)
    points = [(rng.randint(0, 5), rng.randint(0, 5), rng.randint(0, 5)) for _ in range(60)]
    ranks = pareto_ranks(points)
    remaining, rank = list(range(len(points))), 0
    while remaining:
        front = [remaining[i] for i in pareto_front([points[j] for j in remaining])]
        assert sorted(i for i in remaining if ranks[i] == rank) == front
        remaining, rank = [i for i in remaining if i not in front], rank + 1
