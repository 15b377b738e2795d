"""Complete verification (``robustcert verify``) on VNN-LIB instances from trained Fashion-MNIST nets and a
small control net, cross-checked against exact MILPs (issue 11).

Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/verify.py                                  # full: est. 1.5-3.5 h
    OMP_NUM_THREADS=1 .venv/bin/python bench/verify.py --n 2 --timeout 20 --milp-time 20  # 7 min

Nets (``--nets``, comma-separated names; default all, in this order):

* ``control``: a 5-32-32-5 ReLU MLP (no normalisation) on inputs ``x`` in [0, 1]^5, fitted (MSE, Adam,
  3000 steps of 256 uniform samples, seed 0) to the synthetic "advisory cost" target of
  :func:`control_target`: ``y_k(x) = |x - c_k|^2 + 0.2 sin(2 pi <w_k, x>)`` for 5 fixed centres
  ``c_k`` and directions ``w_k`` (seed 1), smooth, with the advised action ``argmin_k y_k``.
  Its properties are NOT classification robustness (:func:`control_instances`), cycling through three
  kinds over random sub-boxes of [0, 1]^5 (half-widths 0.05 / 0.1 / 0.2):
  ``bound`` — unsafe ``Y_k >= c`` with ``c`` just above (even instances) or just below (odd) the
  largest ``Y_k`` found by sampling + gradient ascent; ``advisory`` — ACAS-Xu style, unsafe
  ``Y_a <= Y_j`` for every ``j != a`` (action ``a`` advised) with ``a`` the action that came closest to
  being advised in the samples without ever being advised; ``range`` — unsafe
  ``(or (and (>= Y_k hi)) (and (<= Y_k lo)))`` with ``[lo, hi]`` the sampled range of ``Y_k`` widened
  by 2 % of it. The mix yields sat and unsat answers, some near the threshold.
* ``mlp-2x256-{standard,pgd}``, ``mlp-4x256-{standard,pgd}``, ``cnn-small-{standard,pgd}``: zoo
  architectures (``mlp-4x256`` is registered here for the bench only) trained on Fashion-MNIST through
  ``bench/deep_models.py``'s ``train`` (Adam 1e-3, batch 64, seed 0; ``pgd`` = L-inf PGD, 7 steps,
  eps 0.05 as deep_models uses): MLPs 10 epochs standard / 5 PGD, cnn-small 5 / 3; cached (resumable)
  under ``--work`` (default /tmp/robustcert-bench-verify/models).
* ``mlp-6x256-{standard,pgd}``: deep_models' cached nets (10 / 5 epochs, $TMPDIR/robustcert-bench-deep).

Instances of a classification net: the first ``--n`` correctly classified test images, box
``[x - eps, x + eps] ∩ [0, 1]`` and the MNIST-style disjunction (``bench/verify_digits.py``'s
``write_spec``). ``eps`` per net: ``deep_models.pick_eps`` (CROWN, no rounding margin, bisection on
``deep_models.EPS_GRID``) at the grid eps where CROWN verifies about half (``--target``) of the first
``--pick`` correctly classified test images, so that many of the rest are hard; ``--eps NET=VALUE``
overrides. The ONNX file (``torch.onnx.export(dynamo=False)``), the .vnnlib files and an
``instances.csv`` (``robustcert verify --instances``) of every net are written under
``<cache>/instances/<net>/``.

Per instance: ``robustcert.verify.pipeline.verify_files`` (``--timeout`` s; answer and the stage that
decided: falsify, crown, alpha-crown, falsify-long, bab, or input-split for small inputs), the returned
counterexample re-checked here (in the box, the float32 output satisfying a conjunction), and the exact
MILP (``--milp-time`` s):
``robustcert.exact.exact_margin(decision_only=True)`` over the spec's box for the classification nets
(the classes its certified bounds leave open share the limit);
for the control net the bench's own MILP (:func:`control_milp`, same solver: HiGHS through
``scipy.optimize.milp``; big-M from interval bounds; per conjunction minimise ``t`` subject to
``(C y - d)_r <= t``; ``sat`` only with a point whose float32 output, computed by the torch model,
satisfies the conjunction exactly, ``unsat`` only when every conjunction's HiGHS dual bound exceeds a
slack built like milp.py's: gap, ``tau x (column + row ranges)``, rounding). A wrong answer is ``unsat``
where the MILP found a confirmed counterexample, or ``sat`` where it proved the property. "α-CROWN
alone" counts the ``unsat`` answers decided at stage ``crown`` or ``alpha-crown`` (what the incomplete
verifier proves without attacks or branching); "decided" counts every ``sat`` / ``unsat``.
Sub-domain throughput on the 6x256 nets: ``robustcert.exact.bab.branch_and_bound`` (margins of the true
class, batches of 64, beta-CROWN — as bench/verify_bab.py) run for ``--throughput-time`` s (at most
``--timeout``) on each instance the pipeline did not decide before branch and bound; domains bounded per
second over those that branched. Anything in robustcert that raises is recorded per instance
(``error``), not fatal. Writes ``--out`` (bench/results/verify.md) and the per-instance records next to
it (verify.json).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deep_models  # noqa: E402
from verify_digits import write_spec  # noqa: E402

CACHE = Path("/tmp/robustcert-bench-verify")
OUT = Path(__file__).resolve().parent / "results" / "verify.md"
PGD_EPS = 0.05  # deep_models' PGD training radius (bench/verify_bab.py)
# net name -> (arch, method, epochs); the 6x256 nets come from deep_models' cache
NETS: dict[str, tuple[str, str, int]] = {
    "control": ("control", "mse", 0),
    "mlp-2x256-standard": ("mlp-2x256", "standard", 10),
    "mlp-2x256-pgd": ("mlp-2x256", "pgd", 5),
    "mlp-4x256-standard": ("mlp-4x256", "standard", 10),
    "mlp-4x256-pgd": ("mlp-4x256", "pgd", 5),
    "mlp-6x256-standard": ("mlp-6x256", "standard", 10),
    "mlp-6x256-pgd": ("mlp-6x256", "pgd", 5),
    "cnn-small-standard": ("cnn-small", "standard", 5),
    "cnn-small-pgd": ("cnn-small", "pgd", 3),
}
STAGES = ("falsify", "crown", "alpha-crown", "falsify-long", "bab", "")
ANSWERS = ("unsat", "sat", "timeout", "unknown", "error")


def short_error(exc: BaseException) -> str:
    """The exception and the last lines of its traceback (where in robustcert it failed)."""
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    lines = "".join(tb).rstrip().splitlines()
    return "\n".join(lines[-6:])


# ------------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------------


def register() -> None:
    """deep_models' architectures plus ``mlp-4x256`` in the zoo's table (bench only, idempotent)."""
    from robustcert.models import zoo

    deep_models.register()
    zoo.ARCHITECTURES.setdefault("mlp-4x256", zoo._mlp([256] * 4))


def classifier(
    name: str, train_data: Any, test_data: Any, work: Path
) -> tuple[nn.Module, float | None, float | None]:
    """(model in eval mode, clean test accuracy, training seconds (None when loaded from the cache))."""
    arch, method, epochs = NETS[name]
    register()
    where = deep_models.DEFAULT_WORK if arch == "mlp-6x256" else work
    cached = (Path(where) / f"{train_data.name}-{arch}-{method}-e{epochs}" / "model.pt").exists()
    t0 = time.perf_counter()
    model, acc = deep_models.train(arch, method, train_data, test_data, where, epochs, PGD_EPS)
    return model, acc, None if cached else time.perf_counter() - t0


def control_target(x: torch.Tensor) -> torch.Tensor:
    """The synthetic target of the control net: 5 "advisory costs" ``|x - c_k|^2 + 0.2 sin(2 pi <w_k, x>)``
    of a state ``x`` in [0, 1]^5 (centres ``c_k`` uniform in [0.2, 0.8]^5, directions ``w_k`` normal / 2,
    both from seed 1)."""
    g = torch.Generator().manual_seed(1)
    centres = 0.2 + 0.6 * torch.rand(5, 5, generator=g, dtype=torch.float64)
    dirs = torch.randn(5, 5, generator=g, dtype=torch.float64) / 2
    x = x.double()
    dist = ((x.unsqueeze(1) - centres) ** 2).sum(-1)
    return (dist + 0.2 * torch.sin(2 * math.pi * x @ dirs.T)).float()


def control_net(work: Path) -> tuple[nn.Module, dict[str, float], float | None]:
    """The 5-32-32-5 control MLP (cached as ``control.pt``), its test fit and the training seconds (None
    when loaded from the cache)."""
    path = work / "control.pt"
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    t0 = time.perf_counter()
    cached = path.exists()
    if cached:
        net.load_state_dict(torch.load(path, weights_only=True))
    else:
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3000)
        g = torch.Generator().manual_seed(0)
        for _ in range(3000):
            x = torch.rand(256, 5, generator=g)
            opt.zero_grad()
            nn.functional.mse_loss(net(x), control_target(x)).backward()
            opt.step()
            sched.step()
        work.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    net.eval()
    x = torch.rand(4096, 5, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        out, ref = net(x), control_target(x)
    fit = {
        "test_rmse": float(((out - ref) ** 2).mean().sqrt()),
        "target_std": float(ref.std()),
        "argmin_agreement": float((out.argmin(1) == ref.argmin(1)).float().mean()),
    }
    return net, fit, None if cached else time.perf_counter() - t0


def export_onnx(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), dynamo=False)


# ------------------------------------------------------------------------------------------------------
# instances
# ------------------------------------------------------------------------------------------------------


def pick_eps(model: nn.Module, test: Any, n_pick: int, target: float) -> tuple[float, dict[float, float]]:
    """deep_models.pick_eps (CROWN, no rounding margin) on the first ``n_pick`` correct test images."""
    from robustcert.graph import to_graph

    xs, ys = correct_images(model, test, n_pick)
    graph = to_graph(model, tuple(xs.shape[1:]))
    ok = torch.ones(len(ys), dtype=torch.bool)
    picked, share = deep_models.pick_eps(graph, xs, ys, ok, len(ys), targets=(target,), batch=n_pick)
    return picked[0], share


def correct_images(model: nn.Module, test: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = correct_indices(model, test, n)
    return test.x[idx].float(), test.y[idx].long()


def correct_indices(model: nn.Module, test: Any, n: int) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        for s in range(0, len(test.y), 500):
            pred = model(test.x[s : s + 500].float()).argmax(1)
            out += [s + i for i in range(len(pred)) if int(pred[i]) == int(test.y[s + i])]
            if len(out) >= n:
                break
    return out[:n]


def _maximise(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor, f: Any, seed: int) -> float:
    """The largest ``f(net(x))`` found on the box by 4096 samples and 50 projected ascent steps from the
    64 best (a lower estimate of the true maximum)."""
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(4096, lo.numel(), generator=g)
    with torch.no_grad():
        v = f(net(x))
    x = x[v.argsort(descending=True)[:64]].clone().requires_grad_(True)
    step = (hi - lo) / 20
    for _ in range(50):
        (grad,) = torch.autograd.grad(f(net(x)).sum(), x)
        with torch.no_grad():
            x += step * grad.sign()
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
    with torch.no_grad():
        return max(float(v.max()), float(f(net(x)).max()))


def control_instances(net: nn.Module, n: int, out: Path) -> list[dict[str, Any]]:
    """Write ``n`` control properties (module docstring) as VNN-LIB files; their descriptions."""
    rng = np.random.default_rng(7)
    made = []
    for i in range(n):
        kind = ("bound", "advisory", "range")[i % 3]
        half = (0.05, 0.1, 0.2)[(i // 3) % 3]
        centre = rng.uniform(0.15, 0.85, 5)
        lo_np, hi_np = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
        lo, hi = torch.tensor(lo_np, dtype=torch.float32), torch.tensor(hi_np, dtype=torch.float32)
        lines = [f"(declare-const X_{j} Real)" for j in range(5)] + [
            f"(declare-const Y_{j} Real)" for j in range(5)
        ]
        for j in range(5):
            lines += [f"(assert (>= X_{j} {float(lo[j])!r}))", f"(assert (<= X_{j} {float(hi[j])!r}))"]
        k = int(rng.integers(5))
        if kind == "bound":
            top = _maximise(net, lo, hi, lambda y, k=k: y[:, k], seed=i)
            c = top + (0.01 if i % 2 == 0 else -0.002) * max(1.0, abs(top))
            lines.append(f"(assert (>= Y_{k} {c!r}))")
            what = f"Y_{k} >= {c:.5g} (sampled max {top:.5g})"
        elif kind == "advisory":
            x = lo + (hi - lo) * torch.rand(4096, 5, generator=torch.Generator().manual_seed(i))
            with torch.no_grad():
                y = net(x)
            gaps = []
            for a in range(5):
                others = torch.cat([y[:, :a], y[:, a + 1 :]], 1).min(1).values
                gaps.append(float((y[:, a] - others).min()))  # <= 0 where a is advised
            never = [a for a in range(5) if gaps[a] > 0]
            a = min(never, key=lambda j: gaps[j]) if never else int(np.argmax(gaps))
            lines += [f"(assert (<= Y_{a} Y_{j}))" for j in range(5) if j != a]
            what = f"Y_{a} minimal (advisory {a}; sampled closest gap {gaps[a]:.4g})"
            k = a
        else:
            low = -_maximise(net, lo, hi, lambda y, k=k: -y[:, k], seed=i)
            high = _maximise(net, lo, hi, lambda y, k=k: y[:, k], seed=i + 100)
            pad = 0.02 * max(high - low, 1e-3)
            a, b = low - pad, high + pad
            lines.append(f"(assert (or (and (>= Y_{k} {b!r})) (and (<= Y_{k} {a!r}))))")
            what = f"Y_{k} outside [{a:.5g}, {b:.5g}] (sampled range [{low:.5g}, {high:.5g}])"
        path = out / f"control_{i}_{kind}.vnnlib"
        path.write_text("\n".join(lines) + "\n")
        made.append({"instance": i, "kind": kind, "half_width": half, "property": what, "vnnlib": str(path)})
    return made


# ------------------------------------------------------------------------------------------------------
# exact checks
# ------------------------------------------------------------------------------------------------------

_TAU = 1e-6  # HiGHS' MIP feasibility tolerance, passed explicitly (as robustcert.exact.milp does)


def _snap32(x: np.ndarray, box: Any) -> torch.Tensor | None:
    """A float32 point of the box's inward rounding near ``x``, or None."""
    lo, hi = box.lo_in, box.hi_in
    v = torch.minimum(torch.maximum(torch.as_tensor(x, dtype=torch.float64), lo), hi).float()
    v = torch.where(v.double() < lo, torch.nextafter(v, torch.full_like(v, math.inf)), v)
    v = torch.where(v.double() > hi, torch.nextafter(v, torch.full_like(v, -math.inf)), v)
    return v if box.contains(v) else None


def control_milp(net: nn.Sequential, spec: Any, time_limit: float) -> dict[str, Any]:
    """The bench's exact check of a VNN-LIB property on a Linear/ReLU ``nn.Sequential`` (module
    docstring): ``sat`` with a confirmed point, ``unsat`` when every (box, conjunction) is refuted by a
    dual bound above its slack, else ``unknown``."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    from robustcert.exact._solver_output import solver_output

    t0 = time.monotonic()
    layers = [m for m in net if isinstance(m, nn.Linear)]
    if [type(m) for m in net] != [t for m in layers for t in (nn.Linear, nn.ReLU)][:-1]:
        raise ValueError("control_milp takes Linear/ReLU/.../Linear sequentials only")
    Ws = [m.weight.detach().double().numpy() for m in layers]
    bs = [m.bias.detach().double().numpy() for m in layers]
    refuted, pairs, notes = 0, 0, []
    for case in spec.cases:
        lo0, hi0 = case.box.lo.numpy(), case.box.hi.numpy()
        for conj in case.conjunctions:
            pairs += 1
            lb, ub, integ = list(lo0), list(hi0), [0] * len(lo0)
            rows: list[tuple[dict[int, float], float, float]] = []  # (coeffs, row lower, row upper)
            prev, plo, phi = list(range(len(lo0))), lo0, hi0
            for W, b in zip(Ws[:-1], bs[:-1], strict=True):
                Wp, Wn = np.clip(W, 0, None), np.clip(W, None, 0)
                zl, zu = Wp @ plo + Wn @ phi + b, Wp @ phi + Wn @ plo + b
                cur = []
                for i in range(len(b)):
                    col = len(lb)
                    cur.append(col)
                    lb.append(max(zl[i], 0.0) if zu[i] > 0 else 0.0)
                    ub.append(max(zu[i], 0.0))
                    integ.append(0)
                    z = {prev[j]: -W[i, j] for j in range(len(prev))}
                    if zl[i] >= 0:  # stably active: a = z
                        rows.append(({col: 1.0, **z}, b[i], b[i]))
                    elif zu[i] > 0:  # unstable: a >= z, a <= u delta, a <= z - l (1 - delta)
                        dcol = len(lb)
                        lb.append(0.0)
                        ub.append(1.0)
                        integ.append(1)
                        rows.append(({col: 1.0, **z}, b[i], math.inf))
                        rows.append(({col: 1.0, dcol: -zu[i]}, -math.inf, 0.0))
                        rows.append(({col: 1.0, **z, dcol: -zl[i]}, -math.inf, b[i] - zl[i]))
                prev, plo, phi = cur, np.maximum(zl, 0), np.maximum(zu, 0)
            W, b = Ws[-1], bs[-1]
            C, d = conj.C.numpy(), conj.d.numpy()
            CW, Cb = C @ W, C @ b
            rlo = np.clip(CW, 0, None) @ plo + np.clip(CW, None, 0) @ phi + Cb - d
            rhi = np.clip(CW, 0, None) @ phi + np.clip(CW, None, 0) @ plo + Cb - d
            t = len(lb)
            lb.append(float(rlo.max()) - 1.0)
            ub.append(float(rhi.max()) + 1.0)
            integ.append(0)
            for r in range(len(d)):  # (C W a + C b - d)_r <= t
                rows.append(
                    ({**{prev[j]: CW[r, j] for j in range(len(prev))}, t: -1.0}, -math.inf, d[r] - Cb[r])
                )
            A = np.zeros((len(rows), len(lb)))
            for i, (co, _, _) in enumerate(rows):
                for j, v in co.items():
                    A[i, j] += v
            rl = np.array([r[1] for r in rows])
            ru = np.array([r[2] for r in rows])
            cost = np.zeros(len(lb))
            cost[t] = 1.0
            remaining = time_limit - (time.monotonic() - t0)
            if remaining <= 0:
                notes.append("time limit")
                continue
            lbn, ubn = np.array(lb), np.array(ub)
            with solver_output(None), warnings.catch_warnings():  # HiGHS prints to fd 1 from C
                warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
                res = milp(
                    cost,
                    integrality=np.array(integ),
                    bounds=Bounds(lbn, ubn),
                    constraints=LinearConstraint(A, rl, ru),
                    options={
                        "time_limit": remaining,
                        "mip_rel_gap": 1e-6,
                        "mip_abs_gap": 1e-6,
                        "mip_feasibility_tolerance": _TAU,
                    },
                )
            if res.x is not None:
                x32 = _snap32(res.x[: len(lo0)], case.box)
                if x32 is not None:
                    with torch.no_grad():
                        y32 = net(x32.reshape(1, -1)).reshape(-1)
                    if conj.satisfied_by(y32):
                        return {
                            "status": "sat",
                            "seconds": time.monotonic() - t0,
                            "binaries": int(sum(integ)),
                        }
            dual = getattr(res, "mip_dual_bound", None)
            if res.status in (0, 1) and dual is not None and math.isfinite(float(dual)):
                ranges = ubn - lbn
                allowance = _TAU * (ranges.sum() + (np.abs(A) @ ranges).sum())
                primal = float(res.fun) if res.fun is not None else None
                gap = 1e-6 if primal is None else dual - min(dual, primal - max(1e-6, 1e-6 * abs(primal)))
                slack = gap + allowance + 1e-9 * (abs(dual) + abs(primal or 0.0)) + 1e-12
                if float(dual) - slack > 0:
                    refuted += 1
                    continue
                notes.append(f"dual bound {float(dual):.3g} <= slack {slack:.3g}")
            else:
                notes.append(str(res.message))
    status = "unsat" if refuted == pairs else "unknown"
    return {"status": status, "seconds": time.monotonic() - t0, "note": "; ".join(notes)}


def check_counterexample(model: nn.Module, spec: Any, x: torch.Tensor | None, shape: tuple[int, ...]) -> str:
    """Re-check a ``sat`` verdict's point here: in some case's box and its float32 output satisfying
    one of that case's conjunctions."""
    if x is None:
        return "no point"
    with torch.no_grad():
        y = model(x.float().reshape(1, *shape)).reshape(-1)
    for case in spec.cases:
        if case.box.contains(x) and any(c.satisfied_by(y) for c in case.conjunctions):
            return "ok"
    return "FAILED"


# ------------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------------


def run_instance(
    net: str, model: nn.Module, onnx: Path, spec_path: Path, label: int | None, shape: tuple[int, ...], a: Any
) -> dict[str, Any]:
    from robustcert.exact import exact_margin
    from robustcert.verify import pipeline
    from robustcert.vnnlib import read_vnnlib

    rec: dict[str, Any] = {"net": net, "onnx": str(onnx), "vnnlib": str(spec_path), "label": label}
    spec = read_vnnlib(spec_path)
    try:
        v = pipeline.verify_files(onnx, spec_path, a.timeout)
        rec.update(answer=v.answer, stage=v.stage, seconds=v.seconds)
        rec["cex_check"] = check_counterexample(model, spec, v.x, shape) if v.answer == "sat" else ""
    except Exception as exc:  # recorded, not fatal: the report lists it
        rec.update(answer="error", stage="", seconds=None, verify_error=short_error(exc))
        rec["verify_command"] = (
            f"OMP_NUM_THREADS=1 .venv/bin/robustcert verify {onnx} {spec_path} --timeout {a.timeout:g}"
        )
    try:
        if label is None:
            m = control_milp(model, spec, a.milp_time)
            rec.update(milp=m["status"], milp_seconds=m["seconds"], milp_note=m.get("note", ""))
        else:
            box = spec.cases[0].box
            lo, hi = box.lo.reshape(1, *shape).float(), box.hi.reshape(1, *shape).float()
            limit = a.milp_time  # shared by the classes its certified bounds leave open
            rec.update(milp_time_limit=limit)
            e = exact_margin(model, None, label, box=(lo, hi), time_limit=limit, decision_only=True)
            status = {"robust": "unsat", "counterexample": "sat"}.get(e.status, "unknown")
            rec.update(milp=status, milp_seconds=e.seconds, milp_binaries=e.num_binaries)
            rec["milp_solver_status"] = {str(j): v for j, v in e.solver_status.items()}
            if status == "unknown":
                rec["milp_note"] = "; ".join(
                    sorted({v for v in e.solver_status.values() if v != "interval bound"})
                )
    except Exception as exc:
        rec.update(milp="error", milp_seconds=None, milp_error=short_error(exc))
    rec["wrong"] = (rec["answer"] == "unsat" and rec["milp"] == "sat") or (
        rec["answer"] == "sat" and rec["milp"] == "unsat"
    )
    probe = min(a.throughput_time, a.timeout)
    branched = rec["stage"] == "bab" or rec["answer"] in ("timeout", "unknown")
    if net.startswith("mlp-6x256") and probe > 0 and branched and label is not None:
        from robustcert.exact.bab import branch_and_bound

        box = spec.cases[0].box
        lo, hi = box.lo.reshape(1, *shape).float(), box.hi.reshape(1, *shape).float()
        eye = torch.eye(10, dtype=torch.float64)
        C = (eye[label].unsqueeze(0) - eye)[[j for j in range(10) if j != label]]
        try:
            r = branch_and_bound(model, lo, hi, C, timeout=probe, batch=64)
            rec["bab_probe"] = {
                "status": r.status,
                "stage": r.stage,
                "domains": r.domains,
                "seconds": r.seconds,
            }
        except Exception as exc:
            rec["bab_probe"] = {"error": short_error(exc)}
    return rec


def fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def net_table(name: str, info: dict[str, Any], recs: list[dict[str, Any]]) -> list[str]:
    st = Counter((r["answer"], r["stage"]) for r in recs)
    stages = STAGES + tuple(sorted({r["stage"] for r in recs} - set(STAGES)))  # stages added to the pipeline
    lines = [f"### {name}", "", info["describe"], ""]
    lines += [
        "| answer | " + " | ".join(s or "(none)" for s in stages) + " | total |",
        "|---" * (len(stages) + 2) + "|",
    ]
    for ans in ANSWERS:
        n = sum(st[ans, s] for s in stages)
        if n or ans in ("unsat", "sat", "timeout"):
            lines.append(f"| {ans} | " + " | ".join(str(st[ans, s]) for s in stages) + f" | {n} |")
    lines += [
        "",
        "| # | instance | answer | stage | s | cex re-check | MILP | MILP s | wrong | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(recs):
        note = r.get("property", "")
        for key in ("verify_error", "milp_error"):
            if r.get(key):
                note += f" {key}: `{r[key].splitlines()[-1][:200]}`"
        if r.get("milp_note"):
            note += f" MILP: {r['milp_note'][:240]}"
        if r.get("bab_probe"):
            p = r["bab_probe"]
            note += (
                f" BaB probe: {p['status']} ({p['stage'] or '-'}) {p['domains']} domains / {p['seconds']:.1f} s"
                if "error" not in p
                else f" BaB probe error: `{p['error'].splitlines()[-1][:200]}`"
            )
        lines.append(
            f"| {i} | {Path(r['vnnlib']).name} | {r['answer']} | {r['stage'] or '-'} | {fmt(r['seconds'])} | "
            f"{r.get('cex_check') or '-'} | {r['milp']} | {fmt(r['milp_seconds'])} | "
            f"{'**YES**' if r['wrong'] else 'no'} | {note.strip()} |"
        )
    return lines + [""]


def summary_row(name: str, info: dict[str, Any], recs: list[dict[str, Any]]) -> str:
    ans = Counter(r["answer"] for r in recs)
    alpha = sum(r["answer"] == "unsat" and r["stage"] in ("crown", "alpha-crown") for r in recs)
    decided = ans["unsat"] + ans["sat"]
    secs = [r["seconds"] for r in recs if r["seconds"] is not None]
    milp = Counter(r["milp"] for r in recs)
    probes = [r["bab_probe"] for r in recs if "domains" in r.get("bab_probe", {})]
    probes = [p for p in probes if p["stage"] == "bab" or p["status"] == "timeout"]
    dps = (
        f"{sum(p['domains'] for p in probes) / max(1e-9, sum(p['seconds'] for p in probes)):.1f}"
        if probes
        else "-"
    )
    ratio = f"{decided / alpha:.1f}x" if alpha else ("-" if not decided else "inf")
    return (
        f"| {name} | {info['accuracy']} | {info['eps']} | {len(recs)} | {ans['unsat']} | {ans['sat']} | "
        f"{ans['timeout']} | {ans['unknown']} | {ans['error']} | {alpha} | {decided} | {ratio} | "
        f"{fmt(statistics.median(secs)) if secs else '-'} / {fmt(max(secs)) if secs else '-'} | "
        f"{milp['unsat']} / {milp['sat']} / {milp['unknown'] + milp['error']} | "
        f"{sum(r['wrong'] for r in recs)} | {dps} |"
    )


def write_results(
    a: Any, cmd: str, infos: dict[str, Any], records: dict[str, list], wall: float, done: bool
) -> None:
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = [
        "# Complete verification benchmark (issue 11): bench/verify.py",
        "",
        f"Command: `{cmd}` (torch {torch.__version__}, 1 thread, 2 cores shared with other jobs); "
        f"wall time {wall:.0f} s{'' if done else ' so far (run not finished)'}. Set-up in the module docstring; "
        f"per-instance records in {out.with_suffix('.json').name}; instances under {a.cache}/instances/.",
        "",
        "eps per net: CROWN's share of verified images at the grid eps (deep_models.pick_eps, target "
        f"{a.target:g}, first {a.pick} correct test images) unless overridden with --eps. "
        "**α-CROWN alone** = instances answered unsat at stage crown or alpha-crown (the incomplete verifier, no "
        "attack, no branching); **decided** = sat + unsat at any stage; **wrong** = unsat where the MILP found a "
        "confirmed counterexample or sat where it proved the property. MILP column: unsat / sat / unknown-or-error. "
        f"domains/s: branch_and_bound (as verify_bab.py) run up to {min(a.throughput_time, a.timeout):g} s on the "
        "6x256 instances the pipeline did not decide before branch and bound, over those that branched.",
        "",
        "| net | clean acc | eps | n | unsat | sat | timeout | unknown | error | α-CROWN alone | decided | "
        "decided ÷ α-CROWN | s median / max | MILP unsat / sat / unknown | wrong | domains/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[summary_row(n, infos[n], records[n]) for n in records if records[n]],
        "",
    ]
    for n in records:
        if records[n]:
            text += net_table(n, infos[n], records[n])
    out.write_text("\n".join(text))
    payload = {"command": cmd, "wall_seconds": wall, "finished": done, "nets": infos, "instances": records}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated subset of: " + ", ".join(NETS))
    ap.add_argument("--n", type=int, default=8, help="instances per net")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per instance (verify)")
    ap.add_argument("--milp-time", type=float, default=60.0, help="seconds per instance (MILP)")
    ap.add_argument("--throughput-time", type=float, default=30.0, help="BaB probe seconds (6x256; 0: none)")
    ap.add_argument(
        "--eps", action="append", default=[], metavar="NET=VALUE", help="eps override (repeatable)"
    )
    ap.add_argument("--target", type=float, default=0.5, help="CROWN-verified share the picked eps aims at")
    ap.add_argument("--pick", type=int, default=20, help="images for picking eps")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    nets = [n.strip() for n in a.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown:
        ap.error(f"unknown net(s) {unknown}; choose from {list(NETS)}")
    overrides = {}
    for item in a.eps:
        for part in item.split(","):
            key, _, val = part.partition("=")
            if key not in NETS or not val:
                ap.error(f"--eps takes NET=VALUE with NET one of {list(NETS)}, got {part!r}")
            overrides[key] = float(val)
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python bench/verify.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    t_start = time.perf_counter()
    infos: dict[str, Any] = {}
    records: dict[str, list] = {}
    train_data = test_data = None
    for name in nets:
        where = a.cache / "instances" / name
        where.mkdir(parents=True, exist_ok=True)
        for stale in where.glob("*.vnnlib"):  # from earlier runs (other eps / n): instances.csv is rewritten
            stale.unlink()
        onnx = where / f"{name}.onnx"
        records[name] = []
        if name == "control":
            model, fit, secs = control_net(a.cache / "models")
            shape: tuple[int, ...] = (5,)
            export_onnx(model, shape, onnx)
            made = control_instances(model, a.n, where)
            infos[name] = {
                "accuracy": f"rmse {fit['test_rmse']:.3f} (target std {fit['target_std']:.2f}); "
                f"argmin agrees {fit['argmin_agreement']:.2f}",
                "eps": "-",
                "train_seconds": secs,
                "describe": "5-32-32-5 ReLU MLP on [0, 1]^5, synthetic advisory costs (module docstring); "
                f"fit on 4096 uniform points: rmse {fit['test_rmse']:.4f} vs target std {fit['target_std']:.3f}, "
                f"argmin agreement {fit['argmin_agreement']:.3f}. Properties: output bound, ACAS-Xu-style "
                "advisory (conjunction), output range (disjunction).",
            }
            todo = [(Path(m["vnnlib"]), None, m) for m in made]
        else:
            if train_data is None:
                _, train_data, test_data = deep_models.data()
            model, acc, secs = classifier(name, train_data, test_data, a.cache / "models")
            shape = tuple(test_data.x.shape[1:])
            export_onnx(model, shape, onnx)
            if name in overrides:
                eps, share, how = overrides[name], {}, "--eps override"
            else:
                t0 = time.perf_counter()
                eps, share = pick_eps(model, test_data, a.pick, a.target)
                how = f"picked in {time.perf_counter() - t0:.0f} s: CROWN share at eps " + ", ".join(
                    f"{e:g}: {s:.2f}" for e, s in share.items()
                )
            arch, method, epochs = NETS[name]
            pgd = f", PGD eps {PGD_EPS:g}" if method == "pgd" else ""
            trained = "loaded from the cache" if secs is None else f"trained in {secs:.0f} s"
            infos[name] = {
                "accuracy": f"{acc:.4f}",
                "eps": eps,
                "eps_how": how,
                "eps_shares": share,
                "train_seconds": secs,
                "epochs": epochs,
                "describe": f"{arch}, {method} training ({epochs} epochs{pgd}), clean accuracy {acc:.4f}; "
                f"{trained}; eps {eps:g} ({how}).",
            }
            todo = []
            for i in correct_indices(model, test_data, a.n):
                spec = where / f"img{i}_eps{eps:g}.vnnlib"
                write_spec(spec, test_data.x[i], eps, int(test_data.y[i]), 10)
                todo.append((spec, int(test_data.y[i]), {"instance": i, "eps": eps}))
        (where / "instances.csv").write_text(
            "".join(f"{onnx.name},{p.name},{a.timeout:g}\n" for p, _, _ in todo)
        )
        print(f"{name}: {infos[name]['describe']}", flush=True)
        for spec, label, extra in todo:
            rec = {**extra, **run_instance(name, model, onnx, spec, label, shape, a)}
            records[name].append(rec)
            print(
                f"  {spec.name}: {rec['answer']} ({rec['stage'] or '-'}) {fmt(rec['seconds'])} s, "
                f"MILP {rec['milp']} {fmt(rec['milp_seconds'])} s{'  WRONG' if rec['wrong'] else ''}",
                flush=True,
            )
            write_results(a, cmd.strip(), infos, records, time.perf_counter() - t_start, False)
    write_results(a, cmd.strip(), infos, records, time.perf_counter() - t_start, True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
