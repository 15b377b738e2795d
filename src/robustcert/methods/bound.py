"""Bound propagation certifiers: IBP, CROWN and α-CROWN (``robustcert.bounds``).

A row at budget eps is ``certified`` only if the example is classified correctly and every margin lower
bound f_y − f_j (j ≠ y) over the ball ∩ input domain is > 0; the bounds hold for the model's float32
evaluation (``float_model="float32"``, default) or the real-valued network (``"real"``), the rounding
of the bound computation included (see ``robustcert.bounds._soundness``; ``precision`` picks the dtype of
CROWN's intermediate passes). Rows record ``float_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcert.methods.base import BudgetParams, Method, ModelInfo, float_model_param, param
from robustcert.rows import BoundRow, Row


@dataclass(frozen=True, kw_only=True)
class BoundParams(BudgetParams):
    batch: int = param(32, help="examples bounded together", min=1)
    float_model: str = float_model_param()
    precision: str = param(
        "float32",
        help="dtype of CROWN's intermediate passes (both sound; float64: less rounding slack, ~2x the time)",
        choices=("float32", "float64"),
    )


@dataclass(frozen=True, kw_only=True)
class AlphaCrownParams(BoundParams):
    alpha_steps: int = param(20, help="optimisation steps of the ReLU lower slopes", min=1)
    alpha_lr: float = param(0.1, help="Adam learning rate of the slopes (decayed x0.98 per step)", min=1e-6)
    alpha_intermediate: bool = param(
        False,
        help="in the last 6 steps also optimise the slopes behind every intermediate bound (tighter, 4-11x the time)",
    )


class BoundCertifier:
    """One row per eps, batched over examples; the model is converted to the graph IR once."""

    rows_per_example: int

    def __init__(self, model: nn.Module, info: ModelInfo, method: str, params: BoundParams) -> None:
        from robustcert.graph import to_graph

        self.model, self.method, self.params = model, method, params
        self.batch_size = params.batch
        self.domain = info.domain
        self.rows_per_example = len(params.eps)
        self.graph = to_graph(model, info.input_shape)
        self.options: dict[str, Any] = {"precision": params.precision}
        if isinstance(params, AlphaCrownParams):
            self.options["alpha_steps"] = params.alpha_steps
            self.options["alpha_lr"] = params.alpha_lr
            self.options["alpha_intermediate"] = params.alpha_intermediate

    def certify_batch(
        self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]
    ) -> list[list[Row]]:
        from robustcert.bounds import margin_lower

        with torch.no_grad():
            preds = self.model(xs).argmax(1).tolist()
        labels = torch.tensor(ys)
        out: list[list[Row]] = [[] for _ in ys]
        for eps in self.params.eps:
            m = margin_lower(
                self.graph,
                xs,
                labels,
                eps=eps,
                norm=self.params.norm,
                method=self.method,
                float_model=self.params.float_model,
                domain=self.domain,
                **self.options,
            )
            worst = m.min(dim=1).values.tolist()
            for k, (index, y, pred) in enumerate(zip(indices, ys, preds, strict=True)):
                out[k].append(
                    BoundRow(
                        index=index,
                        label=y,
                        method=self.method,
                        prediction=pred,
                        correct=pred == y,
                        certified=bool(pred == y and worst[k] > 0),
                        norm=self.params.norm,
                        eps=float(eps),
                        margin_lower=float(worst[k]),
                        float_model=self.params.float_model,
                    )
                )
        return out


def _builder(method: str) -> Any:
    def build(
        model: nn.Module, info: ModelInfo, params: BoundParams, log_path: Path | None
    ) -> BoundCertifier:
        return BoundCertifier(model, info, method, params)

    return build


IBP = Method(
    name="ibp",
    family="bound",
    params=BoundParams,
    build=_builder("ibp"),
    label="IBP",
    summary="interval bound propagation: cheapest, loose unless the model was trained for it",
    reference="Gowal et al. 2018, On the Effectiveness of Interval Bound Propagation",
)
CROWN = Method(
    name="crown",
    family="bound",
    params=BoundParams,
    build=_builder("crown"),
    label="CROWN",
    summary="linear bound propagation (backward linear relaxation of every activation)",
    reference="Zhang et al. 2018, Efficient Neural Network Robustness Certification with General Activation Functions",
)
ALPHA_CROWN = Method(
    name="alpha-crown",
    family="bound",
    params=AlphaCrownParams,
    build=_builder("alpha-crown"),
    label="α-CROWN",
    summary="CROWN with the ReLU lower slopes optimised per example (never looser than CROWN)",
    reference="Xu et al. 2021, Fast and Complete: Enabling Complete Neural Network Verification",
)
