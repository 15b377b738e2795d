"""The one way robustcert switches a model to eval mode for a while: :func:`eval_mode`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the ``with`` body with ``model`` and every one of its submodules in eval mode.

    Guarantee: on leaving the block — normally, by an exception, or by a generator being closed — every
    module that was in ``model.modules()`` on entry gets back its own ``training`` flag as it was on
    entry, so a model whose submodules were in mixed modes (e.g. a frozen BatchNorm in eval inside a
    training model) is restored exactly, not reset to one mode. Only the ``training`` flags are touched
    (``Module.train`` overrides are not called on restore); the block sees ``model.eval()`` applied.
    Yields ``model`` itself.
    """
    saved = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in saved:
            module.training = training
