"""The explicit safety margin that keeps float rounding from flipping a verdict.

Every certification bound is computed in float64 and then widened by

    tol = SAFETY_REL * (1 + M)

where ``M`` bounds the *absolute computation*: the value the same computation would produce with every
weight, coefficient and input replaced by its absolute value. ``M`` is obtained by one forward pass of
magnitudes, starting from ``m_in = max(|lo|, |hi|)`` of the input box (times 3 for L2: the ball bound
``A·x0 - eps ||A||`` is used only where it beats the box bound, and then its absolute computation
``|A||x0| + eps ||A||`` is at most ``3 |A| m_in``):

* affine op ``v = L x + c``:  ``m_v = |L| m_x + |c|``  (the IBP rule on ``[-m_x, m_x]``);
* activation (ReLU, sigmoid, tanh): ``m_v = 2 m_x + 1`` — the relaxations used by CROWN have slopes in
  [0, 1] and intercepts at most ``m_x + 1`` in absolute value, so slope and intercept terms together are
  at most ``2 m_x + 1`` per unit coefficient.

Justification. Each computed bound is a sum of products of float64 numbers; the standard forward error
analysis (Higham, *Accuracy and Stability of Numerical Algorithms*, §3) bounds its rounding error by
``gamma_n * (absolute computation)`` with ``gamma_n = n u / (1 - n u)``, ``u = 2^-53`` and ``n`` the
length of the longest chain of roundings (sum of fan-ins along the depth, plus a few ulps for each
``exp``/``tanh``/``sqrt``). For a spec row ``C``, the absolute computation of a CROWN/IBP bound is at most
``|C| · M_out``. ``SAFETY_REL = 2^-30 ≈ 9.3e-10`` equals ``gamma_n`` for ``n ≈ 8.4e6``, far above the
chains of any model this package certifies (fan-ins up to ~1e5, tens of layers). Intermediate bounds
used for relaxations are widened the same way with their own ``M``, so every relaxation is valid on the
true (real-arithmetic) interval. A margin whose true value is 0 or ~1e-12 is therefore never reported
as > 0. The guarantee is about the real-valued network with the stored weights (float32 weights
convert to float64 exactly); a float32 evaluation of the model itself may differ from it by ~1e-6
relative, which is outside this margin.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustcert.bounds._common import Bounds, forward_pass
from robustcert.bounds.ibp import RULES as IBP_RULES
from robustcert.graph.ir import Graph, Node

SAFETY_REL = 2.0**-30


def _activation_magnitude(node: Node, b: Bounds) -> Bounds:
    m = 2 * b[1] + 1
    return -m, m


def magnitudes(graph: Graph, m_in: Tensor) -> dict[str, Tensor]:
    """Upper bounds ``M`` of the absolute computation at every node (shape [1, *shape]), see module doc."""
    rules = dict(IBP_RULES)
    for op in ("relu", "sigmoid", "tanh"):
        rules[op] = _activation_magnitude
    m_in = m_in.abs().amax(dim=0, keepdim=True).to(torch.float64)
    out = forward_pass(graph, rules, (-m_in, m_in))
    # (1 + 1e-6): the magnitudes themselves are rounded; make them a little larger.
    return {name: torch.maximum(lo.abs(), hi.abs()) * (1 + 1e-6) for name, (lo, hi) in out.items()}


def node_tol(m: Tensor) -> Tensor:
    """Safety margin of interval bounds with magnitude ``m``."""
    return SAFETY_REL * (1 + m)


def spec_tol(C: Tensor, m_out: Tensor) -> Tensor:
    """Safety margin of bounds on ``C · output`` (C: [B, S, K], m_out: [1, K]) -> [B, S]."""
    return SAFETY_REL * (1 + (C.abs() * m_out.unsqueeze(1)).flatten(2).sum(-1))


def widen(b: Bounds, m: Tensor) -> Bounds:
    """Interval ``b`` widened by its safety margin."""
    t = node_tol(m).to(b[0].dtype)
    return b[0] - t, b[1] + t
