"""μNAS's sparsity gene: how much of a candidate structured pruning removes, drawn and mutated."""

from __future__ import annotations

import random

MAX_SPARSITY = 0.95
SPARSITY_SIGMA = 0.05  # μNAS mutates the sparsity gene by N(0, 0.05)


def mutate_sparsity(rng: random.Random, s: float, low: float, high: float) -> float:
    """μNAS's sparsity gene mutation: ``s`` + N(0, 0.05), clipped to ``[low, high]``."""
    if not 0.0 <= low <= high <= MAX_SPARSITY:
        raise ValueError(f"need 0 <= low <= high <= {MAX_SPARSITY}")
    return min(high, max(low, s + rng.gauss(0.0, SPARSITY_SIGMA)))


def random_sparsity(rng: random.Random, low: float, high: float) -> float:
    """A fresh sparsity gene for a random architecture, uniform in ``[low, high]``."""
    if not 0.0 <= low <= high <= MAX_SPARSITY:
        raise ValueError(f"need 0 <= low <= high <= {MAX_SPARSITY}")
    return rng.uniform(low, high)
