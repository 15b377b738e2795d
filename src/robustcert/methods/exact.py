"""The exact MILP verifier (``robustcert.exact``): the proven minimum margin of a ReLU network over
``B_inf(x, eps) ∩ domain`` (the model's input domain, ``ModelInfo.domain``), or ``unknown`` on time-out.
``certified`` only when the MILP proves the minimum margin > 0 with the solver's tolerances subtracted; a
counterexample is confirmed by a forward pass of the model itself (float32 for a float32 model) at a
point inside that set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robustcert.methods.base import BudgetParams, Method, ModelInfo, param
from robustcert.rows import ExactRow, Row


@dataclass(frozen=True, kw_only=True)
class ExactParams(BudgetParams):
    time_limit: float = param(30.0, help="seconds per example and eps", min=0.0, exclusive_min=True)


class ExactCertifier:
    """One row per eps per example over ``B_inf(x, eps) ∩ info.domain``; the graph is converted once;
    solver output goes to ``log_path``."""

    batch_size = 1

    def __init__(self, model: nn.Module, info: ModelInfo, params: ExactParams, log_path: Path | None) -> None:
        from robustcert.graph import to_graph

        self.model, self.params, self.log_path = model, params, log_path
        self.domain = info.domain
        self.rows_per_example = len(params.eps)
        self.graph = to_graph(model, info.input_shape)

    def certify_batch(
        self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]
    ) -> list[list[Row]]:
        from robustcert.exact import exact_margin

        with torch.no_grad():
            preds = self.model(xs).argmax(1).tolist()
        out: list[list[Row]] = []
        for x, y, index, pred in zip(xs, ys, indices, preds, strict=True):
            rows: list[Row] = []
            for eps in self.params.eps:
                res = exact_margin(
                    self.model, x.unsqueeze(0), y, eps=eps, time_limit=self.params.time_limit,
                    log_path=self.log_path, domain=self.domain, graph=self.graph,
                )
                rows.append(
                    ExactRow(
                        index=index,
                        label=y,
                        method="exact",
                        prediction=pred,
                        correct=pred == y,
                        certified=bool(pred == y and res.status == "robust"),
                        norm=self.params.norm,
                        eps=float(eps),
                        margin_lower=None if res.min_margin is None else float(res.min_margin),
                        status=res.status,
                    )
                )
            out.append(rows)
        return out


def build(model: nn.Module, info: ModelInfo, params: ExactParams, log_path: Path | None) -> ExactCertifier:
    return ExactCertifier(model, info, params, log_path)


EXACT = Method(
    name="exact",
    family="exact",
    params=ExactParams,
    build=build,
    norms=("linf",),
    label="exact MILP",
    summary="exact mixed-integer verification of small ReLU nets (HiGHS): robust, counterexample or unknown",
    reference="Tjeng, Xiao & Tedrake 2019, Evaluating Robustness of Neural Networks with Mixed Integer Programming",
)
