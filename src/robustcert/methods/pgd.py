"""PGD (Madry et al. 2018) as a method: an attack, never a certificate. Its accuracy is an upper limit on
robust accuracy, and every deterministic certificate is checked against it in the report card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robustcert.domain import InputDomain
from robustcert.methods.base import BudgetParams, Method, ModelInfo, param
from robustcert.rows import AttackRow, Row


@dataclass(frozen=True, kw_only=True)
class PGDParams(BudgetParams):
    eps: tuple[float, ...] = param((0.05, 0.1), help="budgets (one or a comma-separated list)", min=0.0)
    steps: int = param(50, help="gradient steps per restart", min=1)
    restarts: int = param(3, help="restarts (the first from the clean input)", min=1)
    batch: int = param(32, help="examples attacked together", min=1)


class PGDCertifier:
    """Rows of a PGD attack per eps, batched; each example's random starts come from its own seed. The
    attack searches ``B(x, eps) ∩ domain`` (the model's input domain, default [0, 1]), the same set the
    certificates are about, so a successful attack contradicts any certificate at that eps."""

    def __init__(self, model: nn.Module, params: PGDParams, domain: InputDomain | None = None) -> None:
        self.model, self.params = model, params
        self.domain = InputDomain.coerce(domain)
        self.batch_size = params.batch
        self.rows_per_example = len(params.eps)

    def certify_batch(
        self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]
    ) -> list[list[Row]]:
        from robustcert.attacks import pgd_attack

        with torch.no_grad():
            preds = self.model(xs).argmax(1).tolist()
        out: list[list[Row]] = [[] for _ in ys]
        for eps in self.params.eps:
            res = pgd_attack(
                self.model, xs, torch.tensor(ys), eps=eps, norm=self.params.norm,
                steps=self.params.steps, restarts=self.params.restarts, seed=list(seeds), domain=self.domain,
            )
            margins = res.adv_margin.tolist()
            for k, (index, y, pred) in enumerate(zip(indices, ys, preds, strict=True)):
                out[k].append(
                    AttackRow(
                        index=index,
                        label=y,
                        method="pgd",
                        prediction=pred,
                        correct=pred == y,
                        certified=False,
                        norm=self.params.norm,
                        eps=float(eps),
                        attack_success=bool(pred != y or margins[k] < 0),
                        adv_margin=float(margins[k]),
                    )
                )
        return out


def build(model: nn.Module, info: ModelInfo, params: PGDParams, log_path: Path | None) -> PGDCertifier:
    return PGDCertifier(model, params, domain=info.domain)


PGD = Method(
    name="pgd",
    family="attack",
    params=PGDParams,
    build=build,
    label="PGD",
    summary="projected gradient descent (L∞ or L2): an empirical upper limit, used to try to break certificates",
    reference="Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks",
)
