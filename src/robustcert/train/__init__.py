"""Training loops: one loop (``loop.train_model``), a pluggable loss per method (``losses``)."""

from robustcert.seeding import derived_seed
from robustcert.train.loop import accuracy, train_model
from robustcert.train.losses import GaussianLoss, LossContext, StandardLoss

__all__ = ["GaussianLoss", "LossContext", "StandardLoss", "accuracy", "derived_seed", "train_model"]
