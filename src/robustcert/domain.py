"""The input domain of a model: the box ``[lo_c, hi_c]`` every input value of channel ``c`` lies in.

Every method intersects its perturbation set with the domain (bounds, the MILP, attacks' projections),
and every run records it (``run.json`` and each row), so a certificate always says over which inputs it
holds. robustcert's own models take pixels in [0, 1]; a user's model may take any box, per channel
(``--input-range LO,HI`` or ``--input-range "LO,HI;LO,HI;LO,HI"``).

Guarantees: :meth:`InputDomain.parse` and :meth:`InputDomain.coerce` accept only finite ``lo <= hi``
(or ±inf for an unbounded side) and say what to write otherwise; :meth:`InputDomain.check_data` refuses
data that leave the domain with a message naming the first offending channel and both ranges, because a
certificate over a domain that excludes the data would be about other inputs than the user's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robustcert.errors import RobustCertError

FIX = 'give the model\'s input range, e.g. --input-range=-1,1 or per channel --input-range "0,1;0,1;0,1"'


def _number(text: Any, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RobustCertError(f"{what}: {text!r} is not a number; {FIX}") from None
    if math.isnan(value):
        raise RobustCertError(f"{what}: NaN is not a bound; {FIX}")
    return value


def _fmt(v: float) -> str:
    """The shortest text that reads back as exactly ``v`` (``16`` not ``16.0``; ``inf``/``-inf``)."""
    if not math.isfinite(v):
        return "-inf" if v < 0 else "inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _outward32(value: float, *, down: bool) -> float:
    """``value`` if float32 holds it exactly, else the next float32 below (``down``) or above it."""
    if not math.isfinite(value):
        return value
    v32 = torch.tensor(value, dtype=torch.float32)
    if float(v32) == value:
        return value
    toward = torch.tensor(-math.inf if down else math.inf, dtype=torch.float32)
    if (float(v32) > value) == down:  # rounded the wrong way: step one float32 further out
        v32 = torch.nextafter(v32, toward)
    return float(v32)


@dataclass(frozen=True)
class InputDomain:
    """Per-channel bounds ``lo[c] <= x[:, c, ...] <= hi[c]``; one entry applies to every channel."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.lo) != len(self.hi) or not self.lo:
            raise RobustCertError(f"input domain: need as many lower as upper bounds (one or one per channel); {FIX}")
        for c, (a, b) in enumerate(zip(self.lo, self.hi, strict=True)):
            if math.isnan(a) or math.isnan(b) or a > b or a == math.inf or b == -math.inf:
                where = f" of channel {c}" if len(self.lo) > 1 else ""
                raise RobustCertError(f"input domain{where} [{_fmt(a)}, {_fmt(b)}] is empty; write LO,HI with LO <= HI")

    @classmethod
    def unit(cls) -> InputDomain:
        """[0, 1] for every channel: robustcert's data sets and zoo models."""
        return cls((0.0,), (1.0,))

    @classmethod
    def unbounded(cls) -> InputDomain:
        """No constraint (every real input)."""
        return cls((-math.inf,), (math.inf,))

    @classmethod
    def parse(cls, text: str, what: str = "--input-range") -> InputDomain:
        """``"LO,HI"`` or per channel ``"LO,HI;LO,HI;..."`` (``inf``/``-inf`` allowed)."""
        pairs = [p.strip() for p in str(text).split(";")]
        lo, hi = [], []
        for pair in pairs:
            parts = [p.strip() for p in pair.split(",")]
            if len(parts) != 2:
                raise RobustCertError(f"{what} {text!r}: write LO,HI (or per channel LO,HI;LO,HI;...); {FIX}")
            lo.append(_number(parts[0], what))
            hi.append(_number(parts[1], what))
        return cls._made(tuple(lo), tuple(hi), what)

    @classmethod
    def _made(cls, lo: tuple[float, ...], hi: tuple[float, ...], what: str) -> InputDomain:
        try:
            return cls(lo, hi)
        except RobustCertError as exc:
            raise RobustCertError(f"{what}: {exc}") from None

    @classmethod
    def coerce(cls, value: Any, what: str = "domain") -> InputDomain:
        """An InputDomain from itself, ``None`` ([0, 1]), text, a pair ``(lo, hi)`` of numbers or a list of
        per-channel pairs (the TOML / Python forms)."""
        if value is None:
            return cls.unit()
        if isinstance(value, InputDomain):
            return value
        if isinstance(value, str):
            return cls.parse(value, what)
        if isinstance(value, Sequence) and len(value) == 2 and all(not isinstance(v, Sequence) for v in value):
            return cls._made((_number(value[0], what),), (_number(value[1], what),), what)
        if isinstance(value, Sequence) and value and all(isinstance(v, Sequence) and len(v) == 2 for v in value):
            return cls._made(
                tuple(_number(v[0], what) for v in value), tuple(_number(v[1], what) for v in value), what
            )
        raise RobustCertError(f"{what} must be [LO, HI] or one [LO, HI] per channel, got {value!r}")

    @property
    def is_unit(self) -> bool:
        return all(a == 0.0 for a in self.lo) and all(b == 1.0 for b in self.hi)

    def text(self) -> str:
        """The ``--input-range`` form (what ``run.json`` and rows store); ``parse(text())`` gives it back."""
        return ";".join(f"{_fmt(a)},{_fmt(b)}" for a, b in zip(self.lo, self.hi, strict=True))

    def __str__(self) -> str:
        return " × ".join(f"[{_fmt(a)}, {_fmt(b)}]" for a, b in zip(self.lo, self.hi, strict=True))

    def check_channels(self, input_shape: Sequence[int], what: str = "input domain") -> None:
        """RobustCertError unless there is one bound for all channels or one per channel (dim 0 of
        ``input_shape``)."""
        channels = int(input_shape[0]) if len(input_shape) else 1
        if len(self.lo) not in (1, channels):
            raise RobustCertError(
                f"{what} {self.text()!r} has {len(self.lo)} channel ranges but the input has {channels} "
                f"channels (shape {list(input_shape)}); give one LO,HI or {channels}"
            )

    def representable(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The bounds rounded outward to float32 values: the box every method actually uses. It contains
        the stated box (so a certificate over it holds over the stated one) and is the same in float32
        and float64, so data stored in float32 at a bound such as 0.3 (float32(0.3) > 0.3) are inside
        for every check and every method alike."""
        lo = tuple(_outward32(v, down=True) for v in self.lo)
        hi = tuple(_outward32(v, down=False) for v in self.hi)
        return lo, hi

    def tensors(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` of :meth:`representable` shaped to broadcast against a batch ``x`` [B, C, ...] (same
        dtype and device; exact in float32 and float64)."""
        shape = [1] * x.ndim
        if len(self.lo) > 1:
            shape[1] = len(self.lo)
        lo32, hi32 = self.representable()
        lo = torch.tensor(lo32, dtype=x.dtype, device=x.device).view(shape)
        hi = torch.tensor(hi32, dtype=x.dtype, device=x.device).view(shape)
        return lo, hi

    def clip(self, x: Tensor) -> Tensor:
        """``x`` projected onto the domain (the exact Euclidean and L∞ projection onto a box)."""
        lo, hi = self.tensors(x)
        return torch.maximum(torch.minimum(x, hi), lo)

    def contains(self, x: Tensor) -> bool:
        lo, hi = self.tensors(x)
        return bool(((x >= lo) & (x <= hi)).all())

    def check_data(self, x: Tensor, what: str = "the data", fix: str = FIX) -> None:
        """RobustCertError unless every value of the batch ``x`` [B, C, ...] lies in the domain; the
        message names the first offending example and channel, both ranges, and ends with ``fix``."""
        if x.numel() == 0:
            return
        self.check_channels(tuple(x.shape[1:]), "input domain")
        if self.contains(x):
            return
        lo, hi = self.tensors(x)
        bad = (x < lo) | (x > hi)
        example = int(bad.flatten(1).any(1).nonzero()[0, 0])
        channel = int(bad[example].flatten(1).any(1).nonzero()[0, 0]) if x.ndim > 2 else 0
        c = channel if len(self.lo) > 1 else 0
        xs = x[:, channel] if x.ndim > 2 else x
        hint = " (8-bit images? divide them by 255)" if self.is_unit and 128 < float(xs.max()) <= 255 else ""
        raise RobustCertError(
            f"the input domain excludes {what}: channel {channel} of example {example} lies in "
            f"[{float(xs.min()):.4g}, {float(xs.max()):.4g}] over the data, outside [{_fmt(self.lo[c])}, "
            f"{_fmt(self.hi[c])}]; {fix}{hint}"
        )

    def to_json(self) -> dict[str, list[float | str]]:
        return {"lo": [v if math.isfinite(v) else _fmt(v) for v in self.lo],
                "hi": [v if math.isfinite(v) else _fmt(v) for v in self.hi]}
