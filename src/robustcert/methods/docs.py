"""``docs/methods.md``, generated from the registry: every method with its family, guarantee, parameters
(type, default, limits, help) and reference. ``python -m robustcert.methods.docs > docs/methods.md``;
a test checks that the committed file equals this output."""

from __future__ import annotations

import dataclasses
import types
import typing

from robustcert.methods import all_methods
from robustcert.methods.base import cli_option, param_fields

GUARANTEE = {
    "smoothing": "probabilistic: holds with probability >= 1 - alpha over robustcert's own sampling",
    "bound": "deterministic: every margin lower bound holds on the whole ball",
    "exact": "deterministic and complete (up to the time limit)",
    "sdp": "deterministic: bound re-derived from the dual multipliers",
    "attack": "none: an attack, an upper limit on robust accuracy",
}


def _type_name(hint: typing.Any) -> str:
    text = getattr(hint, "__name__", None) or str(hint)
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    return str(text).replace("typing.", "").replace("NoneType", "None")


def _limits(meta: typing.Mapping[str, typing.Any]) -> str:
    parts = []
    if meta.get("choices"):
        parts.append(" / ".join(meta["choices"]))
    if meta.get("min") is not None:
        parts.append(f"{'>' if meta.get('exclusive_min') else '>='} {meta['min']:g}")
    if meta.get("max") is not None:
        parts.append(f"{'<' if meta.get('exclusive_max') else '<='} {meta['max']:g}")
    return ", ".join(parts)


def _default(f: dataclasses.Field[typing.Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, tuple):
        return ", ".join(f"{v:g}" for v in value)
    return "from the model" if value is None else str(value)


def render() -> str:
    """The Markdown page."""
    lines = [
        "# Methods",
        "",
        "Generated from the method registry (`src/robustcert/methods/`) by "
        "`python -m robustcert.methods.docs > docs/methods.md`; do not edit by hand.",
        "",
        "Every method runs as `robustcert certify METHOD` (attacks: `robustcert attack METHOD`) with the "
        "options below, and as `METHOD = { ... }` under `[methods]` in an `evaluate` config with the same "
        "names (underscores instead of dashes; `norm` and `eps` come from the `[threat.*]` sections, and "
        "`models`, `eps` (a subset) and `limit` choose which runs).",
        "",
        "| method | family | threat models | guarantee |",
        "|---|---|---|---|",
    ]
    for m in all_methods():
        lines.append(f"| `{m.name}` | {m.family} | {', '.join(m.norms)} | {GUARANTEE.get(m.family, '')} |")
    for m in all_methods():
        hints = typing.get_type_hints(m.params)
        lines += ["", f"## `{m.name}` — {m.label}", "", m.summary + ".", ""]
        if m.reference:
            lines += [f"Reference: {m.reference}.", ""]
        lines += ["| option | type | default | limits | meaning |", "|---|---|---|---|---|"]
        for f in param_fields(m.params):
            lines.append(
                f"| `{cli_option(f.name)}` | {_type_name(hints[f.name])} | {_default(f)} | "
                f"{_limits(f.metadata)} | {f.metadata.get('help', '')} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
