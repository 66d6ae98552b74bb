"""``manage.py export CANDIDATE_ID --format {header,bundle,onnx,tflite} --output PATH``.

Writes the same file the candidate page offers for download: the stored one when it was built
before (:mod:`searches.services.downloads`), else built and stored now, so the next download is
instant too.  The file appears whole or not at all: it is written to a temporary file beside
PATH and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from searches.engine.deploy.header import ExportError
from searches.engine.deploy.int8 import QuantizationError
from searches.engine.deploy.tflite import TFLiteExportError
from searches.models import Candidate
from searches.services import downloads, export


def _stored(candidate: Candidate, format_name: str) -> tuple[str, bytes]:
    stored = downloads.stored_export(candidate, format_name)
    with stored.open() as f:
        return stored.filename, f.read()


class Command(BaseCommand):
    help = "Write a trained candidate's C header, bundle (.zip), float ONNX model or int8 .tflite file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("candidate_id", type=int, help="the candidate's id (in its page's address)")
        parser.add_argument(
            "--format", required=True, choices=sorted(downloads.FORMATS), help="what to write"
        )
        parser.add_argument(
            "--output",
            required=True,
            metavar="PATH",
            help="the file to write (a directory: its default name)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        candidate = (
            Candidate.objects.select_related("run", "run__profile").filter(pk=options["candidate_id"]).first()
        )
        if candidate is None:
            raise CommandError(f"no candidate with id {options['candidate_id']}")
        try:
            filename, data = _stored(candidate, options["format"])
        except export.ExportUnavailable as exc:
            raise CommandError(f"cannot export: {exc}") from exc
        except (QuantizationError, ExportError, TFLiteExportError) as exc:
            raise CommandError(f"the export failed: {exc}") from exc
        path = Path(options["output"])
        if path.is_dir():
            path = path / filename
        _write_atomically(path, data)
        self.stdout.write(self.style.SUCCESS(f"wrote {path} ({len(data):,} bytes, {options['format']})"))


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole, or a CommandError and nothing left behind."""
    if path.parent.exists() and not path.parent.is_dir():
        raise CommandError(f"cannot write {path}: {path.parent} is not a directory")
    if not path.parent.is_dir():
        raise CommandError(f"cannot write {path}: the directory {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the export private to this user
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc
