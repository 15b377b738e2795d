"""Adaptive, anytime-valid certification for Gaussian randomized smoothing.

Cohen et al.'s CERTIFY (:meth:`SmoothedClassifier.certify`) draws a fixed number n of estimation samples
for every input. Most inputs are far from any decision threshold and need far fewer; a few need all n.
The procedures here sample in growing batches and stop as soon as the data decide, following the idea of
Horváth et al. (ICLR 2022, adaptive staged sampling: a few looks, α split over them) and Voráček (2024,
confidence sequences for randomized smoothing: a certificate that is valid at a data-dependent
stopping time). The code is robustcert's own.

The confidence sequence
-----------------------
A *look schedule* n_1 < n_2 < … < n_K = N (:func:`look_schedule`) is fixed before sampling: n_1 =
``first`` and each look doubles the total, capped at the budget N; K = 1 + ⌈log₂(N / first)⌉. So are the
per-look levels (:func:`look_levels`): α_K = α/2 at the last look — where the inputs close to the
threshold end up, so that their bound stays close to Cohen's fixed-n bound at level α — and
α_j = α / (2(K − 1)) at each earlier look (α_1 = α when K = 1); Σ_j α_j = α. At look j the procedure has
seen S_j successes of the Bernoulli stream X_1, X_2, … (X_i = 1 when the base model votes for the
candidate class on the i-th noisy copy) and computes (:class:`UnionBoundCS`)

    L_j = CP_lower(S_j, n_j, α_j)        U_j = CP_upper(S_j, n_j, β_j)

the one-sided Clopper–Pearson bounds at levels α_j and β_j (β_j: the same split of β).

Validity at the stopping time (the point of this module)
---------------------------------------------------------
**Lemma.** If X_1, X_2, … are i.i.d. Bernoulli(p), then P[∃ j ≤ K: L_j > p] ≤ α and P[∃ j ≤ K: U_j < p] ≤ β.

*Proof.* For each fixed j, n_j is a constant and S_j ~ Binomial(n_j, p), so the one-sided Clopper–Pearson
guarantee gives P[L_j > p] ≤ α_j. The union bound over the K looks gives ≤ Σ_j α_j = α. Same for U. ∎

**Corollary (any stopping rule).** Let τ ∈ {1, …, K} be *any* random look — a stopping time that
depends on everything seen so far, or even on the future. Then {L_τ > p} ⊆ ⋃_j {L_j > p}, so
P[L_τ > p] ≤ α. Sampling more after peeking, stopping early, or stopping for a reason unrelated to
L costs nothing: the bound holds simultaneously at every look, hence at whichever look we stop.

**Theorem (the certificate).** Let cA be the candidate class chosen from n0 selection samples drawn from
a stream independent of the estimation stream, and p = P[f(x + ε) = cA], ε ~ N(0, σ²I). Conditionally on
the selection, the estimation votes X_i = 1{f(x + ε_i) = cA} are i.i.d. Bernoulli(p), so the Lemma holds
conditionally and hence unconditionally. Let E = {∃ j: L_j > p}, P[E] ≤ α. On the complement of E, at
the stopping look τ, L_τ ≤ p, and

* *target mode* certifies "radius R" only when L_τ > Φ(R/σ) ≥ 1/2, hence p > 1/2, so cA is the smoothed
  classifier's class and, by Cohen et al.'s Theorem 1 (with p_B ≤ 1 − p), g(x + δ) = cA for every
  ‖δ‖₂ < σ·Φ⁻¹(p) and in particular for ‖δ‖₂ ≤ R < σ·Φ⁻¹(L_τ);
* a radius reported from the lower bound (budget mode; target mode when R is not certified) is
  σ·Φ⁻¹(L_τ) ≤ σ·Φ⁻¹(p), with cA the smoothed class when L_τ > 1/2, which is again Cohen's certificate.

So every row's statement is wrong with probability ≤ P[E] ≤ α, whatever the stopping rule. This is
the same guarantee as Cohen's CERTIFY ("with probability ≥ 1 − α over the sampling"); the price of
adaptivity is the level α_j instead of α at each look (at α = 0.001 and K = 11: 0.2 more standard
deviations at the last look, 0.8 at the earlier ones).

How α is split between the two sides
------------------------------------
None of α is spent on the upper side. Stopping because U_τ < Φ(R/σ) ("cannot certify R") only *chooses*
τ, and the Corollary holds for every τ, so the certificate error stays ≤ α with the whole of α on the
lower sequence. The upper sequence has its own level β (``beta``, default β = α) and bounds a different
error, which is not a certificate: P[stop with "cannot certify R" while p ≥ Φ(R/σ)] ≤ P[∃ j: U_j < p] ≤ β.
For a given input only one of the two errors is possible (p is either below Φ(R/σ) or not), so each
decision the target mode makes — "certified at R" or "cannot certify R" — is wrong with probability
≤ max(α, β) = α. Reaching the budget without a decision is neither.

Stopping rules
--------------
* **Target mode** (``target_radius`` = R, threshold p* = Φ(R/σ)): stop at the first look with L_j > p*
  (certified at R), or U_j < p* (cannot certify R: p < p*, wrong with probability ≤ β), or when even
  N − n_j further votes for cA could not lift the final bound above p* (unreachable within the budget:
  a deterministic check, no statement about p), or at N.
* **Budget mode** (no target): stop at N, or earlier when the radius cannot grow by more than
  ``radius_tol``: when the final bound with the remaining N − n_j samples voting at the optimistic rate
  U_j, CP_lower(S_j + ⌈U_j (N − n_j)⌉, N, α_K), gives a radius at most ``radius_tol`` above the current
  σ·Φ⁻¹(L_j). Report σ·Φ⁻¹(L_τ) (abstain when L_τ ≤ 1/2).

Both streams are Cohen's (common random numbers): the selection samples are those of
``SmoothedClassifier.certify`` for the same seed, so the candidate is the same, and the estimation noise
is drawn from Cohen's estimation generator in exactly the chunks ``certify`` draws it (``batch_size``
rows at a time), so the first m estimation samples here are the first m of Cohen's run with n = N, the
same seed and batch size. The base model only evaluates the samples a look uses (noise drawn for the
next look waits in the buffer). A comparison of the two procedures then measures the procedures, not
sampling noise; and a seed fixes the result.
"""

from __future__ import annotations

import functools
import math
import numbers
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy.stats import norm

from robustcert.errors import RobustCertError
from robustcert.models.modes import eval_mode
from robustcert.seeding import check_seed, torch_generator
from robustcert.smoothing.smoothed import (
    _STREAM_ESTIMATION,
    _STREAM_SELECTION,
    ABSTAIN,
    SmoothedClassifier,
    _stream_seed,
)
from robustcert.smoothing.sound_fp import certified_pa_lower
from robustcert.smoothing.stats import check_level, clopper_pearson_lower, clopper_pearson_upper

GROWTH = 2
"""Each look doubles the number of estimation samples drawn so far (capped at the budget)."""

FINAL_SHARE = 0.5
"""The share of alpha (and beta) spent at the last look; the rest is split evenly over the earlier looks."""

# Why the procedure stopped (``AdaptiveCertificate.stop``).
STOP_CERTIFIED = "certified"  # target mode: L > Φ(R/σ)
STOP_BELOW_TARGET = "below-target"  # target mode: U < Φ(R/σ)
STOP_UNREACHABLE = "unreachable"  # target mode: not even all remaining votes could certify R within the budget
STOP_CONVERGED = "converged"  # budget mode: the radius cannot grow by more than radius_tol
STOP_BUDGET = "budget"  # the budget N was reached


@functools.lru_cache(maxsize=1 << 16)
def _cp_lower(successes: int, n: int, level: float) -> float:
    """:func:`clopper_pearson_lower`, memoised: repeated looks at the same counts cost a dictionary lookup."""
    return clopper_pearson_lower(successes, n, level)


@functools.lru_cache(maxsize=1 << 16)
def _cp_upper(successes: int, n: int, level: float) -> float:
    """:func:`clopper_pearson_upper`, memoised."""
    return clopper_pearson_upper(successes, n, level)


def _positive_int(value: object, name: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) <= 0:
        raise RobustCertError(f"{name} must be a positive integer ({example}), got {value!r}")
    return int(value)


def look_schedule(first: int, budget: int) -> tuple[int, ...]:
    """The cumulative sample sizes at which the adaptive procedures look: ``first``, 2·``first``, 4·``first``,
    … capped at ``budget``, always ending at ``budget``.

    Guarantee: strictly increasing, first element ``first``, last element ``budget``, a function of
    (``first``, ``budget``) only, so it is fixed before any sample is drawn. RobustCertError when
    ``budget`` < ``first`` (one line, with the fix).
    """
    first = _positive_int(first, "first_batch", "e.g. 100")
    budget = _positive_int(budget, "max_n", "e.g. 100000")
    if budget < first:
        raise RobustCertError(
            f"the adaptive budget max_n = {budget} is smaller than the first batch first_batch = {first}: "
            "raise --max-n or lower --first-batch"
        )
    looks = [first]
    while looks[-1] < budget:
        looks.append(min(budget, looks[-1] * GROWTH))
    return tuple(looks)


def look_levels(level: float, looks: int) -> tuple[float, ...]:
    """The per-look levels of a union-bound confidence sequence with total ``level`` over ``looks`` looks:
    ``FINAL_SHARE``·level at the last look, the rest split evenly over the others (all of it when there is
    one look). Guarantee: every level is > 0 and they sum to ``level`` (up to float rounding)."""
    level = check_level(level)
    count = _positive_int(looks, "looks", "e.g. 11")
    if count == 1:
        return (level,)
    early = level * (1.0 - FINAL_SHARE) / (count - 1)
    return (early,) * (count - 1) + (level * FINAL_SHARE,)


@dataclass(frozen=True)
class UnionBoundCS:
    """A confidence sequence for the success probability p of an i.i.d. Bernoulli stream, valid
    simultaneously at every look of ``looks``: one-sided Clopper–Pearson bounds at the levels
    :func:`look_levels` splits ``alpha`` (lower) and ``beta`` (upper) into.

    Guarantee (union bound, proof in the module docstring): P[∃ j: lower(S_j, j) > p] ≤ ``alpha`` and
    P[∃ j: upper(S_j, j) < p] ≤ ``beta``, where S_j is the number of successes among the first looks[j]
    trials; hence also at any data-dependent look.
    """

    looks: tuple[int, ...]
    alpha: float
    beta: float

    def __post_init__(self) -> None:
        if not self.looks or any(b <= a for a, b in zip(self.looks, self.looks[1:], strict=False)):
            raise RobustCertError(f"looks must be a non-empty increasing list of sample sizes, got {self.looks!r}")
        check_level(self.alpha)
        check_level(self.beta)

    @functools.cached_property
    def levels(self) -> tuple[float, ...]:
        """The per-look levels α_j of the lower sequence (they sum to alpha)."""
        return look_levels(self.alpha, len(self.looks))

    @functools.cached_property
    def upper_levels(self) -> tuple[float, ...]:
        """The per-look levels β_j of the upper sequence (they sum to beta)."""
        return look_levels(self.beta, len(self.looks))

    def lower(self, successes: int, look: int) -> float:
        """L_j: the lower bound at look ``look`` (0-based) after ``successes`` successes in looks[look] trials."""
        return _cp_lower(int(successes), self.looks[look], self.levels[look])

    def upper(self, successes: int, look: int) -> float:
        """U_j: the upper bound at look ``look`` (0-based) after ``successes`` successes in looks[look] trials."""
        return _cp_upper(int(successes), self.looks[look], self.upper_levels[look])


def radius_of(p_lower: float, sigma: float) -> float:
    """σ·Φ⁻¹(p_lower) when p_lower > 1/2 (Cohen's certified radius, computed as SmoothedClassifier.certify
    does), else 0.0 (abstain)."""
    return sigma * float(norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


_INV_CDF = statistics.NormalDist().inv_cdf  # fast Φ⁻¹ for the stopping rule only (not for reported radii)


def _rough_radius(p_lower: float, sigma: float) -> float:
    return sigma * _INV_CDF(p_lower) if p_lower > 0.5 else 0.0


@dataclass(frozen=True)
class SequentialResult:
    """Where :func:`sequential_decide` stopped: ``successes`` in ``n`` trials at look ``looks`` (1-based
    count of looks made), the bounds ``lower`` = L_τ and ``upper`` = U_τ there, and why (``stop``)."""

    successes: int
    n: int
    looks: int
    lower: float
    upper: float
    stop: str


def sequential_decide(
    draw: Callable[[int, int], int],
    cs: UnionBoundCS,
    *,
    threshold: float | None = None,
    sigma: float = 1.0,
    radius_tol: float = 0.0,
) -> SequentialResult:
    """Run the adaptive stopping rule on a Bernoulli stream given by ``draw(look, m)`` (the number of
    successes among m fresh trials for look ``look``, 0-based).

    With ``threshold`` (p* = Φ(R/σ)): stop at the first look with L > p* (certified), U < p*
    (below-target), or no way left to reach L > p* within the budget (unreachable); else at the last look.
    Without it (budget mode): stop at the last look, or once the optimistic final radius exceeds
    σ·Φ⁻¹(L) by at most ``radius_tol`` (converged).

    Guarantee: whatever the rule stops on, the returned ``lower`` satisfies P[lower > p] ≤ cs.alpha for an
    i.i.d. Bernoulli(p) stream (module docstring, Corollary); ``draw`` is called once per look made.
    """
    looks, budget = cs.looks, cs.looks[-1]
    final_level = cs.levels[-1]
    successes = n = 0
    lower = upper = 0.0
    stop = STOP_BUDGET
    j = 0
    for j, size in enumerate(looks):
        got = int(draw(j, size - n))
        if not 0 <= got <= size - n:
            raise RobustCertError(f"draw returned {got} successes for {size - n} trials")
        successes += got
        n = size
        lower, upper = cs.lower(successes, j), cs.upper(successes, j)
        if j == len(looks) - 1:
            break
        remaining = budget - n
        if threshold is not None:
            if lower > threshold:
                stop = STOP_CERTIFIED
                break
            if upper < threshold:
                stop = STOP_BELOW_TARGET
                break
            if _cp_lower(successes + remaining, budget, final_level) <= threshold:
                stop = STOP_UNREACHABLE
                break
        else:
            hoped = min(budget, successes + math.ceil(upper * remaining))
            best = _rough_radius(_cp_lower(hoped, budget, final_level), sigma)
            if best - _rough_radius(lower, sigma) <= radius_tol:
                stop = STOP_CONVERGED
                break
    if threshold is not None and stop == STOP_BUDGET and lower > threshold:
        stop = STOP_CERTIFIED
    return SequentialResult(successes=successes, n=n, looks=j + 1, lower=lower, upper=upper, stop=stop)


@dataclass(frozen=True)
class AdaptiveCertificate:
    """The result of :func:`certify_adaptive` for one input.

    With probability ≥ 1 − ``alpha`` over the sampling, if ``prediction`` ≠ −1 the smoothed classifier
    returns ``prediction`` at every x + δ with ‖δ‖₂ < ``radius``; in target mode a row with ``certified``
    has ``radius`` = ``target_radius`` and the statement holds for ‖δ‖₂ ≤ R.

    ``certified``: target mode — certified at ``target_radius``; budget mode — not abstained.
    ``count`` votes for ``candidate`` among the ``n`` estimation samples drawn (of the budget ``max_n``)
    in ``looks`` looks; ``samples`` = n0 + n, every base-model evaluation made. ``pA_lower`` / ``pA_upper``
    are the confidence sequence's bounds at the stopping look; ``stop`` says why it stopped
    (certified, below-target, unreachable, converged, budget).
    """

    prediction: int
    radius: float
    certified: bool
    count: int
    pA_lower: float
    pA_upper: float
    n0: int
    n: int
    max_n: int
    samples: int
    looks: int
    alpha: float
    sigma: float
    candidate: int
    target_radius: float | None
    stop: str

    @property
    def abstained(self) -> bool:
        """True when the smoothed classifier abstained (``prediction`` = −1)."""
        return self.prediction == ABSTAIN


class _EstimationStream:
    """Cohen's estimation samples for ``seed`` and budget ``budget``, served in order, a prefix at a time.

    The noise is drawn exactly as :meth:`SmoothedClassifier.certify` draws it (the same generator, the same
    ``torch.randn`` calls of min(batch_size, budget) rows, the last one shorter), so the first m samples
    are the first m of Cohen's run with n = ``budget``. Only the samples asked for go through the model.
    """

    def __init__(
        self, smoothed: SmoothedClassifier, x: torch.Tensor, budget: int, batch_size: int, seed: int, candidate: int
    ) -> None:
        self.smoothed, self.x, self.candidate = smoothed, x, candidate
        self.generator = torch_generator(_stream_seed(seed, _STREAM_ESTIMATION), x.device)
        self.size = min(batch_size, budget)
        self.buffer = torch.empty((self.size, *x.shape), dtype=x.dtype, device=x.device)
        self.undrawn = budget  # samples not yet drawn from the generator
        self.filled = self.used = 0  # rows of the buffer drawn / already evaluated
        self.first = True

    def draw(self, look: int, m: int) -> int:
        """Votes for the candidate among the next ``m`` samples (``look`` is not needed: one stream)."""
        votes = 0
        while m > 0:
            if self.used == self.filled:
                rows = min(self.size, self.undrawn)
                if rows == 0:
                    raise RobustCertError(f"the adaptive procedure asked for more samples than its budget ({m} more)")
                batch = self.buffer if rows == self.size else self.buffer[:rows]
                torch.randn(batch.shape, generator=self.generator, out=batch)
                torch.add(self.x, batch, alpha=self.smoothed.sigma, out=batch)
                self.undrawn -= rows
                self.filled, self.used = rows, 0
            take = min(m, self.filled - self.used)
            inputs = self.buffer[self.used : self.used + take]
            if self.first:
                logits = self.smoothed._forward_first(inputs, self.x)
                self.first = False
            else:
                logits = self.smoothed.base_model(inputs)
            self.smoothed._check_logits(logits, take)
            votes += int((logits.argmax(dim=1) == self.candidate).sum())
            self.used += take
            m -= take
        return votes


def max_certifiable_radius(sigma: float, max_n: int, first_batch: int, alpha: float) -> float:
    """The largest radius any run with this budget can certify: σ·Φ⁻¹ of the lower bound when all max_n
    votes go to the candidate (0 when even that is ≤ 1/2)."""
    final_level = look_levels(alpha, len(look_schedule(first_batch, max_n)))[-1]
    return radius_of(_cp_lower(max_n, max_n, final_level), sigma)


def certify_adaptive(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    *,
    n0: int = 100,
    max_n: int = 100_000,
    first_batch: int = 100,
    alpha: float = 0.001,
    target_radius: float | None = None,
    radius_tol: float = 0.01,
    batch_size: int = 1000,
    seed: int = 0,
    beta: float | None = None,
) -> AdaptiveCertificate:
    """Certify one input x (C×H×W) adaptively: target mode with ``target_radius`` (decide "certified at
    R" or not), budget mode without (the best radius within ``max_n`` estimation samples).

    Guarantee (module docstring): with probability ≥ 1 − alpha over the sampling, if the prediction is
    not −1 then g(x + δ) = prediction for all ‖δ‖₂ < radius — at the data-dependent stopping time. The
    n0 selection samples are Cohen's for ``seed``, and the estimation samples a prefix of Cohen's with
    n = ``max_n`` (same seed and ``batch_size``); the same arguments give the same certificate. ``beta``
    is the level of the upper (futility) sequence, default alpha; it does not enter the certificate's
    error.
    """
    n0 = _positive_int(n0, "n0", "e.g. 100")
    batch_size = _positive_int(batch_size, "batch_size", "e.g. 1000")
    alpha = check_level(alpha)
    beta = alpha if beta is None else check_level(beta)
    seed = check_seed(seed)
    if target_radius is not None:
        if isinstance(target_radius, bool) or not isinstance(target_radius, numbers.Real):
            raise RobustCertError(f"target_radius must be a number >= 0 (e.g. 0.5), got {target_radius!r}")
        target_radius = float(target_radius)
        if not (math.isfinite(target_radius) and target_radius >= 0.0):
            raise RobustCertError(f"target_radius must be a finite number >= 0 (e.g. 0.5), got {target_radius!r}")
    if isinstance(radius_tol, bool) or not isinstance(radius_tol, numbers.Real) or not radius_tol >= 0:
        raise RobustCertError(f"radius_tol must be a number >= 0 (e.g. 0.01), got {radius_tol!r}")
    cs = UnionBoundCS(look_schedule(first_batch, max_n), alpha, beta)
    x = smoothed._check_input(x)
    sigma = smoothed.sigma
    threshold = None if target_radius is None else float(norm.cdf(target_radius / sigma))

    with eval_mode(smoothed.base_model), torch.inference_mode():
        counts0 = smoothed._counts(x, n0, batch_size, _stream_seed(seed, _STREAM_SELECTION))
        selection = [int(c) for c in counts0.tolist()]
        candidate = max(range(smoothed.num_classes), key=lambda c: (selection[c], -c))  # ties → lowest index

        stream = _EstimationStream(smoothed, x, cs.looks[-1], batch_size, seed, candidate)
        result = sequential_decide(stream.draw, cs, threshold=threshold, sigma=sigma, radius_tol=float(radius_tol))

    # a sound floating-point classifier (smoothing.sound_fp) lowers the bound by its sampler's distance
    # from the exact noise; a plain SmoothedClassifier's bound passes through unchanged
    lower = certified_pa_lower(smoothed, result.lower, x.numel())
    radius = radius_of(lower, sigma)
    prediction = candidate if lower > 0.5 else ABSTAIN
    if target_radius is not None:
        certified = result.stop == STOP_CERTIFIED and threshold is not None and lower > threshold
        if certified:
            radius = target_radius
    else:
        certified = prediction != ABSTAIN
    return AdaptiveCertificate(
        prediction=prediction,
        radius=radius,
        certified=certified,
        count=result.successes,
        pA_lower=lower,
        pA_upper=result.upper,
        n0=n0,
        n=result.n,
        max_n=cs.looks[-1],
        samples=n0 + result.n,
        looks=result.looks,
        alpha=alpha,
        sigma=sigma,
        candidate=candidate,
        target_radius=target_radius,
        stop=result.stop,
    )
