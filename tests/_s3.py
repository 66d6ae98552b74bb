"""A real S3-compatible server for the object-storage tests: moto's standalone server process.

moto (``moto[server]``, in requirements-dev.txt) speaks the S3 HTTP API; the tests start it on a
free port of 127.0.0.1, once per test session, and give each test its own bucket.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

ACCESS_KEY = "nasweb-test"
SECRET_KEY = "nasweb-test-secret"
REGION = "us-east-1"
START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on port {port} within {timeout} s")


@dataclass(frozen=True)
class Bucket:
    endpoint: str
    name: str

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def env(self) -> dict[str, str]:
        """The environment that points a nasweb process (a worker) at this bucket."""
        return {
            "NASWEB_S3_BUCKET": self.name,
            "NASWEB_S3_ENDPOINT_URL": self.endpoint,
            "NASWEB_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "NASWEB_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "NASWEB_S3_REGION": REGION,
        }

    def storages(self, staticfiles: dict[str, Any]) -> dict[str, Any]:
        """The STORAGES setting nasweb/settings.py builds from :meth:`env`."""
        options = {
            "bucket_name": self.name,
            "endpoint_url": self.endpoint,
            "region_name": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "location": "",
            "file_overwrite": True,
            "default_acl": None,
            "addressing_style": None,
        }
        return {
            "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
            "staticfiles": staticfiles,
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1; its endpoint URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for_port(port, process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_bucket(s3_server: str) -> Bucket:
    """A new, empty bucket on the test S3 server."""
    bucket = Bucket(s3_server, f"nasweb-{uuid.uuid4().hex[:16]}")
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket


@pytest.fixture
def s3_storage(settings: Any, s3_bucket: Bucket) -> Bucket:
    """Django's default storage switched to the test bucket for this test."""
    settings.STORAGES = s3_bucket.storages(settings.STORAGES["staticfiles"])
    return s3_bucket
