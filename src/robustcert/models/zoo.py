"""Named architectures, sized from a data set's input shape.

Every model is an ``nn.Sequential`` that starts with :class:`Normalize`, so it takes inputs in [0, 1]
and all budgets are in pixel units. Only ops that every certifier supports are used (Linear, Conv2d,
ReLU, Flatten), so each zoo model can be certified by IBP, CROWN, alpha-CROWN and (when small) MILP.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from torch import nn

from robustcert.errors import RobustCertError
from robustcert.models.normalize import Normalize

Shape = tuple[int, int, int]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _mlp(widths: Sequence[int]) -> Callable[[Shape, int], list[nn.Module]]:
    def build(shape: Shape, num_classes: int) -> list[nn.Module]:
        c, h, w = shape
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = c * h * w
        for width in widths:
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes))
        return layers

    return build


def _cnn_small(shape: Shape, num_classes: int) -> list[nn.Module]:
    """Wong & Kolter (2018): conv 16 4x4 s2, conv 32 4x4 s2, fc 100. Padding 1 keeps 8x8 inputs usable."""
    c, h, w = shape
    h1, w1 = _conv_out(h, 4, 2, 1), _conv_out(w, 4, 2, 1)
    h2, w2 = _conv_out(h1, 4, 2, 1), _conv_out(w1, 4, 2, 1)
    return [
        nn.Conv2d(c, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * h2 * w2, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    ]


def _cnn_medium(shape: Shape, num_classes: int) -> list[nn.Module]:
    """Four 3x3 convs (32, 32 s2, 64, 64 s2) then fc 512, fc 512."""
    c, h, w = shape
    h2, w2 = _conv_out(_conv_out(h, 3, 1, 1), 4, 2, 1), _conv_out(_conv_out(w, 3, 1, 1), 4, 2, 1)
    h4, w4 = _conv_out(_conv_out(h2, 3, 1, 1), 4, 2, 1), _conv_out(_conv_out(w2, 3, 1, 1), 4, 2, 1)
    return [
        nn.Conv2d(c, 32, 3, stride=1, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=1, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * h4 * w4, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    ]


ARCHITECTURES: dict[str, Callable[[Shape, int], list[nn.Module]]] = {
    "mlp-2x32": _mlp([32, 32]),
    "mlp-2x50": _mlp([50, 50]),
    "mlp-2x64": _mlp([64, 64]),
    "mlp-2x100": _mlp([100, 100]),
    "mlp-2x256": _mlp([256, 256]),
    "mlp-4x100": _mlp([100, 100, 100, 100]),
    "cnn-small": _cnn_small,
    "cnn-medium": _cnn_medium,
}


def build_model(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Sequential:
    """Build the named architecture for inputs of shape C×H×W in [0, 1].

    The first layer is ``Normalize(mean, std)`` (identity when not given). Raises RobustCertError for an
    unknown name (listing the known ones) or an input too small for the architecture.
    """
    if arch not in ARCHITECTURES:
        raise RobustCertError(
            f"unknown architecture {arch!r}; choose one of: {', '.join(sorted(ARCHITECTURES))}"
        )
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise RobustCertError(f"input_shape must be C,H,W with positive sizes, got {tuple(input_shape)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise RobustCertError(f"num_classes must be >= 2, got {num_classes}")
    channels = shape[0]
    mean = list(mean) if mean is not None else [0.0] * channels
    std = list(std) if std is not None else [1.0] * channels
    if len(mean) != channels or len(std) != channels:
        raise RobustCertError(f"normalize mean/std need {channels} values (one per channel)")
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise RobustCertError(
            f"normalize mean must be finite and std finite and > 0, got mean={mean}, std={std}"
        )
    if arch.startswith("cnn") and min(shape[1:]) < 4:
        raise RobustCertError(f"{arch} needs inputs of at least 4x4 pixels, got {shape[1]}x{shape[2]}")
    layers = ARCHITECTURES[arch]((shape[0], shape[1], shape[2]), num_classes)
    return nn.Sequential(Normalize(mean, std), *layers)
