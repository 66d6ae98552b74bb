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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from searches.engine.space import arch as A
from searches.engine.space.arch import Architecture, feature_shape
from searches.engine.training.model import ArchNet, ConvUnit

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
