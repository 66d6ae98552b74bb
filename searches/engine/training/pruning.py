"""The pruning job: fine-tune a trained candidate with DPF to a target sparsity, then shrink it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from searches.engine.space.arch import Architecture
from searches.engine.space.sparsity import MAX_SPARSITY
from searches.engine.training.datasets import Dataset
from searches.engine.training.dpf import (
    MASK_INTERVAL,
    ChannelMap,
    MaskedNet,
    Masks,
    channel_map,
    channels_to_remove,
    compute_masks,
    cubic_sparsity,
    masked_sparsity,
    masks_for,
    removal_order,
    saliency,
)
from searches.engine.training.model import ArchNet, build_model, to_nchw
from searches.engine.training.shrink import (
    ResourceLimits,
    apply_masks,
    fit_removed,
    fit_sparsity,
    pruned_architecture,
    resource_counts,
)
from searches.engine.training.train import (
    STOP_POLL_SECONDS,
    Fidelity,
    TrainingStopped,
    accuracy,
    check_compatible,
    default_threads,
    lr_at,
    make_optimizer,
    split_indices,
    torch_state,
)

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
    check_compatible(arch, dataset)
    start = time.perf_counter()
    fidelity = config.fidelity()
    x, y, x_val, y_val, x_test, y_test = _tensors(dataset, fidelity)
    with torch_state(threads or default_threads(), config.seed):
        work = build_model(arch)
        work.load_state_dict(model.state_dict())
        cmap = channel_map(arch)
        before = Snapshot(accuracy(work, x_val, y_val), accuracy(work, x_test, y_test), resource_counts(arch))
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
            accuracy(new_model, x_val, y_val), accuracy(new_model, x_test, y_test), resource_counts(new_arch)
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
    opt = make_optimizer(model, fidelity)
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
                group["lr"] = lr_at(step, total, fidelity.lr)
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
        resource_counts(pruned_architecture(arch, cmap, run.masks))
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
