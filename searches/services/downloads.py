"""Downloads built once: every export file is stored under a key made from what it depends on.

A candidate's header, bundle, .tflite and ONNX files used to be generated on every request
(ONNX takes seconds).  Now the first request builds the file and stores it in the artifact
store (:mod:`searches.services.files`) at ``artifacts/run-<run>/candidate-<id>/<key>.<ext>``;
every later request, on any machine, finds it and streams it.

The key is the SHA-256 of a manifest of everything the file is made from: the content of the
weights file, the content of the int8 model (its scales and zero points) for the int8 formats,
the architecture, the C name, the input note, the target of the bundle, the description
written into the file, and a fingerprint of the code and library versions that generate it
(:func:`generator_fingerprint`).  A change to any of them gives another key, so a stale file
is never served; the folder's older files of that format are removed once the new one is in.

The source files' hashes are remembered per file version (inode and mtime on disk, ETag and
time on S3), so a stored download costs a stat or HEAD per source file and one for the export,
then one read of the export.  Writes are whole (:func:`files.save_whole`): two first requests
at once each build the file and the last write wins, and no reader ever sees part of one.
Deleting a run removes its folder (:mod:`searches.services.deletion`).  docs/export.md,
*Stored downloads*, has the reasons.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import logging
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.http import FileResponse

from searches.engine.deploy.int8 import QuantModel
from searches.models import Candidate
from searches.services import export, files

logger = logging.getLogger(__name__)

ROOT = "artifacts"
# The code that decides an export's bytes, relative to the searches package: the generators and
# everything they import (the resource planner orders ops and sizes the arena; int8_scheme holds
# the arithmetic; model.py the float network ONNX exports), and this app's export service.
GENERATOR_SOURCES = (
    "engine/deploy",
    "engine/resources",
    "engine/space",
    "engine/training/int8_scheme.py",
    "engine/training/model.py",
    "services/export.py",
    "services/downloads.py",
)
GENERATOR_LIBRARIES = ("torch", "onnx", "onnxscript", "numpy")


@dataclass(frozen=True)
class Format:
    """One download format: its file extension, content type and the model it is built from."""

    name: str
    extension: str
    content_type: str
    # True: built from the int8 model; False: from the float weights.
    int8: bool


FORMATS = {
    f.name: f
    for f in (
        Format("header", "h", "text/x-c; charset=utf-8", int8=True),
        Format("bundle", "zip", "application/zip", int8=True),
        Format("tflite", "tflite", "application/octet-stream", int8=True),
        Format("onnx", "onnx", "application/octet-stream", int8=False),
    )
}


@dataclass(frozen=True)
class StoredExport:
    """A built export in the artifact store: where it is and how to offer it."""

    name: str
    filename: str
    content_type: str
    key: str
    size: int
    # Whether this request built it (False: it was stored already).
    built: bool

    def open(self) -> IO[bytes]:
        return files.stream(self.name)


def file_response(candidate: Candidate, format_name: str) -> FileResponse:
    """The candidate's stored export (built first if need be) streamed as an attachment.

    Streamed through this server rather than redirected to a presigned object-store URL: the
    store's endpoint is often reachable only by nasweb's machines, and the files are small.
    The key is the ETag: the same key is the same bytes.
    """
    stored = stored_export(candidate, format_name)
    try:
        body = stored.open()
    except FileNotFoundError:
        # Removed since it was found (its run deleted, or a newer build replaced it): build it now.
        stored = _build_and_store(candidate, FORMATS[format_name], stored.filename)
        body = stored.open()
    response = FileResponse(
        body, as_attachment=True, filename=stored.filename, content_type=stored.content_type
    )
    response["Content-Length"] = str(stored.size)
    response["ETag"] = f'"{stored.key}"'
    response["Cache-Control"] = "private, no-cache"
    return response


def candidate_folder(candidate: Candidate) -> str:
    return f"{run_artifacts_folder(candidate.run_id)}/candidate-{candidate.pk}"


def run_artifacts_folder(run_id: int) -> str:
    """The stored folder of every export built for a run's candidates."""
    return f"{ROOT}/run-{run_id}"


@functools.cache
def generator_fingerprint() -> str:
    """SHA-256 over the generators' source files and the exporting libraries' versions."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for source in GENERATOR_SOURCES:
        root = package / source
        paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in paths:
            if path.suffix == ".pyc":
                continue
            digest.update(path.relative_to(package).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    for library in GENERATOR_LIBRARIES:
        digest.update(f"{library}=={_version(library)}\0".encode())
    return digest.hexdigest()


def _version(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_key(manifest: dict[str, Any]) -> str:
    return _sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())


def _read(name: str, what: str) -> bytes:
    try:
        return files.read_bytes(name)
    except FileNotFoundError as exc:
        raise export.ExportUnavailable(f"the {what} {name} is missing") from exc
    except OSError as exc:
        raise export.ExportUnavailable(f"the {what} {name} cannot be read: {exc}") from exc


# (stored name, version) -> SHA-256 of its bytes: a source file is read and hashed once per
# process and version, so a stored download costs a stat (or HEAD) per source, not a read.
_DIGESTS: dict[tuple[str, str], str] = {}
_DIGESTS_KEPT = 4096


def _digest(name: str, what: str) -> str | None:
    """SHA-256 of a stored file's bytes (None when it is not stored)."""
    stat = files.stat(name) if name else None
    if stat is None:
        return None
    known = _DIGESTS.get((name, stat.version))
    if known is None:
        if len(_DIGESTS) >= _DIGESTS_KEPT:
            _DIGESTS.clear()
        known = _DIGESTS[(name, stat.version)] = _sha256(_read(name, what))
    return known


def _source_digests(candidate: Candidate, fmt: Format) -> dict[str, str]:
    """The digests of the files the export is made from: the weights, the int8 model if it uses it."""
    weights = _digest(candidate.weights.name, "weights file")
    if weights is None:
        raise export.ExportUnavailable(f"the weights file {candidate.weights.name} is missing")
    digests = {"weights_sha256": weights}
    if fmt.int8:
        int8 = _digest(candidate.int8_model.name, "int8 model")
        if int8 is None:  # never quantised (older candidates), or the file is gone: quantise now
            export.quant_model_for(candidate)
            int8 = _sha256(_read(candidate.int8_model.name, "int8 model"))
        digests["int8_sha256"] = int8
    return digests


def _manifest(candidate: Candidate, fmt: Format, digests: dict[str, str]) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": fmt.name,
        "generator": generator_fingerprint(),
        **digests,
        "architecture": candidate.architecture,
        "c_name": export.c_name(candidate),
    }
    if fmt.name in ("header", "bundle"):
        manifest["input_note"] = export.input_note(candidate.run)
    if fmt.name == "bundle":
        manifest["target"] = export.target_for(candidate.run).to_json()
    if fmt.name == "tflite":
        manifest["description"] = export.tflite_description(candidate)
    if fmt.name == "onnx":
        manifest["description"] = [candidate.run_id, candidate.index, candidate.run.dataset]
    return manifest


def stored_export(candidate: Candidate, format_name: str) -> StoredExport:
    """The candidate's export in ``format_name``, built and stored first unless it is already.

    A stored one costs a stat (local disk) or a HEAD request (object storage) per source file
    and one for the export.  Raises what building raises: :class:`export.ExportUnavailable` for
    a candidate that cannot be exported (not trained, files missing), the generators' errors for
    a model they refuse.
    """
    fmt = FORMATS[format_name]
    export.check_has_weights(candidate)
    name = _stored_name(candidate, fmt, _source_digests(candidate, fmt))
    filename = f"{export.c_name(candidate)}.{fmt.extension}"
    found = files.stat(name)
    if found is not None:
        return StoredExport(name, filename, fmt.content_type, _key_of(name), found.size, built=False)
    return _build_and_store(candidate, fmt, filename)


def _build_and_store(candidate: Candidate, fmt: Format, filename: str) -> StoredExport:
    """Build from the source bytes read now and store under the key of exactly those bytes."""
    weights = _read(candidate.weights.name, "weights file")
    digests = {"weights_sha256": _sha256(weights)}
    qm = None
    if fmt.int8:
        qm, int8 = _quant_model(candidate)
        digests["int8_sha256"] = _sha256(int8)
    name = _stored_name(candidate, fmt, digests)
    data = _build(candidate, fmt, weights, qm)
    files.save_whole(name, data)
    _remove_older(candidate, fmt, keep=name)
    return StoredExport(name, filename, fmt.content_type, _key_of(name), len(data), built=True)


def _stored_name(candidate: Candidate, fmt: Format, digests: dict[str, str]) -> str:
    key = _manifest_key(_manifest(candidate, fmt, digests))
    return f"{candidate_folder(candidate)}/{key}.{fmt.extension}"


def _key_of(name: str) -> str:
    return posixpath.basename(name).split(".")[0]


def _build(candidate: Candidate, fmt: Format, weights: bytes, qm: QuantModel | None) -> bytes:
    started = time.perf_counter()
    data = BUILDERS[fmt.name](candidate, weights, qm)
    logger.info(
        "built the %s of candidate %s (%d bytes) in %.2f s",
        fmt.name,
        candidate.pk,
        len(data),
        time.perf_counter() - started,
    )
    return data


def _quant_model(candidate: Candidate) -> tuple[QuantModel, bytes]:
    """The stored int8 model and its bytes.

    A stored file that cannot be read is quantised again and replaced, as the export always
    did; its new bytes make the key.
    """
    int8 = _read(candidate.int8_model.name, "int8 model")
    try:
        return QuantModel.load(io.BytesIO(int8)), int8
    except (OSError, ValueError, KeyError):
        logger.warning("int8 model of candidate %s unreadable; quantising again", candidate.pk)
    export.quant_model_for(candidate)
    fresh = _read(candidate.int8_model.name, "int8 model")
    return QuantModel.load(io.BytesIO(fresh)), fresh


def _remove_older(candidate: Candidate, fmt: Format, keep: str) -> None:
    """Remove the folder's other files of this format: built from an older model or code."""
    for name in files.names_under(candidate_folder(candidate)):
        base = posixpath.basename(name)
        if name != keep and not base.startswith(".") and base.endswith(f".{fmt.extension}"):
            files.delete(name)


def _header(candidate: Candidate, weights: bytes, qm: QuantModel | None) -> bytes:
    return export.header_for(candidate, qm).text.encode()


def _bundle(candidate: Candidate, weights: bytes, qm: QuantModel | None) -> bytes:
    return export.bundle_for(candidate, qm)[1]


def _tflite(candidate: Candidate, weights: bytes, qm: QuantModel | None) -> bytes:
    return export.tflite_for(candidate, qm)[1]


def _onnx(candidate: Candidate, weights: bytes, qm: QuantModel | None) -> bytes:
    return export.onnx_for(candidate, export.float_model_from(candidate, weights))[1]


BUILDERS: dict[str, Callable[[Candidate, bytes, QuantModel | None], bytes]] = {
    "header": _header,
    "bundle": _bundle,
    "tflite": _tflite,
    "onnx": _onnx,
}


def remove_run_artifacts(run_id: int) -> int:
    """Remove every export stored for the run's candidates; how many files."""
    return files.delete_tree(run_artifacts_folder(run_id))
