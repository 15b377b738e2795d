"""Training loops: one loop (``loop.train_model``), a pluggable loss per method (``losses``,
``losses_robust``, ``losses_smoothing``), and the table of methods by name (``factory.TRAIN_REGISTRY``)."""

from robustcert.seeding import derived_seed
from robustcert.train.loop import accuracy, train_model
from robustcert.train.losses import GaussianLoss, LossContext, StandardLoss
from robustcert.train.losses_smoothing import ConsistencyLoss, SmoothAdvLoss

__all__ = [
    "ConsistencyLoss",
    "GaussianLoss",
    "LossContext",
    "SmoothAdvLoss",
    "StandardLoss",
    "accuracy",
    "derived_seed",
    "train_model",
]
