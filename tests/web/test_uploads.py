from __future__ import annotations

import gzip
import hashlib
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from searches import queue as task_queue
from searches.models import Dataset, HardwareProfile, SearchRun
from searches.services import datasets as uploads
from searches.services.runs import get_dataset
from tests.web.factories import make_project, make_run

pytestmark = pytest.mark.django_db

RNG = np.random.default_rng(0)


def _arrays(n_train: int = 40, n_test: int = 10, side: int = 8) -> dict[str, np.ndarray]:
    return {
        "x_train": RNG.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "y_train": np.arange(n_train) % 3,
        "x_test": RNG.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "y_test": np.arange(n_test) % 3,
    }


def _npz(name: str = "data.npz", **arrays: np.ndarray) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="application/octet-stream")


def _idx_bytes(array: np.ndarray, count: int | None = None) -> bytes:
    """An IDX file of uint8 ``array``; ``count`` overrides the first dimension in the header."""
    dims = list(array.shape)
    if count is not None:
        dims[0] = count
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + array.astype(np.uint8).tobytes()


def _idx_files(arrays: dict[str, np.ndarray], gz: bool = False) -> dict[str, SimpleUploadedFile]:
    names = {
        "train_images": "x_train",
        "train_labels": "y_train",
        "test_images": "x_test",
        "test_labels": "y_test",
    }
    files = {}
    for field, key in names.items():
        data = _idx_bytes(arrays[key])
        if gz:
            data = gzip.compress(data)
        files[field] = SimpleUploadedFile(f"{field}-idx-ubyte{'.gz' if gz else ''}", data)
    return files


def _stored_files(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT) / "datasets"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _upload(client, **data):
    return client.post(reverse("dataset_upload"), {"name": "my set", **data})


def _assert_nothing_stored(settings) -> None:
    assert not Dataset.objects.filter(kind=Dataset.Kind.UPLOADED).exists()
    assert _stored_files(settings) == []


# --- good uploads -----------------------------------------------------------------------------


def test_npz_upload_works(client, user, settings):
    client.force_login(user)

    response = _upload(client, npz=_npz(**_arrays()))

    assert response.status_code == 302
    dataset = Dataset.objects.get(owner=user)
    assert (dataset.name, dataset.kind, dataset.input_shape) == ("my set", "uploaded", [8, 8, 1])
    assert (dataset.classes, dataset.n_train, dataset.n_test) == (3, 40, 10)
    assert dataset.key == f"upload:{dataset.pk}"
    assert len(_stored_files(settings)) == 1
    loaded = uploads.load_uploaded(dataset.key)
    assert loaded.x_train.shape == (40, 8, 8, 1)
    assert loaded.x_train.dtype == np.float32


@pytest.mark.parametrize("gz", [False, True])
def test_idx_upload_works(client, user, settings, gz):
    arrays = _arrays(n_train=30, n_test=6, side=10)
    client.force_login(user)

    response = _upload(client, **_idx_files(arrays, gz=gz))

    assert response.status_code == 302
    dataset = Dataset.objects.get(owner=user)
    assert (dataset.input_shape, dataset.n_train, dataset.n_test) == ([10, 10, 1], 30, 6)
    loaded = uploads.load_uploaded(dataset.key)
    np.testing.assert_array_equal(loaded.y_test, arrays["y_test"])
    np.testing.assert_allclose(loaded.x_train[..., 0], arrays["x_train"] / 255.0, rtol=1e-6)


def test_runs_load_an_uploaded_dataset(client, user):
    client.force_login(user)
    _upload(client, npz=_npz(**_arrays()))
    dataset = Dataset.objects.get(owner=user)
    get_dataset.cache_clear()

    loaded = get_dataset(dataset.key)

    assert loaded.name == dataset.key
    assert loaded.input_shape == (8, 8, 1)
    assert get_dataset("digits").input_shape == (8, 8, 1)  # the built-ins still load


def test_a_new_run_can_use_an_uploaded_dataset(client, user, monkeypatch, django_capture_on_commit_callbacks):

    monkeypatch.setattr(task_queue, "start_run", lambda run_id: None)
    client.force_login(user)
    _upload(client, npz=_npz(**_arrays(side=12)))
    dataset = Dataset.objects.get(owner=user)
    project = make_project(user)
    form = {
        "dataset": dataset.pk,
        "strategy": "random",
        "budget": 4,
        "population": 4,
        "parallel": 1,
        "seed": 0,
    }
    form["profile"] = HardwareProfile.objects.presets().first().pk

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("run_create", args=[project.pk]), form)

    assert response.status_code == 302
    run = SearchRun.objects.get(owner=user)
    assert run.dataset == dataset.key
    assert run.config["space"]["input_shape"] == [12, 12, 1]
    assert run.config["space"]["classes"] == 3


# --- bad uploads: a clear message and nothing stored ------------------------------------------


@pytest.mark.parametrize(
    ("make_files", "message"),
    [
        (
            lambda: {"npz": _npz(**{k: v for k, v in _arrays().items() if k != "y_test"})},
            "missing array(s) y_test",
        ),
        (lambda: {"npz": SimpleUploadedFile("data.npz", b"not a zip at all")}, "not a readable .npz archive"),
        (
            lambda: {"npz": _npz(**(_arrays() | {"y_train": np.arange(39) % 3}))},
            "train split: 39 labels for 40 images",
        ),
        (
            lambda: {"npz": _npz(**(_arrays() | {"x_train": np.full((40, 8, 8), 300, dtype=np.int32)}))},
            "integer pixel values must lie in 0..255",
        ),
        (
            lambda: {"npz": _npz(**(_arrays() | {"y_train": np.array([{"a": 1}] * 40, dtype=object)}))},
            "object arrays are not accepted",
        ),
        (
            lambda: {
                "npz": _npz(**(_arrays() | {"x_test": RNG.integers(0, 256, (10, 9, 9), dtype=np.uint8)}))
            },
            "train images are 8x8x1 but test images are 9x9x1",
        ),
    ],
)
def test_bad_npz_is_rejected(client, user, settings, make_files, message):
    client.force_login(user)

    response = _upload(client, **make_files())

    assert response.status_code == 200
    errors = response.context["form"].non_field_errors()
    assert len(errors) == 1 and errors[0].startswith("The dataset was not stored:")
    assert message in errors[0]
    assert message in response.content.decode().replace("&#x27;", "'")
    _assert_nothing_stored(settings)


def test_truncated_idx_is_rejected(client, user, settings):
    files = _idx_files(_arrays())
    data = files["train_images"].read()
    files["train_images"] = SimpleUploadedFile("train-images-idx3-ubyte", data[:-5])
    client.force_login(user)

    response = _upload(client, **files)

    error = response.context["form"].non_field_errors()[0]
    assert "train-images-idx3-ubyte: truncated" in error
    _assert_nothing_stored(settings)


def test_idx_with_mismatched_counts_is_rejected(client, user, settings):
    files = _idx_files(_arrays())
    files["test_labels"] = SimpleUploadedFile("labels", _idx_bytes(np.arange(7) % 3))
    client.force_login(user)

    response = _upload(client, **files)

    assert "labels holds 7 labels but test_images" in response.context["form"].non_field_errors()[0]
    _assert_nothing_stored(settings)


def test_idx_that_is_not_idx_is_rejected(client, user, settings):
    files = _idx_files(_arrays())
    files["train_labels"] = SimpleUploadedFile("labels.csv", b"1,2,3\n4,5,6\n")
    client.force_login(user)

    response = _upload(client, **files)

    assert "labels.csv: not an IDX file" in response.context["form"].non_field_errors()[0]
    _assert_nothing_stored(settings)


def test_too_many_samples_are_rejected_before_loading(client, user, settings):
    files = _idx_files(_arrays())
    # The header claims 2,000,000 images; the check reads only the header.
    images = _arrays()["x_train"]
    files["train_images"] = SimpleUploadedFile("big-images", _idx_bytes(images, count=2_000_000))
    client.force_login(user)

    response = _upload(client, **files)

    assert (
        "2,000,000 samples; at most 1,000,000 are accepted" in response.context["form"].non_field_errors()[0]
    )
    _assert_nothing_stored(settings)


def test_npz_with_too_many_samples_is_rejected(client, user, settings, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_SAMPLES", 30)
    client.force_login(user)

    response = _upload(client, npz=_npz(**_arrays(n_train=40)))

    assert "x_train: 40 samples; at most 30 are accepted" in response.context["form"].non_field_errors()[0]
    _assert_nothing_stored(settings)


def test_too_large_uploads_are_refused_while_they_stream_in(client, user, settings):
    settings.NASWEB_UPLOAD_MAX_MB = 1
    client.force_login(user)

    response = _upload(client, npz=_npz(**_arrays(n_train=20_000)))

    error = response.context["form"].non_field_errors()[0]
    assert "the upload is over 1 MB" in error and "refused before it was read" in error
    _assert_nothing_stored(settings)


def _npy_header_only(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    """A .npy file that declares ``shape`` but holds no data: what a decompression bomb looks like."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_arrays_too_large_to_decode_are_refused_from_their_headers(client, user, settings):
    arrays = _arrays()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x_train.npy", _npy_header_only((900_000, 64, 64)))
        for key in ("y_train", "x_test", "y_test"):
            member = io.BytesIO()
            np.save(member, arrays[key])
            archive.writestr(f"{key}.npy", member.getvalue())
    client.force_login(user)

    started = time.monotonic()
    response = _upload(client, npz=SimpleUploadedFile("bomb.npz", buffer.getvalue()))

    error = response.context["form"].non_field_errors()[0]
    assert "the arrays would decode to 3,515.6 MB (x_train 900000x64x64 uint8" in error
    assert "at most 512 MB are accepted" in error
    assert time.monotonic() - started < 10
    _assert_nothing_stored(settings)


def test_the_check_runs_within_its_memory_limit(client, user, settings):
    settings.NASWEB_UPLOAD_MEMORY_MB = 160
    # 98 MB of float64 pixels (zeros compress to almost nothing): more than the child may map.
    big = _arrays(n_train=12_000, side=32) | {"x_train": np.zeros((12_000, 32, 32))}
    client.force_login(user)

    response = _upload(client, npz=_npz(**big))

    error = response.context["form"].non_field_errors()[0]
    assert "needs more than the 160 MB allowed" in error or "memory" in error
    _assert_nothing_stored(settings)


def test_the_check_runs_within_its_time_limit(client, user, settings):
    settings.NASWEB_UPLOAD_TIMEOUT_S = 0.001
    client.force_login(user)

    response = _upload(client, npz=_npz(**_arrays()))

    assert "took longer than 0.001 s" in response.context["form"].non_field_errors()[0]
    _assert_nothing_stored(settings)


def test_only_the_validated_arrays_are_stored_in_canonical_form(client, user, settings):
    arrays = _arrays() | {"x_train": _arrays()["x_train"].astype(np.int64)}
    client.force_login(user)

    _upload(client, npz=_npz(**arrays, secret=np.arange(5), notes=np.array(["hello"])))

    (stored,) = _stored_files(settings)
    with np.load(stored, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert npz["x_train"].dtype == np.uint8 and npz["x_train"].shape == (40, 8, 8, 1)
        np.testing.assert_array_equal(npz["x_train"][..., 0], arrays["x_train"])
        assert npz["y_train"].dtype == np.int64
    dataset = Dataset.objects.get(owner=user)
    assert dataset.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()


def test_a_failing_save_leaves_no_file(client, user, settings, monkeypatch):
    def broken_save(*args, **kwargs):
        raise RuntimeError("database is down")

    monkeypatch.setattr(Dataset, "save", broken_save)
    client.force_login(user)

    with pytest.raises(RuntimeError):
        _upload(client, npz=_npz(**_arrays()))

    assert _stored_files(settings) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Upload an NPZ archive, or all four IDX files."),
        ({"train_images": SimpleUploadedFile("a", b"x")}, "Upload an NPZ archive, or all four IDX files."),
        (
            {"npz": SimpleUploadedFile("a.npz", b"x"), "train_images": SimpleUploadedFile("a", b"x")},
            "Upload either an NPZ archive or four IDX files, not both.",
        ),
    ],
)
def test_the_form_needs_one_kind_of_upload(client, user, settings, data, message):
    client.force_login(user)

    response = _upload(client, **data)

    assert response.context["form"].non_field_errors() == [message]
    _assert_nothing_stored(settings)


def test_names_must_be_unique(client, user, settings):
    client.force_login(user)
    _upload(client, npz=_npz(**_arrays()))

    duplicate = _upload(client, npz=_npz(**_arrays()))
    builtin = client.post(reverse("dataset_upload"), {"name": "digits", "npz": _npz(**_arrays())})

    assert duplicate.context["form"].errors["name"] == ["A dataset with this name already exists."]
    assert builtin.context["form"].errors["name"] == ["A dataset with this name already exists."]
    assert len(_stored_files(settings)) == 1


def test_upload_requires_login(client, settings):
    response = _upload(client, npz=_npz(**_arrays()))

    assert response.status_code == 302
    _assert_nothing_stored(settings)


# --- list and delete ----------------------------------------------------------------------------


def test_list_works(client, user, other_user):
    uploads.create_uploaded(other_user, "bobs data", _npz(**_arrays()), None)
    client.force_login(user)
    _upload(client, npz=_npz(**_arrays()))

    response = client.get(reverse("dataset_list"))

    names = [d.name for d in response.context["datasets"]]
    assert sorted(names) == ["digits", "fashion-mnist", "my set"]
    assert "bobs data" not in response.content.decode()


def test_list_requires_login(client):
    assert client.get(reverse("dataset_list")).status_code == 302


def test_delete_works(client, user, settings, django_capture_on_commit_callbacks):
    client.force_login(user)
    _upload(client, npz=_npz(**_arrays()))
    dataset = Dataset.objects.get(owner=user)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("dataset_delete", args=[dataset.pk]))

    assert response.status_code == 302
    _assert_nothing_stored(settings)


def test_delete_refuses_while_a_run_uses_it(client, user):
    client.force_login(user)
    _upload(client, npz=_npz(**_arrays()))
    dataset = Dataset.objects.get(owner=user)
    make_run(user, dataset=dataset.key, status=SearchRun.Status.RUNNING)

    client.post(reverse("dataset_delete", args=[dataset.pk]))

    assert Dataset.objects.filter(pk=dataset.pk).exists()


def test_delete_checks_owner(client, user, other_user):
    bobs = uploads.create_uploaded(other_user, "bobs data", _npz(**_arrays()), None)
    digits = Dataset.objects.get(name="digits")
    client.force_login(user)

    assert client.post(reverse("dataset_delete", args=[bobs.pk])).status_code == 404
    assert client.post(reverse("dataset_delete", args=[digits.pk])).status_code == 404
    assert Dataset.objects.filter(pk__in=[bobs.pk, digits.pk]).count() == 2


def test_delete_requires_login(client, user):
    client.force_login(user)
    _upload(client, npz=_npz(**_arrays()))
    dataset = Dataset.objects.get(owner=user)
    client.logout()

    assert client.post(reverse("dataset_delete", args=[dataset.pk])).status_code == 302
    assert Dataset.objects.filter(pk=dataset.pk).exists()
