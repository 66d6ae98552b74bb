"""The NAS engine stays plain Python: importing it never pulls in the web stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN_TOP_LEVEL = (
    "django",
    "celery",
    "kombu",
    "channels",
    "daphne",
    "nasweb",
    "rest_framework",
    "drf_spectacular",
)

# Run in a fresh interpreter: this process already has Django loaded by pytest-django.
_PROBE = r"""
import json, pkgutil, importlib, sys, traceback

import searches.engine as engine

names, errors = ["searches.engine"], {}
for info in pkgutil.walk_packages(engine.__path__, prefix="searches.engine."):
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception:
        errors[info.name] = traceback.format_exc(limit=3)
print(json.dumps({"imported": names, "errors": errors, "modules": sorted(sys.modules)}))
"""


def _engine_imports() -> dict:
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _is_forbidden(module: str) -> bool:
    top = module.split(".")[0]
    if top in FORBIDDEN_TOP_LEVEL:
        return True
    # Of our own app, only the engine itself (and the bare package) may be loaded.
    return top == "searches" and module != "searches" and not module.startswith("searches.engine")


def test_engine_imports_no_web_modules():
    report = _engine_imports()

    assert report["errors"] == {}, "engine modules failed to import:\n" + "\n".join(report["errors"].values())
    assert len(report["imported"]) > 1
    assert [m for m in report["modules"] if _is_forbidden(m)] == []


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    command = str(lint_imports) if lint_imports.exists() else shutil.which("lint-imports")
    if command is None:
        pytest.fail("lint-imports (import-linter) is not installed: pip install -r requirements-dev.txt")

    result = subprocess.run(
        [command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
