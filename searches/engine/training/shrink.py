"""Physical channel removal after DPF, and the sparsity that fits a resource profile."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from searches.engine.resources.report import analyze
from searches.engine.space.arch import Architecture, ConvBlock, Dense
from searches.engine.space.sparsity import MAX_SPARSITY
from searches.engine.training.dpf import (
    RESOURCES,
    ChannelMap,
    Masks,
    PruneError,
    channel_map,
    channels_to_remove,
    masks_for,
    removal_order,
    saliency,
)
from searches.engine.training.model import ArchNet, build_model

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


def resource_counts(arch: Architecture) -> dict[str, int]:
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
        return not limits.violations(resource_counts(pruned))

    if not fits(high):
        pruned = pruned_architecture(arch, cmap, masks_for(cmap, order, high))
        reasons = "; ".join(limits.violations(resource_counts(pruned)))
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
