"""μNAS's search space: the sampler's settings, random architectures and the repair rule.

Sampling draws every discrete parameter uniformly over its *inclusive* range (μNAS's
sampler never returns an upper bound; nasweb's does).  :func:`repair` makes a branch's last
layer take its group's channel count and keeps the first block from being a branch; the
morphisms (:mod:`searches.engine.space.morphisms`) repair every child the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from searches.engine.space import arch as A
from searches.engine.space.arch import Architecture, ArchitectureError, ConvBlock, ConvLayer, Dense, Pooling


@dataclass(frozen=True)
class SpaceConfig:
    """The task's fixed part (input, classes) and the sampler's probabilities."""

    input_shape: A.Shape
    classes: int
    max_ops: int | None = None
    p_pooling: float = 0.9
    p_relu: float = 0.9
    p_pre_pool: float = 0.25
    p_batchnorm: float = 0.5
    p_branch: float = 0.2
    p_valid_padding: float = 0.25
    p_global_pool: float = 0.25

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpaceConfig:
        return cls(**{**data, "input_shape": tuple(data["input_shape"])})


# ---- sampling ---------------------------------------------------------------------------


def random_layer(rng: random.Random, config: SpaceConfig) -> ConvLayer:
    """A layer with every parameter drawn uniformly from its full, inclusive range."""
    op = rng.choice(A.OPS)
    return ConvLayer(
        op=op,  # type: ignore[arg-type]
        kernel=1 if op == "conv1x1" else rng.choice(A.KERNELS),
        filters=None if op == "dwconv2d" else rng.randint(A.MIN_FILTERS, A.MAX_FILTERS),
        stride=1 if op == "conv1x1" else rng.choice((1, 2)),
        padding="valid" if rng.random() < config.p_valid_padding else "same",
        pre_pool=rng.random() < config.p_pre_pool,
        batchnorm=rng.random() < config.p_batchnorm,
        relu=rng.random() < config.p_relu,
    )


def random_block(rng: random.Random, config: SpaceConfig, branch: bool) -> ConvBlock:
    n = rng.randint(A.MIN_LAYERS, A.MAX_LAYERS)
    return ConvBlock(tuple(random_layer(rng, config) for _ in range(n)), branch=branch)


def random_pooling(rng: random.Random, config: SpaceConfig) -> Pooling:
    size: int | str = "global" if rng.random() < config.p_global_pool else rng.choice(A.POOL_SIZES)
    return Pooling(rng.choice(("avg", "max")), size)  # type: ignore[arg-type]


def random_architecture(rng: random.Random, config: SpaceConfig, max_tries: int = 10_000) -> Architecture:
    """A valid architecture drawn uniformly per parameter, blocks grown one at a time."""
    for _ in range(max_tries):
        candidate = _try_random_architecture(rng, config)
        if candidate is not None:
            return candidate
    raise RuntimeError(f"could not sample a valid architecture for input {config.input_shape}")


def _try_random_architecture(rng: random.Random, config: SpaceConfig) -> Architecture | None:
    n_blocks = rng.randint(A.MIN_BLOCKS, A.MAX_BLOCKS)
    base = Architecture(tuple(config.input_shape), config.classes, ())  # type: ignore[arg-type]
    blocks: list[ConvBlock] = []
    for i in range(n_blocks):
        block = _grow_block(rng, config, base, blocks, branch=i > 0 and rng.random() < config.p_branch)
        if block is None:
            return None
        blocks.append(block)
    pooling = random_pooling(rng, config) if rng.random() < config.p_pooling else None
    dense = tuple(Dense(rng.randint(A.MIN_UNITS, A.MAX_UNITS)) for _ in range(rng.randint(0, A.MAX_DENSE)))
    candidate = repair(replace(base, conv_blocks=tuple(blocks), pooling=pooling, dense=dense))
    try:
        A.validate(candidate)
    except ArchitectureError:
        return None
    if config.max_ops is not None and count_ops(candidate) > config.max_ops:
        return None
    return candidate


def _grow_block(
    rng: random.Random, config: SpaceConfig, base: Architecture, blocks: list[ConvBlock], branch: bool
) -> ConvBlock | None:
    """Draw a block that keeps the prefix valid (a few tries), or None."""
    for _ in range(20):
        block = random_block(rng, config, branch)
        trial = repair(base.with_blocks([*blocks, block]))
        try:
            A.validate(trial)
        except ArchitectureError:
            continue
        return trial.conv_blocks[-1]
    return None


def count_ops(arch: Architecture) -> int:
    """Number of operators the deployed graph has (convs, pre-pools, adds, pooling, dense, logits)."""
    layers = [layer for block in arch.conv_blocks for layer in block.layers]
    adds = sum(1 for group in arch.groups() if len(group) > 1)
    pre_pools = sum(1 for layer in layers if layer.pre_pool)
    return len(layers) + pre_pools + adds + (arch.pooling is not None) + len(arch.dense) + 1


# ---- repair -----------------------------------------------------------------------------


def repair(arch: Architecture) -> Architecture:
    """Apply the space's forced rules: block 0 is no branch; branches match their group's channels."""
    blocks = list(arch.conv_blocks)
    if blocks and blocks[0].branch:
        blocks[0] = replace(blocks[0], branch=False)
    arch = arch.with_blocks(blocks)
    channels = _group_channels(arch)
    for group, target in zip(arch.groups(), channels, strict=True):
        for b in group[1:]:
            last = blocks[b].layers[-1]
            if target is not None and last.op != "dwconv2d" and last.filters != target:
                blocks[b] = replace(blocks[b], layers=(*blocks[b].layers[:-1], replace(last, filters=target)))
    return arch.with_blocks(blocks)


def _group_channels(arch: Architecture) -> list[int | None]:
    """Output channels of each group's first block (None when a shape is already broken)."""
    channels: list[int | None] = []
    c: int | None = arch.input_shape[2]
    for group in arch.groups():
        for layer in arch.conv_blocks[group[0]].layers:
            c = None if c is None else layer.out_channels(c)
        channels.append(c)
    return channels


def forced_layers(arch: Architecture) -> set[tuple[int, int]]:
    """(block, layer) positions whose filter count the branch rule fixes."""
    return {(b, len(arch.conv_blocks[b].layers) - 1) for group in arch.groups() for b in group[1:]}
