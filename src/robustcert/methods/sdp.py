"""The SDP certifier (``robustcert.sdp``): Raghunathan et al.'s semidefinite relaxation of a ReLU network
of linear layers, stable neurons eliminated, solved per example and class by a first-order dual solver
in PyTorch or by cvxpy (SCS, Clarabel), and certified from the dual multipliers — an early-stopped or
inaccurate solve gives a looser bound, never a wrong one. ``certified`` only when the example is
classified correctly and every class's bound is > 0 (each the larger of the SDP's and CROWN's, both
certified). L∞ and L2 balls, intersected with the input domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robustcert.methods.base import BudgetParams, Method, ModelInfo, float_model_param, param
from robustcert.rows import Row, SdpRow
from robustcert.sdp.certify import SOLVER_CHOICES


@dataclass(frozen=True, kw_only=True)
class SdpParams(BudgetParams):
    solver: str = param(
        "first-order",
        help="dual solver: first-order (PyTorch, any size), clarabel (interior point, tight, small nets), scs",
        choices=SOLVER_CHOICES,
    )
    time_limit: float = param(
        60.0, help="seconds per example and eps, all classes", min=0.0, exclusive_min=True
    )
    float_model: str = float_model_param()
    intervals: str = param(
        "crown",
        help="bounds behind the ReLU intervals (and the per-class fallback)",
        choices=("crown", "alpha-crown"),
    )

    def check(self) -> None:
        super().check()
        if self.solver != "first-order":
            from robustcert.sdp.cvx import require_cvxpy

            require_cvxpy(self.solver)


class SdpCertifier:
    """One row per eps per example; the graph and its dense maps are read once."""

    batch_size = 1

    def __init__(self, model: nn.Module, info: ModelInfo, params: SdpParams) -> None:
        from robustcert.graph import to_graph
        from robustcert.sdp.encode import dense_network

        self.model, self.params, self.domain = model, params, info.domain
        self.rows_per_example = len(params.eps)
        self.graph = to_graph(model, info.input_shape)
        self.net = dense_network(self.graph)

    def certify_batch(
        self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]
    ) -> list[list[Row]]:
        from robustcert.sdp.certify import sdp_margin

        with torch.no_grad():
            preds = self.model(xs).argmax(1).tolist()
        out: list[list[Row]] = []
        p = self.params
        for x, y, index, pred in zip(xs, ys, indices, preds, strict=True):
            rows: list[Row] = []
            for eps in p.eps:
                res = sdp_margin(
                    self.model,
                    x.unsqueeze(0),
                    y,
                    eps,
                    norm=p.norm,
                    solver=p.solver,
                    time_limit=p.time_limit if pred == y else 1e-3,  # misclassified: nothing to certify
                    domain=self.domain,
                    float_model=p.float_model,
                    bounds_method=p.intervals,
                    skip_proven=True,
                    graph=self.graph,
                    net=self.net,
                )
                rows.append(
                    SdpRow(
                        index=index,
                        label=y,
                        method="sdp",
                        prediction=pred,
                        correct=pred == y,
                        certified=bool(pred == y and res.margin_lower > 0),
                        norm=p.norm,
                        eps=float(eps),
                        margin_lower=float(res.margin_lower),
                        float_model=p.float_model,
                        solver=p.solver,
                        iterations=res.iterations,
                        gap=res.gap,
                        sdp_lower=res.sdp_lower,
                    )
                )
            out.append(rows)
        return out


def build(model: nn.Module, info: ModelInfo, params: SdpParams, log_path: Path | None) -> SdpCertifier:
    return SdpCertifier(model, info, params)


SDP = Method(
    name="sdp",
    family="sdp",
    params=SdpParams,
    build=build,
    norms=("linf", "l2"),
    label="SDP",
    summary="semidefinite relaxation of ReLU MLPs, certified from its dual multipliers (tighter than CROWN, costlier)",
    reference="Raghunathan, Steinhardt & Liang 2018, Semidefinite relaxations for certifying robustness",
)
