"""Number formatting for the pages: bytes, percentages, counts and milliseconds."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()

DASH = "—"


@register.filter
def kb(value: Any) -> str:
    """Bytes as KB (1 KB = 1024 B), with the exact byte count for small values."""
    if value in (None, ""):
        return DASH
    n = int(value)
    if n < 1024:
        return f"{n:,} B"
    return f"{n / 1024:,.1f} KB"


@register.filter
def pct(value: Any) -> str:
    if value in (None, ""):
        return DASH
    return f"{float(value) * 100:.1f}%"


@register.filter
def count(value: Any) -> str:
    if value in (None, ""):
        return DASH
    return f"{int(value):,}"


@register.filter
def ms(value: Any) -> str:
    if value in (None, ""):
        return DASH
    v = float(value)
    return f"{v:,.0f} ms" if v >= 100 else f"{v:.3g} ms"


@register.filter
def seconds(value: Any) -> str:
    if value in (None, ""):
        return DASH
    v = float(value)
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


@register.filter
def pct2(value: Any) -> str:
    """A percentage with two decimals (accuracies that must be seen to be equal)."""
    if value in (None, ""):
        return DASH
    return f"{float(value) * 100:.2f}%"


@register.filter
def share(part: Any, whole: Any) -> str:
    """``part`` as a percentage of ``whole`` ("12.5%")."""
    if part in (None, "") or not whole:
        return DASH
    return f"{100 * float(part) / float(whole):.1f}%"


@register.filter
def points(value: Any, reference: Any) -> str:
    """The difference of two accuracies in percentage points ("-0.3 pt"), empty if either is missing."""
    if value in (None, "") or reference in (None, ""):
        return ""
    delta = 100 * (float(value) - float(reference))
    if abs(delta) < 0.05:
        return "±0.0 pt"
    return f"{delta:+.1f} pt"


@register.filter
def ago(value: Any) -> str:
    """How long ago ``value`` (a datetime) was: "just now" under a minute, never "0 minutes ago"."""
    if not value:
        return DASH
    if (timezone.now() - value).total_seconds() < 60:
        return "just now"
    return f"{timesince(value)} ago"
