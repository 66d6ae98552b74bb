"""Uploads against the web process's memory: daphne with an oversized body, the bounded check.

Usage::

    python bench/bench_uploads.py [--no-docs]

1. daphne (scratch data folder, default 200 MB limit) gets a 220 MB POST, declared by its
   Content-Length: time to the 413, body bytes the client got through before the connection
   closed, and daphne's peak RSS (VmHWM) before and after.
2. ``create_uploaded`` (the upload view's service) on a 438 KiB zero-filled NPZ that decodes to
   454 MB, and on an NPZ whose header declares 3.5 GB: peak RSS of this (web) process against the
   checker child's, and the time taken.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import replace_section

BODY = 220_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vmhwm_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024


def daphne_oversized(data_dir: Path) -> dict[str, float]:
    port = _free_port()
    env = {**os.environ, "NASWEB_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "nasweb.asgi:application"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        before = _vmhwm_mb(process.pid)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(
                b"POST /datasets/upload/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % BODY
            )
            sent = 0
            try:
                while sent < BODY:
                    s.sendall(b"\0" * 65536)
                    sent += 65536
            except OSError:
                pass
            status = s.recv(64).split(b"\r\n")[0].decode()
        return {
            "status": status,
            "seconds": time.monotonic() - started,
            "sent_mb": sent / 1024**2,
            "before_mb": before,
            "after_mb": _vmhwm_mb(process.pid),
        }
    finally:
        process.terminate()
        process.wait(timeout=10)


def _zeros_npz() -> bytes:
    import numpy as np

    x = np.zeros((440_000, 32, 32), np.uint8)
    y = np.arange(440_000) % 3
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x_train=x, y_train=y, x_test=x[:1000], y_test=y[:1000])
    return buffer.getvalue()


def _bomb_npz() -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": (900_000, 64, 64)}
        )
        archive.writestr("x_train.npy", header.getvalue())
        for key, array in (("y_train", np.arange(10) % 2), ("x_test", np.zeros((2, 8, 8), np.uint8))):
            member = io.BytesIO()
            np.save(member, array)
            archive.writestr(f"{key}.npy", member.getvalue())
        member = io.BytesIO()
        np.save(member, np.arange(2) % 2)
        archive.writestr("y_test.npy", member.getvalue())
    return buffer.getvalue()


def checked_uploads(data_dir: Path) -> list[dict[str, object]]:
    """In a child Python (a fresh web process): create_uploaded on each file, RSS of both sides."""
    files = {"zero-filled NPZ": _zeros_npz(), "NPZ declaring 3.5 GB": _bomb_npz()}
    rows = []
    for label, data in files.items():
        path = data_dir / "upload.npz"
        path.write_bytes(data)
        out = (
            subprocess.run(
                [sys.executable, __file__, "--one-upload", str(path)],
                cwd=ROOT,
                env={
                    **os.environ,
                    "NASWEB_DATA_DIR": str(data_dir),
                    "DJANGO_SETTINGS_MODULE": "nasweb.settings",
                },
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        outcome, web_before, web_after, child, seconds = out.split("|")
        rows.append(
            {
                "label": label,
                "size_kib": len(data) / 1024,
                "outcome": outcome,
                "web": f"{float(web_before):.0f} → {float(web_after):.0f}",
                "child": f"{float(child):.0f}",
                "seconds": float(seconds),
            }
        )
    return rows


def one_upload(path: Path) -> None:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.files.uploadedfile import TemporaryUploadedFile
    from django.core.management import call_command

    from searches.engine.training.datasets import DatasetError
    from searches.services import datasets

    call_command("migrate", verbosity=0)
    user, _ = User.objects.get_or_create(username="bench")
    upload = TemporaryUploadedFile("upload.npz", "application/octet-stream", path.stat().st_size, None)
    upload.write(path.read_bytes())
    upload.seek(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.monotonic()
    try:
        row = datasets.create_uploaded(user, f"bench {time.time()}", upload, None)
        outcome = f"stored ({row.n_train:,} images, {row.file.size / 1024:.0f} KiB canonical)"
    except DatasetError as exc:
        outcome = f"refused: {str(exc)[:70]}…"
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{outcome}|{before}|{after}|{child}|{seconds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--one-upload", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_upload:
        one_upload(args.one_upload)
        return
    with tempfile.TemporaryDirectory(prefix="nasweb-bench-uploads-") as scratch:
        daphne = daphne_oversized(Path(scratch) / "daphne")
        rows = checked_uploads(Path(scratch))
    load = os.getloadavg()[0]
    body = (
        "Command: `python bench/bench_uploads.py`\n"
        f"on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPython "
        f"{platform.python_version()}; 1-minute load average {load:.1f} at the end.\n\n"
        f"**An oversized body.** A {BODY / 1e6:.0f} MB POST to daphne (limit 200 MB), declared by its "
        f"Content-Length: `{daphne['status']}` after {daphne['seconds']:.2f} s, the client got "
        f"{daphne['sent_mb']:.1f} MB through before the connection closed, and daphne's peak RSS went "
        f"from {daphne['before_mb']:.0f} MB to {daphne['after_mb']:.0f} MB (before the guard in "
        "`searches.uploads.limit_daphne_bodies`: 81 MB to 2.6 GB, the body refused only after it was "
        "all received).\n\n"
        "**Decoding happens in the bounded child.** `create_uploaded` (what the upload view calls) in a "
        "fresh process; peak RSS in MB of that (web) process and of the checker child:\n\n"
        "| upload | KiB | outcome | web process MB | checker child MB | s |\n|---|---|---|---|---|---|\n"
        + "".join(
            f"| {r['label']} | {r['size_kib']:.0f} | {r['outcome']} | {r['web']} | {r['child']} | "
            f"{r['seconds']:.1f} |\n"
            for r in rows
        )
    )
    print(body)
    if not args.no_docs:
        replace_section(ROOT / "docs" / "benchmarks.md", "Uploads and the web process's memory", body)


if __name__ == "__main__":
    main()
