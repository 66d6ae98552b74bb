"""Settings only one strategy reads, validated when a search is configured (MemNAS: λ, β, top-k)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

SeedKind = Literal["minimal", "random", "single_blocks"]
SEED_KINDS: tuple[str, ...] = ("minimal", "random", "single_blocks")
RankerKind = Literal["candidate", "list"]
RANKERS: tuple[str, ...] = ("candidate", "list")
MemoryScaleKind = Literal["backbone", "budget"]
MEMORY_SCALES: tuple[str, ...] = ("backbone", "budget")
StallKind = Literal["best_child", "raise_lambda"]
STALL_KINDS: tuple[str, ...] = ("best_child", "raise_lambda")
# Settings added after runs were recorded, with the value those runs ran with.
LEGACY_VALUES: dict[str, Any] = {"memory_scale": "backbone", "on_stall": "best_child"}


@dataclass(frozen=True)
class MemNASConfig:
    """MemNAS's own settings, stored as ``SearchConfig.strategy_options`` (JSON key ``lambda`` for λ)."""

    lam: float = 0.5
    beta: float = 0.7
    top_k: int = 4
    grow: bool = True
    trim: bool = True
    seed_backbone: SeedKind = "minimal"
    # Networks trained in round 0 when seed_backbone is "single_blocks" (the minimal one included).
    round0_size: int = 6
    patience: int = 2
    history_limit: int = 300
    # "candidate": each child scored alone; "list": MemNAS's ranking GRU across a round's children.
    ranker: RankerKind = "candidate"
    # What a memory change is divided by in Y: the backbone's own memory (the paper's formula) or
    # the board's budget (the search's SRAM and flash limits, else its bounds). "budget" measured
    # better on Fashion-MNIST and digits (docs/pruning-and-memnas.md, "Memory scale").
    memory_scale: MemoryScaleKind = "budget"
    # After ``patience`` rounds without a child of Y > 0 the backbone is a local optimum of Y:
    # "best_child" moves to its best child anyway; "raise_lambda" moves λ halfway to 1 (and to
    # the best trained child if that now beats the backbone), so the search goes on toward the
    # front's more accurate trade-offs.  "raise_lambda" measured better at 200 Fashion-MNIST
    # evaluations (docs/pruning-and-memnas.md, "At a local optimum").
    on_stall: StallKind = "raise_lambda"
    hidden: int = 24
    train_steps: int = 30
    lr: float = 0.02

    def __post_init__(self) -> None:
        if not 0 <= self.lam <= 1 or not 0 <= self.beta <= 1:
            raise ValueError("lambda and beta must lie in [0, 1]")
        for name in ("top_k", "patience", "hidden", "train_steps", "round0_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.history_limit < 2:
            raise ValueError("history_limit must be at least 2")
        if not (self.grow or self.trim):
            raise ValueError("MemNAS needs grow or trim candidates (or both)")
        if self.seed_backbone not in SEED_KINDS:
            raise ValueError(f"seed_backbone must be one of {', '.join(SEED_KINDS)}")
        if self.ranker not in RANKERS:
            raise ValueError(f"ranker must be one of {', '.join(RANKERS)}")
        if self.memory_scale not in MEMORY_SCALES:
            raise ValueError(f"memory_scale must be one of {', '.join(MEMORY_SCALES)}")
        if self.on_stall not in STALL_KINDS:
            raise ValueError(f"on_stall must be one of {', '.join(STALL_KINDS)}")
        if not self.lr > 0:
            raise ValueError("lr must be positive")

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["lambda"] = data.pop("lam")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemNASConfig:
        """Options as given (the rest defaulted), or as a run recorded them.

        A run records every setting; one recorded before a later setting existed (every other
        setting there, only settings of ``LEGACY_VALUES`` absent) ran with their legacy values
        (the paper's memory scale, moving to the best child) and keeps them when resumed.
        """
        data = dict(data)
        if "lambda" in data:
            data["lam"] = data.pop("lambda")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown MemNAS option(s): {', '.join(sorted(unknown))}")
        missing = set(cls.__dataclass_fields__) - set(data)
        if missing and missing <= set(LEGACY_VALUES):
            data.update({name: LEGACY_VALUES[name] for name in missing})
        return cls(**data)
