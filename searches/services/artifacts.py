"""A trained candidate's files: its weights and int8 model, what they are named and how they are written.

Both go to the artifact store (:mod:`searches.services.files`: local disk or object storage)
under ``weights/run-<id>/``, so deleting the run deletes them and any machine reads them back.
Every trained candidate is quantised right after training (:func:`int8_metrics`) so that its
int8 accuracies are stored beside the float ones; the export (:mod:`searches.services.export`)
reads these files back.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from searches.engine.deploy.int8 import QuantModel
from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import int8_accuracy
from searches.engine.space.arch import Architecture
from searches.engine.training.datasets import Dataset
from searches.engine.training.model import ArchNet, build_model
from searches.engine.training.train import (
    Fidelity,
    default_threads,
    load_weights,
    save_weights,
    split_indices,
)
from searches.models import SearchRun
from searches.services import files

logger = logging.getLogger(__name__)

CALIBRATION_SAMPLES = 512
# Fixed, so that quantising on demand later picks the same images the evaluation did.
CALIBRATION_SEED = 0


def run_folder(run_id: int) -> str:
    """The stored folder of everything a run's candidates saved."""
    return f"weights/run-{run_id}"


def _rung_suffix(rung: int) -> str:
    # Each ASHA rung's files under their own names: a promotion always resumes from the weights
    # its rung below stored, even when a lost attempt is trained again after saving.
    return f".rung-{rung}" if rung else ""


def weights_name(run: SearchRun, candidate_index: int, rung: int = 0) -> str:
    return f"{run_folder(run.pk)}/candidate-{candidate_index}{_rung_suffix(rung)}.pt"


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


def int8_name(run: SearchRun, candidate_index: int, rung: int = 0) -> str:
    """Where a candidate's int8 model is stored: beside its weights, so run deletion removes both."""
    return f"{run_folder(run.pk)}/candidate-{candidate_index}{_rung_suffix(rung)}.int8.npz"


def save_quant_model(qm: QuantModel, name: str) -> str:
    """Store ``qm`` under ``name`` (written whole: serialised first, then stored); the stored name."""
    buffer = io.BytesIO()
    qm.save(buffer)
    return files.save_bytes(name, buffer.getvalue())


def load_quant_model(name: str) -> QuantModel:
    """A stored int8 model; OSError when it is not stored, ValueError when it is not one."""
    return QuantModel.load(io.BytesIO(files.read_bytes(name)))


def save_weights_file(state_dict: dict[str, torch.Tensor], name: str) -> str:
    buffer = io.BytesIO()
    save_weights(state_dict, buffer)
    return files.save_bytes(name, buffer.getvalue())


def load_weights_file(arch: Architecture, name: str) -> ArchNet:
    """The float model of ``arch`` with the stored weights ``name`` (no pickle)."""
    return load_weights(arch, io.BytesIO(files.read_bytes(name)))


def int8_metrics(
    run: SearchRun,
    candidate_index: int,
    arch: Architecture,
    state_dict: dict[str, torch.Tensor],
    dataset: Dataset,
    fidelity: Fidelity,
    rung: int = 0,
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
        name = save_quant_model(qm, int8_name(run, candidate_index, rung))
    except Exception:
        logger.warning("could not quantise candidate %s of run %s", candidate_index, run.pk, exc_info=True)
        return {}
    return {"int8_model": name, "int8_val_accuracy": val, "int8_test_accuracy": test}


def save_trained(
    run: SearchRun,
    index: int,
    arch: Architecture,
    state_dict: dict[str, torch.Tensor],
    dataset: Dataset,
    fidelity: Fidelity,
    rung: int = 0,
) -> tuple[str, dict[str, Any]]:
    """Store a trained candidate's weights and int8 model: (weights name, int8 metrics to store).

    ``rung`` > 0 (an ASHA promotion) stores them under that rung's names.
    """
    name = save_weights_file(state_dict, weights_name(run, index, rung))
    return name, int8_metrics(run, index, arch, state_dict, dataset, fidelity, rung)
