"""Dataset loaders: bundled digits, Debian Fashion-MNIST, IDX/NPZ files, validation and splits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searches.engine.training.datasets import (
    FASHION_MNIST_ENV,
    FASHION_MNIST_FILES,
    DatasetError,
    dataset_from_arrays,
    fashion_mnist_available,
    load_dataset,
    load_idx,
    load_idx_dataset,
    load_npz,
    read_idx,
    stratified_split,
)

pytestmark = pytest.mark.engine


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file (big-endian), optionally gzip-compressed."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.asarray(array).astype(dtypes[code]).tobytes()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _images(n: int, h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def _labels(n: int, classes: int = 3) -> np.ndarray:
    return (np.arange(n) % classes).astype(np.uint8)


# ---- digits and Fashion-MNIST ----------------------------------------------------------------


def test_digits_shapes_and_split() -> None:
    ds = load_dataset("digits")
    assert ds.input_shape == (8, 8, 1) and ds.classes == 10
    assert ds.x_train.shape == (1438, 8, 8, 1) and ds.x_test.shape == (359, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() == 1.0
    # Stratified: every class keeps its share of the test split, to within one image.
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - 0.2 * counts) <= 1)
    again = load_dataset("digits")
    assert np.array_equal(ds.x_test, again.x_test) and np.array_equal(ds.y_train, again.y_train)


@pytest.mark.skipif(
    not fashion_mnist_available(),
    reason="Fashion-MNIST IDX files not found (install Debian's dataset-fashion-mnist or set "
    f"{FASHION_MNIST_ENV})",
)
def test_fashion_mnist_from_debian_package() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.classes == 10 and np.array_equal(np.bincount(ds.y_test), np.full(10, 1000))
    assert ds.x_train.dtype == np.float32 and float(ds.x_train.max()) == 1.0


def _fake_fashion(directory: Path, compress: bool) -> None:
    suffix = ".gz" if compress else ""
    files = FASHION_MNIST_FILES
    write_idx(directory / (files["train_images"] + suffix), _images(20, 28, 28), compress=compress)
    write_idx(directory / (files["train_labels"] + suffix), _labels(20, 10), compress=compress)
    write_idx(directory / (files["test_images"] + suffix), _images(10, 28, 28, seed=1), compress=compress)
    write_idx(directory / (files["test_labels"] + suffix), _labels(10, 10), compress=compress)


def test_fashion_mnist_dir_from_argument_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_fashion(tmp_path, compress=False)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (20, 28, 28, 1) and ds.classes == 10
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    assert fashion_mnist_available()
    assert load_dataset("fashion-mnist").x_test.shape == (10, 28, 28, 1)


def test_fashion_mnist_missing_files_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.*not found.*dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'cifar'.*digits"):
        load_dataset("cifar")


# ---- IDX ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    x, y = _images(12), _labels(12)
    xi = write_idx(tmp_path / "x.idx", x, compress=compress)
    yi = write_idx(tmp_path / "y.idx", y, compress=compress)
    images, labels = load_idx(xi, yi)
    assert np.array_equal(images, x) and np.array_equal(labels, y)
    ds = load_idx_dataset(xi, yi, xi, yi, name="mine")
    assert ds.input_shape == (6, 5, 1) and ds.classes == 3 and ds.name == "mine"
    assert np.allclose(ds.x_train[..., 0], x / 255.0)


def test_idx_other_element_types(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 100.0
    for code in (0x0B, 0x0C, 0x0D, 0x0E):
        loaded = read_idx(
            write_idx(tmp_path / f"t{code}", values * 100 if code < 0x0D else values, code=code)
        )
        assert loaded.shape == (2, 3, 4) and loaded.dtype.isnative


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "bad IDX magic number.*empty file"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x02ab", "bad IDX magic number 01000801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x02ab", "unknown IDX element type 0x07"),
        (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", r"truncated: header declares 5 \(5 bytes\) but only 2"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "trailing bytes"),
        (b"\x00\x00\x0e\x03\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x10", "GiB limit"),
    ],
)
def test_idx_header_errors(tmp_path: Path, payload: bytes, message: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match=message):
        read_idx(path)


def test_idx_pairing_errors(tmp_path: Path) -> None:
    xi = write_idx(tmp_path / "x", _images(5))
    with pytest.raises(DatasetError, match="holds 4 labels but x holds 5 images"):
        load_idx(xi, write_idx(tmp_path / "y4", _labels(4)))
    with pytest.raises(DatasetError, match="an image file needs 3 or 4 dimensions"):
        load_idx(write_idx(tmp_path / "flat", _labels(5)), write_idx(tmp_path / "y5", _labels(5)))
    with pytest.raises(DatasetError, match="a label file needs 1 dimension"):
        load_idx(xi, write_idx(tmp_path / "y2d", _labels(10).reshape(5, 2)))
    with pytest.raises(DatasetError, match="no such file"):
        read_idx(tmp_path / "absent")
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(DatasetError, match="cannot read the file"):
        read_idx(corrupt)


def test_idx_train_test_shape_mismatch(tmp_path: Path) -> None:
    xa, xb = write_idx(tmp_path / "xa", _images(6, 6, 5)), write_idx(tmp_path / "xb", _images(6, 5, 6))
    y = write_idx(tmp_path / "y", _labels(6))
    with pytest.raises(DatasetError, match="train images are 6x5x1 but test images are 5x6x1"):
        load_idx_dataset(xa, y, xb, y)


# ---- NPZ ---------------------------------------------------------------------------------


def _npz(path: Path, **overrides: np.ndarray) -> Path:
    arrays = {
        "x_train": _images(9),
        "y_train": _labels(9),
        "x_test": _images(6, seed=2),
        "y_test": _labels(6),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_round_trip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((9, 7, 7, 3), dtype=np.float32)
    ds = load_npz(_npz(tmp_path / "rgb.npz", x_train=x, x_test=x[:6]))
    assert ds.name == "rgb" and ds.input_shape == (7, 7, 3)
    assert np.array_equal(ds.x_train, x) and ds.y_train.dtype == np.int64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"y_train": np.array([0, 1, 2, 0, 1, -1, 2, 0, 1])}, "y_train: labels must be >= 0"),
        ({"y_train": np.arange(9) + 995}, "label 1003 is out of range: at most 1000 classes"),
        ({"y_test": np.array([0.0, 1.5, 2, 0, 1, 2])}, "y_test: labels must be integer.*fractional"),
        ({"y_test": np.array([0.0, np.nan, 2, 0, 1, 2])}, "y_test: labels contain NaN"),
        ({"y_test": np.array(["a"] * 6)}, "y_test: labels must be integer class indices, got dtype <U1"),
        ({"y_train": _labels(8)}, "train split: 8 labels for 9 images"),
        ({"x_train": np.full((9, 6, 5), np.nan, np.float32)}, "x_train: images contain NaN"),
        (
            {"x_train": np.full((9, 6, 5), 2.0, np.float32)},
            r"float pixel values must lie in \[0, 1\], found \[2, 2\]",
        ),
        (
            {"x_train": np.full((9, 6, 5), 300, np.int32)},
            "integer pixel values must lie in 0..255, found 300..300",
        ),
        ({"x_train": np.zeros((9, 3, 8), np.uint8)}, "images are 3x8, smaller than the minimum 4x4"),
        ({"x_train": np.zeros((9, 6), np.uint8)}, r"expected shape \(N, H, W\) or \(N, H, W, C\)"),
        ({"x_train": np.zeros((0, 6, 5), np.uint8), "y_train": np.zeros(0, np.int64)}, "x_train: no images"),
        ({"y_train": np.zeros(9, np.int64)}, "single class"),
        ({"x_test": np.zeros((6, 6, 5, 17), np.uint8)}, "x_test: 17 channels"),
        ({"x_test": np.zeros((6, 6, 5), bool)}, "images must be uint8 or float, got dtype bool"),
    ],
)
def test_npz_validation_errors(tmp_path: Path, overrides: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_npz(_npz(tmp_path / "bad.npz", **overrides))


def test_npz_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=_images(3), y_train=_labels(3))
    with pytest.raises(DatasetError, match=r"missing array.*x_test, y_test.*found: x_train, y_train"):
        load_npz(path)
    path = tmp_path / "objects.npz"
    np.savez(
        path,
        x_train=np.array([{"a": 1}], dtype=object),
        y_train=_labels(1),
        x_test=_images(1),
        y_test=_labels(1),
    )
    with pytest.raises(DatasetError, match="cannot load the arrays"):
        load_npz(path)
    path = tmp_path / "junk.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        load_npz(path)
    with pytest.raises(DatasetError, match="no such file"):
        load_npz(tmp_path / "absent.npz")


def test_from_arrays_classes_argument() -> None:
    x, y = _images(6), _labels(6)
    assert dataset_from_arrays(x, y, x, y, classes=5).classes == 5
    with pytest.raises(DatasetError, match="label 2 is out of range for 2 classes"):
        dataset_from_arrays(x, y, x, y, classes=2)
    with pytest.raises(DatasetError, match=r"classes must be in 2\.\.1000"):
        dataset_from_arrays(x, y, x, y, classes=1001)
    column = dataset_from_arrays(x, y.reshape(-1, 1), x, y)
    assert column.y_train.shape == (6,)


# ---- stratified split --------------------------------------------------------------------


def test_stratified_split_proportions_and_disjoint() -> None:
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    train, val = stratified_split(y, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))
    assert np.bincount(y[val]).tolist() == [10, 6, 3, 1]
    again = stratified_split(y, 0.2, seed=3)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(stratified_split(y, 0.2, seed=4)[1], val)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_split_properties(counts: list[int], fraction: float, seed: int) -> None:
    y = np.repeat(np.arange(len(counts)), counts)
    train, val = stratified_split(y, fraction, seed)
    assert np.intersect1d(train, val).size == 0 and len(train) + len(val) == len(y)
    val_counts = np.bincount(y[val], minlength=len(counts))
    train_counts = np.bincount(y[train], minlength=len(counts))
    # Every class keeps at least one training sample and gets within one of its share.
    assert np.all(train_counts >= 1)
    assert np.all(np.abs(val_counts - fraction * np.array(counts)) <= 1 + 1e-9)
    assert abs(len(val) - fraction * len(y)) <= 0.5 + 1e-9 or np.any(train_counts == 1)


def test_stratified_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(np.zeros(4), 1.0, 0)
