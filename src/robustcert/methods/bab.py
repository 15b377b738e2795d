"""Complete verification by branch and bound (``robustcert.exact.bab``, or input splitting for models
with at most ``robustcert.exact.input_split.MAX_INPUTS`` inputs) as a certify method: per example and
eps, ``robust`` (every leaf of the split tree proven), ``counterexample`` (a float32 point of the ball
whose float32 margin is <= 0) or ``unknown`` (time limit, or a fully split leaf the bounds cannot close).

Soundness. The box searched is ``[x - eps, x + eps]`` rounded outward (it contains the real ball)
intersected with the model's input domain; ``robust`` comes from :func:`branch_and_bound` /
:func:`input_split`, whose leaf bounds hold for every float32 evaluation of the model on the leaf (see
those modules), so the row is about the float32 network (``float_model="float32"``). A counterexample is
kept only if its point lies in the real ball, checked in exact rational arithmetic (the outward rounding
may add one float64 step), and the model's own float32 forward pass at it gives margin <= 0; otherwise
the row says ``unknown``. ``margin_lower`` is the search's certified lower bound when it is finite
(robust: > 0; unknown: the lowest open leaf), else None."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

from robustcert.methods.base import BudgetParams, Method, ModelInfo, param
from robustcert.rows import ExactRow, Row


@dataclass(frozen=True, kw_only=True)
class BabParams(BudgetParams):
    time_limit: float = param(30.0, help="seconds per example and eps", min=0.0, exclusive_min=True)
    batch: int = param(64, help="sub-domains split per step (twice as many bounded in one call)", min=1)


def _in_ball(point: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    """True if every coordinate of ``point`` is within ``eps`` of ``x`` in exact arithmetic."""
    e = Fraction(eps)
    return all(
        abs(Fraction(p) - Fraction(c)) <= e
        for p, c in zip(point.double().reshape(-1).tolist(), x.double().reshape(-1).tolist(), strict=True)
    )


class BabCertifier:
    """One row per eps per example; the graph is converted once."""

    batch_size = 1

    def __init__(self, model: nn.Module, info: ModelInfo, params: BabParams, log_path: Path | None) -> None:
        from robustcert.exact.input_split import MAX_INPUTS
        from robustcert.graph import to_graph

        self.model, self.params = model, params
        self.domain = info.domain
        self.rows_per_example = len(params.eps)
        self.graph = to_graph(model, info.input_shape)
        self.by_input = math.prod(info.input_shape) <= MAX_INPUTS
        self.num_classes = info.num_classes

    def _search(self, x: torch.Tensor, y: int, eps: float, seed: int) -> tuple[str, float | None]:
        from robustcert.bounds._common import toward
        from robustcert.bounds.api import margin_spec
        from robustcert.exact.bab import branch_and_bound
        from robustcert.exact.input_split import input_split

        x64 = x.double().unsqueeze(0)
        lo = self.domain.clip(toward(x64 - eps, upper=False))
        hi = self.domain.clip(toward(x64 + eps, upper=True))
        k = self.num_classes
        C = margin_spec(torch.tensor([y]), k)[0][[j for j in range(k) if j != y]]  # f_y - f_j, j != y
        if self.by_input:
            r = input_split(self.graph, lo, hi, C, timeout=self.params.time_limit, seed=seed)
        else:
            r = branch_and_bound(
                self.graph, lo, hi, C, timeout=self.params.time_limit, batch=self.params.batch, seed=seed
            )
        bound = r.bound if math.isfinite(r.bound) else None
        if r.status == "verified":
            return "robust", bound
        if r.status == "falsified" and r.counterexample is not None and _in_ball(r.counterexample, x, eps):
            with torch.no_grad():
                out = self.model(r.counterexample.float())[0]
            others = torch.cat([out[:y], out[y + 1 :]])
            if float(out[y]) <= float(others.max()):
                return "counterexample", None
        return "unknown", bound

    def certify_batch(
        self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]
    ) -> list[list[Row]]:
        with torch.no_grad():
            preds = self.model(xs).argmax(1).tolist()
        out: list[list[Row]] = []
        for x, y, index, pred, seed in zip(xs, ys, indices, preds, seeds, strict=True):
            rows: list[Row] = []
            for eps in self.params.eps:
                # a wrong prediction is its own counterexample (the clean point is in every ball)
                status, bound = (
                    ("counterexample", None) if pred != y else self._search(x, y, float(eps), seed)
                )
                rows.append(
                    ExactRow(
                        index=index,
                        label=y,
                        method="bab",
                        prediction=pred,
                        correct=pred == y,
                        certified=status == "robust",
                        norm=self.params.norm,
                        eps=float(eps),
                        margin_lower=bound,
                        float_model="float32",
                        status=status,
                    )
                )
            out.append(rows)
        return out


def build(model: nn.Module, info: ModelInfo, params: BabParams, log_path: Path | None) -> BabCertifier:
    return BabCertifier(model, info, params, log_path)


BAB = Method(
    name="bab",
    family="exact",
    params=BabParams,
    build=build,
    norms=("linf",),
    label="branch and bound",
    summary="complete verification by beta-CROWN branch and bound on ReLU splits (input splitting for "
    "<= 10 inputs): robust, counterexample or unknown, for the float32 network",
    reference="Wang et al. 2021, Beta-CROWN: Efficient Bound Propagation with Per-neuron Split Constraints "
    "for Neural Network Robustness Verification",
)
