"""Latency estimates per core: cycles per MAC at the profile's clock, labelled as estimates."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Core:
    key: str
    label: str
    cycles_per_mac: float


# Cycles per int8 multiply-accumulate for the kernels nasweb generates, by core.  These are
# *estimates* (documented in docs/resources.md): single-issue cores without SIMD pay for two
# loads, a multiply-add and loop overhead; DSP cores pair MACs with SMLAD; the M7 dual-issues.
CORES: dict[str, Core] = {
    c.key: c
    for c in (
        Core("avr", "AVR 8-bit", 12.0),
        Core("cortex-m0plus", "Cortex-M0+", 9.0),
        Core("cortex-m3", "Cortex-M3", 6.0),
        Core("cortex-m4f", "Cortex-M4F", 3.0),
        Core("cortex-m7", "Cortex-M7", 1.5),
        Core("cortex-m33", "Cortex-M33", 3.0),
        Core("xtensa-lx7", "Xtensa LX7", 2.0),
    )
}


def latency_ms(macs: int, core: str, clock_mhz: float) -> float:
    """Estimated inference latency: MACs x cycles-per-MAC of ``core`` / clock."""
    if core not in CORES:
        raise ValueError(f"unknown core {core!r}; known: {', '.join(CORES)}")
    if clock_mhz <= 0:
        raise ValueError("clock_mhz must be positive")
    return macs * CORES[core].cycles_per_mac / (clock_mhz * 1e3)
