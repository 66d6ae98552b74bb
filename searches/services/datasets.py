"""Uploaded datasets: validated in a bounded child process, stored canonical, cached by workers.

An upload is an ``.npz`` (x_train, y_train, x_test, y_test) or four IDX files (MNIST layout).
The web process never decodes it: the files (already on disk, see ``searches.uploads``) are
checked by ``searches.engine.training.upload_check`` in a child process with a memory and CPU
limit, which refuses oversized arrays from their headers and writes the validated arrays as a
fresh ``.npz`` holding exactly the four arrays.  That file, not the upload, goes to the artifact
store with its SHA-256; a worker copies it from the store once into its cache folder, under that
hash, and every run on it loads it from there (``load_uploaded``).  Files are read with
``allow_pickle=False`` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files import File
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from searches.engine.training.datasets import (
    INPUT_SCALING,
    UPLOAD_FLOAT_SCALING,
    UPLOAD_INT_SCALING,
    Dataset,
    DatasetError,
    load_npz,
)
from searches.engine.training.upload_check import npz_headers
from searches.models import UPLOAD_PREFIX
from searches.models import Dataset as DatasetRow
from searches.uploads import upload_limit_bytes

MAX_SAMPLES = 1_000_000

IDX_FIELDS: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")
CHECKER = "searches.engine.training.upload_check"


def check_upload_size(files: Iterable[UploadedFile]) -> None:
    total = sum(f.size or 0 for f in files)
    limit = upload_limit_bytes()
    if total > limit:
        raise DatasetError(
            f"the upload is {total / 1024**2:.1f} MB; at most {limit // 1024**2} MB is accepted"
        )


def _spool(upload: UploadedFile, directory: Path) -> Path:
    """Copy an upload to ``directory`` under its own base name, so checker messages name it."""
    directory.mkdir()
    path = directory / (Path(upload.name or "").name or "upload")
    with path.open("wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    return path


# ---- the bounded check -----------------------------------------------------------------------


def _mb(name: str) -> int:
    return int(getattr(settings, name)) * 1024**2


def check_in_child(kind: str, paths: list[Path], out: Path) -> dict[str, Any]:
    """Run the checker on ``paths`` in a child process; its summary, or DatasetError saying why not."""
    timeout = float(settings.NASWEB_UPLOAD_TIMEOUT_S)
    command = [
        sys.executable,
        "-m",
        CHECKER,
        f"--memory-bytes={_mb('NASWEB_UPLOAD_MEMORY_MB')}",
        f"--cpu-seconds={max(1, int(timeout))}",
        f"--max-samples={MAX_SAMPLES}",
        f"--max-decoded-bytes={_mb('NASWEB_UPLOAD_MAX_DECODED_MB')}",
        str(out),
        kind,
        *map(str, paths),
    ]
    # One BLAS thread: its per-thread buffers would count against the memory limit for nothing.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            command, cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise DatasetError(f"checking the upload took longer than {timeout:g} s; it was stopped") from None
    return _summary(done)


def _summary(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if isinstance(result, dict) and "error" in result:
        raise DatasetError(str(result["error"]))
    if done.returncode == 0 and isinstance(result, dict):
        return result
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise DatasetError(f"checking the upload was stopped by {name} (over its memory or time limit)")
    last = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
    if "MemoryError" in last:
        raise DatasetError("checking the upload needs more memory than allowed")
    raise DatasetError(f"the upload could not be checked ({last})")


# ---- storing -----------------------------------------------------------------------------


def create_uploaded(
    owner: Any, name: str, npz: UploadedFile | None, idx: Mapping[str, UploadedFile] | None
) -> DatasetRow:
    """Check the upload in a bounded child process; store a row and its canonical file only if valid.

    Raises :class:`DatasetError` with the checker's message; nothing is stored then.
    """
    check_upload_size([npz] if npz is not None else list((idx or {}).values()))
    scratch = Path(tempfile.mkdtemp(prefix="nasweb-upload-"))
    try:
        out = scratch / "dataset.npz"
        if npz is not None:
            summary = check_in_child("npz", [_spool(npz, scratch / "npz")], out)
        else:
            paths = [_spool((idx or {})[key], scratch / key) for key in IDX_FIELDS]
            summary = check_in_child("idx", paths, out)
        return _store(owner, name, out, summary)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1024**2), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _store(owner: Any, name: str, path: Path, summary: dict[str, Any]) -> DatasetRow:
    row = DatasetRow(
        owner=owner,
        name=name,
        kind=DatasetRow.Kind.UPLOADED,
        input_shape=[int(d) for d in summary["input_shape"]],
        classes=int(summary["classes"]),
        n_train=int(summary["n_train"]),
        n_test=int(summary["n_test"]),
        sha256=file_sha256(path),
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
    """Delete the row, and its stored file once the deletion is committed."""
    storage, file_name = row.file.storage, row.file.name
    row.delete()
    if file_name:
        transaction.on_commit(lambda: storage.delete(file_name))


# ---- loading (on workers) --------------------------------------------------------------------


def upload_id(key: str) -> int | None:
    """The row id in a run's dataset key ``upload:<id>``; None for built-in names."""
    if not key.startswith(UPLOAD_PREFIX):
        return None
    try:
        return int(key.removeprefix(UPLOAD_PREFIX))
    except ValueError:
        raise DatasetError(f"bad dataset key {key!r}") from None


def cache_dir() -> Path:
    return Path(settings.NASWEB_CACHE_DIR) / "datasets"


def load_uploaded(key: str) -> Dataset:
    """The arrays of the uploaded dataset named ``upload:<id>``, from this machine's cache."""
    row = DatasetRow.objects.filter(pk=upload_id(key), kind=DatasetRow.Kind.UPLOADED).first()
    if row is None or not row.file:
        raise DatasetError(f"the uploaded dataset {key!r} no longer exists")
    return load_npz(cached_copy(row), name=key)


def cached_copy(row: DatasetRow) -> Path:
    """This machine's copy of an upload's stored file, fetched from the store on first use."""
    if row.sha256:
        path = cache_dir() / f"{row.sha256}.npz"
        if path.is_file():
            return path
    return _fetch(row)


def _fetch(row: DatasetRow) -> Path:
    """Copy the stored file into the cache (whole or not at all), checking its SHA-256."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fetch-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                stored = row.file.open("rb")
            except (FileNotFoundError, OSError) as exc:
                raise DatasetError(
                    f"the file of the uploaded dataset {row.key!r} is missing from the store"
                ) from exc
            with stored:
                for chunk in stored.chunks():
                    digest.update(chunk)
                    out.write(chunk)
        sha256 = digest.hexdigest()
        if row.sha256 and sha256 != row.sha256:
            raise DatasetError(
                f"the stored file of the uploaded dataset {row.key!r} does not match its SHA-256 "
                f"({sha256[:12]}… instead of {row.sha256[:12]}…)"
            )
        path = folder / f"{sha256}.npz"
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not row.sha256:
        # Uploaded before hashes were kept: remember it, so the next load finds the cache.
        DatasetRow.objects.filter(pk=row.pk).update(sha256=sha256)
    return path


def input_scaling(key: str) -> str:
    """What a model's real input x is for the dataset ``key``: its raw pixels' scaling."""
    if upload_id(key) is None:
        if key not in INPUT_SCALING:
            raise DatasetError(f"unknown dataset {key!r}")
        return INPUT_SCALING[key]
    row = DatasetRow.objects.filter(pk=upload_id(key), kind=DatasetRow.Kind.UPLOADED).first()
    if row is None or not row.file:
        raise DatasetError(f"the uploaded dataset {key!r} no longer exists")
    _, dtype = npz_headers(cached_copy(row))["x_train"]
    return UPLOAD_INT_SCALING if np.issubdtype(dtype, np.integer) else UPLOAD_FLOAT_SCALING


def config_dataset(row: DatasetRow) -> Dataset:
    """A stand-in with the row's name, shape and classes: all ``runs.make_config`` reads.

    It saves loading (and caching) a large dataset in the web process just to create a run.
    """
    empty = np.zeros((0,), dtype=np.float32)
    labels = np.zeros((0,), dtype=np.int64)
    h, w, c = (int(d) for d in row.input_shape)
    return Dataset(row.key, empty, labels, empty, labels, int(row.classes), (h, w, c))
