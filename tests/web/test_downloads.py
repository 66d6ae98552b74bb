"""Downloads built once: stored in the artifact store under a content key, then served from there."""

from __future__ import annotations

import logging
import threading
import zipfile
from io import BytesIO, StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from searches.models import Candidate
from searches.services import artifacts, downloads, files
from tests.web.exports import make_trained_candidate, media, trained_small_arch
from tests.web.factories import make_candidate, make_project, make_run

pytestmark = pytest.mark.django_db

URLS = {
    "header": "candidate_header",
    "bundle": "candidate_bundle",
    "tflite": "candidate_tflite",
    "onnx": "candidate_onnx",
}
EXTENSIONS = {"header": "h", "bundle": "zip", "tflite": "tflite", "onnx": "onnx"}


@pytest.fixture
def candidate(user) -> Candidate:
    return make_trained_candidate(make_run(user), index=3)


def _builds(caplog: pytest.LogCaptureFixture, format_name: str) -> int:
    """How many times the export in ``format_name`` was built, from the builder's own log line."""
    return sum(r.getMessage().startswith(f"built the {format_name} ") for r in caplog.records)


def _stored(candidate: Candidate, format_name: str) -> list[Path]:
    folder = media(downloads.candidate_folder(candidate))
    return sorted(folder.glob(f"*.{EXTENSIONS[format_name]}"))


@pytest.mark.parametrize("format_name", list(URLS))
def test_the_second_download_is_the_stored_file(client, user, candidate, caplog, format_name):
    caplog.set_level(logging.INFO, logger="searches.services.downloads")
    client.force_login(user)
    url = reverse(URLS[format_name], args=[candidate.pk])

    first = client.get(url)
    [stored] = _stored(candidate, format_name)
    written = stored.stat().st_mtime_ns
    second = client.get(url)

    assert first.status_code == second.status_code == 200
    assert first.getvalue() == second.getvalue() == stored.read_bytes()
    assert _builds(caplog, format_name) == 1
    assert stored.stat().st_mtime_ns == written
    assert _stored(candidate, format_name) == [stored]
    filename = f"nasweb_r{candidate.run_id}_c3.{EXTENSIONS[format_name]}"
    assert second["Content-Disposition"] == f'attachment; filename="{filename}"'
    assert second["Content-Length"] == str(stored.stat().st_size)
    assert second["ETag"] == f'"{stored.name.split(".")[0]}"'


def test_the_stored_name_is_the_sha256_of_the_manifest(candidate):
    stored = downloads.stored_export(candidate, "header")
    assert stored.name == f"artifacts/run-{candidate.run_id}/candidate-{candidate.pk}/{stored.key}.h"
    assert len(stored.key) == 64 and int(stored.key, 16) >= 0
    assert stored.built and not downloads.stored_export(candidate, "header").built


def test_each_format_has_its_own_file(candidate):
    names = {name: downloads.stored_export(candidate, name).name for name in URLS}
    assert len(set(names.values())) == 4
    assert zipfile.is_zipfile(BytesIO(files.read_bytes(names["bundle"])))


def _replace_weights(candidate: Candidate) -> None:
    """New trained weights under the same name (as if the candidate had been trained again)."""
    state = {k: v + 0.05 if v.is_floating_point() else v for k, v in trained_small_arch().state_dict.items()}
    artifacts.save_weights_file(state, candidate.weights.name)


def test_new_weights_give_a_new_key(client, user, candidate, caplog):
    caplog.set_level(logging.INFO, logger="searches.services.downloads")
    client.force_login(user)
    url = reverse("candidate_onnx", args=[candidate.pk])
    before = client.get(url).getvalue()
    [old] = _stored(candidate, "onnx")

    _replace_weights(candidate)
    after = client.get(url).getvalue()

    [new] = _stored(candidate, "onnx")
    assert new != old and not old.exists()  # the stale file is removed once the new one is in
    assert after != before and after == new.read_bytes()
    assert _builds(caplog, "onnx") == 2


def test_a_new_int8_model_gives_a_new_header(client, user, candidate, caplog):
    caplog.set_level(logging.INFO, logger="searches.services.downloads")
    client.force_login(user)
    url = reverse("candidate_header", args=[candidate.pk])
    before = client.get(url).getvalue()
    [old] = _stored(candidate, "header")

    # Quantised again from new weights: other scales and weights in the header.
    _replace_weights(candidate)
    Candidate.objects.filter(pk=candidate.pk).update(int8_model="")
    after = client.get(url).getvalue()

    [new] = _stored(candidate, "header")
    assert new != old and after == new.read_bytes() and after != before
    assert _builds(caplog, "header") == 2


def test_the_key_covers_the_target_of_the_bundle(user, candidate):
    before = downloads.stored_export(candidate, "bundle").key
    run = candidate.run
    run.config["limits"]["flash_bytes"] = 512 * 1024
    run.save(update_fields=["config"])
    candidate.refresh_from_db()
    assert downloads.stored_export(candidate, "bundle").key != before


def test_the_generator_fingerprint_covers_the_exporting_libraries(monkeypatch):
    before = downloads.generator_fingerprint()
    downloads.generator_fingerprint.cache_clear()
    monkeypatch.setattr(downloads, "GENERATOR_LIBRARIES", (*downloads.GENERATOR_LIBRARIES, "django"))
    try:
        assert downloads.generator_fingerprint() != before
    finally:
        downloads.generator_fingerprint.cache_clear()


def test_it_checks_owner(client, other_user, candidate):
    client.force_login(other_user)
    for name in URLS.values():
        assert client.get(reverse(name, args=[candidate.pk])).status_code == 404
    token = Token.objects.create(user=other_user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    for action in URLS:
        assert api.get(f"/api/candidates/{candidate.pk}/{action}/").status_code == 404
    assert not media("artifacts").exists()


def test_the_api_serves_the_stored_file(user, candidate, caplog):
    caplog.set_level(logging.INFO, logger="searches.services.downloads")
    token = Token.objects.create(user=user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    url = f"/api/candidates/{candidate.pk}/tflite/"

    first, second = api.get(url), api.get(url)

    assert first.status_code == second.status_code == 200
    assert first.getvalue() == second.getvalue() and second["Content-Type"] == "application/octet-stream"
    assert _builds(caplog, "tflite") == 1


def test_the_export_command_stores_what_the_page_serves(client, user, candidate, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="searches.services.downloads")
    call_command(
        "export", str(candidate.pk), "--format", "header", "--output", str(tmp_path), stdout=StringIO()
    )
    client.force_login(user)
    served = client.get(reverse("candidate_header", args=[candidate.pk])).getvalue()
    assert (tmp_path / f"nasweb_r{candidate.run_id}_c3.h").read_bytes() == served
    assert _builds(caplog, "header") == 1


def test_an_untrained_candidate_stores_nothing(client, user):
    candidate = make_candidate(make_run(user), status=Candidate.Status.REJECTED)
    client.force_login(user)
    response = client.get(reverse("candidate_header", args=[candidate.pk]))
    assert response.status_code == 302
    assert not media("artifacts").exists()


def test_deleting_the_run_removes_its_downloads(client, user, candidate, django_capture_on_commit_callbacks):
    other = make_trained_candidate(make_run(user), index=0)
    for name in URLS:
        downloads.stored_export(candidate, name)
    downloads.stored_export(other, "header")
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("run_delete", args=[candidate.run_id]))

    assert not media(downloads.run_artifacts_folder(candidate.run_id)).exists()
    assert len(_stored(other, "header")) == 1


def test_deleting_the_project_removes_its_downloads(client, user, django_capture_on_commit_callbacks):
    project = make_project(user)
    candidate = make_trained_candidate(make_run(user, project=project))
    downloads.stored_export(candidate, "tflite")
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("project_delete", args=[project.pk]))

    assert media(downloads.candidate_folder(candidate)).parent.parent.exists()
    assert not media(downloads.run_artifacts_folder(candidate.run_id)).exists()


def test_a_whole_write_is_all_a_reader_ever_sees():
    """Writers replacing one name while a reader reads it: every read is one writer's whole file."""
    name = "artifacts/run-1/candidate-1/race.bin"
    payloads = [bytes([i]) * (1 << 20) for i in range(1, 5)]
    files.save_whole(name, payloads[0])
    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(files.read_bytes(name))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=files.save_whole, args=(name, p)) for p in payloads * 5]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    stop.set()
    reader.join()

    assert seen and all(data in payloads for data in seen)
    assert [p.name for p in media(name).parent.iterdir()] == ["race.bin"]  # no temporary file left


def test_a_damaged_int8_model_is_quantised_again(client, user, candidate):
    downloads.stored_export(candidate, "tflite")  # quantises and stores the int8 model
    candidate.refresh_from_db()
    files.save_whole(candidate.int8_model.name, b"not an npz")
    client.force_login(user)

    response = client.get(reverse("candidate_header", args=[candidate.pk]))

    assert response.status_code == 200 and b"_IMPLEMENTATION" in response.getvalue()
    assert files.read_bytes(candidate.int8_model.name).startswith(b"PK")  # a real .npz again
    assert downloads.stored_export(candidate, "header").built is False
