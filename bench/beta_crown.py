"""What beta-CROWN's split multipliers buy branch and bound: the worst sub-domain bound against the root.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/beta_crown.py          # a few minutes
    OMP_NUM_THREADS=1 .venv/bin/python bench/beta_crown.py --quick  # D = 16 on the mlp only

Same models, input, eps and split choice as ``bench/bab_throughput.py`` (the issue-14 models, untrained,
``torch.manual_seed(0)``; one input; margins of the model's own prediction; ``float_model="float32"``):
the D sub-domains are all sign patterns of the k = log2 D unstable neurons with the largest chord
intercept. Per method, one ``bound_subdomains`` call on all D domains (refine=True): ``crown``, then
``alpha-crown`` and ``beta-crown`` with 20 steps at lr 0.1 (the same optimiser; beta-CROWN adds one
Lagrange multiplier per (row, split constraint)). Reported: the worst margin over the D domains minus
the root's CROWN worst margin (how much splitting into D leaves gained, positive = the leaves prove
more than the root; without ``floor``), the mean gain over plain CROWN on the leaves, and domains per
second. Writes bench/results/beta_crown.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bab_throughput import models  # noqa: E402  (the same three models)

from robustcert.bounds import margin_spec  # noqa: E402
from robustcert.bounds.subdomains import bound_subdomains, root_bounds, sign_patterns, top_unstable  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "beta_crown.md"
METHODS = (("crown", 0), ("alpha-crown", 20), ("beta-crown", 20))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="D = 16 on the mlp only")
    ap.add_argument("--sizes", default="16,64")
    ap.add_argument("--eps", default="0.01")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    sizes = [16] if a.quick else [int(v) for v in a.sizes.split(",")]
    epss = [float(v) for v in a.eps.split(",")]
    torch.manual_seed(1)
    x = torch.rand(1, 1, 28, 28)
    lines = [
        "| model | eps | D | method | worst leaf − root worst | mean gain over CROWN on the leaves | domains/s |",
        "|---|---|---|---|---|---|---|",
    ]
    chosen = {"mlp": models()["mlp"]} if a.quick else models()
    for mname, model in chosen.items():
        with torch.no_grad():
            y = model(x).argmax(1)
        for eps in epss:
            root = root_bounds(model, x, eps)
            C = margin_spec(y, 10, root.dtype)
            C = C[:, C[0].abs().sum(-1) > 0]
            root_worst = float(bound_subdomains(root, C, {})[0].min())
            for D in sizes:
                picks = top_unstable(root, D.bit_length() - 1)
                if 2 ** len(picks) != D:
                    continue
                splits = sign_patterns(root, picks)
                plain = None
                for method, steps in METHODS:
                    t0 = time.perf_counter()
                    lb = bound_subdomains(root, C, splits, method=method, alpha_steps=steps, alpha_lr=0.1)
                    dt = time.perf_counter() - t0
                    plain = lb if plain is None else plain
                    fin = torch.isfinite(lb) & torch.isfinite(plain)
                    worst = float(lb.min())
                    gain = float((lb - plain)[fin].mean()) if bool(fin.any()) else float("nan")
                    lines.append(
                        f"| {mname} | {eps} | {D} | {method} | {worst - root_worst:+.4f} | {gain:+.4f} | {D / dt:,.0f} |"
                    )
                    print(lines[-1], flush=True)
    text = "\n".join(
        [
            "# beta-CROWN on branch-and-bound leaves",
            "",
            f"Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/beta_crown.py{' --quick' if a.quick else ''}` "
            f"(torch {torch.__version__}, 1 thread). Set-up in the module docstring.",
            "",
            *lines,
            "",
        ]
    )
    Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
