"""Randomized smoothing (Cohen et al. 2019): CERTIFY on the Gaussian-smoothed classifier, with a fixed
number of samples (Cohen's procedure, the default and the reference) or adaptively
(:mod:`robustcert.smoothing.adaptive`): ``target_radius`` decides "certified at R" or not, ``max_n``
alone finds the best radius within a budget; both stop sampling as soon as an anytime-valid confidence
sequence decides.

Each row holds with probability ≥ 1 − alpha over the sampling: the smoothed classifier predicts
``prediction`` everywhere in the L2 ball of radius ``radius`` (−1 = abstain).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.methods.base import Method, ModelInfo, Params, param
from robustcert.rows import Row, SmoothingRow


@dataclass(frozen=True, kw_only=True)
class SmoothingParams(Params):
    sigma: float | None = param(
        None, help="noise std in input units (default: the model's training sigma)", min=0.0, exclusive_min=True
    )
    n0: int = param(100, help="selection samples", min=1)
    n: int = param(
        10_000, help="estimation samples (Cohen's fixed n; the adaptive budget when --max-n is not given)", min=1
    )
    alpha: float = param(
        0.001, help="failure probability of each certificate", min=0.0, max=1.0, exclusive_min=True, exclusive_max=True
    )
    batch: int = param(1000, help="noisy samples per forward pass", min=1)
    target_radius: float | None = param(
        None,
        help="adaptive: decide 'certified at this L2 radius' or not, stopping as soon as a confidence sequence "
        "decides (default: none, Cohen's fixed n)",
        min=0.0,
    )
    max_n: int | None = param(
        None,
        help="adaptive: budget of estimation samples (default: n); without --target-radius, the best radius "
        "within it",
        min=1,
    )
    first_batch: int = param(
        100, help="adaptive: estimation samples at the first look; each later look doubles the total", min=1
    )
    radius_tol: float = param(
        0.01,
        help="adaptive, --max-n without --target-radius: stop once going on to max-n could add at most this radius",
        min=0.0,
    )

    sound_fp: bool = param(
        False,
        help="certify the float32 model as run (Voráček & Hein 2023): inputs on --grid, noise the Gaussian "
        "rounded to that grid, a radius that holds for the model's float evaluation (default: off, the "
        "real-arithmetic guarantee)",
    )
    grid: str | None = param(
        None,
        help="--sound-fp: the grid q the inputs lie on, e.g. 1/255 for 8-bit images (default: the data set's: "
        "1/16 digits, 1/255 fashion-mnist)",
    )

    @property
    def adaptive(self) -> bool:
        """True when the adaptive procedure runs (a target radius or a budget is given)."""
        return self.target_radius is not None or self.max_n is not None

    @property
    def budget(self) -> int:
        """The adaptive procedure's budget of estimation samples: ``max_n``, else ``n``."""
        return self.max_n if self.max_n is not None else self.n

    def check(self) -> None:
        """One-line errors for the rules that involve several fields (or a sigma already known)."""
        if self.sigma is not None and not self.sigma > 0:
            raise RobustCertError(f"--sigma must be > 0 (e.g. 0.25), got {self.sigma!r}")
        if self.target_radius is not None and not self.target_radius >= 0:
            raise RobustCertError(f"--target-radius must be >= 0 (e.g. 0.5), got {self.target_radius!r}")
        if self.adaptive and self.budget < self.first_batch:
            which = "--max-n" if self.max_n is not None else "--n (the budget when --max-n is not given)"
            raise RobustCertError(
                f"the adaptive budget {which} = {self.budget} is smaller than the first batch "
                f"--first-batch = {self.first_batch}: raise the budget or lower --first-batch"
            )
        if self.grid is not None:
            from robustcert.smoothing.sound_fp import Grid

            if not self.sound_fp:
                raise RobustCertError("--grid is the input grid of --sound-fp; add --sound-fp or drop --grid")
            Grid.parse(self.grid)  # one-line error for a bad grid
        if self.sigma is not None and self.target_radius is not None:
            from robustcert.smoothing.adaptive import max_certifiable_radius

            reachable = max_certifiable_radius(self.sigma, self.budget, self.first_batch, self.alpha)
            if self.target_radius >= reachable:
                raise RobustCertError(
                    f"--target-radius {self.target_radius:g} cannot be certified with sigma = {self.sigma:g} and a "
                    f"budget of {self.budget} samples (at most {reachable:.4g} at alpha = {self.alpha:g}): "
                    "lower --target-radius, or raise --max-n or --sigma"
                )


DATA_GRIDS = {"digits": "1/16", "fashion-mnist": "1/255"}  # the grids robustcert's data sets lie on


def resolve(params: SmoothingParams, info: ModelInfo) -> SmoothingParams:
    """Take sigma from the model's training metadata and, for ``sound_fp``, the grid from the model's data
    set, when they are not given (then check again)."""
    resolved = params
    if params.sigma is None:
        sigma = (info.meta.get("train") or {}).get("sigma")
        if sigma is None:
            raise RobustCertError("smoothing needs --sigma: the model was not trained with Gaussian noise")
        resolved = replace(resolved, sigma=float(sigma))
    if params.sound_fp and params.grid is None:
        grid = DATA_GRIDS.get(str(info.meta.get("dataset")))
        if grid is None:
            raise RobustCertError(
                "--sound-fp needs --grid Q, the grid the inputs lie on (e.g. 1/255 for 8-bit images scaled to [0, 1])"
            )
        resolved = replace(resolved, grid=grid)
    if resolved is not params:
        resolved.check()
    return resolved


class SmoothingCertifier:
    """Cohen et al.'s CERTIFY, or the adaptive procedure when ``params.adaptive``, per example (one row
    each), seeded by the example's seed."""

    batch_size = 1
    rows_per_example = 1

    def __init__(self, model: nn.Module, info: ModelInfo, params: SmoothingParams) -> None:
        from robustcert.smoothing import SmoothedClassifier

        assert params.sigma is not None
        self.model, self.params = model, params
        self.smoothed = SmoothedClassifier(model, sigma=params.sigma, num_classes=info.num_classes)
        self.float_model, self.grid = "real", None
        if params.sound_fp:
            from robustcert.smoothing.sound_fp import SoundSmoothedClassifier

            assert params.grid is not None
            self.smoothed = SoundSmoothedClassifier(
                model, sigma=params.sigma, num_classes=info.num_classes, grid=params.grid
            )
            dtype = next((t.dtype for t in model.parameters()), torch.float32)
            self.float_model = "float64" if dtype == torch.float64 else "float32"
            self.grid = self.smoothed.grid.text

    def certify_batch(
        self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]
    ) -> list[list[Row]]:
        p = self.params
        with torch.inference_mode():
            base = self.model(xs).argmax(1).tolist()
        out: list[list[Row]] = []
        for x, y, index, seed, base_pred in zip(xs, ys, indices, seeds, base, strict=True):
            row_of = self._adaptive_row if p.adaptive else self._cohen_row
            out.append([row_of(x, y, index, seed, base_pred)])
        return out

    def _cohen_row(self, x: torch.Tensor, y: int, index: int, seed: int, base_pred: int) -> SmoothingRow:
        p = self.params
        cert = self.smoothed.certify(x, n0=p.n0, n=p.n, alpha=p.alpha, batch_size=p.batch, seed=seed)
        prediction = int(cert.prediction)
        return SmoothingRow(
            index=index,
            label=y,
            method="smoothing",
            prediction=prediction,
            correct=prediction == y,
            certified=prediction != -1,
            radius=float(cert.radius),
            sigma=float(p.sigma or 0.0),
            n0=p.n0,
            n=p.n,
            count=int(cert.count),
            pA_lower=float(cert.pA_lower),
            alpha=p.alpha,
            base_correct=base_pred == y,
            samples=p.n0 + p.n,
            procedure="cohen",
            float_model=self.float_model,
            grid=self.grid,
        )

    def _adaptive_row(self, x: torch.Tensor, y: int, index: int, seed: int, base_pred: int) -> SmoothingRow:
        from robustcert.smoothing.adaptive import certify_adaptive

        p = self.params
        cert = certify_adaptive(
            self.smoothed,
            x,
            n0=p.n0,
            max_n=p.budget,
            first_batch=p.first_batch,
            alpha=p.alpha,
            target_radius=p.target_radius,
            radius_tol=p.radius_tol,
            batch_size=p.batch,
            seed=seed,
        )
        prediction = int(cert.prediction)
        return SmoothingRow(
            index=index,
            label=y,
            method="smoothing",
            prediction=prediction,
            correct=prediction == y,
            certified=bool(cert.certified),
            radius=float(cert.radius),
            sigma=float(p.sigma or 0.0),
            n0=p.n0,
            n=p.budget,
            count=int(cert.count),
            pA_lower=float(cert.pA_lower),
            alpha=p.alpha,
            base_correct=base_pred == y,
            samples=int(cert.samples),
            procedure="adaptive",
            target_radius=p.target_radius,
            float_model=self.float_model,
            grid=self.grid,
        )


def build(model: nn.Module, info: ModelInfo, params: SmoothingParams, log_path: Path | None) -> SmoothingCertifier:
    return SmoothingCertifier(model, info, params)


SMOOTHING = Method(
    name="smoothing",
    family="smoothing",
    params=SmoothingParams,
    build=build,
    resolve=resolve,
    norms=("l2",),
    label="smoothing",
    summary="randomized smoothing, Cohen et al.'s CERTIFY: an L2 radius that holds with probability >= 1 - alpha; "
    "adaptive with --target-radius / --max-n (sampling stops when an anytime-valid confidence sequence decides)",
    reference="Cohen, Rosenfeld & Kolter 2019, Certified Adversarial Robustness via Randomized Smoothing; "
    "adaptive: Horváth et al. 2022 (staged sampling), Voráček 2024 (confidence sequences)",
)
