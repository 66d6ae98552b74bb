"""Creating a run from the web (form or API) and handing it to a worker once it is committed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from searches.engine.strategies.config import SearchConfig
from searches.engine.training.train import Fidelity
from searches.models import Dataset, HardwareProfile, Project, SearchRun
from searches.services import execution, runs
from searches.services.datasets import config_dataset


@dataclass(frozen=True)
class RunRequest:
    """What a user asks for; None means "the default for this dataset"."""

    profile: HardwareProfile
    dataset: Dataset
    strategy: str = SearchRun.Strategy.AGING_EVOLUTION
    budget: int = 20
    population: int | None = 8
    sample_size: int | None = None
    epochs: int | None = None
    train_subset: int | None = None
    parallel: int | None = None
    seed: int = 0
    sram_kb: float | None = None
    flash_kb: float | None = None
    latency_ms: float | None = None
    max_macs: int | None = None
    name: str = ""
    # MemNAS only: λ (accuracy against memory), β (SRAM against flash) and the children trained
    # per round; None takes the engine's default.
    memnas_lambda: float | None = None
    memnas_beta: float | None = None
    memnas_top_k: int | None = None
    # MemNAS only: the first backbone ("minimal", "random", "single_blocks"), round 0's size and
    # the ranking model ("candidate", "list"); None takes the engine's default.
    memnas_seed_backbone: str | None = None
    memnas_round0_size: int | None = None
    memnas_ranker: str | None = None
    # MemNAS only: what Y divides memory changes by ("backbone", "budget"); None: the default.
    memnas_memory_scale: str | None = None
    # MemNAS only: at a local optimum of Y, "best_child" or "raise_lambda"; None: the default.
    memnas_on_stall: str | None = None
    # μNAS structured pruning: the (low, high) range of each candidate's sparsity gene, or None.
    sparsity: tuple[float, float] | None = None
    # When the search ends, train its top K Pareto candidates for deployment (0: do not).
    deploy_top_k: int = 3
    # "off" (one training per candidate) or "asha" (successive-halving rungs: the top 1/eta of
    # a rung are trained eta times longer, up to rung asha_max_rung).
    fidelity_schedule: str = SearchConfig.fidelity_schedule
    asha_eta: int = SearchConfig.asha_eta
    asha_max_rung: int = SearchConfig.asha_max_rung
    # Validation error the search minimises: the float model's or the int8 model's.
    error_objective: str = SearchConfig.error_objective


def fidelity_for(request: RunRequest) -> Fidelity:
    base = runs.default_fidelity(request.dataset.key)
    overrides: dict[str, Any] = {}
    if request.epochs:
        overrides["epochs"] = request.epochs
    if request.train_subset:
        overrides["train_subset"] = request.train_subset
    return Fidelity(**{**asdict(base), **overrides})


def strategy_options_for(request: RunRequest) -> dict[str, Any]:
    """The engine's ``strategy_options``: the MemNAS settings given, for a MemNAS run only.

    ``runs.make_config`` then records every MemNAS setting, the defaults included.
    """
    if request.strategy != SearchRun.Strategy.MEMNAS:
        return {}
    options = {
        "lambda": request.memnas_lambda,
        "beta": request.memnas_beta,
        "top_k": request.memnas_top_k,
        "seed_backbone": request.memnas_seed_backbone,
        "round0_size": request.memnas_round0_size,
        "ranker": request.memnas_ranker,
        "memory_scale": request.memnas_memory_scale,
        "on_stall": request.memnas_on_stall,
    }
    return {key: value for key, value in options.items() if value is not None}


def launch_run(owner: Any, project: Project | None, request: RunRequest) -> SearchRun:
    """Create the run and queue its start (a worker's ``start_run_task``) once it is committed.

    Raises ValueError when the engine refuses the configuration.
    """
    limits = runs.limits_for(
        request.profile, request.sram_kb, request.flash_kb, request.latency_ms, request.max_macs
    )
    config = runs.make_config(
        config_dataset(request.dataset),
        limits,
        budget=request.budget,
        seed=request.seed,
        strategy=request.strategy,
        population=request.population,
        sample_size=request.sample_size,
        fidelity=fidelity_for(request),
        strategy_options=strategy_options_for(request),
        sparsity=request.sparsity,
        fidelity_schedule=request.fidelity_schedule,
        asha_eta=request.asha_eta,
        asha_max_rung=request.asha_max_rung,
        error_objective=request.error_objective,
    )
    with transaction.atomic():
        run = runs.create_run(
            owner, request.dataset.key, config, profile=request.profile, project=project, name=request.name
        )
        # Execution settings ride along in the config (see execution.parallel_evaluations and
        # deployment.deploy_top_k).
        extra: dict[str, Any] = {"deploy_top_k": request.deploy_top_k}
        if request.parallel:
            extra["parallel"] = request.parallel
        run.config = {**run.config, **extra}
        run.save(update_fields=["config"])
        execution.submit_run(run)
    return run


def default_parallel() -> int:
    """The evaluations a run keeps in flight when it does not say (execution's default)."""
    return int(getattr(settings, "NASWEB_PARALLEL_EVALUATIONS", None) or 2)
