"""Public entry points of :mod:`robustcert.bounds` (re-exported there)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from robustcert.allocator import keep_freed_memory
from robustcert.bounds import alpha_crown, crown, ibp
from robustcert.bounds._common import Ctx, InputSet, rounding_scope, toward
from robustcert.bounds._soundness import (
    FLOAT_MODELS,
    MAX_TERMS32,
    SAFETY_REL,
    Rounding,
    magnitudes,
    node_tol,
    spec_tol,
)
from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError
from robustcert.graph.convert import to_graph
from robustcert.graph.ir import Graph
from robustcert.graph.ops import numel
from robustcert.validation import check_eps, check_norm

METHODS = ("ibp", "crown", "alpha-crown")
INTERMEDIATE = ("crown", "ibp")
# The dtype of CROWN's intermediate passes (the costly part: one specification row per unstable neuron);
# IBP intervals and the final bounds are always computed in float64. Both are sound (the rounding model
# covers the unit roundoff of the dtype each pass runs in); float64 leaves less slack at about twice the cost.
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
# How rounding is handled: the two public float models, and two references used by bench/float_margins.py
# and the tests only: "legacy" (the previous 2^-30 (1 + M) margin) and "none" (no margin at all: unsound).
ROUNDINGS = (*FLOAT_MODELS, "legacy", "none")

Model = nn.Module | Graph


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise RobustCertError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
    return value


def _check_batch(t: Any, what: str) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise RobustCertError(f"{what} must be a floating-point torch.Tensor, got {type(t).__name__}")
    if t.ndim < 2:
        raise RobustCertError(
            f"{what} has shape {tuple(t.shape)}; pass a batch [B, *input_shape] (use x.unsqueeze(0) for one input)"
        )
    if bool(torch.isnan(t).any()):
        raise RobustCertError(f"{what} contains NaN; pass finite inputs")
    if bool(torch.isinf(t).any()):
        raise RobustCertError(f"{what} contains inf; pass finite inputs")
    return t.detach().to(device="cpu", dtype=torch.float64)


def _input_set(x: Tensor | None, eps: Any, norm: str, box: Any, domain: Any = None) -> InputSet:
    if box is not None:
        if x is not None:
            raise RobustCertError("pass either x (with eps) or box=(lo, hi), not both")
        if norm != "linf":
            raise RobustCertError("box=(lo, hi) is an L-infinity box; use norm='linf' with it")
        if not isinstance(box, (tuple, list)) or len(box) != 2:
            raise RobustCertError("box must be a pair (lo, hi) of tensors")
        lo, hi = _check_batch(box[0], "box lo"), _check_batch(box[1], "box hi")
        if lo.shape != hi.shape:
            raise RobustCertError(f"box lo and hi differ in shape: {tuple(lo.shape)} vs {tuple(hi.shape)}")
        if bool((lo > hi).any()):
            raise RobustCertError("box lo must be <= hi everywhere")
        return InputSet(lo, hi)
    if x is None:
        raise RobustCertError("x is None; pass inputs x (with eps) or an explicit box=(lo, hi)")
    e = check_eps(eps)
    x64 = _check_batch(x, "x")
    dom = InputDomain.coerce(domain)
    dom.check_data(x64, "x")
    lo, hi = x64 - e, x64 + e
    if e > 0:  # round outward: the box must contain the real ball
        lo, hi = toward(lo, upper=False), toward(hi, upper=True)
    lo, hi = dom.clip(lo), dom.clip(hi)  # exact: a max/min with the domain's float64 bounds
    if norm == "l2":
        return InputSet(lo, hi, x64, e)
    return InputSet(lo, hi)


def _graph_and_set(
    model: Model,
    x: Tensor | None,
    eps: Any,
    norm: str,
    method: str,
    box: Any,
    intermediate: str,
    domain: Any = None,
):
    _check_choice("method", method, METHODS)
    check_norm(norm)
    _check_choice("intermediate", intermediate, INTERMEDIATE)
    inset = _input_set(x, eps, norm, box, domain)
    graph = to_graph(model, tuple(inset.lo.shape[1:]))
    shapes = graph.shapes()
    out_shape = shapes[graph.output]
    if len(out_shape) != 1:
        raise RobustCertError(f"the model's output has per-example shape {out_shape}; expected [num_classes]")
    return graph, inset, shapes


def _legacy_mags(graph: Graph, inset: InputSet) -> dict[str, Tensor]:
    m_in = torch.maximum(inset.lo.abs(), inset.hi.abs())
    if inset.center is not None:
        # the ball bound A·x0 - eps||A|| is only used when it beats the box bound, and then
        # |A||x0| + eps||A|| <= 3 |A| max(|lo|, |hi|): a factor 3 covers its absolute computation
        m_in = 3 * m_in
    return magnitudes(graph, m_in)


def _setup(model: Model, x: Tensor | None, eps: Any, norm: str, method: str, box: Any, intermediate: str):
    """Legacy set-up (graph, input set, shapes, legacy magnitudes); kept for tests of the old margin."""
    graph, inset, shapes = _graph_and_set(model, x, eps, norm, method, box, intermediate)
    return graph, inset, shapes, _legacy_mags(graph, inset)


class _Plan(NamedTuple):
    graph: Graph
    inset: InputSet
    shapes: dict[str, tuple[int, ...]]
    mags: dict[str, Tensor] | None  # legacy magnitudes (rounding="legacy" only)
    rounding: Rounding | None  # the rounding model (float32 / real)
    refine_dtype: torch.dtype  # the dtype of CROWN's intermediate passes (see PRECISIONS)


def _plan(
    model: Model,
    x: Tensor | None,
    eps: Any,
    norm: str,
    method: str,
    box: Any,
    intermediate: str,
    rounding: str,
    domain: Any = None,
    precision: str = "float64",
) -> _Plan:
    _check_choice("float_model", rounding, ROUNDINGS)
    _check_choice("precision", precision, tuple(PRECISIONS))
    keep_freed_memory()  # large tensors reused instead of page-faulted in again (robustcert.allocator)
    graph, inset, shapes = _graph_and_set(model, x, eps, norm, method, box, intermediate, domain)
    mags = _legacy_mags(graph, inset) if rounding == "legacy" else None
    rmodel = None
    if rounding in FLOAT_MODELS:
        Rounding.check(graph)
        rmodel = Rounding(rounding, shapes)
        dtype = PRECISIONS[precision]
        if dtype == torch.float32 and max(numel(s) for s in shapes.values()) > MAX_TERMS32:
            dtype = torch.float64  # the float32 slack sums assume fewer terms (see _soundness)
    else:
        dtype = torch.float64
    return _Plan(graph, inset, shapes, mags, rmodel, dtype)


def _labels(y: Any, batch: int, k: int) -> Tensor:
    try:
        t = torch.as_tensor(y)
    except Exception as exc:
        raise RobustCertError(f"y must be integer labels, got {type(y).__name__}") from exc
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise RobustCertError(f"y must hold integer class labels, got dtype {t.dtype}")
    t = t.reshape(-1).to(torch.long)
    if t.numel() != batch:
        raise RobustCertError(
            f"y has {t.numel()} labels but the batch has {batch} inputs; pass one label per input"
        )
    if bool(((t < 0) | (t >= k)).any()):
        raise RobustCertError(f"y has labels outside [0, {k - 1}]; the model has {k} classes")
    return t


def margin_spec(labels: Tensor, k: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``C[b, j] = e_{y_b} - e_j`` ([B, K, K]); row y is zero."""
    eye = torch.eye(k, dtype=dtype, device=labels.device)
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)


def _intermediate(
    graph: Graph, inset: InputSet, shapes, mags, mode: str, refine_dtype: torch.dtype | None = None
) -> Ctx:
    bounds = crown.intermediate_bounds(graph, inset, shapes, mode=mode, mags=mags, refine_dtype=refine_dtype)
    return Ctx(shapes, bounds)


def margin_lower(
    model: Model,
    x: Tensor | None,
    y: Any,
    eps: float = 0.1,
    norm: str = "linf",
    method: str = "crown",
    box: tuple[Tensor, Tensor] | None = None,
    intermediate: str = "crown",
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    float_model: str = "float32",
    domain: Any = None,
    precision: str = "float32",
    alpha_intermediate: bool = False,
) -> Tensor:
    """Certified lower bounds of the margins ``f_y(x') - f_j(x')``, shape [B, K] (float64, CPU).

    Guarantee: for every example b, every class j != y_b and every x' in the perturbation set —
    ``{x' : ||x' - x_b|| <= eps} ∩ D`` (``norm`` linf or l2) where ``D`` is the input ``domain`` (an
    :class:`~robustcert.domain.InputDomain`, a pair ``(lo, hi)``, per-channel pairs or ``"LO,HI"``;
    default [0, 1]; x must lie in it), or the explicit L∞ box ``box=(lo, hi)`` (used as given) — ``f_y(x') - f_j(x') >= result[b, j]`` where ``f`` is, with ``float_model="float32"``
    (default), the model's float32 evaluation at ``x'`` (rounded to float32) in any summation order, and
    with ``"real"`` the real-valued network with the stored weights. The float64 computation's own
    rounding is covered in both (:mod:`robustcert.bounds._soundness` derives every margin). Column y holds
    +inf.

    ``method``: ``"ibp"`` (interval bounds, last affine layers elided), ``"crown"`` (backward linear
    relaxation on the margin rows ``C = e_y - e_j``), ``"alpha-crown"`` (CROWN's intermediate intervals,
    then ``alpha_steps`` projected-Adam steps on the ReLU lower slopes, best iterate kept: never looser
    than CROWN; ``alpha_intermediate=True`` also optimises the slopes behind every intermediate interval,
    tighter and 15-45x costlier, see :mod:`robustcert.bounds.alpha_crown`). ``intermediate``: how
    CROWN/alpha-CROWN bound the activation inputs (``"crown"`` or ``"ibp"`` = CROWN-IBP). ``precision``:
    the dtype of CROWN's intermediate passes, the costly part (``"float32"``, default, or ``"float64"``:
    less rounding slack at about twice the cost); IBP intervals and the final bounds are float64. The
    model is used in eval mode (its mode is restored); a model in training mode with BatchNorm is
    refused. Bad input raises :class:`RobustCertError`.
    """
    _check_choice("float_model", float_model, FLOAT_MODELS)
    return _margins(
        model,
        x,
        y,
        eps,
        norm,
        method,
        box,
        intermediate,
        alpha_steps,
        alpha_lr,
        float_model,
        domain=domain,
        precision=precision,
        alpha_intermediate=alpha_intermediate,
    )


def _margins(
    model: Model,
    x: Tensor | None,
    y: Any,
    eps: float,
    norm: str,
    method: str,
    box: tuple[Tensor, Tensor] | None,
    intermediate: str,
    alpha_steps: int,
    alpha_lr: float,
    rounding: str,
    domain: Any = None,
    precision: str = "float32",
    alpha_intermediate: bool = False,
) -> Tensor:
    """:func:`margin_lower` with any of :data:`ROUNDINGS` (``legacy`` and ``none`` for comparisons only)."""
    if alpha_intermediate and rounding == "legacy":
        raise RobustCertError(
            "alpha_intermediate recomputes intervals without the legacy margin; use float32 or real"
        )
    plan = _plan(model, x, eps, norm, method, box, intermediate, rounding, domain, precision)
    graph, inset, shapes, mags = plan.graph, plan.inset, plan.shapes, plan.mags
    k = numel(shapes[graph.output])
    labels = _labels(y, inset.batch, k)
    C = margin_spec(labels, k)
    with torch.no_grad(), rounding_scope(plan.rounding):
        if method == "ibp":
            ctx = _intermediate(graph, inset, shapes, mags, "ibp")
            lb = ibp.spec_lower(graph, C, inset, ctx)
        else:
            ctx = _intermediate(graph, inset, shapes, mags, intermediate, plan.refine_dtype)
            if method == "crown":
                lb = crown.crown_lower(graph, C, inset, ctx)
            else:
                rows = C.abs().sum(-1) > 0
                lb = alpha_crown.alpha_crown_lower(
                    graph,
                    C,
                    inset,
                    ctx,
                    steps=int(alpha_steps),
                    lr=float(alpha_lr),
                    row_mask=rows,
                    optimize_intermediate=bool(alpha_intermediate),
                )
        if mags is not None:
            lb = lb - spec_tol(C, mags[graph.output])
        lb = lb.scatter(1, labels.unsqueeze(1), torch.inf)
    return lb.detach()


def logit_bounds(
    model: Model,
    x: Tensor | None,
    eps: float = 0.1,
    norm: str = "linf",
    method: str = "crown",
    box: tuple[Tensor, Tensor] | None = None,
    intermediate: str = "crown",
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    float_model: str = "float32",
    domain: Any = None,
    precision: str = "float32",
) -> tuple[Tensor, Tensor]:
    """Certified bounds ``lo <= f(x') <= hi`` on every logit, each [B, K] (float64, CPU).

    Same perturbation set, methods, options, ``float_model`` and rounding guarantee as
    :func:`margin_lower`. Use :func:`margin_lower` to certify a prediction: bounding the margins directly
    is tighter than subtracting these logit bounds.
    """
    _check_choice("float_model", float_model, FLOAT_MODELS)
    return _logits(
        model,
        x,
        eps,
        norm,
        method,
        box,
        intermediate,
        alpha_steps,
        alpha_lr,
        float_model,
        domain=domain,
        precision=precision,
    )


def _logits(
    model: Model,
    x: Tensor | None,
    eps: float,
    norm: str,
    method: str,
    box: tuple[Tensor, Tensor] | None,
    intermediate: str,
    alpha_steps: int,
    alpha_lr: float,
    rounding: str,
    domain: Any = None,
    precision: str = "float32",
) -> tuple[Tensor, Tensor]:
    """:func:`logit_bounds` with any of :data:`ROUNDINGS`."""
    plan = _plan(model, x, eps, norm, method, box, intermediate, rounding, domain, precision)
    graph, inset, shapes, mags = plan.graph, plan.inset, plan.shapes, plan.mags
    k = numel(shapes[graph.output])
    eye = torch.eye(k, dtype=torch.float64)
    with torch.no_grad(), rounding_scope(plan.rounding):
        if method == "ibp":
            ctx = _intermediate(graph, inset, shapes, mags, "ibp")
            lo0, hi0 = ctx.bounds[graph.output]
            C = torch.cat([eye, -eye]).unsqueeze(0)
            both = ibp.spec_lower(graph, C, inset, ctx)
            lo, hi = torch.maximum(lo0, both[:, :k]), torch.minimum(hi0, -both[:, k:])
        else:
            ctx = _intermediate(graph, inset, shapes, mags, intermediate, plan.refine_dtype)
            if method == "crown":
                lo, hi = crown.crown_output_bounds(graph, inset, ctx)
            else:
                C = torch.cat([eye, -eye]).unsqueeze(0).expand(inset.batch, 2 * k, k)
                both = alpha_crown.alpha_crown_lower(
                    graph, C, inset, ctx, steps=int(alpha_steps), lr=float(alpha_lr)
                )
                lo, hi = both[:, :k], -both[:, k:]
        if mags is not None:
            tol = node_tol(mags[graph.output])
            lo, hi = lo - tol, hi + tol
    return lo.detach(), hi.detach()


class BoxBounds(NamedTuple):
    """Result of :func:`box_bounds`: ``activation_inputs[name] = (lo, hi)`` ([B, *shape] each) for every
    node read by an activation, and ``spec_lower`` ([B, S]) lower bounds of ``C · output``."""

    activation_inputs: dict[str, tuple[Tensor, Tensor]]
    spec_lower: Tensor


def box_bounds(
    model: Model,
    lo: Tensor,
    hi: Tensor,
    C: Tensor,
    intermediate: str = "crown",
    float_model: str = "real",
    method: str = "crown",
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    precision: str = "float64",
) -> BoxBounds:
    """Certified bounds over the explicit box ``[lo, hi]`` ([B, *input_shape]): the intervals of every
    activation input (the intervals CROWN's relaxations are built on) and lower bounds of the
    specification rows ``C · output`` (``C``: [1 or B, S, K]). Float64, CPU.

    Guarantee: for every x' in the box, the network — real-valued with the stored weights
    (``float_model="real"``, the default: the MILP encodes that network) or its float32 evaluation
    (``"float32"``, in any summation order) — has each activation input inside its interval and
    ``C · f(x') >= spec_lower``, including float64 rounding in the computation
    (:mod:`robustcert.bounds._soundness`). ``method``: ``"crown"`` (default) or ``"alpha-crown"``
    (``alpha_steps`` projected-Adam steps on the output's ReLU slopes per row of ``C``; never looser than
    CROWN). ``precision``: the dtype of CROWN's intermediate passes (as in :func:`margin_lower`; default
    float64). Used by the exact MILP for its big-M constants and by ``robustcert verify``.
    """
    return region_bounds(
        model, C, box=(lo, hi), intermediate=intermediate, float_model=float_model, method=method,
        alpha_steps=alpha_steps, alpha_lr=alpha_lr, precision=precision,
    )


def region_bounds(
    model: Model,
    C: Tensor,
    *,
    x: Tensor | None = None,
    eps: Any = None,
    norm: str = "linf",
    box: Any = None,
    domain: Any = None,
    intermediate: str = "crown",
    float_model: str = "real",
    method: str = "crown",
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    precision: str = "float64",
) -> BoxBounds:
    """:func:`box_bounds` over either an explicit ``box=(lo, hi)`` or the ball ``B_norm(x, eps) ∩ domain``
    (``norm`` ``"linf"`` or ``"l2"``; the L2 ball's intervals use the exact ball bound of every node
    affine in the input). Same guarantee as :func:`box_bounds`, for every x' in that set."""
    _check_choice("float_model", float_model, FLOAT_MODELS)
    _check_choice("method", method, ("crown", "alpha-crown"))
    plan = _plan(model, x, eps, norm, method, box, intermediate, float_model, domain, precision=precision)
    graph, inset, shapes = plan.graph, plan.inset, plan.shapes
    k = numel(shapes[graph.output])
    if not isinstance(C, Tensor) or C.ndim != 3 or C.shape[0] not in (1, inset.batch) or C.shape[2] != k:
        raise RobustCertError(
            f"C must be a tensor [1 or {inset.batch}, S, {k}], got {getattr(C, 'shape', C)}"
        )
    C = C.detach().to(torch.float64)
    with torch.no_grad(), rounding_scope(plan.rounding):
        ctx = _intermediate(graph, inset, shapes, None, intermediate, plan.refine_dtype)
        if method == "crown":
            lb = crown.crown_lower(graph, C, inset, ctx)
        else:
            C = C.expand(inset.batch, C.shape[1], k)
            lb = alpha_crown.alpha_crown_lower(
                graph, C, inset, ctx, steps=int(alpha_steps), lr=float(alpha_lr), row_mask=C.abs().sum(-1) > 0
            )
    pre = {name: ctx.bounds[name] for name in crown.activation_inputs(graph)}
    return BoxBounds(pre, lb.detach())


def is_verified(margins: Tensor) -> Tensor:
    """[B] bool: True where every margin bound with j != y is > 0 (column y holds +inf, so: all > 0)."""
    if not isinstance(margins, Tensor) or margins.ndim != 2:
        raise RobustCertError("margins must be the [B, K] tensor returned by margin_lower")
    return (margins > 0).all(dim=1)


# --------------------------------------------------------------------------------------------------
# differentiable paths for certified training (no safety margin, no float64 unless asked)
# --------------------------------------------------------------------------------------------------


def _train_graph(graph_or_model: Model, lo: Tensor, hi: Tensor, dtype: torch.dtype | None):
    if not isinstance(lo, Tensor) or not isinstance(hi, Tensor) or lo.shape != hi.shape or lo.ndim < 2:
        raise RobustCertError("lo and hi must be tensors of the same shape [B, *input_shape]")
    if dtype is not None:
        lo, hi = lo.to(dtype), hi.to(dtype)
    graph = to_graph(graph_or_model, tuple(lo.shape[1:]), live=True)
    return graph, lo, hi


def ibp_bounds(
    graph_or_model: Model, lo: Tensor, hi: Tensor, *, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """IBP bounds of the output over the box [lo, hi] — differentiable (w.r.t. the module's parameters and
    the box), in ``dtype`` (default: lo's dtype). For training: no rounding safety margin."""
    graph, lo, hi = _train_graph(graph_or_model, lo, hi, dtype)
    return ibp.ibp_bounds_graph(graph, lo, hi)


def ibp_margin_lower(
    graph_or_model: Model, lo: Tensor, hi: Tensor, y: Tensor, *, dtype: torch.dtype | None = None
) -> Tensor:
    """IBP lower bounds of ``f_y - f_j`` over the box (last affine layers elided), [B, K], differentiable;
    column y is 0, so ``F.cross_entropy(-m, y)`` is the usual IBP robust loss. No safety margin."""
    graph, lo, hi = _train_graph(graph_or_model, lo, hi, dtype)
    shapes = graph.shapes()
    k = numel(shapes[graph.output])
    labels = _labels(y, lo.shape[0], k).to(lo.device)
    inset = InputSet(lo, hi)
    ctx = Ctx(shapes, ibp.interval_bounds(graph, lo, hi))
    return ibp.spec_lower(graph, margin_spec(labels, k, lo.dtype), inset, ctx)


def crown_margin_lower(
    graph_or_model: Model,
    lo: Tensor,
    hi: Tensor,
    y: Tensor,
    *,
    intermediate: str = "ibp",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """CROWN lower bounds of ``f_y - f_j`` over the box, [B, K], differentiable; with the default
    ``intermediate="ibp"`` this is CROWN-IBP. Column y is 0. For training: no rounding safety margin."""
    _check_choice("intermediate", intermediate, INTERMEDIATE)
    graph, lo, hi = _train_graph(graph_or_model, lo, hi, dtype)
    shapes = graph.shapes()
    k = numel(shapes[graph.output])
    labels = _labels(y, lo.shape[0], k).to(lo.device)
    inset = InputSet(lo, hi)
    bounds = crown.intermediate_bounds(graph, inset, shapes, mode=intermediate, mags=None)
    return crown.crown_lower(graph, margin_spec(labels, k, lo.dtype), inset, Ctx(shapes, bounds))


__all__ = [
    "FLOAT_MODELS",
    "SAFETY_REL",
    "BoxBounds",
    "box_bounds",
    "crown_margin_lower",
    "ibp_bounds",
    "ibp_margin_lower",
    "is_verified",
    "logit_bounds",
    "margin_lower",
    "margin_spec",
]
