"""What CROWN's float32 intermediate passes cost in verified examples, against float64 passes.

    .venv/bin/python bench/bounds_precision.py [--limit 300] [--resnet-limit 200]

On the trained deep models of ``bench/deep_models.py`` (cached by ``bench/bounds.py --deep``; trained if
missing) at the eps ``bench/results/bounds_deep.md`` picked for CROWN, counts the examples CROWN
verifies (float32 model correct, every margin bound > 0; ``float_model="float32"``) with
``precision="float64"`` and ``"float32"`` (the default), the median relative lowering of the worst
margin bound on the examples float64 verifies, and the seconds of each (one call over all examples,
batch 50, one thread). Writes ``bench/results/bounds_precision.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import deep_models as dm  # noqa: E402

# eps picked for CROWN in bench/results/bounds_deep.md (40% verified without any margin)
EPS = {
    ("mlp-6x256", "standard"): 0.018,
    ("mlp-6x256", "pgd"): 0.042,
    ("mlp-9x200", "standard"): 0.018,
    ("mlp-9x200", "pgd"): 0.042,
    (dm.RESNET, "standard"): 0.0075,
}


def _worst(graph, xs, ys, eps: float, precision: str, batch: int = 50) -> tuple[torch.Tensor, float]:
    from robustcert.bounds import margin_lower

    out, t0 = [], time.perf_counter()
    for i in range(0, len(ys), batch):
        m = margin_lower(graph, xs[i : i + batch], ys[i : i + batch], eps=eps, method="crown", precision=precision)
        out.append(m.min(1).values)
    return torch.cat(out), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--resnet-limit", type=int, default=200)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "bounds_precision.md"))
    a = p.parse_args()
    torch.set_num_threads(1)
    from robustcert.graph import to_graph

    name, _, test = dm.data()
    lines = [
        "# CROWN's intermediate passes in float32 vs float64: verified examples",
        "",
        f"Command: `.venv/bin/python bench/bounds_precision.py --limit {a.limit} --resnet-limit {a.resnet_limit}`"
        f" ({name} test split, one thread, torch {torch.__version__}).",
        "",
        "| model | eps | examples (correct) | verified, float64 passes | verified, float32 passes | ratio | "
        "median loss of the worst bound | s float64 | s float32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, method, model, _ in dm.models(Path(dm.DEFAULT_WORK), 10, 5, 0.05, 5, list(EPS)):
        n = a.resnet_limit if arch == dm.RESNET else a.limit
        xs, ys = test.x[:n], test.y[:n]
        with torch.no_grad():
            correct = model(xs).argmax(1) == ys
        graph = to_graph(model, tuple(xs.shape[1:]))
        eps = EPS[(arch, method)]
        w64, t64 = _worst(graph, xs, ys, eps, "float64")
        w32, t32 = _worst(graph, xs, ys, eps, "float32")
        v64, v32 = correct & (w64 > 0), correct & (w32 > 0)
        loss = [float((w64[i] - w32[i]) / w64[i]) for i in range(n) if bool(v64[i])]
        med = statistics.median(loss) if loss else float("nan")
        ratio = int(v32.sum()) / max(1, int(v64.sum()))
        lines.append(
            f"| {arch} {method} | {eps} | {n} ({int(correct.sum())}) | {int(v64.sum())} | {int(v32.sum())} | "
            f"{ratio:.2%} | {med:.1e} | {t64:.1f} | {t32:.1f} |"
        )
        print(lines[-1], flush=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
