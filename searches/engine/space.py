"""μNAS's search space: random sampling and single-edit morphisms.

Sampling draws every discrete parameter uniformly over its *inclusive* range (μNAS's
sampler never returns an upper bound; nasweb's does).  Mutation enumerates every
applicable single edit of a parent, groups them into categories, picks a category
uniformly and then an edit uniformly inside it, so that the many ±1 filter tweaks do not
drown structural edits.  Every child is repaired (a branch's last layer takes its
group's channel count; the first block is never a branch) and validated; a child that
still breaks a rule is returned as a rejection carrying the validator's reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from searches.engine import arch as A
from searches.engine.arch import Architecture, ArchitectureError, ConvBlock, ConvLayer, Dense, Pooling

CATEGORIES: tuple[str, ...] = ("blocks", "layer", "filters", "pooling", "dense")
FILTER_STEPS: tuple[int, ...] = (-5, -3, -1, 1, 3, 5)


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


@dataclass(frozen=True)
class Edit:
    category: str
    description: str
    apply: Callable[[Architecture], Architecture] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Mutation:
    """The result of one mutation: a valid child, or the reason the edit was rejected."""

    description: str
    child: Architecture | None = None
    reject_reason: str | None = None


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


# ---- morphisms ---------------------------------------------------------------------------


def enumerate_edits(arch: Architecture, rng: random.Random, config: SpaceConfig) -> list[Edit]:
    """Every applicable single edit of ``arch``; random content (new layers, blocks) is drawn now."""
    return [
        *_block_edits(arch, rng, config),
        *_layer_edits(arch),
        *_filter_edits(arch),
        *_pooling_edits(arch, rng, config),
        *_dense_edits(arch),
    ]


def _set_blocks(blocks: list[ConvBlock]) -> Callable[[Architecture], Architecture]:
    return lambda a: a.with_blocks(blocks)


def _block_edits(arch: Architecture, rng: random.Random, config: SpaceConfig) -> list[Edit]:
    blocks = list(arch.conv_blocks)
    edits = []
    n = len(blocks)
    if n < A.MAX_BLOCKS:
        new = random_block(rng, config, branch=rng.random() < config.p_branch)
        edits.append(Edit("blocks", f"append block ({len(new.layers)} layers)", _set_blocks([*blocks, new])))
    for b, block in enumerate(blocks):
        if n > A.MIN_BLOCKS:
            edits.append(Edit("blocks", f"remove block {b}", _set_blocks(blocks[:b] + blocks[b + 1 :])))
        if b > 0:
            flipped = replace(block, branch=not block.branch)
            what = "make block {b} a branch" if not block.branch else "make block {b} sequential"
            edits.append(
                Edit("blocks", what.format(b=b), _set_blocks([*blocks[:b], flipped, *blocks[b + 1 :]]))
            )
        for i in range(len(block.layers)):
            if len(block.layers) > A.MIN_LAYERS:
                layers = block.layers[:i] + block.layers[i + 1 :]
                edits.append(Edit("blocks", f"remove layer b{b}l{i}", _replace_layers(blocks, b, layers)))
        if len(block.layers) < A.MAX_LAYERS:
            pos = rng.randint(0, len(block.layers))
            layers = (*block.layers[:pos], random_layer(rng, config), *block.layers[pos:])
            edits.append(Edit("blocks", f"insert layer b{b}l{pos}", _replace_layers(blocks, b, layers)))
    return edits


def _replace_layers(
    blocks: list[ConvBlock], b: int, layers: tuple[ConvLayer, ...]
) -> Callable[[Architecture], Architecture]:
    return _set_blocks([*blocks[:b], replace(blocks[b], layers=tuple(layers)), *blocks[b + 1 :]])


def _with_layer(
    arch: Architecture, b: int, i: int, layer: ConvLayer
) -> Callable[[Architecture], Architecture]:
    block = arch.conv_blocks[b]
    layers = (*block.layers[:i], layer, *block.layers[i + 1 :])
    return _replace_layers(list(arch.conv_blocks), b, layers)


def _layer_edits(arch: Architecture) -> list[Edit]:
    edits = []
    for b, block in enumerate(arch.conv_blocks):
        for i, layer in enumerate(block.layers):
            name = f"b{b}l{i}"
            for flag in ("batchnorm", "relu", "pre_pool"):
                value = not getattr(layer, flag)
                edits.append(
                    Edit(
                        "layer",
                        f"{name}: {flag} {'on' if value else 'off'}",
                        _with_layer(arch, b, i, _with_flag(layer, flag, value)),
                    )
                )
            padding: Literal["same", "valid"] = "valid" if layer.padding == "same" else "same"
            edits.append(
                Edit(
                    "layer",
                    f"{name}: padding {padding}",
                    _with_layer(arch, b, i, replace(layer, padding=padding)),
                )
            )
            for op in A.OPS:
                if op != layer.op:
                    edits.append(
                        Edit(
                            "layer",
                            f"{name}: op {layer.op} -> {op}",
                            _with_layer(arch, b, i, _convert_op(layer, op)),
                        )
                    )
            if layer.op != "conv1x1":
                for step in (-2, 2):
                    if layer.kernel + step in A.KERNELS:
                        edits.append(
                            Edit(
                                "layer",
                                f"{name}: kernel {layer.kernel + step}",
                                _with_layer(arch, b, i, replace(layer, kernel=layer.kernel + step)),
                            )
                        )
                stride = 3 - layer.stride
                edits.append(
                    Edit(
                        "layer",
                        f"{name}: stride {stride}",
                        _with_layer(arch, b, i, replace(layer, stride=stride)),
                    )
                )
    return edits


def _convert_op(layer: ConvLayer, op: str) -> ConvLayer:
    """Change a layer's op, carrying over what the new op can keep."""
    if op == "conv1x1":
        return replace(layer, op="conv1x1", kernel=1, stride=1, filters=layer.filters or 8)
    kernel = layer.kernel if layer.kernel in A.KERNELS else 3
    filters = None if op == "dwconv2d" else (layer.filters or 8)
    return replace(layer, op=op, kernel=kernel, filters=filters)  # type: ignore[arg-type]


def _filter_edits(arch: Architecture) -> list[Edit]:
    forced = forced_layers(arch)
    edits = []
    for b, block in enumerate(arch.conv_blocks):
        for i, layer in enumerate(block.layers):
            if layer.filters is None or (b, i) in forced:
                continue
            for step in FILTER_STEPS:
                value = layer.filters + step
                if A.MIN_FILTERS <= value <= A.MAX_FILTERS:
                    edits.append(
                        Edit(
                            "filters",
                            f"b{b}l{i}: filters {step:+d}",
                            _with_layer(arch, b, i, replace(layer, filters=value)),
                        )
                    )
    return edits


def _pooling_edits(arch: Architecture, rng: random.Random, config: SpaceConfig) -> list[Edit]:
    p = arch.pooling
    if p is None:
        new = random_pooling(rng, config)
        return [Edit("pooling", f"add {new.type} pooling {new.size}", _set_pooling(new))]
    other: Literal["avg", "max"] = "max" if p.type == "avg" else "avg"
    edits = [
        Edit("pooling", "remove pooling", _set_pooling(None)),
        Edit("pooling", f"pooling type {other}", _set_pooling(replace(p, type=other))),
    ]
    sizes: list[int | Literal["global"]] = [*A.POOL_SIZES, "global"]
    pos = sizes.index(p.size)
    for step in (-1, 1):
        if 0 <= pos + step < len(sizes):
            size = sizes[pos + step]
            edits.append(
                Edit(
                    "pooling",
                    f"pooling size {size}",
                    _set_pooling(replace(p, size=size)),
                )
            )
    return edits


def _set_pooling(pooling: Pooling | None) -> Callable[[Architecture], Architecture]:
    return lambda a: replace(a, pooling=pooling)


def _set_dense(dense: tuple[Dense, ...]) -> Callable[[Architecture], Architecture]:
    return lambda a: replace(a, dense=dense)


def _with_flag(layer: ConvLayer, flag: str, value: bool) -> ConvLayer:
    if flag == "batchnorm":
        return replace(layer, batchnorm=value)
    if flag == "relu":
        return replace(layer, relu=value)
    return replace(layer, pre_pool=value)


def _dense_edits(arch: Architecture) -> list[Edit]:
    dense = list(arch.dense)
    edits = []
    if len(dense) < A.MAX_DENSE:
        units = dense[-1].units if dense else 64
        edits.append(Edit("dense", f"append dense {units}", _set_dense((*dense, Dense(units)))))
    for j, d in enumerate(dense):
        edits.append(
            Edit(
                "dense",
                f"remove dense{j}",
                _set_dense(tuple(dense[:j] + dense[j + 1 :])),
            )
        )
        for step in FILTER_STEPS:
            value = d.units + step
            if A.MIN_UNITS <= value <= A.MAX_UNITS:
                new = (*dense[:j], Dense(value), *dense[j + 1 :])
                edits.append(Edit("dense", f"dense{j}: units {step:+d}", _set_dense(new)))
    return edits


def apply_edit(arch: Architecture, edit: Edit, config: SpaceConfig) -> Mutation:
    """Apply ``edit``, repair, validate: a valid child or a rejection with the reason."""
    child = repair(edit.apply(arch))
    try:
        A.validate(child)
    except ArchitectureError as exc:
        return Mutation(edit.description, reject_reason=str(exc))
    if config.max_ops is not None and count_ops(child) > config.max_ops:
        return Mutation(
            edit.description, reject_reason=f"{count_ops(child)} ops exceed the limit of {config.max_ops}"
        )
    return Mutation(edit.description, child=child)


def mutate(arch: Architecture, rng: random.Random, config: SpaceConfig) -> Mutation:
    """Pick a category uniformly, then one of its edits uniformly, and apply it."""
    edits = enumerate_edits(arch, rng, config)
    by_category: dict[str, list[Edit]] = {}
    for edit in edits:
        by_category.setdefault(edit.category, []).append(edit)
    category = rng.choice([c for c in CATEGORIES if c in by_category])
    return apply_edit(arch, rng.choice(by_category[category]), config)
