"""Complete verification by branch and bound on trained 6x256 Fashion-MNIST MLPs, against alpha-CROWN
alone and the exact MILP.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/verify_bab.py                       # both nets, ~30-60 min
    OMP_NUM_THREADS=1 .venv/bin/python bench/verify_bab.py --models standard --n 6 --timeout 60

Models: ``mlp-6x256`` trained normally (10 epochs) and with PGD (L-inf 0.05, 5 epochs) by
``bench/deep_models.py`` (cached under $TMPDIR/robustcert-bench-deep; trained on first use). Instances:
the first ``--n`` correctly classified test images, L-inf ball of radius ``--eps-standard`` /
``--eps-pgd`` intersected with [0, 1], robustness margins of the true class. Per instance:

* alpha-CROWN alone (``margin_lower(method="alpha-crown")``, 20 steps): verified or not;
* ``branch_and_bound`` (``robustcert.exact.bab``, ``--timeout`` seconds, batches of 64 domains,
  beta-CROWN): verified / falsified / timeout / unknown, seconds, domains bounded;
* the exact MILP (``exact_margin(decision_only=True)``, ``--milp-time`` seconds) where it finishes:
  every decided answer is cross-checked against it.

Reported per model: the counts, the ratio of instances decided by branch and bound to those alpha-CROWN
verifies, median and max seconds, and the sub-domain throughput (domains bounded per second, over the
instances that branched). ``--random`` also runs random branching on the instances that needed
branching (the heuristic's comparison). Writes bench/results/verify_bab.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deep_models  # noqa: E402

from robustcert.bounds import margin_lower  # noqa: E402
from robustcert.exact.bab import branch_and_bound  # noqa: E402
from robustcert.exact.milp import exact_margin  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "verify_bab.md"


def spec(y: int, k: int = 10) -> torch.Tensor:
    eye = torch.eye(k, dtype=torch.float64)
    C = eye[y].unsqueeze(0) - eye
    return C[[j for j in range(k) if j != y]]


def run_model(label: str, model, test, eps: float, a: argparse.Namespace) -> tuple[list[str], list[str]]:
    xs, ys = test.x, test.y
    rows, lines = [], []
    with torch.no_grad():
        pred = model(xs[: 10 * a.n].float()).argmax(1)
    picked = [i for i in range(len(pred)) if int(pred[i]) == int(ys[i])][: a.n]
    stats: dict[str, list] = {"alpha": [], "bab": [], "milp": [], "random": []}
    for i in picked:
        x, y = xs[i : i + 1].double(), int(ys[i])
        t0 = time.perf_counter()
        m = margin_lower(model, x, torch.tensor([y]), eps=eps, method="alpha-crown")
        t_alpha = time.perf_counter() - t0
        alpha_ok = bool((m > 0).all())
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        r = branch_and_bound(model, lo, hi, spec(y), timeout=a.timeout, batch=64)
        milp = "-"
        if a.milp_time > 0:
            e = exact_margin(model, x.float(), y, eps=eps, time_limit=a.milp_time, decision_only=True)
            milp = {"robust": "verified", "counterexample": "falsified"}.get(e.status, "unknown")
        agree = (
            milp == "-" or milp == "unknown" or r.status not in ("verified", "falsified") or milp == r.status
        )
        rnd = ""
        if a.random and r.stage == "bab":
            rr = branch_and_bound(model, lo, hi, spec(y), timeout=a.timeout, batch=64, branching="random")
            rnd = f"{rr.status} {rr.seconds:.1f} s / {rr.domains:,}"
            stats["random"].append(rr)
        stats["alpha"].append(alpha_ok)
        stats["bab"].append(r)
        stats["milp"].append((milp, agree))
        line = (
            f"| {label} | {i} | {eps} | {'verified' if alpha_ok else 'unknown'} ({t_alpha:.1f} s) | {r.status} "
            f"({r.stage or '-'}) | {r.seconds:.1f} | {r.domains:,} | {r.depth} | {r.bound:+.2e} | {milp} | "
            f"{'yes' if agree else '**NO**'} | {rnd} |"
        )
        lines.append(line)
        print(line, flush=True)
    babs = stats["bab"]
    decided = sum(r.status in ("verified", "falsified") for r in babs)
    n_alpha = sum(stats["alpha"])
    branched = [r for r in babs if r.stage == "bab" or r.status == "timeout"]
    dps = (
        sum(r.domains for r in branched) / max(1e-9, sum(r.seconds for r in branched))
        if branched
        else float("nan")
    )
    secs = [r.seconds for r in babs]
    wrong = sum(not ok for _, ok in stats["milp"])
    milp_done = sum(v in ("verified", "falsified") for v, _ in stats["milp"])
    rows.append(
        f"| {label} | {eps} | {len(babs)} | {n_alpha} | "
        f"{sum(r.status == 'verified' for r in babs)} | {sum(r.status == 'falsified' for r in babs)} | "
        f"{sum(r.status == 'timeout' for r in babs)} | {sum(r.status == 'unknown' for r in babs)} | "
        f"{decided / max(1, n_alpha):.1f}x | {statistics.median(secs):.1f} / {max(secs):.1f} | {dps:,.0f} | "
        f"{milp_done} | {wrong} |"
    )
    if stats["random"]:
        rs = stats["random"]
        rows.append(
            f"| {label}, random branching (the {len(rs)} that branched) | {eps} | {len(rs)} | | "
            f"{sum(r.status == 'verified' for r in rs)} | {sum(r.status == 'falsified' for r in rs)} | "
            f"{sum(r.status == 'timeout' for r in rs)} | {sum(r.status == 'unknown' for r in rs)} | | "
            f"{statistics.median(r.seconds for r in rs):.1f} / {max(r.seconds for r in rs):.1f} | | | |"
        )
    return rows, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--models", default="standard,pgd")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--eps-standard", type=float, default=0.025)
    ap.add_argument("--eps-pgd", type=float, default=0.06)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--milp-time", type=float, default=60.0)
    ap.add_argument("--random", action="store_true")
    ap.add_argument("--work", default=str(deep_models.DEFAULT_WORK))
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    which = [("mlp-6x256", m) for m in a.models.split(",")]
    _, _, test = deep_models.data()
    summary, detail = [], []
    t_start = time.perf_counter()
    for arch, method, model, acc in deep_models.models(Path(a.work), 10, 5, 0.05, 5, which):
        eps = a.eps_standard if method == "standard" else a.eps_pgd
        rows, lines = run_model(f"{arch} {method} (clean {acc:.3f})", model, test, eps, a)
        summary += rows
        detail += lines
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python bench/verify_bab.py " + " ".join(argv or sys.argv[1:])
    text = "\n".join(
        [
            "# Branch and bound on trained 6x256 MLPs (issue 11)",
            "",
            f"Command: `{cmd.strip()}` (torch {torch.__version__}, 1 thread, 2 cores shared with other jobs); "
            f"wall time {time.perf_counter() - t_start:.0f} s. Set-up in the module docstring.",
            "",
            "| model | eps | instances | alpha-CROWN verified | BaB verified | BaB falsified | timeout | unknown | "
            "decided ÷ alpha-CROWN | seconds median / max | domains/s | MILP finished | disagreements |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *summary,
            "",
            "| model | test index | eps | alpha-CROWN | BaB (stage) | seconds | domains | depth | final bound | MILP | "
            "agrees | random branching (status, s / domains) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *detail,
            "",
        ]
    )
    Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
