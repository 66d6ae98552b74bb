"""Image-classification datasets for the search: bundled, Debian-packaged and user-supplied.

Every dataset is held as float32 images in ``[0, 1]`` with shape ``(N, H, W, C)`` (the
architecture's ``(H, W, C)`` convention) and int64 labels ``0..classes-1``.  All loaders end
in :func:`dataset_from_arrays`, which validates everything and raises :class:`DatasetError`
with a message naming the fault, so a web upload can show it to the user unchanged.

The test split is only ever used for the final report; model selection uses a stratified
validation split carved out of the training set (:func:`stratified_split`).
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAX_CLASSES = 1000
MIN_SIDE = 4
MAX_SIDE = 512
MAX_CHANNELS = 16
# Refuse to decompress more than this: a hostile .gz could otherwise expand without bound.
MAX_IDX_BYTES = 2 * 1024**3

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

FASHION_MNIST_ENV = "NASWEB_FASHION_MNIST_DIR"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist")

# IDX type code -> big-endian numpy dtype (see the MNIST file-format description).
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says what is wrong with it."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test images (float32 NHWC in [0, 1]) with int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    input_shape: tuple[int, int, int]

    def summary(self) -> str:
        """One line describing sizes and shape, for logs and the UI."""
        h, w, c = self.input_shape
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test images, "
            f"{h}x{w}x{c}, {self.classes} classes"
        )


# ---- validation ------------------------------------------------------------------------


def dataset_from_arrays(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    name: str = "custom",
    classes: int | None = None,
) -> Dataset:
    """Validate raw arrays and normalise them into a :class:`Dataset`.

    Images may be ``(N, H, W)`` or ``(N, H, W, C)``, integer in ``0..255`` (scaled by 1/255)
    or float already in ``[0, 1]``.  Labels must be integers in ``0..classes-1``; when
    ``classes`` is None it is one more than the largest label seen.
    """
    arrays, classes = _validated(x_train, y_train, x_test, y_test, classes, _scale)
    shape = arrays["x_train"].shape[1:]
    return Dataset(
        name=name,
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        classes=classes,
        input_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
    )


def canonical_arrays(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> tuple[dict[str, np.ndarray], int]:
    """The checks of :func:`dataset_from_arrays` without scaling: (the arrays to store, classes).

    Images come back ``(N, H, W, C)``, uint8 when they were integers (0..255) and float32 when
    they were floats; labels int64.  Nothing larger than the input is allocated (no float copy of
    uint8 images), so an upload can be checked within a tight memory limit.
    """
    return _validated(x_train, y_train, x_test, y_test, None, _compact)


def _validated(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: int | None,
    pixels: Callable[[np.ndarray, str], np.ndarray],
) -> tuple[dict[str, np.ndarray], int]:
    xs = {"x_train": _images(x_train, "x_train", pixels), "x_test": _images(x_test, "x_test", pixels)}
    ys = {"y_train": _labels(y_train, "y_train"), "y_test": _labels(y_test, "y_test")}
    for split in ("train", "test"):
        n_x, n_y = len(xs[f"x_{split}"]), len(ys[f"y_{split}"])
        if n_x != n_y:
            raise DatasetError(f"{split} split: {n_y} labels for {n_x} images (the counts must match)")
    shape_train, shape_test = xs["x_train"].shape[1:], xs["x_test"].shape[1:]
    if shape_train != shape_test:
        raise DatasetError(
            f"train images are {_fmt(shape_train)} but test images are {_fmt(shape_test)} (HxWxC must match)"
        )
    classes = _check_classes(ys["y_train"], ys["y_test"], classes)
    return {
        "x_train": xs["x_train"],
        "y_train": ys["y_train"],
        "x_test": xs["x_test"],
        "y_test": ys["y_test"],
    }, (classes)


def _images(x: np.ndarray, what: str, pixels: Callable[[np.ndarray, str], np.ndarray]) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise DatasetError(f"{what}: expected shape (N, H, W) or (N, H, W, C), got {x.shape}")
    n, h, w, c = x.shape
    if n == 0:
        raise DatasetError(f"{what}: no images (the array is empty)")
    if min(h, w) < MIN_SIDE:
        raise DatasetError(f"{what}: images are {h}x{w}, smaller than the minimum {MIN_SIDE}x{MIN_SIDE}")
    if max(h, w) > MAX_SIDE:
        raise DatasetError(f"{what}: images are {h}x{w}, larger than the maximum {MAX_SIDE}x{MAX_SIDE}")
    if not 1 <= c <= MAX_CHANNELS:
        raise DatasetError(f"{what}: {c} channels; expected 1..{MAX_CHANNELS}")
    return pixels(x, what)


def _check_pixels(x: np.ndarray, what: str) -> None:
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DatasetError(f"{what}: images must be uint8 or float, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DatasetError(f"{what}: integer pixel values must lie in 0..255, found {lo}..{hi}")
        return
    if not np.isfinite(x).all():
        raise DatasetError(f"{what}: images contain NaN or infinite values")
    lo_f, hi_f = float(x.min()), float(x.max())
    if lo_f < 0.0 or hi_f > 1.0:
        raise DatasetError(
            f"{what}: float pixel values must lie in [0, 1], found [{lo_f:g}, {hi_f:g}] "
            "(store uint8 0..255 or divide by 255)"
        )


def _scale(x: np.ndarray, what: str) -> np.ndarray:
    _check_pixels(x, what)
    if np.issubdtype(x.dtype, np.integer):
        return (x.astype(np.float32) / np.float32(255.0)).astype(np.float32, copy=False)
    return np.ascontiguousarray(x, dtype=np.float32)


def _compact(x: np.ndarray, what: str) -> np.ndarray:
    _check_pixels(x, what)
    if np.issubdtype(x.dtype, np.integer):
        return np.ascontiguousarray(x, dtype=np.uint8)
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(f"{what}: labels must be a 1-D array of class indices, got shape {y.shape}")
    if len(y) == 0:
        raise DatasetError(f"{what}: no labels (the array is empty)")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise DatasetError(f"{what}: labels contain NaN or infinite values")
        if not (y == np.round(y)).all():
            raise DatasetError(f"{what}: labels must be integer class indices, found fractional values")
    elif y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{what}: labels must be integer class indices, got dtype {y.dtype}")
    if float(y.min()) < 0:
        raise DatasetError(f"{what}: labels must be >= 0, found {y.min()}")
    if float(y.max()) >= MAX_CLASSES:
        raise DatasetError(
            f"{what}: label {y.max()} is out of range: at most {MAX_CLASSES} classes are supported"
        )
    return y.astype(np.int64)


def _check_classes(y_train: np.ndarray, y_test: np.ndarray, classes: int | None) -> int:
    seen = int(max(y_train.max(), y_test.max())) + 1
    if classes is None:
        classes = seen
    elif not 2 <= classes <= MAX_CLASSES:
        raise DatasetError(f"classes must be in 2..{MAX_CLASSES}, got {classes}")
    elif seen > classes:
        raise DatasetError(
            f"label {seen - 1} is out of range for {classes} classes (labels are 0..{classes - 1})"
        )
    if len(np.unique(y_train)) < 2:
        raise DatasetError("the training labels contain a single class; at least 2 are needed")
    return classes


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


# ---- splits ----------------------------------------------------------------------------


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``y`` into (train_idx, val_idx), ``fraction`` of each class to validation.

    Per-class counts use largest-remainder rounding so the total is ``round(fraction * N)``
    and every class is within one sample of its exact share; a class never gives away its
    last sample (the total comes out smaller when only such classes could give one).  Both
    index arrays are sorted and disjoint; the result depends only on ``y``, ``fraction`` and
    ``seed``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    share = counts * fraction
    n_val = np.minimum(np.floor(share).astype(np.int64), counts - 1)
    spare = round(fraction * len(y)) - int(n_val.sum())
    # Stable sort: ties go to the lower class index, which keeps the split reproducible.
    for i in np.argsort(-(share - np.floor(share)), kind="stable"):
        if spare <= 0:
            break
        if n_val[i] < counts[i] - 1:
            n_val[i] += 1
            spare -= 1
    rng = np.random.Generator(np.random.PCG64(seed))
    val_parts = []
    for cls, k in zip(classes, n_val, strict=True):
        members = np.flatnonzero(y == cls)
        val_parts.append(rng.permutation(members)[:k])
    val_idx = np.sort(np.concatenate(val_parts)).astype(np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx


# ---- IDX files -------------------------------------------------------------------------


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as f:
        magic = f.read(2)
    # Sniff the gzip magic instead of trusting the file name.
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one IDX file (plain or gzip): the header gives the element type and dimensions."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        with _open(path) as f:
            return _parse_idx(f, path.name)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path.name}: cannot read the file ({exc})") from exc


def _parse_idx(f: BinaryIO, name: str) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise DatasetError(
            f"{name}: bad IDX magic number {head.hex() or '(empty file)'} (expected 0000 + type + ndim)"
        )
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        raise DatasetError(f"{name}: unknown IDX element type 0x{code:02x}")
    if not 1 <= ndim <= 4:
        raise DatasetError(f"{name}: IDX header declares {ndim} dimensions; expected 1..4")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DatasetError(f"{name}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    dtype = np.dtype(IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow on hostile dims
    if expected > MAX_IDX_BYTES:
        raise DatasetError(
            f"{name}: declares {_fmt(dims)} elements, more than the {MAX_IDX_BYTES >> 30} GiB limit"
        )
    data = f.read(expected)
    if len(data) < expected:
        raise DatasetError(
            f"{name}: truncated: header declares {_fmt(dims)} ({expected} bytes) "
            f"but only {len(data)} bytes follow"
        )
    if f.read(1):
        raise DatasetError(f"{name}: trailing bytes after the {_fmt(dims)} elements the header declares")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def load_idx(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image file ``(N, H, W[, C])`` and its IDX label file ``(N,)``; check they pair up."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    img_name, lbl_name = Path(images_path).name, Path(labels_path).name
    if images.ndim not in (3, 4):
        raise DatasetError(
            f"{img_name}: an image file needs 3 or 4 dimensions (N, H, W[, C]), found {images.ndim}"
        )
    if labels.ndim != 1:
        raise DatasetError(f"{lbl_name}: a label file needs 1 dimension (N,), found {labels.ndim}")
    if len(images) != len(labels):
        raise DatasetError(f"{lbl_name} holds {len(labels)} labels but {img_name} holds {len(images)} images")
    return images, labels


def load_idx_dataset(
    train_images: str | os.PathLike[str],
    train_labels: str | os.PathLike[str],
    test_images: str | os.PathLike[str],
    test_labels: str | os.PathLike[str],
    name: str = "custom",
) -> Dataset:
    """A dataset from four IDX files (MNIST layout)."""
    x_train, y_train = load_idx(train_images, train_labels)
    x_test, y_test = load_idx(test_images, test_labels)
    return dataset_from_arrays(x_train, y_train, x_test, y_test, name=name)


# ---- NPZ files -------------------------------------------------------------------------

NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | os.PathLike[str], name: str | None = None) -> Dataset:
    """A dataset from an ``.npz`` holding x_train, y_train, x_test, y_test (no pickled objects)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DatasetError(
                    f"{path.name}: missing array(s) {', '.join(missing)}; an .npz dataset needs "
                    f"{', '.join(NPZ_KEYS)} (found: {', '.join(npz.files) or 'nothing'})"
                )
            arrays = {k: npz[k] for k in NPZ_KEYS}
    except DatasetError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetError(f"{path.name}: not a readable .npz archive ({exc})") from exc
    except ValueError as exc:
        # numpy raises ValueError for object arrays when pickles are refused.
        raise DatasetError(f"{path.name}: cannot load the arrays ({exc})") from exc
    return dataset_from_arrays(**arrays, name=name or path.stem)


# ---- named datasets --------------------------------------------------------------------

# What a model's real input x is for each named dataset: how its loader scales the raw pixels.
INPUT_SCALING = {
    "digits": "a pixel's 0..16 grey level divided by 16 (scikit-learn's digits), so in [0, 1]",
    "fashion-mnist": "a pixel's 0..255 grey level divided by 255, so in [0, 1]",
}
# The same for uploads, by the dtype of the uploaded images (see ``dataset_from_arrays``).
UPLOAD_INT_SCALING = "a pixel's 0..255 integer value as uploaded, divided by 255, so in [0, 1]"
UPLOAD_FLOAT_SCALING = "a pixel's value exactly as uploaded (floats in [0, 1])"


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits; a stratified 80/20 split with seed ``DIGITS_SPLIT_SEED``."""
    from sklearn.datasets import load_digits as sk_digits  # local: only this dataset needs sklearn

    bunch = sk_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[..., np.newaxis]
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return dataset_from_arrays(
        x[train_idx], y[train_idx], x[test_idx], y[test_idx], name="digits", classes=10
    )


def fashion_mnist_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where Fashion-MNIST is read from: ``data_dir``, else $NASWEB_FASHION_MNIST_DIR, else Debian's."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(FASHION_MNIST_ENV)
    return Path(env) if env else FASHION_MNIST_DIR


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory} "
        f"(install the Debian package dataset-fashion-mnist or set {FASHION_MNIST_ENV})"
    )


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Fashion-MNIST (28x28x1, 10 classes) from its four IDX files, with the official test split."""
    directory = fashion_mnist_dir(data_dir)
    paths = {key: _find(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
    x_train, y_train = load_idx(paths["train_images"], paths["train_labels"])
    x_test, y_test = load_idx(paths["test_images"], paths["test_labels"])
    return dataset_from_arrays(x_train, y_train, x_test, y_test, name="fashion-mnist", classes=10)


def fashion_mnist_available(data_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether all four Fashion-MNIST files can be found."""
    directory = fashion_mnist_dir(data_dir)
    return all(
        (directory / f"{stem}.gz").is_file() or (directory / stem).is_file()
        for stem in FASHION_MNIST_FILES.values()
    )


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load a named dataset (see ``DATASETS``); ``data_dir`` overrides where Fashion-MNIST lives."""
    if name == "digits":
        return load_digits()
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
