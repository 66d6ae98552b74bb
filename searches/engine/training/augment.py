"""Data augmentation for training a chosen model for deployment (μNAS's recipe, per data set).

μNAS trains Fashion-MNIST with a rotation of ±0.2 rad applied with probability 0.3, shifts of
±2 px and horizontal flips.  Flips change a digit's meaning, so digits get rotations and shifts
only, and 8x8 digits none at all (measured: it hurts there); a data set nasweb does not know
gets no augmentation unless the user turns it on, and then no flips.  Shifts scale with the
image (±2 px at 28x28, ±1 px at 8x8).

One affine resampling per image does the rotation and the shift; an image that is not rotated
is shifted by whole pixels, which bilinear resampling reproduces exactly (zero fill).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

FLIPPABLE = ("fashion-mnist",)
KNOWN = ("digits", "fashion-mnist", "mnist")
MIN_SIDE = 16


@dataclass(frozen=True)
class Augment:
    """Random training-time transforms; ``shift_px`` is the largest shift along each axis."""

    rotation_rad: float = 0.2
    rotation_p: float = 0.3
    shift_px: int = 2
    hflip: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.rotation_p <= 1:
            raise ValueError("rotation_p must lie in [0, 1]")
        if self.rotation_rad < 0 or self.shift_px < 0:
            raise ValueError("rotation_rad and shift_px must not be negative")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Augment:
        return cls(**data)

    def describe(self) -> str:
        """A short human-readable summary, e.g. for the candidate's page."""
        parts = [
            f"rotation ±{self.rotation_rad:g} rad (p {self.rotation_p:g})",
            f"shifts ±{self.shift_px} px",
        ]
        if self.hflip:
            parts.append("horizontal flips")
        return ", ".join(parts)


def for_dataset(
    name: str, input_shape: tuple[int, int, int], *, user_enabled: bool = False
) -> Augment | None:
    """The augmentation suited to a data set, or None (unknown or tiny images unless ``user_enabled``).

    Images under ``MIN_SIDE`` pixels get none by default: on 8x8 digits a one-pixel shift moves an
    eighth of the image and rotation blurs it, and the tiny networks that fit there lost 12 points
    of int8 test accuracy with it (docs/benchmarks.md, "Training for deployment (digits)").
    """
    if not user_enabled and (name not in KNOWN or min(input_shape[0], input_shape[1]) < MIN_SIDE):
        return None
    shift = max(1, round(2 * min(input_shape[0], input_shape[1]) / 28))
    return Augment(shift_px=shift, hflip=name in FLIPPABLE)


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """A randomly transformed copy of the NCHW batch ``x`` (every draw from ``generator``)."""
    if aug.rotation_p == 0 and aug.shift_px == 0 and not aug.hflip:
        return x
    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * aug.rotation_rad
    angle = torch.where(torch.rand(n, generator=generator) < aug.rotation_p, angle, torch.zeros(n))
    shifts = torch.randint(-aug.shift_px, aug.shift_px + 1, (n, 2), generator=generator).float()
    flip = torch.rand(n, generator=generator) < 0.5 if aug.hflip else torch.zeros(n, dtype=torch.bool)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output to input coordinates in [-1, 1]; a pixel is 2/size wide there.
    sx = torch.where(flip, -torch.ones(n), torch.ones(n))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * (h / w)
    theta[:, 1, 0], theta[:, 1, 1] = sin * (w / h) * sx, cos
    theta[:, 0, 2] = -shifts[:, 0] * 2 / w
    theta[:, 1, 2] = -shifts[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
