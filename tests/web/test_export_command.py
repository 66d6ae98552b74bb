"""``manage.py export``: every format to a file; LiteRT runs the .tflite as the header does; errors."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from django.core.management import CommandError, call_command

from searches.engine.deploy.reference import run_int8
from searches.models import Candidate
from searches.services import export
from searches.services.runs import get_dataset
from tests.web.exports import make_trained_candidate
from tests.web.factories import make_candidate, make_run

pytestmark = pytest.mark.django_db

HARNESS = """#include <stdio.h>
#define {U}_IMPLEMENTATION
#include "{n}.h"
int main(void)
{{
    float x[{U}_INPUT_SIZE];
    int8_t q[{U}_INPUT_SIZE], out[{U}_OUTPUT_SIZE];
    while (fread(x, sizeof x[0], {U}_INPUT_SIZE, stdin) == {U}_INPUT_SIZE) {{
        {n}_quantize_input(x, q);
        {n}_run(q, out);
        fwrite(out, 1, sizeof out, stdout);
    }}
    return 0;
}}
"""


@pytest.fixture
def candidate(user) -> Candidate:
    return make_trained_candidate(make_run(user), index=1)


def _export(*args: str) -> str:
    out = io.StringIO()
    call_command("export", *args, stdout=out)
    return out.getvalue()


def _litert(model: bytes, xq: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for row in xq:
        interpreter.set_tensor(inp["index"], row[np.newaxis])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.array(rows, dtype=np.int8)


def test_the_tflite_file_runs_in_litert_as_the_header_does(candidate: Candidate, tmp_path: Path):
    """The whole digits test split: LiteRT on the file = the header (gcc, its own quantiser) = run_int8."""
    text = _export(str(candidate.pk), "--format", "tflite", "--output", str(tmp_path / "m.tflite"))
    assert "wrote" in text
    x_test = get_dataset("digits").x_test
    qm = export.quant_model_for(candidate)
    xq = qm.quantize_input(x_test)
    expected = run_int8(qm, xq)
    assert np.array_equal(_litert((tmp_path / "m.tflite").read_bytes(), xq), expected)

    _export(str(candidate.pk), "--format", "header", "--output", str(tmp_path))
    name = export.c_name(candidate)
    (tmp_path / "main.c").write_text(HARNESS.format(U=name.upper(), n=name))
    exe = tmp_path / "main"
    subprocess.run(
        ["gcc", "-std=c99", "-O2", "-I", str(tmp_path), "-o", str(exe), str(tmp_path / "main.c")], check=True
    )
    out = subprocess.run(
        [str(exe)], input=x_test.astype("<f4").tobytes(), capture_output=True, check=True
    ).stdout
    assert np.array_equal(np.frombuffer(out, dtype=np.int8).reshape(expected.shape), expected)


def test_it_writes_bundle_and_onnx_into_a_directory(candidate: Candidate, tmp_path: Path):
    _export(str(candidate.pk), "--format", "bundle", "--output", str(tmp_path))
    _export(str(candidate.pk), "--format", "onnx", "--output", str(tmp_path))

    name = export.c_name(candidate)
    assert f"{name}/main.c" in zipfile.ZipFile(tmp_path / f"{name}.zip").namelist()
    onnx.checker.check_model(onnx.load(tmp_path / f"{name}.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx", f"{name}.zip"]


def test_it_rejects_an_unknown_id(tmp_path: Path):
    with pytest.raises(CommandError, match="no candidate with id 987654"):
        _export("987654", "--format", "tflite", "--output", str(tmp_path / "m.tflite"))
    assert not list(tmp_path.iterdir())


def test_it_rejects_an_untrained_candidate(user, tmp_path: Path):
    candidate = make_candidate(make_run(user), status=Candidate.Status.REJECTED)

    with pytest.raises(CommandError, match=r"cannot export: .* is rejected, not trained"):
        _export(str(candidate.pk), "--format", "header", "--output", str(tmp_path / "m.h"))
    assert not list(tmp_path.iterdir())


def test_it_rejects_an_unknown_format(candidate: Candidate, tmp_path: Path):
    with pytest.raises(CommandError, match="invalid choice: 'pickle'"):
        _export(str(candidate.pk), "--format", "pickle", "--output", str(tmp_path / "m"))


def test_it_reports_an_unwritable_path_and_leaves_nothing(candidate: Candidate, tmp_path: Path):
    with pytest.raises(CommandError, match=r"the directory .*missing does not exist"):
        _export(str(candidate.pk), "--format", "tflite", "--output", str(tmp_path / "missing" / "m.tflite"))

    (tmp_path / "file").write_text("x")
    with pytest.raises(CommandError, match="file is not a directory"):
        _export(str(candidate.pk), "--format", "tflite", "--output", str(tmp_path / "file" / "m.tflite"))
    assert [p.name for p in tmp_path.iterdir()] == ["file"]

    # sysfs refuses new files even to root.
    with pytest.raises(CommandError, match=r"cannot write /sys/m\.tflite: Permission denied"):
        _export(str(candidate.pk), "--format", "tflite", "--output", "/sys/m.tflite")
