"""Bounding many sub-domains of one input in one batch: the bounding engine of branch and bound.

A *split* is a sign constraint on one neuron of a ReLU's input node (a pre-activation ``z``): ``+1``
means ``z >= 0``, ``-1`` means ``z <= 0``, ``0`` no constraint. A batch of D sub-domains of ONE input
example is ``splits: dict[str, Tensor]``, mapping ReLU input node names to int8 tensors
``[D, *node_shape]`` with entries in {-1, 0, +1}. Sub-domain d is::

    X_d = {x' in the input set : every z with splits[z][d] = +1 is >= 0, every one with -1 is <= 0}

Usage::

    root = root_bounds(model, x, eps=0.03)                 # once per input: root intervals
    C = margin_spec(torch.tensor([y]), k, root.dtype)       # [1, S, K]
    picks = top_unstable(root, 7)                           # (node, flat index) of 7 neurons
    splits = sign_patterns(root, picks)                     # all 2^7 = 128 sign patterns
    lb = bound_subdomains(root, C, splits)                  # [128, S]

What is guaranteed (``lb = bound_subdomains(root, C, splits)``): for every domain d, row s, every
``x'`` in ``X_d`` and every evaluation of the network that :func:`root_bounds`' ``float_model`` covers
(``"float32"``: every float32 evaluation in any summation order, the split constraints read on that
evaluation's computed pre-activations; ``"real"``: the real-valued network), ``(C[d] · f(x'))[s] >=
lb[d, s]``; the bound computation's own rounding is covered exactly as in
:func:`robustcert.bounds.margin_lower` (every traversal runs inside ``rounding_scope(root.rounding)``).
``lb[d] = +inf`` where the split constraints are found inconsistent (``X_d`` is empty).

Why it is sound:

* Every interval of the root (:func:`root_bounds`, computed as ``margin_lower`` computes them) contains
  every value its node takes on the whole input set, hence on ``X_d`` (a subset).
* On ``X_d`` a split node's value also satisfies its sign constraints, so its interval may be clamped
  (``lb = max(lb, 0)`` for +1, ``ub = min(ub, 0)`` for -1): the clamped interval contains every value
  the node takes on ``X_d``. The ReLU relaxation built on the clamped interval (exact: identity or
  zero) is valid wherever the value lies in that interval, i.e. on ``X_d``.
* Later intervals recomputed from these (IBP, and CROWN whose relaxations are all valid on ``X_d``,
  concretised over the input box, a superset of ``X_d``) contain every value on ``X_d``; intersecting
  intervals that each contain those values keeps that property. If an intersection is empty
  (``lb > ub`` for some neuron), no point of the input set satisfies the constraints: ``X_d`` is empty
  and any bound, +inf, holds for it.
* The final CROWN (or alpha-CROWN) pass is the one of ``margin_lower`` on these intervals: valid for
  every point whose node values lie in them, so on ``X_d``.

For branch and bound: the children ``+1`` and ``-1`` of a neuron cover their parent (every value is
``>= 0`` or ``<= 0``), so the minimum over the leaves of a split tree bounds the whole input set.
Plain CROWN on a child is not always tighter than on its parent: the split neuron's exact line (e.g.
``relu(z) = z`` on ``z >= 0``) is concretised over the whole input box, where z may be negative, and
CROWN's adaptive slopes are not monotone in the intervals (``method="beta-crown"`` addresses the first,
below). Likewise ``refine=True`` is not always at least as
tight as ``refine=False``, though its intervals are nested in the latter's. ``floor`` takes the
elementwise maximum with a bound already known for the domain (its parent's), which is sound because
the parent's set contains the child's. ``base`` starts from the parent's intervals instead of the
root's (valid on the parent's set, which contains the child's), so a child recomputes only what lies
after its new split.

beta-CROWN (``method="beta-crown"``, Wang et al. 2021): the final pass also carries a Lagrange
multiplier ``beta >= 0`` per (row, split neuron) and bounds ``C · f(x') - sum beta * s * z(x')`` instead
(:func:`.alpha_crown.alpha_crown_lower` with ``splits``; the term enters the backward pass as a
coefficient on the split node, :func:`._common.backward`). On ``X_d`` every ``s * z >= 0``, so the
subtracted sum is >= 0 and the bound holds for ``C · f`` too, for any ``beta >= 0``; certification
clamps the search's proposal to that range and charges the one rounded addition per split node as any
merge of coefficients. With all unstable neurons split, the network is linear on ``X_d`` and the optimal
betas give the LP value over the box (strong duality); tested against scipy's LP solution.

Reuse: nodes that do not depend on any split node keep the root intervals as expanded views (no
copies, no recomputation). With ``refine=True`` the split nodes and every node after them get IBP
from the per-domain intervals (intersected with the root's) and, at activation inputs, CROWN for the
neurons still unstable, batched over the D domains (as :func:`.crown.intermediate_bounds`); with
``refine=False`` only the split nodes' intervals change (clamped), all others keep the root's.
Dtype-agnostic: everything computes in the dtype of ``root.inset``, the intermediate CROWN passes in
``root.refine_dtype`` when ``margin_lower`` runs them in another dtype (on outward-rounded copies, as
:func:`.crown.intermediate_bounds` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from robustcert.bounds import alpha_crown, api, crown
from robustcert.bounds._common import Bounds, Ctx, InputSet, active_rounding, outward, rounding_scope
from robustcert.bounds._soundness import FLOAT_MODELS, Rounding
from robustcert.bounds.ibp import RULES as IBP_RULES
from robustcert.errors import RobustCertError
from robustcert.graph.ir import Graph
from robustcert.graph.ops import numel

# Activations whose input may be split at 0 (each is linear on either side of 0).
SPLIT_OPS = ("relu", "leaky_relu")
METHODS = ("crown", "alpha-crown", "beta-crown")

Splits = dict[str, Tensor]


@dataclass
class Root:
    """Everything :func:`bound_subdomains` reuses for one input example (made by :func:`root_bounds`).

    ``ctx.bounds`` holds the root interval of every node ([1, *shape]) over the whole input set, computed
    with rounding model ``rounding`` exactly as ``margin_lower`` computes them; ``inset`` is the input
    set ([1, *input_shape]); ``intermediate`` is how activation inputs were bounded (``"crown"`` or
    ``"ibp"``), and how ``refine=True`` re-bounds them; ``split_nodes`` the nodes that may be split
    (inputs of ReLU / LeakyReLU), in topological order; ``refine_dtype`` the dtype of the intermediate
    CROWN passes when it differs from ``dtype`` (None: the same), as ``margin_lower`` runs them.
    """

    graph: Graph
    inset: InputSet
    shapes: dict[str, tuple[int, ...]]
    rounding: Rounding | None
    ctx: Ctx
    intermediate: str
    split_nodes: tuple[str, ...]
    refine_dtype: torch.dtype | None = None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype every bound is computed in (that of the input set)."""
        return self.inset.lo.dtype

    def unstable(self) -> dict[str, Tensor]:
        """For each split node, the bool mask [*shape] of its neurons with ``lb < 0 < ub`` at the root."""
        out = {}
        for name in self.split_nodes:
            lo, hi = self.ctx.bounds[name]
            out[name] = ((lo < 0) & (hi > 0))[0]
        return out


def _split_nodes(graph: Graph) -> tuple[str, ...]:
    acts = crown.activation_inputs(graph)
    return tuple(n.name for n in graph.nodes if any(op in SPLIT_OPS for op in acts.get(n.name, ())))


def root_bounds(
    model_or_graph: nn.Module | Graph,
    x: Tensor | None,
    eps: float | None,
    norm: str = "linf",
    domain: Any = None,
    float_model: str = "float32",
    intermediate: str = "crown",
    precision: str | None = None,
    box: tuple[Tensor, Tensor] | None = None,
) -> Root:
    """The root of a split tree: the intervals of every node over the whole input set of ONE example
    ``x`` ([1, *input_shape]) — ``{x' : ||x' - x|| <= eps} ∩ domain`` as for ``margin_lower`` — computed
    once, as ``margin_lower`` computes them (same set-up, rounding model and intermediate method).
    ``box=(lo, hi)`` ([1, *input_shape] each) instead of ``x`` and ``eps`` (None): an explicit box.

    Guarantee: for every ``x'`` in the set and every evaluation ``float_model`` covers, each node's
    value lies in its interval ``root.ctx.bounds[name]``. Bad input raises :class:`RobustCertError`.
    ``precision``: the dtype of CROWN's intermediate passes as for ``margin_lower`` (``"float32"``,
    the default, or ``"float64"``; ``root.refine_dtype``); intervals and final bounds are float64.
    """
    api._check_choice("float_model", float_model, FLOAT_MODELS)
    if isinstance(x, Tensor) and x.ndim >= 1 and x.shape[0] != 1:
        raise RobustCertError(f"x must hold ONE example [1, *input_shape], got shape {tuple(x.shape)}")
    if box is not None and (not isinstance(box[0], Tensor) or box[0].ndim < 1 or box[0].shape[0] != 1):
        raise RobustCertError("box must be (lo, hi) of ONE example, each [1, *input_shape]")
    plan = api._plan(
        model_or_graph, x, eps, norm, "crown", box, intermediate, float_model, domain, precision or "float32"
    )
    refine_dtype: torch.dtype | None = plan.refine_dtype
    if refine_dtype == plan.inset.lo.dtype:
        refine_dtype = None
    with torch.no_grad(), rounding_scope(plan.rounding):
        ctx = api._intermediate(plan.graph, plan.inset, plan.shapes, None, intermediate, refine_dtype)
    return Root(
        plan.graph,
        plan.inset,
        plan.shapes,
        plan.rounding,
        ctx,
        intermediate,
        _split_nodes(plan.graph),
        refine_dtype,
    )


def tighten_root(root: Root, C: Tensor, steps: int = 20, lr: float = 0.1) -> Root:
    """The root with its activation-input intervals tightened by alpha-CROWN's intermediate mode for
    the objective ``C`` ([1, S, K]) (:func:`.alpha_crown.optimized_intervals`, under the root's rounding
    model): each new interval is a certified interval of its node over the whole input set intersected
    with the old one, so the root's guarantee is unchanged. Costs one intermediate-mode search; every
    sub-domain then starts from the tighter intervals."""
    C = _check_spec(root, C, 1)
    rows = (C.abs().sum(-1) > 0).expand(root.inset.batch, C.shape[1])
    with torch.no_grad(), rounding_scope(root.rounding):
        bounds = alpha_crown.optimized_intervals(
            root.graph, C, root.inset, root.ctx, steps=int(steps), lr=float(lr), row_mask=rows
        )
    return Root(
        root.graph,
        root.inset,
        root.shapes,
        root.rounding,
        Ctx(root.shapes, bounds),
        root.intermediate,
        root.split_nodes,
        root.refine_dtype,
    )


# --------------------------------------------------------------------------------------------------
# split helpers
# --------------------------------------------------------------------------------------------------


def top_unstable(root: Root, k: int) -> list[tuple[str, int]]:
    """The ``k`` unstable neurons (``lb < 0 < ub`` at the root) with the largest chord intercept
    ``-lb ub / (ub - lb)`` (the area-like gap of the ReLU's triangle relaxation), as ``(node, flat
    index)``, best first. A cheap heuristic to pick neurons to split; fewer if fewer are unstable."""
    scores, names, idxs = [], [], []
    for name in root.split_nodes:
        lo, hi = (t[0].flatten() for t in root.ctx.bounds[name])
        unst = (lo < 0) & (hi > 0)
        width = torch.where(unst, hi - lo, torch.ones_like(hi))
        score = torch.where(unst, -lo * hi / width, torch.full_like(hi, -1.0))
        scores.append(score)
        names.extend([name] * score.numel())
        idxs.append(torch.arange(score.numel()))
    if not scores:
        return []
    allsc, allidx = torch.cat(scores), torch.cat(idxs)
    n = min(int(k), int((allsc >= 0).sum()))
    order = torch.argsort(allsc, descending=True, stable=True)[:n]
    return [(names[int(i)], int(allidx[int(i)])) for i in order]


def sign_patterns(root: Root, neurons: list[tuple[str, int]]) -> Splits:
    """All ``2^len(neurons)`` sign patterns of the given ``(node, flat index)`` neurons as a split batch
    (domain d takes bit j of d as the sign of neuron j: 1 -> -1, 0 -> +1). The domains cover the input
    set (every neuron is >= 0 or <= 0)."""
    k = len(neurons)
    D = 2**k
    out: Splits = {}
    for j, (name, idx) in enumerate(neurons):
        if name not in out:
            out[name] = torch.zeros((D, numel(root.shapes[name])), dtype=torch.int8)
        bits = (torch.arange(D) >> j) & 1
        out[name][:, idx] = (1 - 2 * bits).to(torch.int8)
    return {n: s.reshape((D,) + root.shapes[n]) for n, s in out.items()}


def _check_splits(root: Root, splits: Splits, n_spec: int) -> tuple[int, dict[str, Tensor]]:
    """The number of domains and the splits that constrain anything (as int8)."""
    if not isinstance(splits, dict):
        raise RobustCertError("splits must be a dict {ReLU input node name: int8 tensor [D, *node_shape]}")
    D: int | None = None
    active: dict[str, Tensor] = {}
    for name, s in splits.items():
        if name not in root.split_nodes:
            raise RobustCertError(
                f"split node {name!r} is not the input of a ReLU; splittable nodes: {', '.join(root.split_nodes)}"
            )
        if not isinstance(s, Tensor) or s.is_floating_point() or s.is_complex():
            raise RobustCertError(
                f"splits[{name!r}] must be an integer tensor (int8) with values in {{-1, 0, 1}}"
            )
        shape = root.shapes[name]
        if s.ndim != 1 + len(shape) or tuple(s.shape[1:]) != shape:
            raise RobustCertError(f"splits[{name!r}] has shape {tuple(s.shape)}; expected [D, {shape}]")
        if D is None:
            D = int(s.shape[0])
        elif int(s.shape[0]) != D:
            raise RobustCertError(f"splits disagree on the number of domains: {D} vs {int(s.shape[0])}")
        s8 = s.to(torch.int8)
        if bool(((s8 < -1) | (s8 > 1)).any()) or bool((s8.to(s.dtype) != s).any()):
            raise RobustCertError(f"splits[{name!r}] has values outside {{-1, 0, 1}}")
        if bool((s8 != 0).any()):
            active[name] = s8
    if D is None:
        D = n_spec
    if D < 1:
        raise RobustCertError("need at least one domain")
    return D, active


# --------------------------------------------------------------------------------------------------
# intervals per domain
# --------------------------------------------------------------------------------------------------


@dataclass
class DomainIntervals:
    """Per-domain intervals: ``bounds[name] = (lo, hi)`` ([D, *shape]; expanded views of the root's where
    unchanged) and ``infeasible`` [D] bool: True where the constraints were found inconsistent."""

    bounds: dict[str, Bounds]
    infeasible: Tensor

    @property
    def num_domains(self) -> int:
        return int(self.infeasible.shape[0])

    def take(self, index: Tensor) -> DomainIntervals:
        """The intervals of domains ``index`` (e.g. each child's parent: ``torch.cat([i, i])`` for the
        children of :func:`split_domains`)."""
        D = self.num_domains
        pick = {
            k: tuple(
                t.index_select(0, index)
                if t.shape[0] == D and D > 1
                else t.expand((len(index),) + tuple(t.shape[1:]))
                for t in b
            )
            for k, b in self.bounds.items()
        }
        return DomainIntervals(
            {k: (v[0], v[1]) for k, v in pick.items()}, self.infeasible.index_select(0, index)
        )


def _expand(b: Bounds, D: int) -> Bounds:
    return b[0].expand((D,) + tuple(b[0].shape[1:])), b[1].expand((D,) + tuple(b[1].shape[1:]))


def domain_inset(inset: InputSet, D: int) -> InputSet:
    """The input set repeated for D domains (expanded views)."""
    c = None if inset.center is None else inset.center.expand((D,) + tuple(inset.center.shape[1:]))
    lo, hi = _expand((inset.lo, inset.hi), D)
    return InputSet(lo, hi, c, inset.eps)


def _shared(b: Bounds) -> Bounds:
    """``b`` as [1, ...] when both ends are expanded views of one example (stride 0 along the domains):
    the same numbers for every domain."""
    lo, hi = b
    if lo.shape[0] > 1 and lo.stride(0) == 0 and hi.stride(0) == 0:
        return lo[:1], hi[:1]
    return b


def _clamp(b: Bounds, s: Tensor) -> Bounds:
    lo, hi = b
    zero = torch.zeros((), dtype=lo.dtype)
    return torch.where(s > 0, torch.maximum(lo, zero), lo), torch.where(s < 0, torch.minimum(hi, zero), hi)


def _descendants(graph: Graph, names: set[str]) -> set[str]:
    out = set(names)
    for node in graph.nodes:
        if any(i in out for i in node.inputs):
            out.add(node.name)
    return out


def subdomain_intervals(
    root: Root,
    splits: Splits,
    *,
    refine: bool = True,
    num_domains: int | None = None,
    base: DomainIntervals | None = None,
) -> DomainIntervals:
    """The interval of every node on each sub-domain (see the module docstring for what changes).

    ``base``: intervals already known to hold on each domain, [D, ...] per node (e.g. those of each
    domain's parent in a split tree, computed with the parent's constraints); they replace the root's
    as the starting point, so ``splits`` then need only hold the NEW constraints (only their
    descendants are recomputed; the parent's constraints are already in its intervals). Without it the
    root's intervals are the base and ``splits`` must hold every constraint.

    Guarantee: for each domain d, every point of ``X_d`` (the input set under the constraints of
    ``splits``, and of ``base``'s domains when given) and every evaluation ``root.rounding`` covers,
    each node's value lies in ``bounds[name][0][d], bounds[name][1][d]``; ``infeasible[d]`` only when
    ``X_d`` is empty. ``num_domains`` is D when ``splits`` is empty (default 1, or base's D). Runs inside
    ``rounding_scope(root.rounding)``.
    """
    n = num_domains if num_domains is not None else (1 if base is None else base.num_domains)
    D, active = _check_splits(root, splits, int(n))
    _check_base(base, D)
    with torch.no_grad(), rounding_scope(root.rounding):
        return _intervals(root, active, D, refine, base)


def _check_base(base: DomainIntervals | None, D: int) -> None:
    if base is not None and base.num_domains != D:
        raise RobustCertError(f"base has {base.num_domains} domains, the splits {D}")


def _intervals(
    root: Root, active: dict[str, Tensor], D: int, refine: bool, base: DomainIntervals | None = None
) -> DomainIntervals:
    graph = root.graph
    root_b = root.ctx.bounds if base is None else base.bounds
    changed = _descendants(graph, set(active)) if refine else set(active)
    infeasible = torch.zeros(D, dtype=torch.bool) if base is None else base.infeasible.clone()
    out: dict[str, Bounds] = {}
    if not changed:
        return DomainIntervals({n.name: _expand(root_b[n.name], D) for n in graph.nodes}, infeasible)
    targets = crown.refine_targets(graph)
    nonlin = crown.nonlinear_ancestry(graph)
    model = active_rounding()
    dtype, rdtype = root.dtype, root.refine_dtype
    inset = domain_inset(root.inset, D)
    ctx = Ctx(root.shapes, out)
    if rdtype is not None:  # CROWN passes in rdtype on outward-rounded copies (each converted once)
        inset = inset.outward(rdtype)
        converted: dict[str, Bounds] = {}
        ctx.bounds = converted
    for node in graph.nodes:
        rb = _expand(root_b[node.name], D)
        if node.name not in changed:
            out[node.name] = rb
            continue
        ins = [out[i] for i in node.inputs]
        if refine and any(i in changed for i in node.inputs):
            b = IBP_RULES[node.op](node, *ins)
            if model is not None:
                b = model.forward(node, b, ins)
            lo, hi = torch.maximum(b[0], rb[0]), torch.minimum(b[1], rb[1])
            recomputed = True
        else:
            lo, hi = rb
            recomputed = False
        s = active.get(node.name)
        if s is not None:
            lo, hi = _clamp((lo, hi), s)
        if recomputed and root.intermediate == "crown" and node.name in targets and nonlin[node.name]:
            if all(op in crown._PIECEWISE_AT_ZERO for op in targets[node.name]):
                want = ((lo < 0) & (hi > 0)).flatten(1)
            else:
                want = torch.ones(D, lo[0].numel(), dtype=torch.bool)
            want &= ~infeasible.unsqueeze(1)
            if bool(want.any()):
                if rdtype is not None:
                    for k, v in out.items():
                        if k not in converted:
                            converted[k] = outward(v, rdtype)
                cl, cu = crown.crown_node_bounds(graph, node.name, inset, ctx, want, crown.RULES)
                lo, hi = torch.maximum(lo, cl.to(dtype)), torch.minimum(hi, cu.to(dtype))
        infeasible |= (lo > hi).flatten(1).any(1)
        out[node.name] = (lo, hi)
    return DomainIntervals(out, infeasible)


# --------------------------------------------------------------------------------------------------
# final bound
# --------------------------------------------------------------------------------------------------


def _check_spec(root: Root, C: Any, D: int) -> Tensor:
    k = numel(root.shapes[root.graph.output])
    if not isinstance(C, Tensor) or C.ndim != 3 or C.shape[0] not in (1, D) or C.shape[2] != k:
        raise RobustCertError(f"C must be a tensor [1 or {D}, S, {k}], got {getattr(C, 'shape', C)}")
    if bool((~torch.isfinite(C)).any()):
        raise RobustCertError("C must be finite")
    return C.detach().to(device="cpu", dtype=root.dtype)


def final_bounds_warm(
    root: Root,
    C: Tensor,
    intervals: DomainIntervals,
    *,
    alpha_steps: int,
    alpha_lr: float = 0.1,
    floor: Tensor | None = None,
    splits: Splits | None = None,
    warm: alpha_crown.Proposal | None = None,
) -> tuple[Tensor, alpha_crown.Proposal]:
    """:func:`final_bounds` with ``method="beta-crown"`` (``"alpha-crown"`` without ``splits``) started
    from ``warm`` (e.g. each domain's parent's slopes and multipliers), returning the proposal too (for
    the children). Same guarantee."""
    D = intervals.num_domains
    C = _check_spec(root, C, D)
    inset = domain_inset(root.inset, D)
    ctx = Ctx(root.shapes, intervals.bounds)
    rows = (C.abs().sum(-1) > 0).expand(D, C.shape[1])
    with torch.no_grad(), rounding_scope(root.rounding):
        lb, proposal = alpha_crown.alpha_crown_search(
            root.graph, C, inset, ctx, steps=alpha_steps, lr=alpha_lr, row_mask=rows, splits=splits, warm=warm
        )
    return _finish(lb, intervals, floor), proposal


def _finish(lb: Tensor, intervals: DomainIntervals, floor: Tensor | None) -> Tensor:
    """+inf on infeasible domains, then the elementwise max with ``floor`` (a bound known to hold)."""
    lb = torch.where(intervals.infeasible.unsqueeze(1), torch.full_like(lb, torch.inf), lb)
    if floor is not None:
        lb = torch.maximum(lb, floor.to(lb.dtype))
    return lb.detach()


def final_bounds(
    root: Root,
    C: Tensor,
    intervals: DomainIntervals,
    *,
    method: str = "crown",
    alpha_steps: int = 0,
    alpha_lr: float = 0.1,
    floor: Tensor | None = None,
    splits: Splits | None = None,
) -> Tensor:
    """Lower bounds [D, S] of ``C · output`` on each domain given its ``intervals``: CROWN (or
    alpha-CROWN with ``alpha_steps`` steps, never looser than CROWN; or beta-CROWN, alpha-CROWN with a
    Lagrange multiplier per split constraint of ``splits``, {node: int8 [D, *shape]}, constraints that
    hold on each domain) over the D domains in one batch;
    +inf for infeasible domains; then the elementwise max with ``floor`` ([D, S] or broadcastable, a
    bound known to hold on each domain, e.g. its parent's), if given. Runs inside
    ``rounding_scope(root.rounding)``; guarantee as :func:`bound_subdomains`."""
    api._check_choice("method", method, METHODS)
    if method != "crown" and alpha_steps > 0 and not (method == "beta-crown" and splits is None):
        beta = splits if method == "beta-crown" else None
        return final_bounds_warm(
            root,
            C,
            intervals,
            alpha_steps=int(alpha_steps),
            alpha_lr=float(alpha_lr),
            floor=floor,
            splits=beta,
        )[0]
    D = intervals.num_domains
    C = _check_spec(root, C, D)
    inset = domain_inset(root.inset, D)
    with torch.no_grad(), rounding_scope(root.rounding):
        # intervals shared by all domains (expanded views) enter as one [1, ...] copy: the backward
        # coefficients then stay batch-shared until they cross a node whose interval differs
        shared = Ctx(root.shapes, {k: _shared(b) for k, b in intervals.bounds.items()})
        lb = crown.crown_lower(root.graph, C, inset, shared).expand(D, C.shape[1])
    return _finish(lb, intervals, floor)


def bound_subdomains(
    root: Root,
    C: Tensor,
    splits: Splits,
    *,
    refine: bool = True,
    method: str = "crown",
    alpha_steps: int = 0,
    alpha_lr: float = 0.1,
    floor: Tensor | None = None,
    batch_size: int | None = None,
    base: DomainIntervals | None = None,
) -> Tensor:
    """Lower bounds [D, S] of ``C · f`` over each sub-domain ``X_d`` of ``splits`` (module docstring).

    ``C``: [1 or D, S, K] specification rows (e.g. :func:`robustcert.bounds.margin_spec`); ``splits``:
    ``{ReLU input node: int8 [D, *shape] in {-1, 0, 1}}`` (an empty dict means D = C.shape[0] domains
    without constraints: the root's CROWN bound, as ``margin_lower`` computes it). ``refine``: recompute
    the intervals after the split nodes (tighter, slower) or keep the root's. ``method``: ``"crown"``,
    ``"alpha-crown"`` (``alpha_steps`` projected-Adam steps on the ReLU slopes, per domain and row) or
    ``"beta-crown"`` (the same steps also on one Lagrange multiplier per split constraint in ``splits``:
    with ``base``, only the new constraints get one).
    ``floor``: see :func:`final_bounds`. ``batch_size``: at most this many domains per batch (None: all
    D in one batch); the result does not depend on it beyond float rounding. ``base``: known intervals
    of each domain (its parent's), see :func:`subdomain_intervals`; then ``splits`` need only hold the
    new constraints.

    Guarantee: for each d, s, every x' in ``X_d`` and every evaluation ``root.rounding`` covers,
    ``(C[d] · f(x'))[s] >= result[d, s]``; +inf only for domains whose constraints are inconsistent.
    """
    C_t = C if isinstance(C, Tensor) else torch.as_tensor(C)
    n_spec = int(C_t.shape[0]) if C_t.ndim == 3 else 1
    D, active = _check_splits(root, splits, n_spec if base is None else base.num_domains)
    _check_base(base, D)
    step = D if batch_size is None else max(1, int(batch_size))
    out = []
    for d0 in range(0, D, step):
        d1 = min(D, d0 + step)
        part = {k: v[d0:d1] for k, v in active.items()}
        C_p = C_t[d0:d1] if C_t.ndim == 3 and C_t.shape[0] == D and D > 1 else C_t
        f_p = floor
        if floor is not None and floor.ndim == 2 and floor.shape[0] == D and D > 1:
            f_p = floor[d0:d1]
        b_p = None
        if base is not None:
            b_p = DomainIntervals(
                {
                    k: (lo[d0:d1] if lo.shape[0] == D else lo, hi[d0:d1] if hi.shape[0] == D else hi)
                    for k, (lo, hi) in base.bounds.items()
                },
                base.infeasible[d0:d1],
            )
        with torch.no_grad(), rounding_scope(root.rounding):
            intervals = _intervals(root, part, d1 - d0, refine, b_p)
        out.append(
            final_bounds(
                root,
                C_p,
                intervals,
                method=method,
                alpha_steps=alpha_steps,
                alpha_lr=alpha_lr,
                floor=f_p,
                splits=part or None,
            )
        )
    return out[0] if len(out) == 1 else torch.cat(out)


def split_domains(splits: Splits, neuron: tuple[str, int], shapes: dict[str, tuple[int, ...]]) -> Splits:
    """The 2D children of a batch of D domains split on one more neuron ``(node, flat index)``: the
    first D take +1 there, the last D take -1 (overwriting any earlier sign of that neuron). Together
    the children cover their parents."""
    D = next(iter(splits.values())).shape[0] if splits else 1
    name, idx = neuron
    out: Splits = {}
    for n in set(splits) | {name}:
        base = splits.get(n)
        if base is None:
            base = torch.zeros((D,) + shapes[n], dtype=torch.int8)
        kids = torch.cat([base, base]).flatten(1).clone()
        if n == name:
            kids[:D, idx], kids[D:, idx] = 1, -1
        out[n] = kids.reshape((2 * D,) + shapes[n])
    return out


__all__ = [
    "METHODS",
    "DomainIntervals",
    "Root",
    "Splits",
    "bound_subdomains",
    "final_bounds",
    "final_bounds_warm",
    "root_bounds",
    "sign_patterns",
    "split_domains",
    "subdomain_intervals",
    "tighten_root",
    "top_unstable",
]
