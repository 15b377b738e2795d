"""Certified training on Fashion-MNIST: the accuracy–robustness trade-off, one point per trained model.

For every (architecture, method, ε_train) of the grid, trains a model with ``robustcert train`` (so its
model.json records the command), then certifies the first ``--limit`` test examples (default: the whole
10k test set) at ``--eps`` with ``robustcert certify ibp`` / ``crown`` (and ``alpha-crown`` with
``--alpha``) and attacks them with ``robustcert attack pgd`` (the upper limit). Reports per model: clean
error, PGD error, verified error per certifier, training minutes and training images per second, as a
Markdown table (stdout and ``--out``), and draws clean vs certified accuracy (one colour per method).

    OMP_NUM_THREADS=1 .venv/bin/python bench/certified_training.py \\
        [--dataset fashion-mnist] [--archs cnn-small] [--methods ibp,crown-ibp,sabr,mtl-ibp] \\
        [--eps-train 0.05,0.1,0.2] [--eps 0.1] [--epochs 40] [--limit 10000] [--alpha] \\
        [--work runs/certified-training] [--out bench/results/certified_training.md]

Every step is a run directory under ``--work`` and is resumed (``--resume``) when the script is rerun,
so an interrupted grid continues where it stopped. Method options (the recipe) are in ``RECIPES``.
Runs one process at a time, one torch thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Per-method training options beyond --method/--eps-train (ramp as fractions of training).
# the ramp and clipping every method shares, and Shi et al.'s initialisation and warm-up regularisers
_RAMP = ["--ramp-start", "0.025", "--ramp-end", "0.5", "--grad-clip", "10"]
_SHI = ["--ibp-init", "--shi-reg", "0.5", "--schedule", "smooth"]
RECIPES: dict[str, list[str]] = {
    "ibp": [*_SHI, *_RAMP, "--kappa-end", "0"],
    "crown-ibp": ["--schedule", "linear", *_RAMP, "--kappa-end", "0"],
    "sabr": [*_SHI, *_RAMP, "--sabr-lambda", "0.4", "--pgd-steps", "5"],
    "mtl-ibp": [*_SHI, *_RAMP, "--mtl-alpha", "0.5", "--pgd-steps", "5"],
}
COLOURS = {"ibp": "tab:blue", "crown-ibp": "tab:orange", "sabr": "tab:green", "mtl-ibp": "tab:red"}


def _run(args: list[str]) -> float:
    """Run ``robustcert ARGS`` (one thread); return its wall-clock seconds; stop on failure."""
    cmd = [sys.executable, "-m", "robustcert", *args]
    print("$", shlex.join(["robustcert", *args]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def _summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def _train(work: Path, a: argparse.Namespace, arch: str, method: str, eps_train: float) -> tuple[Path, dict]:
    model = work / f"{a.dataset}-{arch}-{method}-{eps_train:g}"
    timing = model / "bench_timing.json"
    if not timing.exists():
        mode = ["--resume"] if (model / "train_state.pt").exists() else []
        seconds = _run(
            [
                "train",
                "--dataset",
                a.dataset,
                "--arch",
                arch,
                "--method",
                method,
                "--eps-train",
                str(eps_train),
                "--epochs",
                str(a.epochs),
                "--batch-size",
                str(a.batch_size),
                "--lr",
                str(a.lr),
                "--seed",
                "0",
                *RECIPES[method],
                "--out",
                str(model),
                *mode,
            ]
        )
        meta = json.loads((model / "model.json").read_text())
        images = meta["epochs_done"] * a.train_size
        timing.write_text(json.dumps({"seconds": seconds, "resumed": bool(mode), "images": images}) + "\n")
    return model, json.loads(timing.read_text())


def _certify(model: Path, a: argparse.Namespace, kind: str, method: str) -> dict[str, Any]:
    out = model.parent / f"{model.name}.{method}"
    if not (out / "summary.json").exists():
        mode = ["--resume"] if out.exists() else []
        _run(
            [
                kind,
                method,
                "--model",
                str(model),
                "--eps",
                str(a.eps),
                "--limit",
                str(a.limit),
                "--out",
                str(out),
                *mode,
            ]
        )
    return _summary(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--archs", default="cnn-small")
    p.add_argument("--methods", default="ibp,crown-ibp,sabr,mtl-ibp")
    p.add_argument("--eps-train", default="0.05,0.1,0.2")
    p.add_argument("--eps", type=float, default=0.1, help="the budget certified and attacked")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--limit", type=int, default=10000)
    p.add_argument("--alpha", action="store_true", help="also certify with alpha-CROWN")
    p.add_argument("--work", type=Path, default=Path("runs/certified-training"))
    p.add_argument("--out", type=Path, default=Path("bench/results/certified_training.md"))
    a = p.parse_args()
    from robustcert.data import load_dataset

    a.train_size = len(load_dataset(a.dataset, "train"))
    a.work.mkdir(parents=True, exist_ok=True)
    certifiers = ["ibp", "crown", *(["alpha-crown"] if a.alpha else [])]
    rows: list[dict[str, Any]] = []
    for arch in a.archs.split(","):
        for method in a.methods.split(","):
            for eps_train in (float(e) for e in a.eps_train.split(",")):
                model, timing = _train(a.work, a, arch, method, eps_train)
                row: dict[str, Any] = {"arch": arch, "method": method, "eps_train": eps_train, **timing}
                pgd = _certify(model, a, "attack", "pgd")
                row["clean_error"] = 1 - pgd["clean_accuracy"]
                row["pgd_error"] = 1 - pgd["attack_accuracy"][str(float(a.eps))]
                for c in certifiers:
                    row[f"verified_error_{c}"] = (
                        1 - _certify(model, a, "certify", c)["certified_accuracy"][str(float(a.eps))]
                    )
                rows.append(row)
    header = [
        "arch",
        "method",
        "ε_train",
        "clean err",
        "PGD err",
        *(f"verified err ({c})" for c in certifiers),
        "train min",
        "img/s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["arch"],
            r["method"],
            f"{r['eps_train']:g}",
            f"{100 * r['clean_error']:.2f}%",
            f"{100 * r['pgd_error']:.2f}%",
            *(f"{100 * r[f'verified_error_{c}']:.2f}%" for c in certifiers),
            f"{r['seconds'] / 60:.1f}",
            f"{r['images'] / r['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    note = (
        f"\n\n{a.dataset}, certified and attacked at L∞ ε = {a.eps:g} on the first {a.limit} test examples; "
        f"{a.epochs} epochs, batch {a.batch_size}, one torch thread. Recipes: `bench/certified_training.py` RECIPES.\n"
    )
    print(table + note)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(f"# Certified training on {a.dataset}\n\n{table}{note}")
    (a.work / "rows.json").write_text(json.dumps(rows, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    best = certifiers[-1]
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(1 - r["clean_error"], 1 - r[f"verified_error_{best}"]) for r in rows if r["method"] == method]
        ax.scatter([q[0] for q in pts], [q[1] for q in pts], label=method, color=COLOURS.get(method))
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel(f"verified accuracy ({best}, ε = {a.eps:g})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"), dpi=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
