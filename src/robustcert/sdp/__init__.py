"""Semidefinite relaxations (Raghunathan, Steinhardt & Liang 2018) of ReLU networks, certified from the
dual multipliers whatever the solver returns. ``encode`` builds the program (stable ReLUs eliminated),
``dual`` turns any multipliers into a certified bound, ``cvx`` (SCS / Clarabel) and ``first_order``
(PyTorch, SDP-FO's idea) find multipliers, ``certify`` runs one example."""

from robustcert.sdp.certify import SOLVER_CHOICES, ClassResult, SdpResult, sdp_margin
from robustcert.sdp.dual import DualBound, Multipliers, certified_bound, full_bound, schur_bound
from robustcert.sdp.encode import SUPPORTED_OPS, DenseNetwork, QuadraticProgram, dense_network, encode

__all__ = [
    "SOLVER_CHOICES",
    "SUPPORTED_OPS",
    "ClassResult",
    "DenseNetwork",
    "DualBound",
    "Multipliers",
    "QuadraticProgram",
    "SdpResult",
    "certified_bound",
    "dense_network",
    "encode",
    "full_bound",
    "schur_bound",
    "sdp_margin",
]
