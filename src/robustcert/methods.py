"""Adapters from each certification method to the run engine's one interface.

``make_certifier(method, model, params)`` returns ``certify_example(x, y, index, seed) -> rows`` with the
row fields of DESIGN.md's ``results.jsonl`` contract. This is the only place that knows every method;
the engine and the report see rows only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.validation import check_eps

Row = dict[str, Any]
CertifyExample = Callable[[torch.Tensor, int, int, int], list[Row]]
BOUND_METHODS = ("ibp", "crown", "alpha-crown")
METHODS = ("smoothing", *BOUND_METHODS, "exact", "pgd")


def parse_eps_list(text: str | Sequence[float]) -> list[float]:
    """``"0.01,0.02"`` (or a list) → floats, each finite and ≥ 0."""
    try:
        values = [
            float(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip() != ""
        ]
    except ValueError as exc:
        raise RobustCertError(f"--eps must be numbers separated by commas, got {text!r}") from exc
    if not values:
        raise RobustCertError("--eps needs at least one value")
    return [check_eps(v) for v in values]


@contextmanager
def single_thread() -> Iterator[None]:
    """Run per-example work on one torch thread: for batch-1 bound propagation, attacks and MILP encoding,
    thread synchronisation costs more than it saves (100x slower on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _clean_prediction(model: nn.Module, x: torch.Tensor) -> int:
    return int(model(x.unsqueeze(0)).argmax(1))


def smoothing_certifier(
    model: nn.Module, num_classes: int, sigma: float, n0: int, n: int, alpha: float, batch_size: int
) -> CertifyExample:
    """Rows of Cohen et al.'s CERTIFY; each holds with probability ≥ 1 − alpha over the sampling."""
    from robustcert.smoothing import SmoothedClassifier

    smoothed = SmoothedClassifier(model, sigma=sigma, num_classes=num_classes)

    def certify_example(x: torch.Tensor, y: int, index: int, seed: int) -> list[Row]:
        cert = smoothed.certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed)
        return [
            {
                "index": index,
                "label": y,
                "method": "smoothing",
                "prediction": int(cert.prediction),
                "correct": int(cert.prediction) == y,
                "certified": int(cert.prediction) != -1,
                "radius": float(cert.radius),
                "sigma": sigma,
                "n0": n0,
                "n": n,
                "count": int(cert.count),
                "pA_lower": float(cert.pA_lower),
                "alpha": alpha,
                "base_correct": _clean_prediction(model, x) == y,
            }
        ]

    return certify_example


class BoundCertifier:
    """Rows of a deterministic bound method, one per eps: ``certified`` only if the example is classified
    correctly and every margin lower bound f_y − f_j (j ≠ y) over the ball is > 0. Batched over examples
    (``certify_batch``); the model is converted to the graph IR once."""

    def __init__(
        self,
        model: nn.Module,
        method: str,
        norm: str,
        eps_list: Sequence[float],
        batch_size: int = 32,
        **options: Any,
    ) -> None:
        self.model, self.method, self.norm, self.eps_list = model, method, norm, list(eps_list)
        self.batch_size, self.options = batch_size, options
        self._graph: Any = None

    def __call__(self, x: torch.Tensor, y: int, index: int, seed: int) -> list[Row]:
        return self.certify_batch(x.unsqueeze(0), [y], [index], [seed])[0]

    def certify_batch(
        self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]
    ) -> list[list[Row]]:
        from robustcert.bounds import margin_lower

        if self._graph is None:
            from robustcert.graph import to_graph

            self._graph = to_graph(self.model, tuple(xs.shape[1:]))
        labels = torch.tensor(ys)
        with single_thread(), torch.no_grad():
            preds = self.model(xs).argmax(1).tolist()
        out: list[list[Row]] = [[] for _ in ys]
        for eps in self.eps_list:
            with single_thread():
                m = margin_lower(
                    self._graph, xs, labels, eps=eps, norm=self.norm, method=self.method, **self.options
                )
            worst = m.min(dim=1).values.tolist()
            for k, (index, y, pred) in enumerate(zip(indices, ys, preds, strict=True)):
                out[k].append(
                    {
                        "index": index,
                        "label": y,
                        "method": self.method,
                        "prediction": pred,
                        "correct": pred == y,
                        "certified": bool(pred == y and worst[k] > 0),
                        "norm": self.norm,
                        "eps": float(eps),
                        "margin_lower": float(worst[k]),
                    }
                )
        return out


def bound_certifier(
    model: nn.Module, method: str, norm: str, eps_list: Sequence[float], **options: Any
) -> BoundCertifier:
    """A :class:`BoundCertifier` (callable per example, with ``certify_batch`` for chunks)."""
    return BoundCertifier(model, method, norm, eps_list, **options)


def exact_certifier(
    model: nn.Module, norm: str, eps_list: Sequence[float], time_limit: float
) -> CertifyExample:
    """Rows of the exact MILP verifier: certified only when the MILP proves the minimum margin > 0."""
    from robustcert.exact import exact_margin

    if norm != "linf":
        raise RobustCertError("the exact MILP verifier supports --norm linf only")

    graph: Any = None

    def certify_example(x: torch.Tensor, y: int, index: int, seed: int) -> list[Row]:
        nonlocal graph
        if graph is None:
            from robustcert.graph import to_graph

            graph = to_graph(model, tuple(x.shape))  # converted once per run, not per example and eps
        rows = []
        pred = _clean_prediction(model, x)
        for eps in eps_list:
            with single_thread():
                res = exact_margin(graph, x.unsqueeze(0), y, eps=eps, time_limit=time_limit)
            rows.append(
                {
                    "index": index,
                    "label": y,
                    "method": "exact",
                    "prediction": pred,
                    "correct": pred == y,
                    "certified": bool(pred == y and res.status == "robust"),
                    "norm": norm,
                    "eps": float(eps),
                    "margin_lower": None if res.min_margin is None else float(res.min_margin),
                    "status": res.status,
                }
            )
        return rows

    return certify_example


class PGDCertifier:
    """Rows of a PGD attack per eps: ``attack_success`` when the example is misclassified or PGD finds a
    misclassified point in the ball. Batched over examples; each example's random starts come from its
    own seed, so its row does not depend on the other examples in the batch."""

    def __init__(
        self,
        model: nn.Module,
        norm: str,
        eps_list: Sequence[float],
        steps: int,
        restarts: int,
        batch_size: int = 32,
    ) -> None:
        self.model, self.norm, self.eps_list = model, norm, list(eps_list)
        self.steps, self.restarts, self.batch_size = steps, restarts, batch_size

    def __call__(self, x: torch.Tensor, y: int, index: int, seed: int) -> list[Row]:
        return self.certify_batch(x.unsqueeze(0), [y], [index], [seed])[0]

    def certify_batch(
        self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]
    ) -> list[list[Row]]:
        from robustcert.attacks import pgd_attack

        with single_thread(), torch.no_grad():
            preds = self.model(xs).argmax(1).tolist()
        out: list[list[Row]] = [[] for _ in ys]
        for eps in self.eps_list:
            with single_thread():
                res = pgd_attack(
                    self.model,
                    xs,
                    torch.tensor(ys),
                    eps=eps,
                    norm=self.norm,
                    steps=self.steps,
                    restarts=self.restarts,
                    seed=[s % (2**63) for s in seeds],
                )
            margins = res.adv_margin.tolist()
            for k, (index, y, pred) in enumerate(zip(indices, ys, preds, strict=True)):
                out[k].append(
                    {
                        "index": index,
                        "label": y,
                        "method": "pgd",
                        "prediction": pred,
                        "correct": pred == y,
                        "certified": False,
                        "norm": self.norm,
                        "eps": float(eps),
                        "attack_success": bool(pred != y or margins[k] < 0),
                        "adv_margin": float(margins[k]),
                    }
                )
        return out


def pgd_certifier(
    model: nn.Module, norm: str, eps_list: Sequence[float], steps: int, restarts: int
) -> PGDCertifier:
    """A :class:`PGDCertifier` (callable per example, with ``certify_batch`` for chunks)."""
    return PGDCertifier(model, norm, eps_list, steps, restarts)
