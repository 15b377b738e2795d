"""The method registry: one entry per method (see :mod:`robustcert.methods.base`).

Adding a method is one new file in this package (its params dataclass, its certifier and its
:class:`Method`) plus one ``register`` line below.
"""

from robustcert.methods import bab, bound, exact, pgd, sdp, smoothing  # noqa: E402  (the method files)
from robustcert.methods.base import (
    BudgetParams,
    Certifier,
    Method,
    ModelInfo,
    Params,
    build_params,
    param,
)
from robustcert.methods.registry import all_methods, get_method, register, unregister

register(smoothing.SMOOTHING)
register(bound.IBP)
register(bound.CROWN)
register(bound.ALPHA_CROWN)
register(exact.EXACT)
register(bab.BAB)
register(sdp.SDP)
register(pgd.PGD)

__all__ = [
    "BudgetParams",
    "Certifier",
    "Method",
    "ModelInfo",
    "Params",
    "all_methods",
    "build_params",
    "get_method",
    "param",
    "register",
    "unregister",
]
