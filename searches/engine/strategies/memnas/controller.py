"""MemNAS's ranking controllers, trained online to rank a round's children by Y.

Two models share one interface (``score``, ``fit``, JSON weights):

* :class:`Controller` — an encoder GRU over each candidate's tokens and a linear head: every
  candidate is scored on its own;
* :class:`ListController` — MemNAS's structure-correlation controller: the same encoder gives
  each candidate a feature, then a bidirectional *ranking* GRU runs across the list of
  candidates of one round, so every score depends on the others.  It learns from pairs inside
  the lists it was trained on (a round's children), since its scores are only comparable
  within one list.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from searches.engine.space import arch as A
from searches.engine.space.arch import Architecture

# ---- the ranking controller ----------------------------------------------------------------------

# Token layout: conv-layer fields, then pooling, dense and resource-summary fields, then the
# token type.  Sizes are log-scaled so that 10 B and 100 kB both land in a useful range.
_OPS = {op: i for i, op in enumerate(A.OPS)}
_POOL, _DENSE, _SUMMARY = 14, 16, 17
_TYPE = 20
N_FEATURES = 24


def _log(value: float, scale: float) -> float:
    return math.log2(1.0 + value) / scale


def encode(arch: Architecture, resources: dict[str, Any]) -> list[list[float]]:
    """The controller's token sequence of a candidate (N_FEATURES floats per token)."""
    tokens = []
    shape: A.Shape = tuple(arch.input_shape)  # type: ignore[assignment]
    for group in arch.groups():
        group_input, out = shape, shape
        for b in group:
            out = group_input
            block = arch.conv_blocks[b]
            for i, layer in enumerate(block.layers):
                out = A.layer_output_shape(layer, out)[1]
                t = [0.0] * N_FEATURES
                t[_OPS[layer.op]] = 1.0
                t[3] = layer.kernel / 7
                t[4] = float(layer.stride == 2)
                t[5] = out[2] / A.MAX_FILTERS
                t[6] = float(layer.pre_pool)
                t[7] = float(layer.batchnorm)
                t[8] = float(layer.relu)
                t[9] = float(layer.padding == "valid")
                t[10] = float(block.branch)
                t[11] = b / A.MAX_BLOCKS
                t[12] = i / A.MAX_LAYERS
                t[13] = _log(out[0] * out[1] * out[2], 16)
                t[_TYPE] = 1.0
                tokens.append(t)
        shape = out
    if arch.pooling is not None:
        t = [0.0] * N_FEATURES
        t[_POOL] = float(arch.pooling.type == "max")
        t[_POOL + 1] = 1.0 if arch.pooling.size == "global" else arch.pooling.size / max(A.POOL_SIZES)
        t[_TYPE + 1] = 1.0
        tokens.append(t)
    for d in arch.dense:
        t = [0.0] * N_FEATURES
        t[_DENSE] = d.units / A.MAX_UNITS
        t[_TYPE + 2] = 1.0
        tokens.append(t)
    t = [0.0] * N_FEATURES
    t[_SUMMARY] = _log(resources["peak_sram_bytes"], 20)
    t[_SUMMARY + 1] = _log(resources["flash_bytes"], 20)
    t[_SUMMARY + 2] = _log(resources["macs"], 30)
    t[_TYPE + 3] = 1.0
    tokens.append(t)
    return tokens


@contextlib.contextmanager
def _torch_cpu(seed: int | None = None) -> Iterator[None]:
    """One thread (fast for tiny nets and deterministic), global RNG seeded and restored."""
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)


class _AccuracyNet(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(N_FEATURES, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return torch.sigmoid(self.head(h[-1]).squeeze(-1))


def _batch(sequences: Sequence[list[list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    x = torch.zeros(len(sequences), int(lengths.max()), N_FEATURES)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = torch.tensor(s)
    return x, lengths


class Controller:
    """Ranks candidates by a predicted score ŷ = weight·â + offset, â the GRU's accuracy estimate.

    In MemNAS's Y only the accuracy is unknown before training (the memory terms are exact),
    so the strategy passes the score's accuracy weight λ/a_b and each candidate's exact
    remainder as ``offset``.  Training minimises a pairwise logistic ranking loss on ŷ over
    all pairs ordered by their measured targets (temperature ``TAU``: ordering by a clear
    margin is enough), plus a squared error on â that keeps the estimate an accuracy and so
    comparable with the exact memory part.
    """

    TAU = 0.02

    def __init__(self, hidden: int, seed: int) -> None:
        with _torch_cpu(seed):
            self.net: nn.Module = _AccuracyNet(hidden)

    def predict(self, sequences: Sequence[list[list[float]]]) -> list[float]:
        """The estimated accuracy of each sequence."""
        if not sequences:
            return []
        with _torch_cpu(), torch.no_grad():
            return [float(v) for v in self.net(*_batch(sequences))]

    def score(
        self,
        sequences: Sequence[list[list[float]]],
        weight: float = 1.0,
        offsets: Sequence[float] | None = None,
    ) -> list[float]:
        """ŷ = weight·â + offset per sequence (higher = better)."""
        offsets = offsets if offsets is not None else [0.0] * len(sequences)
        return [weight * a + o for a, o in zip(self.predict(sequences), offsets, strict=True)]

    def fit(
        self,
        sequences: Sequence[list[list[float]]],
        accuracies: Sequence[float],
        steps: int,
        lr: float,
        *,
        weight: float = 1.0,
        offsets: Sequence[float] | None = None,
    ) -> float:
        """Full-batch Adam steps from the current weights; returns the last loss.

        The pairs are ordered by the measured score weight·accuracy + offset.
        """
        acc = torch.tensor(list(accuracies), dtype=torch.float32)
        off = torch.tensor(list(offsets) if offsets is not None else [0.0] * len(acc), dtype=torch.float32)
        y = weight * acc.double() + off.double()
        better = (y[:, None] - y[None, :]) > 1e-9  # better[i, j]: i should score above j
        x, lengths = _batch(sequences)
        loss_value = 0.0
        params = list(self.net.parameters())
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        with _torch_cpu():
            for step in range(1, steps + 1):
                a = self.net(x, lengths)
                s = (weight * a + off) / self.TAU
                loss = (((a - acc) / self.TAU) ** 2).mean()
                if bool(better.any()):
                    loss = loss + F.softplus(-(s[:, None] - s[None, :])[better]).mean()
                grads = torch.autograd.grad(loss, params)
                _adam_step(params, grads, moments, step, lr)
                loss_value = loss.item()
        return loss_value

    def to_json(self) -> dict[str, Any]:
        """The weights as plain lists (see :func:`weights_to_json`)."""
        return weights_to_json(self.net)

    def load_json(self, data: dict[str, Any]) -> None:
        weights_from_json(self.net, data)


def weights_to_json(net: nn.Module) -> dict[str, Any]:
    """A module's weights as plain lists; each float is float32's shortest repr, which reloads exactly."""
    return {
        name: {"shape": list(t.shape), "data": [float(str(v)) for v in t.detach().reshape(-1).numpy()]}
        for name, t in net.state_dict().items()
    }


def weights_from_json(net: nn.Module, data: dict[str, Any]) -> None:
    """Load weights written by :func:`weights_to_json`."""
    state = {
        name: torch.tensor(v["data"], dtype=torch.float32).reshape(v["shape"]) for name, v in data.items()
    }
    net.load_state_dict(state)


@torch.no_grad()
def _adam_step(
    params: list[nn.Parameter],
    grads: Sequence[torch.Tensor],
    moments: list[tuple[torch.Tensor, torch.Tensor]],
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """Plain Adam: torch.optim's first step imports torch._dynamo, seconds for a sub-second fit."""
    b1, b2 = betas
    for p, g, (m, v) in zip(params, grads, moments, strict=True):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**step)).sqrt_().add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - b1**step))


def pairwise_accuracy(scores: Sequence[float], targets: Sequence[float]) -> float:
    """Fraction of pairs with different targets that ``scores`` order the same way (0.5 = chance)."""
    right = total = 0
    for i in range(len(targets)):
        for j in range(i + 1, len(targets)):
            if targets[i] == targets[j]:
                continue
            total += 1
            right += (scores[i] - scores[j]) * (targets[i] - targets[j]) > 0
    return right / total if total else 1.0


# ---- the list-wise (structure-correlation) controller ----------------------------------------------


class _ListNet(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.GRU(N_FEATURES, hidden, batch_first=True)
        self.ranker = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(3 * hidden, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: the token sequences of ONE list of candidates; returns an accuracy per candidate."""
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.encoder(packed)
        features = h[-1]  # (n, hidden)
        context, _ = self.ranker(features.unsqueeze(0))  # (1, n, 2·hidden): the whole list
        return torch.sigmoid(self.head(torch.cat([features, context[0]], dim=1)).squeeze(-1))


class ListController(Controller):
    """Scores the candidates of one list jointly; scoring and JSON weights as :class:`Controller`.

    ``groups`` (one label per sequence) says which sequences formed one list (a round); without
    it all sequences are one list.  The loss is the pairwise logistic ranking loss on ŷ over the
    pairs *within* each list, plus the squared error that keeps â an accuracy.
    """

    def __init__(self, hidden: int, seed: int) -> None:
        with _torch_cpu(seed):
            self.net = _ListNet(hidden)

    def predict(
        self, sequences: Sequence[list[list[float]]], groups: Sequence[int] | None = None
    ) -> list[float]:
        """The estimated accuracy of each sequence, each list scored as a whole."""
        out = [0.0] * len(sequences)
        with _torch_cpu(), torch.no_grad():
            for members in _lists(len(sequences), groups):
                values = self.net(*_batch([sequences[i] for i in members]))
                for i, v in zip(members, values, strict=True):
                    out[i] = float(v)
        return out

    def fit(
        self,
        sequences: Sequence[list[list[float]]],
        accuracies: Sequence[float],
        steps: int,
        lr: float,
        *,
        weight: float = 1.0,
        offsets: Sequence[float] | None = None,
        groups: Sequence[int] | None = None,
    ) -> float:
        """Full-batch Adam steps from the current weights; returns the last loss."""
        acc = torch.tensor(list(accuracies), dtype=torch.float32)
        off = torch.tensor(list(offsets) if offsets is not None else [0.0] * len(acc), dtype=torch.float32)
        lists = [
            (torch.tensor(m), *_batch([sequences[i] for i in m])) for m in _lists(len(sequences), groups)
        ]
        params = list(self.net.parameters())
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        loss_value = 0.0
        with _torch_cpu():
            for step in range(1, steps + 1):
                squared, ranking, pairs = torch.zeros(()), torch.zeros(()), 0
                for idx, x, lengths in lists:
                    a = self.net(x, lengths)
                    squared = squared + (((a - acc[idx]) / self.TAU) ** 2).sum()
                    y = weight * acc[idx].double() + off[idx].double()
                    better = (y[:, None] - y[None, :]) > 1e-9
                    if bool(better.any()):
                        s = (weight * a + off[idx]) / self.TAU
                        ranking = ranking + F.softplus(-(s[:, None] - s[None, :])[better]).sum()
                        pairs += int(better.sum())
                loss = squared / len(acc) + (ranking / pairs if pairs else 0.0)
                grads = torch.autograd.grad(loss, params)
                _adam_step(params, grads, moments, step, lr)
                loss_value = float(loss.detach())
        return loss_value


def _lists(n: int, groups: Sequence[int] | None) -> list[list[int]]:
    """Indices of each list, in first-appearance order of the group labels."""
    if groups is None:
        return [list(range(n))] if n else []
    if len(groups) != n:
        raise ValueError("need one group label per sequence")
    lists: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        lists.setdefault(g, []).append(i)
    return list(lists.values())
