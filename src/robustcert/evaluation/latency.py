"""Latency of undefended inference against defended procedures, measured so that the ratio means something
on a loaded machine.

How :func:`measure_latency` measures, and what it guarantees:

- Every procedure is first called ``warmup`` times untimed (lazy initialisation, allocator, caches).
- Then ``repeats`` rounds. In each round every defended procedure is timed *next to* its own undefended
  call: an (undefended, defended) pair, in that order on even rounds and reversed on odd rounds, so load
  that drifts over the measurement hits both sides of a pair alike (and a linear drift cancels over two
  rounds). The undefended procedure is therefore timed ``repeats × len(defended)`` times (``repeats`` when
  nothing is defended).
- Each call's wall time (``clock``, ``time.perf_counter`` by default) is divided by the number of examples
  that call processes (``undefended_examples`` or ``defended_examples``): every figure is seconds *per
  example*, and each timing records its example count and batch size beside it.
- A defended procedure's ratio is the median, over rounds, of the ratio within each pair
  (defended / undefended measured back to back), not a ratio of two medians taken at different times.
- Every statistic is a :class:`Spread`: median with the interquartile range (``low`` ≤ ``median`` ≤
  ``high``) and the extremes; the raw per-round samples are kept in the JSON, so nothing is lost to
  rounding. Formatting (two significant digits for ratios) is the renderer's job.
- Torch's thread count is recorded, never changed: the caller decides the setting the numbers are for.

The result is one :class:`LatencyResult`; ``to_json`` / ``from_json`` round-trip it exactly.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from robustcert.errors import RobustCertError

SCHEMA = "robustcert.latency/2"


@dataclass(frozen=True)
class Spread:
    """The median of a sample with its interquartile range (``low``, ``high``) and extremes.

    Guaranteed: ``minimum ≤ low ≤ median ≤ high ≤ maximum``; quartiles use the inclusive method, so for
    one or two values they lie between the values."""

    median: float
    low: float
    high: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (at least one finite number)."""
        if not values:
            raise RobustCertError("a spread needs at least one value")
        if not all(math.isfinite(v) for v in values):
            raise RobustCertError(f"timings must be finite numbers, got {list(values)}")
        ordered = sorted(float(v) for v in values)
        if len(ordered) == 1:
            (v,) = ordered
            return cls(v, v, v, v, v)
        q1, q2, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        # quantiles interpolates in floating point; clamp so the documented order holds exactly
        median = min(max(statistics.median(ordered), ordered[0]), ordered[-1])
        low = min(max(q1, ordered[0]), median)
        high = max(min(q3, ordered[-1]), median)
        return cls(median=median, low=low, high=high, minimum=ordered[0], maximum=ordered[-1])

    def to_json(self) -> dict[str, float]:
        return {
            "median": self.median,
            "low": self.low,
            "high": self.high,
            "min": self.minimum,
            "max": self.maximum,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "spread") -> Spread:
        try:
            return cls(
                median=float(data["median"]),
                low=float(data["low"]),
                high=float(data["high"]),
                minimum=float(data["min"]),
                maximum=float(data["max"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RobustCertError(f"{where}: expected median, low, high, min, max numbers ({exc})") from None


@dataclass(frozen=True)
class Procedure:
    """A procedure to time: each ``run()`` processes the examples given to :func:`measure_latency` for its
    side. ``batch_size`` is how many inputs it pushes through the model at once (e.g. smoothing's noise
    batch); ``detail`` says what was timed (e.g. ``"n = 10,000, alpha = 0.001"``)."""

    run: Callable[[], None]
    batch_size: int
    detail: str = ""


@dataclass(frozen=True)
class Timing:
    """One procedure's seconds per example, one sample per timed call (each call over ``examples``
    examples, ``batch_size`` inputs per forward pass), with their spread."""

    examples: int
    batch_size: int
    samples: tuple[float, ...]
    detail: str = ""

    @property
    def seconds(self) -> Spread:
        return Spread.of(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "batch_size": self.batch_size,
            "detail": self.detail,
            "seconds_per_example": self.seconds.to_json(),
            "samples": list(self.samples),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> Timing:
        try:
            samples = tuple(float(v) for v in data["samples"])
            return cls(
                examples=int(data["examples"]),
                batch_size=int(data["batch_size"]),
                samples=samples,
                detail=str(data.get("detail", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RobustCertError(f"{where}: expected examples, batch_size and samples ({exc!r})") from None


@dataclass(frozen=True)
class DefendedTiming(Timing):
    """A defended procedure's timing and its ratios to the undefended call it was paired with."""

    ratios: tuple[float, ...] = ()

    @property
    def ratio(self) -> Spread:
        """Median and spread of (defended / undefended) over the back-to-back pairs."""
        return Spread.of(self.ratios)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "ratio": self.ratio.to_json(), "ratios": list(self.ratios)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> DefendedTiming:
        base = Timing.from_json(data, where)
        try:
            ratios = tuple(float(v) for v in data["ratios"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RobustCertError(f"{where}: expected ratios ({exc})") from None
        if len(ratios) != len(base.samples):
            raise RobustCertError(f"{where}: {len(ratios)} ratios for {len(base.samples)} samples")
        return cls(
            examples=base.examples,
            batch_size=base.batch_size,
            samples=base.samples,
            detail=base.detail,
            ratios=ratios,
        )


@dataclass(frozen=True)
class LatencyResult:
    """Undefended and defended seconds per example from one interleaved measurement: ``repeats`` rounds
    after ``warmup`` untimed calls, with ``torch_threads`` torch threads (as found, not set). Each timing
    carries its own example count and batch size; ``defended`` keeps the caller's order."""

    repeats: int
    warmup: int
    torch_threads: int
    undefended: Timing
    defended: dict[str, DefendedTiming] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON object (``latency.json`` holds one per model); floats are kept at full precision."""
        return {
            "schema": SCHEMA,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "torch_threads": self.torch_threads,
            "undefended": self.undefended.to_json(),
            "defended": {name: t.to_json() for name, t in self.defended.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "latency") -> LatencyResult:
        """Read :meth:`to_json`'s output back; RobustCertError for another schema (e.g. an older file)."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise RobustCertError(
                f"{where} is not a {SCHEMA} measurement (written by an older robustcert?); "
                "re-run `robustcert evaluate` to measure latency again"
            )
        try:
            return cls(
                repeats=int(data["repeats"]),
                warmup=int(data["warmup"]),
                torch_threads=int(data["torch_threads"]),
                undefended=Timing.from_json(data["undefended"], f"{where}.undefended"),
                defended={
                    str(name): DefendedTiming.from_json(t, f"{where}.defended.{name}")
                    for name, t in data["defended"].items()
                },
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise RobustCertError(f"{where}: malformed latency measurement ({exc!r})") from None


def _positive(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RobustCertError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def measure_latency(
    undefended: Procedure | Callable[[], None],
    defended: Mapping[str, Procedure | Callable[[], None]],
    *,
    undefended_examples: int,
    defended_examples: int,
    batch_size: int = 1,
    repeats: int = 7,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyResult:
    """Time ``undefended`` against each of ``defended``, interleaved (see the module docstring).

    Each undefended call processes ``undefended_examples`` examples, each defended call
    ``defended_examples`` (fewer, for an expensive procedure; the figures are per example either way,
    and inference time does not depend on which examples of one data set are used). A procedure given as
    a plain callable is recorded with batch size ``batch_size`` (default 1: per-example inference); give a
    :class:`Procedure` to record its own batch size (e.g. smoothing's noise batch) and a description.
    ``clock`` is for tests.

    Raises RobustCertError for invalid counts, or when an undefended call measures as zero seconds (the
    clock is too coarse for it: time more examples per call)."""
    _positive(undefended_examples, "undefended_examples")
    _positive(defended_examples, "defended_examples")
    _positive(batch_size, "batch_size")
    _positive(repeats, "repeats")
    _positive(warmup, "warmup", minimum=0)

    def procedure(p: Procedure | Callable[[], None]) -> Procedure:
        return p if isinstance(p, Procedure) else Procedure(run=p, batch_size=batch_size)

    reference = procedure(undefended)
    procedures = {str(name): procedure(p) for name, p in defended.items()}
    for name, p in [("undefended", reference), *procedures.items()]:
        if not name:
            raise RobustCertError("every defended procedure needs a name")
        _positive(p.batch_size, f"batch_size of {name!r}")

    def timed(fn: Callable[[], None], examples: int) -> float:
        start = clock()
        fn()
        return (clock() - start) / examples

    for _ in range(warmup):
        reference.run()
        for p in procedures.values():
            p.run()

    base: list[float] = []
    samples: dict[str, list[float]] = {name: [] for name in procedures}
    ratios: dict[str, list[float]] = {name: [] for name in procedures}
    for round_ in range(repeats):
        if not procedures:
            base.append(timed(reference.run, undefended_examples))
            continue
        for name, p in procedures.items():
            if round_ % 2 == 0:
                u = timed(reference.run, undefended_examples)
                d = timed(p.run, defended_examples)
            else:
                d = timed(p.run, defended_examples)
                u = timed(reference.run, undefended_examples)
            if u <= 0:
                raise RobustCertError(
                    "an undefended call took no measurable time; time more examples per call"
                )
            base.append(u)
            samples[name].append(d)
            ratios[name].append(d / u)

    return LatencyResult(
        repeats=repeats,
        warmup=warmup,
        torch_threads=torch.get_num_threads(),
        undefended=Timing(
            examples=undefended_examples,
            batch_size=reference.batch_size,
            samples=tuple(base),
            detail=reference.detail,
        ),
        defended={
            name: DefendedTiming(
                examples=defended_examples,
                batch_size=p.batch_size,
                samples=tuple(samples[name]),
                detail=p.detail,
                ratios=tuple(ratios[name]),
            )
            for name, p in procedures.items()
        },
    )
