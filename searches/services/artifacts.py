"""A trained candidate's files: its weights and int8 model, where they live and how they are written.

Every trained candidate is quantised right after training (:func:`int8_metrics`) so that its
int8 accuracies are stored beside the float ones; the export (:mod:`searches.services.export`)
reads these files back.  Imports no other service.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from django.conf import settings
from threadpoolctl import threadpool_limits

from searches.engine.deploy.int8 import QuantModel
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import int8_accuracy
from searches.engine.space.arch import Architecture
from searches.engine.training.datasets import Dataset
from searches.engine.training.model import ArchNet, build_model
from searches.engine.training.train import Fidelity, default_threads, save_weights, split_indices
from searches.models import SearchRun

logger = logging.getLogger(__name__)

CALIBRATION_SAMPLES = 512
# Fixed, so that quantising on demand later picks the same images the evaluation did.
CALIBRATION_SEED = 0


def weights_path(run: SearchRun, candidate_index: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "weights" / f"run-{run.pk}" / f"candidate-{candidate_index}.pt"


def calibration_images(dataset: Dataset, fidelity: Fidelity) -> np.ndarray:
    """Up to ``CALIBRATION_SAMPLES`` training-split images (NHWC floats), the same every time."""
    train_idx, _ = split_indices(dataset.y_train, fidelity)
    n = min(CALIBRATION_SAMPLES, len(train_idx))
    picked = np.random.default_rng(CALIBRATION_SEED).choice(train_idx, size=n, replace=False)
    return dataset.x_train[np.sort(picked)]


def quantize_trained(arch: Architecture, model: ArchNet, dataset: Dataset, fidelity: Fidelity) -> QuantModel:
    """The int8 model of a trained float model, calibrated on its training split."""
    return quantize(arch, model, calibration_images(dataset, fidelity))


def int8_accuracies(qm: QuantModel, dataset: Dataset, fidelity: Fidelity) -> tuple[float, float]:
    """(validation, test) accuracy of the int8 model on the images the float accuracies used."""
    _, val_idx = split_indices(dataset.y_train, fidelity)
    val = int8_accuracy(qm, dataset.x_train[val_idx], dataset.y_train[val_idx])
    return val, int8_accuracy(qm, dataset.x_test, dataset.y_test)


@contextlib.contextmanager
def evaluation_threads() -> Iterator[None]:
    """Quantise on the threads an evaluation trains on (one): evaluations run side by side.

    numpy's BLAS would otherwise start a thread per core for the integer reference, which
    fights the other evaluations for the cores (measured no faster alone on two cores).
    """
    threads = default_threads()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(old)


def int8_path(run: SearchRun, candidate_index: int) -> Path:
    """Where a candidate's int8 model lives: beside its weights, so run deletion removes both."""
    return weights_path(run, candidate_index).with_suffix(".int8.npz")


def media_name(path: Path) -> str:
    return str(path.relative_to(settings.MEDIA_ROOT))


def save_quant_model(qm: QuantModel, path: Path) -> None:
    """Write ``qm`` to ``path`` whole or not at all (a temporary file renamed into place)."""
    buffer = io.BytesIO()
    qm.save(buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def int8_metrics(
    run: SearchRun,
    candidate_index: int,
    arch: Architecture,
    state_dict: dict[str, torch.Tensor],
    dataset: Dataset,
    fidelity: Fidelity,
) -> dict[str, Any]:
    """Quantise a freshly trained candidate and save its int8 model; the metrics to store.

    A model that cannot be quantised does not fail its evaluation (the float result stands):
    the error is logged and the export quantises again on demand, where it is reported.
    """
    try:
        model = build_model(arch)
        model.load_state_dict(state_dict)
        with evaluation_threads():
            qm = quantize_trained(arch, model.eval(), dataset, fidelity)
            val, test = int8_accuracies(qm, dataset, fidelity)
        path = int8_path(run, candidate_index)
        save_quant_model(qm, path)
    except Exception:
        logger.warning("could not quantise candidate %s of run %s", candidate_index, run.pk, exc_info=True)
        return {}
    return {"int8_model": media_name(path), "int8_val_accuracy": val, "int8_test_accuracy": test}


def save_trained(
    run: SearchRun,
    index: int,
    arch: Architecture,
    state_dict: dict[str, torch.Tensor],
    dataset: Dataset,
    fidelity: Fidelity,
) -> tuple[Path, dict[str, Any]]:
    """Save a trained candidate's weights and int8 model: (weights path, int8 metrics to store)."""
    path = weights_path(run, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(state_dict, path)
    return path, int8_metrics(run, index, arch, state_dict, dataset, fidelity)
