"""``robustcert verify`` on small VNN-LIB instances made from digits, cross-checked against the exact MILP.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/verify_digits.py --out /tmp/verify_digits   # ~16 min (the MILP dominates)

Trains an MLP 64-100-100-10 on scikit-learn's digits (standard training, 30 epochs, seed 0), exports it
to ONNX, and writes one VNN-LIB robustness spec per (test image, eps): the box ``[x - eps, x + eps] ∩
[0, 1]`` and the MNIST-style disjunction ``(or (and (>= Y_j Y_label)) ...)``, for the first ``--limit``
correctly classified test images, plus ``instances.csv`` (so ``robustcert verify --instances`` runs the
same instances). Each instance is verified in process (``robustcert.verify.pipeline.verify_files``,
``--timeout`` seconds) and solved by the MILP (``robustcert.exact.exact_margin``, same box, the same
time limit); a wrong answer is ``unsat`` where the MILP found a counterexample or ``sat`` where it proved
robustness. Prints a markdown table per eps: answers by stage, MILP statuses, wrong answers, median and
max seconds. Instances CROWN and α-CROWN cannot prove and the attacks cannot break go to branch and
bound (stage ``bab``).
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn


def train(seed: int = 0) -> nn.Module:
    from robustcert.data import load_dataset

    data = load_dataset("digits", "train")
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = data.x, data.y
    for _ in range(30):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def write_spec(path: Path, x: torch.Tensor, eps: float, label: int, k: int) -> None:
    flat = x.reshape(-1).double()
    lines = [f"(declare-const X_{i} Real)" for i in range(flat.numel())]
    lines += [f"(declare-const Y_{j} Real)" for j in range(k)]
    for i, v in enumerate(flat.tolist()):
        lines += [f"(assert (<= X_{i} {min(1.0, v + eps)!r}))", f"(assert (>= X_{i} {max(0.0, v - eps)!r}))"]
    lines.append(
        "(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(k) if j != label) + "))"
    )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/verify_digits"))
    ap.add_argument("--eps", default="0.01,0.02,0.04,0.08")
    ap.add_argument("--limit", type=int, default=25)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    from robustcert.data import load_dataset
    from robustcert.exact import exact_margin
    from robustcert.verify import pipeline
    from robustcert.vnnlib import read_vnnlib

    args.out.mkdir(parents=True, exist_ok=True)
    net = train()
    onnx = args.out / "digits_mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(onnx), dynamo=False)
    test = load_dataset("digits", "test")
    with torch.no_grad():
        pred = net(test.x).argmax(1)
    chosen = [i for i in range(len(test.x)) if int(pred[i]) == int(test.y[i])][: args.limit]
    eps_list = [float(e) for e in args.eps.split(",")]
    rows = []
    csv_lines = []
    for eps in eps_list:
        for i in chosen:
            spec = args.out / f"img{i}_eps{eps}.vnnlib"
            write_spec(spec, test.x[i], eps, int(test.y[i]), 10)
            csv_lines.append(f"{onnx.name},{spec.name},{args.timeout:g}")
            verdict = pipeline.verify_files(onnx, spec, args.timeout)
            box = read_vnnlib(spec).cases[0].box
            lo, hi = box.lo.reshape(1, 1, 8, 8).float(), box.hi.reshape(1, 1, 8, 8).float()
            milp = exact_margin(net, None, int(test.y[i]), box=(lo, hi), time_limit=args.timeout)
            wrong = (verdict.answer == "unsat" and milp.status == "counterexample") or (
                verdict.answer == "sat" and milp.status == "robust"
            )
            rows.append(
                (eps, verdict.answer, verdict.stage, verdict.seconds, milp.status, milp.seconds, wrong)
            )
    (args.out / "instances.csv").write_text("\n".join(csv_lines) + "\n")
    print(f"{len(chosen)} images per eps, timeout {args.timeout:g} s, net 64-100-100-10 (digits, standard)\n")
    print(
        "| eps | unsat (CROWN / α-CROWN / BaB) | sat (quick / long attack / BaB) | unknown | timeout "
        "| MILP robust / cex / unknown | wrong | median s | max s | MILP median s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for eps in eps_list:
        sub = [r for r in rows if r[0] == eps]
        st = Counter((r[1], r[2]) for r in sub)
        ms = Counter(r[4] for r in sub)
        secs = [r[3] for r in sub]
        print(
            f"| {eps:g} | {st['unsat', 'crown']} / {st['unsat', 'alpha-crown']} / {st['unsat', 'bab']} | "
            f"{st['sat', 'falsify']} / {st['sat', 'falsify-long']} / {st['sat', 'bab']} | {st['unknown', '']} | "
            f"{st['timeout', '']} | "
            f"{ms['robust']} / {ms['counterexample']} / {ms['unknown']} | {sum(r[6] for r in sub)} | "
            f"{statistics.median(secs):.2f} | {max(secs):.2f} | {statistics.median(r[5] for r in sub):.2f} |"
        )


if __name__ == "__main__":
    main()
