"""Training for deployment: QAT equals the integer reference, augmentation, resumable checkpoints."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from searches.engine.deploy.quantize import quantize
from searches.engine.deploy.reference import run_int8
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.training.augment import Augment, augment_batch, for_dataset
from searches.engine.training.datasets import Dataset, load_digits
from searches.engine.training.deployment import (
    DeployEpoch,
    Recipe,
    average_states,
    keeps_epoch,
    train_for_deployment,
)
from searches.engine.training.model import build_model
from searches.engine.training.qat import QATModel
from searches.engine.training.train import Fidelity, TrainingStopped, train_and_evaluate

pytestmark = pytest.mark.engine


def layer(op: str, filters: int | None, stride: int = 1, kernel: int = 3, **kw: bool) -> ConvLayer:
    return ConvLayer(op, kernel, filters, stride, "same", kw.get("pre_pool", False), kw.get("bn", True), True)  # type: ignore[arg-type]


# Every op kind the int8 scheme has: conv, 1x1, depthwise, a three-way branch (an Add chain with
# a partial sum), pre-pool, avg pool, dense.
ARCH = Architecture(
    (8, 8, 1),
    10,
    (
        ConvBlock((layer("conv2d", 6), layer("dwconv2d", None, stride=2))),
        ConvBlock((layer("conv1x1", 6, kernel=1, bn=False, pre_pool=True),), branch=False),
        ConvBlock((layer("conv2d", 6, stride=2, bn=False), layer("conv1x1", 6, kernel=1)), branch=True),
        ConvBlock((layer("dwconv2d", None, stride=2),), branch=True),
    ),
    Pooling("max", 2),
    (Dense(12),),
)
SMALL = Architecture((8, 8, 1), 10, (ConvBlock((layer("conv2d", 4, stride=2),)),), Pooling("avg", 2), ())


@functools.cache
def digits() -> Dataset:
    return load_digits()


def test_the_qat_model_computes_exactly_what_the_integer_reference_does() -> None:
    data = digits()
    trained = train_and_evaluate(ARCH, data, Fidelity(epochs=2, train_subset=None, batch_size=32))
    model = build_model(ARCH)
    model.load_state_dict(trained.state_dict)
    calibration = data.x_train[:256]
    qat = QATModel(ARCH, model)
    qat.calibrate(calibration)
    # Fine-tune quantisation-aware for a while: weights and ranges move away from calibration.
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    qat.train()
    x = torch.from_numpy(data.x_train).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(data.y_train)
    for start in range(0, 640, 32):
        loss = torch.nn.functional.cross_entropy(qat(x[start : start + 32]), y[start : start + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    qat.eval()
    assert qat.ranges() != QATModel(ARCH, model, None).ranges()
    assert "add1/sum1" in qat.ranges()  # the partial sum of the three-way Add has its own range

    qm = quantize(ARCH, model, calibration, ranges=qat.ranges())
    simulated = qat.int8_logits(data.x_test)
    reference = run_int8(qm, qm.quantize_input(data.x_test))
    np.testing.assert_array_equal(simulated, reference)
    assert (simulated.argmax(1) == data.y_test).mean() > 0.5
    # The float forward is the int8 model's dequantised logits.
    logits = qat(torch.from_numpy(data.x_test[:50]).permute(0, 3, 1, 2)).detach().numpy()
    np.testing.assert_allclose(logits, qm.dequantize_output(reference[:50]), rtol=1e-5, atol=1e-5)


def test_post_training_quantisation_of_the_qat_model_equals_the_exporter() -> None:
    data = digits()
    model = build_model(ARCH).eval()
    qat = QATModel(ARCH, model)
    qat.calibrate(data.x_train[:128])
    qm = quantize(ARCH, model, data.x_train[:128])
    np.testing.assert_array_equal(
        qat.int8_logits(data.x_test[:200]), run_int8(qm, qm.quantize_input(data.x_test[:200]))
    )


def test_ranges_without_an_add_partial_sum_are_refused() -> None:
    qat = QATModel(ARCH, build_model(ARCH).eval())
    qat.calibrate(digits().x_train[:64])
    ranges = qat.ranges()
    del ranges["add1/sum1"]
    with pytest.raises(ValueError, match="no activation range for add1/sum1"):
        QATModel(ARCH, qat.net, ranges)


def test_augmentation_suits_the_data_set() -> None:
    assert for_dataset("digits", (8, 8, 1)) is None  # measured: it hurts tiny images
    assert for_dataset("digits", (8, 8, 1), user_enabled=True) == Augment(shift_px=1, hflip=False)
    assert for_dataset("mnist", (28, 28, 1)) == Augment(shift_px=2, hflip=False)  # no flips for digits
    assert for_dataset("fashion-mnist", (28, 28, 1)) == Augment(
        rotation_rad=0.2, rotation_p=0.3, shift_px=2, hflip=True
    )
    assert for_dataset("upload", (28, 28, 1)) is None
    assert for_dataset("upload", (28, 28, 1), user_enabled=True) == Augment(shift_px=2, hflip=False)
    assert Augment.from_json(Augment(hflip=True).to_json()) == Augment(hflip=True)


def test_a_shift_without_rotation_moves_whole_pixels_and_flips_mirror() -> None:
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8) + 1
    gen = torch.Generator().manual_seed(3)
    shifted = augment_batch(x.repeat(16, 1, 1, 1), Augment(rotation_p=0.0, shift_px=2), gen)
    for image in shifted[:, 0]:
        dy, dx = (int(v) for v in torch.nonzero(image == 1.0)[0]) if (image == 1.0).any() else (None, None)
        rows = {tuple(r.tolist()) for r in torch.nonzero(image)}
        assert len(rows) >= 36  # at most 2 rows and 2 columns fall off
        assert set(image.unique().tolist()) <= set(range(0, 65))  # no interpolation
        assert dy is None or (0 <= dy <= 2 and 0 <= dx <= 2)
    flipped = augment_batch(
        x, Augment(rotation_p=0.0, shift_px=0, hflip=True), torch.Generator().manual_seed(0)
    )
    assert torch.equal(flipped, x) or torch.equal(flipped, x.flip(-1))
    again = augment_batch(
        x.repeat(16, 1, 1, 1), Augment(rotation_p=0.0, shift_px=2), torch.Generator().manual_seed(3)
    )
    assert torch.equal(again, shifted)


def test_recipe_round_trips_and_rejects_nonsense() -> None:
    recipe = Recipe(epochs=3, qat_epochs=1, augment=Augment(hflip=True))
    assert Recipe.from_json(recipe.to_json()) == recipe
    with pytest.raises(ValueError, match="epochs"):
        Recipe(epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        Recipe(batch_size=1)


def test_a_stopped_training_resumes_from_its_checkpoint_bit_for_bit(tmp_path: Path) -> None:
    data = digits()
    recipe = Recipe(
        epochs=2, qat_epochs=1, batch_size=64, augment=for_dataset("digits", (8, 8, 1), user_enabled=True)
    )
    straight = train_for_deployment(SMALL, data, recipe, tmp_path / "straight.pt")
    assert [h.phase for h in straight.history] == ["float", "float", "qat"]
    assert straight.resumed_from == 0

    seen: list[DeployEpoch] = []
    with pytest.raises(TrainingStopped):
        train_for_deployment(SMALL, data, recipe, tmp_path / "b.pt", seen.append, stop=lambda: len(seen) >= 2)
    assert [s.epoch for s in seen] == [1, 2]
    replayed: list[int] = []
    resumed = train_for_deployment(SMALL, data, recipe, tmp_path / "b.pt", lambda s: replayed.append(s.epoch))
    assert resumed.resumed_from == 2 and replayed == [1, 2, 3]
    assert list(resumed.history[:2]) == seen  # replayed from the checkpoint, not trained again
    untimed = [replace(h, seconds=0.0) for h in resumed.history]
    assert untimed == [replace(h, seconds=0.0) for h in straight.history]
    for name, tensor in straight.state_dict.items():
        assert torch.equal(tensor, resumed.state_dict[name]), name
    assert resumed.ranges == straight.ranges
    assert resumed.int8_val_accuracy == straight.int8_val_accuracy


def _selected(rule: str, accuracies: list[float], n_val: int) -> int:
    kept: float | None = None
    epoch = 0
    for e, accuracy in enumerate(accuracies, 1):
        if keeps_epoch(rule, accuracy, kept, accuracies[: e - 1], n_val):
            kept, epoch = accuracy, e
    return epoch


def test_each_selection_rule_keeps_the_epoch_it_names() -> None:
    # 100 validation images: one standard error at 0.90 is 3 points.
    accuracies = [0.70, 0.90, 0.86, 0.90, 0.88, 0.86]
    assert _selected("first", accuracies, 100) == 2
    assert _selected("latest", accuracies, 100) == 4
    assert _selected("1se", accuracies, 100) == 5  # 0.88 >= 0.90 - 0.03; 0.86 is not
    # A later new best resets the threshold: 0.95 - 0.0218 excludes the 0.90s before it.
    assert _selected("1se", [*accuracies, 0.95, 0.93], 100) == 8
    assert _selected("1se", [*accuracies, 0.95, 0.92], 100) == 7
    # On 10,000 images the standard error is 0.3 points: nearly the best epoch.
    assert _selected("1se", [0.90, 0.905, 0.903, 0.899], 10_000) == 3


def test_the_selection_rule_picks_among_the_epochs_the_training_is_the_same(tmp_path: Path) -> None:
    """36 validation images: epochs tie and many lie within one standard error of the best."""
    data = digits()
    base = Recipe(epochs=12, qat_epochs=1, batch_size=32, lr=2e-2, val_fraction=0.02)
    runs = {
        rule: train_for_deployment(SMALL, data, replace(base, select=rule), tmp_path / f"{rule}.pt")
        for rule in ("first", "latest", "1se")
    }
    histories = {rule: [replace(h, seconds=0.0) for h in r.history] for rule, r in runs.items()}
    assert histories["first"] == histories["latest"] == histories["1se"]
    accuracies = [h.int8_val_accuracy for h in runs["first"].history]
    top, n = max(accuracies), round(len(data.y_train) * 0.02)
    tied = [e for e, a in enumerate(accuracies, 1) if a == top]
    near = [e for e, a in enumerate(accuracies, 1) if a >= top - (top * (1 - top) / n) ** 0.5]
    assert len(tied) >= 2 and len(near) > len(tied), f"nothing to choose between: {accuracies}"
    assert [runs[rule].best_epoch for rule in ("first", "latest", "1se")] == [tied[0], tied[-1], near[-1]]
    with pytest.raises(ValueError, match="select must be one of first, latest, 1se"):
        Recipe(select="best")


def test_a_checkpoint_of_another_training_is_refused(tmp_path: Path) -> None:
    data = digits()
    recipe = Recipe(epochs=1, qat_epochs=0, batch_size=64)
    train_for_deployment(SMALL, data, recipe, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="another architecture or recipe"):
        train_for_deployment(SMALL, data, Recipe(epochs=2, qat_epochs=0, batch_size=64), tmp_path / "c.pt")


def test_average_last_must_fit_in_the_float_phase() -> None:
    assert Recipe.from_json(Recipe(epochs=4, average_last=3).to_json()).average_last == 3
    with pytest.raises(ValueError, match=r"average_last must lie in 0..epochs \(4\), not 5"):
        Recipe(epochs=4, average_last=5)
    with pytest.raises(ValueError, match="average_last"):
        Recipe(average_last=-1)
    # A recipe stored before the option existed still loads (averaging off).
    old = {k: v for k, v in Recipe().to_json().items() if k != "average_last"}
    assert Recipe.from_json(old).average_last == 0


def test_average_states_is_the_elementwise_mean() -> None:
    states = [build_model(SMALL).state_dict() for _ in range(3)]
    for i, state in enumerate(states):
        for v in state.values():
            if v.is_floating_point():
                v.normal_(generator=torch.Generator().manual_seed(i))
    mean = average_states(states)
    for name, v in mean.items():
        if v.is_floating_point():
            expected = (states[0][name] + states[1][name] + states[2][name]) / 3
            torch.testing.assert_close(v, expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(v, states[-1][name])
    with pytest.raises(ValueError, match="no weights"):
        average_states([])


def test_averaged_weights_are_the_mean_of_the_last_float_epochs(tmp_path: Path) -> None:
    data = digits()
    plain = Recipe(epochs=3, qat_epochs=0, batch_size=64)
    # Averaging happens after the last float epoch only, so the plain run's weights after epochs
    # 2 and 3 are exactly the snapshots the averaging run keeps.
    snapshots: list[dict[str, torch.Tensor]] = []

    def keep(stats: DeployEpoch) -> None:
        if stats.epoch >= 2:
            snapshots.append(torch.load(tmp_path / "plain.pt", weights_only=True)["model"])

    train_for_deployment(SMALL, data, plain, tmp_path / "plain.pt", keep)
    assert len(snapshots) == 2
    averaged = replace(plain, average_last=2)
    result = train_for_deployment(SMALL, data, averaged, tmp_path / "avg.pt")
    final = torch.load(tmp_path / "avg.pt", weights_only=True)
    assert final["snapshots"] == []  # consumed when the float phase ended
    weights = final["model"]
    for name, v in weights.items():
        if name.endswith(("weight", "bias")):
            torch.testing.assert_close(v, (snapshots[0][name] + snapshots[1][name]) / 2, rtol=0, atol=1e-6)
    # Batchnorm statistics are measured again for the averaged weights, not averaged.
    bn_means = [n for n in weights if n.endswith("running_mean")]
    assert bn_means
    for name in bn_means:
        assert not torch.allclose(weights[name], (snapshots[0][name] + snapshots[1][name]) / 2, atol=1e-6)
    # The averaged model is the last float epoch's result; resources are those of the architecture.
    assert [h.phase for h in result.history] == ["float"] * 3
    reference = build_model(SMALL).state_dict()
    assert {k: v.shape for k, v in result.state_dict.items()} == {k: v.shape for k, v in reference.items()}
    qm = quantize(SMALL, _loaded(result.state_dict), data.x_train[:64], ranges=result.ranges)
    logits = run_int8(qm, qm.quantize_input(data.x_test))
    assert (logits.argmax(1) == data.y_test).mean() > 0.3  # a tiny net after 3 epochs; chance is 0.1


def _loaded(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model(SMALL)
    model.load_state_dict(state)
    return model.eval()


def test_a_stopped_averaging_training_resumes_bit_for_bit(tmp_path: Path) -> None:
    data = digits()
    recipe = Recipe(epochs=3, qat_epochs=1, batch_size=64, average_last=2)
    straight = train_for_deployment(SMALL, data, recipe, tmp_path / "straight.pt")
    seen: list[DeployEpoch] = []
    with pytest.raises(TrainingStopped):
        train_for_deployment(SMALL, data, recipe, tmp_path / "b.pt", seen.append, stop=lambda: len(seen) >= 2)
    # Stopped after epoch 2: its snapshot waits in the checkpoint for the average at epoch 3.
    assert len(torch.load(tmp_path / "b.pt", weights_only=True)["snapshots"]) == 1
    resumed = train_for_deployment(SMALL, data, recipe, tmp_path / "b.pt")
    assert resumed.resumed_from == 2
    untimed = [replace(h, seconds=0.0) for h in resumed.history]
    assert untimed == [replace(h, seconds=0.0) for h in straight.history]
    for name, tensor in straight.state_dict.items():
        assert torch.equal(tensor, resumed.state_dict[name]), name
    assert resumed.ranges == straight.ranges
