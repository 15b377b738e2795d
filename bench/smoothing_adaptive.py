"""Adaptive (anytime-valid) smoothing certification against Cohen's fixed n (digits or Fashion-MNIST).

For each noise level σ (each with its own model) and each target radius R: certified accuracy at R of
Cohen's CERTIFY with n = 100,000 (one run per σ; its radius answers every R) and of the adaptive target
mode (``target_radius=R, max_n=100000``), the difference in points, the examples where they disagree,
mean samples per example (n0 + estimation samples) and their ratio, median seconds per example, and
Cohen's average certified radius (ACR: radius if correct, else 0). Both go through
``robustcert.certify`` — the CLI's path — with the same seeds and the same example indices, so both
select the same candidate class per example.

    .venv/bin/python bench/smoothing_adaptive.py [--dataset digits|fashion-mnist] [--limit 200]
        [--sigmas 0.12,0.25,0.5] [--radii-sigma 1,2 | --radii 0.25,0.5] [--methods gaussian]
        [--model DIR | --model-dir-for SIGMA=DIR ...] [--cohen-rows FILE] [--jobs 1] [--out FILE.md]

Examples: ``--limit`` evenly spaced test examples (digits without ``--sigmas``: the first ``--limit``,
as before). Radii: ``--radii`` gives absolute radii; ``--radii-sigma`` multiples of each σ (default for
Fashion-MNIST: 1,2, i.e. R = σ and 2σ).

Models. digits without ``--sigmas``: ``--model`` (a gaussian cnn-small, sigma 0.25, 10 epochs, trained
there when missing). Otherwise per (method, σ): ``--model-dir-for SIGMA=DIR`` (or METHOD:SIGMA=DIR) if
given, else the first ``<method>-sigma<σ>-*`` directory with a model under ``--work`` (default
/tmp/robustcert-bench-smoothing-training/<dataset>, where bench/smoothing_training.py keeps its models);
a missing one is trained there exactly as bench/smoothing_training.py does with ``--epochs`` (default 3).

``--cohen-rows`` keeps Cohen's rows (the slow part) in JSON and reuses them when the model file and every
setting are the same (with several models, one file per model: ``<stem>-<method>-sigma<σ><suffix>``).
``--jobs`` certifies that many models in parallel processes (1 torch thread each).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

import robustcert
from robustcert.data import load_dataset
from robustcert.models import file_sha256, load_model
from robustcert.rows import Row, SmoothingRow


def ensure_model(path: Path, sigma: float, epochs: int) -> None:
    if (path / "model.pt").exists():
        return
    from robustcert.train import GaussianLoss, train_model

    print(f"training cnn-small (gaussian, sigma {sigma}, {epochs} epochs) into {path}", flush=True)
    train_model(
        arch="cnn-small",
        train_data=load_dataset("digits", "train"),
        test_data=load_dataset("digits", "test"),
        loss=GaussianLoss(sigma),
        method="gaussian",
        method_params={"sigma": sigma},
        out_dir=path,
        epochs=epochs,
        seed=0,
        show_progress=False,
    )


def find_or_train(dataset: str, work: Path, method: str, sigma: float, epochs: int) -> Path:
    """The first ``<method>-sigma<σ>-*`` model under ``work``; trained as bench/smoothing_training.py
    does (its defaults, ``epochs`` epochs) when there is none."""
    found = sorted(p.parent for p in work.glob(f"{method}-sigma{sigma:g}-*/model.pt"))
    if found:
        return found[0]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from smoothing_training import train_one  # noqa: PLC0415 (bench helper, same training recipe)

    targs = argparse.Namespace(
        arch="cnn-small", epochs=epochs, batch_size=64, lr=1e-3, seed=0, noise_samples=2,
        consistency_lambda=10.0, consistency_eta=0.5, smoothadv_eps=0.5, smoothadv_steps=1,
    )
    print(f"training cnn-small ({method}, sigma {sigma:g}, {epochs} epochs) under {work}", flush=True)
    train_one(targs, method, sigma, load_dataset(dataset, "train"), load_dataset(dataset, "test"), work)
    return find_or_train(dataset, work, method, sigma, epochs)


def smoothing_rows(rows: list[Row]) -> list[SmoothingRow]:
    out = [r for r in rows if isinstance(r, SmoothingRow)]
    assert len(out) == len(rows)
    return out


def certified_at(rows: list[SmoothingRow], radius: float) -> set[int]:
    """Indices of the examples correct and certified at ``radius`` (the report's definition)."""
    return {r.index for r in rows if r.correct and r.radius >= radius}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Cohen (cached) and the adaptive target mode at every radius, for one model."""
    torch.set_num_threads(1)
    model_dir, method = Path(job["model"]), job["method"]
    model, meta = load_model(model_dir)
    sigma = float(meta["train"]["sigma"]) if job["sigma"] is None else job["sigma"]
    data = load_dataset(job["dataset"], "test")
    indices = job["indices"]
    x, y = data.x[indices], [int(data.y[i]) for i in indices]
    count = len(indices)
    n = job["n"]
    common = {"sigma": sigma, "n0": job["n0"], "alpha": job["alpha"], "batch": job["batch"], "seed": job["seed"]}
    tag = f"[{method} sigma={sigma:g}]"

    key = {"model": file_sha256(model_dir / "model.pt"), "count": count, "n": n, **common}
    if job["indices_in_key"]:
        key["indices"] = indices
    cache = Path(job["cohen_rows"]) if job["cohen_rows"] else None
    cached = json.loads(cache.read_text()) if cache and cache.exists() else None
    if cached is not None and cached["key"] == key:
        cohen = [SmoothingRow.from_json(r) for r in cached["rows"]]
        print(f"{tag} Cohen: {len(cohen)} rows from {cache}", flush=True)
    else:
        began = time.perf_counter()
        cohen = smoothing_rows(robustcert.certify(model, x, y, "smoothing", n=n, indices=indices, **common))
        print(f"{tag} Cohen: {time.perf_counter() - began:.1f} s", flush=True)
        if cache:
            cache.write_text(json.dumps({"key": key, "rows": [r.to_json() for r in cohen]}))
    cohen_samples = statistics.mean(r.samples for r in cohen)
    cohen_seconds = statistics.median(r.seconds for r in cohen)
    acr = statistics.mean(r.radius if r.correct else 0.0 for r in cohen)
    radii = job["radii"] if job["radii"] is not None else [m * sigma for m in job["radii_sigma"]]

    results = []
    for radius in radii:
        radius = round(radius, 6)
        began = time.perf_counter()
        adaptive = smoothing_rows(
            robustcert.certify(
                model, x, y, "smoothing", target_radius=radius, max_n=n, first_batch=job["first_batch"],
                indices=indices, **common,
            )
        )
        wall = time.perf_counter() - began
        c_set, a_set = certified_at(cohen, radius), certified_at(adaptive, radius)
        assert all(r.certified == (r.radius == radius) for r in adaptive)
        mean_samples = statistics.mean(r.samples for r in adaptive)
        results.append({
            "method": method,
            "sigma": sigma,
            "model": str(model_dir),
            "radius": radius,
            "examples": count,
            "cohen_certified_accuracy": len(c_set) / count,
            "adaptive_certified_accuracy": len(a_set) / count,
            "difference_points": 100 * (len(a_set) - len(c_set)) / count,
            "only_cohen": sorted(c_set - a_set),
            "only_adaptive": sorted(a_set - c_set),
            "cohen_mean_samples": cohen_samples,
            "adaptive_mean_samples": mean_samples,
            "adaptive_max_samples": max(r.samples for r in adaptive),
            "sample_ratio": cohen_samples / mean_samples,
            "cohen_median_seconds": cohen_seconds,
            "adaptive_median_seconds": statistics.median(r.seconds for r in adaptive),
            "adaptive_wall_seconds": wall,
            "cohen_acr": acr,
        })
        print(f"{tag} adaptive R={radius:g}: {wall:.1f} s", flush=True)
    return {"results": results}


def parse_model_dirs(specs: list[str]) -> dict[tuple[str, float], Path]:
    out = {}
    for spec in specs:
        name, _, directory = spec.partition("=")
        method, _, sigma = name.rpartition(":")
        out[(method or "gaussian", float(sigma))] = Path(directory)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits", help="digits | fashion-mnist")
    parser.add_argument("--model", type=Path, default=Path("/tmp/rc_adaptive/model"), help="digits, no --sigmas")
    parser.add_argument("--sigmas", default=None, help="noise levels, each with its own model, e.g. 0.12,0.25,0.5")
    parser.add_argument("--methods", default="gaussian", help="training methods of the models (with --sigmas)")
    parser.add_argument("--model-dir-for", action="append", default=[], metavar="[METHOD:]SIGMA=DIR")
    parser.add_argument("--work", type=Path, default=None, help="where per-sigma models are looked up / trained")
    parser.add_argument("--epochs", type=int, default=3, help="epochs when a per-sigma model must be trained")
    parser.add_argument("--limit", type=int, default=200, help="test examples (evenly spaced with --sigmas)")
    parser.add_argument("--radii", default=None, help="absolute target radii (default digits: 0.25,0.5)")
    parser.add_argument("--radii-sigma", default=None, help="target radii as multiples of σ (default with --sigmas: 1,2)")
    parser.add_argument("--n", type=int, default=100_000, help="Cohen's n and the adaptive budget max_n")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--first-batch", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="models certified in parallel (1 thread each)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument("--cohen-rows", type=Path, default=None, help="cache of Cohen's rows (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wall_began = time.perf_counter()

    data = load_dataset(args.dataset, "test")
    size = len(data.y)
    legacy = args.sigmas is None and args.dataset == "digits"
    if args.radii is not None and args.radii_sigma is not None:
        parser.error("give --radii or --radii-sigma, not both")
    radii = [float(r) for r in args.radii.split(",")] if args.radii else None
    radii_sigma = [float(r) for r in (args.radii_sigma or "1,2").split(",")]
    if legacy and radii is None and args.radii_sigma is None:
        radii = [0.25, 0.5]

    if legacy:
        count = min(args.limit, size)
        indices = list(range(count))
        ensure_model(args.model, 0.25, 10)
        models = [("gaussian", None, args.model)]
    else:
        if args.sigmas is None:
            parser.error("--sigmas is needed with --dataset other than digits")
        indices = sorted({int(v) for v in torch.linspace(0, size - 1, min(args.limit, size)).round().tolist()})
        work = args.work or Path("/tmp/robustcert-bench-smoothing-training") / args.dataset
        work.mkdir(parents=True, exist_ok=True)
        given = parse_model_dirs(args.model_dir_for)
        models = []
        for method in args.methods.split(","):
            for sigma in (float(s) for s in args.sigmas.split(",")):
                directory = given.get((method, sigma)) or find_or_train(args.dataset, work, method, sigma, args.epochs)
                models.append((method, sigma, directory))

    jobs = []
    for method, sigma, directory in models:
        cache = args.cohen_rows
        if cache is not None and len(models) > 1:
            cache = cache.with_name(f"{cache.stem}-{method}-sigma{sigma:g}{cache.suffix}")
        jobs.append({
            "dataset": args.dataset, "model": str(directory), "method": method, "sigma": sigma,
            "indices": indices, "indices_in_key": not legacy, "n": args.n, "n0": args.n0, "alpha": args.alpha,
            "batch": args.batch, "seed": args.seed, "first_batch": args.first_batch, "radii": radii,
            "radii_sigma": radii_sigma, "cohen_rows": str(cache) if cache else None,
        })
    print(
        f"torch {torch.__version__}, 1 thread per process, {args.jobs} job(s); {args.dataset} test, "
        f"{len(indices)} examples; models: " + ", ".join(f"{m} σ={s} {d}" for m, s, d in models)
        + f"; n0={args.n0}, alpha={args.alpha}, Cohen n={args.n}, adaptive max_n={args.n} "
        f"first_batch={args.first_batch}",
        flush=True,
    )
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            outs = list(pool.map(run_one, jobs))
    else:
        outs = [run_one(job) for job in jobs]
    results = [r for out in outs for r in out["results"]]
    total = time.perf_counter() - wall_began

    header = (
        f"{'method':>11s} {'σ':>5s} {'R':>5s} {'Cohen acc':>9s} {'adapt acc':>9s} {'diff pts':>8s} {'disagree':>8s} "
        f"{'Cohen samples':>13s} {'adapt samples':>13s} {'ratio':>6s} {'Cohen s/ex':>10s} {'adapt s/ex':>10s} "
        f"{'Cohen ACR':>9s}"
    )
    lines = []
    for r in results:
        disagree = len(r["only_cohen"]) + len(r["only_adaptive"])
        lines.append(
            f"{r['method']:>11s} {r['sigma']:5g} {r['radius']:5.2f} {100 * r['cohen_certified_accuracy']:8.1f}% "
            f"{100 * r['adaptive_certified_accuracy']:8.1f}% {r['difference_points']:+8.1f} {disagree:8d} "
            f"{r['cohen_mean_samples']:13.0f} {r['adaptive_mean_samples']:13.0f} {r['sample_ratio']:6.1f} "
            f"{r['cohen_median_seconds']:10.4f} {r['adaptive_median_seconds']:10.4f} {r['cohen_acr']:9.3f}"
        )
    print(header)
    print("\n".join(lines))
    print(
        "targets: |diff| <= 0.5 points and ratio >= 10 (both certify with probability >= 1 - alpha; "
        "disagree = examples certified at R by exactly one of the two)"
    )
    print(f"total wall time {total / 60:.1f} min", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"examples": len(indices), "n": args.n, "results": results}, indent=2))
    if args.out:
        command = "cd /work/main && .venv/bin/python bench/smoothing_adaptive.py " + shlex.join(sys.argv[1:])
        md = [
            "# Adaptive smoothing certification vs Cohen's fixed n",
            "",
            f"Command: `{command.strip()}`",
            "",
            f"Data: {args.dataset} test, {len(indices)} "
            + ("first" if legacy else "evenly spaced")
            + " examples (the same for every row). Certification through `robustcert.certify`: Cohen's CERTIFY "
            f"with n0 = {args.n0}, n = {args.n:,}; adaptive target mode with `target_radius` = R, "
            f"`max_n` = {args.n:,}, `first_batch` = {args.first_batch}; alpha = {args.alpha:g} per certificate, "
            f"seed {args.seed}, batch {args.batch}.",
            f"Machine: {platform.machine()}, {platform.system()}, torch {torch.__version__}, 1 torch thread per "
            f"process, {args.jobs} process(es) on 2 shared CPU cores (other jobs running, so seconds are "
            f"inflated); total wall time {total / 60:.1f} min.",
            "",
            "| model | σ | R | Cohen n=100k cert acc | adaptive cert acc | diff (pts) | disagree | Cohen samples/ex "
            "| adaptive samples/ex | ratio | Cohen median s/ex | adaptive median s/ex | Cohen ACR |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            disagree = len(r["only_cohen"]) + len(r["only_adaptive"])
            md.append(
                f"| {r['method']} | {r['sigma']:g} | {r['radius']:g} | {100 * r['cohen_certified_accuracy']:.1f}% "
                f"| {100 * r['adaptive_certified_accuracy']:.1f}% | {r['difference_points']:+.1f} | {disagree} "
                f"| {r['cohen_mean_samples']:,.0f} | {r['adaptive_mean_samples']:,.0f} | {r['sample_ratio']:.1f}× "
                f"| {r['cohen_median_seconds']:.2f} | {r['adaptive_median_seconds']:.3f} | {r['cohen_acr']:.3f} |"
            )
        disagreements = "; ".join(
            f"σ={r['sigma']:g} R={r['radius']:g}: only Cohen {r['only_cohen']}, only adaptive {r['only_adaptive']}"
            for r in results
            if r["only_cohen"] or r["only_adaptive"]
        )
        md += [
            "",
            f"Disagreeing examples (test-set indices): {disagreements or 'none'}. One example is "
            f"{100 / len(indices):.2g} points of certified accuracy here.",
            "",
        ]
        args.out.write_text("\n".join(md))


if __name__ == "__main__":
    main()
