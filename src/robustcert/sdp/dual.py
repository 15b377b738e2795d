"""The certified bound of the SDP relaxation, recomputed from any Lagrange multipliers.

This module is where a verdict comes from: never a solver's status or primal value.

The Lagrangian as one matrix
----------------------------
For the program of :mod:`.encode` and a class pair ``(y, j)`` write ``w = [1; v]``. With multipliers
``box >= 0`` (one per variable), ``relu`` (free, one per ReLU equality), ``lin >= 0`` (one per linear
constraint) and ``ball >= 0`` (the L2 ball), the symmetric matrix ``Z`` of :func:`lagrangian` satisfies,
for every feasible ``v``,

    w' Z w = margin(v) + sum box (v-lo)(v-hi) + sum relu z(z-s) + sum lin (Gv+h) + ball (|x-x0|^2-r^2)
           <= margin(v)

(each added term is <= 0 or = 0 there). Any ``mu0`` then gives, with ``T >= |w|^2`` over the boxes,

    margin(v) >= w' Z w = mu0 + w' (Z - mu0 e0 e0') w >= mu0 + T min(0, lambda_min(Z - mu0 e0 e0'))

— the dual bound ``b'y + T lambda_max+(C - A*y)`` of the issue in minimisation form. It holds for *any*
multipliers (the signs above are enforced by clipping), so an early-stopped, inaccurate or even
corrupted solve gives a loose but valid bound. The SDP's optimum is the best such bound.

The Schur form
--------------
The input block of ``Z`` is diagonal (``D = box_x + ball``: no constraint couples two inputs). With
``D > 0``, minimising ``w' Z w`` over the inputs in closed form leaves ``w_h' R w_h`` with ``w_h = [1; z]``
and ``R = Z_hh - B D^-1 B'`` (``B`` the block coupling ``[1; z]`` to ``x``): the same bound as the full
matrix with ``T_h`` over the ReLU variables only, and a matrix of size ``1 + H`` instead of ``1 + N`` —
what makes 784-input networks cheap. Inputs with ``D = 0`` and a zero column of ``B`` drop out.

Rounding
--------
``Z`` (and ``R``) are formed in float64 from float64 data; the exact matrix of the same multipliers
differs from the computed one by at most ``gamma_t`` times the matrix of absolute terms (Higham §3.1; ``t``
bounds the terms of any entry: the linear constraints, plus a few), ``R``'s product with a further
``gamma_{d+8}``. ``lambda_min`` of the exact matrix is at least the computed one minus the spectral
norm of that error (Weyl; bounded by its Frobenius norm) minus LAPACK's eigenvalue error, taken as
``32 n 2^-53 |M|_F`` (backward stability of the symmetric eigensolver: ``c n u |M|_2`` with a modest
``c``). ``T`` and the final sum are rounded up by a relative 1e-12. ``mu0`` itself is only a candidate
(the maximiser of the computed secular equation): any value is valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robustcert.sdp.encode import QuadraticProgram

_U64 = 2.0**-53


def _gamma(k: float) -> float:
    return k * _U64 / (1 - k * _U64)


@dataclass
class Multipliers:
    """Lagrange multipliers of one class pair (shapes [N], [H], [m]; ``ball`` for the L2 ball)."""

    box: np.ndarray
    relu: np.ndarray
    lin: np.ndarray
    ball: float = 0.0

    def clipped(self) -> Multipliers:
        """The same multipliers with the sign constraints enforced (negatives set to 0) and non-finite
        entries set to 0 (also valid multipliers), float64."""

        def finite(a: np.ndarray) -> np.ndarray:
            a = np.asarray(a, dtype=np.float64)
            return np.where(np.isfinite(a), a, 0.0)

        ball = float(self.ball)
        return Multipliers(
            np.maximum(finite(self.box), 0.0),
            finite(self.relu),
            np.maximum(finite(self.lin), 0.0),
            max(ball, 0.0) if np.isfinite(ball) else 0.0,
        )


@dataclass(frozen=True)
class DualBound:
    """``bound``: a certified lower bound of the program's margin for the class pair; ``mu0`` and
    ``lam_min`` the shift and padded eigenvalue it came from; ``form``: ``"schur"`` or ``"full"``."""

    bound: float
    mu0: float
    lam_min: float
    form: str


def lagrangian(
    prog: QuadraticProgram, g: np.ndarray, g0: float, m: Multipliers, absolute: bool = False
) -> np.ndarray:
    """``Z`` ([N+1, N+1], float64) of the module docstring; with ``absolute`` the same sums of the
    absolute values of every term (the rounding analysis' companion matrix)."""
    f = np.abs if absolute else (lambda a: a)
    N, d, H = prog.size, prog.n_in, prog.hidden
    Z = np.zeros((N + 1, N + 1))
    box, relu, lin = m.box, m.relu, m.lin
    z00 = f(np.asarray(g0)) + f(box * prog.lo * prog.hi).sum() + f(lin * prog.h).sum()
    row = f(g / 2) + f(-box * (prog.lo + prog.hi) / 2)
    if lin.size:
        row = row + (np.abs(prog.G).T @ np.abs(lin) if absolute else prog.G.T @ lin) / 2
    hid = d + np.arange(H)
    row[hid] += f(-relu * prog.pre_c / 2)
    diag = box.astype(np.float64).copy()
    diag[hid] += f(relu)
    if prog.center is not None and m.ball:
        x0, r = prog.center, float(prog.radius or 0.0)
        diag[:d] += m.ball
        row[:d] += f(-m.ball * x0)
        z00 = z00 + (
            m.ball * (np.abs(x0) ** 2).sum() + m.ball * r * r
            if absolute
            else m.ball * ((x0**2).sum() - r * r)
        )
    Z[0, 0] = z00
    Z[0, 1:] = row
    Z[1:, 0] = row
    Z[1:, 1:][np.diag_indices(N)] = diag
    if H:
        cross = f(-(relu[:, None] * prog.pre_A) / 2)  # [H, N], zero at and after each ReLU's own column
        Z[1 + hid, 1:] += cross
        Z[1:, 1 + hid] += cross.T
    return Z


def _terms(prog: QuadraticProgram) -> float:
    """A bound on the number of terms summed into any entry of ``Z``."""
    return float(prog.h.size + prog.hidden + 8)


def secular_optimum(
    S: torch.Tensor, r: torch.Tensor, r00: torch.Tensor, T: float, steps: int = 40
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a batch of matrices ``R = [[r00, r'], [r, S]]`` ([J], [J, n], [J, n, n]; n >= 1): the value
    ``max_mu0 mu0 + T min(0, lambda_min(R - mu0 e0 e0'))``, its maximiser ``mu0`` and the supergradient
    direction ``u = [1; -(S - lam)^-1 r]`` ([J, 1+n]) at the optimal eigenvalue ``lam``. With
    ``S = Q diag(s) Q'`` and ``c = Q' r``, the eigenvalue ``lam < min(s)`` of ``R - mu0 e0 e0'`` has
    ``mu0 = r00 - lam - sum c^2 / (s - lam)``, concave in ``lam``: ``lam`` is found by ``steps``
    bisections on its slope, or sits on the boundary ``lam = 0`` when ``S > 0`` and the slope there is
    >= 0. Computed values, never bounds: :func:`_finish` certifies whatever ``mu0`` it gets."""
    s, Q = torch.linalg.eigh(S)
    c = (Q.transpose(-1, -2) @ r.unsqueeze(-1)).squeeze(-1)
    c2 = c * c
    smin = s[:, 0]
    hi = torch.where(smin > 0, torch.zeros_like(smin), smin - 1e-12 * (1 + smin.abs()))

    def slope(lam: torch.Tensor) -> torch.Tensor:
        return (T - 1.0) - (c2 / (s - lam.unsqueeze(-1)) ** 2).sum(-1)

    at_hi = slope(hi) >= 0
    lo = torch.minimum(hi, smin) - torch.sqrt(c2.sum(-1) / max(T - 1.0, 1e-30)) - 1.0
    a, b = lo, hi.clone()
    for _ in range(steps):
        mid = (a + b) / 2
        up = slope(mid) >= 0
        a = torch.where(up, mid, a)
        b = torch.where(up, b, mid)
    lam = torch.where(at_hi, hi, a)
    inv = 1.0 / (s - lam.unsqueeze(-1))
    mu0 = r00 - lam - (c2 * inv).sum(-1)
    value = mu0 + T * torch.clamp(lam, max=0.0)
    u = torch.cat([torch.ones_like(lam).unsqueeze(-1), -(Q @ (inv * c).unsqueeze(-1)).squeeze(-1)], -1)
    return value, mu0, u


def _secular_shift(M: np.ndarray, T: float) -> float:
    """The ``mu0`` maximising ``mu0 + T min(0, lambda_min(M - mu0 e0 e0'))`` for the computed ``M``
    (a candidate only), by :func:`secular_optimum`."""
    if M.shape[0] == 1:
        return float(M[0, 0])
    t = torch.from_numpy(M)
    _, mu0, _ = secular_optimum(t[None, 1:, 1:], t[None, 1:, 0], t[None, 0, 0], T, steps=100)
    return float(mu0[0])


def _padded_min_eig(M: np.ndarray, err: np.ndarray) -> float:
    """A lower bound of lambda_min of every symmetric matrix within ``err`` (entrywise) of ``M``."""
    n = M.shape[0]
    lam = float(np.linalg.eigvalsh(M)[0])
    pad = float(np.linalg.norm(err)) + 32 * n * _U64 * float(np.linalg.norm(M))
    return lam - pad


def _finish(M: np.ndarray, err: np.ndarray, T: float, form: str) -> DualBound:
    """The bound from the computed matrix; ``-inf`` (a valid, useless bound) when the arithmetic
    overflowed (multipliers around 1e150 and beyond) or the eigensolver failed."""
    useless = DualBound(-np.inf, np.nan, np.nan, form)
    if not (np.isfinite(M).all() and np.isfinite(err).all()):
        return useless
    try:
        mu0 = _secular_shift(M, T)
        shifted = M.copy()
        shifted[0, 0] -= mu0
        lam = _padded_min_eig(shifted, err)
    except np.linalg.LinAlgError:
        return useless
    neg = min(lam, 0.0)
    bound = mu0 + T * neg
    bound -= 1e-12 * (abs(mu0) + T * abs(neg)) + 1e-300
    if not np.isfinite(bound):
        return useless
    return DualBound(float(bound), float(mu0), float(lam), form)


def _box_trace(lo: np.ndarray, hi: np.ndarray) -> float:
    return float((1.0 + (np.maximum(lo * lo, hi * hi)).sum()) * (1 + 1e-12))


def _full(prog: QuadraticProgram, Z: np.ndarray, Zabs: np.ndarray) -> DualBound:
    return _finish(Z, _gamma(_terms(prog)) * Zabs, _box_trace(prog.lo, prog.hi), "full")


def _schur(prog: QuadraticProgram, Z: np.ndarray, Zabs: np.ndarray) -> DualBound | None:
    d = prog.n_in
    D = np.diag(Z)[1 : 1 + d]
    keep = np.r_[0, 1 + d + np.arange(prog.hidden)]
    B = Z[np.ix_(keep, 1 + np.arange(d))]
    Babs = Zabs[np.ix_(keep, 1 + np.arange(d))]
    zero = D <= 0
    if bool((np.abs(B[:, zero]) > 0).any()):
        return None
    inv = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, D))
    R = Z[np.ix_(keep, keep)] - (B * inv) @ B.T
    tz = _gamma(_terms(prog))
    err = tz * Zabs[np.ix_(keep, keep)] + (4 * tz + _gamma(d + 8)) * ((Babs * inv) @ Babs.T) * 1.01
    T = _box_trace(prog.lo[d:], prog.hi[d:])
    return _finish(R, err, T, "schur")


def _matrices(
    prog: QuadraticProgram, g: np.ndarray, g0: float, m: Multipliers
) -> tuple[np.ndarray, np.ndarray]:
    m = m.clipped()
    return lagrangian(prog, g, g0, m), lagrangian(prog, g, g0, m, absolute=True)


def full_bound(prog: QuadraticProgram, g: np.ndarray, g0: float, m: Multipliers) -> DualBound:
    """The certified bound from the full ``(N+1)``-square matrix (any multipliers; clipped first)."""
    return _full(prog, *_matrices(prog, g, g0, m))


def schur_bound(prog: QuadraticProgram, g: np.ndarray, g0: float, m: Multipliers) -> DualBound | None:
    """The certified bound from the Schur form (``1 + H`` square); None when an input with ``D = 0`` is
    still coupled to the rest (then only :func:`full_bound` applies)."""
    return _schur(prog, *_matrices(prog, g, g0, m))


def certified_bound(
    prog: QuadraticProgram, g: np.ndarray, g0: float, m: Multipliers, full_limit: int = 400
) -> DualBound:
    """The best of the Schur form and (for ``N <= full_limit``, or when the Schur form does not apply)
    the full form: both certified lower bounds of the program's margin ``g.v + g0``."""
    Z, Zabs = _matrices(prog, g, g0, m)
    best = _schur(prog, Z, Zabs)
    if best is None or prog.size <= full_limit:
        full = _full(prog, Z, Zabs)
        if best is None or full.bound > best.bound:
            best = full
    return best
