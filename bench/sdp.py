"""The SDP certifier against IBP, CROWN, alpha-CROWN and the exact MILP on PGD-trained MLPs (issue 10).

Models (bench/sdp_models.py, trained once and cached): digits ``mlp-2x32`` (64 inputs) and Fashion-MNIST
``mlp-2x50``, ``mlp-2x100``, ``mlp-4x100`` (784 inputs), all PGD-trained (L-inf, eps_train 0.1). For
each, at the L-inf eps of ``EPS`` (where alpha-CROWN leaves many or most PGD-robust examples unknown),
on the first ``--n`` test examples:

* clean and PGD-robust counts (PGD: 50 steps, 3 restarts — the upper limit of any certificate);
* verified by IBP, CROWN and alpha-CROWN (one batched call each) and their seconds per example;
* verified by the SDP with each solver (``first-order`` everywhere; ``clarabel`` and ``scs`` on the
  64-input net, where a dense conic solver is practical) with ``--time-limit`` seconds per example, all
  classes; it is run on the examples PGD does not break (it cannot certify the others: a certificate
  there would be a soundness bug, which tests/test_sdp_soundness.py looks for);
* the exact MILP (``MILP_SECONDS`` per example) on the 64-input net and mlp-2x50 (first eps only: at
  larger eps it decides nothing on mlp-2x50 within 60 s), and the cross-check: no SDP
  certificate on an example the MILP refutes, and every SDP bound <= the MILP's minimum margin;
* "SDP only": examples the SDP certifies and neither CROWN nor alpha-CROWN does;
* ablations on fmnist-mlp-2x50 at its largest eps (``--ablate``): time limit 15 s vs 60 s, alpha-CROWN
  intervals, the linear constraints dropped.

Every per-example result is cached in the model's directory (``sdp_bench-*.json``), so an interrupted run
resumes where it stopped. Writes bench/results/sdp.md and bench/results/sdp.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sdp.py            # all models (~1 h on one core)
    OMP_NUM_THREADS=1 .venv/bin/python bench/sdp.py --models digits-mlp-2x32 --n 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sdp_models  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# eps per model: where PGD leaves most examples robust and alpha-CROWN verifies few (bench/sdp_models.py
# --baseline measured the grid); the MILP runs at the first, the ablations at the last
EPS = {
    "digits-mlp-2x32": (0.12,),
    "fmnist-mlp-2x50": (0.1, 0.15),
    "fmnist-mlp-2x100": (0.1,),
    "fmnist-mlp-4x100": (0.08,),
}
CONIC_MODELS = ("digits-mlp-2x32",)
MILP_MODELS = ("digits-mlp-2x32", "fmnist-mlp-2x50")
MILP_SECONDS = 60.0


def _cache(name: str, key: str) -> Path:
    return sdp_models.run_dir(name) / f"sdp_bench-{key}.json"


def _cached_rows(name: str, key: str, indices: list[int], compute: Any) -> dict[int, dict[str, Any]]:
    """Per-example results of ``compute(i)`` for ``indices``, cached (and resumed) in ``key``'s file."""
    path = _cache(name, key)
    done: dict[int, dict[str, Any]] = {}
    if path.exists():
        done = {int(k): v for k, v in json.loads(path.read_text()).items()}
    for i in indices:
        if i in done:
            continue
        done[i] = compute(i)
        path.write_text(json.dumps({str(k): v for k, v in sorted(done.items())}, indent=1) + "\n")
    return {i: done[i] for i in indices}


def _sdp_row(
    model: Any, graph: Any, net: Any, x: torch.Tensor, y: int, eps: float, **kw: Any
) -> dict[str, Any]:
    from robustcert.domain import InputDomain
    from robustcert.sdp import sdp_margin

    start = time.monotonic()
    res = sdp_margin(model, x, y, eps, domain=InputDomain.unit(), graph=graph, net=net, **kw)
    return {
        "margin_lower": res.margin_lower,
        "sdp_lower": res.sdp_lower,
        "certified": bool(res.margin_lower > 0),
        "seconds": time.monotonic() - start,
        "iterations": res.iterations,
        "size": res.size,
        "unstable": res.counts.get("unstable", 0),
        "gap": res.gap,
    }


def bench_model(name: str, n: int, time_limit: float, eps: float | None = None) -> dict[str, Any]:
    from robustcert.attacks.pgd import pgd_attack
    from robustcert.bounds import is_verified, margin_lower
    from robustcert.domain import InputDomain
    from robustcert.exact import exact_margin
    from robustcert.graph import to_graph
    from robustcert.sdp.encode import dense_network

    warnings.simplefilter("ignore")  # cvxpy's "solution may be inaccurate": the bound is recomputed anyway
    model, info = sdp_models.load(name)
    eps = EPS[name][0] if eps is None else eps
    x, y = sdp_models.test_examples(info["dataset"], n)
    dom = InputDomain.unit()
    graph = to_graph(model, tuple(x.shape[1:]))
    net = dense_network(graph)
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).tolist()
    torch.manual_seed(0)
    att = pgd_attack(model, x, y, eps, norm="linf", steps=50, restarts=3, domain=dom)
    robust = [bool(c and not s) for c, s in zip(correct, att.success.tolist(), strict=True)]
    out: dict[str, Any] = {"name": name, "eps": eps, "n": n, "clean": sum(correct), "pgd": sum(robust)}
    out["info"] = {k: v for k, v in info.items() if k != "path"}
    verified: dict[str, list[bool]] = {}
    seconds: dict[str, float] = {}
    for method in ("ibp", "crown", "alpha-crown"):
        start = time.monotonic()
        m = margin_lower(model, x, y, eps=eps, norm="linf", method=method, domain=dom)
        seconds[method] = (time.monotonic() - start) / n
        verified[method] = [bool(v and c) for v, c in zip(is_verified(m).tolist(), correct, strict=True)]
    todo = [i for i in range(n) if robust[i]]
    solvers = ["first-order"] + (["clarabel", "scs"] if name in CONIC_MODELS else [])
    sdp: dict[str, dict[int, dict[str, Any]]] = {}
    for solver in solvers:
        key = f"{solver}-eps{eps}-t{time_limit:g}"
        sdp[solver] = _cached_rows(
            name,
            key,
            todo,
            lambda i, s=solver: _sdp_row(
                model, graph, net, x[i : i + 1], int(y[i]), eps, solver=s, time_limit=time_limit
            ),
        )
        verified[f"sdp-{solver}"] = [bool(i in sdp[solver] and sdp[solver][i]["certified"]) for i in range(n)]
        secs = [r["seconds"] for r in sdp[solver].values()]
        seconds[f"sdp-{solver}"] = statistics.median(secs) if secs else 0.0
        out[f"sdp-{solver}-max-seconds"] = max(secs) if secs else 0.0
    if name in MILP_MODELS and eps == EPS[name][0]:

        def milp(i: int) -> dict[str, Any]:
            res = exact_margin(model, x[i : i + 1], int(y[i]), eps=eps, time_limit=MILP_SECONDS, domain=dom)
            return {
                "status": res.status,
                "min_margin": res.min_margin,
                "lower_bound": res.lower_bound,
                "seconds": res.seconds,
            }

        exact = _cached_rows(name, f"milp-eps{eps}-t{MILP_SECONDS:g}", todo, milp)
        verified["milp"] = [bool(i in exact and exact[i]["status"] == "robust") for i in range(n)]
        seconds["milp"] = statistics.median([r["seconds"] for r in exact.values()]) if exact else 0.0
        out["milp_unknown"] = sum(r["status"] == "unknown" for r in exact.values())
        wrong, above = 0, 0
        for solver in solvers:
            for i, r in sdp[solver].items():
                e = exact.get(i)
                if e is None:
                    continue
                wrong += int(r["certified"] and e["status"] == "counterexample")
                if e["status"] != "unknown" and e["min_margin"] is not None:
                    above += int(r["margin_lower"] > e["min_margin"] + 1e-9 * (1 + abs(e["min_margin"])))
        out["sdp_wrong_vs_milp"] = wrong
        out["sdp_above_milp"] = above
    out["verified"] = {k: sum(v) for k, v in verified.items()}
    out["seconds_per_example"] = seconds
    out["sdp_only"] = {
        s: sum(
            verified[f"sdp-{s}"][i] and not verified["crown"][i] and not verified["alpha-crown"][i]
            for i in range(n)
        )
        for s in solvers
    }
    out["unstable_median"] = statistics.median([r["unstable"] for r in sdp["first-order"].values()] or [0])
    return out


def ablate(name: str, n: int) -> list[dict[str, Any]]:
    """What each part is worth on one 784-input net at its largest eps (where alpha-CROWN verifies
    least): the time limit, the intervals' method, the linear (triangle / interval) constraints."""
    from robustcert.graph import to_graph
    from robustcert.sdp.encode import dense_network

    model, info = sdp_models.load(name)
    eps = EPS[name][-1]
    x, y = sdp_models.test_examples(info["dataset"], n)
    graph = to_graph(model, tuple(x.shape[1:]))
    net = dense_network(graph)
    base = json.loads(_cache(name, f"first-order-eps{eps}-t60").read_text())
    todo = [int(i) for i in base]
    rows = []
    for label, kw in (
        ("first-order, 15 s", {"time_limit": 15.0}),
        ("first-order, 60 s, alpha-CROWN intervals", {"time_limit": 60.0, "bounds_method": "alpha-crown"}),
    ):
        key = f"ablate-eps{eps}-" + label.replace(" ", "").replace(",", "-")
        res = _cached_rows(
            name,
            key,
            todo,
            lambda i, k=kw: _sdp_row(
                model, graph, net, x[i : i + 1], int(y[i]), eps, solver="first-order", **k
            ),
        )
        rows.append(
            {
                "setting": label,
                "verified": sum(r["certified"] for r in res.values()),
                "median_seconds": statistics.median([r["seconds"] for r in res.values()] or [0.0]),
            }
        )

    def without_linear(i: int) -> dict[str, Any]:
        """The SDP-cert constraints alone: the linear (triangle and interval) rows dropped."""
        import numpy as np

        from robustcert.domain import InputDomain
        from robustcert.sdp.certify import build_program, solve_classes

        start = time.monotonic()
        prog, baseline = build_program(
            graph,
            net,
            x[i : i + 1],
            int(y[i]),
            eps,
            norm="linf",
            domain=InputDomain.unit(),
            float_model="float32",
        )
        prog.G, prog.h = np.zeros((0, prog.size)), np.zeros(0)
        classes = solve_classes(prog, int(y[i]), baseline, solver="first-order", time_limit=60.0)
        worst = min(c.lower for c in classes)
        return {"certified": bool(worst > 0), "seconds": time.monotonic() - start}

    res = _cached_rows(name, f"ablate-eps{eps}-no-linear", todo, without_linear)
    rows.append(
        {
            "setting": "first-order, 60 s, without the triangle / interval constraints",
            "verified": sum(r["certified"] for r in res.values()),
            "median_seconds": statistics.median([r["seconds"] for r in res.values()] or [0.0]),
        }
    )
    rows.insert(
        0,
        {
            "setting": "first-order, 60 s (default)",
            "verified": sum(r["certified"] for r in base.values()),
            "median_seconds": statistics.median([r["seconds"] for r in base.values()] or [0.0]),
        },
    )
    return rows


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | eps | n | clean | PGD-robust | IBP | CROWN | α-CROWN | SDP first-order | SDP Clarabel | SDP SCS "
        "| MILP | SDP only | s/example: α-CROWN / SDP-FO (median, max) / MILP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v, s = r["verified"], r["seconds_per_example"]

        def cell(key: str, v: dict[str, int] = v) -> str:
            return str(v[key]) if key in v else "–"

        milp_s = f"{s['milp']:.1f}" if "milp" in s else "–"
        milp = cell("milp") + (f" ({r['milp_unknown']} unknown)" if "milp_unknown" in r else "")
        only = r["sdp_only"].get("first-order", 0)
        lines.append(
            f"| {r['name']} | {r['eps']} | {r['n']} | {r['clean']} | {r['pgd']} | {v['ibp']} | {v['crown']} "
            f"| {v['alpha-crown']} | {cell('sdp-first-order')} | {cell('sdp-clarabel')} | {cell('sdp-scs')} "
            f"| {milp} | {only} | {s['alpha-crown']:.3f} / {s['sdp-first-order']:.1f}, "
            f"{r['sdp-first-order-max-seconds']:.1f} / {milp_s} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(sdp_models.NAMES))
    ap.add_argument("--n", type=int, default=30, help="first N test examples per model")
    ap.add_argument("--time-limit", type=float, default=60.0, help="SDP seconds per example, all classes")
    ap.add_argument("--ablate", action="store_true", help="also the ablations on fmnist-mlp-2x50")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for name in args.models.split(","):
        sdp_models.train(name)
        print(f"{name} ...", file=sys.stderr, flush=True)
        for eps in EPS[name]:
            results.append(bench_model(name, args.n, args.time_limit, eps))
            print(_table(results[-1:]), file=sys.stderr, flush=True)
    text = [
        "# SDP certifier bench (issue 10)",
        "",
        "`OMP_NUM_THREADS=1 .venv/bin/python bench/sdp.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
        _table(results),
        "",
    ]
    payload: dict[str, Any] = {"results": results}
    if args.ablate:
        abl = ablate("fmnist-mlp-2x50", args.n)
        payload["ablation"] = abl
        text += [
            f"## Ablation (fmnist-mlp-2x50, eps {EPS['fmnist-mlp-2x50'][-1]})",
            "",
            "| setting | verified | median s |",
            "|---|---|---|",
        ]
        text += [f"| {a['setting']} | {a['verified']} | {a['median_seconds']:.1f} |" for a in abl]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sdp.md").write_text("\n".join(text) + "\n")
    (RESULTS / "sdp.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
