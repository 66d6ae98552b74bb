"""Artifacts in S3-compatible object storage (a real moto server process, tests/_s3.py).

Trained files, int8 models and uploads are written, read back and deleted through the store,
never through a local path; workers read an upload from the store once, then from their cache.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from searches.engine.training.datasets import DatasetError
from searches.models import Dataset
from searches.services import datasets, files
from tests._s3 import Bucket
from tests.web.exports import make_trained_candidate
from tests.web.factories import make_run

pytestmark = pytest.mark.django_db


def _local_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file()]


def test_trained_files_are_stored_read_and_deleted_in_the_bucket(
    client, user, settings, s3_storage: Bucket, django_capture_on_commit_callbacks
):
    run = make_run(user)
    candidate = make_trained_candidate(run)
    client.force_login(user)

    header = client.get(reverse("candidate_header", args=[candidate.pk]))
    bundle = client.get(reverse("candidate_bundle", args=[candidate.pk]))
    onnx = client.get(reverse("candidate_onnx", args=[candidate.pk]))

    assert header.status_code == 200 and b"_IMPLEMENTATION" in header.getvalue()
    assert bundle.status_code == 200 and zipfile.is_zipfile(io.BytesIO(bundle.getvalue()))
    assert onnx.status_code == 200 and len(onnx.getvalue()) > 100
    folder = f"weights/run-{run.pk}"
    # The header quantised the model on demand and stored the int8 model beside the weights.
    assert s3_storage.keys(folder) == [f"{folder}/candidate-0.int8.npz", f"{folder}/candidate-0.pt"]
    assert _local_files(settings.MEDIA_ROOT) == []

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("run_delete", args=[run.pk]))

    assert s3_storage.keys(folder) == []


def test_downloads_are_built_once_into_the_bucket(
    client, user, settings, s3_storage: Bucket, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.INFO, logger="searches.services.downloads")
    run = make_run(user)
    candidate = make_trained_candidate(run)
    client.force_login(user)
    urls = [reverse(name, args=[candidate.pk]) for name in ("candidate_header", "candidate_onnx")]

    first = [client.get(url).getvalue() for url in urls]
    folder = f"artifacts/run-{run.pk}/candidate-{candidate.pk}"
    keys = s3_storage.keys(folder)
    stamps = [_last_modified(s3_storage, key) for key in keys]
    time.sleep(1.1)  # S3 times have whole seconds: a rewrite would show
    second = [client.get(url).getvalue() for url in urls]

    assert first == second
    assert sorted(key.rsplit(".", 1)[1] for key in keys) == ["h", "onnx"]
    assert [_last_modified(s3_storage, key) for key in keys] == stamps
    assert sum(r.getMessage().startswith("built the ") for r in caplog.records) == 2
    assert _local_files(settings.MEDIA_ROOT) == []

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("run_delete", args=[run.pk]))

    assert s3_storage.keys("artifacts/") == []


def _last_modified(bucket: Bucket, key: str) -> object:
    head = bucket.client().head_object(Bucket=bucket.name, Key=key)
    return (head["LastModified"], head["ETag"])


def test_a_weights_file_missing_from_the_bucket_is_named(client, user, s3_storage: Bucket):
    candidate = make_trained_candidate(make_run(user))
    s3_storage.client().delete_object(Bucket=s3_storage.name, Key=candidate.weights.name)
    client.force_login(user)

    response = client.get(reverse("candidate_onnx", args=[candidate.pk]), follow=True)

    assert response.redirect_chain == [(reverse("candidate_detail", args=[candidate.pk]), 302)]
    assert f"the weights file {candidate.weights.name} is missing" in response.content.decode()


def _upload(client) -> Dataset:
    arrays = {
        "x_train": np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8),
        "y_train": np.arange(30) % 3,
        "x_test": np.random.default_rng(1).integers(0, 256, (9, 8, 8), dtype=np.uint8),
        "y_test": np.arange(9) % 3,
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    response = client.post(
        reverse("dataset_upload"), {"name": "mine", "npz": SimpleUploadedFile("d.npz", buffer.getvalue())}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    return Dataset.objects.get(name="mine")


def test_a_worker_reads_an_upload_from_the_bucket_once(client, user, settings, s3_storage: Bucket):
    client.force_login(user)
    dataset = _upload(client)
    assert s3_storage.keys("datasets/") == [dataset.file.name]
    assert _local_files(settings.MEDIA_ROOT) == []

    first = datasets.load_uploaded(dataset.key)
    # Gone from the store: the second load can only come from this machine's cache.
    s3_storage.client().delete_object(Bucket=s3_storage.name, Key=dataset.file.name)
    second = datasets.load_uploaded(dataset.key)

    assert _local_files(settings.NASWEB_CACHE_DIR) == [
        Path(settings.NASWEB_CACHE_DIR) / "datasets" / f"{dataset.sha256}.npz"
    ]
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert first.input_shape == (8, 8, 1) and first.classes == 3


def test_a_missing_or_altered_upload_is_refused(client, user, settings, s3_storage: Bucket):
    client.force_login(user)
    dataset = _upload(client)
    files.save_bytes(dataset.file.name, b"something else")

    with pytest.raises(DatasetError, match="does not match its SHA-256"):
        datasets.load_uploaded(dataset.key)
    files.delete(dataset.file.name)
    with pytest.raises(DatasetError, match="is missing from the store"):
        datasets.load_uploaded(dataset.key)
    assert _local_files(settings.NASWEB_CACHE_DIR) == []  # nothing half-fetched is left


def test_deleting_an_upload_deletes_its_object(
    client, user, s3_storage: Bucket, django_capture_on_commit_callbacks
):
    client.force_login(user)
    dataset = _upload(client)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("dataset_delete", args=[dataset.pk]))

    assert s3_storage.keys() == []
