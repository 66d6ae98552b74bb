"""MemNAS's grow and trim children of a backbone, on μNAS's search space."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from searches.engine.space import arch as A
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.space.morphisms import Edit, Mutation, apply_edit
from searches.engine.space.sampling import SpaceConfig

Width = Literal["same", "double", "half"]


# ---- grow and trim ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GrowLayer:
    """The layer appended in a grow step: the same op, kernel and stride everywhere, a width rule."""

    name: str
    op: A.OpName
    kernel: int
    width: Width = "same"
    stride: int = 1

    def build(self, channels: int) -> ConvLayer:
        """The concrete layer for a block whose output has ``channels`` channels."""
        if self.op == "dwconv2d":
            filters = None
        elif self.width == "double":
            filters = min(2 * channels, A.MAX_FILTERS)
        elif self.width == "half":
            filters = max(channels // 2, A.MIN_FILTERS)
        else:
            filters = min(channels, A.MAX_FILTERS)
        return ConvLayer(self.op, self.kernel, filters, self.stride, "same", False, True, True)


GROW_LAYERS: tuple[GrowLayer, ...] = (
    GrowLayer("conv3x3", "conv2d", 3),
    GrowLayer("conv3x3 x2", "conv2d", 3, "double"),
    GrowLayer("conv5x5", "conv2d", 5),
    GrowLayer("conv3x3 stride 2", "conv2d", 3, stride=2),
    GrowLayer("conv1x1", "conv1x1", 1),
    GrowLayer("conv1x1 x2", "conv1x1", 1, "double"),
    GrowLayer("conv1x1 /2", "conv1x1", 1, "half"),
    GrowLayer("dwconv3x3", "dwconv2d", 3),
)


def block_channels(arch: Architecture) -> list[int]:
    """Output channels of every conv block."""
    return [shape[2] for shape in A.validate(arch)]


def grow_edits(arch: Architecture, layers: Sequence[GrowLayer] = GROW_LAYERS) -> list[Edit]:
    """Every grow step: a layer appended to every block with room, a new block, a new branch."""
    blocks = list(arch.conv_blocks)
    channels = block_channels(arch)
    last = arch.groups()[-1]
    group_input = channels[last[0] - 1] if last[0] > 0 else arch.input_shape[2]
    edits = []
    for g in layers:
        grown = [
            replace(block, layers=(*block.layers, g.build(c))) if len(block.layers) < A.MAX_LAYERS else block
            for block, c in zip(blocks, channels, strict=True)
        ]
        if grown != blocks:
            edits.append(Edit("grow", f"grow: append {g.name} to every block", _blocks(grown)))
        if len(blocks) < A.MAX_BLOCKS:
            block = ConvBlock((g.build(channels[-1]),))
            edits.append(Edit("grow", f"grow: append block {g.name}", _blocks([*blocks, block])))
            branch = ConvBlock((g.build(group_input),), branch=True)
            what = f"grow: add branch {g.name} beside block {last[0]}"
            edits.append(Edit("grow", what, _blocks([*blocks, branch])))
    return edits


def trim_edits(arch: Architecture) -> list[Edit]:
    """Every trim step: remove one layer (a one-layer block goes), one branch block, one dense layer."""
    blocks = list(arch.conv_blocks)
    edits = []
    for b, block in enumerate(blocks):
        without_block = blocks[:b] + blocks[b + 1 :]
        if block.branch:
            edits.append(Edit("trim", f"trim: remove edge (branch block {b})", _blocks(without_block)))
        if len(block.layers) > 1:
            for i in range(len(block.layers)):
                layers = block.layers[:i] + block.layers[i + 1 :]
                trimmed = [*blocks[:b], replace(block, layers=layers), *blocks[b + 1 :]]
                edits.append(Edit("trim", f"trim: remove layer b{b}l{i}", _blocks(trimmed)))
        elif not block.branch and len(blocks) > 1:
            edits.append(Edit("trim", f"trim: remove block {b} (its only layer)", _blocks(without_block)))
    for j in range(len(arch.dense)):
        dense = arch.dense[:j] + arch.dense[j + 1 :]
        edits.append(Edit("trim", f"trim: remove dense{j}", _dense(dense)))
    return edits


def _blocks(blocks: list[ConvBlock]) -> Callable[[Architecture], Architecture]:
    return lambda a: a.with_blocks(blocks)


def _dense(dense: tuple[Dense, ...]) -> Callable[[Architecture], Architecture]:
    return lambda a: replace(a, dense=dense)


def children(
    arch: Architecture, config: SpaceConfig, *, grow: bool = True, trim: bool = True
) -> list[Mutation]:
    """The valid grow and trim children of ``arch``, repaired; the first of each function is kept.

    Children that compute the same network as ``arch`` or as an earlier child (appending a
    layer to the only block and appending a block are one network) are left out.
    """
    edits = [*(grow_edits(arch) if grow else []), *(trim_edits(arch) if trim else [])]
    keys = {function_key(arch)}
    valid = []
    for edit in edits:
        mutation = apply_edit(arch, edit, config)
        if mutation.child is None or function_key(mutation.child) in keys:
            continue
        keys.add(function_key(mutation.child))
        valid.append(mutation)
    return valid


def function_key(arch: Architecture) -> str:
    """A key shared by architectures that compute the same function at the same cost.

    The canonical key of :meth:`Architecture.key` (which also joins blocks that only split a
    sequential chain, the case MemNAS's grow steps produce most).
    """
    return arch.key()


def function_hash(arch: Architecture) -> str:
    # Kept in the strategy's set of seen hashes beside the structural ones; the prefix keeps
    # the two kinds apart.
    return "f" + hashlib.sha256(function_key(arch).encode()).hexdigest()[:31]


def minimal_backbone(config: SpaceConfig) -> Architecture:
    """MemNAS's small seed: one 3x3 conv with 8 filters, batchnorm and ReLU, global average pooling."""
    layer = ConvLayer("conv2d", 3, 8, 1, "same", False, True, True)
    return Architecture(
        tuple(config.input_shape),  # type: ignore[arg-type]
        config.classes,
        (ConvBlock((layer,)),),
        Pooling("avg", "global"),
    )


# ---- round 0 ------------------------------------------------------------------------------------

# The first and second layer of a round-0 network: MemNAS's single-cell networks are one per
# pair of operations; these are the analogue on μNAS's space.
ROUND0_LAYERS: tuple[GrowLayer, ...] = (
    GrowLayer("conv3x3", "conv2d", 3),
    GrowLayer("conv3x3 stride 2", "conv2d", 3, stride=2),
    GrowLayer("conv5x5", "conv2d", 5),
    GrowLayer("conv1x1", "conv1x1", 1),
    GrowLayer("dwconv3x3", "dwconv2d", 3),
)
ROUND0_WIDTHS: tuple[int, ...] = (8, 16)


def single_block_network(
    config: SpaceConfig, first: GrowLayer, second: GrowLayer, width: int
) -> Architecture:
    """One conv block of two layers (``first`` at ``width`` channels, then ``second``), global pooling."""
    channels = config.input_shape[2] if first.op == "dwconv2d" else width
    a = first.build(channels)
    b = second.build(channels)
    return Architecture(
        tuple(config.input_shape),  # type: ignore[arg-type]
        config.classes,
        (ConvBlock((a, b)),),
        Pooling("avg", "global"),
    )


def single_block_networks(
    config: SpaceConfig, count: int, order: Sequence[int]
) -> list[tuple[str, Architecture]]:
    """``count`` diverse round-0 networks: every op as early as possible, then the other pairs.

    ``order`` is a permutation of the (first, second, width) combinations (the caller draws it
    from its seeded RNG); a greedy pick takes, in that order, the combination whose two ops have
    been used least so far, so that a small round still covers every op.
    """
    combos = [(f, s, w) for f in ROUND0_LAYERS for s in ROUND0_LAYERS for w in ROUND0_WIDTHS]
    if sorted(order) != list(range(len(combos))):
        raise ValueError(f"order must be a permutation of range({len(combos)})")
    remaining = [combos[i] for i in order]
    used: dict[str, int] = {layer.name: 0 for layer in ROUND0_LAYERS}
    picked: list[tuple[str, Architecture]] = []
    keys: set[str] = set()
    while remaining and len(picked) < count:
        best = min(
            range(len(remaining)), key=lambda i: used[remaining[i][0].name] + used[remaining[i][1].name]
        )
        first, second, width = remaining.pop(best)
        try:
            arch = single_block_network(config, first, second, width)
            A.validate(arch)
        except A.ArchitectureError:
            continue
        key = function_key(arch)
        if key in keys:
            continue  # e.g. the width of a depthwise-first pair does not change the network
        keys.add(key)
        used[first.name] += 1
        used[second.name] += 1
        channels = arch.conv_blocks[0].layers[0].out_channels(config.input_shape[2])
        picked.append((f"{first.name} → {second.name} ({channels} ch)", arch))
    return picked


def round0_combinations() -> int:
    """How many (first, second, width) combinations :func:`single_block_networks` orders."""
    return len(ROUND0_LAYERS) ** 2 * len(ROUND0_WIDTHS)
