"""The export service: int8 models stored by evaluations or made on demand, downloads, verification."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from django.utils import timezone
from onnx.reference import ReferenceEvaluator

from searches import events, tasks
from searches import queue as task_queue
from searches.engine.deploy.header import generate_header
from searches.engine.deploy.int8 import QuantizationError, QuantModel
from searches.engine.deploy.reference import int8_accuracy
from searches.engine.deploy.toolchain import missing_tools
from searches.engine.resources.report import analyze
from searches.engine.space.arch import from_json
from searches.engine.training.train import Fidelity, split_indices
from searches.models import Candidate, SearchRun
from searches.services import artifacts, execution, export, runs
from searches.services.deletion import delete_run
from tests.web.exports import (
    PASSED_NUMBERS,
    fake_verification,
    make_trained_candidate,
    media,
    trained_small_arch,
)
from tests.web.factories import make_candidate, make_profile, make_run

pytestmark = pytest.mark.django_db

needs_toolchain = pytest.mark.skipif(
    bool(missing_tools()), reason="needs gcc, arm-none-eabi-gcc and qemu-system-arm"
)


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(task_queue, "verify_export", calls.append)
    return calls


def _tiny_run(owner: Any) -> SearchRun:
    dataset = runs.get_dataset("digits")
    config = runs.make_config(
        dataset,
        runs.limits_for(None, sram_kb=2, flash_kb=4),
        budget=2,
        population=2,
        fidelity=Fidelity(epochs=1),
    )
    run = runs.create_run(owner, "digits", config)
    run.config = {**run.config, "parallel": 1}
    run.save(update_fields=["config"])
    return run


# ---- the int8 model ------------------------------------------------------------------------


def test_an_evaluation_stores_the_int8_model_and_its_accuracy(
    user, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    evaluations: list[int] = []
    monkeypatch.setattr(task_queue, "evaluate_candidate", evaluations.append)
    run = _tiny_run(user)
    with django_capture_on_commit_callbacks(execute=True):
        execution.start_run(run)
    with django_capture_on_commit_callbacks(execute=True):
        execution.evaluate(evaluations[0])

    candidate = Candidate.objects.get(pk=evaluations[0])
    assert candidate.status == Candidate.Status.DONE
    assert candidate.int8_model.name == f"weights/run-{run.pk}/candidate-{candidate.index}.int8.npz"
    qm = QuantModel.load(media(candidate.int8_model.name))
    # The same images as the float accuracies: the run's validation split and the test split.
    dataset = runs.get_dataset("digits")
    fidelity = Fidelity(**runs.search_config(run).fidelity)
    _, val_idx = split_indices(dataset.y_train, fidelity)
    assert candidate.int8_val_accuracy == int8_accuracy(
        qm, dataset.x_train[val_idx], dataset.y_train[val_idx]
    )
    assert candidate.int8_test_accuracy == int8_accuracy(qm, dataset.x_test, dataset.y_test)
    assert abs(candidate.int8_test_accuracy - candidate.test_accuracy) < 0.1
    payload = events.candidate_payload(candidate)
    assert payload["int8_test_accuracy"] == candidate.int8_test_accuracy
    assert payload["export_status"] == "none"


def test_the_command_line_search_stores_int8_models_too(user) -> None:
    run = _tiny_run(user)

    runs.run_in_process(run)

    done = list(run.candidates.filter(status=Candidate.Status.DONE))
    assert done and all(c.int8_model and c.int8_test_accuracy is not None for c in done)
    assert all(media(c.int8_model.name).is_file() for c in done)


def test_a_model_that_cannot_be_quantised_still_counts_as_trained(
    user, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> Any:
        raise QuantizationError("b0l0: weights are not finite")

    monkeypatch.setattr(artifacts, "quantize", refuse)
    run = _tiny_run(user)

    runs.run_in_process(run)

    done = list(run.candidates.filter(status=Candidate.Status.DONE))
    assert done and all(not c.int8_model and c.int8_val_accuracy is None for c in done)
    assert not list(Path(media(f"weights/run-{run.pk}")).glob("*.npz"))


def test_calibration_uses_up_to_512_seeded_training_images() -> None:
    dataset = runs.get_dataset("digits")
    fidelity = Fidelity()
    train_idx, _ = split_indices(dataset.y_train, fidelity)

    first = artifacts.calibration_images(dataset, fidelity)
    again = artifacts.calibration_images(dataset, fidelity)

    assert len(first) == 512 and np.array_equal(first, again)
    training = {x.tobytes() for x in dataset.x_train[train_idx]}
    assert all(x.tobytes() in training for x in first)


def test_an_old_candidate_is_quantised_on_demand_as_an_evaluation_would(user) -> None:
    run = make_run(user)
    candidate = make_trained_candidate(run)
    assert not candidate.int8_model

    qm = export.quant_model_for(candidate)

    candidate.refresh_from_db()
    assert candidate.int8_model.name == f"weights/run-{run.pk}/candidate-0.int8.npz"
    stored = QuantModel.load(media(candidate.int8_model.name))
    result = trained_small_arch()
    dataset = runs.get_dataset("digits")
    fidelity = Fidelity(**runs.search_config(run).fidelity)
    metrics = artifacts.int8_metrics(
        run, 7, from_json(candidate.architecture), result.state_dict, dataset, fidelity
    )
    evaluated = QuantModel.load(media(metrics["int8_model"]))
    for model in (stored, evaluated):
        assert generate_header(model, "m").text == generate_header(qm, "m").text
    # Accuracies are left to the verification (they take a while on large test sets).
    assert candidate.int8_test_accuracy is None
    export.quant_model_for(candidate, with_accuracy=True)
    candidate.refresh_from_db()
    assert (candidate.int8_val_accuracy, candidate.int8_test_accuracy) == (
        metrics["int8_val_accuracy"],
        metrics["int8_test_accuracy"],
    )


def test_a_damaged_int8_file_is_made_again(user) -> None:
    candidate = make_trained_candidate(make_run(user))
    export.quant_model_for(candidate)
    path = media(candidate.int8_model.name)
    path.write_bytes(b"not a zip")

    export.quant_model_for(candidate)

    assert QuantModel.load(path).classes == 10


def test_an_older_format_int8_file_is_replaced_with_its_accuracies(user) -> None:
    candidate = make_trained_candidate(make_run(user))
    export.quant_model_for(candidate, with_accuracy=True)
    candidate.refresh_from_db()
    fresh = (candidate.int8_val_accuracy, candidate.int8_test_accuracy)
    path = media(candidate.int8_model.name)
    meta = np.frombuffer(json.dumps({"format": "nasweb.int8", "version": 1}).encode(), dtype=np.uint8)
    np.savez(path, meta=meta)  # what a v1 file is to this version: unreadable
    Candidate.objects.filter(pk=candidate.pk).update(int8_val_accuracy=0.5, int8_test_accuracy=0.5)
    candidate.refresh_from_db()

    export.quant_model_for(candidate)  # a download: the old accuracies are dropped

    candidate.refresh_from_db()
    assert QuantModel.load(path).classes == 10
    assert (candidate.int8_val_accuracy, candidate.int8_test_accuracy) == (None, None)
    np.savez(path, meta=meta)
    Candidate.objects.filter(pk=candidate.pk).update(int8_val_accuracy=0.5, int8_test_accuracy=0.5)
    candidate.refresh_from_db()

    export.quant_model_for(candidate, with_accuracy=True)  # a verification: measured again

    candidate.refresh_from_db()
    assert (candidate.int8_val_accuracy, candidate.int8_test_accuracy) == fresh


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"status": Candidate.Status.REJECTED}, "is rejected, not trained"),
        ({"status": Candidate.Status.PENDING}, "is pending, not trained"),
        ({"weights": ""}, "has no saved weights"),
        ({"weights": "weights/run-1/gone.pt"}, "weights file weights/run-1/gone.pt is missing"),
    ],
)
def test_only_trained_candidates_export(user, fields: dict[str, Any], reason: str) -> None:
    candidate = make_trained_candidate(make_run(user), **fields)

    for make in (export.header_for, export.bundle_for, export.onnx_for, export.request_verification):
        with pytest.raises(export.ExportUnavailable, match=reason):
            make(candidate)
    assert not media(f"weights/run-{candidate.run_id}/candidate-0.int8.npz").exists()


def test_unreadable_weights_are_reported_and_nothing_is_written(user) -> None:
    candidate = make_trained_candidate(make_run(user))
    media(candidate.weights.name).write_bytes(b"not a torch file")

    with pytest.raises(
        export.ExportUnavailable, match="cannot be read: it is not a tensor file saved by nasweb"
    ):
        export.header_for(candidate)

    assert [p.name for p in media(candidate.weights.name).parent.iterdir()] == ["candidate-0.pt"]
    candidate.refresh_from_db()
    assert not candidate.int8_model


def test_a_missing_dataset_is_reported(user) -> None:
    candidate = make_trained_candidate(make_run(user, dataset="upload:999"))

    with pytest.raises(export.ExportUnavailable, match="dataset 'upload:999' is not available"):
        export.header_for(candidate)


# ---- downloads --------------------------------------------------------------------------


def test_the_header_is_named_after_run_and_candidate_and_matches_the_prediction(user) -> None:
    run = make_run(user)
    candidate = make_trained_candidate(run, index=3)

    header = export.header_for(candidate)

    name = f"nasweb_r{run.pk}_c3"
    assert header.name == name and header.filename == f"{name}.h"
    assert f"int {name}_run(const int8_t *input, int8_t *output)" in header.text
    report = analyze(from_json(candidate.architecture))
    assert (header.arena_bytes, header.flash_bytes) == (report.peak_sram_bytes, report.flash_bytes)


def test_the_bundle_is_built_for_the_runs_profile(user) -> None:
    profile = make_profile(user, core="cortex-m7", clock_mhz=216, sram_kb=320, flash_kb=1024)
    run = make_run(user, profile=profile)
    candidate = make_trained_candidate(run)

    filename, data = export.bundle_for(candidate)

    name = f"nasweb_r{run.pk}_c0"
    assert filename == f"{name}.zip"
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert {f"{name}/{name}.h", f"{name}/main.c", f"{name}/Makefile", f"{name}/README.md"} <= set(names)
    makefile = zipfile.ZipFile(io.BytesIO(data)).read(f"{name}/Makefile").decode()
    assert "cortex-m7" in makefile


def test_the_target_is_the_profile_else_the_runs_limits_else_a_default(user) -> None:
    profile = make_profile(user, core="cortex-m33", clock_mhz=160, sram_kb=256, flash_kb=1024)
    assert export.target_for(make_run(user, profile=profile)) == export.Target(
        "cortex-m33", 160, 1024 * 1024, 256 * 1024, "My board"
    )
    limits_only = export.target_for(make_run(user))  # the factory's run: 2 KB / 4 KB on an M4F
    assert (limits_only.core, limits_only.sram_bytes, limits_only.flash_bytes) == ("cortex-m4f", 2048, 4096)
    assert export.target_for(make_run(user, config={})) == export.DEFAULT_TARGET


def test_the_onnx_model_passes_the_checker_and_computes_the_torch_outputs(user) -> None:
    candidate = make_trained_candidate(make_run(user))

    filename, data = export.onnx_for(candidate)

    assert filename == f"nasweb_r{candidate.run_id}_c0.onnx"
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    _, float_model = export.float_model_for(candidate)
    x = torch.from_numpy(runs.get_dataset("digits").x_test[:5]).permute(0, 3, 1, 2).contiguous()
    got = ReferenceEvaluator(model).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = float_model(x).numpy()
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---- verification ------------------------------------------------------------------------


def test_a_verification_is_queued_once(
    user, queued: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    candidate = make_trained_candidate(make_run(user))
    seq = candidate.seq

    with django_capture_on_commit_callbacks(execute=True):
        assert export.request_verification(candidate) is True
    with django_capture_on_commit_callbacks(execute=True):
        assert export.request_verification(candidate) is False

    assert queued == [candidate.pk]
    candidate.refresh_from_db()
    assert candidate.export_status == "queued" and candidate.export_requested is not None
    assert candidate.seq > seq  # announced to open pages


def test_a_lost_verification_may_be_asked_again(
    user, queued: list[int], django_capture_on_commit_callbacks: Any
):
    long_ago = timezone.now() - export.STALE_AFTER - timedelta(minutes=1)
    candidate = make_trained_candidate(make_run(user), export_status="running", export_requested=long_ago)

    with django_capture_on_commit_callbacks(execute=True):
        assert export.request_verification(candidate) is True

    assert queued == [candidate.pk]


def test_verify_stores_progress_and_the_report(user, monkeypatch: pytest.MonkeyPatch) -> None:
    candidate = make_trained_candidate(make_run(user, profile=make_profile(user)), export_status="queued")
    seen: list[tuple[str, Any]] = []

    def fake(qm: QuantModel, name: str, **kwargs: Any) -> Any:
        assert name == f"nasweb_r{candidate.run_id}_c0"
        assert (kwargs["core"], kwargs["clock_mhz"]) == ("cortex-m4f", 80)
        assert (kwargs["flash_limit_bytes"], kwargs["sram_limit_bytes"]) == (256 * 1024, 64 * 1024)
        assert len(kwargs["test_x"]) == len(kwargs["test_y"]) == 359  # the digits test split
        result = fake_verification(**PASSED_NUMBERS)
        for step in result.steps:
            kwargs["progress"](step)
            row = Candidate.objects.get(pk=candidate.pk)
            seen.append((row.export_status, [s["key"] for s in row.export_report["steps"]]))
        return result

    monkeypatch.setattr(export, "verify_export", fake)

    outcome = export.verify(candidate)

    assert outcome.status == "passed" and outcome.error is None
    assert seen[0] == ("running", ["host"]) and seen[-1] == (
        "running",
        ["host", "arm_build", "qemu", "instructions"],
    )
    candidate.refresh_from_db()
    assert candidate.export_status == "passed" and candidate.export_finished is not None
    report = candidate.export_report
    assert report["passed"] is True and report["target"]["label"] == "My board"
    assert report["steps"][1]["numbers"]["model_array_bytes"] == 2722
    # The verification also fills in the int8 accuracies of a candidate trained before them.
    assert candidate.int8_test_accuracy is not None


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({"arm_build": "failed", "qemu": "skipped", "instructions": "skipped"}, "failed"),
        ({"arm_build": "unavailable", "qemu": "unavailable", "instructions": "unavailable"}, "unavailable"),
        ({"host": "failed", "qemu": "unavailable", "instructions": "unavailable"}, "failed"),
    ],
)
def test_verify_tells_failed_from_unavailable(
    user, monkeypatch: pytest.MonkeyPatch, statuses: dict[str, str], expected: str
) -> None:
    candidate = make_trained_candidate(make_run(user))
    monkeypatch.setattr(export, "verify_export", lambda *a, **k: fake_verification(statuses))

    assert export.verify(candidate).status == expected

    candidate.refresh_from_db()
    assert candidate.export_status == expected


def test_a_crashing_verification_is_stored_as_failed(user, monkeypatch: pytest.MonkeyPatch) -> None:
    candidate = make_trained_candidate(make_run(user))

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(export, "verify_export", crash)

    outcome = export.verify(candidate)

    candidate.refresh_from_db()
    assert outcome.status == candidate.export_status == "failed"
    assert candidate.export_report["error"] == "OSError: disk full"


def test_verifying_an_untrained_candidate_fails_with_the_reason(user) -> None:
    candidate = make_candidate(make_run(user))

    outcome = export.verify(candidate)

    assert outcome.status == "failed" and "has no saved weights" in outcome.error


def test_the_task_verifies_only_queued_candidates(user, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(export, "verify", lambda candidate: calls.append(candidate.pk))
    queued_one = make_trained_candidate(make_run(user), export_status="queued")
    finished = make_trained_candidate(make_run(user), export_status="passed")

    tasks.verify_export_task(queued_one.pk)
    tasks.verify_export_task(finished.pk)
    tasks.verify_export_task(987654)  # deleted meanwhile

    assert calls == [queued_one.pk]


def test_a_run_deleted_during_verification_is_left_alone(user, monkeypatch: pytest.MonkeyPatch) -> None:
    candidate = make_trained_candidate(make_run(user))

    def delete_then_pass(*args: Any, **kwargs: Any) -> Any:
        SearchRun.objects.filter(pk=candidate.run_id).delete()
        return fake_verification()

    monkeypatch.setattr(export, "verify_export", delete_then_pass)

    assert export.verify(candidate).status == "passed"
    assert not Candidate.objects.filter(pk=candidate.pk).exists()


@needs_toolchain
def test_a_real_verification_passes(user) -> None:
    candidate = make_trained_candidate(make_run(user, profile=make_profile(user)))

    outcome = export.verify(candidate)

    assert outcome.status == "passed", outcome.report
    steps = {s["key"]: s for s in outcome.report["steps"]}
    assert steps["arm_build"]["numbers"]["model_array_bytes"] == candidate.flash_bytes
    assert steps["instructions"]["numbers"]["instructions_per_inference"] > candidate.macs


@needs_toolchain
def test_a_core_without_a_cortex_m_build_is_unavailable_not_failed(user) -> None:
    uno = make_profile(user, core="avr", clock_mhz=16, sram_kb=2, flash_kb=32)
    candidate = make_trained_candidate(make_run(user, profile=uno))

    outcome = export.verify(candidate)

    assert outcome.status == "unavailable"
    steps = {s["key"]: s for s in outcome.report["steps"]}
    assert steps["host"]["status"] == "passed"  # bit-exactness does not depend on the core
    assert "AVR 8-bit cores are not supported" in steps["arm_build"]["message"]


def test_missing_tools_make_the_verification_unavailable(
    user, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc, no arm-none-eabi-gcc, no QEMU
    candidate = make_trained_candidate(make_run(user))

    outcome = export.verify(candidate)

    assert outcome.status == "unavailable"
    messages = " ".join(s["message"] for s in outcome.report["steps"])
    assert "apt-get install -y --no-install-recommends gcc-arm-none-eabi" in messages


# ---- deletion ---------------------------------------------------------------------------


def test_deleting_a_run_removes_its_int8_models(user, django_capture_on_commit_callbacks: Any) -> None:
    run = make_run(user)
    candidate = make_trained_candidate(run)
    export.quant_model_for(candidate)
    files = [media(candidate.weights.name), media(candidate.int8_model.name)]
    assert all(f.is_file() for f in files)

    with django_capture_on_commit_callbacks(execute=True):
        delete_run(run)

    assert not any(f.exists() for f in files)


def test_a_run_deleted_while_its_candidate_trained_leaves_no_files(
    user, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    evaluations: list[int] = []
    monkeypatch.setattr(task_queue, "evaluate_candidate", evaluations.append)
    run = _tiny_run(user)
    real_train = execution.train_proposal

    def train_then_delete(*args: Any, **kwargs: Any) -> Any:
        result = real_train(*args, **kwargs)  # weights and int8 model saved
        SearchRun.objects.filter(pk=run.pk).delete()
        return result

    monkeypatch.setattr(execution, "train_proposal", train_then_delete)
    with django_capture_on_commit_callbacks(execute=True):
        execution.start_run(run)

    execution.evaluate(evaluations[0])

    assert not media(f"weights/run-{run.pk}").exists()


def test_a_candidate_deleted_while_quantised_on_demand_leaves_no_file(user, monkeypatch: pytest.MonkeyPatch):
    candidate = make_trained_candidate(make_run(user))
    real_save = artifacts.save_quant_model

    def save_then_delete(qm: QuantModel, name: str) -> str:
        stored = real_save(qm, name)
        Candidate.objects.filter(pk=candidate.pk).delete()
        return stored

    monkeypatch.setattr(export, "save_quant_model", save_then_delete)

    export.quant_model_for(candidate)

    assert not media(f"weights/run-{candidate.run_id}/candidate-0.int8.npz").exists()
