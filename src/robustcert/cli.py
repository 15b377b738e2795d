"""The ``robustcert`` command (typer). Thin: parses arguments, calls the library, prints.

Every RobustCertError becomes one line on stderr (``error: …``) and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from robustcert.errors import RobustCertError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Certified defenses for PyTorch classifiers."
)

TRAIN_METHODS = ("standard", "gaussian", "pgd", "ibp", "crown-ibp")
CERTIFY_METHODS = ("smoothing", "ibp", "crown", "alpha-crown", "exact")

Limit = Annotated[int | None, typer.Option(help="take only the first K examples of the split")]
Indices = Annotated[str | None, typer.Option(help="explicit example indices, e.g. '0,5,7' or '0-99'")]
Seed = Annotated[int, typer.Option(help="run seed; each example's randomness is seeded by (seed, index)")]
Resume = Annotated[bool, typer.Option("--resume", help="continue a run in --out, skipping finished examples")]
Out = Annotated[Path, typer.Option(help="output directory")]
RayAddress = Annotated[str | None, typer.Option(help="run on a Ray cluster: 'auto' or HOST:PORT")]
Workers = Annotated[int | None, typer.Option(help="start a local Ray with N worker CPUs")]
DataDir = Annotated[Path | None, typer.Option(help="directory of the data set's files (fashion-mnist)")]


def _load_data(name: str, split: str, data_dir: Path | None):  # type: ignore[no-untyped-def]
    from robustcert.data import load_dataset

    return load_dataset(name, split, data_dir)


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="digits | fashion-mnist | npz:PATH")] = "digits",
    arch: Annotated[str, typer.Option(help="mlp-2x64 | mlp-2x256 | cnn-small | cnn-medium")] = "cnn-small",
    method: Annotated[str, typer.Option(help="standard | gaussian | pgd | ibp | crown-ibp")] = "standard",
    sigma: Annotated[float, typer.Option(help="gaussian: noise std in [0,1] pixel units")] = 0.25,
    eps: Annotated[float, typer.Option(help="pgd/ibp/crown-ibp: training budget")] = 0.1,
    norm: Annotated[str, typer.Option(help="pgd: linf | l2")] = "linf",
    pgd_steps: Annotated[int, typer.Option(help="pgd: attack steps per batch")] = 10,
    epochs: Annotated[int, typer.Option()] = 30,
    batch_size: Annotated[int, typer.Option()] = 64,
    lr: Annotated[float, typer.Option()] = 1e-3,
    seed: Seed = 0,
    resume: Resume = False,
    data_dir: DataDir = None,
    out: Out = Path("runs/model"),
) -> None:
    """Train a zoo model and write a model directory (model.pt + model.json), checkpointing every epoch."""
    from robustcert.train import train_model
    from robustcert.train.factory import make_loss

    loss, params = make_loss(method, sigma=sigma, eps=eps, norm=norm, pgd_steps=pgd_steps)
    train_data = _load_data(dataset, "train", data_dir)
    test_data = _load_data(dataset, "test", data_dir)
    _, meta = train_model(
        arch=arch,
        train_data=train_data,
        test_data=test_data,
        loss=loss,
        method=method,
        method_params=params,
        out_dir=out,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        resume=resume,
    )
    acc = meta.get("clean_accuracy")
    typer.echo(f"trained {arch} ({method}) on {dataset}: test accuracy {100 * acc:.1f}% -> {out}/model.pt")


@app.command()
def certify(
    method: Annotated[str, typer.Argument(help="smoothing | ibp | crown | alpha-crown | exact")],
    model: Annotated[Path, typer.Option(help="model directory (model.pt + model.json)")],
    dataset: Annotated[str | None, typer.Option(help="data set (default: the model's)")] = None,
    split: Annotated[str, typer.Option()] = "test",
    sigma: Annotated[
        float | None, typer.Option(help="smoothing: noise std (default: the training sigma)")
    ] = None,
    n0: Annotated[int, typer.Option(help="smoothing: selection samples")] = 100,
    n: Annotated[int, typer.Option(help="smoothing: estimation samples")] = 10_000,
    alpha: Annotated[float, typer.Option(help="smoothing: failure probability")] = 0.001,
    batch: Annotated[int, typer.Option(help="smoothing: noisy samples per forward pass")] = 1000,
    norm: Annotated[str, typer.Option(help="bounds: linf | l2")] = "linf",
    eps: Annotated[
        str, typer.Option(help="bounds: one eps or a comma-separated list")
    ] = "0.01,0.02,0.05,0.1",
    alpha_steps: Annotated[int, typer.Option(help="alpha-crown: optimisation steps")] = 20,
    time_limit: Annotated[float, typer.Option(help="exact: seconds per example and eps")] = 30.0,
    limit: Limit = None,
    indices: Indices = None,
    seed: Seed = 0,
    resume: Resume = False,
    data_dir: DataDir = None,
    ray_address: RayAddress = None,
    workers: Workers = None,
    out: Out = Path("runs/certify"),
) -> None:
    """Certify a model on a data split; writes run.json, results.jsonl, summary.json, curve.png."""
    from robustcert.workflows import certify_run

    certify_run(
        method=method,
        model_dir=model,
        dataset=dataset,
        split=split,
        data_dir=data_dir,
        params={
            "sigma": sigma,
            "n0": n0,
            "n": n,
            "alpha": alpha,
            "batch": batch,
            "norm": norm,
            "eps": eps,
            "alpha_steps": alpha_steps,
            "time_limit": time_limit,
        },
        limit=limit,
        indices=indices,
        seed=seed,
        resume=resume,
        out=out,
        ray_address=ray_address,
        workers=workers,
    )


@app.command()
def attack(
    method: Annotated[str, typer.Argument(help="pgd")],
    model: Annotated[Path, typer.Option(help="model directory")],
    norm: Annotated[str, typer.Option(help="linf | l2")] = "linf",
    eps: Annotated[str, typer.Option(help="one eps or a comma-separated list")] = "0.05,0.1",
    steps: Annotated[int, typer.Option()] = 50,
    restarts: Annotated[int, typer.Option()] = 3,
    dataset: Annotated[str | None, typer.Option()] = None,
    split: Annotated[str, typer.Option()] = "test",
    limit: Limit = None,
    indices: Indices = None,
    seed: Seed = 0,
    resume: Resume = False,
    data_dir: DataDir = None,
    ray_address: RayAddress = None,
    workers: Workers = None,
    out: Out = Path("runs/attack"),
) -> None:
    """Attack a model with PGD; rows carry attack_success and adv_margin."""
    from robustcert.workflows import certify_run

    if method != "pgd":
        raise RobustCertError(f"unknown attack {method!r}; available: pgd")
    certify_run(
        method="pgd",
        model_dir=model,
        dataset=dataset,
        split=split,
        data_dir=data_dir,
        params={"norm": norm, "eps": eps, "steps": steps, "restarts": restarts},
        limit=limit,
        indices=indices,
        seed=seed,
        resume=resume,
        out=out,
        ray_address=ray_address,
        workers=workers,
    )


@app.command()
def evaluate(
    config: Annotated[Path, typer.Option(help="the report card's TOML config")],
    out: Out = Path("runs/evaluate"),
    ray_address: RayAddress = None,
    workers: Workers = None,
) -> int:
    """The report card: clean vs certified accuracy per method and budget, PGD upper limits, attacks on
    every certificate, latency. Exits with status 3 if any certificate was broken."""
    from robustcert.workflows import evaluate_and_print

    return evaluate_and_print(config, out, ray_address=ray_address, workers=workers)


@app.command()
def report(run_dirs: Annotated[list[Path], typer.Argument(help="run or evaluate directories")]) -> int:
    """Re-render summaries, curves and report cards from existing rows, without recomputing."""
    from robustcert.workflows import rerender

    status = 0
    for run_dir in run_dirs:
        status = max(status, rerender(run_dir))
    return status


@app.command()
def demo(
    out: Out = Path("runs/demo"), quick: Annotated[bool, typer.Option(help="smaller, for tests")] = False
) -> int:
    """The main job on the embedded default (digits): train two models, then the whole report card."""
    from robustcert.workflows import run_demo

    return run_demo(Path(out), quick=quick)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and return its exit status (3 = unsound certificates found); bad input →
    one line on stderr and SystemExit(2)."""
    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except RobustCertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise


if __name__ == "__main__":
    raise SystemExit(main())
