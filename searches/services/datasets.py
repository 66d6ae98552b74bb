"""Uploaded datasets: validate an upload completely before anything is stored, then store it.

An upload is an ``.npz`` (x_train, y_train, x_test, y_test) or four IDX files (MNIST layout).
Whatever came in is stored as one ``.npz`` of the raw arrays, so runs load every upload the
same way (``load_uploaded``).  Files are read with ``allow_pickle=False`` only.
"""

from __future__ import annotations

import gzip
import math
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from django.core.files import File
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from searches.engine.training.datasets import (
    NPZ_KEYS,
    Dataset,
    DatasetError,
    dataset_from_arrays,
    load_idx,
    load_npz,
)
from searches.models import UPLOAD_PREFIX
from searches.models import Dataset as DatasetRow

MAX_UPLOAD_BYTES = 200 * 1024**2
MAX_SAMPLES = 1_000_000
# An .npz is a zip: its arrays may expand far beyond the upload's size, so their declared
# sizes are checked before numpy allocates anything.
MAX_ARRAY_BYTES = 2 * 1024**3

IDX_FIELDS: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")


def check_upload_size(files: Iterable[UploadedFile]) -> None:
    total = sum(f.size or 0 for f in files)
    if total > MAX_UPLOAD_BYTES:
        raise DatasetError(
            f"the upload is {total / 1024**2:.1f} MB; at most {MAX_UPLOAD_BYTES // 1024**2} MB is accepted"
        )


def _spool(upload: UploadedFile, directory: Path) -> Path:
    """Copy an upload to ``directory`` under its own base name, so loader messages name it."""
    directory.mkdir()
    path = directory / (Path(upload.name or "").name or "upload")
    with path.open("wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    return path


# ---- NPZ -------------------------------------------------------------------------------


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Shape and dtype of every array of an .npz, read from the headers alone."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = {
                        (1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0,
                    }.get(version)
                    if read is None:
                        raise DatasetError(f"{info.filename}: unsupported .npy version {version}")
                    shape, _, dtype = read(f)
                headers[info.filename.removesuffix(".npy")] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DatasetError(f"{path.name}: not a readable .npz archive ({exc})") from exc
    return headers


def _check_npz_sizes(path: Path) -> None:
    for key, (shape, dtype) in _npz_headers(path).items():
        if key not in NPZ_KEYS:
            continue
        if dtype.hasobject:
            raise DatasetError(f"{key}: object arrays are not accepted (store numbers only)")
        if shape and shape[0] > MAX_SAMPLES:
            raise DatasetError(f"{key}: {shape[0]:,} samples; at most {MAX_SAMPLES:,} are accepted")
        if math.prod(shape) * dtype.itemsize > MAX_ARRAY_BYTES:
            raise DatasetError(f"{key}: {_fmt(shape)} elements expand beyond the 2 GiB limit")


def validate_npz(upload: UploadedFile, directory: Path) -> tuple[Path, Dataset]:
    path = _spool(upload, directory / "npz")
    _check_npz_sizes(path)
    return path, load_npz(path, name=path.stem)


# ---- IDX -------------------------------------------------------------------------------


def _idx_count(path: Path, label: str) -> int:
    """The first dimension an IDX header declares (plain or gzip), without reading the data."""
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as f:
            head: bytes = f.read(8)
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{label}: cannot read the file ({exc})") from exc
    if len(head) < 8 or head[:2] != b"\0\0":
        raise DatasetError(f"{label}: not an IDX file (bad magic number {head[:4].hex() or 'empty'})")
    return int.from_bytes(head[4:8], "big")


def validate_idx(uploads: Mapping[str, UploadedFile], directory: Path) -> tuple[Path, Dataset]:
    paths = {key: _spool(uploads[key], directory / key) for key in IDX_FIELDS}
    for path in paths.values():
        count = _idx_count(path, path.name)
        if count > MAX_SAMPLES:
            raise DatasetError(f"{path.name}: {count:,} samples; at most {MAX_SAMPLES:,} are accepted")
    x_train, y_train = load_idx(paths["train_images"], paths["train_labels"])
    x_test, y_test = load_idx(paths["test_images"], paths["test_labels"])
    dataset = dataset_from_arrays(x_train, y_train, x_test, y_test)
    # Keep the raw arrays (uint8 stays uint8): the loader scales them again on every load.
    path = directory / "dataset.npz"
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path, dataset


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


# ---- storing -----------------------------------------------------------------------------


def create_uploaded(
    owner: Any, name: str, npz: UploadedFile | None, idx: Mapping[str, UploadedFile] | None
) -> DatasetRow:
    """Validate the upload in a scratch folder; store a row and its file only if it is valid.

    Raises :class:`DatasetError` with the loader's message; nothing is stored then.
    """
    check_upload_size([npz] if npz is not None else list((idx or {}).values()))
    scratch = Path(tempfile.mkdtemp(prefix="nasweb-upload-"))
    try:
        if npz is not None:
            path, dataset = validate_npz(npz, scratch)
        else:
            path, dataset = validate_idx(idx or {}, scratch)
        return _store(owner, name, path, dataset)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _store(owner: Any, name: str, path: Path, dataset: Dataset) -> DatasetRow:
    row = DatasetRow(
        owner=owner,
        name=name,
        kind=DatasetRow.Kind.UPLOADED,
        input_shape=list(dataset.input_shape),
        classes=dataset.classes,
        n_train=len(dataset.y_train),
        n_test=len(dataset.y_test),
    )
    with path.open("rb") as f:
        row.file.save(f"{uuid.uuid4().hex}.npz", File(f), save=False)
    try:
        with transaction.atomic():
            row.save()
    except BaseException:
        row.file.delete(save=False)
        raise
    return row


def delete_uploaded(row: DatasetRow) -> None:
    """Delete the row, and its file once the deletion is committed."""
    storage, file_name = row.file.storage, row.file.name
    row.delete()
    if file_name:
        transaction.on_commit(lambda: storage.delete(file_name))


# ---- loading -----------------------------------------------------------------------------


def upload_id(key: str) -> int | None:
    """The row id in a run's dataset key ``upload:<id>``; None for built-in names."""
    if not key.startswith(UPLOAD_PREFIX):
        return None
    try:
        return int(key.removeprefix(UPLOAD_PREFIX))
    except ValueError:
        raise DatasetError(f"bad dataset key {key!r}") from None


def load_uploaded(key: str) -> Dataset:
    """The arrays of the uploaded dataset named ``upload:<id>``."""
    row = DatasetRow.objects.filter(pk=upload_id(key), kind=DatasetRow.Kind.UPLOADED).first()
    if row is None or not row.file:
        raise DatasetError(f"the uploaded dataset {key!r} no longer exists")
    return load_npz(row.file.path, name=key)


def config_dataset(row: DatasetRow) -> Dataset:
    """A stand-in with the row's name, shape and classes: all ``runs.make_config`` reads.

    It saves loading (and caching) a large dataset in the web process just to create a run.
    """
    empty = np.zeros((0,), dtype=np.float32)
    labels = np.zeros((0,), dtype=np.int64)
    h, w, c = (int(d) for d in row.input_shape)
    return Dataset(row.key, empty, labels, empty, labels, int(row.classes), (h, w, c))
