"""Bound propagation over the graph IR: IBP, CROWN and alpha-CROWN (one file and one rule table each).

Certification (float64; by default sound for the float32 network in any summation order, or with
``float_model="real"`` for the real-valued one; see ``_soundness``)::

    m = margin_lower(model, x, y, eps=0.1, norm="linf", method="ibp" | "crown" | "alpha-crown")
    verified = is_verified(m)
    lo, hi = logit_bounds(model, x, eps=0.1, norm="linf", method="crown")
    b = box_bounds(model, x_lo, x_hi, C)  # activation-input intervals, lower bounds of C·output

Differentiable bounds for certified training (any dtype, no safety margin)::

    lo, hi = ibp_bounds(model, x_lo, x_hi)
    m = ibp_margin_lower(model, x_lo, x_hi, y)      # IBP
    m = crown_margin_lower(model, x_lo, x_hi, y)    # CROWN-IBP
"""

from robustcert.bounds.api import (
    SAFETY_REL,
    BoxBounds,
    box_bounds,
    crown_margin_lower,
    ibp_bounds,
    ibp_margin_lower,
    is_verified,
    logit_bounds,
    margin_lower,
    margin_spec,
)

__all__ = [
    "SAFETY_REL",
    "BoxBounds",
    "box_bounds",
    "crown_margin_lower",
    "ibp_bounds",
    "ibp_margin_lower",
    "is_verified",
    "logit_bounds",
    "margin_lower",
    "margin_spec",
]
