"""Trained candidates for the export tests: real weights (digits, a few seconds' training) on disk."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from django.conf import settings

from searches.engine.deploy.report import PASSED, ExportVerification, StepResult
from searches.engine.space.arch import from_json
from searches.engine.training.train import Fidelity, TrainResult, train_and_evaluate
from searches.models import Candidate, SearchRun
from searches.services import artifacts, runs
from tests.web.factories import SMALL_ARCH, make_candidate

# SMALL_ARCH (8x8x1 -> conv 3x3x4 -> logits) trained on digits: ~90% in about a second.
FIDELITY = Fidelity(epochs=3, train_subset=None, batch_size=32, lr=1e-2)


@functools.cache
def trained_small_arch() -> TrainResult:
    """Trained once per test process; every test stores the weights in its own MEDIA_ROOT."""
    return train_and_evaluate(from_json(SMALL_ARCH), runs.get_dataset("digits"), FIDELITY)


def make_trained_candidate(run: SearchRun, index: int = 0, **fields: Any) -> Candidate:
    """A done candidate with real weights and no int8 model, as candidates trained before export were."""
    result = trained_small_arch()
    values = {
        "weights": artifacts.save_weights_file(result.state_dict, artifacts.weights_name(run, index)),
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
    } | fields
    return make_candidate(run, index, **values)


def media(name: str) -> Path:
    return Path(settings.MEDIA_ROOT) / name


def fake_verification(
    statuses: dict[str, str] | None = None, **numbers: dict[str, Any]
) -> ExportVerification:
    """A verification report as verify_export returns it, every step passed unless ``statuses`` says."""
    statuses = statuses or {}
    steps = [
        StepResult(
            key,
            title,
            status=statuses.get(key, PASSED),
            message=f"{key} message",
            numbers=numbers.get(key, {}),
            seconds=0.1,
        )
        for key, title in (
            ("host", "Host build"),
            ("arm_build", "Cortex-M build"),
            ("qemu", "QEMU run"),
            ("instructions", "Instructions"),
        )
    ]
    return ExportVerification("nasweb_r1_c0", "cortex-m4f", 262144, 65536, 80.0, steps, seconds=1.5)


PASSED_NUMBERS = {
    "host": {
        "test_inputs": 359,
        "input_bytes_differing": 0,
        "compared_inputs": 20,
        "output_bytes_differing": 0,
        "c_accuracy": 0.9276,
        "python_int8_accuracy": 0.9276,
    },
    "arm_build": {
        "flags": "-mcpu=cortex-m4 -mthumb",
        "flash_bytes": 3992,
        "ram_bytes": 2448,
        "flash_limit_bytes": 262144,
        "sram_limit_bytes": 65536,
        "model_array_bytes": 2722,
        "predicted_flash_bytes": 2722,
        "arena_bytes": 320,
        "predicted_arena_bytes": 320,
    },
    "qemu": {
        "machine": "mps2-an386",
        "cpu": "cortex-m4",
        "inputs": 20,
        "stack_used_bytes": 216,
        "stack_reserved_bytes": 2048,
    },
    "instructions": {
        "instructions_per_inference": 39075.0,
        "instructions_per_mac": 8.03,
        "clock_mhz": 80.0,
        "cycles_per_instruction": 1.3,
        "estimated_latency_ms": 0.635,
        "estimate_assumption": "instructions x 1.3 cycles per instruction (an estimate for Cortex-M4F)",
        "predicted_instructions": 40110.0,
        "prediction_error_pct": 2.65,
    },
}
