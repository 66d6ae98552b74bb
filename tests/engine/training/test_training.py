"""The float model mirrors the int8 graph, and training is deterministic, fast and sane."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from searches.engine.resources.graph import build_graph
from searches.engine.space.arch import (
    Architecture,
    ConvBlock,
    ConvLayer,
    Dense,
    Pooling,
    layer_output_shape,
    same_padding,
    validate,
)
from searches.engine.training.datasets import Dataset, dataset_from_arrays, load_dataset
from searches.engine.training.model import ArchNet, build_model, count_params
from searches.engine.training.train import (
    EpochStats,
    Fidelity,
    TrainingStopped,
    load_weights,
    save_weights,
    split_indices,
    train_and_evaluate,
)

pytestmark = pytest.mark.engine


def conv(filters: int, kernel: int = 3, stride: int = 1, **kw: object) -> ConvLayer:
    return ConvLayer(op="conv2d", kernel=kernel, filters=filters, stride=stride, **kw)  # type: ignore[arg-type]


def pw(filters: int, **kw: object) -> ConvLayer:
    return ConvLayer(op="conv1x1", kernel=1, filters=filters, **kw)  # type: ignore[arg-type]


def dw(kernel: int = 3, stride: int = 1, **kw: object) -> ConvLayer:
    return ConvLayer(op="dwconv2d", kernel=kernel, filters=None, stride=stride, **kw)  # type: ignore[arg-type]


B = ConvBlock

# Hand-built candidates covering every structural feature of the search space.
ARCHS: dict[str, Architecture] = {
    # Asymmetric 'same' stride-2 pad, a branch with a pre-pool, avg pool, one dense layer.
    "branch": Architecture(
        (8, 8, 1),
        10,
        (B((conv(4),)), B((conv(6, stride=2),)), B((pw(6, pre_pool=True),), branch=True)),
        Pooling("avg", 2),
        (Dense(12),),
    ),
    # Odd, non-square input, depthwise stride 2, no pooling, no dense layer.
    "dw-odd": Architecture((9, 7, 2), 3, (B((dw(5, stride=2), pw(5))),), None, ()),
    # Valid padding, pre-pool before a depthwise conv, a branch, global max pool, three dense layers.
    "valid-global": Architecture(
        (12, 12, 3),
        4,
        (
            B((conv(8, 5, padding="valid"),)),
            B((dw(pre_pool=True), conv(16, stride=2))),
            B((conv(16, 5, stride=2, padding="valid"),), branch=True),
        ),
        Pooling("max", "global"),
        (Dense(10), Dense(11), Dense(12)),
    ),
    # A group of three parallel blocks, max pool 4, two dense layers.
    "three-way": Architecture(
        (16, 16, 1),
        2,
        (B((conv(4),)), B((conv(4), conv(4, 5))), B((dw(),), branch=True), B((pw(4),), branch=True)),
        Pooling("max", 4),
        (Dense(10), Dense(10)),
    ),
    # Kernel larger than the input, no BN and no ReLU, no pooling.
    "plain": Architecture(
        (5, 5, 1),
        3,
        (B((conv(3, 7, batchnorm=False, relu=False), conv(2, padding="valid", batchnorm=False))),),
        None,
        (),
    ),
    # Avg pool 6 on an odd map (floor), a 7x7 depthwise conv.
    "pool6": Architecture((13, 13, 2), 5, (B((conv(3, stride=1), dw(7))),), Pooling("avg", 6), (Dense(16),)),
}


def no_bn(arch: Architecture) -> Architecture:
    """The same architecture with batchnorm removed from every layer."""
    blocks = tuple(
        replace(b, layers=tuple(replace(x, batchnorm=False) for x in b.layers)) for b in arch.conv_blocks
    )
    return arch.with_blocks(blocks)


def bn_channels(arch: Architecture) -> int:
    """Channels of every batchnorm layer together (each adds gamma and beta)."""
    total, shape = 0, arch.input_shape
    outputs = validate(arch)
    for group in arch.groups():
        for b in group:
            s = shape
            for layer in arch.conv_blocks[b].layers:
                s = layer_output_shape(layer, s)[1]
                total += s[2] if layer.batchnorm else 0
        shape = outputs[group[0]]
    return total


# ---- a numpy reference of the deployed graph's float semantics -------------------------------


def ref_forward(model: ArchNet, arch: Architecture, x: np.ndarray) -> np.ndarray:
    """Logits computed directly from graph.py's description, in NHWC, float64."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    for group in arch.groups():
        outs = []
        for b in group:
            y = x
            for i, layer in enumerate(arch.conv_blocks[b].layers):
                y = ref_conv(y, layer, sd, f"blocks.{b}.{i}.")
            outs.append(y)
        x = np.sum(outs, axis=0)
    x = ref_pool(x, arch.pooling)
    x = x.reshape(len(x), -1)  # H, W, C order
    for i in range(len(arch.dense)):
        x = np.maximum(x @ sd[f"dense.{i}.weight"].T + sd[f"dense.{i}.bias"], 0.0)
    return x @ sd["logits.weight"].T + sd["logits.bias"]


def ref_conv(x: np.ndarray, layer: ConvLayer, sd: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    if layer.pre_pool:
        x = ref_pool(x, Pooling("max", 2))
    n, h, w, _ = x.shape
    k, s = layer.kernel, layer.stride
    if layer.padding == "same":
        x = np.pad(x, ((0, 0), same_padding(h, k, s), same_padding(w, k, s), (0, 0)))
    ho, wo = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    weight = sd[prefix + "conv.weight"]
    out = np.zeros((n, ho, wo, weight.shape[0]))
    for di in range(k):
        for dj in range(k):
            patch = x[:, di : di + s * (ho - 1) + 1 : s, dj : dj + s * (wo - 1) + 1 : s, :]
            out += patch * weight[:, 0, di, dj] if layer.op == "dwconv2d" else patch @ weight[:, :, di, dj].T
    out += sd[prefix + "conv.bias"]
    if layer.batchnorm:
        scale = sd[prefix + "bn.weight"] / np.sqrt(sd[prefix + "bn.running_var"] + 1e-5)
        out = (out - sd[prefix + "bn.running_mean"]) * scale + sd[prefix + "bn.bias"]
    return np.maximum(out, 0.0) if layer.relu else out


def ref_pool(x: np.ndarray, pooling: Pooling | None) -> np.ndarray:
    if pooling is None:
        return x
    if pooling.size == "global":
        return x.mean((1, 2), keepdims=True) if pooling.type == "avg" else x.max((1, 2), keepdims=True)
    n, h, w, c = x.shape
    s = int(pooling.size)
    windows = x[:, : h // s * s, : w // s * s].reshape(n, h // s, s, w // s, s, c)
    return windows.mean((2, 4)) if pooling.type == "avg" else windows.max((2, 4))


def _randomise(model: ArchNet, seed: int) -> None:
    """Non-trivial weights and batchnorm statistics, so the comparison tests everything."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=gen) * 0.5
                tensor.copy_(values + 0.5 if name.endswith("running_var") else values - 0.25)


@pytest.mark.parametrize("name", list(ARCHS))
def test_model_matches_numpy_reference(name: str) -> None:
    arch = ARCHS[name]
    torch.manual_seed(0)
    model = build_model(arch).double().eval()
    _randomise(model, 1)
    h, w, c = arch.input_shape
    x = np.random.default_rng(2).random((3, h, w, c))
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert out.shape == (3, arch.classes)
    np.testing.assert_allclose(out, ref_forward(model, arch, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(ARCHS))
def test_param_count_matches_graph(name: str) -> None:
    arch = ARCHS[name]
    graph_params = sum(info.params for info in build_graph(no_bn(arch))[1])
    assert count_params(build_model(no_bn(arch))) == graph_params
    # Batchnorm adds gamma and beta per channel; folding removes them again at export.
    assert count_params(build_model(arch)) == graph_params + 2 * bn_channels(arch)


@pytest.mark.parametrize("name", list(ARCHS))
def test_output_shape_and_state_dict_names(name: str) -> None:
    arch = ARCHS[name]
    model = build_model(arch)
    h, w, c = arch.input_shape
    assert model(torch.zeros(2, c, h, w)).shape == (2, arch.classes)
    names = set(model.state_dict())
    assert "logits.weight" in names and "blocks.0.0.conv.bias" in names
    assert all(f"dense.{i}.weight" in names for i in range(len(arch.dense)))


def test_dropout_only_in_training() -> None:
    arch = ARCHS["valid-global"]
    torch.manual_seed(0)
    model = build_model(arch)
    x = torch.rand(4, 3, 12, 12)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


# ---- training ----------------------------------------------------------------------------

DIGITS_NET = Architecture(
    (8, 8, 1), 10, (B((conv(16),)), B((conv(32, stride=2),))), Pooling("avg", 2), (Dense(32),)
)
QUICK = Fidelity(epochs=2, train_subset=600, batch_size=32, seed=5)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_training_is_deterministic(digits: Dataset) -> None:
    first = train_and_evaluate(DIGITS_NET, digits, QUICK)
    second = train_and_evaluate(DIGITS_NET, digits, QUICK)
    assert first.val_accuracy == second.val_accuracy and first.test_accuracy == second.test_accuracy
    assert [e.loss for e in first.history] == [e.loss for e in second.history]
    assert first.state_dict.keys() == second.state_dict.keys()
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    # Multi-threaded kernels are deterministic too for a fixed thread count.
    two = [train_and_evaluate(DIGITS_NET, digits, QUICK, threads=2) for _ in range(2)]
    assert all(torch.equal(two[0].state_dict[k], two[1].state_dict[k]) for k in first.state_dict)
    other = train_and_evaluate(DIGITS_NET, digits, replace(QUICK, seed=6))
    assert not torch.equal(other.state_dict["logits.weight"], first.state_dict["logits.weight"])


def test_digits_reaches_sane_accuracy(digits: Dataset) -> None:
    fid = Fidelity(epochs=10, train_subset=None, batch_size=32, seed=0)
    result = train_and_evaluate(DIGITS_NET, digits, fid)
    assert result.test_accuracy > 0.9 and result.val_accuracy > 0.9
    assert result.epochs == 10 and len(result.history) == 10
    assert result.history[-1].loss < result.history[0].loss
    # The reported validation accuracy is that of the final weights, not the best epoch.
    assert result.val_accuracy == result.history[-1].val_accuracy
    assert result.train_seconds < 30 and not result.diverged


def test_split_sizes_and_disjointness(digits: Dataset) -> None:
    train_idx, val_idx = split_indices(digits.y_train, QUICK)
    assert len(train_idx) == 600 and len(val_idx) == round(0.1 * len(digits.y_train))
    assert np.intersect1d(train_idx, val_idx).size == 0
    result = train_and_evaluate(DIGITS_NET, digits, replace(QUICK, epochs=1))
    assert result.train_samples == 600 and result.val_samples == len(val_idx)


def test_callback_and_stop(digits: Dataset) -> None:
    seen: list[EpochStats] = []
    train_and_evaluate(DIGITS_NET, digits, QUICK, callback=seen.append)
    assert [s.epoch for s in seen] == [1, 2] and all(0.0 <= s.val_accuracy <= 1.0 for s in seen)
    with pytest.raises(TrainingStopped, match="epoch 1"):
        train_and_evaluate(DIGITS_NET, digits, QUICK, stop=lambda: True)
    # Stop once the first epoch has been reported: training ends early in epoch 2.
    done: list[EpochStats] = []
    with pytest.raises(TrainingStopped, match="epoch 2"):
        train_and_evaluate(DIGITS_NET, digits, QUICK, callback=done.append, stop=lambda: bool(done))


def test_global_torch_state_restored(digits: Dataset) -> None:
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    train_and_evaluate(DIGITS_NET, digits, replace(QUICK, epochs=1), threads=2 if threads == 1 else 1)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)


def test_weights_round_trip(digits: Dataset, tmp_path: Path) -> None:
    result = train_and_evaluate(DIGITS_NET, digits, replace(QUICK, epochs=1))
    path = tmp_path / "weights.pt"
    save_weights(result.state_dict, path)
    model = load_weights(DIGITS_NET, path)
    x = torch.from_numpy(digits.x_test).permute(0, 3, 1, 2)
    with torch.inference_mode():
        acc = float((model(x).argmax(1).numpy() == digits.y_test).mean())
    assert acc == pytest.approx(result.test_accuracy)


def test_mismatched_dataset_rejected(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="does not match the dataset"):
        train_and_evaluate(ARCHS["plain"], digits, QUICK)
    with pytest.raises(ValueError, match="classes"):
        train_and_evaluate(replace(DIGITS_NET, classes=3), digits, QUICK)


def test_tiny_dataset_and_bad_fidelity() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 8, 8), dtype=np.uint8)
    y = np.arange(12) % 10
    tiny = dataset_from_arrays(x, y, x, y, classes=10)
    result = train_and_evaluate(DIGITS_NET, tiny, Fidelity(epochs=1, batch_size=64, train_subset=None))
    assert result.epochs == 1 and result.train_samples == 11
    with pytest.raises(ValueError, match="val_fraction"):
        Fidelity(val_fraction=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        Fidelity(batch_size=1)
