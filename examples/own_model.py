"""Make a "user's own model" to try robustcert on: an ONNX file that expects normalised inputs, and data
in raw units outside [0, 1].

    .venv/bin/python examples/own_model.py [--out examples/out]

It writes, under ``--out``:

- ``digits16.npz``: scikit-learn's digits in their raw pixel units, 0..16 (not [0, 1]), split 80/20
  (``x_train``, ``y_train``, ``x_test``, ``y_test``, ``num_classes``), as ``--dataset npz:PATH`` reads;
- ``digits_mlp.onnx``: a small MLP trained (plain cross-entropy, a few seconds on a CPU) on inputs
  normalised as ``(x - mean) / std`` *outside* the model, with a Softmax at its end, exported with
  ``torch.onnx.export`` — the way many deployed models look;
- ``normalization.txt``: the ``mean`` and ``std`` to give robustcert (``--mean``/``--std``).

Then certify, attack and evaluate it as the README shows, with ``--input-range 0,16``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/out"))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]  # N×1×8×8, values 0..16
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    np.savez(
        args.out / "digits16.npz",
        x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test], num_classes=10,
    )
    mean, std = float(x[train].mean()), float(x[train].std())

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt = (torch.from_numpy(x[train]) - mean) / std  # the user's pipeline normalises before the model
    yt = torch.from_numpy(y[train])
    for _ in range(args.epochs):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    xs = (torch.from_numpy(x[test]) - mean) / std
    accuracy = float((net(xs).argmax(1) == torch.from_numpy(y[test])).float().mean())

    deployed = nn.Sequential(net, nn.Softmax(dim=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            deployed, (xs[:1],), str(args.out / "digits_mlp.onnx"), dynamo=False,
            input_names=["x"], output_names=["probs"], dynamic_axes={"x": {0: "batch"}, "probs": {0: "batch"}},
        )
    (args.out / "normalization.txt").write_text(f"--mean {mean:.6f} --std {std:.6f}\n")
    print(f"test accuracy {100 * accuracy:.1f}%; wrote {args.out}/digits16.npz, digits_mlp.onnx")
    print(f"normalisation the model expects: --mean {mean:.6f} --std {std:.6f}")


if __name__ == "__main__":
    main()
