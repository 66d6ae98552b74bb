"""Rows for view and API tests, made directly in the database (no training, no worker)."""

from __future__ import annotations

import copy
from typing import Any

from searches.engine.strategies.config import Limits
from searches.models import Candidate, Core, Dataset, HardwareProfile, Project, SearchRun
from searches.services.datasets import config_dataset
from searches.services.runs import make_config


def conv(filters: int | None = 8, **fields: Any) -> dict[str, Any]:
    layer = {
        "op": "conv2d",
        "kernel": 3,
        "filters": filters,
        "stride": 1,
        "padding": "same",
        "pre_pool": False,
        "batchnorm": False,
        "relu": True,
    }
    return layer | fields


def architecture(
    input_shape: tuple[int, int, int] = (8, 8, 1),
    layers: list[dict[str, Any]] | None = None,
    dense: list[int] | None = None,
    pooling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": "nasweb.arch",
        "version": 1,
        "input_shape": list(input_shape),
        "classes": 10,
        "conv_blocks": [{"branch": False, "layers": layers or [conv(4)]}],
        "pooling": pooling,
        "dense": [{"units": u} for u in (dense or [])],
    }


SMALL_ARCH = architecture()

LIMITS = {
    "sram_bytes": 2048,
    "flash_bytes": 4096,
    "latency_ms": None,
    "core": "cortex-m4f",
    "clock_mhz": 80.0,
}


def make_profile(owner: Any, name: str = "My board", **fields: Any) -> HardwareProfile:
    values = {"core": Core.CORTEX_M4F, "clock_mhz": 80, "sram_kb": 64, "flash_kb": 256} | fields
    return HardwareProfile.objects.create(owner=owner, name=name, **values)


def make_project(owner: Any, name: str = "Keyword spotting", **fields: Any) -> Project:
    return Project.objects.create(owner=owner, name=name, **fields)


def run_config(budget: int = 20) -> dict[str, Any]:
    """A real engine config for digits under LIMITS, as the new-run form would store it."""
    digits = config_dataset(Dataset.objects.get(name="digits", kind=Dataset.Kind.BUILTIN))
    return make_config(digits, Limits(**LIMITS), budget=budget, population=8).to_json()


def make_run(owner: Any, project: Project | None = None, **fields: Any) -> SearchRun:
    values = {
        "dataset": "digits",
        "budget": 20,
        "status": SearchRun.Status.DONE,
        "config": run_config(fields.get("budget", 20)),
    } | fields
    return SearchRun.objects.create(owner=owner, project=project, **values)


def make_candidate(run: SearchRun, index: int = 0, **fields: Any) -> Candidate:
    values = {
        "architecture": copy.deepcopy(SMALL_ARCH),
        "status": Candidate.Status.DONE,
        "feasible": True,
        "val_accuracy": 0.9,
        "test_accuracy": 0.88,
        # SMALL_ARCH's exact figures; latency at LIMITS' Cortex-M4F, 80 MHz.
        "peak_sram_bytes": 320,
        "flash_bytes": 2_722,
        "macs": 4_864,
        "latency_ms": 0.1824,
        "params": 2_610,
        "train_seconds": 1.5,
    } | fields
    return Candidate.objects.create(run=run, index=index, **values)
