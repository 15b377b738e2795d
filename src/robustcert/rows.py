"""Certificate rows: the one unit every method produces, the run engine stores and the report aggregates.

One dataclass per family, with exactly the fields of the ``results.jsonl`` contract (docs/design.md).
Rows are written with :meth:`Row.to_json` and read back with :meth:`Row.from_json`, which checks every
field's presence and type and refuses unknown fields, so a row that was hand-edited, truncated or written
by another version is an error that names the field, never a silently wrong number in a report.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar, Self

from robustcert.errors import RobustCertError

DEFAULT_DOMAIN = "0,1"  # InputDomain.unit().text()


@dataclass(kw_only=True, slots=True)
class Row:
    """Fields common to every method: the example, its clean prediction and whether it is certified.

    ``prediction`` is −1 when the method abstains (smoothing). ``seconds`` is the wall time spent on the
    example (amortised over a batch) and ``domain`` the input domain the certificate is over (the
    ``--input-range`` text, e.g. ``"0,1"`` or ``"-1,1;0,255;0,1"``; rows written before the field existed
    were over [0, 1]), both filled in by the run engine.
    """

    family: ClassVar[str] = ""

    index: int
    label: int
    method: str
    prediction: int
    correct: bool
    certified: bool
    seconds: float = 0.0
    domain: str = DEFAULT_DOMAIN

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object (the ``results.jsonl`` line)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "row") -> Self:
        """Validate ``data`` against this row type; RobustCertError names ``where`` and the bad field."""
        if not isinstance(data, Mapping):
            raise RobustCertError(f"{where}: expected a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise RobustCertError(f"{where}: unknown field(s) {unknown} for a {cls.family or 'base'} row")
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name not in data:
                if f.default is not MISSING or f.default_factory is not MISSING:
                    continue
                raise RobustCertError(f"{where}: missing field {name!r}")
            values[name] = _check_value(data[name], hints[name], f"{where}: field {name!r}")
        return cls(**values)


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it has type ``hint`` (int, float, bool, str, or an optional of one of them)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise RobustCertError(f"{where} is null")
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
            if math.isnan(value):
                raise RobustCertError(f"{where} is NaN")
            return value
        if option is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise RobustCertError(f"{where} should be {names}, got {value!r}")


@dataclass(kw_only=True, slots=True)
class SmoothingRow(Row):
    """A randomized-smoothing certificate: with probability ≥ 1 − alpha over the sampling, the smoothed
    classifier predicts ``prediction`` everywhere in the L2 ball of radius ``radius``.

    ``procedure`` is ``"cohen"`` (Cohen et al.'s fixed-n CERTIFY; ``n`` estimation samples) or
    ``"adaptive"`` (robustcert.smoothing.adaptive: sampling stops when an anytime-valid confidence
    sequence decides; ``n`` is the budget). ``samples`` is the number of base-model evaluations actually
    made, n0 + the estimation samples drawn, and ``count`` the candidate's votes among those estimation
    samples. ``target_radius`` is set in the adaptive target mode, where ``certified`` means "certified at
    ``target_radius``" (then ``radius`` = ``target_radius``); otherwise ``certified`` means "not abstained".
    Rows written before these fields existed are Cohen's, with ``samples`` = n0 + n.
    ``float_model`` says which base classifier the radius is about: ``"real"`` (Cohen's guarantee: exact
    Gaussian noise, the base model in real arithmetic; the default) or ``"float32"``/``"float64"``
    (``--sound-fp``: inputs on the grid ``grid``, e.g. ``"1/255"``, noise the Gaussian rounded to it, the
    model as run in that precision; robustcert.smoothing.sound_fp).
    """

    family: ClassVar[str] = "smoothing"
    procedures: ClassVar[tuple[str, ...]] = ("cohen", "adaptive")

    radius: float
    sigma: float
    n0: int
    n: int
    count: int
    pA_lower: float
    alpha: float
    base_correct: bool
    samples: int = -1  # −1: not recorded (a row from before the field existed) → n0 + n, set below
    procedure: str = "cohen"
    target_radius: float | None = None
    float_model: str = "real"
    grid: str | None = None

    def __post_init__(self) -> None:
        if self.procedure not in self.procedures:
            raise RobustCertError(
                f"smoothing row field 'procedure' must be one of {', '.join(self.procedures)}, got {self.procedure!r}"
            )
        if self.samples == -1 and self.procedure == "cohen":
            self.samples = self.n0 + self.n


@dataclass(kw_only=True, slots=True)
class BoundRow(Row):
    """A deterministic certificate at one budget: ``margin_lower`` ≤ min over j ≠ y of f_y − f_j on the
    whole ball (None when the method could not bound it, e.g. a time-out). ``float_model`` says which
    network the certificate is about: ``"float32"`` (the model's float32 evaluation, in any summation
    order; the default, also for rows written before the field existed) or ``"real"`` (the real-valued
    network with the stored weights)."""

    family: ClassVar[str] = "bound"

    norm: str
    eps: float
    margin_lower: float | None
    float_model: str = "float32"


@dataclass(kw_only=True, slots=True)
class ExactRow(BoundRow):
    """A complete verifier's verdict at one budget: ``status`` is robust, counterexample or unknown.
    The MILP encodes the real-valued network, so ``float_model`` defaults to ``"real"`` here."""

    family: ClassVar[str] = "exact"

    float_model: str = "real"
    status: str


@dataclass(kw_only=True, slots=True)
class SdpRow(BoundRow):
    """An SDP certificate at one budget: ``margin_lower`` is the larger, per class, of the SDP's bound
    (recomputed from the solver's multipliers, never its own optimum) and the CROWN bound of the same
    set; ``sdp_lower`` the SDP's own bound (min over the classes it solved; None if CROWN proved them
    all). ``solver``, its total ``iterations``, ``gap``: the largest excess of a solver's claimed optimum
    over the certified bound (None for the first-order solver, which claims none)."""

    family: ClassVar[str] = "sdp"

    solver: str = ""
    iterations: int = 0
    gap: float | None = None
    sdp_lower: float | None = None


@dataclass(kw_only=True, slots=True)
class AttackRow(Row):
    """An attack at one budget (never a certificate): ``attack_success`` when the example is
    misclassified or the attack found a misclassified point in the ball; ``adv_margin`` its margin."""

    family: ClassVar[str] = "attack"

    norm: str
    eps: float
    attack_success: bool
    adv_margin: float


ROW_TYPES: dict[str, type[Row]] = {
    cls.family: cls for cls in (SmoothingRow, BoundRow, ExactRow, SdpRow, AttackRow)
}
