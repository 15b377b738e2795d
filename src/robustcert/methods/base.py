"""What a method is: a registry entry (:class:`Method`), its typed parameters (:class:`Params`) and the one
interface every certifier offers the run engine (:class:`Certifier`).

Parameters are dataclasses whose fields carry their documentation and limits (:func:`param`). They are
built from text (the CLI) or from TOML values (``evaluate``) by one function, :func:`build_params`, which
refuses unknown keys with a "did you mean" hint, converts and checks every value, and then runs the
class's own cross-field checks — so a method's parameters are validated once, in one place, whatever
the entry point.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError
from robustcert.rows import ROW_TYPES, Row
from robustcert.validation import NORMS

FAMILIES = ("smoothing", "bound", "exact", "sdp", "attack")
DETERMINISTIC_FAMILIES = ("bound", "exact", "sdp")


def param(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    min: float | None = None,
    max: float | None = None,
    exclusive_min: bool = False,
    exclusive_max: bool = False,
    choices: Sequence[str] | None = None,
) -> Any:
    """A parameter field: its default, one line of help, and the limits :func:`build_params` enforces."""
    meta = {
        "help": help,
        "min": min,
        "max": max,
        "exclusive_min": exclusive_min,
        "exclusive_max": exclusive_max,
        "choices": tuple(choices) if choices else None,
    }
    if isinstance(default, list | tuple):
        value = tuple(default)
        return field(default_factory=lambda: value, metadata=meta)
    return field(default=default, metadata=meta)


def float_model_param() -> Any:
    """The ``float_model`` parameter of the deterministic methods that certify the float32 network."""
    return param(
        "float32",
        help="the network certified: its float32 evaluation (any summation order) or the real-valued one",
        choices=("float32", "real"),
    )


@dataclass(frozen=True, kw_only=True)
class Params:
    """Base of every method's parameters. Subclasses add fields made with :func:`param` and may override
    :meth:`check` for rules that involve several fields."""

    def check(self) -> None:
        """Cross-field validation; raise RobustCertError with a fix. The default accepts everything."""

    def to_json(self) -> dict[str, Any]:
        """The parameters as JSON values (tuples become lists), as recorded in ``run.json``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True, kw_only=True)
class BudgetParams(Params):
    """Parameters of a method that is run at a list of budgets under one norm (bounds, exact, attacks)."""

    norm: str = param("linf", help="threat model", choices=NORMS)
    eps: tuple[float, ...] = param(
        (0.01, 0.02, 0.05, 0.1), help="budgets (one or a comma-separated list), in input units", min=0.0
    )

    def check(self) -> None:
        if not self.eps:
            raise RobustCertError(
                "eps needs at least one budget, e.g. --eps 0.01,0.02 (eps = [0.01, 0.02] in TOML)"
            )
        if len(set(self.eps)) != len(self.eps):
            raise RobustCertError(f"eps lists a budget twice: {list(self.eps)}; give each budget once")


P = TypeVar("P", bound=Params)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` (a string from the CLI or a TOML value) to the field type ``hint``."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        if type(None) in options:
            return None
        raise RobustCertError(f"{where} needs a value")
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce_one(value, option, where)
        except RobustCertError as exc:
            errors.append(str(exc))
    raise RobustCertError(errors[0] if errors else f"{where}: cannot use {value!r}")


def _coerce_one(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            items = [items]
        if any(isinstance(v, str) and not v.strip() for v in items):
            raise RobustCertError(f"{where} has an empty item in {value!r}; separate values by single commas")
        return tuple(_coerce_one(v, item, where) for v in items)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise RobustCertError(f"{where} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise RobustCertError(f"{where} must be a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise RobustCertError(f"{where} must be a whole number, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise RobustCertError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RobustCertError(f"{where} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise RobustCertError(f"{where} must be a finite number, got {value!r}")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise RobustCertError(f"{where} must be text, got {value!r}")
        return value
    raise TypeError(f"parameter type {kind!r} is not supported by build_params")  # a programming error


def _check_limits(value: Any, meta: Mapping[str, Any], where: str) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None:
            continue
        if meta.get("choices") and v not in meta["choices"]:
            hint = difflib.get_close_matches(str(v), meta["choices"], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise RobustCertError(f"{where} must be one of {', '.join(meta['choices'])}, got {v!r}{extra}")
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and (v < lo or (meta.get("exclusive_min") and v == lo)):
            op = ">" if meta.get("exclusive_min") else ">="
            raise RobustCertError(f"{where} must be {op} {lo:g}, got {v!r}")
        if hi is not None and (v > hi or (meta.get("exclusive_max") and v == hi)):
            op = "<" if meta.get("exclusive_max") else "<="
            raise RobustCertError(f"{where} must be {op} {hi:g}, got {v!r}")


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or the empty string."""
    hint = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def param_fields(cls: type[Params]) -> list[dataclasses.Field[Any]]:
    """The parameter fields of a Params class, in declaration order."""
    return list(dataclasses.fields(cls))


def cli_option(name: str) -> str:
    """The command-line spelling of a parameter: ``alpha_steps`` → ``--alpha-steps``."""
    return "--" + name.replace("_", "-")


def build_params(cls: type[P], values: Mapping[str, Any], where: str = "", *, cli: bool = False) -> P:
    """Build and validate ``cls`` from ``values`` (CLI strings or TOML values); missing keys take defaults.

    Raises RobustCertError naming the key (``--alpha-steps`` with ``cli``, else ``where.alpha_steps``), the
    closest known key for a misspelt one, the expected type or limit, and the value given."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in param_fields(cls)]
    prefix = f"{where}." if where else ""

    def label_of(name: str) -> str:
        return cli_option(name) if cli else f"{prefix}{name}"

    for key in values:
        if key not in names:
            raise RobustCertError(
                f"unknown key {label_of(key)}{did_you_mean(key, names)}; known: {', '.join(names)}"
            )
    kwargs: dict[str, Any] = {}
    for f in param_fields(cls):
        if f.name not in values:
            continue
        label = label_of(f.name)
        value = _coerce(values[f.name], hints[f.name], label)
        _check_limits(value, f.metadata, label)
        kwargs[f.name] = value
    try:
        params = cls(**kwargs)
    except TypeError as exc:  # a required field without a default
        raise RobustCertError(f"{where or cls.__name__}: {exc}") from None
    params.check()
    return params


@dataclass(frozen=True)
class ModelInfo:
    """What a method may know about the model besides its weights. ``domain`` is the box every input
    lies in: every method intersects its perturbation set with it (bounds, MILP, attacks' projections).
    ``class_names`` are optional labels for reports."""

    input_shape: tuple[int, ...]
    num_classes: int
    meta: Mapping[str, Any] = field(default_factory=dict)
    domain: InputDomain = field(default_factory=InputDomain.unit)
    class_names: tuple[str, ...] | None = None


class Certifier(Protocol):
    """The one interface between a method and the run engine.

    ``certify_batch`` returns, for each example of the chunk, exactly ``rows_per_example`` rows. Each
    example's randomness must come only from its own seed, so its rows do not depend on the other
    examples of the chunk, on order, sharding or resumption. ``batch_size`` is the chunk size the engine
    hands over (1 for per-example methods)."""

    batch_size: int
    rows_per_example: int

    def certify_batch(
        self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]
    ) -> list[list[Row]]: ...


BuildCertifier = Callable[[nn.Module, ModelInfo, Any, "Path | None"], Certifier]


@dataclass(frozen=True)
class Method:
    """One registry entry: everything the CLI, ``evaluate``, the report and the docs know of a method.

    ``build(model, info, params, log_path)`` returns the :class:`Certifier`; ``log_path`` is the run's log
    file for solver output (never stdout). ``resolve(params, info)`` may fill defaults that depend on the
    model (e.g. smoothing's sigma from the training sigma) and must return validated params. ``norms``
    are the threat models the method supports; ``budgeted`` methods take ``norm`` and ``eps`` params
    (:class:`BudgetParams`), the others (smoothing) certify a radius."""

    name: str
    family: str
    params: type[Params]
    build: BuildCertifier
    summary: str
    label: str = ""
    norms: tuple[str, ...] = NORMS
    resolve: Callable[[Any, ModelInfo], Any] | None = None
    reference: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.name!r}: family must be one of {FAMILIES}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def deterministic(self) -> bool:
        """True for certificates that hold with certainty (bounds, exact, SDP)."""
        return self.family in DETERMINISTIC_FAMILIES

    @property
    def budgeted(self) -> bool:
        """True when the method runs at given budgets (its params have ``norm`` and ``eps``)."""
        return issubclass(self.params, BudgetParams)

    @property
    def row_type(self) -> type[Row]:
        """The row dataclass this method writes."""
        return ROW_TYPES[self.family if self.family in ROW_TYPES else "bound"]

    def make_params(self, values: Mapping[str, Any], where: str = "", *, cli: bool = False) -> Params:
        """Validated parameters from CLI or TOML values (see :func:`build_params`)."""
        return build_params(self.params, values, where or self.name, cli=cli)

    def finalize(self, params: Params, info: ModelInfo) -> Params:
        """Parameters with model-dependent defaults filled in (``resolve``), checked against ``norms``."""
        if isinstance(params, BudgetParams) and params.norm not in self.norms:
            raise RobustCertError(
                f"{self.name} supports --norm {' or '.join(self.norms)} only, got {params.norm!r}"
            )
        return self.resolve(params, info) if self.resolve else params
