"""Train a candidate on the CPU, deterministically: fidelity, schedule, evaluation, weights on disk."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from searches.engine.space.arch import Architecture
from searches.engine.training.datasets import Dataset, stratified_split
from searches.engine.training.model import ArchNet, build_model, count_params, to_nchw

EVAL_BATCH = 250  # measured fastest on one thread (docs/benchmarks.md)
WARMUP_FRACTION = 0.05
SPLIT_SEED = 0
STOP_POLL_SECONDS = 0.5


# ---- fidelity and results ----------------------------------------------------------------


@dataclass(frozen=True)
class Fidelity:
    """How hard to train one candidate: the knobs that trade accuracy for search speed.

    The defaults are a fast-search setting for Fashion-MNIST-sized data, picked from the
    measurements in docs/benchmarks.md: 2 epochs over a stratified 10,000-image subset ranks
    candidates almost as a 5-epoch x 20,000 run does for a fifth of the training; AdamW at lr 2e-2
    with warm-up + cosine trained the benchmark candidates best in few epochs; batch 64
    balances steps per second against updates per epoch.  ``train_subset=None`` trains on the
    whole training split; ``seed`` drives initialisation, shuffling and dropout.
    """

    epochs: int = 2
    train_subset: int | None = 10000
    batch_size: int = 64
    lr: float = 2e-2
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    seed: int = 0
    optimizer: Literal["adamw", "sgd"] = "adamw"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.train_subset is not None and self.train_subset < 2:
            raise ValueError("train_subset must be >= 2 or None")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (batchnorm needs two samples)")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in (0, 1)")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError("optimizer must be 'adamw' or 'sgd'")


@dataclass(frozen=True)
class EpochStats:
    """One epoch of training: mean training loss and validation accuracy after it."""

    epoch: int
    loss: float
    val_accuracy: float
    seconds: float


@dataclass(frozen=True, eq=False)
class TrainResult:
    """Accuracies of the final weights, timings, per-epoch history and the weights themselves."""

    val_accuracy: float
    test_accuracy: float
    train_seconds: float
    total_seconds: float
    epochs: int
    history: tuple[EpochStats, ...]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    params: int
    train_samples: int
    val_samples: int
    diverged: bool = False


class TrainingStopped(Exception):
    """Raised inside training when the ``stop`` callable asks to abandon the candidate."""


# ---- training ----------------------------------------------------------------------------


DEFAULT_THREADS = 1


def default_threads() -> int:
    """Intra-op threads per evaluation: 1 (run one evaluation per core; see docs/benchmarks.md)."""
    # Measured on 2 shared cores: one 2-thread evaluation trains 1.05-1.5x faster than a 1-thread
    # one, two 1-thread evaluations side by side 1.4-1.9x, but two 2-thread ones 2-10x *slower*
    # (OpenMP threads spin waiting for a core any other job holds).  One thread is robust, and
    # its results do not depend on the machine's core count.
    return DEFAULT_THREADS


def usable_cores() -> int:
    """Cores this process may run on: how many 1-thread evaluations to run side by side."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def torch_state(threads: int, seed: int) -> Iterator[None]:
    """Seed torch's global RNG (init, dropout) and pin the thread count; restore both afterwards."""
    # No torch.use_deterministic_algorithms: every op used here is deterministic on the CPU for a
    # fixed thread count (the tests train twice and compare weights bit for bit), and its first
    # call imports torch._dynamo and inductor, seconds per process (docs/benchmarks.md).
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)


def split_indices(y_train: np.ndarray, fidelity: Fidelity) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) into the training set: stratified validation split, then the subset.

    Both use the fixed ``SPLIT_SEED``, not ``fidelity.seed``: every candidate of every search
    on a dataset is then trained on the same images and ranked on the same validation images.
    """
    train_idx, val_idx = stratified_split(y_train, fidelity.val_fraction, SPLIT_SEED)
    if fidelity.train_subset is not None and fidelity.train_subset < len(train_idx):
        fraction = fidelity.train_subset / len(train_idx)
        _, keep = stratified_split(y_train[train_idx], fraction, SPLIT_SEED + 1)
        train_idx = train_idx[keep]
    return train_idx, val_idx


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on NCHW ``x`` and labels ``y``."""
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(1) == y[start : start + batch_size]).sum())
    return correct / max(1, len(y))


def lr_at(step: int, total: int, base: float) -> float:
    # Short linear warm-up then cosine decay to zero: robust for few-epoch runs.
    warmup = max(1, int(total * WARMUP_FRACTION))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, fidelity: Fidelity) -> torch.optim.Optimizer:
    if fidelity.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=fidelity.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=fidelity.weight_decay,
        )
    # The fused CPU kernel updates all parameters in one call (measured ~10% faster steps).
    return torch.optim.AdamW(
        model.parameters(), lr=fidelity.lr, weight_decay=fidelity.weight_decay, fused=True
    )


def check_compatible(arch: Architecture, dataset: Dataset) -> None:
    if tuple(arch.input_shape) != tuple(dataset.input_shape):
        raise ValueError(
            f"architecture input {arch.input_shape} does not match the dataset's {dataset.input_shape}"
        )
    if arch.classes != dataset.classes:
        raise ValueError(f"architecture has {arch.classes} classes but the dataset has {dataset.classes}")


def train_and_evaluate(
    arch: Architecture,
    dataset: Dataset,
    fidelity: Fidelity | None = None,
    callback: Callable[[EpochStats], None] | None = None,
    stop: Callable[[], bool] | None = None,
    *,
    threads: int | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``arch`` on the training split at ``fidelity``; report final-weight val/test accuracy.

    ``initial_state`` (weights of ``arch`` trained before) continues training from them for
    ``fidelity.epochs`` more epochs, with a fresh warm-up and cosine schedule over those epochs
    (a warm restart): how an ASHA promotion trains a candidate further.

    ``callback`` gets each epoch's stats; ``stop`` is polled at the start of every epoch and
    then at most every ``STOP_POLL_SECONDS``, and makes training raise
    :class:`TrainingStopped` when it returns True.  ``fidelity.seed`` drives initialisation,
    shuffling and dropout; results are bit-identical for identical inputs and ``threads``.
    ``threads`` (default :func:`default_threads`) is a process-wide torch setting, set for the
    call and restored after it.
    """
    fidelity = fidelity or Fidelity()
    check_compatible(arch, dataset)
    start = time.perf_counter()
    train_idx, val_idx = split_indices(dataset.y_train, fidelity)
    # Plain contiguous NCHW: channels_last measured no faster on one thread (docs/benchmarks.md).
    x_train = to_nchw(dataset.x_train[train_idx]).contiguous()
    y_train = torch.from_numpy(dataset.y_train[train_idx])
    x_val = to_nchw(dataset.x_train[val_idx]).contiguous()
    y_val = torch.from_numpy(dataset.y_train[val_idx])
    with torch_state(threads or default_threads(), fidelity.seed):
        model = build_model(arch)
        if initial_state is not None:
            model.load_state_dict(initial_state)
        t0 = time.perf_counter()
        history, diverged = _fit(model, x_train, y_train, x_val, y_val, fidelity, callback, stop)
        train_seconds = time.perf_counter() - t0
        x_test = to_nchw(dataset.x_test).contiguous()
        test_acc = accuracy(model, x_test, torch.from_numpy(dataset.y_test))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return TrainResult(
        val_accuracy=history[-1].val_accuracy,
        test_accuracy=test_acc,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - start,
        epochs=len(history),
        history=tuple(history),
        state_dict=state,
        params=count_params(model),
        train_samples=len(train_idx),
        val_samples=len(val_idx),
        diverged=diverged,
    )


def _fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    fidelity: Fidelity,
    callback: Callable[[EpochStats], None] | None,
    stop: Callable[[], bool] | None,
) -> tuple[list[EpochStats], bool]:
    """The training loop: returns the per-epoch history and whether the loss diverged."""
    gen = torch.Generator().manual_seed(fidelity.seed)
    opt = make_optimizer(model, fidelity)
    n = len(y)
    bs = min(fidelity.batch_size, n)
    # Drop the ragged tail (a different one each epoch): a batch of one breaks batchnorm.
    per_epoch = max(1, n // bs)
    total = per_epoch * fidelity.epochs
    history: list[EpochStats] = []
    step = 0
    for epoch in range(fidelity.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros(())
        polled = -math.inf
        for i in range(per_epoch):
            # Rate-limited: the caller's stop check may be a database or broker query.
            if stop is not None and time.perf_counter() - polled >= STOP_POLL_SECONDS:
                polled = time.perf_counter()
                if stop():
                    raise TrainingStopped(f"stopped in epoch {epoch + 1}")
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, fidelity.lr)
            idx = perm[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            step += 1
        mean_loss = float(loss_sum) / per_epoch
        stats = EpochStats(epoch + 1, mean_loss, accuracy(model, x_val, y_val), time.perf_counter() - t0)
        history.append(stats)
        if callback is not None:
            callback(stats)
        if not math.isfinite(mean_loss):
            return history, True
    return history, False


# ---- weights on disk -------------------------------------------------------------------


def save_weights(state_dict: dict[str, torch.Tensor], path: str | os.PathLike[str] | BinaryIO) -> None:
    """Write a state dict of plain tensors with ``torch.save`` (loadable with weights_only=True).

    ``path`` is a file name or a binary file object (the web layer stores the bytes where it wants).
    """
    target = Path(path) if isinstance(path, str | os.PathLike) else path
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, target)


def load_weights(arch: Architecture, path: str | os.PathLike[str] | BinaryIO) -> ArchNet:
    """Rebuild ``arch``'s model and load weights saved by :func:`save_weights` (no pickle)."""
    source = Path(path) if isinstance(path, str | os.PathLike) else path
    state = torch.load(source, map_location="cpu", weights_only=True)
    model = build_model(arch)
    model.load_state_dict(state)
    return model.eval()
