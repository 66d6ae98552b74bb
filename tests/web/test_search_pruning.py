"""A search with μNAS's sparsity gene stores every candidate as the pruned network it became."""

from __future__ import annotations

from typing import Any

import pytest

from searches.engine.deploy.header import generate_header
from searches.engine.deploy.int8 import QuantModel
from searches.engine.resources.report import analyze
from searches.engine.space.arch import from_json
from searches.engine.training.train import Fidelity
from searches.models import Candidate
from searches.services import runs
from tests.web.exports import media

pytestmark = pytest.mark.django_db


def test_a_pruning_search_stores_pruned_candidates(user: Any) -> None:
    dataset = runs.get_dataset("digits")
    config = runs.make_config(
        dataset,
        runs.limits_for(None, sram_kb=8, flash_kb=16),
        budget=3,
        population=2,
        fidelity=Fidelity(epochs=2, train_subset=600),
        sparsity=(0.5, 0.6),
    )
    run = runs.create_run(user, "digits", config)

    runs.run_in_process(run)

    done = list(run.candidates.filter(status=Candidate.Status.DONE).order_by("index"))
    assert len(done) == 3
    strategy = runs.load_strategy(run)
    members = {m.id: m for m in [*strategy.population, *strategy.archive]}
    shrunk = 0
    for candidate in done:
        assert "sparsity" in candidate.mutation
        pruned = from_json(candidate.architecture)
        report = analyze(pruned)
        # The row describes the pruned network: its own resources, never above the proposal's.
        assert candidate.peak_sram_bytes == report.peak_sram_bytes
        assert candidate.flash_bytes == report.flash_bytes and candidate.macs == report.macs
        member = members.get(candidate.index)
        if member is not None:
            assert candidate.flash_bytes <= member.proposal.resources["flash_bytes"]
            assert member.objectives[2] == candidate.flash_bytes  # the search sees the pruned size
            shrunk += candidate.flash_bytes < member.proposal.resources["flash_bytes"]
        # The int8 model and the header are those of the pruned network.
        qm = QuantModel.load(media(candidate.int8_model.name))
        assert qm.arch == pruned
        assert generate_header(qm, "pruned").flash_bytes == candidate.flash_bytes
    assert shrunk >= 1
