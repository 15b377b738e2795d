"""Randomized smoothing with Gaussian noise (Cohen, Rosenfeld & Kolter, 2019).

The smoothed classifier is g(x) = argmax_c P[f(x + ε) = c] with ε ~ N(0, σ² I), where f is the base
model's argmax. Noise is added to x in [0, 1] pixel units *before* the model (whose first layer
normalises), and it is not clipped: the guarantee is over the unclipped Gaussian.

``certify`` (the paper's CERTIFY): n0 selection samples pick a candidate class cA; n fresh estimation
samples, drawn from an independent random stream, count the votes for cA; pA_lower is the one-sided
(1 − alpha) Clopper–Pearson lower bound on P[f(x + ε) = cA]. If pA_lower > 1/2 the certificate is
"g(x + δ) = cA for every ‖δ‖₂ < σ·Φ⁻¹(pA_lower)", which holds with probability ≥ 1 − alpha over the
sampling; otherwise it abstains.

``predict`` (the paper's PREDICT): returns the top class of n samples only if a two-sided binomial test
of its count against the runner-up's rejects a tie at level alpha, so the probability of returning a
class other than g(x) is ≤ alpha.

Samples are drawn batch by batch into one preallocated buffer (never all n at once); the base model runs
in eval mode under ``torch.inference_mode()`` and its modes are restored afterwards. Every draw comes from
a ``torch.Generator`` seeded from ``seed``, so a seed fixes the result.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.models.modes import eval_mode
from robustcert.seeding import check_seed, derived_seed, torch_generator
from robustcert.smoothing.stats import binomial_test_two_sided, check_level, clopper_pearson_lower

ABSTAIN = -1

# Independent random streams derived from one seed (robustcert.seeding). The domain word keeps these
# streams apart from the per-example seeds of :func:`robustcert.seeding.example_seed`.
_DOMAIN = 0x736D6F6F  # "smoo"
_STREAM_SELECTION = 0
_STREAM_ESTIMATION = 1
_STREAM_PREDICT = 2
_STREAM_SAMPLES = 3


def _stream_seed(seed: int, stream: int) -> int:
    return derived_seed(_DOMAIN, stream, seed)


@dataclass(frozen=True)
class Certificate:
    """The result of :meth:`SmoothedClassifier.certify` for one input.

    With probability ≥ 1 − ``alpha`` over the sampling, if ``prediction`` ≠ −1 the smoothed classifier
    returns ``prediction`` at every x + δ with ‖δ‖₂ < ``radius`` (L2, in [0, 1] pixel units).
    ``prediction`` = −1 means abstain, and then ``radius`` = 0.0.

    ``candidate`` is the class chosen from the selection samples (reported even on abstention);
    ``count`` is the number of the n estimation samples that voted for it; ``pA_lower`` is the one-sided
    Clopper–Pearson lower bound on its probability. ``counts_selection`` / ``counts_estimation`` are the
    per-class vote counts of the n0 selection and n estimation samples.
    """

    prediction: int
    radius: float
    count: int
    pA_lower: float
    n0: int
    n: int
    alpha: float
    sigma: float
    candidate: int
    counts_selection: tuple[int, ...]
    counts_estimation: tuple[int, ...]

    @property
    def abstained(self) -> bool:
        """True when the smoothed classifier abstained (``prediction`` = −1)."""
        return self.prediction == ABSTAIN

    def to_row(self) -> dict[str, Any]:
        """The smoothing fields of a ``results.jsonl`` row (DESIGN's file contract)."""
        row = asdict(self)
        for key in ("candidate", "counts_selection", "counts_estimation"):
            row.pop(key)
        return row


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _input_hint(model: nn.Module) -> str | None:
    """What the model's first shape-fixing layer expects, if it can be told from the module tree."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            return f"its first convolution expects {module.in_channels} input channel(s)"
        if isinstance(module, nn.Linear):
            return f"its first linear layer expects C*H*W = {module.in_features} values per input"
    return None


class SmoothedClassifier:
    """Gaussian randomized smoothing of a base classifier (Cohen, Rosenfeld & Kolter, 2019).

    ``base_model`` maps a batch N×C×H×W of inputs in [0, 1] to logits N×``num_classes`` (normalisation
    belongs inside it); ``sigma`` is the noise standard deviation in [0, 1] pixel units.
    """

    def __init__(self, base_model: nn.Module, sigma: float, num_classes: int) -> None:
        if not isinstance(base_model, nn.Module):
            raise RobustCertError(
                f"base_model must be a torch.nn.Module mapping N×C×H×W inputs to logits, got {type(base_model).__name__}"
            )
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(float(sigma)):
            raise RobustCertError(f"sigma must be a finite number > 0 (e.g. 0.25), got {sigma!r}")
        if float(sigma) <= 0.0:
            raise RobustCertError(f"sigma must be > 0 (e.g. 0.25), got {sigma!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise RobustCertError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.base_model: nn.Module = base_model
        self.sigma: float = float(sigma)
        self.num_classes: int = int(num_classes)

    # ------------------------------------------------------------------ public API

    def certify(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> Certificate:
        """Certify one input x (C×H×W, in [0, 1]) with the paper's CERTIFY procedure.

        Guarantee: with probability ≥ 1 − alpha over the sampling, if the returned prediction is not −1
        then g(x + δ) = prediction for all ‖δ‖₂ < radius. The n0 selection and n estimation samples come
        from independent streams derived from ``seed``; the same seed gives the same certificate.
        """
        n0 = self._positive_int(n0, "n0", "e.g. 100")
        n = self._positive_int(n, "n", "e.g. 100000")
        batch_size = self._positive_int(batch_size, "batch_size", "e.g. 1000")
        alpha = check_level(alpha)
        seed = check_seed(seed)
        x = self._check_input(x)

        selection_seed, estimation_seed = self._certify_seeds(seed)
        with eval_mode(self.base_model), torch.inference_mode():
            counts0 = self._counts(x, n0, batch_size, selection_seed)
            counts = self._counts(x, n, batch_size, estimation_seed)
        selection = tuple(int(c) for c in counts0.tolist())
        estimation = tuple(int(c) for c in counts.tolist())

        candidate = max(range(self.num_classes), key=lambda c: (selection[c], -c))  # ties → lowest index
        count = estimation[candidate]
        pa_lower = self.certified_lower(clopper_pearson_lower(count, n, alpha), int(x.numel()))
        if pa_lower > 0.5:
            prediction, radius = candidate, self.sigma * float(norm.ppf(pa_lower))
        else:
            prediction, radius = ABSTAIN, 0.0
        return Certificate(
            prediction=prediction,
            radius=radius,
            count=count,
            pA_lower=pa_lower,
            n0=n0,
            n=n,
            alpha=alpha,
            sigma=self.sigma,
            candidate=candidate,
            counts_selection=selection,
            counts_estimation=estimation,
        )

    def predict(
        self,
        x: torch.Tensor,
        n: int = 1000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> int:
        """Predict the smoothed class of one input x (C×H×W, in [0, 1]) with the paper's PREDICT.

        Returns the top class of n noisy samples if the two-sided binomial test of its count against the
        runner-up's (at p = 1/2) has p-value ≤ alpha, else −1 (abstain). The probability of returning a
        class other than g(x) is ≤ alpha.
        """
        n = self._positive_int(n, "n", "e.g. 1000")
        batch_size = self._positive_int(batch_size, "batch_size", "e.g. 1000")
        alpha = check_level(alpha)
        seed = check_seed(seed)
        x = self._check_input(x)
        with eval_mode(self.base_model), torch.inference_mode():
            counts = self._counts(x, n, batch_size, _stream_seed(seed, _STREAM_PREDICT)).tolist()
        order = sorted(range(self.num_classes), key=lambda c: (-counts[c], c))
        top, runner_up = order[0], order[1]
        n_a, n_b = int(counts[top]), int(counts[runner_up])
        if binomial_test_two_sided(n_a, n_a + n_b, 0.5) <= alpha:
            return top
        return ABSTAIN

    def sample_counts(self, x: torch.Tensor, n: int, batch_size: int = 1000, seed: int = 0) -> list[int]:
        """Votes of the base model on n noisy copies x + N(0, σ² I), per class (sums to n).

        Uses its own stream derived from ``seed`` (not the streams of certify or predict).
        """
        n = self._positive_int(n, "n", "e.g. 1000")
        batch_size = self._positive_int(batch_size, "batch_size", "e.g. 1000")
        seed = check_seed(seed)
        x = self._check_input(x)
        with eval_mode(self.base_model), torch.inference_mode():
            counts = self._counts(x, n, batch_size, _stream_seed(seed, _STREAM_SAMPLES))
        return [int(c) for c in counts.tolist()]

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _positive_int(value: object, name: str, example: str) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) <= 0:
            raise RobustCertError(f"{name} must be a positive integer ({example}), got {value!r}")
        return int(value)

    def certified_lower(self, pa_lower: float, dim: int) -> float:
        """The lower bound on p_A that a radius (σΦ⁻¹) or a threshold test may use, given a (1 − α)
        Clopper–Pearson bound ``pa_lower`` from this classifier's own samples of an input of ``dim``
        values: ``pa_lower`` itself here (Cohen's real-arithmetic guarantee); a subclass whose sampler
        only approximates its noise law lowers it by that approximation's error."""
        return float(pa_lower)

    def _certify_seeds(self, seed: int) -> tuple[int, int]:
        """The stream seeds of CERTIFY's selection (n0) and estimation (n) samples: independent."""
        return _stream_seed(seed, _STREAM_SELECTION), _stream_seed(seed, _STREAM_ESTIMATION)

    def _model_place(self, fallback: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        for tensor in (*self.base_model.parameters(), *self.base_model.buffers()):
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
        return fallback.device, torch.float32

    def _check_input(self, x: object) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise RobustCertError(
                f"x must be a torch.Tensor of shape C×H×W with values in [0, 1], got {type(x).__name__}"
            )
        shape = tuple(x.shape)
        if x.ndim == 4:
            raise RobustCertError(
                f"x has shape {shape}, a batch of {shape[0]} inputs; certify/predict take one input C×H×W — "
                "call them once per example (x[i])"
            )
        if x.ndim != 3 or x.numel() == 0:
            raise RobustCertError(f"x must be one non-empty input of shape C×H×W, got shape {shape}")
        if not x.is_floating_point():
            raise RobustCertError(
                f"x must be a floating-point tensor with values in [0, 1], got dtype {x.dtype} "
                "(convert images with x.float() / 255)"
            )
        if not bool(torch.isfinite(x).all()):
            raise RobustCertError("x contains NaN or infinite values; pass a finite input in [0, 1]")
        device, dtype = self._model_place(x)
        return x.detach().to(device=device, dtype=dtype).contiguous()

    def _forward_first(self, batch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The first forward of a sampling loop: turn a shape error of the model into a clear message."""
        try:
            return self.base_model(batch)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            hint = _input_hint(self.base_model)
            expected = f"; {hint}" if hint else ""
            raise RobustCertError(
                f"the base model cannot take an input of shape {tuple(x.shape)}{expected} "
                f"(model error: {_first_line(err)})"
            ) from err

    def _check_logits(self, logits: object, rows: int) -> None:
        if (
            not isinstance(logits, torch.Tensor)
            or logits.ndim != 2
            or tuple(logits.shape) != (rows, self.num_classes)
        ):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise RobustCertError(
                f"the base model must return logits of shape (batch, num_classes) = ({rows}, {self.num_classes}), "
                f"got {got}; pass the model's number of classes as num_classes"
            )

    def _counts(self, x: torch.Tensor, num: int, batch_size: int, stream_seed: int) -> torch.Tensor:
        """Per-class votes of the base model on ``num`` noisy copies of x, drawn batch by batch."""
        generator = torch_generator(stream_seed, x.device)
        size = min(batch_size, num)
        buffer = torch.empty((size, *x.shape), dtype=x.dtype, device=x.device)
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=x.device)
        model = self.base_model
        classes = self.num_classes
        sigma = self.sigma
        remaining = num
        first = True
        while remaining > 0:
            rows = min(size, remaining)
            batch = buffer if rows == size else buffer[:rows]
            torch.randn(batch.shape, generator=generator, out=batch)
            torch.add(x, batch, alpha=sigma, out=batch)
            if first:
                logits = self._forward_first(batch, x)
                first = False
            else:
                logits = model(batch)
            self._check_logits(logits, rows)
            counts += torch.bincount(logits.argmax(dim=1), minlength=classes)
            remaining -= rows
        return counts
