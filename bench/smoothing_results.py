"""The README's randomized-smoothing results: Gaussian-trained cnn-small at several sigma, certified with
n = 10,000 and alpha = 0.001, on digits (all test points) and Fashion-MNIST (first 500 test points).

    .venv/bin/python bench/smoothing_results.py [--out runs/smoothing-results] [--fashion-limit 500]

Resumable: finished models and examples under --out are reused. Prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robustcert.data import load_dataset
from robustcert.jobs import certify_run
from robustcert.methods import get_method
from robustcert.models import read_model_meta
from robustcert.train import GaussianLoss, train_model

RADII = ("0.0", "0.25", "0.5", "0.75", "1.0")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/smoothing-results"))
    parser.add_argument("--fashion-limit", type=int, default=500)
    parser.add_argument("--sigmas", default="0.12,0.25,0.5")
    parser.add_argument("--datasets", default="digits,fashion-mnist")
    args = parser.parse_args()
    settings = {"digits": (30, 64, None), "fashion-mnist": (10, 128, args.fashion_limit)}
    lines = [
        "| data set | σ | examples | clean (base) | " + " | ".join(f"r = {r}" for r in RADII) + " |",
        "|---|---|---|---|" + "---|" * len(RADII),
    ]
    for name in args.datasets.split(","):
        epochs, batch, limit = settings[name]
        train, test = load_dataset(name, "train"), load_dataset(name, "test")
        for sigma in (float(s) for s in args.sigmas.split(",")):
            model_dir = args.out / name / f"sigma{sigma}" / "model"
            if not (
                (model_dir / "model.json").exists()
                and read_model_meta(model_dir).get("epochs_done") == epochs
            ):
                train_model(
                    arch="cnn-small",
                    train_data=train,
                    test_data=test,
                    loss=GaussianLoss(sigma),
                    method="gaussian",
                    method_params={"sigma": sigma},
                    out_dir=model_dir,
                    epochs=epochs,
                    batch_size=batch,
                    seed=0,
                    resume=True,
                )
            smoothing = get_method("smoothing")
            summary = certify_run(
                method=smoothing,
                params=smoothing.make_params({"sigma": sigma, "n0": 100, "n": 10_000, "alpha": 0.001, "batch": 1000}),
                model_dir=model_dir,
                dataset=name,
                split="test",
                limit=limit,
                seed=0,
                resume=True,
                out=args.out / name / f"sigma{sigma}" / "smoothing",
                quiet=True,
            )
            acc = summary["certified_accuracy"]
            cells = " | ".join(f"{100 * acc.get(r, 0.0):.1f}%" for r in RADII)
            lines.append(
                f"| {name} | {sigma} | {summary['n_examples']} | {100 * summary['base_accuracy']:.1f}% | {cells} |"
            )
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
