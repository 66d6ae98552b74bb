"""Export pages, downloads, the verify action, its API and the ``verify_export`` command."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta
from typing import Any

import numpy as np
import onnx
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from searches import queue as task_queue
from searches.engine.deploy.toolchain import APT_COMMAND, missing_tools
from searches.engine.training.datasets import DatasetError
from searches.models import Candidate, Dataset
from searches.services import datasets, export
from tests.web.exports import PASSED_NUMBERS, fake_verification, make_trained_candidate
from tests.web.factories import make_candidate, make_profile, make_run

pytestmark = pytest.mark.django_db

DOWNLOADS = [
    ("candidate_header", "text/x-c; charset=utf-8", ".h"),
    ("candidate_bundle", "application/zip", ".zip"),
    ("candidate_onnx", "application/octet-stream", ".onnx"),
    ("candidate_tflite", "application/octet-stream", ".tflite"),
]


@pytest.fixture
def candidate(user) -> Candidate:
    return make_trained_candidate(make_run(user, profile=make_profile(user)), index=2)


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(task_queue, "verify_export", calls.append)
    return calls


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def _name(candidate: Candidate) -> str:
    return f"nasweb_r{candidate.run_id}_c{candidate.index}"


# ---- downloads ------------------------------------------------------------------------------


@pytest.mark.parametrize(("url_name", "content_type", "suffix"), DOWNLOADS)
def test_downloads_work(client, user, candidate: Candidate, url_name: str, content_type: str, suffix: str):
    client.force_login(user)

    response = client.get(reverse(url_name, args=[candidate.pk]))

    assert response.status_code == 200
    assert response["Content-Type"] == content_type
    assert response["Content-Disposition"] == f'attachment; filename="{_name(candidate)}{suffix}"'


def test_the_header_is_the_c_model(client, user, candidate: Candidate):
    client.force_login(user)

    text = client.get(reverse("candidate_header", args=[candidate.pk])).getvalue().decode()

    name = _name(candidate)
    assert f"#define {name.upper()}_ARENA_SIZE 320" in text
    assert f"int {name}_run(const int8_t *input, int8_t *output)" in text
    # What x is, from digits' own scaling, right under the quantisation formula.
    formula = text.split("quantises real values x as")[1].split("* Output")[0]
    assert "x is a pixel's 0..16 grey level divided by 16" in formula
    page = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()
    assert "Input x (what the header quantises) is a pixel&#x27;s 0..16 grey level divided by 16" in page


def test_the_input_scaling_follows_an_uploads_dtype(user, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    rng = np.random.default_rng(0)
    arrays = {"y_train": np.arange(20) % 2, "y_test": np.arange(10) % 2}
    for dtype, expected in ((np.uint8, "0..255 integer value"), (np.float32, "exactly as uploaded")):
        path = tmp_path / f"{np.dtype(dtype).name}.npz"
        images = {
            k: (rng.random((n, 8, 8)) * (255 if dtype == np.uint8 else 1)).astype(dtype)
            for k, n in (("x_train", 20), ("x_test", 10))
        }
        np.savez(path, **arrays, **images)
        row = Dataset.objects.create(
            owner=user,
            name=path.stem,
            file=path.name,
            input_shape=[8, 8, 1],
            classes=2,
            n_train=20,
            n_test=10,
        )
        assert expected in datasets.input_scaling(row.key)
    with pytest.raises(DatasetError, match="unknown dataset"):
        datasets.input_scaling("nope")
    assert export.input_note(make_run(user, dataset="upload:999999")) == ""


def test_the_bundle_and_onnx_are_what_they_say(client, user, candidate: Candidate):
    client.force_login(user)

    bundle = client.get(reverse("candidate_bundle", args=[candidate.pk])).getvalue()
    model = client.get(reverse("candidate_onnx", args=[candidate.pk])).getvalue()

    assert f"{_name(candidate)}/main.c" in zipfile.ZipFile(io.BytesIO(bundle)).namelist()
    onnx.checker.check_model(onnx.load_from_string(model))


@pytest.mark.parametrize(("url_name", "content_type", "suffix"), DOWNLOADS)
def test_downloads_check_owner(client, other_user, candidate: Candidate, url_name: str, content_type, suffix):
    client.force_login(other_user)

    assert client.get(reverse(url_name, args=[candidate.pk])).status_code == 404


@pytest.mark.parametrize(("url_name", "content_type", "suffix"), DOWNLOADS)
def test_downloads_require_login(client, candidate: Candidate, url_name: str, content_type, suffix):
    url = reverse(url_name, args=[candidate.pk])

    response = client.get(url)

    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize(("url_name", "content_type", "suffix"), DOWNLOADS)
def test_downloads_reject_post(client, user, candidate: Candidate, url_name: str, content_type, suffix):
    client.force_login(user)

    assert client.post(reverse(url_name, args=[candidate.pk])).status_code == 405


def test_downloads_of_an_unknown_candidate_are_404(client, user):
    client.force_login(user)

    assert client.get(reverse("candidate_header", args=[987654])).status_code == 404


@pytest.mark.parametrize(("url_name", "content_type", "suffix"), DOWNLOADS)
def test_an_untrained_candidate_sends_you_back_with_the_reason(
    client, user, url_name: str, content_type, suffix
):
    candidate = make_candidate(make_run(user), status=Candidate.Status.REJECTED, reject_reason="too big")
    client.force_login(user)

    response = client.get(reverse(url_name, args=[candidate.pk]), follow=True)

    assert response.redirect_chain == [(reverse("candidate_detail", args=[candidate.pk]), 302)]
    assert "Cannot export: candidate 0 of run" in response.content.decode()
    assert "is rejected, not trained" in response.content.decode()


# ---- the candidate page --------------------------------------------------------------------


def test_the_page_links_the_downloads_and_shows_int8_accuracy(client, user, candidate: Candidate):
    Candidate.objects.filter(pk=candidate.pk).update(int8_val_accuracy=0.912, int8_test_accuracy=0.871)
    client.force_login(user)

    body = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()

    for url_name, _, _ in DOWNLOADS:
        assert f'href="{reverse(url_name, args=[candidate.pk])}"' in body
    assert 'id="c-header"' in body and "disabled" not in body.split('id="c-header"')[1].split(">")[0]
    tiles = body.split('id="int8-val"')[1].split('id="int8-test"')
    assert "91.2%" in tiles[0] and "87.1%" in tiles[1]
    assert reverse("candidate_verify", args=[candidate.pk]) in body
    assert 'id="verify-export"' in body and "js/candidate_export.js" in body


def test_the_page_shows_a_passed_verification(client, user, candidate: Candidate):
    report = fake_verification(**PASSED_NUMBERS).to_json() | {"target": {"label": "My board"}}
    Candidate.objects.filter(pk=candidate.pk).update(export_status="passed", export_report=report)
    client.force_login(user)

    body = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()

    section = body.split('id="export-section"')[1].split("</section>")[0]
    assert '<span class="badge passed" id="export-status">Passed</span>' in section
    assert "3,992 B" in section and "262,144 B" in section  # flash built vs the profile's limit
    assert "2,722 B" in section and "equal" in section  # model arrays vs predicted flash
    assert "mps2-an386" in section
    assert "Input quantised in C</dt><dd>359 images, 0 bytes differ from Python" in section
    assert "39,075" in section and "instructions \u00d7 CPI estimate" in section and "0.635 ms" in section
    assert "40,110 instructions predicted (2.7% vs the count)" in section
    assert "Verify again" in section
    # after Verify the page's latency is the QEMU count times the CPI, labelled as such
    stat = body.split('id="latency-stat"')[1].split("</div></div>")[0]
    assert 'data-source="qemu"' in stat and "QEMU count" in stat and "0.635 ms" in stat
    assert "39,075 instructions (QEMU) \u00d7 1.3 cycles per instruction (estimated CPI)" in stat


def test_steps_never_requested_are_not_pending(client, user, candidate: Candidate):
    client.force_login(user)
    body = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()
    steps = body.split('id="export-steps"')[1].split("</ol>")[0]
    assert steps.count('data-status="not run"') == 4 and "pending" not in steps

    Candidate.objects.filter(pk=candidate.pk).update(export_status="queued")
    body = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()
    assert body.split('id="export-steps"')[1].split("</ol>")[0].count('data-status="pending"') == 4


def test_a_verification_just_finished_says_just_now(client, user, candidate: Candidate):
    report = fake_verification(**PASSED_NUMBERS).to_json()
    finished = timezone.now()
    Candidate.objects.filter(pk=candidate.pk).update(
        export_status="passed", export_report=report, export_finished=finished
    )
    client.force_login(user)
    body = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()
    assert "just now" in body and "0\xa0minutes ago" not in body and "0 minutes" not in body

    Candidate.objects.filter(pk=candidate.pk).update(export_finished=finished - timedelta(minutes=5))
    body = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()
    assert "5\xa0minutes ago" in body


def test_the_page_says_when_tools_are_missing(client, user, candidate: Candidate, monkeypatch):
    monkeypatch.setattr(export, "missing_tools", lambda: ["arm-none-eabi-gcc", "qemu-system-arm"])
    client.force_login(user)

    body = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()

    assert 'id="export-tools"' in body
    assert "arm-none-eabi-gcc, qemu-system-arm" in body
    assert APT_COMMAND in body


def test_the_page_shows_a_verification_in_progress(client, user, candidate: Candidate):
    Candidate.objects.filter(pk=candidate.pk).update(export_status="running")
    client.force_login(user)

    body = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()

    button = body.split('id="verify-export"')[1].split("</button>")[0]
    assert "disabled" in button and "Verifying" in button


def test_the_export_section_alone(client, user, other_user, candidate: Candidate):
    url = reverse("candidate_export", args=[candidate.pk])
    client.force_login(user)

    response = client.get(url)

    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith('<section class="card export" id="export-section"')
    client.force_login(other_user)
    assert client.get(url).status_code == 404


# ---- the verify action -------------------------------------------------------------------


def test_verify_queues_the_task(
    client, user, candidate: Candidate, queued, django_capture_on_commit_callbacks
):
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("candidate_verify", args=[candidate.pk]), follow=True)

    assert queued == [candidate.pk]
    assert "Verification queued" in response.content.decode()
    candidate.refresh_from_db()
    assert candidate.export_status == "queued"


def test_verify_answers_json(client, user, candidate: Candidate, queued, django_capture_on_commit_callbacks):
    client.force_login(user)
    url = reverse("candidate_verify", args=[candidate.pk])

    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(url, HTTP_ACCEPT="application/json")
        second = client.post(url, HTTP_ACCEPT="application/json")

    assert first.status_code == 200 and first.json()["candidate"]["export_status"] == "queued"
    assert second.status_code == 409 and "already under way" in second.json()["message"]
    assert queued == [candidate.pk]


def test_verify_refuses_an_untrained_candidate(client, user, queued):
    candidate = make_candidate(make_run(user))
    client.force_login(user)

    response = client.post(reverse("candidate_verify", args=[candidate.pk]), follow=True)

    assert "Cannot verify: candidate 0 of run" in response.content.decode()
    assert queued == []


def test_verify_checks_owner(client, other_user, candidate: Candidate, queued):
    client.force_login(other_user)

    assert client.post(reverse("candidate_verify", args=[candidate.pk])).status_code == 404
    assert queued == []


def test_verify_requires_login(client, candidate: Candidate, queued):
    response = client.post(reverse("candidate_verify", args=[candidate.pk]))

    assert response.status_code == 302 and queued == []


def test_verify_rejects_get(client, user, candidate: Candidate, queued):
    client.force_login(user)

    assert client.get(reverse("candidate_verify", args=[candidate.pk])).status_code == 405
    assert queued == []


# ---- API -----------------------------------------------------------------------------------


def test_the_api_shows_int8_accuracy_and_the_export(api, candidate: Candidate):
    Candidate.objects.filter(pk=candidate.pk).update(int8_val_accuracy=0.9, int8_test_accuracy=0.85)

    detail = api.get(f"/api/candidates/{candidate.pk}/").json()
    listed = api.get(f"/api/runs/{candidate.run_id}/candidates/").json()["results"][0]

    assert (detail["int8_val_accuracy"], detail["int8_test_accuracy"]) == (0.9, 0.85)
    assert listed["int8_test_accuracy"] == 0.85 and listed["export_status"] == "none"
    assert detail["export"]["name"] == _name(candidate)
    assert detail["export"]["target"]["core"] == "cortex-m4f" and detail["export"]["report"] is None


def test_the_api_orders_and_filters_by_int8_accuracy_and_export_status(api, user):
    run = make_run(user)
    for index, (int8, status) in enumerate([(0.8, "passed"), (None, "none"), (0.9, "failed")]):
        make_candidate(run, index, int8_val_accuracy=int8, export_status=status)
    url = f"/api/runs/{run.pk}/candidates/"

    def indices(**params: str) -> list[int]:
        return [row["index"] for row in api.get(url, params).json()["results"]]

    assert indices(ordering="-int8_val_accuracy") == [2, 0, 1]
    assert indices(min_int8_val_accuracy="0.85") == [2]
    assert indices(export_status="passed") == [0]


@pytest.mark.parametrize(
    ("action", "content_type", "suffix"),
    [
        ("header", "text/x-c; charset=utf-8", ".h"),
        ("bundle", "application/zip", ".zip"),
        ("onnx", None, ".onnx"),
        ("tflite", None, ".tflite"),
    ],
)
def test_the_api_downloads(api, candidate: Candidate, action: str, content_type: str | None, suffix: str):
    for accept in ("*/*", "application/octet-stream", "application/json"):
        response = api.get(f"/api/candidates/{candidate.pk}/{action}/", HTTP_ACCEPT=accept)

        assert response.status_code == 200, (accept, response.content[:200])
        assert response["Content-Disposition"] == f'attachment; filename="{_name(candidate)}{suffix}"'
        if content_type:
            assert response["Content-Type"] == content_type


def test_the_api_explains_why_an_export_is_impossible(api, user):
    candidate = make_candidate(make_run(user))

    for accept in ("application/json", "application/octet-stream"):
        response = api.get(f"/api/candidates/{candidate.pk}/header/", HTTP_ACCEPT=accept)

        assert response.status_code == 409
        assert "has no saved weights" in response.json()["detail"]


def test_the_api_verifies(api, candidate: Candidate, queued, django_capture_on_commit_callbacks):
    url = f"/api/candidates/{candidate.pk}/verify/"

    with django_capture_on_commit_callbacks(execute=True):
        first = api.post(url)
        second = api.post(url)

    assert first.status_code == 202 and first.json()["export"]["status"] == "queued"
    assert second.status_code == 409
    assert queued == [candidate.pk]


def test_the_api_checks_owner(other_user, candidate: Candidate, queued):
    client = APIClient()
    client.force_authenticate(other_user)

    for action in ("", "header/", "bundle/", "onnx/", "tflite/"):
        assert client.get(f"/api/candidates/{candidate.pk}/{action}").status_code == 404
    assert client.post(f"/api/candidates/{candidate.pk}/verify/").status_code == 404
    assert queued == []


def test_the_api_requires_authentication(candidate: Candidate):
    client = APIClient()

    assert client.get(f"/api/candidates/{candidate.pk}/header/").status_code == 401
    assert client.post(f"/api/candidates/{candidate.pk}/verify/").status_code == 401


def test_the_api_schema_documents_the_actions(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    for action in ("header", "bundle", "onnx", "tflite"):
        assert f"/api/candidates/{{id}}/{action}/" in schema["paths"]
    assert "post" in schema["paths"]["/api/candidates/{id}/verify/"]


# ---- the command ---------------------------------------------------------------------------


def _call(*args: str) -> str:
    out = io.StringIO()
    call_command("verify_export", *args, stdout=out)
    return out.getvalue()


def test_the_command_prints_the_report(candidate: Candidate, monkeypatch: pytest.MonkeyPatch):
    def fake(*args: Any, **kwargs: Any) -> Any:
        result = fake_verification(**PASSED_NUMBERS)
        for step in result.steps:
            kwargs["progress"](step)
        return result

    monkeypatch.setattr(export, "verify_export", fake)

    text = _call(str(candidate.pk))

    assert f"Verifying candidate 2 of run #{candidate.run_id} as {_name(candidate)}" in text
    assert "[ok] Host build" in text
    assert "flash 3,992 of 262,144 B" in text
    assert (
        "39,075 per inference; latency 0.635 ms at 80 MHz (instructions x 1.3 cycles per instruction" in text
    )
    assert "every step passed" in text
    candidate.refresh_from_db()
    assert candidate.export_status == "passed"


def test_the_command_fails_when_a_step_fails(candidate: Candidate, monkeypatch: pytest.MonkeyPatch):
    failing = {"arm_build": "failed", "qemu": "skipped", "instructions": "skipped"}
    monkeypatch.setattr(export, "verify_export", lambda *a, **k: fake_verification(failing))

    with pytest.raises(CommandError, match="verification failed: Cortex-M build: failed: arm_build message"):
        _call(str(candidate.pk))


def test_the_command_says_how_to_install_missing_tools(candidate: Candidate, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(CommandError, match="verification unavailable") as raised:
        _call(str(candidate.pk))

    assert APT_COMMAND in str(raised.value)
    candidate.refresh_from_db()
    assert candidate.export_status == "unavailable"


def test_the_command_rejects_an_unknown_id():
    with pytest.raises(CommandError, match="no candidate with id 987654"):
        _call("987654")


def test_the_command_rejects_an_untrained_candidate(user):
    candidate = make_candidate(make_run(user), status=Candidate.Status.REJECTED)

    with pytest.raises(CommandError, match="is rejected and has no trained weights"):
        _call(str(candidate.pk))
    candidate.refresh_from_db()
    assert candidate.export_status == "none"


def test_the_command_rejects_a_non_numeric_id():
    with pytest.raises(CommandError, match="invalid int value"):
        _call("abc")


@pytest.mark.skipif(bool(missing_tools()), reason="needs gcc, arm-none-eabi-gcc and qemu-system-arm")
def test_the_command_verifies_for_real(candidate: Candidate, tmp_path):
    text = _call(str(candidate.pk), "--keep", str(tmp_path))

    assert "every step passed" in text and "cycles per instruction" in text
    assert (tmp_path / f"{_name(candidate)}.h").is_file()
