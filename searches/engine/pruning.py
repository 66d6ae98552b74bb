"""Structured pruning with Dynamic Pruning with Feedback (DPF, Lin et al. 2020), as μNAS uses it.

A trained candidate is fine-tuned while a growing fraction of its channels is masked; at the
end the masked channels are removed for real, giving a smaller :class:`Architecture` and a
model whose float outputs equal the masked model's.

Which channels can go (μNAS's structured mode):

* the output channels of conv2d/conv1x1 layers and the units of hidden dense layers;
* not the layers that read the input image (μNAS's "first layer"), nor the classifier;
* a depthwise layer has no channels of its own: it follows its input's, so removing an input
  channel removes its depthwise kernel too;
* channels that meet at an Add (the last layer of every block of a branch group, and so
  everything reading the sum) are one *tied* channel: kept or removed together.

:func:`channel_map` works these *channel groups* out from the architecture.  A channel's
saliency is the L2 norm of its output weights (root mean square over the layers of a tied
group: a plain sum would shield tied channels only because they have more weights), divided
by its group's mean so that one global threshold compares layers fairly (see :func:`saliency`).

Masks follow a global threshold: at sparsity ``s`` the ``s·N`` least salient of the ``N``
prunable channels are masked, never emptying a layer (a conv keeps >= 1 filter, a dense layer
its space's minimum of units).  ``s`` follows the cubic schedule
``s_t = s_f·(1 - (1 - (e - t0)/(tn - t0))³)`` over fractional epochs ``e`` and masks are
recomputed every 16 iterations inside ``[t0, tn]``, then frozen for the remaining fine-tuning.

Feedback.  DPF computes the gradient at the masked model and applies it to the dense weights,
so a channel masked now can win its place back at the next mask update.  Swapping masked
weights in and the dense ones back before ``optimizer.step()`` would not do that for a whole
channel: a masked channel's output is exactly zero (weights, bias *and* batchnorm affine
masked, or its removal would change the outputs), and batchnorm's zero gain and ReLU's zero
slope at 0 make the true gradient of all its weights zero.  DPF's update is a straight-through
estimate of the mask (∂(m⊙w)/∂w taken as 1), so :class:`MaskedNet` applies the mask where a
channel leaves its layer, with the same straight-through rule: the forward pass multiplies
the channel by 0 (the masked model, exactly), the backward pass hands the gradient arriving at
the masked channel to the channel's dense weights, computed on the layer's *detached* input so
that no masked channel leaks gradient into the layers before it.  A depthwise layer's masked
channel is fed the dense value of its input channel, so the conv feeding it gets feedback too.
Parameters are never overwritten: the optimizer always updates the dense weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from searches.engine import arch as A
from searches.engine.arch import Architecture, ConvBlock, Dense, feature_shape
from searches.engine.datasets import Dataset
from searches.engine.resources import analyze

# The sparsity gene lives with the search that mutates it; re-exported for pruning's users.
from searches.engine.search import MAX_SPARSITY
from searches.engine.search import SPARSITY_SIGMA as SPARSITY_SIGMA
from searches.engine.search import mutate_sparsity as mutate_sparsity
from searches.engine.search import random_sparsity as random_sparsity
from searches.engine.training import (
    STOP_POLL_SECONDS,
    ArchNet,
    ConvUnit,
    Fidelity,
    TrainingStopped,
    _check_compatible,
    _lr_at,
    _optimizer,
    _torch_state,
    accuracy,
    build_model,
    default_threads,
    split_indices,
    to_nchw,
)

MASK_INTERVAL = 16  # iterations between mask updates (DPF, μNAS)
RESOURCES: tuple[str, ...] = ("peak_sram_bytes", "flash_bytes", "macs", "params")

Pos = tuple[int, int]  # (block, layer) of a conv layer
Masks = dict[int, torch.Tensor]  # channel group index -> bool "keep" vector


class PruneError(ValueError):
    """A pruning request that cannot be met (the message says why and by how much)."""


# ---- channel groups -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that share one mask: one layer's outputs, or several layers tied by an Add.

    ``convs`` are the conv2d/conv1x1 layers writing these channels (their weights give the
    saliency), ``depthwise`` the depthwise layers carrying them on, ``dense`` the hidden dense
    layer when the group is its units.  ``min_keep`` channels always survive.
    """

    size: int
    convs: tuple[Pos, ...] = ()
    depthwise: tuple[Pos, ...] = ()
    dense: int | None = None
    prunable: bool = False
    min_keep: int = 1


@dataclass(frozen=True, eq=False)
class ChannelMap:
    """Where every conv layer reads and writes, and what every linear layer reads.

    ``linear_in`` maps ``dense.{i}``/``logits`` to (channel group, positions): a flattened
    feature map holds ``positions`` pixels of the group's channels in H, W, C order.
    ``sources`` are the layers whose (summed) outputs a conv layer reads.  A conv layer may
    read and write the same group (its output is added to its own input's channels).
    """

    groups: tuple[ChannelGroup, ...]
    conv_in: dict[Pos, int]
    conv_out: dict[Pos, int]
    linear_in: dict[str, tuple[int, int]]
    depthwise: frozenset[Pos]
    sources: dict[Pos, tuple[Pos, ...]] = field(repr=False)

    @property
    def prunable(self) -> list[int]:
        """Indices of the groups pruning may shrink."""
        return [g for g, group in enumerate(self.groups) if group.prunable]

    @property
    def total(self) -> int:
        """Number of prunable channels (tied channels count once): the sparsity denominator."""
        return sum(self.groups[g].size for g in self.prunable)

    @property
    def removable(self) -> int:
        """Most channels pruning can remove while every layer keeps its minimum."""
        return sum(self.groups[g].size - self.groups[g].min_keep for g in self.prunable)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def channel_map(arch: Architecture) -> ChannelMap:
    """The channel groups of ``arch`` and which layers read and write them."""
    A.validate(arch)
    uf = _UnionFind()
    sizes: list[int] = []
    fixed: list[bool] = []

    def new(size: int, is_fixed: bool) -> int:
        sizes.append(size)
        fixed.append(is_fixed)
        return uf.add()

    image = new(arch.input_shape[2], True)
    conv_in: dict[Pos, int] = {}
    conv_out: dict[Pos, int] = {}
    sources: dict[Pos, tuple[Pos, ...]] = {}
    depthwise: set[Pos] = set()
    current, current_src = image, cast(tuple[Pos, ...], ())
    for g, group in enumerate(arch.groups()):
        outs: list[int] = []
        lasts: list[Pos] = []
        for b in group:
            src, src_units = current, current_src
            for i, layer in enumerate(arch.conv_blocks[b].layers):
                conv_in[(b, i)] = src
                sources[(b, i)] = src_units
                if layer.op == "dwconv2d":
                    depthwise.add((b, i))
                else:
                    # Layers reading the image are μNAS's excluded first layer.
                    src = new(int(layer.filters or 0), g == 0 and i == 0)
                conv_out[(b, i)] = src
                src_units = ((b, i),)
            outs.append(src)
            lasts.append((b, len(arch.conv_blocks[b].layers) - 1))
        for other in outs[1:]:
            uf.union(outs[0], other)
        current, current_src = outs[0], tuple(lasts)

    roots = sorted({uf.find(i) for i in range(len(sizes))})
    index = {r: k for k, r in enumerate(roots)}
    group_fixed = [False] * len(roots)
    for i, f in enumerate(fixed):
        group_fixed[index[uf.find(i)]] |= f
    conv_in = {p: index[uf.find(s)] for p, s in conv_in.items()}
    conv_out = {p: index[uf.find(s)] for p, s in conv_out.items()}
    groups: list[ChannelGroup] = []
    for k, root in enumerate(roots):
        dw = tuple(p for p in conv_out if conv_out[p] == k and p in depthwise)
        convs = tuple(p for p in conv_out if conv_out[p] == k and p not in depthwise)
        groups.append(ChannelGroup(sizes[root], convs, dw, None, not group_fixed[k] and bool(convs), 1))

    h, w, _ = feature_shape(arch)
    reader: tuple[int, int] = (index[uf.find(current)], h * w)
    linear_in: dict[str, tuple[int, int]] = {}
    for i, d in enumerate(arch.dense):
        linear_in[f"dense.{i}"] = reader
        groups.append(ChannelGroup(d.units, dense=i, prunable=True, min_keep=min(A.MIN_UNITS, d.units)))
        reader = (len(groups) - 1, 1)
    linear_in["logits"] = reader
    return ChannelMap(tuple(groups), conv_in, conv_out, linear_in, frozenset(depthwise), sources)


# ---- saliency and masks ------------------------------------------------------------------------


def _unit(model: ArchNet, pos: Pos) -> ConvUnit:
    unit = model.blocks[pos[0]][pos[1]]  # type: ignore[index]
    assert isinstance(unit, ConvUnit)
    return unit


@torch.no_grad()
def saliency(model: ArchNet, cmap: ChannelMap) -> dict[int, torch.Tensor]:
    """Per-channel L2 norm of the output weights of every prunable group, relative to its mean.

    Tied layers combine by root mean square.  Dividing by the group's mean makes one global
    threshold comparable across layers: behind batchnorm a layer's weight scale means nothing
    (measured on digits, raw norms put whole BN layers below every dense unit, and a global
    threshold then cut a trunk to one channel).
    """
    result: dict[int, torch.Tensor] = {}
    for g in cmap.prunable:
        group = cmap.groups[g]
        if group.dense is not None:
            weights = [cast(nn.Linear, model.dense[group.dense]).weight]
        else:
            weights = [_unit(model, p).conv.weight for p in group.convs]
        squares = torch.stack([w.detach().flatten(1).double().pow(2).sum(1) for w in weights])
        norms = squares.mean(0).sqrt()
        result[g] = norms / norms.mean().clamp_min(1e-12)
    return result


def removal_order(
    cmap: ChannelMap, scores: dict[int, torch.Tensor], removed: Masks | None = None
) -> list[tuple[int, int]]:
    """(group, channel) in the order a rising global threshold removes them, minimums respected.

    The masks at any sparsity are a prefix of this list, so more sparsity never brings a
    channel back within one set of saliencies.  Channels ``removed`` already masks come first.
    """
    order = [(g, c) for g, keep in (removed or {}).items() for c in torch.nonzero(~keep).flatten().tolist()]
    taken = set(order)
    left = {g: cmap.groups[g].size - sum(1 for h, _ in order if h == g) for g in scores}
    candidates = sorted(
        (float(score), g, c)
        for g, values in scores.items()
        for c, score in enumerate(values.tolist())
        if (g, c) not in taken
    )
    for _, g, c in candidates:
        if left[g] > cmap.groups[g].min_keep:
            left[g] -= 1
            order.append((g, c))
    return order


def masks_for(cmap: ChannelMap, order: list[tuple[int, int]], removed: int) -> Masks:
    """Keep-masks removing the first ``removed`` channels of ``order``."""
    masks = {g: torch.ones(cmap.groups[g].size, dtype=torch.bool) for g in cmap.prunable}
    for g, c in order[:removed]:
        masks[g][c] = False
    return masks


def channels_to_remove(cmap: ChannelMap, sparsity: float) -> int:
    """How many channels sparsity ``sparsity`` removes (capped where every layer hits its minimum)."""
    return min(round(sparsity * cmap.total), cmap.removable)


def compute_masks(model: ArchNet, cmap: ChannelMap, sparsity: float) -> Masks:
    """Masks from a global saliency threshold removing ``sparsity`` of the prunable channels."""
    order = removal_order(cmap, saliency(model, cmap))
    return masks_for(cmap, order, channels_to_remove(cmap, sparsity))


def masked_sparsity(cmap: ChannelMap, masks: Masks) -> float:
    """Fraction of the prunable channels that ``masks`` remove."""
    removed = sum(int((~m).sum()) for m in masks.values())
    return removed / cmap.total if cmap.total else 0.0


def cubic_sparsity(epoch: float, final: float, start: float, finish: float) -> float:
    """DPF's schedule s_f·(1 - (1 - (e - t0)/(tn - t0))³): 0 before ``start``, ``final`` from ``finish``."""
    if epoch < start:
        return 0.0
    if epoch >= finish:
        return final
    return final * (1.0 - (1.0 - (epoch - start) / (finish - start)) ** 3)


# ---- the masked model ---------------------------------------------------------------------------


def _unit_channels(unit: ConvUnit, x: torch.Tensor, idx: torch.Tensor, depthwise: bool) -> torch.Tensor:
    """Channels ``idx`` of a conv unit's output, computed with its dense weights (batch statistics).

    For a depthwise unit ``x`` holds only the input channels ``idx``.
    """
    if unit.pre_pool:
        x = F.max_pool2d(x, 2, 2)
    if unit.pad is not None:
        x = F.pad(x, unit.pad)
    conv = unit.conv
    bias = conv.bias[idx] if conv.bias is not None else None
    padding = cast(tuple[int, int], conv.padding)
    y = F.conv2d(x, conv.weight[idx], bias, conv.stride, padding, 1, len(idx) if depthwise else 1)
    if unit.bn is not None:
        bn = unit.bn
        gamma = bn.weight[idx] if bn.weight is not None else None
        beta = bn.bias[idx] if bn.bias is not None else None
        y = F.batch_norm(y, None, None, gamma, beta, training=True, eps=bn.eps)
    return F.relu(y) if unit.relu else y


class MaskedNet:
    """Gates an :class:`ArchNet`'s channels with masks while active (``with MaskedNet(...):``).

    Masked channels leave their layer as exact zeros, so the model computes the pruned
    network.  With ``feedback`` (DPF) and gradients on in training mode, the gradient that
    reaches a masked channel also flows to that channel's dense weights (straight-through);
    without it a masked channel's weights get no gradient at all.
    """

    def __init__(self, model: ArchNet, cmap: ChannelMap, masks: Masks | None = None, feedback: bool = True):
        self.model = model
        self.cmap = cmap
        self.feedback = feedback
        self._keep: dict[int, torch.Tensor] = {}
        self._drop: dict[int, torch.Tensor] = {}
        self._shadows: dict[Pos, torch.Tensor] = {}
        self._dense_inputs: dict[int, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self.set_masks(masks or {})

    def set_masks(self, masks: Masks) -> None:
        """Use ``masks`` from the next forward pass on (groups left out keep every channel)."""
        self._keep, self._drop = {}, {}
        for g, keep in masks.items():
            if not bool(keep.all()):
                self._keep[g] = keep.float()
                self._drop[g] = torch.nonzero(~keep).flatten()

    def __enter__(self) -> MaskedNet:
        model = self.model
        self._handles.append(model.register_forward_pre_hook(lambda *_: self._shadows.clear()))
        for pos in self.cmap.conv_out:
            self._handles.append(_unit(model, pos).register_forward_hook(self._conv_hook(pos)))
        for g in self.cmap.prunable:
            i = self.cmap.groups[g].dense
            if i is None:
                continue
            consumer = model.dense[i + 1] if i + 1 < len(model.dense) else model.logits
            self._handles.append(model.dense[i].register_forward_pre_hook(self._stash_hook(i)))
            self._handles.append(consumer.register_forward_pre_hook(self._dense_hook(g, i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._shadows.clear()
        self._dense_inputs.clear()

    def _feeding_back(self) -> bool:
        return self.feedback and self.model.training and torch.is_grad_enabled()

    def _conv_hook(self, pos: Pos) -> Callable[..., torch.Tensor | None]:
        g = self.cmap.conv_out[pos]
        depthwise = pos in self.cmap.depthwise

        def hook(
            unit: ConvUnit, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor | None:
            keep = self._keep.get(g)
            if keep is None:
                return None
            gated = output * keep.view(1, -1, 1, 1)
            if not self._feeding_back():
                return gated
            drop = self._drop[g]
            if depthwise:
                # The dense value of the masked input channels: the feeding layers' shadows.
                x = sum(
                    (self._shadows[p] for p in self.cmap.sources[pos][1:]),
                    self._shadows[self.cmap.sources[pos][0]],
                )
            else:
                x = inputs[0].detach()
            shadow = _unit_channels(unit, x, drop, depthwise)
            self._shadows[pos] = shadow
            return gated.index_add(1, drop, shadow - shadow.detach())

        return hook

    def _stash_hook(self, i: int) -> Callable[..., None]:
        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            self._dense_inputs[i] = inputs[0]

        return hook

    def _dense_hook(self, g: int, i: int) -> Callable[..., tuple[torch.Tensor] | None]:
        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor] | None:
            keep = self._keep.get(g)
            if keep is None:
                return None
            gated = inputs[0] * keep
            if not self._feeding_back():
                return (gated,)
            drop = self._drop[g]
            layer = cast(nn.Linear, self.model.dense[i])
            bias = layer.bias[drop] if layer.bias is not None else None
            shadow = F.relu(F.linear(self._dense_inputs[i].detach(), layer.weight[drop], bias))
            return (gated.index_add(1, drop, shadow - shadow.detach()),)

        return hook


# ---- physical removal ---------------------------------------------------------------------------


def pruned_architecture(arch: Architecture, cmap: ChannelMap, masks: Masks) -> Architecture:
    """``arch`` with the masked channels removed (fewer filters and dense units)."""

    def kept(g: int, default: int) -> int:
        return int(masks[g].sum()) if g in masks else default

    blocks = []
    for b, block in enumerate(arch.conv_blocks):
        layers = tuple(
            layer
            if layer.op == "dwconv2d"
            else replace(layer, filters=kept(cmap.conv_out[(b, i)], int(layer.filters or 0)))
            for i, layer in enumerate(block.layers)
        )
        blocks.append(ConvBlock(layers, block.branch))
    dense = []
    for g in cmap.prunable:
        i = cmap.groups[g].dense
        if i is not None:
            dense.append((i, Dense(kept(g, arch.dense[i].units))))
    return replace(arch, conv_blocks=tuple(blocks), dense=tuple(d for _, d in sorted(dense)))


def _keep_index(cmap: ChannelMap, masks: Masks, g: int) -> torch.Tensor:
    if g in masks:
        return torch.nonzero(masks[g]).flatten()
    return torch.arange(cmap.groups[g].size)


def pruned_state(model: ArchNet, cmap: ChannelMap, masks: Masks) -> dict[str, torch.Tensor]:
    """The surviving slices of every weight, bias and batchnorm statistic."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for (b, i), g_out in cmap.conv_out.items():
        g_in = cmap.conv_in[(b, i)]
        out = _keep_index(cmap, masks, g_out)
        prefix = f"blocks.{b}.{i}."
        if (b, i) in cmap.depthwise:  # one kernel per channel, (C, 1, k, k)
            state[prefix + "conv.weight"] = state[prefix + "conv.weight"][out]
        else:
            w = state[prefix + "conv.weight"][out]
            state[prefix + "conv.weight"] = w[:, _keep_index(cmap, masks, g_in)]
        for name in ("conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            if prefix + name in state:
                state[prefix + name] = state[prefix + name][out]
    for name, (g_in, positions) in cmap.linear_in.items():
        keep_in = masks.get(g_in, torch.ones(cmap.groups[g_in].size, dtype=torch.bool))
        # Flattened H, W, C: column p·C + c holds channel c of pixel p.
        columns = torch.nonzero(keep_in.repeat(positions)).flatten()
        state[f"{name}.weight"] = state[f"{name}.weight"][:, columns]
    for g in cmap.prunable:
        d = cmap.groups[g].dense
        if d is not None:
            rows = _keep_index(cmap, masks, g)
            state[f"dense.{d}.weight"] = state[f"dense.{d}.weight"][rows]
            state[f"dense.{d}.bias"] = state[f"dense.{d}.bias"][rows]
    return {k: v.contiguous() for k, v in state.items()}


def apply_masks(
    arch: Architecture, model: ArchNet, cmap: ChannelMap, masks: Masks
) -> tuple[Architecture, ArchNet]:
    """Remove the masked channels for real: the smaller architecture and its model (eval mode)."""
    new_arch = pruned_architecture(arch, cmap, masks)
    new_model = build_model(new_arch)
    new_model.load_state_dict(pruned_state(model, cmap, masks))
    return new_arch, new_model.eval()


# ---- fitting a resource profile -------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceLimits:
    """The profile a "fit" prune must meet; None leaves a resource free."""

    peak_sram_bytes: int | None = None
    flash_bytes: int | None = None
    macs: int | None = None

    def __post_init__(self) -> None:
        values = (self.peak_sram_bytes, self.flash_bytes, self.macs)
        if all(v is None for v in values):
            raise ValueError("fit needs at least one limit")
        if any(v is not None and v <= 0 for v in values):
            raise ValueError("limits must be positive")

    def violations(self, resources: dict[str, Any]) -> list[str]:
        """Why ``resources`` break the profile (empty when they fit)."""
        reasons = []
        for name, label in (("peak_sram_bytes", "peak SRAM"), ("flash_bytes", "flash"), ("macs", "MACs")):
            limit = getattr(self, name)
            if limit is not None and resources[name] > limit:
                unit = "" if name == "macs" else " B"
                reasons.append(f"{label} {resources[name]:,}{unit} exceeds the limit {limit:,}{unit}")
        return reasons

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _resources(arch: Architecture) -> dict[str, int]:
    """The resources a candidate reports (the keys of ``search.measure``)."""
    report = analyze(arch)
    return {name: int(getattr(report, name)) for name in RESOURCES}


def fit_removed(
    arch: Architecture,
    cmap: ChannelMap,
    order: list[tuple[int, int]],
    limits: ResourceLimits,
    low: int,
    high: int,
) -> int:
    """Fewest channels in ``[low, high]`` of ``order`` to remove so the pruned ``arch`` fits.

    Resources only shrink as channels go, so this bisects; raises PruneError when even
    ``high`` does not fit.
    """

    def fits(removed: int) -> bool:
        pruned = pruned_architecture(arch, cmap, masks_for(cmap, order, removed))
        return not limits.violations(_resources(pruned))

    if not fits(high):
        pruned = pruned_architecture(arch, cmap, masks_for(cmap, order, high))
        reasons = "; ".join(limits.violations(_resources(pruned)))
        sparsity = high / cmap.total if cmap.total else 0.0
        raise PruneError(
            f"cannot fit the profile: even the maximum sparsity {sparsity:.2f} "
            f"({high} of {cmap.total} prunable channels removed) leaves {reasons}; the layers "
            "reading the input, the classifier and one channel per layer always stay"
        )
    while low < high:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid + 1
    return low


def fit_sparsity(
    arch: Architecture, model: ArchNet, limits: ResourceLimits, max_sparsity: float = MAX_SPARSITY
) -> float:
    """Smallest sparsity whose channel-reduced ``arch`` fits ``limits`` (by ``model``'s saliencies)."""
    cmap = channel_map(arch)
    order = removal_order(cmap, saliency(model, cmap))
    removed = fit_removed(arch, cmap, order, limits, 0, channels_to_remove(cmap, max_sparsity))
    return removed / cmap.total if cmap.total else 0.0


# ---- the pruning job ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneConfig:
    """A pruning job: a target sparsity *or* a resource profile to fit, and the fine-tuning run.

    Sparsity is the fraction of prunable channels removed.  The schedule ramps from 0 at
    ``start_epoch`` to the target at ``finish_epoch`` (fractional epochs, counted from 0), then
    fine-tunes with frozen masks until ``epochs``.  ``lr`` is lower than a from-scratch run's
    because training starts from trained weights.
    """

    target_sparsity: float | None = None
    fit: ResourceLimits | None = None
    epochs: int = 4
    start_epoch: float = 0.0
    finish_epoch: float = 2.0
    lr: float = 5e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    train_subset: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    mask_interval: int = MASK_INTERVAL
    max_sparsity: float = MAX_SPARSITY

    def __post_init__(self) -> None:
        if (self.target_sparsity is None) == (self.fit is None):
            raise ValueError("give either target_sparsity or fit limits")
        if not 0.0 <= self.max_sparsity <= MAX_SPARSITY:
            raise ValueError(f"max_sparsity must lie in [0, {MAX_SPARSITY}]")
        if self.target_sparsity is not None and not 0.0 <= self.target_sparsity <= self.max_sparsity:
            raise ValueError(f"target_sparsity must lie in [0, {self.max_sparsity}]")
        if not 0.0 <= self.start_epoch <= self.finish_epoch <= self.epochs:
            raise ValueError("need 0 <= start_epoch <= finish_epoch <= epochs")
        if self.mask_interval < 1:
            raise ValueError("mask_interval must be >= 1")
        self.fidelity()  # epochs, batch size, lr, subset and split checks

    def fidelity(self) -> Fidelity:
        """The training settings in :mod:`training`'s terms (split, optimizer, batches)."""
        return Fidelity(
            epochs=self.epochs,
            train_subset=self.train_subset,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            val_fraction=self.val_fraction,
            seed=self.seed,
        )

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["fit"] = None if self.fit is None else self.fit.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PruneConfig:
        fit = data.get("fit")
        return cls(**{**data, "fit": None if fit is None else ResourceLimits(**fit)})


@dataclass(frozen=True)
class PruneProgress:
    """One epoch of a pruning run (epoch 0 is the unpruned model before fine-tuning)."""

    epoch: int
    epochs: int
    sparsity: float
    val_accuracy: float
    loss: float | None
    seconds: float


@dataclass(frozen=True)
class Snapshot:
    """Accuracy and resources of one side of the before/after table."""

    val_accuracy: float
    test_accuracy: float
    resources: dict[str, int]


@dataclass(frozen=True, eq=False)
class PruneResult:
    """The pruned candidate, what it cost and what it saved."""

    architecture: Architecture
    model: ArchNet = field(repr=False)
    target_sparsity: float
    sparsity: float
    channels_before: int
    channels_after: int
    before: Snapshot
    after: Snapshot
    history: tuple[PruneProgress, ...]
    mask_updates: tuple[int, ...]
    seconds: float
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Everything but the weights, JSON-able (the before/after table and the history)."""
        return {
            "architecture": self.architecture.to_json(),
            "target_sparsity": self.target_sparsity,
            "sparsity": self.sparsity,
            "channels_before": self.channels_before,
            "channels_after": self.channels_after,
            "before": self.before.__dict__,
            "after": self.after.__dict__,
            "history": [p.__dict__ for p in self.history],
            "mask_updates": len(self.mask_updates),
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


@dataclass
class _Run:
    """Mutable state of one DPF fine-tuning run."""

    cmap: ChannelMap
    config: PruneConfig
    target: float
    masks: Masks
    updates: list[int] = field(default_factory=list)
    frozen: bool = False

    def maybe_update(self, model: ArchNet, step: int, epoch: float) -> bool:
        """Recompute the masks every ``mask_interval`` steps inside the schedule; True if it did."""
        c = self.config
        if self.frozen or step % c.mask_interval or epoch < c.start_epoch:
            return False
        sparsity = cubic_sparsity(epoch, self.target, c.start_epoch, c.finish_epoch)
        self.masks = compute_masks(model, self.cmap, sparsity)
        self.updates.append(step)
        self.frozen = epoch >= c.finish_epoch
        return True


def _tensors(dataset: Dataset, fidelity: Fidelity) -> tuple[torch.Tensor, ...]:
    """Train, validation and test images (NCHW) and labels, split as training splits them."""
    train_idx, val_idx = split_indices(dataset.y_train, fidelity)
    return (
        to_nchw(dataset.x_train[train_idx]).contiguous(),
        torch.from_numpy(dataset.y_train[train_idx]),
        to_nchw(dataset.x_train[val_idx]).contiguous(),
        torch.from_numpy(dataset.y_train[val_idx]),
        to_nchw(dataset.x_test).contiguous(),
        torch.from_numpy(dataset.y_test),
    )


def prune(
    arch: Architecture,
    model: ArchNet,
    dataset: Dataset,
    config: PruneConfig,
    *,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[PruneProgress], None] | None = None,
    threads: int | None = None,
) -> PruneResult:
    """Fine-tune ``model`` with DPF structured pruning and return the physically pruned candidate.

    ``model`` is not modified.  ``progress`` gets epoch 0 (the unpruned model) and then every
    epoch's sparsity and validation accuracy (of the masked model); ``stop`` is polled like
    :func:`training.train_and_evaluate`'s and raises :class:`TrainingStopped`.  Raises
    :class:`PruneError` when a fit profile cannot be met even at the maximum sparsity.
    """
    _check_compatible(arch, dataset)
    start = time.perf_counter()
    fidelity = config.fidelity()
    x, y, x_val, y_val, x_test, y_test = _tensors(dataset, fidelity)
    with _torch_state(threads or default_threads(), config.seed):
        work = build_model(arch)
        work.load_state_dict(model.state_dict())
        cmap = channel_map(arch)
        before = Snapshot(accuracy(work, x_val, y_val), accuracy(work, x_test, y_test), _resources(arch))
        target = config.target_sparsity
        notes: list[str] = []
        if target is None:
            assert config.fit is not None
            target = fit_sparsity(arch, work, config.fit, config.max_sparsity)
            if target == 0.0:
                notes.append("the model already fits the profile: fine-tuned without pruning")
        emit = progress or (lambda p: None)
        emit(PruneProgress(0, config.epochs, 0.0, before.val_accuracy, None, 0.0))
        run = _Run(cmap, config, target, {})
        with MaskedNet(work, cmap) as masked:
            history = _fine_tune(work, masked, run, (x, y, x_val, y_val), fidelity, emit, stop)
        masks, final_notes = _final_masks(arch, work, run)
        notes += final_notes
        new_arch, new_model = apply_masks(arch, work, cmap, masks)
        after = Snapshot(
            accuracy(new_model, x_val, y_val), accuracy(new_model, x_test, y_test), _resources(new_arch)
        )
    removed = sum(int((~m).sum()) for m in masks.values())
    return PruneResult(
        architecture=new_arch,
        model=new_model,
        target_sparsity=target,
        sparsity=masked_sparsity(cmap, masks),
        channels_before=cmap.total,
        channels_after=cmap.total - removed,
        before=before,
        after=after,
        history=(PruneProgress(0, config.epochs, 0.0, before.val_accuracy, None, 0.0), *history),
        mask_updates=tuple(run.updates),
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
    )


def _fine_tune(
    model: ArchNet,
    masked: MaskedNet,
    run: _Run,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    fidelity: Fidelity,
    emit: Callable[[PruneProgress], None],
    stop: Callable[[], bool] | None,
) -> list[PruneProgress]:
    """The DPF loop: masked forward/backward with feedback, dense updates, periodic new masks."""
    x, y, x_val, y_val = data
    gen = torch.Generator().manual_seed(fidelity.seed)
    opt = _optimizer(model, fidelity)
    n = len(y)
    bs = min(fidelity.batch_size, n)
    per_epoch = max(1, n // bs)  # drop the ragged tail: a batch of one breaks batchnorm
    total = per_epoch * fidelity.epochs
    history: list[PruneProgress] = []
    step = 0
    for epoch in range(fidelity.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros(())
        polled = -math.inf
        for i in range(per_epoch):
            if stop is not None and time.perf_counter() - polled >= STOP_POLL_SECONDS:
                polled = time.perf_counter()
                if stop():
                    raise TrainingStopped(f"stopped in epoch {epoch + 1}")
            if run.maybe_update(model, step, step / per_epoch):
                masked.set_masks(run.masks)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, fidelity.lr)
            idx = perm[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()  # the dense weights: masked channels keep learning (feedback)
            loss_sum += loss.detach()
            step += 1
        sparsity = masked_sparsity(run.cmap, run.masks) if run.masks else 0.0
        stats = PruneProgress(
            epoch + 1,
            fidelity.epochs,
            sparsity,
            accuracy(model, x_val, y_val),
            float(loss_sum) / per_epoch,
            time.perf_counter() - t0,
        )
        history.append(stats)
        emit(stats)
    return history


def _final_masks(arch: Architecture, model: ArchNet, run: _Run) -> tuple[Masks, list[str]]:
    """The masks to apply: the schedule's last, or the target's if the run ended before ``finish``.

    In fit mode the trained saliencies may spread the removals differently from the
    untrained ones the target came from; then more channels go until the profile fits.
    """
    notes: list[str] = []
    cmap, config = run.cmap, run.config
    scores = saliency(model, cmap)
    removed = channels_to_remove(cmap, run.target)
    if round(run.target * cmap.total) > removed:
        notes.append(f"every prunable layer is at its minimum: sparsity capped at {removed / cmap.total:.3f}")
    if not run.frozen:
        run.masks = masks_for(cmap, removal_order(cmap, scores), removed)
        notes.append("the run ended before the schedule's finish epoch: the target masks were set at the end")
    if config.fit is not None and config.fit.violations(
        _resources(pruned_architecture(arch, cmap, run.masks))
    ):
        # Extend the trained masks rather than replace them: their channels were fine-tuned away.
        order = removal_order(cmap, scores, run.masks)
        low = sum(int((~m).sum()) for m in run.masks.values())
        high = max(low, channels_to_remove(cmap, config.max_sparsity))
        more = fit_removed(arch, cmap, order, config.fit, low, high)
        run.masks = masks_for(cmap, order, more)
        notes.append(
            f"raised sparsity from {run.target:.3f} to {more / cmap.total:.3f} after fine-tuning "
            "so that the pruned model fits the profile"
        )
    return run.masks, notes


# ---- the sparsity gene (search) -------------------------------------------------------------------
