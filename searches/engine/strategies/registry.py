"""Strategy names → classes: the one place that knows every strategy, so the interface need not.

:mod:`searches.engine.strategies.base` defines the ask/tell interface and imports no strategy;
each strategy module imports the interface; this registry imports them all.
"""

from __future__ import annotations

from typing import Any

from searches.engine.strategies.aging import AgingEvolution
from searches.engine.strategies.base import STATE_FORMAT, STATE_VERSION, SearchStrategy
from searches.engine.strategies.config import SearchConfig
from searches.engine.strategies.memnas.strategy import MemNAS
from searches.engine.strategies.random_search import RandomSearch

STRATEGY_CLASSES: dict[str, type[SearchStrategy]] = {
    "aging_evolution": AgingEvolution,
    "random": RandomSearch,
    "memnas": MemNAS,
}


def make_strategy(config: SearchConfig) -> SearchStrategy:
    """A fresh strategy of the kind ``config.strategy`` names."""
    return STRATEGY_CLASSES[config.strategy](config)


def from_state_json(data: dict[str, Any]) -> SearchStrategy:
    """Rebuild a strategy from ``state_to_json()`` output (after a JSON round trip)."""
    if data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
        raise ValueError(f"not a {STATE_FORMAT} v{STATE_VERSION} document")
    strategy = make_strategy(SearchConfig.from_json(data["config"]))
    strategy._load_state(data)
    return strategy
