from __future__ import annotations

import itertools
import json
import math
import random
import time

import pytest

from bench.bench_strategies import hypervolume, hypervolume_curve
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.space.sampling import SpaceConfig, random_architecture
from searches.engine.strategies.base import EvalFailure, EvalResult, Member, Proposal, SearchStrategy, measure
from searches.engine.strategies.config import Bounds, Limits, SearchConfig
from searches.engine.strategies.driver import SearchEvent, run_search
from searches.engine.strategies.memnas.controller import Controller, ListController, encode, pairwise_accuracy
from searches.engine.strategies.memnas.edits import (
    GROW_LAYERS,
    children,
    function_key,
    minimal_backbone,
    round0_combinations,
    single_block_networks,
)
from searches.engine.strategies.memnas.strategy import (
    MemNAS,
    MemNASConfig,
    _triple,
    efficiency_score,
    pack,
    unpack,
)
from searches.engine.strategies.registry import from_state_json, make_strategy
from searches.engine.training.datasets import load_digits
from searches.engine.training.train import Fidelity, train_and_evaluate
from tests.engine.strategies.test_search import round_trip

pytestmark = pytest.mark.engine

SPACE = SpaceConfig(input_shape=(8, 8, 1), classes=4)


def conv(filters: int | None = 8, kernel: int = 3, stride: int = 1, op: str = "conv2d") -> ConvLayer:
    return ConvLayer(op, kernel, filters, stride, "same", False, True, True)  # type: ignore[arg-type]


def arch(*blocks: ConvBlock, dense: tuple[Dense, ...] = ()) -> Architecture:
    return Architecture((8, 8, 1), 4, blocks, Pooling("avg", "global"), dense)


def config(**overrides: object) -> SearchConfig:
    options = overrides.pop("options", {"top_k": 2})
    base: dict[str, object] = {
        "space": SPACE,
        "budget": 10,
        "strategy": "memnas",
        "seed": 3,
        "strategy_options": options,
    }
    base.update(overrides)
    return SearchConfig(**base)  # type: ignore[arg-type]


def total_filters(architecture: Architecture) -> int:
    return sum(layer.filters or 0 for block in architecture.conv_blocks for layer in block.layers)


def fake_evaluate(architecture: Architecture, proposal: Proposal) -> EvalResult:
    """Deterministic: accuracy grows with the filters and saturates, so growing pays until it doesn't."""
    accuracy = 0.55 + 0.4 * (1 - math.exp(-total_filters(architecture) / 40))
    return EvalResult(val_accuracy=accuracy, test_accuracy=accuracy - 0.01)


# ---- grow and trim -----------------------------------------------------------------------------


def test_grow_children_of_a_known_backbone() -> None:
    backbone = arch(ConvBlock((conv(4),)), ConvBlock((conv(8, stride=2),)))
    kids = children(backbone, SPACE, trim=False)
    names = [g.name for g in GROW_LAYERS]
    # Every layer fits both blocks and a new block; beside block 1 (stride 2 from block 0's
    # 8x8 output) only a stride-2 branch produces the matching 4x4 map.
    expected = [
        d
        for name in names
        for d in (f"grow: append {name} to every block", f"grow: append block {name}")
        + ((f"grow: add branch {name} beside block 1",) if name == "conv3x3 stride 2" else ())
    ]
    assert [k.description for k in kids] == expected
    by_name = {k.description: k.child for k in kids}
    assert by_name["grow: append conv3x3 to every block"] == arch(
        ConvBlock((conv(4), conv(4))), ConvBlock((conv(8, stride=2), conv(8)))
    )
    assert by_name["grow: append conv1x1 x2 to every block"] == arch(
        ConvBlock((conv(4), conv(8, 1, op="conv1x1"))),
        ConvBlock((conv(8, stride=2), conv(16, 1, op="conv1x1"))),
    )
    assert by_name["grow: append block dwconv3x3"] == arch(
        ConvBlock((conv(4),)), ConvBlock((conv(8, stride=2),)), ConvBlock((conv(None, op="dwconv2d"),))
    )
    # The branch's last layer is forced to the group's 8 channels.
    assert by_name["grow: add branch conv3x3 stride 2 beside block 1"] == arch(
        ConvBlock((conv(4),)),
        ConvBlock((conv(8, stride=2),)),
        ConvBlock((conv(8, stride=2),), branch=True),
    )


def test_full_blocks_do_not_grow_but_the_others_do() -> None:
    backbone = arch(ConvBlock((conv(4), conv(4), conv(4))), ConvBlock((conv(8),)))
    kids = {k.description: k.child for k in children(backbone, SPACE, trim=False)}
    assert kids["grow: append conv5x5 to every block"] == arch(
        ConvBlock((conv(4), conv(4), conv(4))), ConvBlock((conv(8), conv(8, kernel=5)))
    )


def test_trim_children_of_a_known_backbone() -> None:
    b0 = ConvBlock((conv(4), conv(8)))
    b1 = ConvBlock((conv(8),), branch=True)
    b2 = ConvBlock((conv(None, op="dwconv2d"),))
    backbone = arch(b0, b1, b2, dense=(Dense(16),))
    kids = children(backbone, SPACE, grow=False)
    assert [(k.description, k.child) for k in kids] == [
        ("trim: remove layer b0l0", arch(ConvBlock((conv(8),)), b1, b2, dense=(Dense(16),))),
        # Block 0 now ends with 4 channels: repair forces its branch to 4 as well.
        (
            "trim: remove layer b0l1",
            arch(ConvBlock((conv(4),)), ConvBlock((conv(4),), branch=True), b2, dense=(Dense(16),)),
        ),
        ("trim: remove edge (branch block 1)", arch(b0, b2, dense=(Dense(16),))),
        ("trim: remove block 2 (its only layer)", arch(b0, b1, dense=(Dense(16),))),
        ("trim: remove dense0", arch(b0, b1, b2)),
    ]


def test_a_single_layer_backbone_has_no_trim_children() -> None:
    assert children(minimal_backbone(SPACE), SPACE, grow=False) == []


def test_children_computing_the_same_network_are_proposed_once() -> None:
    # With one block, "append X to every block" and "append block X" are the same chain of layers.
    kids = children(minimal_backbone(SPACE), SPACE)
    assert not [k for k in kids if k.description.startswith("grow: append block")]
    assert len({function_key(k.child) for k in kids if k.child}) == len(kids)
    one = arch(ConvBlock((conv(4), conv(8))))
    two = arch(ConvBlock((conv(4),)), ConvBlock((conv(8),)))
    assert function_key(one) == function_key(two)
    assert function_key(one) != function_key(arch(ConvBlock((conv(4),)), ConvBlock((conv(4),), branch=True)))


def test_pack_round_trips_through_json() -> None:
    for a in [*_random_archs(30, seed=2), arch(ConvBlock((conv(None, op="dwconv2d"),)))]:
        assert unpack(json.loads(json.dumps(pack(a)))) == a


# ---- the score -------------------------------------------------------------------------------------


def test_efficiency_score_matches_hand_computed_values() -> None:
    reference = (0.8, 1000.0, 2000.0)
    # accuracy gain 0.1 / 0.8 = 0.125; SRAM saved 0.2, flash saved 0.25
    assert efficiency_score(0.9, 800, 1500, reference, lam=0.5, beta=0.7) == pytest.approx(
        0.5 * 0.125 + 0.5 * (0.7 * 0.2 + 0.3 * 0.25)
    )
    assert efficiency_score(0.9, 800, 1500, reference, lam=1.0, beta=0.7) == pytest.approx(0.125)
    assert efficiency_score(0.9, 800, 1500, reference, lam=0.0, beta=1.0) == pytest.approx(0.2)
    # More memory for the same accuracy is worse than the reference.
    assert efficiency_score(0.8, 1200, 2000, reference, lam=0.5, beta=0.7) == pytest.approx(-0.07)
    assert efficiency_score(*reference, reference, lam=0.3, beta=0.7) == 0


# ---- the controller ------------------------------------------------------------------------------


def _random_archs(n: int, seed: int) -> list[Architecture]:
    rng, out, keys = random.Random(seed), list[Architecture](), set[str]()
    config = SpaceConfig((8, 8, 1), 10)
    while len(out) < n:
        candidate = random_architecture(rng, config)
        if candidate.key() not in keys:
            keys.add(candidate.key())
            out.append(candidate)
    return out


def test_the_controller_learns_a_known_ordering() -> None:
    archs = _random_archs(260, seed=0)
    sequences = [encode(a, measure(a, Limits())) for a in archs]
    # A made-up "accuracy" that grows with the total filter count.
    labels = [1 - math.exp(-total_filters(a) / 100) for a in archs]
    controller = Controller(hidden=24, seed=0)
    before = pairwise_accuracy(controller.score(sequences[200:]), labels[200:])
    start = time.process_time()
    controller.fit(sequences[:200], labels[:200], steps=40, lr=0.02)
    seconds = time.process_time() - start
    held_out = pairwise_accuracy(controller.score(sequences[200:]), labels[200:])
    assert held_out >= 0.8, (before, held_out)
    assert seconds < 3.0  # ~0.4 s of CPU on one thread; generous for a loaded machine


def test_controller_weights_round_trip_exactly_through_json() -> None:
    controller = Controller(hidden=8, seed=1)
    archs = _random_archs(20, seed=1)
    sequences = [encode(a, measure(a, Limits())) for a in archs]
    controller.fit(sequences, [total_filters(a) / 400 for a in archs], steps=5, lr=0.05)
    copy = Controller(hidden=8, seed=99)
    copy.load_json(json.loads(json.dumps(controller.to_json())))
    assert copy.score(sequences) == controller.score(sequences)


def test_pairwise_accuracy() -> None:
    assert pairwise_accuracy([1, 2, 3], [10, 20, 30]) == 1
    assert pairwise_accuracy([3, 2, 1], [10, 20, 30]) == 0
    assert pairwise_accuracy([1, 3, 2], [10, 20, 20]) == 1  # ties in the target are skipped


# ---- configuration ------------------------------------------------------------------------------


def test_options_json_and_validation() -> None:
    options = MemNASConfig.from_json({"lambda": 0.8, "top_k": 3})
    assert (options.lam, options.beta, options.top_k) == (0.8, 0.7, 3)
    assert options.to_json()["lambda"] == 0.8
    assert MemNASConfig.from_json(options.to_json()) == options
    with pytest.raises(ValueError, match="unknown MemNAS option"):
        MemNASConfig.from_json({"lamda": 0.8})
    with pytest.raises(ValueError, match="lambda"):
        MemNASConfig(lam=1.5)
    with pytest.raises(ValueError, match="grow or trim"):
        MemNASConfig(grow=False, trim=False)
    with pytest.raises(ValueError, match="top_k"):
        config(options={"top_k": 0})  # SearchConfig checks the options up front
    cfg = config(options={"lambda": 0.8})
    assert SearchConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert isinstance(make_strategy(cfg), MemNAS)
    assert make_strategy(cfg).options.lam == 0.8  # type: ignore[attr-defined]


# ---- the strategy -----------------------------------------------------------------------------------


def step(strategy: SearchStrategy, log: list[dict[str, object]]) -> None:
    """Ask until a feasible proposal comes, evaluate and tell it; log every proposal."""
    while True:
        proposal = strategy.ask()
        assert proposal is not None
        log.append(proposal.to_json())
        if not proposal.rejected:
            break
    strategy.tell(proposal.id, fake_evaluate(proposal.architecture, proposal))


@pytest.mark.parametrize(("before", "after"), [(2, 2), (3, 3), (4, 3)])
def test_save_and_load_between_steps_changes_nothing(before: int, after: int) -> None:
    cfg = config(budget=12, limits=Limits(sram_bytes=1_500))
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
    assert isinstance(straight, MemNAS)
    assert straight.rounds == (before + after - 1) // 2  # rounds of 2 after the seed: retrains resumed too


def test_the_first_proposal_is_the_minimal_seed_and_rounds_grow_from_it() -> None:
    strategy = make_strategy(config(options={"top_k": 3}))
    events: list[SearchEvent] = []
    run_search(strategy, fake_evaluate, events.append)
    proposals = [e.proposal for e in events if e.kind == "proposed"]
    assert proposals[0].architecture == minimal_backbone(SPACE)
    assert proposals[0].description == "seed backbone (minimal)"
    assert all(p.description.startswith(("grow:", "trim:")) for p in proposals[1:])
    assert [p.parent_id for p in proposals[1:4]] == [proposals[0].id] * 3
    assert isinstance(strategy, MemNAS) and strategy.told == 10
    assert strategy.rounds == 3  # 1 seed + 3 rounds of 3


def test_the_backbone_moves_toward_better_scores() -> None:
    strategy = make_strategy(config(budget=25, options={"top_k": 3, "on_stall": "best_child"}))
    assert isinstance(strategy, MemNAS)
    members: dict[int, Member] = {}
    run_search(
        strategy, fake_evaluate, lambda e: members.update({e.proposal.id: e.member} if e.member else {})
    )
    moves = [t for t in strategy.trajectory if "backbone" in t]
    improving = [t for t in moves if t["why"] == "best Y > 0"]
    assert len(improving) >= 2
    options = strategy.options
    previous = members[moves[0]["backbone"]]
    for move in moves[1:]:
        new = members[move["backbone"]]
        y = efficiency_score(*_triple(new), _triple(previous), options.lam, options.beta)
        assert y == pytest.approx(move.get("scores", {}).get(str(new.id), y))
        if move["why"] == "best Y > 0":
            assert y > 0
        previous = new
    seed = members[moves[0]["backbone"]]
    backbone = strategy.backbone
    assert backbone is not None and backbone.id != seed.id
    assert efficiency_score(*_triple(backbone), _triple(seed), options.lam, options.beta) > 0


def test_budget_scaled_memory_terms_hand_computed() -> None:
    reference = (0.8, 1000.0, 2000.0)
    # Doubling a small network's memory costs the whole backbone in the paper's Y ...
    assert efficiency_score(0.88, 2000, 4000, reference, lam=0.5, beta=0.7) == pytest.approx(
        0.5 * 0.1 + 0.5 * (0.7 * -1 + 0.3 * -1)
    )
    # ... and only its share of a 64,000 B board when divided by the budget.
    scale = (64_000.0, 64_000.0)
    assert efficiency_score(0.88, 2000, 4000, reference, 0.5, 0.7, scale) == pytest.approx(
        0.5 * 0.1 + 0.5 * (0.7 * -1000 / 64_000 + 0.3 * -2000 / 64_000)
    )
    assert efficiency_score(*reference, reference, 0.5, 0.7, scale) == 0


def test_memory_scale_budget_grows_past_where_the_papers_score_stops() -> None:
    """With fake accuracies that grow with the filters, the budget scale ends on a larger backbone."""
    limits = Limits(sram_bytes=64_000, flash_bytes=64_000)
    ends = {}
    for scale in ("backbone", "budget"):
        strategy = make_strategy(
            config(budget=25, limits=limits, options={"top_k": 3, "memory_scale": scale})
        )
        assert isinstance(strategy, MemNAS) and strategy.options.memory_scale == scale
        run_search(strategy, fake_evaluate)
        assert strategy.backbone is not None
        ends[scale] = strategy.backbone
    assert total_filters(ends["budget"].architecture) > total_filters(ends["backbone"].architecture)
    assert ends["budget"].result.val_accuracy > ends["backbone"].result.val_accuracy
    # Resuming keeps the setting (it is part of the recorded options).
    assert MemNASConfig.from_json(MemNASConfig(memory_scale="backbone").to_json()).memory_scale == "backbone"
    assert MemNASConfig().memory_scale == MemNASConfig.from_json({"top_k": 2}).memory_scale == "budget"
    # A run recorded before the setting existed (all the others there) keeps the paper's scale.
    recorded = MemNASConfig().to_json()
    del recorded["memory_scale"]
    assert MemNASConfig.from_json(recorded).memory_scale == "backbone"
    with pytest.raises(ValueError, match="memory_scale must be one of backbone, budget"):
        MemNASConfig(memory_scale="limits")  # type: ignore[arg-type]


def test_without_improvement_the_best_child_becomes_the_backbone_after_patience_rounds() -> None:
    def flat(architecture: Architecture, proposal: Proposal) -> EvalResult:
        return EvalResult(val_accuracy=0.5)  # growth only costs memory: no child scores Y > 0

    strategy = make_strategy(config(budget=5, options={"top_k": 2, "patience": 2, "on_stall": "best_child"}))
    assert isinstance(strategy, MemNAS)
    run_search(strategy, flat)
    first, second = strategy.trajectory[1:]
    assert "backbone" not in first and max(first["scores"].values()) < 0
    assert second["why"] == "no Y > 0 in 2 rounds: best child taken"
    scores = {**first["scores"], **second["scores"]}
    assert str(second["backbone"]) == max(scores, key=scores.__getitem__)


def test_children_over_the_limits_are_rejected_with_a_reason() -> None:
    limits = Limits(sram_bytes=700)  # the minimal seed needs 576 B; most growth does not fit
    strategy = make_strategy(config(budget=8, limits=limits))
    events: list[SearchEvent] = []
    run_search(strategy, fake_evaluate, events.append)
    rejected = [e.proposal for e in events if e.kind == "rejected"]
    trained = [e.proposal for e in events if e.kind == "proposed"]
    assert rejected and all("peak SRAM" in (p.reject_reason or "") for p in rejected)
    assert all(p.resources["peak_sram_bytes"] <= 700 for p in trained)
    assert strategy.counters["rejected"] == len(rejected)
    keys = [p.architecture.key() for p in rejected + trained]
    assert len(keys) == len(set(keys))


def test_asks_wait_for_the_round_and_tells_may_come_out_of_order() -> None:
    strategy = make_strategy(config(budget=7, options={"top_k": 3}))
    seed = strategy.ask()
    assert seed is not None
    assert strategy.ask() is None and not strategy.is_done()  # the seed must be told first
    strategy.tell(seed.id, fake_evaluate(seed.architecture, seed))
    batch = [strategy.ask() for _ in range(3)]
    assert all(p is not None and not p.rejected for p in batch)
    assert strategy.ask() is None and not strategy.is_done()
    for p in reversed(batch):
        assert p is not None
        strategy.tell(p.id, fake_evaluate(p.architecture, p))
    assert isinstance(strategy, MemNAS) and strategy.rounds == 1
    rest = [strategy.ask() for _ in range(3)]
    assert all(p is not None for p in rest)
    assert strategy.ask() is None  # budget of 7 spent
    for p in rest:
        assert p is not None
        strategy.tell(p.id, EvalFailure("worker lost"))
    assert strategy.is_done() and strategy.rounds == 2


def test_on_stall_raise_lambda_keeps_the_backbone_and_weighs_accuracy_more() -> None:
    def flat(architecture: Architecture, proposal: Proposal) -> EvalResult:
        return EvalResult(val_accuracy=0.5)  # growth only costs memory: no child scores Y > 0

    options = {"top_k": 2, "patience": 2, "on_stall": "raise_lambda", "lambda": 0.5}
    strategy = make_strategy(config(budget=7, options=options))
    assert isinstance(strategy, MemNAS)
    run_search(strategy, flat)
    seed = strategy.trajectory[0]["backbone"]
    first, second = strategy.trajectory[1:3]
    assert max(first["scores"].values()) < 0 and max(second["scores"].values()) < 0
    assert second["lambda"] == 0.75 and second["why"] == "no Y > 0 in 2 rounds: λ raised to 0.75"
    assert "backbone" not in second  # flat accuracy: growth still does not pay at 0.75
    assert strategy.backbone is not None and strategy.backbone.id == seed  # stayed
    # The next round is scored at the new λ (hand-computed from Y's definition).
    third = strategy.trajectory[3]
    child = next(iter(third["scores"]))
    member = next(m for m in strategy._children if str(m.id) == child)
    expected = efficiency_score(
        *_triple(member), _triple(strategy.backbone), 0.75, strategy.options.beta, strategy._memory_scale()
    )
    assert third["scores"][child] == pytest.approx(expected)
    # λ is part of the state: a resumed search goes on at the raised λ.
    again = from_state_json(json.loads(json.dumps(strategy.state_to_json())))
    assert isinstance(again, MemNAS) and again._lam == 0.75
    # The setting is recorded; runs recorded before it existed keep moving to the best child.
    assert MemNASConfig.from_json(strategy.options.to_json()).on_stall == "raise_lambda"
    recorded = MemNASConfig().to_json()
    del recorded["on_stall"], recorded["memory_scale"]
    legacy = MemNASConfig.from_json(recorded)
    assert (legacy.on_stall, legacy.memory_scale) == ("best_child", "backbone")
    with pytest.raises(ValueError, match="on_stall must be one of best_child, raise_lambda"):
        MemNASConfig(on_stall="restart")  # type: ignore[arg-type]


def test_raising_lambda_moves_to_a_trained_child_that_now_beats_the_backbone() -> None:
    """Children whose accuracy gain is half their memory cost lose at λ 0.5 and win at 0.75."""
    options = {"top_k": 2, "patience": 2, "on_stall": "raise_lambda", "lambda": 0.5}
    strategy = make_strategy(config(budget=5, options=options))
    assert isinstance(strategy, MemNAS)
    seed_accuracy = 0.5

    def half_paying(architecture: Architecture, proposal: Proposal) -> EvalResult:
        if proposal.parent_id is None:
            return EvalResult(val_accuracy=seed_accuracy)
        backbone = strategy.backbone
        assert backbone is not None
        r, p = proposal.resources["peak_sram_bytes"], proposal.resources["flash_bytes"]
        reference = _triple(backbone)
        scale = strategy._memory_scale()
        cost = -efficiency_score(reference[0], r, p, reference, 0.0, strategy.options.beta, scale)
        return EvalResult(val_accuracy=seed_accuracy * (1 + 0.5 * cost))

    run_search(strategy, half_paying)
    first, second = strategy.trajectory[1:3]
    assert max(first["scores"].values()) < 0 and max(second["scores"].values()) < 0
    assert second["why"] == "no Y > 0 in 2 rounds: λ raised to 0.75, best child taken"
    assert strategy.backbone is not None and strategy.backbone.id == second["backbone"]
    assert strategy.backbone.id != strategy.trajectory[0]["backbone"]  # moved, no extra training
    assert strategy.asked == 5 and strategy._lam == 0.75


def test_a_backbone_without_feasible_children_restarts_from_a_random_one() -> None:
    # The minimal seed needs exactly 576 B; every grow child needs more and it has no trim child.
    strategy = make_strategy(config(budget=3, limits=Limits(sram_bytes=576)))
    events: list[SearchEvent] = []
    run_search(strategy, fake_evaluate, events.append)
    kinds = [(e.kind, e.proposal.description.split(":")[0]) for e in events if e.kind != "evaluated"]
    restart = kinds.index(("proposed", "random restart"))
    assert kinds[0] == ("proposed", "seed backbone (minimal)")
    assert restart > 1 and set(kinds[1:restart]) == {("rejected", "grow")}
    assert isinstance(strategy, MemNAS) and {"round": 0, "restart": True} in strategy.trajectory


def test_a_failed_seed_falls_back_to_a_random_backbone() -> None:
    strategy = make_strategy(config(budget=4))
    seed = strategy.ask()
    assert seed is not None
    strategy.tell(seed.id, EvalFailure("out of memory"))
    again = strategy.ask()
    assert again is not None and again.description == "seed backbone (random)"
    assert again.architecture != seed.architecture


def test_impossible_limits_stop_the_search_with_a_reason() -> None:
    strategy = make_strategy(config(limits=Limits(flash_bytes=1), max_random_tries=5))
    assert strategy.ask() is None
    assert strategy.is_done()
    assert "flash" in (strategy.stop_reason or "")


def test_a_tiny_real_search_on_digits_completes() -> None:
    dataset = load_digits()
    cfg = SearchConfig(
        space=SpaceConfig(dataset.input_shape, dataset.classes),
        budget=4,
        strategy="memnas",
        limits=Limits(sram_bytes=2048, flash_bytes=4096),
        strategy_options={"top_k": 2},
    )
    fidelity = Fidelity(epochs=1, train_subset=200, batch_size=32, lr=1e-2)

    def evaluate(architecture: Architecture, proposal: Proposal) -> EvalResult:
        r = train_and_evaluate(architecture, dataset, fidelity)
        return EvalResult(r.val_accuracy, r.test_accuracy)

    strategy = make_strategy(cfg)
    archive = run_search(strategy, evaluate)
    assert strategy.is_done() and strategy.told == 4 and strategy.counters["failed"] == 0
    assert isinstance(strategy, MemNAS) and strategy.rounds >= 1
    assert archive and all(0 <= m.result.val_accuracy <= 1 for m in archive)


# ---- benchmark hypervolume ---------------------------------------------------------------------------


def test_hypervolume_of_hand_computed_boxes() -> None:
    ones = (1, 1, 1, 1)
    assert hypervolume([(0.5, 0.5, 0.5, 0.5)], ones) == pytest.approx(0.0625)
    # two boxes of 0.125 overlapping in 0.0625
    assert hypervolume([(0, 0.5, 0.5, 0.5), (0.5, 0, 0.5, 0.5)], ones) == pytest.approx(0.1875)
    # a dominated point adds nothing; a point beyond the reference in any objective neither
    assert hypervolume([(0.5, 0.5, 0.5, 0.5), (0.6, 0.5, 0.7, 0.5), (0, 0, 0, 1.2)], ones) == pytest.approx(
        0.0625
    )
    assert hypervolume([], ones) == 0
    assert hypervolume([(0, 0, 0, 0)], ones) == 1


def test_hypervolume_matches_counting_cells() -> None:
    rng = random.Random(5)
    for _ in range(30):
        points = [tuple(rng.randint(0, 4) for _ in range(4)) for _ in range(rng.randint(1, 8))]
        cells = sum(
            1
            for cell in itertools.product(range(4), repeat=4)
            if any(all(p <= c for p, c in zip(point, cell, strict=True)) for point in points)
        )
        assert hypervolume(points, (4, 4, 4, 4)) == pytest.approx(cells)


def test_hypervolume_curve_normalises_by_the_bounds() -> None:
    bounds = Bounds(error=0.1, peak_sram_bytes=1000, flash_bytes=2000, macs=10_000)
    points = [None, (0.05, 500, 1000, 5000), (0.2, 10, 10, 10), (0.05, 500, 1000, 2500)]
    assert hypervolume_curve(points, bounds) == pytest.approx([0, 0.0625, 0.0625, 0.09375])


# ---- round 0 ------------------------------------------------------------------------------------


def test_round0_networks_are_single_blocks_covering_every_op() -> None:
    order = list(range(round0_combinations()))
    random.Random(0).shuffle(order)
    networks = single_block_networks(SPACE, 5, order)

    assert len(networks) == 5
    assert len({function_key(a) for _, a in networks}) == 5
    for _, network in networks:
        assert len(network.conv_blocks) == 1 and len(network.conv_blocks[0].layers) == 2
        assert network.dense == () and network.pooling == Pooling("avg", "global")
    ops = {layer.op for _, a in networks for layer in a.conv_blocks[0].layers}
    assert ops == {"conv2d", "conv1x1", "dwconv2d"}


def test_round0_order_must_be_a_permutation() -> None:
    with pytest.raises(ValueError, match="permutation"):
        single_block_networks(SPACE, 3, [0, 0, 1])


def _round0_config(**overrides: object) -> SearchConfig:
    options = {"top_k": 2, "seed_backbone": "single_blocks", "round0_size": 4}
    return config(options=options, **overrides)


def test_round0_trains_the_set_then_grows_from_its_best_by_y() -> None:
    strategy = make_strategy(_round0_config(budget=10))
    assert isinstance(strategy, MemNAS)
    first = [strategy.ask() for _ in range(4)]
    assert all(p is not None and not p.rejected for p in first)
    assert strategy.ask() is None and not strategy.is_done()  # a round is a barrier
    assert first[0] is not None and first[0].architecture == minimal_backbone(SPACE)
    assert all(p is not None and p.description.startswith("round 0: ") for p in first)
    members = {}
    for p in first:
        assert p is not None
        members[p.id] = strategy.tell(p.id, fake_evaluate(p.architecture, p))

    backbone = strategy.backbone
    assert backbone is not None
    told = [m for m in members.values() if m is not None]
    cheapest = min(told, key=lambda m: 0.7 * _triple(m)[1] + 0.3 * _triple(m)[2])
    options = strategy.options
    ys = {m.id: efficiency_score(*_triple(m), _triple(cheapest), options.lam, options.beta) for m in told}
    assert backbone.id == max(ys, key=ys.__getitem__)
    assert strategy.trajectory[-1]["round"] == 0 and strategy.trajectory[-1]["backbone"] == backbone.id
    child = strategy.ask()
    assert child is not None and child.parent_id == backbone.id  # round 1 grows from it


def test_round0_children_over_the_limits_are_rejected_with_the_reason() -> None:
    strategy = make_strategy(_round0_config(budget=10, limits=Limits(sram_bytes=700)))
    seen = []
    while (p := strategy.ask()) is not None:
        seen.append(p)
        if not p.rejected:
            strategy.tell(p.id, fake_evaluate(p.architecture, p))
    rejected = [p for p in seen if p.rejected]
    assert rejected and all("SRAM" in (p.reject_reason or "") for p in rejected)
    assert all(p.resources["peak_sram_bytes"] <= 700 for p in seen if not p.rejected)


def test_round0_state_resumes_exactly() -> None:
    cfg = _round0_config(budget=12)
    straight, straight_log = make_strategy(cfg), list[dict[str, object]]()
    for _ in range(7):
        step(straight, straight_log)
    resumed, resumed_log = make_strategy(cfg), list[dict[str, object]]()
    for _ in range(3):
        step(resumed, resumed_log)
    resumed = round_trip(resumed)
    for _ in range(4):
        step(resumed, resumed_log)
    assert resumed_log == straight_log
    assert resumed.state_to_json() == straight.state_to_json()


def test_a_round0_that_all_fails_falls_back_to_a_single_seed() -> None:
    strategy = make_strategy(_round0_config(budget=10))
    round0 = [strategy.ask() for _ in range(4)]
    for p in round0:
        assert p is not None
        strategy.tell(p.id, EvalFailure("boom"))
    assert strategy.backbone is None
    seed = strategy.ask()
    assert seed is not None and not seed.description.startswith("round 0")


# ---- the list ranker ----------------------------------------------------------------------------


def _within_lists(scores: list[float], labels: list[float], size: int) -> float:
    parts = [
        pairwise_accuracy(scores[i : i + size], labels[i : i + size]) for i in range(0, len(scores), size)
    ]
    return sum(parts) / len(parts)


def test_the_list_ranker_scores_each_candidate_against_the_others() -> None:
    archs = _random_archs(6, seed=3)
    sequences = [encode(a, measure(a, Limits())) for a in archs]
    ranker = ListController(hidden=8, seed=0)
    alone = ranker.score(sequences[:3])
    with_others = ranker.score([sequences[0], *sequences[3:]])
    assert alone[0] != with_others[0]  # the ranking GRU sees the whole list
    grouped = ranker.predict(sequences, groups=[0, 0, 0, 1, 1, 1])
    assert grouped[:3] == ranker.predict(sequences[:3])


def test_the_list_ranker_learns_a_known_ordering_within_lists() -> None:
    archs = _random_archs(260, seed=0)
    sequences = [encode(a, measure(a, Limits())) for a in archs]
    labels = [1 - math.exp(-total_filters(a) / 100) for a in archs]
    ranker = ListController(hidden=24, seed=0)
    groups = [i // 8 for i in range(200)]
    ranker.fit(sequences[:200], labels[:200], steps=40, lr=0.02, groups=groups)
    scores = ranker.predict(sequences[200:], groups=[i // 8 for i in range(60)])
    assert _within_lists(scores, labels[200:], 8) >= 0.75


def test_list_ranker_weights_round_trip_exactly_through_json() -> None:
    ranker = ListController(hidden=8, seed=1)
    archs = _random_archs(12, seed=1)
    sequences = [encode(a, measure(a, Limits())) for a in archs]
    ranker.fit(
        sequences,
        [total_filters(a) / 400 for a in archs],
        steps=5,
        lr=0.05,
        groups=[i % 3 for i in range(12)],
    )
    copy = ListController(hidden=8, seed=99)
    copy.load_json(json.loads(json.dumps(ranker.to_json())))
    assert copy.score(sequences) == ranker.score(sequences)


def test_a_search_with_the_list_ranker_resumes_exactly() -> None:
    cfg = config(budget=12, options={"top_k": 2, "ranker": "list"})
    straight, straight_log = make_strategy(cfg), list[dict[str, object]]()
    for _ in range(8):
        step(straight, straight_log)
    resumed, resumed_log = make_strategy(cfg), list[dict[str, object]]()
    for _ in range(5):
        step(resumed, resumed_log)
    resumed = round_trip(resumed)
    for _ in range(3):
        step(resumed, resumed_log)
    assert resumed_log == straight_log
    assert resumed.state_to_json() == straight.state_to_json()
    assert isinstance(straight, MemNAS) and isinstance(straight.controller, ListController)


def test_an_unknown_ranker_is_refused() -> None:
    with pytest.raises(ValueError, match="ranker must be one of"):
        MemNASConfig(ranker="tree")  # type: ignore[arg-type]
