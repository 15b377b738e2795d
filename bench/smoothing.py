"""Certification overhead of randomized smoothing, as ratios measured in one run.

overhead = wall time of ``SmoothedClassifier.certify`` ÷ wall time of the same number (n0 + n) of bare
batched forward passes of the base model on noisy inputs (noise drawn the same way), median of several
runs. Also reported: the ratio against forward passes alone (noise pre-drawn), and samples per second.

    .venv/bin/python bench/smoothing.py [--repeats 5] [--n 10000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robustcert.data import load_dataset
from robustcert.errors import RobustCertError
from robustcert.models import build_model
from robustcert.smoothing import SmoothedClassifier


def bare_forward_seconds(
    model: torch.nn.Module, x: torch.Tensor, total: int, batch: int, sigma: float, with_noise: bool
) -> float:
    gen = torch.Generator().manual_seed(0)
    noisy = x.unsqueeze(0).repeat(batch, 1, 1, 1)
    if not with_noise:
        noisy = noisy + sigma * torch.randn(noisy.shape, generator=gen)
    start = time.perf_counter()
    with torch.inference_mode():
        done = 0
        while done < total:
            b = min(batch, total - done)
            if with_noise:
                inputs = x.unsqueeze(0) + sigma * torch.randn((b, *x.shape), generator=gen)
            else:
                inputs = noisy[:b]
            model(inputs).argmax(1)
            done += b
    return time.perf_counter() - start


def measure(name: str, data_name: str, n0: int, n: int, batch: int, repeats: int) -> dict[str, float]:
    data = load_dataset(data_name, "test")
    model = build_model("cnn-small", data.input_shape, data.num_classes, data.mean, data.std).eval()
    smoothed = SmoothedClassifier(model, sigma=0.25, num_classes=data.num_classes)
    x = data.x[0]
    smoothed.certify(x, n0=n0, n=min(n, 2 * batch), alpha=0.001, batch_size=batch, seed=0)  # warm-up
    ratios, ratios_fwd, rates = [], [], []
    for r in range(repeats):
        # interleave the three measurements so that machine noise hits them alike
        base_noise = bare_forward_seconds(model, x, n0 + n, batch, 0.25, with_noise=True)
        start = time.perf_counter()
        smoothed.certify(x, n0=n0, n=n, alpha=0.001, batch_size=batch, seed=r)
        cert = time.perf_counter() - start
        base_fwd = bare_forward_seconds(model, x, n0 + n, batch, 0.25, with_noise=False)
        ratios.append(cert / base_noise)
        ratios_fwd.append(cert / base_fwd)
        rates.append((n0 + n) / cert)
    return {
        "overhead": statistics.median(ratios),
        "overhead_vs_forward_only": statistics.median(ratios_fwd),
        "samples_per_second": statistics.median(rates),
        "min": min(ratios),
        "max": max(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; n0={args.n0} n={args.n} batch={args.batch}; "
        f"median of {args.repeats} runs"
    )
    print(f"{'setting':28s} {'overhead':>9s} {'(min..max)':>14s} {'vs fwd only':>11s} {'samples/s':>10s}")
    for label, data_name in (
        ("cnn-small / digits 8x8", "digits"),
        ("cnn-small / fashion-mnist 28x28", "fashion-mnist"),
    ):
        try:
            m = measure(label, data_name, args.n0, args.n, args.batch, args.repeats)
        except RobustCertError as exc:
            print(f"{label:28s} skipped: {exc}")
            continue
        print(
            f"{label:28s} {m['overhead']:9.3f} {m['min']:6.3f}..{m['max']:<6.3f} {m['overhead_vs_forward_only']:11.3f} "
            f"{m['samples_per_second']:10.0f}"
        )
    print("target: overhead <= 1.15")


if __name__ == "__main__":
    main()
