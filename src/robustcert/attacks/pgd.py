"""Projected gradient descent (Madry et al., 2018) on a base model, for L∞ and L2 balls.

The attack searches the threat set ``B(x, eps) ∩ D`` for an input with a low margin
``f_y(x') − max_{j≠y} f_j(x')``, where ``D`` is the model's input domain (``domain=``, an
:class:`~robustcert.domain.InputDomain` or anything :meth:`~robustcert.domain.InputDomain.coerce` takes:
per-channel boxes ``[lo_c, hi_c]``, a side may be ±inf; default [0, 1]). It is a heuristic: a failed
attack proves nothing, but every point it returns is checked to lie in the threat set, so a *successful*
attack (margin < 0) is a real counterexample to any certificate at that eps over that domain.

Step schedule (documented contract):

* step size ``alpha`` defaults to ``2.5 · eps / steps`` (Madry et al.), for both norms;
* it is halved after 75 % of the steps and halved again after 90 % of the steps, so the total path length
  (0.85 · 2.5 · eps ≈ 2.1 · eps) still crosses the whole L∞ ball from any random start;
* L∞ steps are ``alpha · sign(grad)``; L2 steps are ``alpha · grad / ||grad||_2`` (per example);
* with ``restarts >= 2`` run 0 starts at the clean input and the others at uniform random points of the
  ball (seeded); the best point (lowest margin) over every iterate of every run is returned.
  :func:`perturb_for_training` uses one random start and a constant step instead.

Projection: L∞ — clamp to ``[max(lo, x − eps'), min(hi, x + eps')]`` with the domain's per-channel
``lo``/``hi`` (the exact projection onto the intersection of two boxes). L2 — scale the perturbation onto
the L2 ball, then clip to the domain box. Because ``x`` is in the box, clipping only moves each coordinate
of the perturbation towards 0, so the result stays in the ball; it is a feasible point of the
intersection, not always its exact Euclidean projection. Unbounded sides (±inf) simply never clip.

Here ``eps'`` is ``eps`` shrunk by a tiny amount (relative 1e-6 plus 2.4e-7 absolute for L∞, relative 1e-5
for L2) so that float32 rounding can never carry a returned point outside the ball; every returned point is
verified in float64 against the ball and the domain's float64 bounds (and nudged by one ulp where rounding
put it on the wrong side of a bound — e.g. a bound like 0.7 that float32 cannot represent).

Inputs: ``x`` must lie in the domain. Values at most 1e-6 (relative to the bound's magnitude, at least
absolute) outside it are moved onto it first, as for [0, 1] before domains existed; anything further out
is refused with :meth:`~robustcert.domain.InputDomain.check_data`'s one-line error. The ball is centred at
the moved ``x``, which lies in the domain exactly (float64 bounds), so the threat set is never empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError
from robustcert.models.modes import eval_mode
from robustcert.seeding import torch_generator
from robustcert.validation import check_eps, check_norm

LOSSES = ("margin", "ce")

# Shrinks that keep returned points strictly inside the ball despite float32 rounding.
_LINF_REL_SHRINK = 1e-6
_LINF_ABS_SHRINK = 2.4e-7  # two float32 ulps at 1.0
_L2_REL_SHRINK = 1e-5
_BOX_TOL = 1e-6  # how far outside the domain a clean input may be (times max(1, |bound|); it is then clipped)

# The domain box as broadcastable (lo, hi) tensors (InputDomain.tensors), in the dtype they are used in.
_Box = tuple[torch.Tensor, torch.Tensor]


@dataclass
class AttackResult:
    """Outcome of :func:`pgd_attack` for a batch.

    ``x_adv`` lies in ``B(x, eps) ∩ domain`` (checked in float64); ``adv_margin`` is
    ``f_y − max_{j≠y} f_j`` from a forward pass of the model (eval mode) at ``x_adv``; ``success`` is
    ``adv_margin < 0``, i.e. the model misclassifies ``x_adv``; ``clean_margin`` is the margin at ``x``.
    """

    x_adv: torch.Tensor
    adv_margin: torch.Tensor
    success: torch.Tensor
    clean_margin: torch.Tensor


def _margin_from_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y.view(-1, 1), float("-inf"))
    return true - others.max(dim=1).values


def _to_dtype_inside(
    a64: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``a64`` (float64, inside ``[lo, hi]``; float64 bounds) rounded to ``dtype`` and stepped back by one ulp
    where rounding crossed a bound. The result lies in ``[lo, hi]`` whenever the box holds a value of
    ``dtype`` (it does when it contains the attack's centre ``x``, which is one): the value of ``dtype``
    just inside the crossed bound is then no further in than that value."""
    out = a64.to(dtype)
    out = torch.where(out.double() > hi, torch.nextafter(out, torch.full_like(out, -math.inf)), out)
    return torch.where(out.double() < lo, torch.nextafter(out, torch.full_like(out, math.inf)), out)


def _into_domain(x: torch.Tensor, domain: InputDomain) -> torch.Tensor:
    """``x`` moved onto ``domain`` where it lies at most ``_BOX_TOL · max(1, |bound|)`` outside it; the
    result lies in the domain exactly (float64 bounds). RobustCertError (``domain.check_data``) for a
    value further out, or when no value of x's dtype lies in a channel's range."""
    x64 = x.double()
    lo, hi = domain.tensors(x64)
    if domain.contains(x64):
        return x
    far = (x64 < lo - _BOX_TOL * lo.abs().clamp(min=1.0)) | (x64 > hi + _BOX_TOL * hi.abs().clamp(min=1.0))
    if bool(far.any()):
        domain.check_data(x, "x")
        raise RobustCertError(f"the input domain excludes x: it has values outside {domain}")  # float64 only
    out = _to_dtype_inside(torch.maximum(torch.minimum(x64, hi), lo), lo, hi, x.dtype)
    if not domain.contains(out.double()):
        raise RobustCertError(
            f"no {str(x.dtype).removeprefix('torch.')} value lies in the input domain {domain} near x; "
            "widen the range (e.g. by 1e-6) or pass float64 inputs"
        )
    return out


def _check_inputs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, domain: Any = None
) -> tuple[torch.Tensor, torch.Tensor, int, InputDomain]:
    """Validate a batch, the domain and the labels against the model's output; returns (x moved into the
    domain — see the module docstring —, y long, K, the domain)."""
    if not isinstance(model, nn.Module):
        raise RobustCertError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dom = InputDomain.coerce(domain)
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise RobustCertError(
            f"x must be a floating-point torch.Tensor of shape [B, ...] with values in the input domain {dom}"
        )
    if x.ndim < 2:
        raise RobustCertError(f"x must be batched with shape [B, ...], got shape {tuple(x.shape)}")
    if bool(torch.isnan(x).any()) or bool(torch.isinf(x).any()):
        raise RobustCertError(f"x contains NaN or inf values; pass finite inputs in the input domain {dom}")
    dom.check_channels(tuple(x.shape[1:]), "input domain")
    x = _into_domain(x, dom)
    y = torch.as_tensor(y)
    if y.ndim == 0:
        y = y.view(1)
    if y.ndim != 1 or (torch.is_floating_point(y) and bool((y != y.round()).any())):
        raise RobustCertError(f"y must be a 1-D tensor of integer labels, got shape {tuple(y.shape)}")
    if y.shape[0] != x.shape[0]:
        raise RobustCertError(
            f"x has {x.shape[0]} examples but y has {y.shape[0]} labels; pass one label per example"
        )
    y = y.long().to(x.device)
    with torch.no_grad(), eval_mode(model):
        try:
            logits = model(x[:1])
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RobustCertError(
                f"model failed on an input of shape {tuple(x.shape[1:])} (shape mismatch?): {first}"
            ) from None
    if logits.ndim != 2:
        raise RobustCertError(f"model must return logits of shape [B, K], got shape {tuple(logits.shape)}")
    num_classes = int(logits.shape[1])
    if num_classes < 2:
        raise RobustCertError(f"model must have at least 2 classes, it has {num_classes}")
    if bool((y < 0).any()) or bool((y >= num_classes).any()):
        raise RobustCertError(
            f"labels y must be in [0, {num_classes - 1}] for this {num_classes}-class model"
        )
    return x, y, num_classes, dom


def margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, domain: Any = None) -> torch.Tensor:
    """``f_y(x) − max_{j≠y} f_j(x)`` per example (shape [B]); negative means misclassified.

    ``x`` must lie in ``domain`` (default [0, 1]; see the module docstring for the tolerance), else
    RobustCertError. The model runs in eval mode under ``torch.no_grad`` and its mode is restored.
    """
    x, y, _, _ = _check_inputs(model, x, y, domain)
    with torch.no_grad(), eval_mode(model):
        return _margin_from_logits(model(x), y)


def _inner_eps(eps: float, norm: str) -> float:
    if norm == "linf":
        return max(0.0, eps * (1.0 - _LINF_REL_SHRINK) - _LINF_ABS_SHRINK)
    return eps * (1.0 - _L2_REL_SHRINK)


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps_in: float, norm: str, box: _Box) -> torch.Tensor:
    """A point of ``B(x, eps_in) ∩ box`` (up to rounding; ``x`` in the box): the exact projection for L∞,
    scale-then-clip for L2 (module docstring)."""
    dlo, dhi = box
    if norm == "linf":
        lo = torch.maximum(x - eps_in, dlo)
        hi = torch.minimum(x + eps_in, dhi)
        return torch.max(torch.min(x_adv, hi), lo)
    delta = x_adv - x
    scale = (eps_in / _flat_norm(delta).clamp(min=1e-30)).clamp(max=1.0)
    return torch.maximum(torch.minimum(x + delta * scale, dhi), dlo)


def _random_start(
    x: torch.Tensor, eps_in: float, norm: str, box: _Box, generator: torch.Generator
) -> torch.Tensor:
    """A uniform point of the ball ``B(x, eps_in)``, projected into ``box``."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return _project(x + (2 * u - 1) * eps_in, x, eps_in, norm, box)
    # uniform in the L2 ball: Gaussian direction, radius eps * U^(1/d)
    d = x[0].numel()
    g = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    g = g / _flat_norm(g).clamp(min=1e-30)
    r = torch.rand((x.shape[0],), generator=generator, dtype=x.dtype, device=x.device) ** (1.0 / d)
    return _project(x + g * (eps_in * r).view(-1, *([1] * (x.ndim - 1))), x, eps_in, norm, box)


def _enforce_ball(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, domain: InputDomain
) -> torch.Tensor:
    """Return ``x_adv`` guaranteed (checked in float64) to lie in ``B(x, eps) ∩ domain``, with the domain's
    float64 per-channel bounds; ``x`` must lie in the domain exactly (as :func:`_into_domain` leaves it)."""
    x64, a64 = x.double(), x_adv.detach().double()
    dlo, dhi = domain.tensors(x64)
    if norm == "linf":
        eps_in = _inner_eps(eps, norm)
        lo = torch.maximum(x64 - eps_in, dlo)
        hi = torch.minimum(x64 + eps_in, dhi)
        # float rounding may have crossed a bound by one ulp: step back inside
        out = _to_dtype_inside(torch.max(torch.min(a64, hi), lo), lo, hi, x.dtype)
        ok = ((out.double() - x64).abs() <= eps).all() and domain.contains(out.double())
    else:
        # clipping to the box moves coordinates towards x (which is in the box): the norm only shrinks
        out = _to_dtype_inside(torch.maximum(torch.minimum(a64, dhi), dlo), dlo, dhi, x.dtype)
        for _ in range(5):
            norms = (out.double() - x64).flatten(1).norm(dim=1)
            bad = norms > eps * (1.0 - 0.5 * _L2_REL_SHRINK)
            if not bool(bad.any()):
                break
            scale = (eps * (1.0 - 2 * _L2_REL_SHRINK) / norms.clamp(min=1e-300)).clamp(max=1.0)
            delta = (out.double() - x64) * scale.view(-1, *([1] * (x.ndim - 1)))
            inside = _to_dtype_inside(torch.maximum(torch.minimum(x64 + delta, dhi), dlo), dlo, dhi, x.dtype)
            out = torch.where(bad.view(-1, *([1] * (x.ndim - 1))), inside, out)
        norms = (out.double() - x64).flatten(1).norm(dim=1)
        ok = (norms <= eps).all() and domain.contains(out.double())
    if not bool(ok):  # pragma: no cover - a bug, not a user error
        raise AssertionError("PGD produced a point outside the threat set; please report this")
    return out


def _attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example loss to *maximise*."""
    if loss == "margin":
        return -_margin_from_logits(logits, y)
    return F.cross_entropy(logits, y, reduction="none")


def _step_sizes(alpha: float, steps: int) -> list[float]:
    sizes = []
    for t in range(steps):
        factor = 1.0
        if t >= steps * 0.75:
            factor *= 0.5
        if t >= steps * 0.9:
            factor *= 0.5
        sizes.append(alpha * factor)
    return sizes


def _input_grad(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed attack loss w.r.t. the input (no parameter grads) and the margins at x_adv."""
    with torch.enable_grad():
        x_req = x_adv.detach().requires_grad_(True)
        logits = model(x_req)
        objective = _attack_loss(logits, y, loss).sum()
        (grad,) = torch.autograd.grad(objective, x_req)
    return grad, _margin_from_logits(logits.detach(), y)


def _ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, size: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return x_adv + size * grad.sign()
    return x_adv + size * grad / _flat_norm(grad).clamp(min=1e-30)


def _check_schedule(steps: int, step_size: float | None, eps: float) -> tuple[int, float]:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise RobustCertError(f"steps must be an integer >= 0, got {steps!r}")
    if step_size is None:
        alpha = 2.5 * eps / max(steps, 1)
    else:
        alpha = float(step_size)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise RobustCertError(
                f"step_size must be a finite number > 0 (or None for 2.5*eps/steps), got {step_size!r}"
            )
    return steps, alpha


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "linf",
    steps: int = 50,
    step_size: float | None = None,
    restarts: int = 3,
    random_start: bool = True,
    seed: int | Sequence[int] = 0,
    loss: str = "margin",
    *,
    domain: Any = None,
) -> torch.Tensor:
    """Adversarial inputs for a batch ``x`` ([B, C, ...], values in ``domain``) with labels ``y`` ([B]).

    ``domain`` is the model's input domain (an InputDomain, ``"LO,HI"``, ``(lo, hi)`` or per-channel
    pairs; default None = [0, 1], the behaviour before domains existed, bit for bit); x outside it is
    refused (RobustCertError). Runs ``restarts`` PGD runs of ``steps`` steps each (schedule in the module
    docstring) and returns, per example, the point with the lowest margin ``f_y − max_{j≠y} f_j`` among
    every iterate of every run (the clean input included). Guarantee: every returned point lies in
    ``B(x, eps) ∩ domain`` for the given ``norm`` (verified in float64 against the domain's float64
    bounds). Starts: run 0 starts at ``x`` itself when ``random_start`` is False or when
    ``restarts >= 2`` (a run from the clean point often finds what random starts miss);
    every other run starts at a uniform point of the ball, drawn from a generator seeded with ``seed``
    (so results repeat exactly); ``seed`` may also be one seed per example, which makes each example's
    starts independent of the rest of the batch.
    ``loss`` is the ascent objective: ``"margin"`` (−margin, Carlini–Wagner style) or ``"ce"``.
    The model runs in eval mode and its mode is restored; parameter gradients are not touched.
    """
    x_adv, _ = _pgd_impl(model, x, y, eps, norm, steps, step_size, restarts, random_start, seed, loss, domain)
    return x_adv


def _generators(seed: int | Sequence[int], batch: int, device: torch.device) -> list[torch.Generator]:
    """One generator for the batch (an int seed), or one per example (a sequence of B seeds), so that an
    example's random starts do not depend on which other examples share its batch."""
    seeds = [int(seed)] if isinstance(seed, int) else [int(s) for s in seed]
    if not isinstance(seed, int) and len(seeds) != batch:
        raise RobustCertError(
            f"seed must be an int or one seed per example ({batch}), got {len(seeds)} seeds"
        )
    return [torch_generator(s, device) for s in seeds]


def _random_starts(
    x: torch.Tensor, eps_in: float, norm: str, box: _Box, generators: list[torch.Generator]
) -> torch.Tensor:
    if len(generators) == 1:
        return _random_start(x, eps_in, norm, box, generators[0])
    return torch.cat([_random_start(x[b : b + 1], eps_in, norm, box, g) for b, g in enumerate(generators)])


def _pgd_impl(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    steps: int,
    step_size: float | None,
    restarts: int,
    random_start: bool,
    seed: int | Sequence[int],
    loss: str,
    domain: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    eps = check_eps(eps)
    norm = check_norm(norm)
    if loss not in LOSSES:
        raise RobustCertError(f"unknown attack loss {loss!r}; use one of: {', '.join(LOSSES)}")
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
        raise RobustCertError(f"restarts must be an integer >= 1, got {restarts!r}")
    steps, alpha = _check_schedule(steps, step_size, eps)
    x, y, _, dom = _check_inputs(model, x, y, domain)
    x = x.detach()
    box = dom.tensors(x)
    eps_in = _inner_eps(eps, norm)
    sizes = _step_sizes(alpha, steps)
    generators = _generators(seed, x.shape[0], x.device)
    view = (-1,) + (1,) * (x.ndim - 1)

    with eval_mode(model):
        with torch.no_grad():
            best_x = x.clone()
            best_m = _margin_from_logits(model(x), y)
        if eps_in > 0:
            for r in range(restarts):
                if r > 0 or (random_start and restarts == 1):
                    cur = _random_starts(x, eps_in, norm, box, generators)
                else:
                    cur = x.clone()
                for t in range(steps + 1):
                    grad, m = _input_grad(model, cur, y, loss)
                    better = m < best_m
                    best_m = torch.where(better, m, best_m)
                    best_x = torch.where(better.view(view), cur, best_x)
                    if t == steps:
                        break
                    cur = _project(_ascent_step(cur, grad, sizes[t], norm), x, eps_in, norm, box).detach()
        out = _enforce_ball(best_x, x, eps, norm, dom)
        with torch.no_grad():
            final_m = _margin_from_logits(model(out), y)
    return out, final_m


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "linf",
    steps: int = 50,
    step_size: float | None = None,
    restarts: int = 3,
    random_start: bool = True,
    seed: int | Sequence[int] = 0,
    loss: str = "margin",
    *,
    domain: Any = None,
) -> AttackResult:
    """:func:`pgd` (same arguments, ``domain`` included) plus the margins: see :class:`AttackResult` for
    what each field guarantees."""
    x_adv, adv_margin = _pgd_impl(
        model, x, y, eps, norm, steps, step_size, restarts, random_start, seed, loss, domain
    )
    clean = margin(model, x, y, domain=domain)
    return AttackResult(x_adv=x_adv, adv_margin=adv_margin, success=adv_margin < 0, clean_margin=clean)


def perturb_for_training(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "linf",
    steps: int = 7,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    *,
    domain: Any = None,
) -> torch.Tensor:
    """PGD inputs for adversarial training (Madry et al.): cross-entropy ascent, one uniform random start
    drawn from ``generator``, constant step size (default ``2.5 · eps / steps``), last iterate returned.

    ``x`` must lie in ``domain`` (default None = [0, 1]; as in :func:`pgd`). The result is detached and
    lies in ``B(x, eps) ∩ domain`` (verified in float64). The attack runs with the model in eval mode;
    every module's mode is restored afterwards (so a training loop can call this in train mode), and no
    parameter gradients are accumulated.
    """
    eps = check_eps(eps)
    norm = check_norm(norm)
    steps, alpha = _check_schedule(steps, step_size, eps)
    x, y, _, dom = _check_inputs(model, x, y, domain)
    x = x.detach()
    box = dom.tensors(x)
    if generator is None:
        generator = torch_generator(0, x.device)
    eps_in = _inner_eps(eps, norm)
    if eps_in == 0:
        return x.clone()
    with eval_mode(model):
        cur = _random_start(x, eps_in, norm, box, generator)
        for _ in range(steps):
            grad, _m = _input_grad(model, cur, y, "ce")
            cur = _project(_ascent_step(cur, grad, alpha, norm), x, eps_in, norm, box).detach()
    return _enforce_ball(cur, x, eps, norm, dom)
