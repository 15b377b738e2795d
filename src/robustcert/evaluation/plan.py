"""The report card's plan: every (model, method, norm) run the config asks for, plus the PGD runs that
check every deterministic certificate."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from robustcert.errors import RobustCertError
from robustcert.evaluation.config import EvaluateConfig, MethodConfig, method_params
from robustcert.methods import Params, get_method


@dataclass
class PlannedRun:
    """One run of the report card; ``dir`` is relative to the evaluate directory."""

    model: str
    method: str
    norm: str
    eps: list[float]
    limit: int | None
    dir: str
    params: Params

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["params"] = self.params.to_json()
        return out


def plan_runs(config: EvaluateConfig, model_infos: dict[str, Any]) -> tuple[list[PlannedRun], list[str]]:
    """The runs, and a note for each (model, method) that was skipped because it does not apply (e.g.
    smoothing of a model that was not trained with noise and given no sigma). ``model_infos`` maps each
    model name to its :class:`~robustcert.methods.ModelInfo`."""
    methods = list(config.methods)
    if not any(m.name == "pgd" for m in methods):
        methods.append(MethodConfig(name="pgd", values={}))  # always: the check of every certificate
    runs: list[PlannedRun] = []
    skipped: list[str] = []
    for model, info in model_infos.items():
        for mc in methods:
            if mc.models is not None and model not in mc.models:
                continue
            entry = get_method(mc.name)
            for norm in [n for n in config.threats if n in entry.norms]:
                eps = mc.eps or list(config.threats[norm]["eps"])
                params = method_params(entry.name, mc.values, norm, eps)
                try:
                    params = entry.finalize(params, info)
                except RobustCertError as exc:
                    if mc.models is not None:  # asked for this model explicitly: a real error
                        raise
                    skipped.append(f"{entry.name} on {model}: {exc}")
                    continue
                runs.append(
                    PlannedRun(
                        model=model,
                        method=entry.name,
                        norm=norm,
                        eps=eps,
                        limit=mc.limit,
                        dir=str(Path("runs") / model / f"{entry.name}-{norm}"),
                        params=params,
                    )
                )
    return runs, skipped
