"""Artifacts in Django's default storage: the one place services read, write and delete files.

Local disk (``FileSystemStorage`` under MEDIA_ROOT) or S3-compatible object storage, as the
settings say: a name saved here by a worker is read back by the web server on another machine.
Names are relative and ``/``-separated (``weights/run-3/candidate-0.pt``); nothing here builds
a local path, so nothing assumes the web server and the workers share a disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import Storage, default_storage

logger = logging.getLogger(__name__)


def storage() -> Storage:
    return default_storage


def save_bytes(name: str, data: bytes) -> str:
    """Store ``data`` under ``name``, replacing what was there; the name it was stored under."""
    return save_file(name, ContentFile(data))


def save_file(name: str, content: File) -> str:
    """Store a file (streamed in chunks) under ``name``, replacing what was there."""
    store = storage()
    if store.exists(name):
        store.delete(name)
    return store.save(name, content)


def save_whole(name: str, data: bytes) -> str:
    """Store ``data`` under ``name`` so that no reader ever sees part of it; the stored name.

    On local disk the bytes go to a hidden temporary file in the same folder, renamed over
    ``name`` once written (two writers of one name: the last rename wins, each file whole).
    An object store makes an object visible only once its upload completed, so one upload is
    atomic already; it must store under ``name`` itself (``file_overwrite``), never beside it.
    """
    store = storage()
    try:
        path = Path(store.path(name))
    except NotImplementedError:
        path = None
    if path is not None:
        _replace_local(path, data)
        return name
    stored = store.save(name, ContentFile(data))
    if stored != name:
        delete(stored)
        raise RuntimeError(f"the store saved {name} as {stored}: enable its file_overwrite option")
    return stored


def _replace_local(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        mode = settings.FILE_UPLOAD_PERMISSIONS
        if mode is not None:
            os.chmod(tmp, mode)  # mkstemp's 0600 is stricter than the store's own files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_bytes(name: str) -> bytes:
    """The whole stored file ``name``; FileNotFoundError (an OSError) when it is not stored."""
    if not name or not storage().exists(name):
        raise FileNotFoundError(f"{name or '(no file)'} is not in the artifact store")
    with storage().open(name, "rb") as f:
        return f.read()


def open_stored(name: str) -> IO[bytes]:
    """The stored file ``name`` opened for reading (in chunks); FileNotFoundError when absent."""
    if not name or not storage().exists(name):
        raise FileNotFoundError(f"{name or '(no file)'} is not in the artifact store")
    return storage().open(name, "rb")  # type: ignore[return-value]


@dataclass(frozen=True)
class Stat:
    """A stored file's size and version: the version changes whenever its bytes may have."""

    size: int
    version: str


def stat(name: str) -> Stat | None:
    """The stored file's size and version (one stat or one HEAD request); None when absent."""
    store = storage()
    try:
        path = store.path(name)
    except NotImplementedError:
        return _remote_stat(store, name)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    # A whole write (save_whole, save_file) makes a new inode.
    return Stat(st.st_size, f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")


def _remote_stat(store: Storage, name: str) -> Stat | None:
    if _is_s3(store):
        from botocore.exceptions import ClientError

        # One HEAD for size, ETag and time; Storage's size() and get_modified_time() are one each.
        obj = store.bucket.Object(_s3_key(store, name))  # type: ignore[attr-defined]
        try:
            obj.load()
        except ClientError as err:
            if err.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return None
            raise
        return Stat(obj.content_length, f"{obj.e_tag}:{obj.last_modified.isoformat()}")
    if not store.exists(name):
        return None
    return Stat(store.size(name), store.get_modified_time(name).isoformat())


def stream(name: str) -> IO[bytes]:
    """The stored file ``name`` to read once, front to back, with the fewest requests.

    On object storage that is one GET (Storage.open adds HEAD requests first); FileNotFoundError
    when the file is not stored.
    """
    store = storage()
    if _is_s3(store):
        from botocore.exceptions import ClientError

        try:
            return store.bucket.Object(_s3_key(store, name)).get()["Body"]  # type: ignore[attr-defined]
        except ClientError as err:
            if err.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                raise FileNotFoundError(f"{name} is not in the artifact store") from err
            raise
    return store.open(name, "rb")  # type: ignore[return-value]


def _is_s3(store: Storage) -> bool:
    # Imported only when the store is one: boto3 is slow to import.
    module = store.__class__.__module__  # default_storage is a lazy proxy: type() is not the backend
    if not module.startswith("storages.backends.s3"):
        return False
    from storages.backends.s3 import S3Storage

    return isinstance(store, S3Storage)


def _s3_key(store: Storage, name: str) -> str:
    """The object key of ``name`` (under the store's location prefix), as S3Storage makes it."""
    from storages.utils import clean_name

    return store._normalize_name(clean_name(name))  # type: ignore[attr-defined]


def exists(name: str) -> bool:
    return bool(name) and storage().exists(name)


def delete(name: str) -> None:
    """Delete one stored file; a file already gone is not an error."""
    if name:
        with contextlib.suppress(FileNotFoundError):
            storage().delete(name)


def names_under(prefix: str) -> list[str]:
    """Every stored file whose name lies under the folder ``prefix``."""
    store, found = storage(), []
    try:
        folders, files = store.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found += [posixpath.join(prefix, f) for f in files]
    for folder in folders:
        found += names_under(posixpath.join(prefix, folder))
    return found


def delete_tree(prefix: str) -> int:
    """Delete every stored file under ``prefix`` (and, on local disk, the emptied folders); how many."""
    names = names_under(prefix)
    for name in names:
        delete(name)
    _remove_local_folders(prefix)
    return len(names)


def _remove_local_folders(prefix: str) -> None:
    try:
        root = storage().path(prefix)
    except NotImplementedError:  # object storage has no folders to leave behind
        return
    shutil.rmtree(root, ignore_errors=True)
