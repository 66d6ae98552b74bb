"""The CLI: analyze, sample_archs and search, against the real engine and database."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from searches.engine.resources.memory import brute_force_peak
from searches.engine.resources.opgraph import OpGraph
from searches.engine.space import arch as A
from searches.engine.strategies.options import MemNASConfig
from searches.models import Candidate, SearchRun
from searches.services import runs

ARCH = {
    "format": "nasweb.arch",
    "version": 1,
    "input_shape": [8, 8, 1],
    "classes": 10,
    "conv_blocks": [
        {"layers": [{"op": "conv2d", "kernel": 3, "filters": 4, "stride": 2}]},
        {"layers": [{"op": "conv2d", "kernel": 3, "filters": 6}]},
        {
            "branch": True,
            "layers": [{"op": "dwconv2d", "kernel": 3, "filters": None}, {"op": "conv1x1", "filters": 6}],
        },
    ],
    "pooling": {"type": "avg", "size": 2},
    "dense": [],
}


def _call(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def arch_file(tmp_path: Path) -> Path:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(ARCH))
    return path


def test_analyze_prints_the_memory_report(arch_file: Path) -> None:
    text = _call("analyze", str(arch_file), "--core", "cortex-m4f", "--clock-mhz", "80")
    assert "b2l0_dwconv2d" in text and "add1" in text
    # conv 3x3x1->4 stride 2: 36 weights + 9 B per channel = 72 B of flash
    assert "b0l0_conv2d    conv2d    4x4x4" in text
    for label in (
        "weights (ro, flash)",
        "activations (rw, peak)",
        "default-order peak",
        "MACs",
        "latency (estimate)",
    ):
        assert label in text


def test_analyze_json_is_exact(arch_file: Path) -> None:
    data = json.loads(_call("analyze", str(arch_file), "--json"))
    assert set(data) >= {"peak_sram_bytes", "flash_bytes", "macs", "order", "timeline", "graph"}
    graph = OpGraph.from_json(data["graph"])
    assert data["peak_sram_bytes"] == brute_force_peak(graph) == max(data["timeline"])
    assert len(data["order"]) == len(data["timeline"]) == len(graph.ops)
    assert data["flash_bytes"] == sum(layer["flash_bytes"] for layer in data["layers"])
    assert data["layers"][0]["flash_bytes"] == 3 * 3 * 1 * 4 + 9 * 4


def test_analyze_json_of_a_list_is_a_list(tmp_path: Path) -> None:
    path = tmp_path / "many.json"
    path.write_text(json.dumps([ARCH, ARCH]))
    data = json.loads(_call("analyze", str(path), "--json"))
    assert isinstance(data, list) and len(data) == 2


def test_analyze_names_what_is_wrong(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(ARCH))
    bad["conv_blocks"][1]["layers"][0]["kernel"] = 4
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(CommandError, match=r"bad.json: \$\.conv_blocks\[1\]\.layers\[0\]\.kernel"):
        _call("analyze", str(path))
    with pytest.raises(CommandError, match="No such file"):
        _call("analyze", str(tmp_path / "missing.json"))


def test_sample_archs_prints_valid_deterministic_architectures() -> None:
    first = json.loads(
        _call("sample_archs", "--count", "5", "--seed", "3", "--input", "28x28x1", "--max-ops", "8")
    )
    again = json.loads(
        _call("sample_archs", "--count", "5", "--seed", "3", "--input", "28x28x1", "--max-ops", "8")
    )
    assert first == again and len(first) == 5
    for data in first:
        arch = A.from_json(data)
        assert arch.input_shape == (28, 28, 1)


def test_sample_archs_rejects_a_bad_shape() -> None:
    with pytest.raises(CommandError, match="HxWxC"):
        _call("sample_archs", "--count", "1", "--input", "28x28")


@pytest.mark.django_db
def test_search_stores_the_run_and_prints_the_front() -> None:
    text = _call(
        "search", "--dataset", "digits", "--sram-kb", "2", "--flash-kb", "4",
        "--budget", "4", "--population", "2", "--epochs", "1", "--seed", "0", "--verbosity", "0",
    )  # fmt: skip
    run = SearchRun.objects.get()
    assert run.status == SearchRun.Status.DONE and run.evaluated == 4
    done = run.candidates.filter(status=Candidate.Status.DONE)
    assert done.count() == 4
    for c in done:
        assert c.peak_sram_bytes <= 2048 and c.flash_bytes <= 4096
        assert 0.0 <= c.val_accuracy <= 1.0 and c.weights.name
        assert 0.0 <= c.int8_test_accuracy <= 1.0 and c.int8_model.name
    best = run.candidates.filter(on_pareto=True).order_by("-val_accuracy").first()
    assert best is not None
    assert "Pareto front" in text and "int8 test" in text and f"{best.int8_test_accuracy:.3f}" in text
    assert f"python manage.py verify_export {best.pk}" in text


@pytest.mark.django_db
def test_search_rejects_every_candidate_over_the_macs_limit() -> None:
    text = _call("search", "--max-macs", "10", "--budget", "2", "--verbosity", "0")

    run = SearchRun.objects.get()
    assert run.config["limits"]["macs"] == 10
    assert not run.candidates.filter(status=Candidate.Status.DONE).exists()
    assert "MACs exceed the limit 10" in text
    with pytest.raises(CommandError, match="--max-macs must be at least 1"):
        _call("search", "--max-macs", "0")


@pytest.mark.django_db
def test_search_names_an_unknown_profile() -> None:
    with pytest.raises(
        CommandError, match=r"no hardware profile named 'Nope'; choose one of: .*Arduino Uno R3"
    ):
        _call("search", "--profile", "Nope", "--budget", "1")


@pytest.mark.django_db
def test_a_stopped_run_resumes_from_the_database(user) -> None:
    dataset = runs.get_dataset("digits")
    limits = runs.limits_for(None, sram_kb=2, flash_kb=4)
    fidelity = runs.default_fidelity("digits").__class__(epochs=1)
    config = runs.make_config(dataset, limits, budget=4, population=2, seed=1, fidelity=fidelity)
    run = runs.create_run(user, "digits", config)
    evaluated = []

    def stop_after_two() -> bool:
        return len(evaluated) >= 2

    runs.run_in_process(
        run, on_event=lambda e: e.kind == "evaluated" and evaluated.append(e), should_stop=stop_after_two
    )
    run.refresh_from_db()
    assert run.status == SearchRun.Status.CANCELLED and run.evaluated == 2
    resumed = SearchRun.objects.get(pk=run.pk)  # as another process would see it
    runs.run_in_process(resumed)
    resumed.refresh_from_db()
    assert resumed.status == SearchRun.Status.DONE and resumed.evaluated == 4
    indexes = list(resumed.candidates.filter(status=Candidate.Status.DONE).values_list("index", flat=True))
    assert len(indexes) == len(set(indexes)) == 4


@pytest.mark.django_db
def test_search_takes_and_records_the_memnas_options() -> None:
    text = _call(
        "search", "--strategy", "memnas", "--sram-kb", "2", "--flash-kb", "4", "--budget", "3",
        "--epochs", "1", "--memnas-lambda", "0.3", "--memnas-top-k", "2",
        "--memnas-seed-backbone", "single_blocks", "--memnas-round0-size", "2", "--memnas-ranker", "list",
        "--memnas-memory-scale", "backbone", "--memnas-on-stall", "raise_lambda", "--verbosity", "0",
    )  # fmt: skip

    run = SearchRun.objects.get()
    expected = MemNASConfig(
        lam=0.3,
        top_k=2,
        seed_backbone="single_blocks",
        round0_size=2,
        ranker="list",
        memory_scale="backbone",
        on_stall="raise_lambda",
    )
    assert run.strategy == "memnas" and run.config["strategy_options"] == expected.to_json()
    assert (
        "λ 0.3, β 0.7, top-k 2, start round 0 of 2, ranking model list, memory scale the backbone's, "
        "at a local optimum raise λ" in text
    )
    # Round 0 really ran: its two networks, then one round of top-1 (the budget's rest).
    first = run.candidates.filter(status=Candidate.Status.DONE).order_by("index")
    assert [c.mutation.startswith("round 0") for c in first][:2] == [True, True]
    assert run.status == SearchRun.Status.DONE and run.evaluated == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memnas-top-k", "2"], "--memnas-top-k applies to --strategy memnas only"),
        (["--strategy", "random", "--memnas-ranker", "list"], "--memnas-ranker applies to --strategy memnas"),
        (
            ["--strategy", "memnas", "--memnas-lambda", "1.5"],
            r"--memnas-lambda must lie in \[0, 1\], got 1.5",
        ),
        (["--strategy", "memnas", "--memnas-beta", "-0.1"], r"--memnas-beta must lie in \[0, 1\]"),
        (["--strategy", "memnas", "--memnas-top-k", "0"], "--memnas-top-k must be at least 1, got 0"),
        (["--strategy", "memnas", "--memnas-round0-size", "3"], "--memnas-round0-size needs --memnas-seed"),
        (["--strategy", "memnas", "--memnas-ranker", "tree"], "argument --memnas-ranker: invalid choice"),
        (["--strategy", "memnas", "--memnas-seed-backbone", "big"], "argument --memnas-seed-backbone"),
    ],
)
def test_search_names_a_wrong_memnas_option(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        _call("search", "--budget", "1", "--verbosity", "0", *args)
    assert not SearchRun.objects.exists()
