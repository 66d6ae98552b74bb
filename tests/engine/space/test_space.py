"""Sampling reaches every bound; every morphism yields a valid child or a reasoned rejection."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from searches.engine.space import arch as A
from searches.engine.space.morphisms import apply_edit, enumerate_edits, mutate
from searches.engine.space.sampling import SpaceConfig, count_ops, random_architecture, repair

pytestmark = pytest.mark.engine

DIGITS = SpaceConfig((8, 8, 1), 10)
MNIST = SpaceConfig((28, 28, 1), 10)


def _layers(arch: A.Architecture) -> list[A.ConvLayer]:
    return [layer for block in arch.conv_blocks for layer in block.layers]


def test_sampling_reaches_every_bound_inclusively() -> None:
    rng = random.Random(1)
    archs = [random_architecture(rng, MNIST) for _ in range(600)]
    layers = [layer for a in archs for layer in _layers(a)]
    assert {len(a.conv_blocks) for a in archs} == set(range(A.MIN_BLOCKS, A.MAX_BLOCKS + 1))
    assert {len(b.layers) for a in archs for b in a.conv_blocks} == {1, 2, 3}
    assert {layer.kernel for layer in layers if layer.op != "conv1x1"} == set(A.KERNELS)
    filters = [layer.filters for layer in layers if layer.filters is not None]
    assert min(filters) == A.MIN_FILTERS and max(filters) == A.MAX_FILTERS
    assert {len(a.dense) for a in archs} == {0, 1, 2, 3}
    units = [d.units for a in archs for d in a.dense]
    assert min(units) == A.MIN_UNITS and max(units) == A.MAX_UNITS
    assert {a.pooling.size for a in archs if a.pooling} == {2, 4, 6, "global"}
    assert any(b.branch for a in archs for b in a.conv_blocks)
    assert {layer.op for layer in layers} == set(A.OPS)


def test_sampling_is_deterministic_and_valid() -> None:
    first = [random_architecture(random.Random(7), DIGITS) for _ in range(3)]
    again = [random_architecture(random.Random(7), DIGITS) for _ in range(3)]
    assert first == again
    for arch in first:
        A.validate(arch)


def test_max_ops_is_respected() -> None:
    rng = random.Random(3)
    config = SpaceConfig((8, 8, 1), 10, max_ops=6)
    assert all(count_ops(random_architecture(rng, config)) <= 6 for _ in range(100))


@pytest.mark.slow
def test_every_child_of_1000_parents_is_valid_or_rejected_with_a_reason() -> None:
    rng = random.Random(0)
    outcomes: Counter[str] = Counter()
    for n in range(1000):
        parent = random_architecture(rng, DIGITS if n % 2 else MNIST)
        config = DIGITS if n % 2 else MNIST
        for edit in enumerate_edits(parent, rng, config):
            result = apply_edit(parent, edit, config)
            if result.child is None:
                assert result.reject_reason, edit.description
                assert ": " in result.reject_reason  # "<path>: <reason>"
                outcomes["rejected"] += 1
            else:
                A.validate(result.child)
                assert result.child != parent, edit.description
                outcomes[edit.category] += 1
    assert set(outcomes) >= {"blocks", "layer", "filters", "pooling", "dense", "rejected"}


def test_children_survive_the_json_round_trip() -> None:
    rng = random.Random(5)
    for _ in range(8):
        parent = random_architecture(rng, DIGITS)
        for edit in enumerate_edits(parent, rng, DIGITS):
            child = apply_edit(parent, edit, DIGITS).child
            if child is not None:
                assert A.from_json(child.to_json()) == child


def test_mutation_picks_a_category_first() -> None:
    rng = random.Random(11)
    parent = random_architecture(rng, MNIST)
    while len(enumerate_edits(parent, rng, MNIST)) < 80:
        parent = random_architecture(rng, MNIST)
    seen: Counter[str] = Counter()
    for _ in range(1000):
        m = mutate(parent, rng, MNIST)
        seen[_category(m.description)] += 1
    # Five categories drawn uniformly: each gets ~20 %, filters do not dominate.
    assert all(140 < count < 260 for count in seen.values()), seen


def _category(description: str) -> str:
    if "filters" in description:
        return "filters"
    if "pool" in description and ":" not in description:
        return "pooling"
    if "dense" in description:
        return "dense"
    if any(w in description for w in ("block", "remove layer", "insert layer")):
        return "blocks"
    return "layer"


def test_branch_filters_follow_their_group() -> None:
    arch = A.Architecture(
        (8, 8, 1),
        10,
        (A.ConvBlock((A.ConvLayer(filters=8),)), A.ConvBlock((A.ConvLayer(filters=3),), branch=True)),
    )
    repaired = repair(arch)
    assert repaired.conv_blocks[1].layers[-1].filters == 8
    edits = [
        e
        for e in enumerate_edits(repaired, random.Random(0), DIGITS)
        if e.description.startswith("b0l0: filters")
    ]
    child = apply_edit(repaired, edits[0], DIGITS).child
    assert child is not None
    assert child.conv_blocks[1].layers[-1].filters == child.conv_blocks[0].layers[-1].filters


def test_removing_block_zero_makes_the_next_block_sequential() -> None:
    arch = repair(
        A.Architecture(
            (8, 8, 1),
            10,
            (A.ConvBlock((A.ConvLayer(filters=8),)), A.ConvBlock((A.ConvLayer(filters=8),), branch=True)),
        )
    )
    edit = next(
        e for e in enumerate_edits(arch, random.Random(0), DIGITS) if e.description == "remove block 0"
    )
    child = apply_edit(arch, edit, DIGITS).child
    assert child is not None and not child.conv_blocks[0].branch
