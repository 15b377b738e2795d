"""The report card (``robustcert evaluate``): config → plan → runs → checks → latency → report."""

from robustcert.evaluation.config import EvaluateConfig, load_config, validate_config
from robustcert.evaluation.runner import run_evaluate

__all__ = ["EvaluateConfig", "load_config", "run_evaluate", "validate_config"]
