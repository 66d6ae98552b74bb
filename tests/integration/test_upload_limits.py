"""A real daphne refuses an oversized body while it streams in, without buffering it.

Measured before this guard: a 210 MB upload grew daphne to 2.6 GB before Django could refuse it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._s3 import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
LIMIT_MB = 1


@pytest.fixture
def daphne(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """daphne serving nasweb with a 1 MB upload limit: (port, pid)."""
    port, log = free_port(), tmp_path / "daphne.log"
    env = {**os.environ, "NASWEB_DATA_DIR": str(tmp_path / "data"), "NASWEB_UPLOAD_MAX_MB": str(LIMIT_MB)}
    env.pop("DATABASE_URL", None)
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "nasweb.asgi:application"]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log, timeout=60)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def _peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


def _send(port: int, head: bytes, chunk: bytes, total: int) -> tuple[bytes, int]:
    """Send ``head`` then ``chunk`` until ``total`` body bytes or the server closes; (answer, bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        sent = 0
        try:
            while sent < total:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        return s.recv(200), sent


def test_daphne_refuses_a_declared_length_over_the_limit_unread(daphne: tuple[int, int]) -> None:
    port, pid = daphne
    before = _peak_rss_kb(pid)
    total = 200 * 1024**2
    head = b"POST /datasets/upload/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % total

    answer, sent = _send(port, head, b"\0" * 65536, total)

    assert answer.startswith(b"HTTP/1.1 413")
    assert sent < total // 4  # the connection closed long before the body was through
    assert _peak_rss_kb(pid) - before < 50 * 1024


def test_daphne_cuts_off_a_chunked_body_past_the_limit(daphne: tuple[int, int]) -> None:
    port, _ = daphne
    head = b"POST /datasets/upload/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"\0" * 65536 + b"\r\n"

    answer, sent = _send(port, head, chunk, 200 * 1024**2)

    assert answer.startswith(b"HTTP/1.1 413")
    # Cut off after the 1 MB limit (plus what the sockets' buffers took in), not after 200 MB.
    assert sent < 20 * 1024**2
