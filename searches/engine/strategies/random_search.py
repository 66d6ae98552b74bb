"""The random-search baseline: every proposal a fresh random feasible architecture."""

from __future__ import annotations

from searches.engine.strategies.base import Proposal, SearchStrategy
from searches.engine.strategies.config import StrategyName


class RandomSearch(SearchStrategy):
    """Baseline: every proposal is a fresh random feasible architecture."""

    name: StrategyName = "random"

    def _propose(self) -> Proposal | None:
        return self._random_proposal("random")
