"""Checking an uploaded data set in a child process bounded in memory and CPU time.

The web server never decodes an upload itself: it runs

    python -m searches.engine.training.upload_check --memory-bytes M --cpu-seconds S \\
        --max-samples N --max-decoded-bytes B OUT.npz npz DATA.npz
    python -m ... OUT.npz idx TRAIN_IMAGES TRAIN_LABELS TEST_IMAGES TEST_LABELS

which limits its own address space and CPU time before reading anything, computes the decoded
size of every array from the headers alone (the ``.npy`` headers inside an NPZ, the IDX
headers: shape times item size) and refuses an upload over the limits before allocating it, then
loads and validates the arrays (:func:`~searches.engine.training.datasets.canonical_arrays`)
and writes ``OUT.npz`` with exactly x_train, y_train, x_test and y_test in canonical form
(any other member of the upload is dropped).  It prints one JSON object: the data set's shape,
classes and sizes, or ``{"error": message}`` (exit status 1).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import resource
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from searches.engine.training.datasets import (
    IDX_DTYPES,
    NPZ_KEYS,
    DatasetError,
    canonical_arrays,
    load_idx,
)

Header = tuple[tuple[int, ...], np.dtype[Any]]


def npz_headers(path: Path) -> dict[str, Header]:
    """Shape and dtype of every array of an .npz, read from the ``.npy`` headers alone."""
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


def idx_header(path: Path) -> Header:
    """Shape and element type an IDX file (plain or gzip) declares, without reading its data."""
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as f:
            head: bytes = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0":
                raise DatasetError(f"{path.name}: not an IDX file (bad magic number {head.hex() or 'empty'})")
            code, ndim = head[2], head[3]
            if code not in IDX_DTYPES:
                raise DatasetError(f"{path.name}: unknown IDX element type 0x{code:02x}")
            raw_dims = f.read(4 * ndim)
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path.name}: cannot read the file ({exc})") from exc
    if len(raw_dims) < 4 * ndim:
        raise DatasetError(f"{path.name}: truncated IDX header")
    dims = tuple(int.from_bytes(raw_dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    return dims, np.dtype(IDX_DTYPES[code])


def check_sizes(headers: dict[str, Header], max_samples: int, max_decoded_bytes: int) -> None:
    """Refuse object arrays, too many samples, or more decoded bytes than allowed, from headers."""
    total = 0
    for key, (shape, dtype) in headers.items():
        if dtype.hasobject:
            raise DatasetError(f"{key}: object arrays are not accepted (store numbers only)")
        if shape and shape[0] > max_samples:
            raise DatasetError(f"{key}: {shape[0]:,} samples; at most {max_samples:,} are accepted")
        total += math.prod(shape) * dtype.itemsize  # Python ints: no overflow on hostile shapes
    if total > max_decoded_bytes:
        shapes = ", ".join(f"{key} {_fmt(shape)} {dtype}" for key, (shape, dtype) in headers.items())
        raise DatasetError(
            f"the arrays would decode to {total / 1024**2:,.1f} MB ({shapes}); "
            f"at most {max_decoded_bytes / 1024**2:,.0f} MB are accepted"
        )


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def read_npz(path: Path, max_samples: int, max_decoded_bytes: int) -> dict[str, np.ndarray]:
    """The four arrays of an uploaded .npz, after its headers passed :func:`check_sizes`."""
    headers = npz_headers(path)
    missing = [k for k in NPZ_KEYS if k not in headers]
    if missing:
        raise DatasetError(
            f"{path.name}: missing array(s) {', '.join(missing)}; an .npz dataset needs "
            f"{', '.join(NPZ_KEYS)} (found: {', '.join(headers) or 'nothing'})"
        )
    check_sizes({k: headers[k] for k in NPZ_KEYS}, max_samples, max_decoded_bytes)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in NPZ_KEYS}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DatasetError(f"{path.name}: cannot load the arrays ({exc})") from exc


def read_idx_files(paths: Sequence[Path], max_samples: int, max_decoded_bytes: int) -> dict[str, np.ndarray]:
    """The four arrays of IDX files (train images, train labels, test images, test labels)."""
    check_sizes({p.name: idx_header(p) for p in paths}, max_samples, max_decoded_bytes)
    x_train, y_train = load_idx(paths[0], paths[1])
    x_test, y_test = load_idx(paths[2], paths[3])
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def check_upload(
    kind: str, paths: Sequence[Path], out: Path, max_samples: int, max_decoded_bytes: int
) -> dict[str, Any]:
    """Validate an upload and write its canonical .npz to ``out``; what the web layer stores."""
    if kind == "npz" and len(paths) == 1:
        arrays = read_npz(paths[0], max_samples, max_decoded_bytes)
    elif kind == "idx" and len(paths) == 4:
        arrays = read_idx_files(paths, max_samples, max_decoded_bytes)
    else:
        raise ValueError(f"expected one .npz or four IDX files, got {kind} with {len(paths)} file(s)")
    canonical, classes = canonical_arrays(**arrays)
    del arrays
    np.savez_compressed(out, **canonical)  # type: ignore[arg-type]
    x_train = canonical["x_train"]
    return {
        "input_shape": [int(d) for d in x_train.shape[1:]],
        "classes": classes,
        "n_train": len(canonical["y_train"]),
        "n_test": len(canonical["y_test"]),
    }


def limit_self(memory_bytes: int, cpu_seconds: int) -> None:
    """Cap this process's address space and CPU time (the kernel enforces both)."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check an uploaded data set (bounded child process).")
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--cpu-seconds", type=int, required=True)
    parser.add_argument("--max-samples", type=int, required=True)
    parser.add_argument("--max-decoded-bytes", type=int, required=True)
    parser.add_argument("out", type=Path)
    parser.add_argument("kind", choices=["npz", "idx"])
    parser.add_argument("paths", type=Path, nargs="+")
    args = parser.parse_args(argv)
    limit_self(args.memory_bytes, args.cpu_seconds)
    try:
        result = check_upload(args.kind, args.paths, args.out, args.max_samples, args.max_decoded_bytes)
    except DatasetError as exc:
        result = {"error": str(exc)}
    except MemoryError:
        result = {"error": f"decoding it needs more than the {args.memory_bytes / 1024**2:,.0f} MB allowed"}
    print(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
