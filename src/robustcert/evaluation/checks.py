"""Independent checks of smoothing certificates in the report card: an attack on the smoothed prediction
inside every certified radius, and a calibration estimate of the rate of wrong certificates."""

from __future__ import annotations

from typing import Any

from torch import nn

from robustcert.data.base import Dataset
from robustcert.rows import Row, SmoothingRow
from robustcert.seeding import derived_seed, example_seed

CALIBRATION_STREAM = 7919  # sub-stream of the run seed for calibration draws (independent of the run's)


def attack_smoothing_certificates(
    model: nn.Module, num_classes: int, data: Dataset, rows: list[Row], limit: int, seed: int, domain: Any = None
) -> dict[str, Any]:
    """Attack the smoothed prediction inside each certified radius (up to ``limit`` certified examples);
    ``broken`` lists the examples where the attack changed the smoothed prediction inside the radius."""
    from robustcert.attacks.smoothed import attack_smoothed

    certified = [r for r in rows if isinstance(r, SmoothingRow) and r.prediction != -1 and r.radius > 0][:limit]
    broken = []
    for row in certified:
        res = attack_smoothed(
            model, data.x[row.index], row.prediction, row.radius, row.sigma, num_classes,
            alpha=row.alpha, seed=example_seed(seed, row.index), domain=domain,
        )
        if res.broken:
            broken.append(
                {
                    "index": row.index,
                    "radius": row.radius,
                    "distance": res.distance,
                    "certified_prediction": row.prediction,
                    "prediction_at_attack": res.prediction,
                }
            )
    return {"attacked": len(certified), "broken": broken}


def calibrate_smoothing(
    model: nn.Module, num_classes: int, data: Dataset, rows: list[Row], limit: int, seed: int
) -> dict[str, Any]:
    """Estimate the rate of wrong smoothing certificates: for each certified example, a fresh sample of 4n
    draws gives a two-sided 99.9% interval on p_A; a certificate counts as wrong when that interval lies
    wholly below its pA_lower. Expected rate ≤ alpha (plus the interval's own 0.1% error)."""
    from robustcert.smoothing import SmoothedClassifier, clopper_pearson_interval

    certified = [r for r in rows if isinstance(r, SmoothingRow) and r.prediction != -1][:limit]
    wrong = 0
    for row in certified:
        smoothed = SmoothedClassifier(model, sigma=row.sigma, num_classes=num_classes)
        if row.grid is not None:  # a --sound-fp row: its p_A is about the noise rounded to its grid
            from robustcert.smoothing.sound_fp import SoundSmoothedClassifier

            smoothed = SoundSmoothedClassifier(model, sigma=row.sigma, num_classes=num_classes, grid=row.grid)
        n_fresh = 4 * row.n
        counts = smoothed.sample_counts(
            data.x[row.index], n_fresh, batch_size=1000,
            seed=derived_seed(seed, CALIBRATION_STREAM, row.index),
        )
        _, upper = clopper_pearson_interval(int(counts[row.prediction]), n_fresh, 0.001)
        wrong += int(upper < row.pA_lower)
    return {
        "checked": len(certified),
        "wrong": wrong,
        "rate": wrong / len(certified) if certified else 0.0,
        "alpha": certified[0].alpha if certified else None,
    }
