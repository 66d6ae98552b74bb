"""DPF structured pruning: channel groups, schedule, feedback, physical removal, export, fit."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from searches.engine.deploy.header import generate_header
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import run_int8
from searches.engine.resources.report import analyze
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling, validate
from searches.engine.space.sampling import SpaceConfig, random_architecture
from searches.engine.space.sparsity import MAX_SPARSITY, mutate_sparsity, random_sparsity
from searches.engine.training.datasets import Dataset, load_digits
from searches.engine.training.dpf import (
    ChannelMap,
    MaskedNet,
    Masks,
    PruneError,
    channel_map,
    compute_masks,
    cubic_sparsity,
    masked_sparsity,
)
from searches.engine.training.model import ArchNet, build_model
from searches.engine.training.pruning import PruneConfig, PruneProgress, _Run, prune
from searches.engine.training.shrink import ResourceLimits, apply_masks, fit_sparsity, pruned_architecture
from searches.engine.training.train import Fidelity, TrainingStopped, train_and_evaluate
from tests.engine.deploy.test_export_host import compile_and_run

RESOURCES = ("peak_sram_bytes", "flash_bytes", "macs", "params")


def conv(filters: int, kernel: int = 3, stride: int = 1, **kw: object) -> ConvLayer:
    return ConvLayer(op="conv2d", kernel=kernel, filters=filters, stride=stride, **kw)  # type: ignore[arg-type]


def pw(filters: int, **kw: object) -> ConvLayer:
    return ConvLayer(op="conv1x1", kernel=1, filters=filters, **kw)  # type: ignore[arg-type]


def dw(kernel: int = 3, stride: int = 1, **kw: object) -> ConvLayer:
    return ConvLayer(op="dwconv2d", kernel=kernel, filters=None, stride=stride, **kw)  # type: ignore[arg-type]


B = ConvBlock

# A trunk, then a group of three parallel blocks merged by an Add: a conv → depthwise → 1x1
# block, a conv branch with a pre-pool, and a depthwise-only branch reading the group input.
BRANCHY = Architecture(
    (8, 8, 1),
    10,
    (
        B((conv(6),)),
        B((conv(12), pw(10))),
        B((conv(12, stride=2), dw(), pw(10))),
        B((conv(10, pre_pool=True),), branch=True),
        B((dw(stride=2),), branch=True),
        B((pw(8, batchnorm=False), dw(relu=False))),
    ),
    Pooling("max", 2),
    (Dense(24), Dense(16)),
)

# The same shape of network as a digits candidate, small enough to train in a second.
SMALL = Architecture(
    (8, 8, 1),
    10,
    (B((conv(8),)), B((conv(16, stride=2), dw(), pw(16))), B((conv(16, stride=2),), branch=True)),
    Pooling("avg", 2),
    (Dense(32),),
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny convolutions run many times slower with two threads on a shared 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def random_model(arch: Architecture, seed: int) -> ArchNet:
    """Random weights and batchnorm statistics (as the host export test uses), in eval mode."""
    torch.manual_seed(seed)
    model = build_model(arch).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def masked_outputs(model: ArchNet, cmap: ChannelMap, masks: Masks, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad(), MaskedNet(model, cmap, masks):
        return model(x)


def resources(arch: Architecture) -> dict[str, int]:
    report = analyze(arch)
    return {name: getattr(report, name) for name in RESOURCES}


# ---- channel groups ---------------------------------------------------------------------------


def test_channel_groups_tie_add_members_and_exclude_first_layer_and_depthwise() -> None:
    cmap = channel_map(BRANCHY)
    groups = cmap.groups
    # The image and the first layer's filters are not prunable.
    assert not groups[cmap.conv_in[(0, 0)]].prunable
    assert not groups[cmap.conv_out[(0, 0)]].prunable
    # The three parallel blocks' last layers, the depthwise branch's input (b1's 1x1) and the
    # next group's 1x1 input are one tied group.
    tied = cmap.conv_out[(2, 2)]
    assert cmap.conv_out[(3, 0)] == cmap.conv_out[(4, 0)] == cmap.conv_out[(1, 1)] == tied
    assert cmap.conv_in[(5, 0)] == tied
    assert set(groups[tied].convs) == {(1, 1), (2, 2), (3, 0)}
    assert set(groups[tied].depthwise) == {(4, 0)}
    # A depthwise layer follows its input's channels.
    assert cmap.conv_in[(2, 1)] == cmap.conv_out[(2, 1)] == cmap.conv_out[(2, 0)]
    assert cmap.conv_out[(5, 1)] == cmap.conv_out[(5, 0)]
    # Dense units are prunable down to the space's minimum; the classifier is not a group.
    dense = [g for g in groups if g.dense is not None]
    assert [(g.size, g.min_keep) for g in dense] == [(24, 10), (16, 10)]
    assert cmap.linear_in["dense.0"] == (cmap.conv_out[(5, 1)], 4)
    assert cmap.total == 12 + 10 + 12 + 8 + 24 + 16


def test_masks_never_empty_a_layer_and_follow_the_global_threshold() -> None:
    cmap = channel_map(BRANCHY)
    model = random_model(BRANCHY, 0)
    masks = compute_masks(model, cmap, MAX_SPARSITY)
    for g, keep in masks.items():
        assert int(keep.sum()) >= cmap.groups[g].min_keep >= 1
    assert masked_sparsity(cmap, masks) == cmap.removable / cmap.total
    half = compute_masks(model, cmap, 0.5)
    assert masked_sparsity(cmap, half) == pytest.approx(0.5, abs=0.5 / cmap.total)
    # More sparsity only adds to the removed channels (one set of saliencies).
    assert all(bool((masks[g] <= half[g]).all()) for g in masks)


# ---- physical removal -------------------------------------------------------------------------


def test_pruned_model_equals_the_masked_model_and_branch_groups_stay_consistent() -> None:
    cmap = channel_map(BRANCHY)
    model = random_model(BRANCHY, 1)
    x = torch.rand(16, 1, 8, 8)
    for sparsity in (0.3, 0.6, MAX_SPARSITY):
        masks = compute_masks(model, cmap, sparsity)
        arch, pruned = apply_masks(BRANCHY, model, cmap, masks)
        validate(arch)
        last = [arch.conv_blocks[b].layers[-1].filters for b in (2, 3)]
        assert last[0] == last[1] == arch.conv_blocks[1].layers[-1].filters < 10
        assert torch.allclose(pruned(x), masked_outputs(model, cmap, masks, x), atol=1e-5)
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_pruning_never_increases_resources_over_random_architectures() -> None:
    rng = random.Random(5)
    config = SpaceConfig((8, 8, 1), 10)
    x = torch.rand(4, 1, 8, 8)
    pruned_some, sram_shrank = 0, 0
    for i in range(30):
        arch = random_architecture(rng, config)
        model = random_model(arch, i)
        cmap = channel_map(arch)
        masks = compute_masks(model, cmap, 0.5)
        small_arch, small = apply_masks(arch, model, cmap, masks)
        before, after = resources(arch), resources(small_arch)
        assert all(after[k] <= before[k] for k in RESOURCES), (arch.dumps(), before, after)
        if masked_sparsity(cmap, masks) > 0:
            pruned_some += 1
            assert all(after[k] < before[k] for k in ("flash_bytes", "macs", "params"))
            sram_shrank += after["peak_sram_bytes"] < before["peak_sram_bytes"]
        assert torch.allclose(small(x), masked_outputs(model, cmap, masks, x), atol=1e-5), arch.dumps()
    # Peak SRAM stays where the unprunable first layer or the input sets it; elsewhere it shrinks.
    assert pruned_some >= 25 and sram_shrank >= pruned_some // 2


def test_a_pruned_model_exports_bit_exact(tmp_path: Path) -> None:
    model = random_model(BRANCHY, 2)
    cmap = channel_map(BRANCHY)
    arch, pruned = apply_masks(BRANCHY, model, cmap, compute_masks(model, cmap, 0.5))
    calibration = np.random.default_rng(2).random((32, 8, 8, 1)).astype(np.float32)
    qm = quantize(arch, pruned, calibration)
    header = generate_header(qm, "pruned_net")
    report = analyze(arch)
    assert header.arena_bytes == report.peak_sram_bytes < analyze(BRANCHY).peak_sram_bytes
    assert header.flash_bytes == report.flash_bytes < analyze(BRANCHY).flash_bytes
    inputs = np.random.default_rng(3).integers(-128, 128, (12, 8, 8, 1), dtype=np.int8)
    out = np.frombuffer(compile_and_run(tmp_path, "pruned_net", header.text, inputs), dtype=np.int8)
    expected = run_int8(qm, inputs)
    assert np.array_equal(out.reshape(expected.shape), expected)


# ---- schedule and feedback ----------------------------------------------------------------------


def test_cubic_schedule() -> None:
    assert cubic_sparsity(0.5, 0.8, 1.0, 3.0) == 0.0
    assert cubic_sparsity(1.0, 0.8, 1.0, 3.0) == 0.0
    assert cubic_sparsity(2.0, 0.8, 1.0, 3.0) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(1.5, 0.8, 1.0, 3.0) == pytest.approx(0.8 * (1 - 0.75**3))
    assert cubic_sparsity(3.0, 0.8, 1.0, 3.0) == cubic_sparsity(9.0, 0.8, 1.0, 3.0) == 0.8
    assert cubic_sparsity(2.0, 0.5, 2.0, 2.0) == 0.5  # start == finish: one step
    values = [cubic_sparsity(e / 10, 0.9, 0.0, 4.0) for e in range(50)]
    assert values == sorted(values)


def test_masks_are_recomputed_every_16_iterations_inside_the_schedule() -> None:
    cmap = channel_map(SMALL)
    model = random_model(SMALL, 0)
    config = PruneConfig(target_sparsity=0.5, epochs=6, start_epoch=1.0, finish_epoch=4.0)
    run = _Run(cmap, config, 0.5, {})
    per_epoch = 20
    updated = [step for step in range(per_epoch * 6) if run.maybe_update(model, step, step / per_epoch)]
    # From epoch 1 (step 20) on multiples of 16, until the first update at or past epoch 4.
    assert updated == [32, 48, 64, 80]
    assert masked_sparsity(cmap, run.masks) == pytest.approx(0.5, abs=1 / cmap.total)


State = dict[str, torch.Tensor]


def _masked_step(
    arch: Architecture, masks_of: dict[tuple[int, int], list[int]], feedback: bool
) -> tuple[State, State, State, torch.Tensor]:
    """One SGD step under masks; returns (model before, model after, gradients, masked output)."""
    model = random_model(arch, 3).train()
    cmap = channel_map(arch)
    masks = {g: torch.ones(cmap.groups[g].size, dtype=torch.bool) for g in cmap.prunable}
    for pos, channels in masks_of.items():
        masks[cmap.conv_out[pos]][channels] = False
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    outputs: dict[str, torch.Tensor] = {}
    with MaskedNet(model, cmap, masks, feedback=feedback):
        handle = model.blocks[1][0].register_forward_hook(lambda m, i, o: outputs.setdefault("b1l0", o))  # type: ignore[index]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        handle.remove()
        opt.zero_grad()
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        opt.step()
    return before, model.state_dict(), grads, outputs["b1l0"]


def test_feedback_updates_the_dense_weights_of_masked_channels() -> None:
    # Channels 2 and 5 of block 1's conv: their only reader is the depthwise layer after it.
    masked = {(1, 0): [2, 5]}
    before, after, grads, out = _masked_step(SMALL, masked, feedback=True)
    assert float(out.detach()[:, [2, 5]].abs().max()) == 0.0  # the masked model, exactly
    w = "blocks.1.0.conv.weight"
    assert float(grads[w][[2, 5]].abs().min()) > 0  # feedback through the depthwise layer
    assert not torch.equal(after[w][[2, 5]], before[w][[2, 5]])
    gamma = "blocks.1.1.bn.weight"  # the depthwise layer's masked channels learn too
    assert not torch.equal(after[gamma][[2, 5]], before[gamma][[2, 5]])
    # Without feedback a masked channel is a flat spot: its weights get no gradient at all.
    _, _, plain, _ = _masked_step(SMALL, masked, feedback=False)
    assert float(plain[w][[2, 5]].abs().max()) == 0.0
    # Feedback reaches only the masked channels: every other gradient is the masked model's.
    for name, g in plain.items():
        rows = [c for c in range(g.shape[0]) if c not in (2, 5)] if name.startswith("blocks.1.") else None
        if name.startswith(("blocks.1.0.", "blocks.1.1.")):
            assert torch.allclose(grads[name][rows], g[rows], atol=1e-6), name
        else:
            assert torch.allclose(grads[name], g, atol=1e-6), name


def test_feedback_reaches_masked_dense_units_and_tied_channels() -> None:
    cmap = channel_map(SMALL)
    tied = cmap.conv_out[(1, 2)]
    model = random_model(SMALL, 4).train()
    masks = {g: torch.ones(cmap.groups[g].size, dtype=torch.bool) for g in cmap.prunable}
    masks[tied][[0, 7]] = False
    dense = next(g for g in cmap.prunable if cmap.groups[g].dense == 0)
    units = list(range(8))
    masks[dense][units] = False
    pre: list[torch.Tensor] = []
    handle = model.dense[0].register_forward_hook(lambda m, i, o: pre.append(o.detach()))
    with MaskedNet(model, cmap, masks):
        x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
    handle.remove()
    for name in ("blocks.1.2.conv.weight", "blocks.2.0.conv.weight"):
        assert float(model.get_parameter(name).grad[[0, 7]].abs().min()) > 0, name  # type: ignore[index]
    # A masked unit learns wherever its dense pre-activation is positive (ReLU passes gradient).
    active = (pre[0][:, units] > 0).any(0)
    learning = model.get_parameter("dense.0.weight").grad[units].abs().amax(1) > 0  # type: ignore[index]
    assert active.any() and torch.equal(learning, active)


# ---- fit mode, config, gene ---------------------------------------------------------------------


def test_fit_finds_the_smallest_sparsity_that_fits_and_explains_failure() -> None:
    model = random_model(BRANCHY, 5)
    cmap = channel_map(BRANCHY)
    full = resources(BRANCHY)
    half = resources(pruned_architecture(BRANCHY, cmap, compute_masks(model, cmap, 0.5)))
    limits = ResourceLimits(flash_bytes=(full["flash_bytes"] + half["flash_bytes"]) // 2, macs=full["macs"])
    s = fit_sparsity(BRANCHY, model, limits)
    assert 0 < s < 0.5
    fitted = resources(pruned_architecture(BRANCHY, cmap, compute_masks(model, cmap, s)))
    assert not limits.violations(fitted)
    one_less = compute_masks(model, cmap, s - 1 / cmap.total)
    assert limits.violations(resources(pruned_architecture(BRANCHY, cmap, one_less)))
    assert fit_sparsity(BRANCHY, model, ResourceLimits(peak_sram_bytes=full["peak_sram_bytes"])) == 0.0
    with pytest.raises(PruneError, match=r"cannot fit the profile: even the maximum sparsity .* peak SRAM"):
        fit_sparsity(BRANCHY, model, ResourceLimits(peak_sram_bytes=100))


def test_config_checks_and_json_round_trip() -> None:
    with pytest.raises(ValueError, match="either"):
        PruneConfig()
    with pytest.raises(ValueError, match="either"):
        PruneConfig(target_sparsity=0.5, fit=ResourceLimits(macs=10))
    with pytest.raises(ValueError, match="target_sparsity"):
        PruneConfig(target_sparsity=0.97)
    with pytest.raises(ValueError, match="finish_epoch"):
        PruneConfig(target_sparsity=0.5, start_epoch=3, finish_epoch=2)
    with pytest.raises(ValueError, match="at least one limit"):
        ResourceLimits()
    config = PruneConfig(fit=ResourceLimits(flash_bytes=4000), epochs=3, finish_epoch=2.5)
    assert PruneConfig.from_json(config.to_json()) == config


def test_sparsity_gene() -> None:
    rng = random.Random(0)
    values = [mutate_sparsity(rng, 0.5, 0.05, 0.9) for _ in range(2000)]
    assert np.std(values) == pytest.approx(0.05, rel=0.1)
    assert all(0.05 <= v <= 0.9 for v in values)
    assert mutate_sparsity(random.Random(1), 0.89, 0.05, 0.9) <= 0.9
    assert mutate_sparsity(random.Random(7), 0.3, 0.05, 0.9) == mutate_sparsity(
        random.Random(7), 0.3, 0.05, 0.9
    )
    assert 0.2 <= random_sparsity(rng, 0.2, 0.4) <= 0.4
    with pytest.raises(ValueError, match="high"):
        mutate_sparsity(rng, 0.5, 0.5, 0.99)


# ---- a real run ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits: Dataset) -> ArchNet:
    result = train_and_evaluate(SMALL, digits, Fidelity(epochs=3, train_subset=None))
    model = build_model(SMALL)
    model.load_state_dict(result.state_dict)
    return model


def test_a_dpf_run_on_digits_shrinks_the_model_and_keeps_accuracy(digits: Dataset, trained: ArchNet) -> None:
    original = {k: v.clone() for k, v in trained.state_dict().items()}
    seen: list[PruneProgress] = []
    config = PruneConfig(target_sparsity=0.4, epochs=4, start_epoch=0.0, finish_epoch=2.0)
    result = prune(SMALL, trained, digits, config, progress=seen.append)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in original.items())  # input untouched
    assert [p.epoch for p in seen] == [0, 1, 2, 3, 4]
    assert seen[0].sparsity == 0.0 and seen[-1].sparsity == result.sparsity
    assert result.sparsity == pytest.approx(0.4, abs=1 / result.channels_before)
    assert result.mask_updates[:4] == (0, 16, 32, 48)
    assert all(result.after.resources[k] < result.before.resources[k] for k in RESOURCES)
    assert result.after.resources == resources(result.architecture)
    assert result.before.val_accuracy >= 0.85
    assert result.after.val_accuracy >= 0.8 and result.after.test_accuracy >= 0.8
    # The last epoch validated the masked model; the pruned one computes the same function.
    assert result.after.val_accuracy == pytest.approx(seen[-1].val_accuracy, abs=0.01)
    assert result.to_json()["after"]["resources"] == result.after.resources


def test_a_fit_run_meets_the_profile(digits: Dataset, trained: ArchNet) -> None:
    flash = analyze(SMALL).flash_bytes * 2 // 3
    config = PruneConfig(fit=ResourceLimits(flash_bytes=flash), epochs=2, finish_epoch=1.0)
    result = prune(SMALL, trained, digits, config)
    assert 0 < result.target_sparsity <= result.sparsity
    assert result.after.resources["flash_bytes"] <= flash
    with pytest.raises(PruneError, match="cannot fit"):
        prune(SMALL, trained, digits, PruneConfig(fit=ResourceLimits(macs=10), epochs=1, finish_epoch=1.0))


def test_a_run_can_be_stopped(digits: Dataset, trained: ArchNet) -> None:
    with pytest.raises(TrainingStopped):
        prune(
            SMALL,
            trained,
            digits,
            PruneConfig(target_sparsity=0.3, epochs=1, finish_epoch=1),
            stop=lambda: True,
        )
