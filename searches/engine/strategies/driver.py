"""A sequential ask → evaluate → tell loop for the command line, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from searches.engine.space.arch import Architecture
from searches.engine.strategies.base import EvalFailure, EvalResult, Member, Proposal, SearchStrategy

# ---- sequential driver ------------------------------------------------------------------------------


EventKind = Literal["proposed", "rejected", "evaluated", "failed"]


@dataclass(frozen=True)
class SearchEvent:
    """What ``run_search`` reports: a proposal, and for finished evaluations its result and member."""

    kind: EventKind
    proposal: Proposal
    result: EvalResult | EvalFailure | None = None
    member: Member | None = None


def run_search(
    strategy: SearchStrategy,
    evaluate: Callable[[Architecture, Proposal], EvalResult],
    on_event: Callable[[SearchEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Member]:
    """Run ask → evaluate → tell in-process until done or told to stop; returns the Pareto archive."""
    emit = on_event or (lambda event: None)
    while not strategy.is_done() and not (should_stop is not None and should_stop()):
        proposal = strategy.ask()
        if proposal is None:
            break
        if proposal.rejected:
            emit(SearchEvent("rejected", proposal))
            continue
        emit(SearchEvent("proposed", proposal))
        result = _evaluate_safely(evaluate, proposal)
        member = strategy.tell(proposal.id, result)
        emit(SearchEvent("failed" if member is None else "evaluated", proposal, result, member))
    return strategy.archive


def _evaluate_safely(
    evaluate: Callable[[Architecture, Proposal], EvalResult], proposal: Proposal
) -> EvalResult | EvalFailure:
    # One candidate crashing (e.g. out of memory) must not end a long search; the failure is
    # recorded with its reason instead.
    try:
        return evaluate(proposal.architecture, proposal)
    except Exception as exc:
        return EvalFailure(f"{type(exc).__name__}: {exc}")
