"""robustcert: certified defenses for PyTorch classifiers.

``robustcert.certify(model, x, y, method, ...)`` runs any registered method on a batch (see
:mod:`robustcert.api`); the command line is ``robustcert --help``.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:  # imported on first use: ``import robustcert`` stays light
    if name == "certify":
        from robustcert.api import certify

        return certify
    raise AttributeError(f"module 'robustcert' has no attribute {name!r}")


__all__ = ["__version__", "certify"]
