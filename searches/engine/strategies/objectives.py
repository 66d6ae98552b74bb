"""μNAS's objective: randomly weighted Chebyshev fitness over bounded objectives, and Pareto fronts."""

from __future__ import annotations

import random
from collections.abc import Sequence

from searches.engine.strategies.config import OBJECTIVES, Bounds

# ---- objective and Pareto front -------------------------------------------------------------


def draw_lambdas(rng: random.Random, floor: float) -> tuple[float, ...]:
    """One λ per objective, U(0, 1) floored; always four draws so RNG use is independent of bounds."""
    return tuple(max(rng.random(), floor) for _ in OBJECTIVES)


def fitness(objectives: Sequence[float], bounds: Bounds, lambdas: Sequence[float], cap: float) -> float:
    """μNAS's scalarisation -max_i min(f_i / b_i, cap) / λ_i over bounded objectives (higher is better)."""
    terms = [
        min(f / b, cap) / lam
        for f, b, lam in zip(objectives, bounds.as_tuple(), lambdas, strict=True)
        if b is not None
    ]
    if not terms:
        raise ValueError("fitness needs at least one bound")
    return -max(terms)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when ``a`` is no worse than ``b`` everywhere and better somewhere (minimisation)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates; equal points all stay."""
    # Sorted lexicographically, a point can only be dominated by one before it, and anything
    # that dominates it is dominated-or-equal by some front member already found.
    order = sorted(range(len(points)), key=lambda i: tuple(points[i]))
    front: list[int] = []
    for i in order:
        if not any(dominates(points[j], points[i]) for j in front):
            front.append(i)
    return sorted(front)


def pareto_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Non-dominated sorting: 0 for the Pareto front, 1 for the front once it is removed, and so on."""
    # A point's front is one past the highest front of the points dominating it, and those all
    # come before it in lexicographic order: one pass in that order ranks every point.
    order = sorted(range(len(points)), key=lambda i: tuple(points[i]))
    ranks = [0] * len(points)
    for n, i in enumerate(order):
        above = [ranks[j] for j in order[:n] if dominates(points[j], points[i])]
        ranks[i] = max(above) + 1 if above else 0
    return ranks
