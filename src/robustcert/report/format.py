"""Number formatting for every report renderer (Markdown, HTML, terminal): one place, so they agree.

Stored numbers (report.json, latency.json) keep full precision; these functions round only for display.
"""

from __future__ import annotations

import math


def pct(value: float | None) -> str:
    """``0.873`` → ``"87.3%"``; None (not measured) → ``"—"``."""
    return "—" if value is None else f"{100 * value:.1f}%"


def significant(value: float, digits: int = 2) -> str:
    """``value`` rounded to ``digits`` significant digits, without exponent: 1234 → "1,200",
    9.96 → "10", 0.04567 → "0.046", 0 → "0". Not finite → "—"."""
    if not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    rounded = float(f"{value:.{digits - 1}e}")
    exponent = math.floor(math.log10(abs(rounded)))
    decimals = max(0, digits - 1 - exponent)
    return f"{rounded:,.{decimals}f}"


def ratio(value: float) -> str:
    """A ratio to two significant digits: ``"250×"``."""
    return f"{significant(value)}×"


def _unit(reference: float) -> tuple[float, str]:
    magnitude = abs(reference)
    if magnitude >= 1 or magnitude == 0:
        return 1.0, "s"
    if magnitude >= 1e-3:
        return 1e3, "ms"
    return 1e6, "µs"


def seconds(value: float, digits: int = 2) -> str:
    """A duration with a unit chosen from its size, to ``digits`` significant digits: "0.21 ms", "3.4 s"."""
    scale, unit = _unit(value)
    return f"{significant(value * scale, digits)} {unit}"


def seconds_range(median: float, low: float, high: float) -> str:
    """Median and spread in the median's unit: ``"0.21 ms (0.20–0.23)"``."""
    scale, unit = _unit(median)
    return f"{significant(median * scale)} {unit} ({significant(low * scale)}–{significant(high * scale)})"


def ratio_range(median: float, low: float, high: float) -> str:
    """A ratio and its spread, two significant digits each: ``"250× (240–260)"``."""
    return f"{ratio(median)} ({significant(low)}–{significant(high)})"
