"""The ``robustcert`` command. Thin: parses arguments, calls the library, prints.

The ``certify`` and ``attack`` sub-commands and their options are generated from the method registry
(:mod:`robustcert.methods`): every method is a sub-command, every field of its parameters dataclass an
option, with the field's help and limits. Failing cleanly is part of the contract: any usage error, bad
value, missing or corrupt file, unwritable directory or unreachable service prints one line
``error: …`` that says how to fix it and exits with status 2 — no traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import robustcert
from robustcert.allocator import keep_freed_memory
from robustcert.errors import RobustCertError

EXIT_BAD_INPUT = 2
EXIT_UNSOUND = 3
EXIT_INTERNAL = 1


class UsageError(RobustCertError):
    """A command line that does not parse."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line with a pointer to ``--help``, never a usage dump, and
    which accepts no abbreviated options (``--mod`` is not ``--model``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see `{self.prog} --help`")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """A leaf command (no sub-commands) refuses unknown options itself, so the error points to its own
        ``--help`` (not the top level's) and suggests the closest option."""
        ns, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:
            import difflib

            unknown = next((e for e in extras if e.startswith("-")), extras[0])
            close = difflib.get_close_matches(unknown.split("=")[0], list(self._option_string_actions), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return ns, extras


def _int_at_least(minimum: int) -> Any:
    """An argparse ``type`` accepting whole numbers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _common(parser: argparse.ArgumentParser) -> None:
    """Options every command accepts (also after the sub-command)."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help="torch threads for this process (default 1: no oversubscription on a shared machine)",
    )


def _floats(option: str) -> Callable[[str], tuple[float, ...]]:
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be a finite number")
        return values

    return parse


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give non-empty names separated by commas")
    return names


def _model_spec(ns: argparse.Namespace) -> Any:
    """The ``--model`` and what the user states about it (input range, normalisation, class names)."""
    from robustcert.domain import InputDomain
    from robustcert.models.sources import ModelSpec

    domain = None if ns.input_range is None else InputDomain.parse(ns.input_range)
    return ModelSpec(
        location=ns.model, input_range=domain, mean=ns.mean, std=ns.std,
        class_names=ns.class_names, trust_file=ns.trust_model_file,
    )


def _run_options(parser: argparse.ArgumentParser, out: str) -> None:
    from robustcert.models.shipped import shipped_names

    parser.add_argument(
        "--model",
        required=True,
        help="a robustcert model directory (model.pt + model.json), zoo:NAME (a model shipped with robustcert: "
        + ", ".join(shipped_names())
        + "), an .onnx, .pt2 (torch.export) or "
        "TorchScript file, or module:function returning an nn.Module (give --dataset for these)",
    )
    parser.add_argument(
        "--input-range",
        metavar="LO,HI",
        help='the box the model\'s inputs live in (default 0,1), or one per channel: "LO,HI;LO,HI;LO,HI"; '
        "write --input-range=-1,1 when LO is negative",
    )
    parser.add_argument(
        "--mean", type=_floats("--mean"), metavar="M[,M...]",
        help="normalisation the model file expects on its inputs: (x - mean) / std is put in front of it "
        "(one value or one per channel); budgets stay in the data's units",
    )
    parser.add_argument("--std", type=_floats("--std"), metavar="S[,S...]", help="see --mean")
    parser.add_argument("--class-names", type=_names, metavar="A,B,...", help="one name per class, for the report")
    parser.add_argument(
        "--trust-model-file", action="store_true",
        help="load a .pt2 or TorchScript file (their loading can run code: only for files you trust)",
    )
    parser.add_argument("--dataset", help="digits | fashion-mnist | npz:PATH (default: the model's)")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="data split")
    parser.add_argument("--data-dir", type=Path, help="directory of the data set's files (fashion-mnist)")
    parser.add_argument("--limit", type=_positive_int, help="take only the first K examples of the split")
    parser.add_argument("--indices", help="explicit example indices, e.g. '0,5,7' or '0-99'")
    parser.add_argument("--seed", type=_nonneg_int, default=0, help="run seed; each example is seeded by (seed, index)")
    _run_dir_options(parser, out)
    parser.add_argument("--ray-address", help="run on a Ray cluster: 'auto' or HOST:PORT")
    parser.add_argument("--workers", type=_positive_int, help="start a local Ray with N worker CPUs")


def _run_dir_options(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--out", type=Path, default=Path(out), help="output directory")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished examples")
    mode.add_argument("--force", action="store_true", help="overwrite an existing run in --out")


def _metavar(hint: Any) -> str:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kind = next(o for o in options if o is not type(None))
    if typing.get_origin(kind) is tuple:
        return "X[,X...]"
    return {int: "N", float: "X", str: "TEXT", bool: "BOOL"}.get(kind, "VALUE")


def _method_options(
    parser: argparse.ArgumentParser, params_cls: type, norms: Sequence[str] | None = None
) -> None:
    """One option per parameter field; only the options given are passed on (defaults live in the class).
    ``norms``: the threat models the method supports, shown for ``--norm`` instead of every norm."""
    from robustcert.methods.base import cli_option, param_fields

    hints = typing.get_type_hints(params_cls)
    for f in param_fields(params_cls):
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
        help_text = meta.get("help", "")
        if "default" not in help_text:  # some helps say what the default means themselves
            help_text = f"{help_text} (default: {shown})"
        kwargs: dict[str, Any] = {"dest": f"param_{f.name}", "default": argparse.SUPPRESS, "help": help_text}
        if hints[f.name] is bool:  # a switch: --sound-fp (TOML: sound_fp = true)
            kwargs.update(action="store_const", const="true")
        elif f.name == "norm" and norms:
            kwargs["metavar"] = "|".join(norms)
        elif meta.get("choices"):
            kwargs["metavar"] = "|".join(meta["choices"])
        else:
            kwargs["metavar"] = _metavar(hints[f.name])
        parser.add_argument(cli_option(f.name), **kwargs)


def build_parser() -> Parser:
    """The whole command line, generated from the registry as it is now."""
    from robustcert.methods import all_methods

    common = Parser(add_help=False)
    _common(common)
    parser = Parser(prog="robustcert", description="Certified defenses for PyTorch classifiers.", parents=[common])
    parser.add_argument("--version", action="version", version=f"robustcert {robustcert.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    train = commands.add_parser("train", parents=[common], help="train a zoo model into a model directory")
    train.add_argument("--dataset", default="digits", help="digits | fashion-mnist | npz:PATH")
    train.add_argument(
        "--arch",
        default="cnn-small",
        help="mlp-2x32 | mlp-2x50 | mlp-2x64 | mlp-2x100 | mlp-2x256 | mlp-4x100 | cnn-small | cnn-medium",
    )
    from robustcert.train.factory import TRAIN_METHODS

    train.add_argument("--method", default="standard", help=" | ".join(TRAIN_METHODS))
    train.add_argument(
        "--sigma", type=_float, default=0.25, help="gaussian / consistency / smoothadv: noise std in input units"
    )
    train.add_argument(
        "--eps", "--eps-train", dest="eps", type=_float, default=0.1,
        help="pgd / ibp / crown-ibp / sabr / mtl-ibp: training budget (may exceed the budget you certify at)",
    )
    train.add_argument("--norm", default="linf", help="pgd: linf | l2 (ibp, crown-ibp, sabr, mtl-ibp train linf)")
    train.add_argument("--pgd-steps", type=int, default=10, help="pgd / sabr / mtl-ibp: attack steps per batch")
    train.add_argument(
        "--schedule", default="linear", help="certified training: shape of the eps ramp, linear | smooth (Shi et al.)"
    )
    train.add_argument(
        "--ramp-start", type=_float, default=0.1,
        help="certified training: fraction of training after which eps starts to ramp up (clean before)",
    )
    train.add_argument(
        "--ramp-end", type=_float, default=0.5, help="certified training: fraction of training where eps reaches --eps-train"
    )
    train.add_argument(
        "--kappa-end", type=_float, default=None,
        help="certified training: final weight of the clean loss, from 1 over the ramp "
        "(default: 0.5 for ibp / crown-ibp, 0 for sabr / mtl-ibp)",
    )
    train.add_argument(
        "--ibp-init", action="store_true", help="certified training: Shi et al.'s IBP initialisation of the weights"
    )
    train.add_argument(
        "--shi-reg", type=_float, default=0.0,
        help="certified training: weight λ of Shi et al.'s warm-up regularisers (tightness + ReLU balance); 0 = off",
    )
    train.add_argument("--shi-tol", type=_float, default=0.5, help="certified training: tolerance τ of those regularisers")
    train.add_argument("--sabr-lambda", type=_float, default=0.4, help="sabr: box radius as a fraction λ of eps")
    train.add_argument("--mtl-alpha", type=_float, default=0.5, help="mtl-ibp: weight α of the IBP loss")
    train.add_argument("--grad-clip", type=_float, default=0.0, help="clip each step's gradient norm to this (0 = off)")
    train.add_argument("--noise-samples", type=int, default=2, help="consistency / smoothadv: noisy copies per input (m)")
    train.add_argument("--consistency-lambda", type=_float, default=10.0, help="consistency: weight of the KL term")
    train.add_argument("--consistency-eta", type=_float, default=0.5, help="consistency: weight of the entropy term")
    train.add_argument(
        "--smoothadv-eps", type=_float, default=0.5, help="smoothadv: L2 radius of the attack on the smoothed classifier"
    )
    train.add_argument("--smoothadv-steps", type=int, default=1, help="smoothadv: attack steps per batch")
    train.add_argument("--epochs", type=int, default=30, help="passes over the training split")
    train.add_argument("--batch-size", type=int, default=64, help="examples per optimisation step")
    train.add_argument("--lr", type=_float, default=1e-3, help="Adam's learning rate (cosine schedule)")
    train.add_argument("--seed", type=_nonneg_int, default=0, help="seed of initialisation, order and noise")
    train.add_argument("--data-dir", type=Path, help="directory of the data set's files (fashion-mnist)")
    _run_dir_options(train, "runs/model")

    for command, families, about in (
        ("certify", ("smoothing", "bound", "exact", "sdp"), "certify a model on a data split"),
        ("attack", ("attack",), "attack a model (an upper limit on robust accuracy, never a certificate)"),
    ):
        sub = commands.add_parser(command, parents=[common], help=about, description=about)
        per_method = sub.add_subparsers(dest="method", metavar="METHOD", parser_class=Parser)
        per_method.required = True
        for method in all_methods():
            if method.family not in families:
                continue
            mp = per_method.add_parser(
                method.name, parents=[common], help=method.summary, description=f"{method.label}: {method.summary}"
            )
            _run_options(mp, f"runs/{command}")
            _method_options(mp, method.params, method.norms)

    evaluate = commands.add_parser("evaluate", parents=[common], help="the report card from a TOML config")
    evaluate.add_argument("--config", type=Path, required=True, help="the report card's TOML config")
    _run_dir_options(evaluate, "runs/evaluate")
    evaluate.add_argument("--ray-address", help="run on a Ray cluster: 'auto' or HOST:PORT")
    evaluate.add_argument("--workers", type=_positive_int, help="start a local Ray with N worker CPUs")

    report = commands.add_parser("report", parents=[common], help="re-render run or evaluate directories")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="DIR")

    demo = commands.add_parser("demo", parents=[common], help="the main job on the embedded default (digits)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--quick", action="store_true", help="a tiny variant, for tests")
    from robustcert.verify.cli import add_verify_parser

    add_verify_parser(commands, common)
    return parser


def _set_threads(threads: int) -> None:
    """Set torch's thread count once for the whole process (never flipped per example)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (e.g. main() called twice in tests)
        pass


def _cmd_train(ns: argparse.Namespace) -> int:
    from robustcert.data import load_dataset
    from robustcert.domain import InputDomain
    from robustcert.jobs import prepare_training_dir
    from robustcert.runs.engine import check_out_dir
    from robustcert.train import train_model
    from robustcert.train.factory import make_loss

    loss, params = make_loss(
        ns.method, sigma=ns.sigma, eps=ns.eps, norm=ns.norm, pgd_steps=ns.pgd_steps,
        noise_samples=ns.noise_samples, consistency_lambda=ns.consistency_lambda,
        consistency_eta=ns.consistency_eta, smoothadv_eps=ns.smoothadv_eps, smoothadv_steps=ns.smoothadv_steps,
        schedule=ns.schedule, ramp_start=ns.ramp_start, ramp_end=ns.ramp_end, kappa_end=ns.kappa_end,
        ibp_init=ns.ibp_init, shi_reg=ns.shi_reg, shi_tol=ns.shi_tol, sabr_lambda=ns.sabr_lambda,
        mtl_alpha=ns.mtl_alpha,
    )
    check_out_dir(ns.out)  # now, not after the first epoch, when the model is first saved
    prepare_training_dir(ns.out, force=ns.force)
    train_data = load_dataset(ns.dataset, "train", ns.data_dir)
    test_data = load_dataset(ns.dataset, "test", ns.data_dir)
    for data in (train_data, test_data):  # zoo models take inputs in [0, 1]
        InputDomain.unit().check_data(
            data.x, f"the data ({data.name}/{data.split})", "zoo models take inputs in [0, 1]: rescale the data"
        )
    _, meta = train_model(
        arch=ns.arch, train_data=train_data, test_data=test_data, loss=loss, method=ns.method,
        method_params=params, out_dir=ns.out, epochs=ns.epochs, batch_size=ns.batch_size, lr=ns.lr,
        seed=ns.seed, resume=ns.resume, grad_clip=ns.grad_clip, command=_train_command(ns),
    )
    acc = meta.get("clean_accuracy")
    acc_text = "n/a" if acc is None else f"{100 * acc:.1f}%"
    print(f"trained {ns.arch} ({ns.method}) on {ns.dataset}: test accuracy {acc_text} -> {ns.out}/model.pt")
    return 0


def _train_command(ns: argparse.Namespace) -> str:
    """The ``robustcert train`` command line that reproduces the model: every option with the value it
    had (defaults included, so the record does not depend on later changes of defaults); switches bare;
    without --resume / --force / --debug / --threads (they do not change the weights)."""
    import shlex

    args = ["train"]
    for key, value in sorted(vars(ns).items()):
        if key in ("command", "resume", "force", "debug", "threads") or value is None or value is False:
            continue
        args.append(f"--{key.replace('_', '-')}" if value is True else f"--{key.replace('_', '-')}={value}")
    return "robustcert " + shlex.join(args)


def _cmd_certify(ns: argparse.Namespace) -> int:
    from robustcert.jobs import certify_run
    from robustcert.methods import get_method
    from robustcert.runs import parse_indices

    method = get_method(ns.method)
    values = {k[len("param_"):]: v for k, v in vars(ns).items() if k.startswith("param_")}
    params = method.make_params(values, cli=True)
    certify_run(
        method=method, params=params, model_dir=_model_spec(ns), dataset=ns.dataset, split=ns.split,
        data_dir=ns.data_dir, limit=ns.limit, indices=parse_indices(ns.indices), seed=ns.seed,
        resume=ns.resume, force=ns.force, out=ns.out, ray_address=ns.ray_address, workers=ns.workers,
    )
    return 0


def _cmd_evaluate(ns: argparse.Namespace) -> int:
    from robustcert.evaluation import run_evaluate
    from robustcert.report.console import print_report_card

    report = run_evaluate(
        ns.config, ns.out, resume=True, force=ns.force, ray_address=ns.ray_address, workers=ns.workers
    )
    return print_report_card(report, ns.out)


def _cmd_report(ns: argparse.Namespace) -> int:
    from robustcert.jobs import rerender

    return max(rerender(d) for d in ns.run_dirs)


def _cmd_demo(ns: argparse.Namespace) -> int:
    from robustcert.evaluation import run_evaluate
    from robustcert.report.console import print_report_card

    config = demo_config(ns.quick)
    print(f"robustcert demo: the report card on digits -> {ns.out}", flush=True)
    return print_report_card(run_evaluate(config, ns.out), ns.out)


def _cmd_verify(ns: argparse.Namespace) -> int:
    from robustcert.verify.cli import run_verify

    return run_verify(ns)


def demo_config(quick: bool = False) -> Path:
    """The bundled demo config (``quick``: the tiny variant the tests use)."""
    from importlib.resources import files

    return Path(str(files("robustcert") / "configs" / ("demo_quick.toml" if quick else "demo.toml")))


COMMANDS = {
    "train": _cmd_train,
    "certify": _cmd_certify,
    "attack": _cmd_certify,
    "evaluate": _cmd_evaluate,
    "report": _cmd_report,
    "demo": _cmd_demo,
    "verify": _cmd_verify,
}


NUMBER_LIST_OPTIONS = ("--input-range", "--mean", "--eps", "--eps-train")  # values that may start with a minus sign


def _join_negative_values(args: list[str]) -> list[str]:
    """``--input-range -1,1`` as ``--input-range=-1,1``: argparse would take ``-1,1`` for an option."""
    out: list[str] = []
    k = 0
    while k < len(args):
        if args[k] in NUMBER_LIST_OPTIONS and k + 1 < len(args) and args[k + 1][:2] in ("-0", "-1", "-2", "-3",
                "-4", "-5", "-6", "-7", "-8", "-9", "-.", "-i"):
            out.append(f"{args[k]}={args[k + 1]}")
            k += 2
            continue
        out.append(args[k])
        k += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit status (0, or 3 when a certificate was found unsound).

    Bad input raises ``SystemExit(2)`` after printing one ``error:`` line; ``--debug`` shows tracebacks."""
    args = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args
    try:
        ns = build_parser().parse_args(args)
        debug = bool(getattr(ns, "debug", False))
        _set_threads(int(getattr(ns, "threads", 1)))
        keep_freed_memory()
        return COMMANDS[ns.command](ns)
    except RobustCertError as exc:
        if debug:
            raise
        _fail(str(exc), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as exc:  # a file or directory the user named cannot be read or written
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}; check the path and its permissions", EXIT_BAD_INPUT)
    except Exception as exc:
        if debug:
            raise
        _fail(
            f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback and report it",
            EXIT_INTERNAL,
        )


def _fail(message: str, status: int) -> NoReturn:
    first = " ".join(message.split())  # one line, whatever the message held
    print(f"error: {first}", file=sys.stderr, flush=True)
    raise SystemExit(status)


if __name__ == "__main__":
    raise SystemExit(main())
