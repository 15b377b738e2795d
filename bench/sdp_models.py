"""The models of the SDP certifier bench (bench/sdp.py), trained once and cached, and their baseline numbers.

Raghunathan, Steinhardt and Liang's SDP relaxation ("Semidefinite relaxations for certifying robustness
to adversarial examples", NeurIPS 2018) is evaluated on small ReLU MLPs trained with PGD (L-inf), whose
ReLUs are mostly unstable under the attack budget: there the LP-style bounds (IBP, CROWN, alpha-CROWN)
verify little while PGD still finds no attack, which is the gap an SDP certifier should close. This module
trains such nets through ``robustcert.train.train_model`` / ``make_loss("pgd", ...)`` (L-inf PGD,
``PGD_STEPS`` steps per batch, Adam with the cosine schedule, batch 64, seed 0):

* ``digits-mlp-2x32``: scikit-learn's 8x8 digits (64 inputs), ``mlp-2x32``, eps_train 0.1;
* ``fmnist-mlp-2x50``, ``fmnist-mlp-2x100``, ``fmnist-mlp-4x100``: Fashion-MNIST (784 inputs, from
  ``/usr/share/datasets/fashion-mnist``), eps_train 0.1, 20 epochs (each <= ~10 minutes on one thread).

Every zoo MLP starts with a ``Normalize`` layer ((x - mean) / std, one channel); :func:`affine_layers`
folds it into the first linear layer and returns the plain ``[(W, b), ...]`` (float64) an SDP needs.

Each run is cached under ``$TMPDIR or /tmp``/robustcert-bench-sdp/<name> (``model.pt``, ``model.json``,
``train_state.pt``, plus ``bench_sdp.json``: the wall seconds spent training): a finished run is loaded,
an interrupted one resumes after its last epoch (bit for bit, see ``robustcert.train.loop``). Importing
trains nothing; :func:`load` refuses a model not trained yet.

Usage::

    python bench/sdp_models.py [NAME ...]          # train the missing models (all by default), one by one
    python bench/sdp_models.py --baseline [NAME ...]  # markdown table: clean / PGD / IBP / CROWN /
                                                   # alpha-CROWN on the first 100 test examples per eps,
                                                   # the recommended eps, and MILP timings

The baseline, per model and grid eps: clean accuracy, PGD robust accuracy (``pgd_attack``, 50 steps,
3 restarts), and the share verified by IBP, CROWN and alpha-CROWN (``margin_lower``, float32 model,
domain [0, 1], all examples in one batch) with the seconds each took. The recommended eps is the grid eps
where PGD leaves at least half of the examples robust and the gap "PGD-robust minus alpha-CROWN-verified"
is largest. For the models in ``MILP_MODELS``, ``exact_margin`` (HiGHS, 60 s limit) runs on the first
``--milp-n`` examples at that eps that PGD does not break but alpha-CROWN does not verify.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

FASHION = Path("/usr/share/datasets/fashion-mnist")
WORK = Path(os.environ.get("TMPDIR") or "/tmp") / "robustcert-bench-sdp"
PGD_STEPS = 10  # attack steps per training batch
BATCH_SIZE = 64
LR = 1e-3
SEED = 0


@dataclass(frozen=True)
class Spec:
    """One bench model: data set, zoo architecture, PGD training budget and epochs."""

    dataset: str
    arch: str
    eps_train: float
    epochs: int


SPECS: dict[str, Spec] = {
    "digits-mlp-2x32": Spec("digits", "mlp-2x32", 0.1, 100),
    "fmnist-mlp-2x50": Spec("fashion-mnist", "mlp-2x50", 0.1, 20),
    "fmnist-mlp-2x100": Spec("fashion-mnist", "mlp-2x100", 0.1, 20),
    "fmnist-mlp-4x100": Spec("fashion-mnist", "mlp-4x100", 0.1, 20),
}
NAMES: tuple[str, ...] = tuple(SPECS)
EPS_GRID = (0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.12, 0.15)
MILP_MODELS = ("digits-mlp-2x32", "fmnist-mlp-2x50")
BOUND_METHODS = ("ibp", "crown", "alpha-crown")


def run_dir(name: str, work: Path = WORK) -> Path:
    """Where model ``name`` is cached."""
    _spec(name)
    return Path(work) / name


def _spec(name: str) -> Spec:
    if name not in SPECS:
        raise KeyError(f"unknown bench model {name!r}; choose one of: {', '.join(NAMES)}")
    return SPECS[name]


def dataset(name: str, split: str = "test") -> Any:
    """The ``robustcert.data.Dataset`` (``digits`` or ``fashion-mnist``) split, x in [0, 1], NCHW."""
    from robustcert.data import load_dataset

    if name == "fashion-mnist":
        return load_dataset(name, split, FASHION)
    return load_dataset(name, split)


def test_examples(data: str, n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test examples of data set ``data`` (``digits`` or ``fashion-mnist``): x
    (float32, [n, 1, H, W], in [0, 1]) and labels (int64, [n])."""
    d = dataset(data, "test")
    return d.x[:n].clone(), d.y[:n].clone()


def is_trained(name: str, work: Path = WORK) -> bool:
    """True when the cached run of ``name`` has finished all its epochs."""
    meta = run_dir(name, work) / "model.json"
    if not meta.exists() or not (meta.parent / "model.pt").exists():
        return False
    return int(json.loads(meta.read_text()).get("epochs_done", 0)) >= _spec(name).epochs


def train(name: str, work: Path = WORK) -> None:
    """Train model ``name`` (or resume its interrupted run); a finished run is left alone. The wall
    seconds spent are added to ``bench_sdp.json`` in the run directory."""
    from robustcert.train import train_model
    from robustcert.train.factory import make_loss

    if is_trained(name, work):
        return
    spec = _spec(name)
    out = run_dir(name, work)
    loss, params = make_loss("pgd", eps=spec.eps_train, norm="linf", pgd_steps=PGD_STEPS)
    start = time.monotonic()
    train_model(
        arch=spec.arch,
        train_data=dataset(spec.dataset, "train"),
        test_data=dataset(spec.dataset, "test"),
        loss=loss,
        method="pgd",
        method_params=params,
        out_dir=out,
        epochs=spec.epochs,
        batch_size=BATCH_SIZE,
        lr=LR,
        seed=SEED,
        resume=(out / "train_state.pt").exists(),
        show_progress=False,
        command=f"python bench/sdp_models.py {name}",
    )
    side = out / "bench_sdp.json"
    before = json.loads(side.read_text()).get("train_seconds", 0.0) if side.exists() else 0.0
    side.write_text(json.dumps({"train_seconds": before + time.monotonic() - start}, indent=2) + "\n")


def load(name: str, work: Path = WORK) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model ``name`` (eval mode, float32, first layer ``Normalize``) and its info: ``name``,
    ``dataset``, ``arch``, ``input_shape`` (C, H, W), ``num_classes``, ``eps_train``, ``epochs``,
    ``clean_accuracy`` (full test split), ``train_seconds`` and ``path``. Raises FileNotFoundError when
    it is not trained yet (run ``python bench/sdp_models.py NAME``)."""
    from robustcert.models.checkpoint import load_model

    spec = _spec(name)
    out = run_dir(name, work)
    if not is_trained(name, work):
        raise FileNotFoundError(f"{out} holds no finished run; train it: python bench/sdp_models.py {name}")
    model, meta = load_model(out)
    side = out / "bench_sdp.json"
    info = {
        "name": name,
        "dataset": spec.dataset,
        "arch": spec.arch,
        "input_shape": tuple(meta["input_shape"]),
        "num_classes": int(meta["num_classes"]),
        "eps_train": spec.eps_train,
        "epochs": spec.epochs,
        "clean_accuracy": meta.get("clean_accuracy"),
        "train_seconds": json.loads(side.read_text()).get("train_seconds") if side.exists() else None,
        "path": str(out),
    }
    return model.eval(), info


def affine_layers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The MLP as float64 ``[(W_1, b_1), ..., (W_L, b_L)]`` on the flattened input in [0, 1]:
    ``f(x) = W_L relu(... relu(W_1 x + b_1) ...) + b_L``, the leading ``Normalize`` folded into
    ``(W_1, b_1)`` (exactly in real arithmetic; float64 rounding only)."""
    from robustcert.models.normalize import Normalize

    scale: float | None = None
    shift = 0.0
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    for m in model.modules():
        if isinstance(m, Normalize):
            if m.mean.numel() != 1:
                raise ValueError("affine_layers folds a one-channel Normalize only")
            scale, shift = 1.0 / float(m.std.double()), -float(m.mean.double()) / float(m.std.double())
        elif isinstance(m, nn.Linear):
            w, b = m.weight.detach().double().clone(), m.bias.detach().double().clone()
            if not layers and scale is not None:
                b = b + shift * w.sum(dim=1)
                w = w * scale
            layers.append((w, b))
        elif not isinstance(m, (nn.Sequential, nn.ReLU, nn.Flatten)) and m is not model:
            raise ValueError(
                f"affine_layers handles Normalize/Flatten/Linear/ReLU MLPs, not {type(m).__name__}"
            )
    return layers


# --------------------------------------------------------------------------------------------------------
# Baseline
# --------------------------------------------------------------------------------------------------------


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def baseline_model(name: str, n: int = 100, eps_grid: tuple[float, ...] = EPS_GRID) -> dict[str, Any]:
    """Per eps of the grid: clean / PGD-robust / verified counts (of ``n``) and bound seconds, plus the
    per-example masks needed to pick the MILP examples."""
    from robustcert.attacks.pgd import pgd_attack
    from robustcert.bounds import is_verified, margin_lower
    from robustcert.domain import InputDomain

    model, info = load(name)
    x, y = test_examples(info["dataset"], n)
    dom = InputDomain.unit()
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    rows = []
    for eps in eps_grid:
        row: dict[str, Any] = {"eps": eps, "n": len(y), "clean": int(correct.sum())}
        att, row["pgd_s"] = _timed(
            lambda e=eps: pgd_attack(model, x, y, e, norm="linf", steps=50, restarts=3, domain=dom)
        )
        robust = ~att.success & correct
        row["pgd"] = int(robust.sum())
        row["pgd_mask"] = robust
        for method in BOUND_METHODS:
            m, secs = _timed(
                lambda e=eps, me=method: margin_lower(model, x, y, eps=e, norm="linf", method=me, domain=dom)
            )
            ok = is_verified(m)
            row[method] = int(ok.sum())
            row[f"{method}_s"] = secs
            row[f"{method}_mask"] = ok
        rows.append(row)
        print(
            f"  {name} eps={eps}: clean {row['clean']} pgd {row['pgd']} ibp {row['ibp']} "
            f"crown {row['crown']} alpha {row['alpha-crown']}",
            file=sys.stderr,
            flush=True,
        )
    return {"name": name, "info": info, "rows": rows, "x": x, "y": y}


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid row where PGD leaves >= half of the examples robust and PGD-robust minus
    alpha-CROWN-verified is largest (ties: the smaller eps); the largest-gap row if none has half."""
    pool = [r for r in rows if 2 * r["pgd"] >= r["n"]] or rows
    return max(pool, key=lambda r: (r["pgd"] - r["alpha-crown"], -r["eps"]))


def milp_timings(
    name: str, result: dict[str, Any], eps: float, k: int = 5, time_limit: float = 60.0
) -> list[dict[str, Any]]:
    """``exact_margin`` on the first ``k`` examples PGD does not break but alpha-CROWN does not verify at
    ``eps`` (then, if too few, the next PGD-robust ones): index, status, min margin, seconds."""
    from robustcert.domain import InputDomain
    from robustcert.exact import exact_margin

    model, _ = load(name)
    row = next(r for r in result["rows"] if r["eps"] == eps)
    x, y = result["x"], result["y"]
    gap = row["pgd_mask"] & ~row["alpha-crown_mask"]
    order = [int(i) for i in torch.nonzero(gap).flatten()]
    order += [int(i) for i in torch.nonzero(row["pgd_mask"] & ~gap).flatten()]
    out = []
    for i in order[:k]:
        res = exact_margin(
            model, x[i : i + 1], int(y[i]), eps=eps, time_limit=time_limit, domain=InputDomain.unit()
        )
        out.append(
            {
                "index": i,
                "gap": bool(gap[i]),
                "status": res.status,
                "min_margin": res.min_margin,
                "lower_bound": res.lower_bound,
                "seconds": res.seconds,
            }
        )
        print(f"  {name} eps={eps} MILP #{i}: {res.status} {res.seconds:.1f}s", file=sys.stderr, flush=True)
    return out


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:.0f}%"


def baseline(
    names: tuple[str, ...] = NAMES,
    n: int = 100,
    milp_n: int = 5,
    time_limit: float = 60.0,
    eps_grid: tuple[float, ...] = EPS_GRID,
) -> str:
    """The markdown report of the baseline (see the module docstring)."""
    lines = [
        f"Baseline on the first {n} test examples (L-inf, domain [0, 1]; verified = margin_lower > 0 for "
        "every class, float32 model; PGD: 50 steps x 3 restarts).",
        "",
        "| model | eps | clean | PGD robust | IBP | CROWN | alpha-CROWN | IBP s | CROWN s | alpha-CROWN s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    picks, milp = [], []
    for name in names:
        res = baseline_model(name, n, eps_grid)
        for r in res["rows"]:
            m = r["n"]
            lines.append(
                f"| {name} | {r['eps']:g} | {_pct(r['clean'], m)} | {_pct(r['pgd'], m)} | "
                f"{_pct(r['ibp'], m)} | {_pct(r['crown'], m)} | {_pct(r['alpha-crown'], m)} | "
                f"{r['ibp_s']:.2f} | {r['crown_s']:.2f} | {r['alpha-crown_s']:.2f} |"
            )
        best = recommend(res["rows"])
        info = res["info"]
        picks.append(
            f"| {name} | {info['clean_accuracy']:.4f} | {info['train_seconds'] or float('nan'):.0f} | "
            f"{best['eps']:g} | {_pct(best['pgd'], best['n'])} | {_pct(best['alpha-crown'], best['n'])} |"
        )
        if name in MILP_MODELS and milp_n > 0:
            for t in milp_timings(name, res, best["eps"], milp_n, time_limit):
                mm = "-" if t["min_margin"] is None else f"{t['min_margin']:.4g}"
                milp.append(
                    f"| {name} | {best['eps']:g} | {t['index']} | {'yes' if t['gap'] else 'no'} | "
                    f"{t['status']} | {mm} | {t['lower_bound']:.4g} | {t['seconds']:.1f} |"
                )
    lines += [
        "",
        "Recommended eps (PGD robust >= 50%, largest PGD-robust minus alpha-CROWN-verified):",
        "",
        "| model | clean acc (full test) | train s | eps | PGD robust | alpha-CROWN |",
        "|---|---|---|---|---|---|",
        *picks,
    ]
    if milp:
        lines += [
            "",
            f"Exact MILP (exact_margin, HiGHS, time_limit {time_limit:g} s) at the recommended eps; "
            "gap = PGD-robust but not alpha-CROWN-verified:",
            "",
            "| model | eps | example | gap | status | min margin | lower bound | seconds |",
            "|---|---|---|---|---|---|---|---|",
            *milp,
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"models (default: all): {', '.join(NAMES)}")
    parser.add_argument("--baseline", action="store_true", help="print the baseline table (trains nothing)")
    parser.add_argument("-n", type=int, default=100, help="test examples for the baseline")
    parser.add_argument("--milp-n", type=int, default=5, help="MILP examples per MILP model (0: skip)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="MILP seconds per example")
    parser.add_argument(
        "--eps", default=",".join(f"{e:g}" for e in EPS_GRID), help="baseline eps grid, comma-separated"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = tuple(args.names) or NAMES
    for name in names:
        _spec(name)
    if args.baseline:
        grid = tuple(float(e) for e in args.eps.split(","))
        print(baseline(names, args.n, args.milp_n, args.time_limit, grid))
        return 0
    for name in names:
        if is_trained(name):
            print(f"{name}: cached in {run_dir(name)}")
            continue
        print(f"{name}: training -> {run_dir(name)}", flush=True)
        train(name)
        _, info = load(name)
        print(
            f"{name}: clean accuracy {info['clean_accuracy']:.4f}, {info['train_seconds']:.0f} s", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
