"""Certification overhead of randomized smoothing, as ratios measured in one run.

overhead = wall time of ``SmoothedClassifier.certify`` ÷ wall time of the same number (n0 + n) of bare
batched forward passes of the base model on noisy inputs (noise drawn the same way), median of several
runs. Also reported: the ratio against forward passes alone (noise pre-drawn), and samples per second.

    .venv/bin/python bench/smoothing.py [--repeats 5] [--n 10000] [--batch 1000]

``--summarize`` instead combines the outputs of bench/smoothing_adaptive.py (its ``--json`` files and its
``--cohen-rows`` caches) into one table per σ × training method — Cohen (n = 100,000) certified accuracy at
r ∈ {0, 0.25, 0.5, 0.75, 1.0}, average certified radius, mean samples and median seconds per example, and
the adaptive target mode at R = σ and 2σ — and plots Cohen's certified accuracy against the radius:

    .venv/bin/python bench/smoothing.py --summarize --adaptive-json A.json [B.json ...]
        --cohen-rows 'DIR/cohen-rows-*.json' [--out TABLE.md] [--plot CURVES.png]

Each adaptive result is matched to the Cohen rows of the same model file (SHA-256) and example count.
"""

from __future__ import annotations

import argparse
import glob
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

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


RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
METHOD_ORDER = {"gaussian": 0, "consistency": 1, "smoothadv": 2}


def certified_accuracy(rows: list[dict[str, Any]], radius: float) -> float:
    """Fraction of the examples correct with certified radius ≥ ``radius`` (abstentions are not correct)."""
    return sum(1 for r in rows if r["correct"] and r["radius"] >= radius) / len(rows)


def summarize(
    adaptive_jsons: list[Path], cohen_patterns: list[str], out: Path | None, plot: Path | None, note: str = ""
) -> str:
    """The combined Cohen-vs-adaptive table (Markdown) per σ × method; optionally the curves plot."""
    from robustcert.models import file_sha256

    cohen_files = sorted({Path(f) for pattern in cohen_patterns for f in glob.glob(pattern)})
    caches = [json.loads(f.read_text()) | {"file": str(f)} for f in cohen_files]
    groups: dict[tuple[str, float], dict[str, Any]] = {}
    for path in adaptive_jsons:
        for res in json.loads(path.read_text())["results"]:
            key = (res["method"], float(res["sigma"]))
            group = groups.setdefault(
                key, {"model": res["model"], "examples": res["examples"], "adaptive": []}
            )
            if group["model"] != res["model"] or group["examples"] != res["examples"]:
                raise SystemExit(f"{key}: results from two different runs ({path})")
            group["adaptive"].append(res)
    for (method, sigma), group in groups.items():
        digest = file_sha256(Path(group["model"]) / "model.pt")
        found = [
            c
            for c in caches
            if c["key"]["model"] == digest
            and c["key"]["count"] == group["examples"]
            and abs(float(c["key"]["sigma"]) - sigma) < 1e-9
        ]
        if not found:
            raise SystemExit(f"no Cohen rows for {method} σ={sigma:g} ({group['model']}) among {cohen_files}")
        group["cohen"] = found[0]["rows"]
        group["cohen_n"] = found[0]["key"]["n"]
        group["cohen_file"] = found[0]["file"]
        group["adaptive"].sort(key=lambda r: r["radius"])

    order = sorted(groups, key=lambda k: (k[1], METHOD_ORDER.get(k[0], 9), k[0]))
    head = (
        "| σ | method | examples | " + " | ".join(f"Cohen r={r:g}" for r in RADII) + " | Cohen ACR "
        "| Cohen samples/ex | Cohen median s/ex | adaptive R=σ acc | samples/ex | ratio | median s/ex "
        "| adaptive R=2σ acc | samples/ex | ratio | median s/ex |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for key in order:
        g = groups[key]
        rows = g["cohen"]
        acr = statistics.mean(r["radius"] if r["correct"] else 0.0 for r in rows)
        cells = [f"{key[1]:g}", key[0], str(len(rows))]
        cells += [f"{100 * certified_accuracy(rows, r):.1f}%" for r in RADII]
        cells += [
            f"{acr:.3f}",
            f"{statistics.mean(r['samples'] for r in rows):,.0f}",
            f"{statistics.median(r['seconds'] for r in rows):.2f}",
        ]
        for a in g["adaptive"][:2]:
            cells += [
                f"{100 * a['adaptive_certified_accuracy']:.1f}% (Cohen {100 * a['cohen_certified_accuracy']:.1f}%)",
                f"{a['adaptive_mean_samples']:,.0f}",
                f"{a['sample_ratio']:.1f}×",
                f"{a['adaptive_median_seconds']:.3f}",
            ]
        cells += ["–"] * (4 * max(0, 2 - len(g["adaptive"])))
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)

    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
        styles = {"gaussian": "-", "consistency": "--", "smoothadv": ":"}
        colors = {0.12: "tab:green", 0.25: "tab:blue", 0.5: "tab:red"}
        for key in order:
            rows = groups[key]["cohen"]
            top = max([1.0, *(r["radius"] for r in rows)])
            grid = [i * top / 400 for i in range(401)]
            ax.plot(
                grid,
                [100 * certified_accuracy(rows, r) for r in grid],
                styles.get(key[0], "-."),
                color=colors.get(key[1]),
                label=f"{key[0]} σ={key[1]:g} ({len(rows)} ex.)",
            )
        ax.set_xlabel("L2 radius r")
        ax.set_ylabel("certified accuracy (%)")
        ax.set_title("Fashion-MNIST cnn-small, Cohen CERTIFY n=100,000, alpha=0.001")
        ax.set_ylim(0, 100)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot)
        plt.close(fig)

    if out is not None:
        argv = sys.argv[1:]
        if "--note" in argv:  # the note is printed below the table, not repeated in the command
            at = argv.index("--note")
            argv = argv[:at] + argv[at + 2 :]
        command = (
            "cd /work/main && .venv/bin/python bench/smoothing.py "
            + shlex.join(argv)
            + " [--note TEXT]" * bool(note)
        )
        sources = ", ".join(f"`{g['cohen_file']}`" for g in (groups[k] for k in order))
        out.write_text(
            "\n".join(
                [
                    "# Randomized smoothing on Fashion-MNIST: certified accuracy, ACR, Cohen fixed n vs adaptive",
                    "",
                    f"Command: `{command}`",
                    "",
                    "Inputs: `bench/smoothing_adaptive.py --json` results ("
                    + ", ".join(f"`{p}`" for p in adaptive_jsons)
                    + f") and its cached Cohen rows ({sources}).",
                    "",
                    "Cohen columns: CERTIFY with n0 = 100, n = 100,000, alpha = 0.001; certified accuracy at r = fraction of "
                    "the examples whose smoothed prediction is correct with certified radius ≥ r (abstentions count as "
                    "wrong); ACR = mean of the radius if correct, else 0. Adaptive columns: the anytime-valid target mode "
                    "(`target_radius` = R, `max_n` = 100,000, same seed and examples), its certified accuracy at R (Cohen's "
                    "at the same R in parentheses), mean samples per example (n0 + estimation), ratio = Cohen samples ÷ "
                    "adaptive samples, median wall seconds per example. Seconds are on a shared 2-core machine with other "
                    "jobs running (1 torch thread per process), so they are inflated and comparable only within a run.",
                    "",
                    table,
                    "",
                    *([note, ""] if note else []),
                    "![certified accuracy vs radius](../../docs/smoothing_curves.png)" if plot else "",
                    "",
                ]
            )
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument(
        "--summarize", action="store_true", help="combine bench/smoothing_adaptive.py outputs"
    )
    parser.add_argument(
        "--adaptive-json", type=Path, nargs="+", default=[], help="smoothing_adaptive.py --json files"
    )
    parser.add_argument(
        "--cohen-rows", nargs="+", default=[], help="Cohen row caches (glob patterns allowed)"
    )
    parser.add_argument("--out", type=Path, default=None, help="--summarize: write the Markdown table here")
    parser.add_argument("--plot", type=Path, default=None, help="--summarize: write the curves (PNG) here")
    parser.add_argument("--note", default="", help="--summarize: a paragraph added under the table")
    args = parser.parse_args()
    if args.summarize:
        if not args.adaptive_json or not args.cohen_rows:
            parser.error("--summarize needs --adaptive-json and --cohen-rows")
        print(summarize(args.adaptive_json, args.cohen_rows, args.out, args.plot, args.note))
        return
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
