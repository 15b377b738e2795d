"""Small models built from every supported op, shared by test_graph.py and test_bounds.py (no tests here)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from robustcert.models.normalize import Normalize
from robustcert.models.zoo import build_model

SHAPE = (1, 8, 8)


class Residual(nn.Module):
    """y = relu(conv(x)); out = y + conv2(y); then relu, flatten, linear (a DAG with a skip connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize([0.5], [0.5])
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(self.norm(x)))
        out = y + self.conv2(y)
        return self.fc(F.relu(out).flatten(1))


class ConstOps(nn.Module):
    """Affine constant ops, a branch difference, an AvgPool with ceil mode / excluded padding, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(2 * 5 * 5, 12)
        self.fc2 = nn.Linear(12, 4)
        self.register_buffer("shift", torch.linspace(-0.2, 0.2, 64).view(1, 1, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * 2.0 - 0.5) / 1.5 + self.shift
        z = 0.3 - z
        h = self.pool(torch.tanh(self.conv(z)))
        h = self.drop(h.view(h.size(0), -1))
        a = self.fc1(h)
        b = torch.relu(a) - 0.5 * a
        return self.fc2(torch.relu(b)) + 0.1


def _random_bn(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    c = bn.num_features
    bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
    bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=gen) * 0.5 + 1)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.1)


def _bn_pool(gen: torch.Generator) -> nn.Module:
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Identity(),
        nn.Linear(16, 5),
    )
    _random_bn(m[1], gen)
    _random_bn(m[6], gen)
    return m


def _sig_tanh() -> nn.Module:
    return nn.Sequential(
        Normalize([0.4], [0.3]),
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.Sigmoid(),
        nn.Linear(16, 12),
        nn.Tanh(),
        nn.Linear(12, 4),
    )


def _handmade(gen: torch.Generator) -> nn.Module:
    """A Graph written by hand (identity and reshape nodes, which the front ends fold away)."""
    from robustcert.graph import Graph, GraphNet, Node

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) / shape[-1] ** 0.5).contiguous()

    nodes = [
        Node("x", "input", ()),
        Node("id", "identity", ("x",)),
        Node("r", "reshape", ("id",), {"shape": (4, 16)}),
        Node("l1", "linear", ("r",), {"weight": w(6, 16), "bias": w(6)}),
        Node("a1", "relu", ("l1",)),
        Node("f", "flatten", ("a1",)),
        Node("l2", "linear", ("f",), {"weight": w(10, 24), "bias": w(10)}),
        Node("a2", "relu", ("l2",)),
        Node("l3", "linear", ("a2",), {"weight": w(3, 10), "bias": None}),
    ]
    return GraphNet(Graph(nodes, "l3", SHAPE))


def make_model(name: str, seed: int = 0) -> nn.Module:
    """A fresh model in eval mode; ``trained`` is an MLP fitted for a moment on scikit-learn digits."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "mlp":
        m = build_model("mlp-2x64", SHAPE, 10, [0.5], [0.25])
    elif name == "cnn":
        m = build_model("cnn-small", SHAPE, 10, [0.5], [0.3])
    elif name == "residual":
        m = Residual()
    elif name == "bn_pool":
        m = _bn_pool(gen)
    elif name == "sig_tanh":
        m = _sig_tanh()
    elif name == "const_ops":
        m = ConstOps()
    elif name == "handmade":
        m = _handmade(gen)
    elif name == "trained":
        return trained_mlp()
    else:
        raise KeyError(name)
    return m.eval()


MODEL_NAMES = ["mlp", "cnn", "residual", "bn_pool", "sig_tanh", "const_ops", "handmade", "trained"]


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return x, torch.tensor(d.target)


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    m = build_model("mlp-2x64", SHAPE, 10, [0.3], [0.3])
    x, y = digits()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(120):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def trained_mlp() -> nn.Module:
    m = build_model("mlp-2x64", SHAPE, 10, [0.3], [0.3])
    m.load_state_dict(_trained_state())
    return m.eval()


def inputs(name: str, n: int = 2, seed: int = 1) -> torch.Tensor:
    """Inputs in [0, 1]: digits for the trained model, uniform random otherwise."""
    if name == "trained":
        return digits()[0][:n].clone()
    return torch.rand((n,) + SHAPE, generator=torch.Generator().manual_seed(seed))
