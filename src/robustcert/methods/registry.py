"""The registry: name → :class:`~robustcert.methods.base.Method`. The CLI, the ``evaluate`` schema, the
report's labels and ``docs/methods.md`` all read it, so a method is known in exactly one place."""

from __future__ import annotations

from robustcert.errors import RobustCertError
from robustcert.methods.base import Method, did_you_mean

_REGISTRY: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method``; a second method of the same name is a programming error unless ``replace``."""
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (for tests that register a temporary one)."""
    _REGISTRY.pop(name, None)


def all_methods() -> list[Method]:
    """Every registered method, in registration order."""
    return list(_REGISTRY.values())


def get_method(name: str, families: tuple[str, ...] | None = None) -> Method:
    """The method called ``name`` (optionally restricted to ``families``); a RobustCertError lists the choices."""
    choices = [m.name for m in all_methods() if families is None or m.family in families]
    if name not in choices:
        raise RobustCertError(
            f"unknown method {name!r}{did_you_mean(name, choices)}; choose one of: {', '.join(choices)}"
        )
    return _REGISTRY[name]
