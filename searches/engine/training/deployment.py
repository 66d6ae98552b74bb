"""Train a chosen candidate for deployment: longer, augmented, then quantisation-aware.

A search trains every candidate briefly to rank it; the network that ships deserves more.
:func:`train_for_deployment` trains the same architecture on the whole training split (the
validation split held out for model selection) in two phases:

1. float training with augmentation suited to the data (:mod:`.augment`), AdamW with a short
   warm-up and cosine decay (the schedule the search's fidelity measurements chose, run longer);
2. quantisation-aware fine-tuning (:mod:`.qat`) at a low learning rate, through a forward pass
   that *is* the exported int8 model.

With ``Recipe.average_last = k`` the weights after each of the last ``k`` float epochs are kept
and, at the end of the float phase, the model takes their mean (stochastic weight averaging
over epochs); batchnorm's running statistics are then measured again on the training images,
since the mean of the snapshots' statistics is not the statistics of the mean weights. The
averaged model is the last float epoch's result (measured and eligible like any epoch) and the
start of QAT. The architecture, hence every resource number, is unchanged.

After every epoch the int8 validation accuracy is measured (post-training quantisation in
phase 1, the QAT model in phase 2; both compute exactly what the integer reference does) and
an epoch chosen by it is the result: the deployed model is the int8 one.  ``Recipe.select``
says which: ``"first"`` the first epoch with the best int8 validation accuracy, ``"latest"`` the
latest such epoch, ``"1se"`` the latest epoch within one standard error of the best (the
one-standard-error rule: a validation split of n images measures an accuracy p only to about
sqrt(p(1-p)/n), 2.5 points for digits' 144 images, so an earlier epoch that is better by less
than that is noise, and the later one has trained further along the schedule).

Every epoch ends with a checkpoint (weights, optimizer, epoch, history, the best so far, QAT
ranges and both RNG states) written atomically; called again with the same checkpoint path, the
training resumes after the last finished epoch and ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from searches.engine.space.arch import Architecture
from searches.engine.training.augment import Augment, augment_batch
from searches.engine.training.datasets import Dataset
from searches.engine.training.model import ArchNet, build_model, to_nchw
from searches.engine.training.qat import QATModel, Ranges
from searches.engine.training.train import (
    STOP_POLL_SECONDS,
    Fidelity,
    TrainingStopped,
    accuracy,
    check_compatible,
    default_threads,
    lr_at,
    split_indices,
)

SELECTION_RULES = ("first", "latest", "1se")
CHECKPOINT_FORMAT = "nasweb.deploy-checkpoint"
CHECKPOINT_VERSION = 1
CALIBRATION_SAMPLES = 512
CALIBRATION_SEED = 0
INT8_EVAL_BATCH = 500


@dataclass(frozen=True)
class Recipe:
    """How a model is trained for deployment (recorded with the model it produced)."""

    epochs: int = 15
    qat_epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-2
    qat_lr: float = 5e-4
    weight_decay: float = 5e-4
    val_fraction: float = 0.1
    seed: int = 0
    augment: Augment | None = None
    average_last: int = 0  # average the weights of the last N float epochs (0: off)
    select: str = "1se"  # which epoch is kept: first / latest best, latest within 1 SE of the best

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.qat_epochs < 0:
            raise ValueError("epochs must be >= 1 and qat_epochs >= 0")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (batchnorm needs two samples)")
        if self.lr <= 0 or self.qat_lr <= 0 or self.weight_decay < 0:
            raise ValueError("learning rates must be > 0 and weight_decay >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in (0, 1)")
        if not 0 <= self.average_last <= self.epochs:
            raise ValueError(f"average_last must lie in 0..epochs ({self.epochs}), not {self.average_last}")
        if self.select not in SELECTION_RULES:
            raise ValueError(f"select must be one of {', '.join(SELECTION_RULES)}, not {self.select!r}")

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.qat_epochs

    @property
    def split(self) -> Fidelity:
        """The split: the whole training split, the search's validation images held out."""
        return Fidelity(train_subset=None, val_fraction=self.val_fraction, seed=self.seed)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["augment"] = None if self.augment is None else self.augment.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        aug = data.get("augment")
        return cls(**{**data, "augment": None if aug is None else Augment.from_json(aug)})


@dataclass(frozen=True)
class DeployEpoch:
    """One finished epoch: its phase, mean loss, float and int8 validation accuracy."""

    epoch: int
    phase: str  # "float" or "qat"
    loss: float
    val_accuracy: float
    int8_val_accuracy: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class DeployResult:
    """The selected epoch's weights and activation ranges, and how they did."""

    state_dict: dict[str, torch.Tensor] = field(repr=False)
    ranges: Ranges
    best_epoch: int
    val_accuracy: float
    int8_val_accuracy: float
    test_accuracy: float
    history: tuple[DeployEpoch, ...]
    seconds: float
    train_samples: int
    val_samples: int
    resumed_from: int  # epochs already done when this call started (0: a fresh start)


def calibration_indices(train_idx: np.ndarray) -> np.ndarray:
    """The training images the int8 ranges are calibrated on, the same every time."""
    n = min(CALIBRATION_SAMPLES, len(train_idx))
    return np.sort(np.random.default_rng(CALIBRATION_SEED).choice(train_idx, size=n, replace=False))


def int8_accuracy_sim(qat: QATModel, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the int8 model ``qat`` computes (equal to the integer reference's)."""
    correct = 0
    for start in range(0, len(y), INT8_EVAL_BATCH):
        logits = qat.int8_logits(x[start : start + INT8_EVAL_BATCH])
        correct += int((logits.argmax(axis=1) == y[start : start + INT8_EVAL_BATCH]).sum())
    return correct / max(1, len(y))


def keeps_epoch(rule: str, accuracy: float, kept: float | None, earlier: list[float], n_val: int) -> bool:
    """Whether an epoch of int8 validation ``accuracy`` replaces the kept epoch (of ``kept``).

    ``earlier``: the accuracies of the epochs before it; ``n_val``: validation images.  Applied
    epoch by epoch this keeps the epoch ``Recipe.select`` names (see the module docstring): for
    "1se" a new best is always kept (it is the latest within its own threshold), and a later
    epoch within one standard error of the best so far replaces it.
    """
    if kept is None:
        return True
    if rule == "first":
        return accuracy > kept
    if rule == "latest":
        return accuracy >= kept
    return within_one_se(accuracy, max([accuracy, *earlier]), n_val)


def within_one_se(accuracy: float, top: float, n_val: int) -> bool:
    """Whether ``accuracy`` is within one standard error, sqrt(p(1-p)/n), of the best ``top`` on n images."""
    return accuracy >= top - math.sqrt(top * (1 - top) / max(1, n_val))


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts of one architecture (integer counters: the last's)."""
    if not states:
        raise ValueError("no weights to average")
    out: dict[str, torch.Tensor] = {}
    for name, last in states[-1].items():
        if last.is_floating_point():
            out[name] = torch.stack([s[name] for s in states]).mean(dim=0)
        else:  # batchnorm's num_batches_tracked
            out[name] = last.clone()
    return out


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Measure every batchnorm's running mean and variance again over ``x`` (cumulative average)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    was_training = model.training
    model.train()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def train_for_deployment(
    arch: Architecture,
    dataset: Dataset,
    recipe: Recipe,
    checkpoint: str | os.PathLike[str],
    callback: Callable[[DeployEpoch], None] | None = None,
    stop: Callable[[], bool] | None = None,
    *,
    threads: int | None = None,
) -> DeployResult:
    """Train ``arch`` for deployment, resuming from ``checkpoint`` when it holds finished epochs.

    ``callback`` gets every finished epoch (also those replayed from the checkpoint, with their
    stored numbers, so a listener sees the whole curve); ``stop`` is polled during training and
    raises :class:`TrainingStopped` (the last finished epoch stays in the checkpoint).
    """
    check_compatible(arch, dataset)
    start = time.perf_counter()
    path = Path(checkpoint)
    train_idx, val_idx = split_indices(dataset.y_train, recipe.split)
    data = _Data(dataset, train_idx, val_idx)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            run = _Run(arch, recipe, data, path)
            resumed_from = run.restore()
            for stats in run.history:
                if callback is not None:
                    callback(stats)
            while run.epoch < recipe.total_epochs:
                stats = run.train_epoch(stop)
                run.save()
                if callback is not None:
                    callback(stats)
            return run.result(time.perf_counter() - start, resumed_from)
    finally:
        torch.set_num_threads(old_threads)


class _Data:
    """The tensors one deployment training reads."""

    def __init__(self, dataset: Dataset, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
        self.x = to_nchw(dataset.x_train[train_idx]).contiguous()
        self.y = torch.from_numpy(dataset.y_train[train_idx])
        self.x_val_nhwc = dataset.x_train[val_idx]
        self.y_val_np = dataset.y_train[val_idx]
        self.x_val = to_nchw(self.x_val_nhwc).contiguous()
        self.y_val = torch.from_numpy(self.y_val_np)
        self.calibration = dataset.x_train[calibration_indices(train_idx)]
        self.x_test = to_nchw(dataset.x_test).contiguous()
        self.y_test = torch.from_numpy(dataset.y_test)


class _Run:
    """The mutable state of one deployment training, and its checkpoint."""

    def __init__(self, arch: Architecture, recipe: Recipe, data: _Data, path: Path) -> None:
        self.arch, self.recipe, self.data, self.path = arch, recipe, data, path
        self.model: ArchNet = build_model(arch)
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.epoch = 0
        self.history: list[DeployEpoch] = []
        self.ranges: Ranges | None = None
        self.best: dict[str, Any] | None = None
        self.snapshots: list[dict[str, torch.Tensor]] = []  # for recipe.average_last
        self.optimizer = self._optimizer()

    # ---- phases ----

    @property
    def in_qat(self) -> bool:
        return self.epoch >= self.recipe.epochs

    def _optimizer(self) -> torch.optim.Optimizer:
        lr = self.recipe.qat_lr if self.in_qat else self.recipe.lr
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=self.recipe.weight_decay)

    def _steps(self) -> tuple[int, int]:
        """(batch size, batches per epoch); the ragged tail is dropped (batchnorm needs two)."""
        n = len(self.data.y)
        bs = min(self.recipe.batch_size, n)
        return bs, max(1, n // bs)

    def train_epoch(self, stop: Callable[[], bool] | None) -> DeployEpoch:
        """One epoch of the current phase, then its validation numbers."""
        t0 = time.perf_counter()
        if self.epoch == self.recipe.epochs:  # entering QAT: start from the calibrated ranges
            qat = QATModel(self.arch, self.model)
            qat.calibrate(self.data.calibration)
            self.ranges = qat.ranges()
            self.optimizer = self._optimizer()
        qat_model = QATModel(self.arch, self.model, self.ranges) if self.in_qat else None
        net: torch.nn.Module = qat_model if qat_model is not None else self.model
        bs, per_epoch = self._steps()
        phase_epoch = self.epoch - (self.recipe.epochs if self.in_qat else 0)
        phase_epochs = self.recipe.qat_epochs if self.in_qat else self.recipe.epochs
        base_lr = self.recipe.qat_lr if self.in_qat else self.recipe.lr
        net.train()
        perm = torch.randperm(len(self.data.y), generator=self.generator)
        loss_sum = torch.zeros(())
        polled = -math.inf
        for i in range(per_epoch):
            if stop is not None and time.perf_counter() - polled >= STOP_POLL_SECONDS:
                polled = time.perf_counter()
                if stop():
                    raise TrainingStopped(f"stopped in epoch {self.epoch + 1}")
            step = phase_epoch * per_epoch + i
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(step, per_epoch * phase_epochs, base_lr)
            idx = perm[i * bs : (i + 1) * bs]
            x = self.data.x[idx]
            if self.recipe.augment is not None:
                x = augment_batch(x, self.recipe.augment, self.generator)
            loss = F.cross_entropy(net(x), self.data.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach()
        if qat_model is not None:
            self.ranges = qat_model.ranges()
        self.epoch += 1
        if qat_model is None and self.recipe.average_last:
            self._average_weights()
        stats = self._evaluate(float(loss_sum) / per_epoch, time.perf_counter() - t0)
        self.history.append(stats)
        return stats

    def _average_weights(self) -> None:
        """Keep the last float epochs' weights; after the last one, load their mean."""
        if self.epoch > self.recipe.epochs - self.recipe.average_last:
            self.snapshots.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        if self.epoch == self.recipe.epochs and self.snapshots:
            self.model.load_state_dict(average_states(self.snapshots))
            recompute_batchnorm(self.model, self.data.x, self._steps()[0])
            self.snapshots = []

    def _evaluate(self, loss: float, seconds: float) -> DeployEpoch:
        if not math.isfinite(loss):  # before quantising: non-finite weights cannot be
            raise FloatingPointError(f"the training loss diverged in epoch {self.epoch}")
        val = accuracy(self.model, self.data.x_val, self.data.y_val)
        qat = QATModel(self.arch, self.model, self.ranges)
        if self.ranges is None:
            qat.calibrate(self.data.calibration)  # phase 1: post-training quantisation
        int8_val = int8_accuracy_sim(qat.eval(), self.data.x_val_nhwc, self.data.y_val_np)
        stats = DeployEpoch(
            self.epoch, "qat" if self.epoch > self.recipe.epochs else "float", loss, val, int8_val, seconds
        )
        if self._keeps(int8_val):
            self.best = {
                "epoch": self.epoch,
                "state": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "ranges": qat.ranges(),
                "val_accuracy": val,
                "int8_val_accuracy": int8_val,
            }
        return stats

    def _keeps(self, int8_val: float) -> bool:
        kept = None if self.best is None else float(self.best["int8_val_accuracy"])
        earlier = [h.int8_val_accuracy for h in self.history]
        return keeps_epoch(self.recipe.select, int8_val, kept, earlier, len(self.data.y_val_np))

    def result(self, seconds: float, resumed_from: int) -> DeployResult:
        assert self.best is not None
        model = build_model(self.arch)
        model.load_state_dict(self.best["state"])
        test = accuracy(model, self.data.x_test, self.data.y_test)
        return DeployResult(
            state_dict={k: v.contiguous() for k, v in self.best["state"].items()},
            ranges=dict(self.best["ranges"]),
            best_epoch=int(self.best["epoch"]),
            val_accuracy=float(self.best["val_accuracy"]),
            int8_val_accuracy=float(self.best["int8_val_accuracy"]),
            test_accuracy=test,
            history=tuple(self.history),
            seconds=seconds,
            train_samples=len(self.data.y),
            val_samples=len(self.data.y_val),
            resumed_from=resumed_from,
        )

    # ---- checkpoint ----

    def _identity(self) -> str:
        recipe = self.recipe.to_json()
        if not recipe["average_last"]:  # checkpoints written before the option stay resumable
            del recipe["average_last"]
        del recipe["select"]  # it picks among the epochs; the training itself is the same
        return json.dumps({"arch": self.arch.key(), "recipe": recipe}, sort_keys=True)

    def save(self) -> None:
        """Write the state after a finished epoch, whole or not at all."""
        assert self.best is not None
        meta = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "identity": self._identity(),
            "epoch": self.epoch,
            "history": [h.to_json() for h in self.history],
            "ranges": self.ranges,
            "best": {k: v for k, v in self.best.items() if k != "state"},
        }
        payload = {
            "meta": json.dumps(meta),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_state": self.best["state"],
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "snapshots": self.snapshots,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def restore(self) -> int:
        """Load the checkpoint if there is one for this training; the epochs it had finished."""
        if not self.path.exists():
            return 0
        payload = torch.load(self.path, map_location="cpu", weights_only=True)
        meta = json.loads(payload["meta"])
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{self.path} is not a nasweb deployment checkpoint v{CHECKPOINT_VERSION}")
        if meta["identity"] != self._identity():
            raise ValueError(f"{self.path} belongs to another architecture or recipe")
        self.epoch = int(meta["epoch"])
        self.history = [DeployEpoch(**h) for h in meta["history"]]
        self.ranges = (
            None if meta["ranges"] is None else {t: (lo, hi) for t, (lo, hi) in meta["ranges"].items()}
        )
        best = meta["best"]
        best["ranges"] = {t: (lo, hi) for t, (lo, hi) in best["ranges"].items()}
        self.best = {**best, "state": payload["best_state"]}
        self.model.load_state_dict(payload["model"])
        self.optimizer = self._optimizer()
        self.optimizer.load_state_dict(payload["optimizer"])
        self.generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        self.snapshots = list(payload.get("snapshots", []))
        return self.epoch
