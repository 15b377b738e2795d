"""A first-order solver of the SDP's dual in PyTorch (the idea of SDP-FO, Dathathri et al. 2020), batched
over the class pairs of one example.

It maximises the dual function of :mod:`.dual` in its Schur form,

    q(multipliers) = max_mu0  mu0 + T_h min(0, lambda_min(R(multipliers) - mu0 e0 e0')),

a concave function of the multipliers, by projected Adam. ``R`` is ``(1 + H)``-square (``H`` the unstable
ReLUs), so one step costs one small batched eigendecomposition plus the product that eliminates the
inputs, taken through a low-rank factor ``Px = Cx V'`` of the ReLUs' input coefficients (rank at most
the first layer's width) — no ``N x N`` matrix. The inner ``mu0`` is
solved exactly through the secular equation of ``R``'s ReLU block, and Danskin's theorem gives the
supergradient ``u u'`` (``u = [1; -(S - lam)^-1 r]`` at the optimal eigenvalue ``lam``) in both of its
regimes (optimum at ``lam < 0`` or on the boundary ``lam = 0``).

Box multipliers are ``exp`` of a parameter (the inputs' must stay > 0 for the Schur form), the linear
ones are projected onto ``>= 0``, the ReLU equalities' are free. The box multipliers start at an
interval-style dual point (``2 |g| / width``: the margin's linear part minimised over the boxes). With
``stop_when_proven`` a class whose value passes its target leaves the batch, the others continuing from
their multipliers and Adam moments (a warm restart on fewer classes: each step gets cheaper); a
plateau sends every open class back to its best point at a quarter of the step (three times, then
stop), and a class that cannot close its gap at its recent rate stops early. Nothing here is a bound:
the returned multipliers (the best seen per class) are certified by
:func:`robustcert.sdp.dual.certified_bound`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from robustcert.sdp.dual import Multipliers, secular_optimum
from robustcert.sdp.encode import QuadraticProgram


@dataclass
class FirstOrderResult:
    multipliers: list[Multipliers]
    values: list[float]  # best in-loop dual value per class (not certified)
    iterations: int
    status: str


def _shrink(
    params: list[torch.Tensor], opt: torch.optim.Adam, keep: torch.Tensor
) -> tuple[list[torch.Tensor], torch.optim.Adam]:
    """The parameters' rows ``keep`` as new leaves, with a new Adam at the current learning rates whose
    moments and step counts are the old ones' rows."""
    new = [p.detach()[keep].clone().requires_grad_(True) for p in params]
    index = {id(p): q for p, q in zip(params, new, strict=True)}
    groups = [
        {**{k: v for k, v in grp.items() if k != "params"}, "params": [index[id(p)] for p in grp["params"]]}
        for grp in opt.param_groups
    ]
    fresh = torch.optim.Adam(groups)
    for p, q in zip(params, new, strict=True):
        state = opt.state.get(p)
        if state:
            fresh.state[q] = {
                k: (v[keep].clone() if torch.is_tensor(v) and v.ndim else v) for k, v in state.items()
            }
    return new, fresh


def first_order_dual(
    prog: QuadraticProgram,
    objectives: Sequence[tuple[np.ndarray, float]],
    *,
    deadline: float,
    max_iters: int | None = None,
    lr: float = 0.05,
    targets: Sequence[float] | None = None,
    stop_when_proven: bool = True,
    dtype: torch.dtype = torch.float32,
) -> FirstOrderResult:
    """Multipliers for each objective ``(g, g0)`` (one class pair each), by projected Adam on the dual
    until ``deadline`` (``time.monotonic()``), ``max_iters`` steps, a plateau, or every class's dual value
    above its ``targets`` entry (default 0: the margin is proven, up to the certification's rounding) with
    ``stop_when_proven``."""
    dt = dtype  # the search's arithmetic; certification is float64 (robustcert.sdp.dual) whatever it is
    J = len(objectives)
    d, H = prog.n_in, prog.hidden
    lo, hi = torch.from_numpy(prog.lo).to(dt), torch.from_numpy(prog.hi).to(dt)
    P = torch.from_numpy(prog.pre_A).to(dt)
    Px, Ph = P[:, :d], P[:, d:]
    pc = torch.from_numpy(prog.pre_c).to(dt)
    G, h = torch.from_numpy(prog.G).to(dt), torch.from_numpy(prog.h).to(dt)
    g = torch.from_numpy(np.stack([o[0] for o in objectives])).to(dt)
    g0 = torch.tensor([o[1] for o in objectives], dtype=dt)
    ball = prog.center is not None
    x0 = torch.from_numpy(prog.center).to(dt) if prog.center is not None else None
    r2 = float(prog.radius or 0.0) ** 2
    T = float(1.0 + torch.maximum(lo[d:] ** 2, hi[d:] ** 2).sum())
    width = (hi - lo).clamp_min(1e-6)
    init = 2 * g.abs() / width + 1e-3 * (g.abs().mean(-1, keepdim=True) + 1e-6)
    theta = torch.log(init).clone().requires_grad_(True)
    scale = float(init.median())
    mu = torch.zeros(J, H, dtype=dt, requires_grad=True)
    nu = torch.zeros(J, prog.h.size, dtype=dt, requires_grad=True)
    kappa = torch.full((J,), math.log(max(scale, 1e-6)), dtype=dt, requires_grad=True)
    params = [theta, mu, nu] + ([kappa] if ball else [])
    opt = torch.optim.Adam(
        [{"params": [theta] + ([kappa] if ball else []), "lr": lr}, {"params": [mu, nu], "lr": lr * scale}]
    )
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.998)
    tgt = torch.tensor(list(targets) if targets is not None else [0.0] * J, dtype=torch.float64)
    active = torch.arange(J)  # the classes still optimised (proven ones are dropped: see _shrink)
    best = torch.full((J,), -math.inf, dtype=torch.float64)
    best_params = [p.detach().clone() for p in params]
    lu = lo * hi
    mid2 = (lo + hi) / 2
    # Px = Cx V' (rank k <= the first layer's width, < H on deep nets): the input block costs k^2 d per
    # class through the [d, k*k] outer products of V's rows (when they fit in ~256 MB), not H^2 d
    if H:
        U, sv, Vh = torch.linalg.svd(Px, full_matrices=False)
        rank = max(int((sv > sv[0] * 1e-7).sum()), 1) if float(sv[0]) > 0 else 1
        Cx, V = U[:, :rank] * sv[:rank], Vh[:rank].T.contiguous()
    else:
        rank, Cx, V = 1, torch.zeros(0, 1, dtype=dt), torch.zeros(d, 1, dtype=dt)
    outer = (V.unsqueeze(-1) * V.unsqueeze(-2)).reshape(d, rank * rank) if rank * rank * d <= 2**26 else None
    it, status, stall, last_best, drops, restore = 0, "max_iters", 0, -math.inf, 0, False
    started, checkpoint = time.monotonic(), (0, -math.inf)
    limit = max_iters if max_iters is not None else 100000
    while it < limit:
        if time.monotonic() > deadline:
            status = "time_limit"
            break
        box = torch.exp(theta)
        k = torch.exp(kappa) if ball else torch.zeros(J, dtype=dt)
        row = g / 2 - box * mid2 + (nu @ G) / 2
        row_h = row[:, d:] - mu * pc / 2
        row_x = row[:, :d]
        z00 = g0 + (box * lu).sum(-1) + nu @ h
        D = box[:, :d]
        if ball and x0 is not None:
            row_x = row_x - k.unsqueeze(-1) * x0
            z00 = z00 + k * (float((x0**2).sum()) - r2)
            D = D + k.unsqueeze(-1)
        # the input block eliminated: B_h = -mu * Px / 2, so B_h D^-1 B_h' = (mu mu' / 4) * (Px D^-1 Px'),
        # one GEMM against the outer products of Px's columns (no [J, H, d] tensor)
        invD = 1.0 / D
        r00 = z00 - (row_x * row_x * invD).sum(-1)
        r = row_h + mu * (((row_x * invD) @ V) @ Cx.T) / 2
        cross = -(mu.unsqueeze(-1) * Ph) / 2
        S = torch.diag_embed(box[:, d:] + mu) + cross + cross.transpose(-1, -2)
        VDV = (invD @ outer).reshape(J, rank, rank) if outer is not None else (V.T * invD.unsqueeze(1)) @ V
        PDP = Cx @ VDV @ Cx.T
        S = S - (mu.unsqueeze(-1) * mu.unsqueeze(-2)) * PDP / 4
        if H == 0:
            value, u = r00.detach(), torch.ones(J, 1, dtype=dt)
        else:
            with torch.no_grad():
                f64 = torch.float64  # the small eigenproblem in float64: its offsets are float64-sized
                value, _, u = secular_optimum(S.detach().to(f64), r.detach().to(f64), r00.detach().to(f64), T)
                u = torch.nan_to_num(u, nan=0.0, posinf=0.0, neginf=0.0).to(dt)
        with torch.no_grad():
            better = value.double() > best[active]
            rows = active[better]
            best[rows] = value.double()[better]
            for bp, p in zip(best_params, params, strict=True):
                bp[rows] = p.detach()[better]
            if stop_when_proven and bool((best > tgt).all()):
                status = "proven"
                break
            top = float(best.min())
            if not math.isfinite(last_best) or top > last_best + 1e-4 * (abs(last_best) + 1e-3):
                last_best, stall = top, 0
            else:
                stall += 1
                if stall >= 150:
                    if drops == 3:
                        status = "plateau"
                        break
                    drops, stall, restore = drops + 1, 0, True
            # hopeless (checked once 40% of the time is spent, dual ascent being slow to start): the worst
            # class (each must be proven) would not reach its target at 5x its recent rate in the time left
            elapsed = time.monotonic() - started
            budget = max(deadline - started, 1e-9)
            if stop_when_proven and it and it % 100 == 0 and elapsed >= 0.4 * budget:
                gap = float((tgt - best).max())
                done_it, done_val = checkpoint
                rate = (top - done_val) / (it - done_it) if math.isfinite(done_val) else math.inf
                per_it = (time.monotonic() - started) / it
                left_it = max(deadline - time.monotonic(), 0.0) / max(per_it, 1e-9)
                checkpoint = (it, top)
                if gap > 0 and rate * 5 * left_it < gap:
                    status = "hopeless"
                    break
        uh = u[:, 1:]
        # u' R u with u detached: its gradient is the supergradient u u' of the dual value
        surrogate = r00 + 2 * (uh * r).sum(-1) + (uh.unsqueeze(-2) @ S @ uh.unsqueeze(-1)).reshape(J)
        opt.zero_grad()
        (-surrogate.sum()).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            nu.clamp_(min=0.0)
            theta.clamp_(min=-40.0, max=40.0)
            if restore:  # reduce on plateau: back to each open class's best point, a quarter of the step
                for p, bp in zip(params, best_params, strict=True):
                    p.copy_(bp[active])
                for group in opt.param_groups:
                    group["lr"] /= 4
                restore = False
        it += 1
        if stop_when_proven and it % 25 == 0:
            keep = best[active] <= tgt[active]
            if bool(keep.any()) and not bool(keep.all()):
                # warm restart on the classes still open: their multipliers and Adam moments carry over
                active, g, g0 = active[keep], g[keep], g0[keep]
                J = int(active.numel())
                params, opt = _shrink(params, opt, keep)
                sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.998)
                theta, mu, nu = params[0], params[1], params[2]
                if ball:
                    kappa = params[3]
    mults = []
    for j in range(len(objectives)):
        th, m_, n_ = best_params[0][j], best_params[1][j], best_params[2][j]
        kb = float(torch.exp(best_params[3][j].double())) if ball else 0.0
        mults.append(
            Multipliers(torch.exp(th.double()).numpy(), m_.double().numpy(), n_.double().numpy(), kb)
        )
    return FirstOrderResult(mults, [float(v) for v in best], it, status)
