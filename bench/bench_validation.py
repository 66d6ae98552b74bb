"""The per-epoch cost of training for deployment: the int8 validation pass and the QAT step.

Every epoch of a deployment training measures int8 validation accuracy with the QAT model's
integer path, and every QAT step runs that path beside the float one.  Their integer
convolutions sum ``w·q`` either with a tap loop in numpy or with oneDNN's direct float32
convolution (``int8_scheme.conv_int``; exact where every sum stays below 2^24); an evaluation
may also skip the float path, which only training needs.  This benchmark times each way on the
headline's deployed Fashion-MNIST models (docs/headline-fashion-mnist.json), in one process,
one torch thread, medians of ``--repeat`` runs, and checks that every way predicts the same
int8 logits:

    python bench/bench_validation.py [--images 1000] [--repeat 3] [--write]

Seconds are scaled to the full validation split (6,000 images) and to a QAT epoch
(``len(train) / batch`` steps); calibration (512 images, once per float epoch) is timed apart.
``--write`` replaces the "Training for deployment: the validation pass" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
import torch.nn.functional as F

from bench._report import replace_section
from searches.engine.resources.report import analyze
from searches.engine.space.arch import from_json as arch_from_json
from searches.engine.training import int8_scheme
from searches.engine.training.datasets import load_dataset
from searches.engine.training.deployment import Recipe, calibration_indices
from searches.engine.training.model import build_model, to_nchw
from searches.engine.training.qat import QATModel
from searches.engine.training.train import accuracy, split_indices

TITLE = "Training for deployment: the validation pass"
MODELS = ROOT / "docs" / "headline-fashion-mnist.json"
QAT_STEPS = 6


@contextmanager
def tap_loop() -> Iterator[None]:
    """Run ``conv_int`` on its numpy tap loop (the path before oneDNN summed the taps)."""
    original = int8_scheme.direct_conv_is_exact
    int8_scheme.direct_conv_is_exact = lambda: False
    try:
        yield
    finally:
        int8_scheme.direct_conv_is_exact = original


def median_seconds(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def both_paths(qat: QATModel, x: np.ndarray) -> np.ndarray:
    """The int8 logits as an evaluation computed them before: float and integer paths together."""
    with torch.no_grad():
        tensor = torch.from_numpy(np.asarray(x, dtype=np.float32)).permute(0, 3, 1, 2)
        return qat._run(tensor)[1]


def in_batches(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def measure(arch_json: dict[str, Any], images: int, repeat: int) -> dict[str, Any]:
    torch.manual_seed(0)
    arch, data = arch_from_json(arch_json), load_dataset("fashion-mnist")
    recipe = Recipe()
    train_idx, val_idx = split_indices(data.y_train, recipe.split)
    model = build_model(arch)
    model.train()
    with torch.no_grad():  # move batchnorm's statistics off their initial values
        model(to_nchw(data.x_train[train_idx[:512]]).contiguous())
    model.eval()
    calibration = data.x_train[calibration_indices(train_idx)]
    sample = data.x_train[val_idx[:images]]
    qat = QATModel(arch, model)
    qat.calibrate(calibration)
    qat.eval()

    new = in_batches(qat.int8_logits, sample)
    with tap_loop():
        assert np.array_equal(in_batches(qat.int8_logits, sample), new)
        assert np.array_equal(in_batches(lambda b: both_paths(qat, b), sample), new)
    scale = len(val_idx) / images
    row: dict[str, Any] = {"val_images": len(val_idx)}
    x_val, y_val = to_nchw(sample).contiguous(), torch.from_numpy(data.y_train[val_idx[:images]])
    row["float_accuracy"] = scale * median_seconds(lambda: accuracy(model, x_val, y_val), repeat)
    row["calibration"] = median_seconds(lambda: qat.calibrate(calibration), repeat)
    with tap_loop():
        before = median_seconds(lambda: in_batches(lambda b: both_paths(qat, b), sample), repeat)
        row["int8_before"] = scale * before
        row["int8_tap_only"] = scale * median_seconds(lambda: in_batches(qat.int8_logits, sample), repeat)
    row["int8_now"] = scale * median_seconds(lambda: in_batches(qat.int8_logits, sample), repeat)

    x = to_nchw(data.x_train[train_idx[: recipe.batch_size]]).contiguous()
    y = torch.from_numpy(data.y_train[train_idx[: recipe.batch_size]])
    trainer = QATModel(arch, model, qat.ranges())
    trainer.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def qat_steps() -> None:
        for _ in range(QAT_STEPS):
            loss = F.cross_entropy(trainer(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    steps_per_epoch = len(train_idx) // recipe.batch_size
    with tap_loop():
        row["qat_epoch_before"] = median_seconds(qat_steps, repeat) / QAT_STEPS * steps_per_epoch
    row["qat_epoch_now"] = median_seconds(qat_steps, repeat) / QAT_STEPS * steps_per_epoch
    return row


def report(rows: list[dict[str, Any]], args: argparse.Namespace, archs: list[dict[str, Any]]) -> str:
    lines = [
        f"Command: `python bench/bench_validation.py --images {args.images} --repeat {args.repeat} --write`",
        f"Machine: {platform.machine()}, torch {torch.__version__} CPU, one thread; "
        f"medians of {args.repeat}, "
        f"timed on {args.images} validation images and scaled to the split's {rows[0]['val_images']:,}; "
        "every way gives the same int8 logits (checked).",
        "",
        "The headline's deployed models (docs/headline-fashion-mnist.json). *Before*: the integer path's "
        "taps summed by a numpy loop, and an evaluation also running the float path; *now*: oneDNN's "
        "direct float32 convolution sums the taps (exact below 2^24) and an evaluation runs the integer "
        "path alone. Seconds per epoch:",
        "",
        "| model | MACs | float val acc | calibration | int8 val, before | int8 val, tap loop alone "
        "| int8 val, now | validation, before → now | QAT epoch, before → now |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (row, arch) in enumerate(zip(rows, archs, strict=True), start=1):
        macs = analyze(arch_from_json(arch)).macs
        before = row["float_accuracy"] + row["calibration"] + row["int8_before"]
        now = row["float_accuracy"] + row["calibration"] + row["int8_now"]
        lines.append(
            f"| {i} | {macs / 1e6:.2f}M | {row['float_accuracy']:.1f} | {row['calibration']:.1f} "
            f"| {row['int8_before']:.1f} | {row['int8_tap_only']:.1f} | {row['int8_now']:.1f} "
            f"| {before:.1f} → {now:.1f} ({before / now:.1f}x) "
            f"| {row['qat_epoch_before']:.0f} → {row['qat_epoch_now']:.0f} "
            f"({row['qat_epoch_before'] / row['qat_epoch_now']:.1f}x) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="validation images timed (scaled up)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    archs = json.loads(MODELS.read_text())
    rows = []
    for i, arch in enumerate(archs, start=1):
        rows.append(measure(arch, args.images, args.repeat))
        print(f"model {i}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items() if isinstance(v, float)))
    text = report(rows, args, archs)
    print(text)
    if args.write:
        replace_section(ROOT / "docs" / "benchmarks.md", TITLE, text)


if __name__ == "__main__":
    main()
