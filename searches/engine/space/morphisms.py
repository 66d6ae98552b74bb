"""μNAS's single-edit morphisms: every applicable edit of a parent, one picked per mutation.

Mutation enumerates every applicable single edit of a parent, groups them into categories,
picks a category uniformly and then an edit uniformly inside it, so that the many ±1 filter
tweaks do not drown structural edits.  Every child is repaired
(:func:`searches.engine.space.sampling.repair`) and validated; a child that still breaks a
rule is returned as a rejection carrying the validator's reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from searches.engine.space import arch as A
from searches.engine.space.arch import Architecture, ArchitectureError, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.space.sampling import (
    SpaceConfig,
    count_ops,
    forced_layers,
    random_block,
    random_layer,
    random_pooling,
    repair,
)

CATEGORIES: tuple[str, ...] = ("blocks", "layer", "filters", "pooling", "dense")
FILTER_STEPS: tuple[int, ...] = (-5, -3, -1, 1, 3, 5)


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
