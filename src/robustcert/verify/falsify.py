"""Falsification: search an input box for a float32 point whose outputs satisfy a conjunction ``C y <= d``.

Random sampling inside the box, then PGD from the best samples (and the box centre) on the objective
``max_r (C f(x) − d)_r`` (a point with objective <= 0 satisfies every row), with sign-gradient steps scaled
to each input's width and a decreasing schedule, every iterate clamped into the float32 box. It is a
heuristic: a failure proves nothing. A point is returned only after :func:`check_counterexample` has
confirmed it exactly: inside the spec's real box, and the model's float32 forward pass at batch size 1
satisfies every exact row of the conjunction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustcert.seeding import torch_generator
from robustcert.vnnlib.spec import Conjunction, InputBox


@dataclass(frozen=True)
class AttackBudget:
    """How hard to search one (box, conjunction) pair: uniform ``samples``, then ``restarts`` PGD runs of
    ``steps`` steps (initial step ``step`` × the box width per input)."""

    samples: int = 512
    restarts: int = 8
    steps: int = 50
    step: float = 0.25


def float32_box(box: InputBox) -> tuple[Tensor, Tensor] | None:
    """The float32 box ``[lo32, hi32]`` of the float32 points inside the spec's real box, or None if some
    input has no float32 value inside it."""
    lo32, hi32 = box.lo_in.to(torch.float32), box.hi_in.to(torch.float32)
    lo32 = torch.where(
        lo32.double() < box.lo_in, torch.nextafter(lo32, torch.full_like(lo32, torch.inf)), lo32
    )
    hi32 = torch.where(
        hi32.double() > box.hi_in, torch.nextafter(hi32, torch.full_like(hi32, -torch.inf)), hi32
    )
    if bool((lo32 > hi32).any()):
        return None
    return lo32, hi32


def forward32(model: nn.Module, x: Tensor, input_shape: tuple[int, ...]) -> Tensor:
    """The model's float32 outputs, flattened per example ([B, K])."""
    out = model(x.reshape((x.shape[0], *input_shape)).to(torch.float32))
    return out.reshape(x.shape[0], -1)


def check_counterexample(
    model: nn.Module, input_shape: tuple[int, ...], box: InputBox, conj: Conjunction, x: Tensor
) -> Tensor | None:
    """The float32 outputs at ``x`` (flat float32 input) if ``x`` lies in the real box and the model's
    float32 forward pass at batch size 1 satisfies every exact row of ``conj``; else None."""
    x = x.detach().reshape(1, -1).to(torch.float32)
    if not box.contains(x):
        return None
    with torch.no_grad():
        y = forward32(model, x, input_shape)[0]
    if not bool(torch.isfinite(y).all()) or not conj.satisfied_by(y):
        return None
    return y


def _objective(model: nn.Module, x: Tensor, input_shape: tuple[int, ...], C: Tensor, d: Tensor) -> Tensor:
    y = forward32(model, x, input_shape).double()
    return (y @ C.T - d).amax(dim=1)


def falsify(
    model: nn.Module,
    input_shape: tuple[int, ...],
    box: InputBox,
    conj: Conjunction,
    *,
    seed: int,
    budget: AttackBudget = AttackBudget(),
    deadline: float = float("inf"),
) -> tuple[Tensor, Tensor] | None:
    """A checked counterexample ``(x, y)`` (flat float32 input and output) for the pair, or None.

    Guarantee: a returned ``x`` passed :func:`check_counterexample`. Stops early at ``deadline``
    (``time.monotonic()``)."""
    fbox = float32_box(box)
    if fbox is None:
        return None
    lo, hi = fbox
    centre = torch.minimum(torch.maximum((lo + (hi - lo) / 2), lo), hi).unsqueeze(0)
    if conj.num_rows == 0:  # any input violates the property
        y = check_counterexample(model, input_shape, box, conj, centre[0])
        return None if y is None else (centre[0], y)
    C, d = conj.C, conj.d
    gen = torch_generator(seed)
    candidates: list[tuple[float, Tensor]] = []
    with torch.no_grad():
        xs = [centre]
        n = max(0, budget.samples)
        for b0 in range(0, n, 256):
            m = min(256, n - b0)
            xs.append(torch.minimum(lo + torch.rand((m, lo.numel()), generator=gen) * (hi - lo), hi))
        pool = torch.cat(xs)
        obj = torch.cat(
            [_objective(model, pool[i : i + 256], input_shape, C, d) for i in range(0, len(pool), 256)]
        )
    order = torch.argsort(obj)
    for k in order[:4].tolist():
        candidates.append((float(obj[k]), pool[k]))
    found = _check_best(model, input_shape, box, conj, candidates)
    if found is not None or budget.restarts <= 0 or time.monotonic() > deadline:
        return found
    starts = pool[order[: budget.restarts]].clone()
    width = (hi - lo).unsqueeze(0)
    cur = starts
    best_obj = torch.full((len(cur),), torch.inf, dtype=torch.float64)
    best_x = cur.clone()
    for t in range(budget.steps + 1):
        cur = cur.detach().requires_grad_(True)
        o = _objective(model, cur, input_shape, C, d)
        better = o.detach() < best_obj
        best_obj = torch.where(better, o.detach(), best_obj)
        best_x = torch.where(better.unsqueeze(1), cur.detach(), best_x)
        if t == budget.steps or time.monotonic() > deadline:
            break
        (grad,) = torch.autograd.grad(o.sum(), cur)
        size = budget.step * (1.0 - t / budget.steps) + 1e-3
        cur = torch.minimum(torch.maximum(cur.detach() - size * width * grad.sign(), lo), hi)
    ranked = torch.argsort(best_obj)[:4].tolist()
    return _check_best(model, input_shape, box, conj, [(float(best_obj[k]), best_x[k]) for k in ranked])


def _check_best(
    model: nn.Module,
    input_shape: tuple[int, ...],
    box: InputBox,
    conj: Conjunction,
    cands: list[tuple[float, Tensor]],
) -> tuple[Tensor, Tensor] | None:
    for value, x in sorted(cands, key=lambda c: c[0]):
        if value > 1e-6 * (1 + abs(value)):
            break
        y = check_counterexample(model, input_shape, box, conj, x)
        if y is not None:
            return x.detach().clone(), y
    return None
