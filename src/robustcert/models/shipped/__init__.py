"""Certified models shipped with robustcert, loadable by name: ``--model zoo:NAME``.

Each shipped model is an ordinary robustcert model directory ``<this package>/<NAME>/`` holding
``model.pt`` (a state dict) and ``model.json`` (with the ``command`` that trained it and a ``certified``
record: the budget, the fixed example subset, the bound method, and the clean and verified accuracy on
that subset, which ``tests/test_zoo_shipped.py`` recomputes from the committed weights).

``zoo:NAME`` is resolved here and nowhere else (:func:`resolve_location`, called when a
:class:`~robustcert.models.sources.ModelSpec` is made), so every command and the ``evaluate`` config
accept it wherever they accept a model directory.
"""

from __future__ import annotations

from pathlib import Path

from robustcert.errors import RobustCertError

ZOO_PREFIX = "zoo:"
SHIPPED_DIR = Path(__file__).resolve().parent


def shipped_names() -> list[str]:
    """The names of the shipped models (sorted): the sub-directories holding both model.pt and model.json."""
    return sorted(
        p.name for p in SHIPPED_DIR.iterdir() if (p / "model.pt").is_file() and (p / "model.json").is_file()
    )


def shipped_path(name: str) -> Path:
    """The directory of the shipped model ``name``; raises a one-line :class:`RobustCertError` naming the
    available models when there is no such model."""
    names = shipped_names()
    if name not in names:
        raise RobustCertError(
            f"--model {ZOO_PREFIX}{name}: no shipped model of that name; available: "
            + (", ".join(f"{ZOO_PREFIX}{n}" for n in names) or "none")
        )
    return SHIPPED_DIR / name


def is_zoo(location: str) -> bool:
    """Whether a ``--model`` text names a shipped model (starts with ``zoo:``)."""
    return location.startswith(ZOO_PREFIX)


def resolve_location(location: str) -> str:
    """``zoo:NAME`` → the shipped model's directory (as a string); any other text is returned unchanged.
    An unknown name raises :class:`RobustCertError` listing the available names."""
    if not is_zoo(location):
        return location
    return str(shipped_path(location[len(ZOO_PREFIX) :]))
