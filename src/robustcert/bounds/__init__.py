"""Bound propagation over the graph IR: IBP, CROWN and alpha-CROWN (one file and one rule table each).

Certification (by default sound for the float32 network in any summation order, or with
``float_model="real"`` for the real-valued one; IBP intervals and final bounds in float64, CROWN's
intermediate passes in float32 unless ``precision="float64"``, every pass's own rounding covered; see
``_soundness``)::

    m = margin_lower(model, x, y, eps=0.1, norm="linf", method="ibp" | "crown" | "alpha-crown")
    verified = is_verified(m)
    lo, hi = logit_bounds(model, x, eps=0.1, norm="linf", method="crown")
    b = box_bounds(model, x_lo, x_hi, C)  # activation-input intervals, lower bounds of C·output

Many sub-domains of one input (ReLU sign splits) bounded in one batch, for branch and bound
(``subdomains``)::

    root = root_bounds(model, x[:1], eps=0.1)
    lb = bound_subdomains(root, C, {"node": signs})  # signs: int8 [D, *node_shape] in {-1, 0, +1}

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
from robustcert.bounds.subdomains import bound_subdomains, root_bounds

__all__ = [
    "SAFETY_REL",
    "BoxBounds",
    "bound_subdomains",
    "box_bounds",
    "crown_margin_lower",
    "ibp_bounds",
    "ibp_margin_lower",
    "is_verified",
    "logit_bounds",
    "margin_lower",
    "margin_spec",
    "root_bounds",
]
