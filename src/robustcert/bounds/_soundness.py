"""Rounding: what a certified bound covers, and the error analysis that keeps float rounding from
flipping a verdict.

Two sources of rounding sit between a computed bound and the truth it certifies: the deployed float32
network (``float_model="float32"``, the default) and the bound computation itself, which runs in float64
(IBP intervals, final bounds) or float32 (CROWN's intermediate passes by default, ``precision``). Both are
handled per operation, with the magnitudes the computation actually meets, by :class:`Rounding`; the
traversals of :mod:`._common` call it through :func:`._common.rounding_scope`. The rule files (ibp,
crown, alpha-crown) compute in exact-arithmetic terms and know nothing of it.

Notation. ``u_c`` is the unit roundoff of the dtype a pass computes in (``2^-53`` for float64, ``2^-24``
for float32: every weight below reads it from the tensors it is given, :func:`unit`), ``u = 2^-24``
that of the deployed float32 network, ``gamma_k(u) = k u / (1 - k u)`` (Higham, *Accuracy and Stability
of Numerical Algorithms*, 2nd ed., §3.1). alpha-CROWN's slope search runs in float32 inside the same
scope and gets the same terms (so its objective tracks the certified bound); its values are never
bounds: the slopes it proposes are re-evaluated in the certification dtype. For a node ``v``, ``D_v = [lo_v, hi_v]`` is its interval (``ctx.bounds``)
and ``m_v = max(|lo_v|, |hi_v|)`` elementwise. For an affine node ``v = L(u) + c``, the *absolute
computation* at the magnitudes of its inputs is ``a_v = |L| m_u + |c|`` (per neuron); for ops whose
constant is itself computed from several parameters it is the absolute value of every term as the op
evaluates it: ``normalize``: ``(m + |mean|) / std``; ``batchnorm``: ``|w| (m + |mu|) / sqrt(var + eps)
+ |beta|``.

1. What is certified
--------------------
``"real"``: the real-valued network with the stored weights. ``"float32"``: every float32 evaluation
of the graph's ops, in any summation order, with or without FMA, at ``fl32(x')`` for every ``x'`` of
the perturbation set (a float32 ``x'`` is its own rounding). Write each computed value as
``v~ = op(u~) + delta_v``, ``op`` applied exactly to the computed inputs. Then:

* affine op, evaluated as sums of products (BLAS, im2col/direct convolution; not Winograd/FFT):
  Higham's Lemma 3.1/(3.5) gives ``|fl(w^T x + b) - (w^T x + b)| <= gamma_n(u) (|w|^T |x| + |b|)`` for
  any order, n = fan-in + 1 (the bias is one more term); one more rounding covers parameters that are
  not float32 numbers (rounded once on conversion). A term whose input interval is ``[0, 0]`` (a stably
  inactive ReLU, zero padding) is an exact 0 in float32: its product and its addition are exact in any
  order, so for linear layers and convolutions the fan-in counts only the inputs that can be nonzero
  (per example; per output over its receptive field for a convolution). So ``|delta_v| <= e_v :=
  gamma_{k_v}(u) a_v + 2^-120 (a_v(1) + k_v + 1)`` with ``k_v`` = fan-in + 2 (linear, conv2d), kernel
  + 3 (avgpool2d), 4 (normalize), 10 (batchnorm), 2 (``*_const``), 2 (add), 1 (pad: its value
  converted). The absolute term bounds underflow, flush-to-zero and denormals-are-zero (at most
  ``2^-126`` per operation or input, scaled by the weights).
* copies (flatten, reshape, identity, concat, permute, slice, gather, pad with 0), ReLU and the maximum
  of a max pool (``reduce_max``): exact (``delta = 0``; ``2^-120`` for a maximum under DAZ).
* LeakyReLU: ``a x`` rounded once, ``a`` converted once: ``gamma_2 |a| m_u``.
* sigmoid, tanh: ``|delta| <= 16 u |f(u~)| + 2^-120``. This is an assumption about torch's float32
  kernels (SLEEF / libm, ``1 / (1 + exp(-x))``: a few ulps); tests/test_float_soundness.py measures at
  most 2.5 ulps on a dense grid, so 16 leaves a factor 6.
* GELU ``0.5 x (1 + erf(x / c))``: erf to a few ulps and three roundings, ``|delta| <= 32 u |u~| +
  2^-120`` (absolute in ``|x|``, so the cancellation in ``1 + erf`` for ``x << 0`` is covered; an
  assumption like sigmoid's).
* input: ``|fl32(x') - x'| <= u |x'| + 2^-120``.

``op(u~)`` is a real op applied to a point of ``D_u``, so the float32 network is the real network with
one more bounded input ``delta_v`` at every node: a forward interval is the real one widened by ``e_v``,
and in back substitution ``A . v~ = A . op(u~) + A . delta_v >= A . op(u~) - |A| . e_v``. Relaxations
are built on ``D_u``, which holds every computed ``u~``. Nothing is compounded: ``e_v`` follows the
magnitudes of ``v``'s own inputs.

2. The bound computation (float64 or float32)
--------------------------------------------
The backward pass treats its computed coefficients ``Â`` as exact numbers and bounds each residual
(the technique of safe bounds in linear programming: any coefficients give a valid inequality once the
residual is accounted for). Every product and sum is one operation of the computing dtype in any order
(Higham's model): inside a rounding scope float32 matmuls run at full precision (no TF32/bfloat16) and
NNPACK (Winograd/FFT convolutions) is off.

* Affine node: ``Â_u = fl(Â_v L)``, ``b = fl(Â_v . c)``. Exactly, ``Â_v . L(u~) = Â_u . u~ + (Â_v L -
  Â_u) . u~ + Â_v . c``. Each entry of ``Â_u`` sums at most ``t_v`` products (``back_terms``: the
  output features of a linear layer, ``C_out / groups x ceil(kh / s_h) x ceil(kw / s_w)`` for a
  convolution, the covering windows of a pool, 1 for element-wise ops; ``numel(v)`` when unknown), so
  ``|Â_v L - Â_u| <= gamma_{t_v} |Â_v| |L|`` (Higham (3.13)); the bias dot takes at most ``t_b``
  roundings per term (``numel(v) = N``; a convolution sums each channel's map, multiplies by the bias
  and sums the channels: ``H W + C + 1``): ``|b - Â_v . c| <= gamma_{t_b} |Â_v| |c|``. With ``|u~| <= m_u``
  and ``|L| m_u <= a_v``, ``|c| = a_v(0)`` the bound loses at most ``|Â_v| . (gamma_{t_v + 2} a_v +
  gamma_{t_b + 2} a_v(0))``. Elementwise ops whose
  scale is computed (batchnorm's scale/shift; the window representation's ``s = op(1) - op(0)``) have
  ``|s^ - s| <= gamma_16 (a_v(1) + a_v(0))``, adding ``gamma_16 |Â_v| . (a_v(1) + a_v(0)) m_u``. A
  transpose that only gathers rows of ``L`` (the identity specification through a linear layer,
  :class:`.crown.UnitRows`) is exact and is charged the same, which is more than needed.
* Activation node with computed lines ``aL u + bL <= f(u) <= aU u + bU`` (``s = max(|aL|, |aU|)``,
  ``b = max(|bL|, |bU|)``, ``F`` a bound on ``|f|`` over ``D_u``: 0 for ReLU and max, ``max(1, |a|) m_u``
  for LeakyReLU, ``max |f(lb)|, |f(ub)|`` for sigmoid/tanh, ``m_u`` for GELU as ``|gelu(x)| <= |x|``):
  (i) the computed lines are within ``gamma_k (2 s m_u + b + F)`` of lines that are exactly valid
  (``k = 16`` for ReLU, LeakyReLU, max; 64 for sigmoid, tanh, GELU): a ReLU/LeakyReLU/max chord takes
  about 4 roundings; a sigmoid/tanh tangent or chord is an exact tangent/chord evaluated with few-ulp
  library functions, and if the bisection's rounded check admits a tangent that misses ``f(lb)`` by
  ``eta``, concavity of ``t_d - f`` on ``[lb, 0]`` (or the convexity argument of the chord) keeps the
  violation ``<= eta`` on the whole interval; GELU's intercepts are extremes of ``f - a x`` from few-ulp
  evaluations, and a root bracket whose signs are rounded moves the extreme by at most the interval
  width times the rounding of ``f' - a``; (ii) ``Â_u = Â aU + Â+ (aL - aU)`` (four roundings) is off by
  at most ``3 gamma_4 |Â| s``; (iii) the intercept dots by ``gamma_{N+2} |Â| b``. Together: ``w_v =
  gamma_k (2 s m_u + b + F) + 3 gamma_4 s m_u + gamma_{N+2} b``, plus ``e_v`` of section 1. Per-neuron
  lines are weighed once per neuron and the weight laid out like the coefficients. For a max pool the
  lines live on the window entries (the input of ``reduce_max``): the slack sums ``|Â| w`` over them,
  and the gather's transpose (a scatter-add of at most ``numel(v)`` copies) is an affine node like any
  other.
* A node read twice gets the sum of two coefficient sets, one rounding: ``gamma_1 |Â| m_u``.
* Concretisation over the input box with ``c^ = fl((lo+hi)/2)``, ``r^ = fl((hi-lo)/2)``: for ``x`` in
  the box ``|x - c^| <= r^ (1 + gamma_1) + u_c |c|``; the computed ``fl(Â . c^) - fl(|Â| . t)`` with
  ``t = r^ + (inflated weight)`` rounded up, and the one subtraction, err by at most ``gamma_{N+2} |Â| .
  (|c^| + t)``, so the weight ``gamma_{N+4} |Â| . 2 m_in`` covers it with room (``|c^| + r^ <= m_in (1 +
  2 u_c)``). The L2 ball bound ``Â . x0 - eps ||Â||_2``: ``gamma_{N+4} (|Â| . |x0| + eps ||Â||_2)`` (the
  2-norm is computed to relative ``gamma_{N+2}``). An interval leaf: ``gamma_{N+2} |Â| . m_v``.
* Scalars: bias terms are added with directed rounding (``nextafter`` toward -inf for a lower bound
  after every addition, which is at least the rounding error of round-to-nearest); the slack
  ``S = sum_v |Â_v| . w_v`` (non-negative terms, relative error ``<= gamma_{#terms}``) is multiplied by
  the inflation — ``1 + 2^-20`` in float64 (``>= 1 + gamma_k`` for ``k < 2^32``), ``1.25`` in float32
  (``>= 1 + gamma_k`` for ``k < 2^21``; a graph with a node of more than ``MAX_TERMS32 = 2^20`` neurons
  computes in float64 instead) — and subtracted, again with directed rounding. The same inflation
  covers the relative rounding of the weights themselves.
* Underflow: every bound also subtracts ``FLOOR`` (``2^-64`` in float32, ``2^-900`` in float64). An
  underflowing float32 operation errs by at most ``2^-126`` times its other factor (also with
  flush-to-zero / denormals-are-zero); the allowance covers fewer than ``2^62`` such operations-times-
  magnitudes per bound (an assumption, like the ulp accuracy of section 1: coefficients and intervals
  below ``2^20`` and fewer than ``2^40`` operations per bound are far inside it).
* Mixed dtypes: a float32 pass receives outward-rounded copies of the float64 set and intervals
  (:func:`._common.outward`: each end stepped one ulp outward where the conversion moved it inward;
  an L2 centre rounded to nearest with the radius grown by the distance moved), so every statement above
  holds for a set containing the original; its float32 results are exact float64 numbers.

Each node contributes ``|Â_v| . w_v`` with ``w_v`` proportional to the magnitudes of its own inputs:
the margin grows with the sum over layers, not with a product of ``(2m + 1)`` factors. The cost is one
``|Â| . w`` product per node visited (like the bias) and one ``|L| m`` product per node and interval
set (cached).

3. Intervals
------------
IBP's forward intervals (always float64) are the rule's interval widened by ``(e_v + w_v)`` times the
inflation, plus ``FLOOR``, with directed rounding; for an affine node ``w_v = 4 gamma_{K_v}(u_c) (a_v +
alpha_v m_u)`` with ``K_v = numel(v) + fan-in + 16`` (IBP's centre/radius form: ``c, r`` of the input
interval rounded, two products, the ``±``, at most ``2 gamma_{fan-in + 4} a_v``), ``alpha_v = a_v(1) +
a_v(0)`` for elementwise ops; for an activation ``w_v`` is the error of evaluating ``f`` at the interval
ends: 0 for ReLU and max, ``gamma_64 F`` for the others, ``2 gamma_2 |a| m_u`` for LeakyReLU. CROWN's
intermediate intervals come out of the backward pass above (the target node's own ``delta``
included), so each is rigorous, and so is their intersection. The input box is rounded outward
(``robustcert.bounds.api``). Intervals may be infinite only if a bound overflows; then the margin is
NaN or -inf and nothing is verified.

Legacy margin (reference only)
------------------------------
:func:`magnitudes`, :func:`node_tol`, :func:`spec_tol` and :func:`widen` are the previous scheme
(``2^-30 (1 + M)``, ``M`` from a forward pass of absolute values with ``2m + 1`` per activation). It
grows exponentially with depth and is about the real-valued network only; it is kept for comparison
(``bench/float_margins.py``) and is not used by the public API.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from robustcert.bounds._common import Bounds, Ctx, InputSet, forward_pass, rounding_scope, toward
from robustcert.bounds.ibp import RULES as IBP_RULES
from robustcert.errors import RobustCertError
from robustcert.graph.ir import Graph, Node
from robustcert.graph.ops import OPS, numel, param

FLOAT_MODELS = ("float32", "real")

U32 = 2.0**-24
U64 = 2.0**-53
# Absolute allowance per float32 operation or input for underflow, flush-to-zero, denormals-are-zero.
TINY32 = 2.0**-120
# Relative error allowed for sigmoid/tanh in float32, in units of u (measured: <= 2.5).
ACT_ULPS32 = 16
# Inflation of every slack: covers the relative rounding of the slack sums and of the weights
# (section 4): float64 sums of < 2^32 terms, float32 sums of < 2^20 terms (MAX_TERMS32).
INFLATE = 1.0 + 2.0**-20
INFLATE32 = 1.25
MAX_TERMS32 = 2**20
# Absolute allowance per bound for underflow in the bound computation itself (section 4).
FLOOR = {torch.float64: 2.0**-900, torch.float32: 2.0**-64}
# Unit roundoff of the bound computation per dtype.
UNIT = {torch.float64: U64, torch.float32: U32}


def gamma(k: int | float, u: float) -> float:
    """Higham's ``gamma_k = k u / (1 - k u)``; +inf when ``k u >= 1/2`` (the bound no longer applies)."""
    ku = k * u
    return ku / (1.0 - ku) if ku < 0.5 else math.inf


def unit(dtype: torch.dtype) -> float:
    """``u_c``: the unit roundoff of a bound computation in ``dtype`` (float32 or float64)."""
    u = UNIT.get(dtype)
    if u is None:
        raise RobustCertError(f"certified bounds compute in float32 or float64, got {dtype}")
    return u


# --------------------------------------------------------------------------------------------------
# per-op facts: float32 rounding, absolute computation, activation error terms
# --------------------------------------------------------------------------------------------------

AbsComp = Callable[[Node, Sequence[Tensor]], Tensor]


def _abs_linear(node: Node, ms: Sequence[Tensor]) -> Tensor:
    m = ms[0]
    bias = node.params.get("bias")
    out = F.linear(m, param(node, "weight", m).abs())
    return out if bias is None else out + param(node, "bias", m).abs()


def _abs_conv2d(node: Node, ms: Sequence[Tensor]) -> Tensor:
    m, p = ms[0], node.params
    bias = None if p.get("bias") is None else param(node, "bias", m).abs()
    W = param(node, "weight", m).abs()
    return F.conv2d(m, W, bias, p["stride"], p["padding"], p["dilation"], p["groups"])


def _abs_forward(node: Node, ms: Sequence[Tensor]) -> Tensor:
    """Ops with non-negative weights and no constant (average pool, gather): the op itself on ``m``."""
    return OPS[node.op].forward(node, *ms)


def _channel(node: Node, key: str, m: Tensor) -> Tensor:
    v = param(node, key, m)
    return v.reshape((-1,) + (1,) * (m.ndim - 2))


def _abs_normalize(node: Node, ms: Sequence[Tensor]) -> Tensor:
    m = ms[0]
    return (m + _channel(node, "mean", m).abs()) / _channel(node, "std", m)


def _abs_batchnorm(node: Node, ms: Sequence[Tensor]) -> Tensor:
    m = ms[0]
    var = _channel(node, "running_var", m) + node.params["eps"]
    scale = _channel(node, "weight", m).abs() / torch.sqrt(var)
    return scale * (m + _channel(node, "running_mean", m).abs()) + _channel(node, "bias", m).abs()


def _abs_add_const(node: Node, ms: Sequence[Tensor]) -> Tensor:
    return ms[0] + param(node, "value", ms[0]).abs()


def _abs_mul_const(node: Node, ms: Sequence[Tensor]) -> Tensor:
    return ms[0] * param(node, "value", ms[0]).abs()


def _abs_div_const(node: Node, ms: Sequence[Tensor]) -> Tensor:
    return ms[0] / param(node, "value", ms[0]).abs()


def _abs_add(node: Node, ms: Sequence[Tensor]) -> Tensor:
    return ms[0] + ms[1]


def _abs_pad(node: Node, ms: Sequence[Tensor]) -> Tensor:
    from robustcert.graph.ops import pad_amounts  # lazily: an op of the newer graph IR

    return F.pad(ms[0], pad_amounts(node), mode="constant", value=abs(float(node.params["value"])))


def _fan_linear(node: Node) -> int:
    return int(node.params["weight"].shape[1])


def _fan_conv2d(node: Node) -> int:
    w = node.params["weight"]
    return int(w.shape[1] * w.shape[2] * w.shape[3])


def _fan_pool(node: Node) -> int:
    kh, kw = node.params["kernel_size"]
    return int(kh * kw)


def _one(node: Node) -> int:
    return 1


def _covering(kernel: int, stride: int, dilation: int) -> int:
    """How many output positions of a sliding window can read one input position (one axis)."""
    return -(-kernel // stride) if dilation == 1 else kernel


def _back_conv2d(node: Node) -> int:
    """Terms of one entry of a convolution's transpose: output channels of its group x covering positions."""
    w, p = node.params["weight"], node.params
    co = int(w.shape[0]) // int(p["groups"])
    st, dl = p["stride"], p["dilation"]
    return co * _covering(int(w.shape[2]), st[0], dl[0]) * _covering(int(w.shape[3]), st[1], dl[1])


def _bias_terms_conv2d(shape: tuple[int, ...]) -> int:
    """The transposed convolution's bias dot sums each channel's map, multiplies, then sums channels."""
    c, h, w = shape
    return h * w + c + 1


def _back_pool(node: Node) -> int:
    (kh, kw), st = node.params["kernel_size"], node.params["stride"]
    return _covering(int(kh), int(st[0]), 1) * _covering(int(kw), int(st[1]), 1)


def _live_linear(node: Node, ms: Sequence[Tensor]) -> Tensor:
    """Per example, the inputs that can be nonzero ([B, 1]): the others are exactly 0 in float32."""
    return (ms[0] > 0).sum(-1, keepdim=True).to(ms[0].dtype)


def _live_conv2d(node: Node, ms: Sequence[Tensor]) -> Tensor:
    """Per output neuron, the inputs of its receptive field that can be nonzero (padding is exact 0)."""
    m, p = ms[0], node.params
    w = node.params["weight"]
    ones = torch.ones(tuple(w.shape), dtype=m.dtype, device=m.device)
    live = (m > 0).to(m.dtype)
    return F.conv2d(live, ones, None, p["stride"], p["padding"], p["dilation"], p["groups"])


@dataclass(frozen=True)
class AffineFacts:
    """Rounding facts of an affine op (section 1 and 2 of the module docstring).

    ``fan_in(node)``: terms per output; ``k32``: float32 roundings beyond them (bias, parameter
    conversion, a division...), so ``k_v = fan_in + k32``; ``abs_comp(node, [m of each input])``: ``a_v``;
    ``elementwise``: its scale is computed in float64 (the ``alpha_v`` term); ``copy``: float32 only
    copies values (gather), so only the float64 transpose (a sum) rounds; ``live(node, [m])``: the
    number of terms per output that can be nonzero (at most ``fan_in``), used instead of it in float32;
    ``back_terms(node)``: the most products summed into one entry of the transpose (None: ``numel(v)``,
    always enough); ``bias_terms(shape of v)``: the roundings of the bias dot (None: ``numel(v)``).
    """

    fan_in: Callable[[Node], int]
    k32: int
    abs_comp: AbsComp
    elementwise: bool = False
    copy: bool = False
    live: Callable[[Node, Sequence[Tensor]], Tensor] | None = None
    back_terms: Callable[[Node], int] | None = None
    bias_terms: Callable[[tuple[int, ...]], int] | None = None


@dataclass(frozen=True)
class ActFacts:
    """Rounding facts of an activation. With ``m`` the magnitude of its input interval and ``F`` a bound
    on ``|f|`` over it (``f_mag``): ``e32(node, m, F)`` is the float32 error ``e_v``, ``e_comp(node, m, F, u_c)``
    the error of evaluating ``f`` at an interval end in the bound computation (IBP), and ``K = N + k64`` the index of the
    relaxation weight ``gamma_K (4 s m + 2 b + 2 F)``."""

    e32: Callable[[Node, Tensor, Tensor | float], Tensor | float]
    e_comp: Callable[[Node, Tensor, Tensor | float, float], Tensor | float]
    f_mag: Callable[[Node, Tensor, Tensor], Tensor | float]
    k64: int


def _zero(node: Node, a: Tensor, b: Tensor | float) -> float:
    return 0.0


def _zero_comp(node: Node, a: Tensor, b: Tensor | float, u: float) -> float:
    return 0.0


def _tiny(node: Node, m: Tensor, f: Tensor | float) -> float:
    return TINY32


def _monotone_mag(node: Node, lb: Tensor, ub: Tensor) -> Tensor:
    """``max |f|`` on ``[lb, ub]`` for a monotone f, enlarged for its evaluation (a few ulps of float32
    or float64 are below ``2^-16``)."""
    f = OPS[node.op].forward
    return torch.maximum(f(node, lb).abs(), f(node, ub).abs()) * (1 + 2.0**-16)


def _input_mag(node: Node, lb: Tensor, ub: Tensor) -> Tensor:
    """``max |x|`` on ``[lb, ub]``: a bound on ``|f|`` for any f with ``|f(x)| <= |x|`` (GELU)."""
    return torch.maximum(lb.abs(), ub.abs())


def _leaky_slope(node: Node) -> float:
    return abs(float(node.params["negative_slope"]))


ACTIVATIONS: dict[str, ActFacts] = {
    # exact in float32; the relaxation lines are chords/slopes with a few roundings
    "relu": ActFacts(_zero, _zero_comp, _zero, 16),
    # a x rounded once (and a converted once) on the negative side
    "leaky_relu": ActFacts(
        lambda n, m, f: gamma(2, U32) * _leaky_slope(n) * m + TINY32,
        lambda n, m, f, u: 2 * gamma(2, u) * _leaky_slope(n) * m,
        lambda n, lb, ub: max(1.0, _leaky_slope(n)) * torch.maximum(lb.abs(), ub.abs()),
        16,
    ),
    # torch's float32 kernels: relative error <= ACT_ULPS32 u (assumption, measured <= 2.5 u)
    "sigmoid": ActFacts(
        lambda n, m, f: ACT_ULPS32 * U32 * f + TINY32,
        lambda n, m, f, u: gamma(64, u) * f,
        _monotone_mag,
        64,
    ),
    "tanh": ActFacts(
        lambda n, m, f: ACT_ULPS32 * U32 * f + TINY32,
        lambda n, m, f, u: gamma(64, u) * f,
        _monotone_mag,
        64,
    ),
    # 0.5 x (1 + erf(x / c)): erf to a few ulps, three roundings; |error| <= 32 u |x| (cancellation in
    # 1 + erf for x << 0 included: the bound is absolute in |x|, not relative to |gelu(x)|)
    "gelu": ActFacts(
        lambda n, m, f: 32 * U32 * m + TINY32, lambda n, m, f, u: gamma(64, u) * m, _input_mag, 64
    ),
    # the maximum of float32 numbers is one of them
    "reduce_max": ActFacts(_tiny, _zero_comp, _zero, 16),
}

AFFINE: dict[str, AffineFacts] = {
    "linear": AffineFacts(_fan_linear, 2, _abs_linear, live=_live_linear),
    "conv2d": AffineFacts(
        _fan_conv2d, 2, _abs_conv2d, live=_live_conv2d, back_terms=_back_conv2d, bias_terms=_bias_terms_conv2d
    ),
    "avgpool2d": AffineFacts(_fan_pool, 3, _abs_forward, back_terms=_back_pool),
    "add": AffineFacts(lambda n: 2, 0, _abs_add, back_terms=_one),
    "normalize": AffineFacts(_one, 3, _abs_normalize, elementwise=True, back_terms=_one),
    "batchnorm": AffineFacts(_one, 9, _abs_batchnorm, elementwise=True, back_terms=_one),
    "add_const": AffineFacts(_one, 1, _abs_add_const, elementwise=True, back_terms=_one),
    "sub_const": AffineFacts(_one, 1, _abs_add_const, elementwise=True, back_terms=_one),
    "mul_const": AffineFacts(_one, 1, _abs_mul_const, elementwise=True, back_terms=_one),
    "div_const": AffineFacts(_one, 1, _abs_div_const, elementwise=True, back_terms=_one),
    "gather": AffineFacts(_one, 0, _abs_forward, copy=True),
    "pad": AffineFacts(_one, 0, _abs_pad),
}

# Ops that only move values: no rounding in float32, in their IBP rule or in their transpose.
EXACT = frozenset({"input", "flatten", "reshape", "identity", "concat", "permute", "slice"})


def _is_exact(node: Node) -> bool:
    return node.op in EXACT or (node.op == "pad" and float(node.params["value"]) == 0.0)


def _unknown(op: str) -> RobustCertError:
    return RobustCertError(
        f"no rounding model for op {op!r}: certified bounds need its float32 error and float64 residual "
        "bounds; add it to AFFINE, ACTIVATIONS or EXACT in robustcert.bounds._soundness (see its docstring)"
    )


def _mag(b: Bounds) -> Tensor:
    return torch.maximum(b[0].abs(), b[1].abs())


class Rounding:
    """The rounding model of one certification call (see the module docstring for every formula).

    ``float_model``: ``"float32"`` (certify every float32 evaluation) or ``"real"`` (the real-valued
    network). The float64 computation's own rounding is covered in both. Weights that depend only on
    a node's input intervals are cached per (node, dtype) while those intervals are the same objects.
    """

    def __init__(self, float_model: str, shapes: dict[str, tuple[int, ...]]) -> None:
        if float_model not in FLOAT_MODELS:
            raise RobustCertError(
                f"unknown float_model {float_model!r}; choose one of: {', '.join(FLOAT_MODELS)}"
            )
        self.float32 = float_model == "float32"
        self.shapes = shapes
        self._cache: dict[tuple[str, torch.dtype, bool], tuple[tuple[Bounds, ...], Tensor]] = {}
        self._unit_cache: dict[tuple[str, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    @staticmethod
    def check(graph: Graph) -> None:
        """Raise RobustCertError naming the first op of ``graph`` without a rounding model."""
        for node in graph.nodes:
            if not (_is_exact(node) or node.op in AFFINE or node.op in ACTIVATIONS):
                raise _unknown(node.op)

    # ---- helpers -------------------------------------------------------------------------------

    def inflate(self, dtype: torch.dtype) -> float:
        """Factor applied to every slack (covers relative rounding of slacks and weights)."""
        return INFLATE32 if dtype == torch.float32 else INFLATE

    def floor(self, dtype: torch.dtype) -> float:
        """Absolute allowance added to every bound for underflow in the computation (section 4)."""
        unit(dtype)
        return FLOOR[dtype]

    def _unit_abs(self, node: Node, facts: AffineFacts, like: Tensor) -> tuple[Tensor, Tensor]:
        """``a_v(1)`` and ``a_v(0)`` (the absolute computation at unit and zero inputs), [1, *shape]."""
        key = (node.name, like.dtype, like.device)
        hit = self._unit_cache.get(key)
        if hit is None:
            ones = [
                torch.ones((1,) + self.shapes[i], dtype=like.dtype, device=like.device) for i in node.inputs
            ]
            hit = (facts.abs_comp(node, ones), facts.abs_comp(node, [o * 0 for o in ones]))
            self._unit_cache[key] = hit
        return hit

    def _affine_error(self, node: Node, ins: Sequence[Bounds], backward: bool = False) -> Tensor | None:
        """Per-neuron ``e_v + w_v`` of an affine node from its input intervals (cached); None if exact.

        ``backward=False``: the forward interval's weight (section 3, IBP's centre/radius rule included);
        ``backward=True``: the back-substitution weight of section 2, which only covers the transposed
        product and the bias dot."""
        if _is_exact(node):
            return None
        facts = AFFINE.get(node.op)
        if facts is None:
            raise _unknown(node.op)
        dtype = ins[0][0].dtype
        uc = unit(dtype)
        key = (node.name, dtype, backward)
        hit = self._cache.get(key)
        if (
            hit is not None
            and len(hit[0]) == len(ins)
            and all(a is b for a, b in zip(hit[0], ins, strict=True))
        ):
            return hit[1]
        ms = [_mag(b) for b in ins]
        a = facts.abs_comp(node, ms)
        fan = facts.fan_in(node)
        n_out = numel(self.shapes[node.name])
        a1, a0 = self._unit_abs(node, facts, a)
        scale_err = (a1 + a0) * ms[0] if facts.elementwise else None
        w: Tensor
        if backward:
            terms = n_out if facts.back_terms is None else facts.back_terms(node)
            shape = self.shapes[node.name]
            b_terms = n_out if facts.bias_terms is None else facts.bias_terms(shape)
            # the transposed product (<= terms products per entry, |L| m_u <= a) and the bias dot (<= b_terms
            # roundings, |c| = a(0))
            w = gamma(terms + 2, uc) * a + gamma(b_terms + 2, uc) * a0
            if scale_err is not None:
                w = w + gamma(16, uc) * scale_err
        else:
            extra = a if scale_err is None else a + scale_err
            w = 4.0 * gamma(n_out + fan + 16, uc) * extra
        if self.float32 and not facts.copy:
            k = fan + facts.k32
            g32: Tensor | float = gamma(k, U32)
            if facts.live is not None:  # exact zeros add no rounding: count the live terms only
                kl = facts.live(node, ms) + facts.k32
                g32 = torch.where(kl * U32 < 0.5, kl * U32 / (1 - kl * U32), math.inf)
            w = w + g32 * a + TINY32 * (a1 + (k + 1))
        self._cache[key] = (tuple(ins), w)
        return w

    def _act(self, node: Node) -> ActFacts:
        facts = ACTIVATIONS.get(node.op)
        if facts is None:
            raise _unknown(node.op)
        return facts

    # ---- the hooks of _common --------------------------------------------------------------------

    def forward(self, node: Node, b: Bounds, ins: Sequence[Bounds]) -> Bounds:
        """A forward-pass interval widened to contain every computed value (section 3)."""
        lo, hi = b
        e: Tensor | float
        if node.op == "input":
            if not self.float32:
                return b
            e = U32 * _mag(b) + TINY32
        elif node.op in ACTIVATIONS:
            facts = self._act(node)
            m, f = _mag(ins[0]), facts.f_mag(node, *ins[0])
            e = facts.e_comp(node, m, f, unit(lo.dtype))
            if self.float32:
                e = e + facts.e32(node, m, f)
            if isinstance(e, float) and e == 0.0:
                return b
        else:
            err = self._affine_error(node, ins)
            if err is None:
                return b
            e = err
        e = e * self.inflate(lo.dtype) + self.floor(lo.dtype)
        return toward(lo - e, upper=False), toward(hi + e, upper=True)

    def node_weight(self, node: Node, ctx: Ctx) -> Tensor | None:
        """``e_v + w_v`` per neuron of an affine node, multiplied by ``|Â_v|`` in back substitution."""
        return self._affine_error(node, [ctx.bounds[i] for i in node.inputs], backward=True)

    def relax_weight(
        self,
        node: Node,
        lb: Tensor,
        ub: Tensor,
        n: int,
        lines: tuple[Tensor, Tensor | None, Tensor, Tensor | None],
        lay: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """``e_v + w_v`` of an activation for the computed lines ``aL, bL, aU, bU``, in the lines' layout:
        ``lay`` lays a per-neuron map out like the lines (None: the lines are per-neuron maps, and so is
        the result). ``n``: the terms of one coefficient row on the node."""
        facts = self._act(node)
        aL, bL, aU, bU = lines
        m_raw, f_raw = _mag((lb, ub)), facts.f_mag(node, lb, ub)
        m = m_raw if lay is None else lay(m_raw)
        f = f_raw if lay is None or not isinstance(f_raw, Tensor) else lay(f_raw)
        s = torch.maximum(aL.abs(), aU.abs())
        icepts = [t.abs() for t in (bL, bU) if t is not None]
        big_b: Tensor | float = 0.0
        if icepts:
            big_b = icepts[0] if len(icepts) == 1 else torch.maximum(icepts[0], icepts[1])
        uc = unit(lb.dtype)
        # (i) the lines themselves, (ii) the coefficient update, (iii) the intercept dots (section 2)
        w = (
            gamma(facts.k64, uc) * (2 * s * m + big_b + f)
            + 3 * gamma(4, uc) * s * m
            + gamma(n + 2, uc) * big_b
        )
        if self.float32:
            w = w + facts.e32(node, m, f)
        return w

    def merge_weight(self, bounds: Bounds) -> Tensor:
        """Weight of one addition of two coefficient sets on a node with interval ``bounds``."""
        return gamma(1, unit(bounds[0].dtype)) * _mag(bounds)

    def interval_weight(self, bounds: Bounds, n: int) -> Tensor:
        """Weight of concretising ``n`` coefficients over the interval ``bounds``."""
        return gamma(n + 2, unit(bounds[0].dtype)) * _mag(bounds)

    def input_error(self, inset: InputSet) -> Tensor | float:
        """Float32 rounding of the input point (0 in real mode)."""
        if not self.float32:
            return 0.0
        return U32 * torch.maximum(inset.lo.abs(), inset.hi.abs()) + TINY32

    def box_weight(self, inset: InputSet, n: int) -> Tensor:
        """Weight of the box concretisation of ``n`` coefficients, input rounding included."""
        g = gamma(n + 4, unit(inset.lo.dtype))
        return g * 2 * torch.maximum(inset.lo.abs(), inset.hi.abs()) + self.input_error(inset)

    def ball_weights(self, inset: InputSet, n: int) -> tuple[Tensor, float]:
        """``(w, g)``: the L2 ball bound's slack is ``|Â| . w + g eps ||Â||_2``."""
        assert inset.center is not None
        g = gamma(n + 4, unit(inset.lo.dtype))
        return g * inset.center.abs() + self.input_error(inset), g


# --------------------------------------------------------------------------------------------------
# legacy margin (reference only, see the module docstring)
# --------------------------------------------------------------------------------------------------

SAFETY_REL = 2.0**-30


def _activation_magnitude(node: Node, b: Bounds) -> Bounds:
    m = 2 * b[1] + 1
    return -m, m


def magnitudes(graph: Graph, m_in: Tensor) -> dict[str, Tensor]:
    """Legacy: upper bounds ``M`` of the absolute computation at every node ([1, *shape]), from a forward
    pass of magnitudes with ``2 m + 1`` at every activation."""
    rules = dict(IBP_RULES)
    for op in ("relu", "sigmoid", "tanh"):
        rules[op] = _activation_magnitude
    m_in = m_in.abs().amax(dim=0, keepdim=True).to(torch.float64)
    with rounding_scope(None):
        out = forward_pass(graph, rules, (-m_in, m_in))
    return {name: torch.maximum(lo.abs(), hi.abs()) * (1 + 1e-6) for name, (lo, hi) in out.items()}


def node_tol(m: Tensor) -> Tensor:
    """Legacy safety margin of interval bounds with magnitude ``m``."""
    return SAFETY_REL * (1 + m)


def spec_tol(C: Tensor, m_out: Tensor) -> Tensor:
    """Legacy safety margin of bounds on ``C · output`` (C: [B, S, K], m_out: [1, K]) -> [B, S]."""
    return SAFETY_REL * (1 + (C.abs() * m_out.unsqueeze(1)).flatten(2).sum(-1))


def widen(b: Bounds, m: Tensor) -> Bounds:
    """Legacy: interval ``b`` widened by its safety margin (used by crown.intermediate_bounds' ``mags``)."""
    t = node_tol(m).to(b[0].dtype)
    return b[0] - t, b[1] + t
