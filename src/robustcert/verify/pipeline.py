"""``robustcert verify`` for one instance: an ONNX model and a VNN-LIB spec → sat / unsat / unknown / timeout.

Stages, in order, within the time limit:

1. **falsify** every (box, conjunction) pair with a quick search (sampling + PGD,
   :mod:`robustcert.verify.falsify`); a checked counterexample answers ``sat``.
2. **CROWN** per box on all its conjunctions, then **α-CROWN** on those CROWN left open
   (:mod:`robustcert.verify.prove`); ``unsat`` only when every pair is proven impossible.
3. a longer **falsify** on the pairs still open;
4. **branch and bound** (:func:`robustcert.verify.prove.branch_and_bound_pair`) on each pair still
   open, sharing the time left: beta-CROWN on batched ReLU splits (stage ``bab``), or for a model with
   at most :data:`robustcert.exact.input_split.MAX_INPUTS` inputs, splitting the input box (stage
   ``input-split``); its counterexamples are checked like the others.

Otherwise ``unknown``, or ``timeout`` if the time limit passed before a decision.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from robustcert.errors import RobustCertError
from robustcert.exact.input_split import MAX_INPUTS
from robustcert.models.modes import eval_mode
from robustcert.seeding import derived_seed
from robustcert.verify.falsify import AttackBudget, check_counterexample, falsify
from robustcert.verify.prove import branch_and_bound_pair, proven
from robustcert.vnnlib import VnnSpec, read_vnnlib

ANSWERS = ("sat", "unsat", "unknown", "timeout", "error")
QUICK = AttackBudget(samples=256, restarts=4, steps=30)
LONG = AttackBudget(samples=2048, restarts=32, steps=100)


@dataclass
class Verdict:
    """The answer, the stage that decided it (``falsify``, ``crown``, ``alpha-crown``, ``falsify-long``, ``bab``,
    ``input-split`` or ``""``), wall seconds, and for ``sat`` the checked counterexample (flat float32 ``x`` and ``y``)."""

    answer: str
    stage: str
    seconds: float
    x: Tensor | None = None
    y: Tensor | None = None


@dataclass
class LoadedModel:
    """An ONNX model ready for verification: the module, its per-example input shape and output count."""

    module: nn.Module
    input_shape: tuple[int, ...]
    num_outputs: int
    stripped: str | None


def load_model(path: str | Path) -> LoadedModel:
    """Load an ONNX file the way ``certify --model x.onnx`` does; RobustCertError if it cannot be used."""
    from robustcert.models.sources import load_model_source

    if Path(path).suffix.lower() != ".onnx":
        raise RobustCertError(f"model {path}: robustcert verify takes an .onnx file")
    source = load_model_source(str(path))
    shape = tuple(int(s) for s in (source.input_shape or ()))
    with torch.no_grad():
        try:
            out = source.module(torch.zeros((1, *shape)))
        except Exception as exc:
            raise RobustCertError(f"model {path} fails on an input of shape {[1, *shape]}: {exc}") from None
    ir = getattr(source.module, "ir", None)
    return LoadedModel(source.module.eval(), shape, int(out[0].numel()), getattr(ir, "stripped", None))


def check_instance(model: LoadedModel, spec: VnnSpec, model_name: str) -> None:
    """RobustCertError unless the spec's X/Y counts match the model's input size and output count, and
    the outputs the spec constrains are the ones the bounds see (no final Softmax/LogSoftmax that the
    graph strips: float32 ties after it are not covered by bounds on the logits)."""
    n_in = math.prod(model.input_shape)
    if spec.num_inputs != n_in:
        raise RobustCertError(
            f"{spec.source} declares {spec.num_inputs} inputs (X_0 … X_{spec.num_inputs - 1}) but {model_name} "
            f"takes {n_in} (input shape {list(model.input_shape)}); use the spec written for this model"
        )
    if spec.num_outputs != model.num_outputs:
        raise RobustCertError(
            f"{spec.source} declares {spec.num_outputs} outputs (Y_0 … Y_{spec.num_outputs - 1}) but "
            f"{model_name} has {model.num_outputs}; use the spec written for this model"
        )
    if model.stripped is not None:
        raise RobustCertError(
            f"{model_name} ends in {model.stripped}, which robustcert's bounds leave out (they bound the "
            "logits); the float32 outputs after it can tie where the logits do not, so a proof on the logits "
            f"would not cover them: export the model without the final {model.stripped}"
        )


def verify(
    model: LoadedModel, spec: VnnSpec, timeout: float, seed: int = 0, started: float | None = None
) -> Verdict:
    """Decide the instance within ``timeout`` seconds from ``started`` (``time.monotonic()``; default
    now), checked between stages and pairs (a bound computation already running finishes first).

    Guarantees: ``unsat`` only if CROWN, α-CROWN or branch and bound proved every (box, conjunction) pair
    impossible for the float32 network; ``sat`` only with a counterexample that lies in the real box and whose float32
    outputs satisfy every exact row of one conjunction (``Verdict.x``, ``Verdict.y``)."""
    if not (isinstance(timeout, int | float) and timeout > 0 and math.isfinite(timeout)):
        raise RobustCertError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    start = time.monotonic() if started is None else started
    deadline = start + timeout
    pairs = [(ci, ki) for ci, case in enumerate(spec.cases) for ki in range(len(case.conjunctions))]

    def done(answer: str, stage: str, found: tuple[Tensor, Tensor] | None = None) -> Verdict:
        x, y = found if found is not None else (None, None)
        return Verdict(answer, stage, time.monotonic() - start, x, y)

    if not pairs:  # no case can hold: every conjunction was contradictory or had an empty box
        return done("unsat", "parse")

    def attack(todo: list[tuple[int, int]], budget: AttackBudget, round_: int, stage: str) -> Verdict | None:
        for ci, ki in todo:
            if time.monotonic() > deadline:
                return done("timeout", "")
            case = spec.cases[ci]
            found = falsify(
                model.module,
                model.input_shape,
                case.box,
                case.conjunctions[ki],
                seed=derived_seed(seed, ci, ki, round_),
                budget=budget,
                deadline=deadline,
            )
            if found is not None:
                return done("sat", stage, found)
        return None

    with eval_mode(model.module):
        if (verdict := attack(pairs, QUICK, 0, "falsify")) is not None:
            return verdict
        open_pairs = pairs
        for method in ("crown", "alpha-crown"):
            left = []
            for ci in sorted({ci for ci, _ in open_pairs}):
                if time.monotonic() > deadline:
                    return done("timeout", "")
                which = [ki for c, ki in open_pairs if c == ci]
                ok = proven(model.module, model.input_shape, spec.cases[ci], which, method)
                left += [(ci, ki) for ki, p in zip(which, ok, strict=True) if not p]
            open_pairs = left
            if not open_pairs:
                return done("unsat", method)
        if (verdict := attack(open_pairs, LONG, 1, "falsify-long")) is not None:
            return verdict
        # 4. branch and bound on each open pair, sharing the time left; pairs that ran out of their
        # share are tried again (from scratch, with a new seed) while time is left, since pairs decided
        # early leave time unused; a pair ending "unknown" (a fully split leaf still open) is final
        search, stage = (
            ("input", "input-split") if math.prod(model.input_shape) <= MAX_INPUTS else ("relu", "bab")
        )
        pending, undecided, round_ = open_pairs, False, 0
        while pending:
            timed_out = []
            for n, (ci, ki) in enumerate(pending):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return done("timeout", "")
                case = spec.cases[ci]
                status, x = branch_and_bound_pair(
                    model.module,
                    model.input_shape,
                    case,
                    ki,
                    remaining / (len(pending) - n),
                    seed=derived_seed(seed, ci, ki, 2 + round_),
                    search=search,
                )
                if status == "falsified" and x is not None:
                    y = check_counterexample(
                        model.module, model.input_shape, case.box, case.conjunctions[ki], x
                    )
                    if y is not None:
                        return done("sat", stage, (x.detach().clone(), y))
                if status == "timeout":
                    timed_out.append((ci, ki))
                elif status != "verified":
                    undecided = True
            pending, round_ = timed_out, round_ + 1
        if not undecided:
            return done("unsat", stage)
    return done("timeout" if time.monotonic() > deadline else "unknown", "")


def verify_files(onnx: str | Path, vnnlib: str | Path, timeout: float, seed: int = 0) -> Verdict:
    """Load both files, check they fit together, and :func:`verify`; the time limit counts from the start
    of loading. Bad input raises RobustCertError."""
    started = time.monotonic()
    model = load_model(onnx)
    spec = read_vnnlib(vnnlib)
    check_instance(model, spec, Path(onnx).name)
    return verify(model, spec, timeout, seed, started)


def result_text(verdict: Verdict) -> str:
    """The VNN-COMP result file: the answer on the first line; for ``sat`` the counterexample
    ``((X_0 v) … (Y_0 v) …)``, one assignment per line, each value the exact float32 as a decimal."""
    if verdict.answer != "sat" or verdict.x is None or verdict.y is None:
        return verdict.answer + "\n"
    parts = [f"(X_{i} {float(v)!r})" for i, v in enumerate(verdict.x.reshape(-1).tolist())]
    parts += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(verdict.y.reshape(-1).tolist())]
    return "sat\n(" + "\n ".join(parts) + ")\n"
