"""Randomized smoothing whose certificate holds for the floating-point base model as run (``--sound-fp``).

Why plain smoothing is not enough. Cohen et al.'s theorem is about a base classifier h on real inputs and
the real random point x + ε. What a program evaluates is the float model at fl(x + σ·ε̂), where ε̂ is a
float approximation of a Gaussian and the sum is rounded to the float grid *around x*, so the distribution
of what the model sees is not the Gaussian shifted by x, and a base classifier may read the rounding
pattern. Voráček & Hein build such a classifier: Cohen's CERTIFY reports radius 1.26 where an adversarial
example lies at distance 0.8, and they extend it to false certificates on CIFAR-10.

The construction (Voráček & Hein, "Sound randomized smoothing in floating-point arithmetic", ICLR 2023,
arXiv:2207.07209): quantised inputs and a Gaussian rounded to the input grid, drawn from fair coins by
comparing uniform integers with precomputed CDF thresholds; then Cohen's radius. This module implements it
from the definitions below (not from their code), with the sampler's error bounded and charged to pA.

**Grid.** q = a/b > 0 rational (e.g. 1/255 for 8-bit images, 1/16 for scikit-learn digits). ψ(i) is the
float (float32 or float64, the model's dtype) nearest to the real i·q, ties to even. An input x (a float
tensor) is *on the grid* when x = ψ(k) elementwise for an integer vector k; it then stands for the real
point x̄ = k·q. Anything else is refused (:meth:`Grid.index`). Indices are bounded,
|k| + K ≤ :meth:`Grid.max_index` (K is the noise's reach below), so every ψ value used is computed exactly:
in float32, |i| < 2²² makes ψ injective with index recovery exact (the float32 spacing at |i·q| is
< q/2); ψ(i) is computed as fl32(fl64(i·a / b)), which equals fl32(i·a/b) because double rounding can
only go wrong when fl64(t) is a float32 midpoint m ≠ t; m = M·2^e (M odd, 25 bits) and t = i·a/b ≠ m give
|t − m| ≥ 2^e / b for e < 0 (and ≥ 1/b for e ≥ 0), more than half a float64 ulp of m, 2^(e−29), when
b ≤ 2²⁰ and |m| < 2³³ (so e ≤ 8): the bounds a, b ≤ 2²⁰, q ≤ 2¹⁰, |i| < 2²² ensure both. For a dyadic
q (b a power of two) and |i·a| < 2²⁴, ψ(i) = i·q exactly, so ψ(k + j) = ψ(k) + ψ(j) in float32 as well.
In float64, ψ(i) = fl64(i·a / b) is one correctly rounded division and |i| ≤ 2³².

**Base classifier as run.** f maps a float input to the model's argmax. Define, for real z ∈ ℝ^d,

    h(z) = f(ψ(ρ(z))),  ρ(z) = ⌊z/q + ½⌋ (nearest grid index, elementwise).

h is a deterministic measurable function on ℝ^d (constant on grid cells), and the smoothed classifier is
Cohen's smoothed classifier of h: g(z) = argmax_c P[h(z + ε) = c], ε ~ N(0, σ²I).

**Theorem (Cohen et al. 2019, Thm. 1, for any measurable base classifier).** If P[h(x̄ + ε) = c_A] ≥ p > ½,
then g(x̄ + δ) = c_A for every δ ∈ ℝ^d with ‖δ‖₂ < σ·Φ⁻¹(p). It holds for every real δ, so in particular
for every grid image x' = ψ(k') with q‖k' − k‖₂ < σΦ⁻¹(p), and g(x') is evaluated by the same procedure.

**Sampling exactly what the theorem talks about.** For x̄ = k·q, ρ(x̄ + ε) = k + ρ(ε) exactly, so
h(x̄ + ε) = f(ψ(k + J)) with J = ρ(ε): coordinates i.i.d. with the rounded-Gaussian pmf

    π(j) = Φ((j + ½)q/σ) − Φ((j − ½)q/σ),   j ∈ ℤ.

k + J is computed in int64 (exact) and ψ exactly: the model is evaluated on exactly the point the math
talks about; there is no float addition of input and noise.

**Drawing J from fair coins** (:class:`RoundedGaussian`). With B = 62 and K = ⌈10σ/q⌉, let C(t) =
Φ((t + ½)q/σ) and T_t = round(2^B·C(t)) for t = −K … K − 1, computed with 40 significant digits (so
|T_t − 2^B C(t)| ≤ 1). Draw U uniform on {0, …, 2^B − 1} (62 fair bits) and set
J = −K + #{t : U ≥ T_t}. The law π̂ of J is known exactly: π̂(j) = (T_j − T_{j−1}) / 2^B.

*Lemma (coupling).* Let U' be uniform on [0, 1), U = ⌊2^B U'⌋ and J' = min{j : U' < C(j)} (an exact draw
of π). Then P[J ≠ J'] ≤ τ := 2K·2^(−B) + 2Φ(−(K + ½)q/σ).
*Proof.* If J' ∈ [−K, K] and, for every t, the events {U < T_t} and {U' < C(t)} agree, then J = J'. The
first fails with probability 2Φ(−(K + ½)q/σ). Since U ≤ 2^B U' < U + 1, the events for t disagree only
if 2^B U' lies between 2^B C(t) and T_t, an interval of length ≤ |T_t − 2^B C(t)| ≤ 1: probability
≤ 2^(−B) for each of the 2K thresholds. ∎

Drawing the d coordinates independently, TV(π̂^d, π^d) ≤ d·τ, so for every class c,
P_π[h(x̄ + ε) = c] ≥ P_π̂[f(ψ(k + J)) = c] − d·τ. The n estimation samples are i.i.d. draws from π̂^d
pushed through the fixed function f ∘ ψ, so the one-sided Clopper–Pearson bound pA_CP is a (1 − α)
lower bound on the π̂-probability, and pA = pA_CP − d·τ is one on the π-probability. For σ/q = 64
(σ = 0.25, q = 1/255) τ ≈ 2.8·10⁻¹⁶; the tail term is < 10⁻²³.

**Certificate.** radius = σ·Φ⁻¹(pA_CP − d·τ − s) when that argument exceeds ½, else abstain, with
s = 2·10⁻¹² absorbing the float64 evaluation: 10⁻¹² for the Clopper–Pearson quantile (scipy/Boost's
inverse incomplete beta, accurate to ~10⁻¹⁵) and 10⁻¹² for Φ⁻¹ and the product with σ: Φ⁻¹ has slope
≥ √(2π) > 2.5, so that share of s lowers z by ≥ 2.5·10⁻¹², far more than ndtri's and the product's
float64 error (~10⁻¹⁴ for |z| < 8). Every approximation therefore moves the radius down. The radius is
Cohen's formula evaluated at a pA lowered by d·τ + s: for d = 784 and pA ≤ 0.999 it is smaller than
Cohen's by < 10⁻⁹ (the gap grows like 1/φ(Φ⁻¹(pA)) as pA → 1).

**What the guarantee rests on.** (i) The generator's bits are fair coins (torch's mt19937 stream, the
single assumption of Voráček & Hein and of every smoothing implementation). (ii) f is a function of its
input: the model's output on a row depends only on that row, not on the rest of the batch (eval mode,
deterministic CPU kernels). (iii) mpmath evaluates Φ to 40 digits (|T_t − 2^B C(t)| ≤ 1 needs ~20).
PREDICT (:meth:`SoundSmoothedClassifier.predict`) keeps Cohen's guarantee up to n·d·τ: the n samples'
joint law is within n·d·τ of the exact one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor, nn

from robustcert.errors import RobustCertError
from robustcert.seeding import derived_seed, torch_generator
from robustcert.smoothing.smoothed import Certificate, SmoothedClassifier
from robustcert.smoothing.stats import clopper_pearson_lower

#: Uniform bits per noise coordinate (torch.randint(0, 2**62) is exactly uniform: 2**64 % 2**62 == 0).
BITS = 62
#: The noise table reaches K = ceil(TAIL_Z · σ / q) grid steps; the mass beyond is charged to τ.
TAIL_Z = 10.0
#: Subtracted from pA to cover the float64 evaluation of the Clopper–Pearson bound and of σΦ⁻¹ (docstring).
NUMERIC_SLACK = 2e-12
#: Largest numerator and denominator of q, and the largest q.
_MAX_TERM = 1 << 20
_MAX_Q = Fraction(1024)
#: Elements per chunk when drawing noise (bounds the int64 temporaries, whatever the batch size).
_CHUNK_ELEMENTS = 1 << 21
_DOMAIN = 0x73667031  # "sfp1": keeps these noise streams apart from the Gaussian ones

#: What a plain Gaussian-smoothing row's radius is about (its ``float_model`` is ``"real"``).
GUARANTEE_REAL = (
    "real: Gaussian smoothing of the real-valued model (Cohen et al. 2019); float rounding not covered"
)


def guarantee_text(grid: Grid | str, float_model: str = "float32") -> str:
    """What a sound row's radius is about, in one line (for reports): ``float_model`` is the model's dtype
    name as the row stores it (``"float32"``)."""
    g = Grid.parse(grid)
    return (
        f"sound-fp: Gaussian rounded to the grid q={g.text}, base model evaluated in {float_model} at exact grid "
        "points; holds for every real point and grid image within the radius (Voráček & Hein 2023)"
    )


# ---------------------------------------------------------------------------------------------- the grid


def _position(flat: int, shape: tuple[int, ...]) -> str:
    if not shape:
        return ""
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat, shape)) + "]"


@dataclass(frozen=True)
class Grid:
    """The input grid {k·q : k ∈ ℤ}, q = ``num`` / ``den`` in lowest terms, and its float values ψ(k).

    Guarantees: :meth:`values` returns ψ(i), the float of the given dtype nearest to i·q (ties to even),
    exactly; :meth:`index` returns k with x = ψ(k) elementwise or raises a one-line RobustCertError naming
    the first offending value and the grid.
    """

    num: int
    den: int

    def __post_init__(self) -> None:
        if not (0 < self.num <= _MAX_TERM and 0 < self.den <= _MAX_TERM) or math.gcd(self.num, self.den) != 1:
            raise RobustCertError(
                f"grid q = {self.num}/{self.den}: need q = a/b in lowest terms with 1 <= a, b <= {_MAX_TERM}"
            )
        if Fraction(self.num, self.den) > _MAX_Q:
            raise RobustCertError(
                f"grid q = {self.num}/{self.den} is larger than {_MAX_Q}; give a finer grid"
            )

    @classmethod
    def parse(cls, value: object) -> Grid:
        """A grid from ``"1/255"``, ``"0.0625"``, a Fraction, an int or a float (read as the exact fraction
        it stands for: 1/255 → 1/255, 0.0625 → 1/16)."""
        if isinstance(value, Grid):
            return value
        hint = "give the input grid as a fraction, e.g. 1/255 for 8-bit images or 1/16 for digits"
        try:
            if isinstance(value, str):
                frac = Fraction(value.strip())
            elif isinstance(value, bool):
                raise TypeError
            elif isinstance(value, numbers.Rational):
                frac = Fraction(int(value.numerator), int(value.denominator))
            elif isinstance(value, numbers.Real) and math.isfinite(float(value)):
                frac = Fraction(float(value)).limit_denominator(_MAX_TERM)
                if float(frac) != float(value):
                    raise ValueError
            else:
                raise TypeError
        except (TypeError, ValueError, ZeroDivisionError):
            raise RobustCertError(f"grid {value!r} is not a positive fraction; {hint}") from None
        if frac <= 0:
            raise RobustCertError(f"grid q must be > 0, got {value!r}; {hint}")
        return cls(frac.numerator, frac.denominator)

    @property
    def q(self) -> Fraction:
        return Fraction(self.num, self.den)

    @property
    def text(self) -> str:
        """``"1/255"`` (or ``"2"`` for an integer q): what rows and run.json store."""
        return str(self.q)

    @property
    def dyadic(self) -> bool:
        """True when den is a power of two: then ψ(i) = i·q exactly while |i·num| < 2²⁴ (float32)."""
        return self.den & (self.den - 1) == 0

    @staticmethod
    def _check_dtype(dtype: torch.dtype) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise RobustCertError(
                f"sound-fp supports float32 and float64 inputs and models, got {dtype}; convert with x.float()"
            )

    def max_index(self, dtype: torch.dtype) -> int:
        """The largest |i| for which ψ(i) is exact, ψ is injective and x ↦ k is recovered exactly."""
        self._check_dtype(dtype)
        return (1 << 22) - 1 if dtype == torch.float32 else 1 << 32

    def values(self, index: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """ψ(index): the floats nearest to index·q, exactly (see the module docstring for float32).

        ``index`` is an int64 tensor with |index| ≤ :meth:`max_index`; the caller guarantees the bound
        (:meth:`index` and the noise's reach ensure it in this module)."""
        self._check_dtype(dtype)
        exact = (index * self.num).to(torch.float64)  # |i·a| < 2^53: exact
        y = exact if self.den == 1 else exact / float(self.den)  # one correctly rounded division
        return y if dtype == torch.float64 else y.to(torch.float32)

    def index(self, x: Tensor, reach: int = 0, what: str = "x") -> Tensor:
        """The integer k (int64, same shape) with x = ψ(k) in x's own dtype, and |k| + reach ≤ max_index.

        Raises a one-line RobustCertError naming the first value off the grid (or out of range), its
        position, the nearest grid value and how to quantise."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise RobustCertError(f"{what} must be a float tensor on the grid q = {self.text}, got {got}")
        self._check_dtype(x.dtype)
        if not bool(torch.isfinite(x).all()):
            raise RobustCertError(
                f"{what} contains NaN or infinite values; inputs must lie on the grid q = {self.text}"
            )
        limit = self.max_index(x.dtype) - int(reach)
        if limit < 0:
            raise RobustCertError(
                f"the noise reaches {reach} grid steps, beyond the {self.max_index(x.dtype)} that {x.dtype} "
                f"holds exactly on the grid q = {self.text}; use a smaller sigma or a coarser grid"
            )
        xd = x.detach().to(torch.float64)
        k = torch.round(xd * (self.den / self.num) if self.num != 1 else xd * self.den)
        k = k.clamp(-float(1 << 40), float(1 << 40)).to(torch.int64)
        far = k.abs() > limit
        on_grid = self.values(k.clamp(-limit, limit), x.dtype) == x.detach()
        bad = far | ~on_grid
        if bool(bad.any()):
            flat = int(bad.flatten().nonzero()[0, 0])
            value = float(x.detach().flatten()[flat])
            ki = int(k.flatten()[flat])
            where = f"{what}{_position(flat, tuple(x.shape))} = {value!r}"
            if bool(far.flatten()[flat]):
                why = f" (the noise reaches {reach} steps further)" if reach else ""
                raise RobustCertError(
                    f"{where} is {ki}·q on the grid q = {self.text}, but |k| must be <= {limit}{why} for "
                    f"{x.dtype} to hold every grid point exactly; rescale the inputs or use a coarser grid"
                )
            near = float(self.values(torch.tensor([ki]), x.dtype)[0])
            fix = (
                f"torch.round(x * {self.den}) / {self.den}"
                if self.num == 1
                else f"torch.round(x * {self.den} / {self.num}) * {self.num} / {self.den}"
            )
            raise RobustCertError(
                f"{where} is not on the grid q = {self.text} (the nearest grid value is {ki}·{self.text} = "
                f"{near!r}); quantise the input first, e.g. {fix}"
            )
        return k


def check_on_grid(x: Tensor, grid: Grid | str | Fraction | float, *, sigma: float | None = None) -> Tensor:
    """Check a batch (any shape) is on the grid and, if ``sigma`` is given, that every noisy grid point
    x + J (|J| ≤ K of :class:`RoundedGaussian`) stays in the range where ψ is exact; returns the int64
    indices k with x = ψ(k). RobustCertError (one line, naming the value and the grid) otherwise."""
    g = Grid.parse(grid)
    reach = 0 if sigma is None else noise_reach(_check_sigma(sigma), g)
    return g.index(x, reach=reach)


# ---------------------------------------------------------------------------------------------- the noise


def _check_sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(float(sigma)):
        raise RobustCertError(f"sigma must be a finite number > 0 (e.g. 0.25), got {sigma!r}")
    if float(sigma) <= 0.0:
        raise RobustCertError(f"sigma must be > 0 (e.g. 0.25), got {sigma!r}")
    return float(sigma)


def noise_reach(sigma: float, grid: Grid) -> int:
    """K = ⌈TAIL_Z·σ/q⌉: the noise index J is drawn in [−K, K]."""
    return max(1, math.ceil(TAIL_Z * Fraction(sigma) / grid.q))


def coordinate_tv(sigma: float, grid: Grid | str | Fraction | float, bits: int = BITS) -> float:
    """τ: an upper bound on the total-variation distance between the sampler's law π̂ of one noise
    coordinate and the exact rounded Gaussian π (the coupling lemma): 2K·2^(−bits) + 2Φ(−(K + ½)q/σ),
    the tail bounded by Mills' ratio φ(t)/t and rounded up."""
    return _coordinate_tv(_check_sigma(sigma), Grid.parse(grid), int(bits))


@functools.lru_cache(maxsize=256)
def _coordinate_tv(sigma: float, g: Grid, bits: int) -> float:
    k = noise_reach(sigma, g)
    t = float((k + Fraction(1, 2)) * g.q / Fraction(sigma))
    tail = math.exp(-0.5 * t * t) / (math.sqrt(2.0 * math.pi) * t)
    return (2 * k * 2.0 ** (-bits) + 2.0 * tail) * (1.0 + 1e-9)


class RoundedGaussian:
    """The noise: J = ρ(ε), ε ~ N(0, σ²), on the grid q, drawn from fair bits by CDF thresholds.

    Guarantees: :meth:`sample` draws i.i.d. coordinates whose law is exactly :meth:`sampler_pmf` (a
    rational pmf on [−K, K]); its total-variation distance to the exact rounded Gaussian :meth:`pmf` is
    at most :attr:`tv` (= :func:`coordinate_tv`). Build it with :func:`rounded_gaussian` (cached).
    """

    def __init__(self, sigma: float, grid: Grid, bits: int = BITS) -> None:
        if not 8 <= bits <= 62:
            raise RobustCertError(f"bits must be in [8, 62], got {bits}")
        self.sigma = _check_sigma(sigma)
        self.grid = grid
        self.bits = bits
        self.reach = noise_reach(self.sigma, grid)
        self.tv = coordinate_tv(self.sigma, grid, bits)
        self.thresholds: tuple[int, ...] = self._thresholds()
        self._tables: dict[torch.device, Tensor] = {}

    def _thresholds(self) -> tuple[int, ...]:
        """T_t = round(2^bits·Φ((t + ½)q/σ)) for t = −K … K − 1, from 40-digit arithmetic; T_{−t−1} uses
        Φ(−u) = 1 − Φ(u), so |T_t − 2^bits·C(t)| ≤ 1 on both sides."""
        import mpmath

        scale = 1 << self.bits
        k = self.reach
        upper: list[int] = []
        with mpmath.workdps(40):
            step = mpmath.mpf(self.grid.num) / (mpmath.mpf(self.grid.den) * mpmath.mpf(self.sigma))
            for t in range(k):  # t ≥ 0: C(t) ≥ 1/2
                c = mpmath.ncdf((t + mpmath.mpf(0.5)) * step)
                upper.append(int(mpmath.nint(c * scale)))
        lower = [scale - v for v in reversed(upper)]  # t = −K … −1 by symmetry
        table = lower + upper
        if any(b < a for a, b in zip(table, table[1:], strict=False)) or table[0] < 0 or table[-1] > scale:
            raise RobustCertError("internal error: rounded-Gaussian thresholds are not monotone")
        return tuple(table)

    def _table(self, device: torch.device) -> Tensor:
        if device not in self._tables:
            self._tables[device] = torch.tensor(self.thresholds, dtype=torch.int64, device=device)
        return self._tables[device]

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """An int64 tensor of i.i.d. noise indices J in [−K, K], law :meth:`sampler_pmf`, from 62 bits each
        of ``generator`` (a seeded torch.Generator: the same seed gives the same draw)."""
        device = generator.device
        bits = torch.randint(0, 1 << self.bits, shape, generator=generator, dtype=torch.int64, device=device)
        return torch.searchsorted(self._table(device), bits, right=True) - self.reach

    def pmf(self, j: np.ndarray | list[int]) -> np.ndarray:
        """The exact rounded-Gaussian pmf π(j) = Φ((j + ½)q/σ) − Φ((j − ½)q/σ) (40-digit arithmetic,
        returned as float64)."""
        import mpmath

        out = []
        with mpmath.workdps(40):
            step = mpmath.mpf(self.grid.num) / (mpmath.mpf(self.grid.den) * mpmath.mpf(self.sigma))
            for v in np.asarray(j, dtype=np.int64).tolist():
                out.append(
                    float(
                        mpmath.ncdf((v + mpmath.mpf(0.5)) * step) - mpmath.ncdf((v - mpmath.mpf(0.5)) * step)
                    )
                )
        return np.asarray(out, dtype=np.float64)

    def sampler_pmf(self) -> dict[int, Fraction]:
        """The exact law π̂ of :meth:`sample`: π̂(j) = (T_j − T_{j−1}) / 2^bits on j = −K … K."""
        scale = 1 << self.bits
        edges = (0, *self.thresholds, scale)
        return {j - self.reach: Fraction(edges[j + 1] - edges[j], scale) for j in range(2 * self.reach + 1)}


@functools.lru_cache(maxsize=32)
def _cached_noise(sigma: float, num: int, den: int, bits: int) -> RoundedGaussian:
    return RoundedGaussian(sigma, Grid(num, den), bits)


def rounded_gaussian(sigma: float, grid: Grid | str | Fraction | float, bits: int = BITS) -> RoundedGaussian:
    """The (cached) :class:`RoundedGaussian` for σ on the grid."""
    g = Grid.parse(grid)
    return _cached_noise(_check_sigma(sigma), g.num, g.den, int(bits))


def sample_noise(
    n: int,
    shape: tuple[int, ...],
    sigma: float,
    grid: Grid | str | Fraction | float,
    generator: torch.Generator,
) -> Tensor:
    """Noise indices for n samples of an input of ``shape``: int64 [n, *shape], i.i.d. with the law of
    :meth:`RoundedGaussian.sample`. The noisy inputs are ``Grid.values(k + J)`` (never a float sum)."""
    return rounded_gaussian(sigma, grid).sample((int(n), *shape), generator)


# ---------------------------------------------------------------------------------------------- the radius


def sound_pa(
    pA_lower: float, sigma: float, q: Grid | str | Fraction | float, *, dim: int, bits: int = BITS
) -> float:
    """pA_lower − dim·τ − NUMERIC_SLACK: a lower bound on the exact rounded-Gaussian probability from a
    lower bound on the sampler's (module docstring), clipped at 0."""
    p = float(pA_lower)
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise RobustCertError(f"pA_lower must be a probability in [0, 1], got {pA_lower!r}")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise RobustCertError(f"dim (the number of input values) must be a positive integer, got {dim!r}")
    return max(0.0, p - int(dim) * coordinate_tv(sigma, q, bits) - NUMERIC_SLACK)


def sound_radius(
    pA_lower: float, sigma: float, q: Grid | str | Fraction | float, *, dim: int, bits: int = BITS
) -> float:
    """The sound certified L2 radius (input units) from a (1 − α) lower bound ``pA_lower`` on the
    probability, under the module's sampler, that the model returns c_A on an input of ``dim`` values.

    Guarantee: if ``pA_lower`` is such a bound, then with the same probability g(x̄ + δ) = c_A for all
    ‖δ‖₂ < the returned radius, where g smooths the model as run (module docstring). Returns 0.0 when the
    corrected pA is ≤ ½ (abstain). It is Cohen's σΦ⁻¹ at a pA lowered by dim·τ + 2·10⁻¹² (< 10⁻⁸ for
    dim ≤ 10⁶ and σ/q ≤ 10³), so never larger than Cohen's radius and, away from pA ≈ 1, equal to it to ~10⁻⁸.
    """
    p = sound_pa(pA_lower, sigma, q, dim=dim, bits=bits)
    if p <= 0.5:
        return 0.0
    return float(sigma) * float(norm.ppf(p))


# ---------------------------------------------------------------------------------------------- certify


@dataclass(frozen=True)
class SoundCertificate(Certificate):
    """A :class:`Certificate` whose radius holds for the model as run in ``float_model`` (``"float32"``
    or ``"float64"``, as bound rows say it) on inputs on ``grid`` (q, e.g. ``"1/255"``).

    ``pA_lower`` is the lower bound the radius is computed from (after the sampler correction);
    ``pA_lower_sampled`` is the Clopper–Pearson bound under the sampler's law; ``tv_bound`` = d·τ.
    """

    pA_lower_sampled: float
    tv_bound: float
    grid: str
    float_model: str

    @property
    def guarantee(self) -> str:
        """The one-line statement of what the radius is about (:func:`guarantee_text`)."""
        return guarantee_text(self.grid, self.float_model)

    def to_row(self) -> dict[str, Any]:
        """The smoothing row fields plus ``float_model`` and ``grid``."""
        row = super().to_row()
        row.pop("pA_lower_sampled")
        row.pop("tv_bound")
        return row


class SoundSmoothedClassifier(SmoothedClassifier):
    """Sound randomized smoothing of a float base model (Voráček & Hein 2023; module docstring).

    Same constructor as :class:`SmoothedClassifier` plus ``grid`` (q, e.g. ``"1/255"``); same
    ``certify`` / ``predict`` / ``sample_counts`` signatures. Inputs must lie on the grid; the noise is the
    Gaussian rounded to the grid, and the model sees the exact grid points ψ(k + J).
    """

    def __init__(
        self,
        base_model: nn.Module,
        sigma: float,
        num_classes: int,
        grid: Grid | str | Fraction | float = "1/255",
    ) -> None:
        super().__init__(base_model, sigma, num_classes)
        self.grid = Grid.parse(grid)
        self.noise = rounded_gaussian(self.sigma, self.grid)

    def certify(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> SoundCertificate:
        """CERTIFY for one input x (C×H×W on the grid).

        Guarantee: with probability ≥ 1 − alpha over the sampling, if the prediction is not −1 then
        g(x̄ + δ) = prediction for every real δ with ‖δ‖₂ < radius, g the Gaussian smoothing of the model
        as run (h = f ∘ ψ ∘ ρ), x̄ = k·q the grid point x stands for. Same seeding contract as
        :meth:`SmoothedClassifier.certify` (its own streams)."""
        cert = super().certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed)
        dim = int(np.prod(tuple(x.shape)))
        return SoundCertificate(
            **{f.name: getattr(cert, f.name) for f in dataclasses.fields(cert)},
            pA_lower_sampled=clopper_pearson_lower(cert.count, cert.n, cert.alpha),
            tv_bound=dim * self.noise.tv,
            grid=self.grid.text,
            float_model=str(self._model_place(torch.as_tensor(x))[1]).replace("torch.", ""),
        )

    def certified_lower(self, pa_lower: float, dim: int) -> float:
        """:func:`sound_pa`: the sampled bound lowered by the sampler's distance from the rounded
        Gaussian over ``dim`` coordinates (and the float64 slack of the bound's evaluation)."""
        return sound_pa(pa_lower, self.sigma, self.grid, dim=dim, bits=self.noise.bits)

    def _certify_seeds(self, seed: int) -> tuple[int, int]:
        """Streams of their own (domain "sfp1"), apart from the Gaussian classifier's."""
        return derived_seed(_DOMAIN, 0, seed), derived_seed(_DOMAIN, 1, seed)

    def predict(
        self, x: torch.Tensor, n: int = 1000, alpha: float = 0.001, batch_size: int = 1000, seed: int = 0
    ) -> int:
        """PREDICT with the rounded noise: returns a class other than g(x̄) with probability
        ≤ alpha + n·d·τ (Cohen's bound plus the sampler's total-variation distance over all n samples)."""
        return super().predict(x, n=n, alpha=alpha, batch_size=batch_size, seed=seed)

    # ------------------------------------------------------------------ internals

    def _check_input(self, x: object) -> torch.Tensor:
        """Cohen's checks, then the grid check on x as given (its own dtype); returns ψ(k) in the model's
        dtype, so the sampler recovers k exactly."""
        original = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        placed = super()._check_input(original)
        assert isinstance(original, Tensor)
        Grid._check_dtype(placed.dtype)
        k = self.grid.index(original.detach(), reach=self.noise.reach)
        if placed.dtype != original.dtype:  # the range in the model's dtype
            self.grid.index(self.grid.values(k, placed.dtype), reach=self.noise.reach)
        return self.grid.values(k.to(placed.device), placed.dtype).contiguous()

    def _counts(self, x: torch.Tensor, num: int, batch_size: int, stream_seed: int) -> torch.Tensor:
        """Per-class votes of the model on ``num`` points ψ(k + J), J drawn batch by batch."""
        k = self.grid.index(x, reach=self.noise.reach).unsqueeze(0)
        generator = torch_generator(derived_seed(_DOMAIN, 2, stream_seed), x.device)
        size = min(batch_size, num)
        buffer = torch.empty((size, *x.shape), dtype=x.dtype, device=x.device)
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=x.device)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, x.numel()))
        remaining = num
        first = True
        while remaining > 0:
            rows = min(size, remaining)
            batch = buffer if rows == size else buffer[:rows]
            for start in range(0, rows, chunk):
                stop = min(rows, start + chunk)
                j = self.noise.sample((stop - start, *x.shape), generator)
                batch[start:stop] = self.grid.values(k + j, x.dtype)
            if first:
                logits = self._forward_first(batch, x)
                first = False
            else:
                logits = self.base_model(batch)
            self._check_logits(logits, rows)
            counts += torch.bincount(logits.argmax(dim=1), minlength=self.num_classes)
            remaining -= rows
        return counts


def certify_sound(
    model: nn.Module,
    x: torch.Tensor,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    *,
    sigma: float,
    num_classes: int,
    grid: Grid | str | Fraction | float = "1/255",
) -> SoundCertificate:
    """:meth:`SmoothedClassifier.certify`'s procedure, made sound for the model as run: one input x
    (C×H×W on ``grid``), the same n0 / n / alpha / batch_size / seed, a :class:`SoundCertificate` back
    (a :class:`Certificate` plus ``grid`` and ``float_model``)."""
    return SoundSmoothedClassifier(model, sigma, num_classes, grid).certify(
        x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed
    )


def certified_pa_lower(smoothed: SmoothedClassifier, pA_lower: float, dim: int) -> float:
    """``smoothed.certified_lower(pA_lower, dim)``: the bound a radius or a threshold test may use —
    ``pA_lower`` itself for Cohen's :class:`SmoothedClassifier`, :func:`sound_pa` for a
    :class:`SoundSmoothedClassifier` (for procedures, e.g. adaptive ones, that draw through
    ``smoothed._counts`` and compute their own bound)."""
    return smoothed.certified_lower(pA_lower, dim)