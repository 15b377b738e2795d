"""The incomplete stage: prove (box, conjunction) pairs impossible with CROWN or α-CROWN bounds.

A conjunction ``C y <= d`` cannot hold anywhere in the box if for some row r a certified lower bound of
the exact ``(C y)_r`` over the box exceeds ``d_r``. The bounds come from
:func:`robustcert.bounds.box_bounds` with ``float_model="float32"`` (they cover the model's float32
evaluation in any summation order) over the spec's outward-rounded box. Coefficients that float64 cannot
hold exactly are covered by ``C_err`` times bounds on ``|y|`` (identity rows added to the same call), and
the final comparison keeps a float64 rounding allowance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustcert.bounds.api import box_bounds
from robustcert.vnnlib.spec import Case

SEARCHES = ("relu", "input")
_REL = 1e-12  # float64 allowance of the final comparison (a few hundred ulps)


def proven(
    model: nn.Module,
    input_shape: tuple[int, ...],
    case: Case,
    which: list[int],
    method: str,
    alpha_steps: int = 20,
) -> list[bool]:
    """For each conjunction index in ``which`` of ``case``: True only if ``method`` ("crown" or
    "alpha-crown") proves that no input of the box satisfies it (for the float32 network)."""
    conjs = [case.conjunctions[i] for i in which]
    rows = [c.C for c in conjs if c.num_rows]
    if not rows:
        return [False] * len(which)
    k = conjs[0].C.shape[1]
    need_y = any(bool((c.C_err > 0).any()) for c in conjs)
    eye = torch.eye(k, dtype=torch.float64)
    C = torch.cat(rows + ([eye, -eye] if need_y else []))
    lo = case.box.lo.reshape((1, *input_shape))
    hi = case.box.hi.reshape((1, *input_shape))
    lb = box_bounds(
        model,
        lo,
        hi,
        C.unsqueeze(0),
        float_model="float32",
        method=method,
        alpha_steps=alpha_steps,
        precision="float32",
    ).spec_lower[0]
    ymax: Tensor | None = None
    if need_y:
        ylo, yhi = lb[-2 * k : -k], -lb[-k:]
        ymax = torch.maximum(ylo.abs(), yhi.abs())
    out: list[bool] = []
    at = 0
    for c in conjs:
        if not c.num_rows:
            out.append(False)
            continue
        part = lb[at : at + c.num_rows]
        at += c.num_rows
        err = (c.C_err @ ymax) if ymax is not None else torch.zeros_like(part)
        gap = part - err - c.d
        allowance = _REL * (part.abs() + err + c.d.abs()) + 1e-300
        out.append(bool((torch.isfinite(part) & (gap > allowance)).any()))
    return out


def branch_and_bound_pair(
    model: nn.Module,
    input_shape: tuple[int, ...],
    case: Case,
    index: int,
    timeout: float,
    seed: int = 0,
    search: str = "relu",
) -> tuple[str, Tensor | None]:
    """Complete search on one (box, conjunction) pair (``require="any"``: some row ``(C y)_r > d_r``
    everywhere in the box proves the conjunction impossible): ``search="relu"`` splits ReLUs
    (:func:`robustcert.exact.bab.branch_and_bound`), ``"input"`` splits the input box
    (:func:`robustcert.exact.input_split.input_split`, for few inputs). Returns its status
    (``verified`` = the pair is impossible for the float32 network, ``falsified``, ``timeout``,
    ``unknown``) and, when falsified, its float32 point (flat) — still to be checked against the exact
    rows by the caller. Inexact coefficients: ``d`` is raised by ``C_err · max|y|`` (bounds on ``|y|``
    from identity rows of one CROWN call), rounded up."""
    from robustcert.bounds._common import toward
    from robustcert.exact.bab import branch_and_bound
    from robustcert.exact.input_split import input_split

    conj = case.conjunctions[index]
    if not conj.num_rows:
        return "unknown", None
    lo = case.box.lo.reshape((1, *input_shape))
    hi = case.box.hi.reshape((1, *input_shape))
    d = conj.d
    if bool((conj.C_err > 0).any()):
        k = conj.C.shape[1]
        eye = torch.eye(k, dtype=torch.float64)
        lb = box_bounds(model, lo, hi, torch.cat([eye, -eye]).unsqueeze(0), float_model="float32").spec_lower[
            0
        ]
        ymax = torch.maximum(lb[:k].abs(), lb[k:].abs())
        # a sum of k nonnegative float64 products is at most gamma_k ~ k u below the true one
        err = toward((conj.C_err @ ymax) * (1.0 + 2.0 * (k + 1) * 2.0**-53), upper=True)
        d = toward(d + err, upper=True)
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    complete = input_split if search == "input" else branch_and_bound
    r = complete(model, lo, hi, conj.C, d, require="any", timeout=timeout, seed=seed)
    x = None if r.counterexample is None else r.counterexample.reshape(-1)
    return r.status, x
