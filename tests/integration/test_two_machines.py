"""Web server and worker on "two machines": separate data folders, one PostgreSQL, Redis and object store.

The test process is the web server (its MEDIA_ROOT and cache under ``web/``); a real Celery
worker runs with its own NASWEB_DATA_DIR under ``worker/``.  They share only the test database
(PostgreSQL), a private ``redis-server`` started here on a free port, and a bucket on the moto S3
server (tests/_s3.py).  An upload made on the web trains on the worker; the worker's weights
download, verify and prune from the web; deleting the run empties its folder in the bucket.
"""

from __future__ import annotations

import io
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from nasweb.celery import app as celery_app
from searches import queue
from searches.models import Candidate, Dataset, PruningJob, SearchRun
from tests._s3 import Bucket, free_port, wait_for_port
from tests.integration.conftest import tail, worker_process
from tests.web.factories import make_profile, make_project

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT_S = 240


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of our own on a free port (nothing shared is touched)."""
    port = free_port()
    log = tmp_path / "redis.log"
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    try:
        process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    except FileNotFoundError:
        pytest.skip("needs redis-server (Debian package redis-server)")
    try:
        wait_for_port(port, process, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _wait(what: str, done: Callable[[], bool], worker: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if done():
            return
        assert worker.poll() is None, f"the worker exited; its log:\n{tail(log)}"
        time.sleep(0.5)
    raise AssertionError(f"{what} did not finish in {TIMEOUT_S} s; worker log:\n{tail(log)}")


def _upload_npz() -> SimpleUploadedFile:
    rng = np.random.default_rng(0)
    labels = np.arange(90) % 3
    # Class k is a bright band in rows 2k..2k+2: learnable in an epoch or two.
    images = rng.integers(0, 60, (90, 8, 8), dtype=np.uint8)
    for k in range(3):
        images[labels == k, 2 * k : 2 * k + 3, :] += 180
    buffer = io.BytesIO()
    np.savez(buffer, x_train=images[:72], y_train=labels[:72], x_test=images[72:], y_test=labels[72:])
    return SimpleUploadedFile("bands.npz", buffer.getvalue())


def test_a_worker_on_another_machine_trains_exports_prunes_and_deletes(
    client,
    user,
    settings: Any,
    tmp_path: Path,
    database_url: str,
    private_redis: str,
    s3_storage: Bucket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web_media = settings.MEDIA_ROOT = tmp_path / "web" / "media"
    settings.NASWEB_CACHE_DIR = tmp_path / "web" / "cache"
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [private_redis]}}
    }

    def send(task_name: str, object_id: int) -> None:
        # The web side's broker is the private Redis too (this process's own setting may differ).
        with celery_app.connection_for_write(private_redis) as broker:
            celery_app.send_task(task_name, args=[int(object_id)], connection=broker)

    monkeypatch.setattr(queue, "send", send)
    worker_dir, log = tmp_path / "worker", tmp_path / "worker.log"
    with worker_process(private_redis, database_url, worker_dir, log, s3_storage.env()) as worker:
        client.force_login(user)

        # Upload on the web: stored in the bucket, nothing on the web's disk.
        response = client.post(reverse("dataset_upload"), {"name": "bands", "npz": _upload_npz()})
        assert response.status_code == 302, response.content.decode()[-3000:]
        dataset = Dataset.objects.get(owner=user, name="bands")
        assert s3_storage.keys("datasets/") == [dataset.file.name]

        # A search on it runs on the worker, which fetches the upload from the store.
        profile = make_profile(user, sram_kb=256, flash_kb=1024)
        form = {"dataset": dataset.pk, "profile": profile.pk, "strategy": "random", "budget": 2}
        form |= {"population": 2, "parallel": 1, "seed": 0, "epochs": 2}
        response = client.post(reverse("run_create", args=[make_project(user).pk]), form)
        assert response.status_code == 302, response.content.decode()[-3000:]
        run = SearchRun.objects.get(owner=user)
        _wait("the run", lambda: not SearchRun.objects.get(pk=run.pk).is_active, worker, log)
        run.refresh_from_db()
        trained = list(run.candidates.filter(status=Candidate.Status.DONE))
        assert run.status == SearchRun.Status.DONE and len(trained) == 2, (run.status, run.error, tail(log))
        assert not run.candidates.filter(status=Candidate.Status.FAILED).exists()
        assert _files(worker_dir / "cache" / "datasets") == [
            worker_dir / "cache" / "datasets" / f"{dataset.sha256}.npz"
        ]

        # The worker's files download from the web: header, bundle, ONNX.
        candidate = max(
            trained, key=lambda c: len(c.architecture["layers"]) if "layers" in c.architecture else 0
        )
        assert candidate.int8_model
        header = client.get(reverse("candidate_header", args=[candidate.pk]))
        bundle = client.get(reverse("candidate_bundle", args=[candidate.pk]))
        onnx = client.get(reverse("candidate_onnx", args=[candidate.pk]))
        assert header.status_code == 200 and b"_IMPLEMENTATION" in header.getvalue()
        assert bundle.status_code == 200 and zipfile.is_zipfile(io.BytesIO(bundle.getvalue()))
        assert onnx.status_code == 200 and onnx.getvalue()[:2] != b"<!"
        # Built once, stored in the bucket for every machine.
        built = s3_storage.keys(f"artifacts/run-{run.pk}/candidate-{candidate.pk}/")
        assert sorted(key.rsplit(".", 1)[1] for key in built) == ["h", "onnx", "zip"]

        # Verify on the worker.
        client.post(reverse("candidate_verify", args=[candidate.pk]))
        _wait("the verification", lambda: not Candidate.objects.get(pk=candidate.pk).export_busy, worker, log)
        candidate.refresh_from_db()
        report = candidate.export_report or {}
        assert "error" not in report, report.get("error")
        assert candidate.export_status in (
            Candidate.ExportStatus.PASSED,
            Candidate.ExportStatus.UNAVAILABLE,
        ), report

        # Prune on the worker; the pruned candidate's files are in the bucket.
        client.post(
            reverse("candidate_prune", args=[candidate.pk]),
            {"mode": "sparsity", "target_sparsity": 0.5, "epochs": 1},
        )
        job = PruningJob.objects.get(source=candidate)
        _wait("the pruning job", lambda: not PruningJob.objects.get(pk=job.pk).is_active, worker, log)
        job.refresh_from_db()
        assert job.status == PruningJob.Status.DONE, (job.error, tail(log))
        pruned = job.result_candidate
        folder = f"weights/run-{run.pk}"
        names = {c.weights.name for c in run.candidates.exclude(weights="")} | {
            c.int8_model.name for c in run.candidates.exclude(int8_model="")
        }
        assert pruned.weights.name in names and set(s3_storage.keys(folder)) == names

        # Nothing was written to either machine's MEDIA_ROOT: everything is in the store.
        assert _files(web_media) == [] and _files(worker_dir / "media") == []

        response = client.post(reverse("run_delete", args=[run.pk]))
        assert response.status_code == 302
        assert s3_storage.keys(folder) == [] and s3_storage.keys(f"artifacts/run-{run.pk}/") == []
