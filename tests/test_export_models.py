"""torch.export (.pt2) and TorchScript files -> graph IR (robustcert.graph.export_frontend).

Each model is saved in every supported form, loaded with trust, and must give the same outputs as the
module and the same IR (ops, hence CROWN bounds) as the torch.fx front end gives for the module itself.
"""

from __future__ import annotations

import copy
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustcert.bounds import margin_lower
from robustcert.errors import RobustCertError
from robustcert.graph import GraphNet, graph_from_module
from robustcert.graph.export_frontend import load_exported
from robustcert.models.zoo import build_model

SHAPE = (1, 8, 8)

# making the files: this torch deprecates torch.jit.trace/script/save, and torch.export.save warns
# about a pytree internal; neither is robustcert's
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 32), nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(self.flat(x))))))


class ResidualCNN(nn.Module):
    """Conv + BatchNorm + MaxPool, a residual add, average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(torch.relu(self.bn(self.conv1(x))))
        h = torch.relu(h + self.conv2(h))
        return self.fc(torch.flatten(self.avg(h), 1))


class Mixed(nn.Module):
    """LeakyReLU, GELU, sigmoid, slicing, cat, pad, permute, dropout and constant arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.act = nn.LeakyReLU(0.1)
        self.gelu = nn.GELU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 5 * 3, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.conv(x))  # [4, 3, 3]
        h = torch.cat([h[:, :2], h[:, 2:] * 0.5], dim=1)
        h = F.pad(h, (0, 0, 1, 1))  # [4, 5, 3]
        h = self.gelu(h.permute(0, 1, 3, 2))  # [4, 3, 5]
        h = torch.sigmoid(h) - 0.25
        return (self.fc(self.drop(h.flatten(1))) + 1.0) / 2.0


class GlobalPool(nn.Module):
    """Bias-free conv + BatchNorm residual, ceil-mode padded max pool, global average pool (a mean in
    decomposed programs), view(x.size(0), -1), BatchNorm1d, Unflatten and narrow."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.pool, self.bn1d = nn.AdaptiveAvgPool2d(1), nn.BatchNorm1d(8)
        self.unflatten, self.fc = nn.Unflatten(1, (2, 4)), nn.Linear(6, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(h + self.b2(self.c2(h)))
        h = self.pool(F.max_pool2d(h, 3, stride=2, padding=1, ceil_mode=True))
        h = self.bn1d(h.view(h.size(0), -1))
        return self.fc(torch.narrow(self.unflatten(h).flatten(1), 1, 1, 6))


class SoftmaxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10))
        self.head = nn.Softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class InPlace(nn.Module):
    """In-place ops (kept by torch.export's default IR and by TorchScript)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 16), nn.Linear(16, 10)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.fc1(x.flatten(1)))
        h += 0.5
        h = h.mul_(2.0)
        return self.fc2(h)


class Tokens(nn.Module):
    """nn.Linear on a 3-D tensor (decomposed programs merge the batch into the rows of an mm)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1, 2)))).flatten(1)


class Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return torch.abs(self.fc(x.flatten(1)))


class MixesBatch(nn.Module):
    """Reshapes pairs of examples into one row: not a per-example model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.reshape(-1, 128))


def _seeded(make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = make()
    for mod in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return model.eval()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": MLP,
    "residual_cnn": ResidualCNN,
    "mixed": Mixed,
    "global_pool": GlobalPool,
    "softmax_head": SoftmaxHead,
    "inplace": InPlace,
    "zoo_cnn_small": lambda: build_model("cnn-small", SHAPE, 10, [0.5], [0.3]),
}

FORMATS = ["pt2", "pt2_batch1", "pt2_decomposed", "ts_trace", "ts_script"]


def _save(model: nn.Module, fmt: str, path: Path, shape: tuple[int, ...] = SHAPE) -> Path:
    x = torch.rand((2,) + shape)
    if fmt == "pt2":
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    elif fmt == "pt2_batch1":
        program = torch.export.export(model, (x[:1],))
    elif fmt == "pt2_decomposed":
        dims = ({0: torch.export.Dim("batch")},)
        program = torch.export.export(model, (x,), dynamic_shapes=dims).run_decompositions()
    elif fmt == "ts_trace":
        torch.jit.save(torch.jit.trace(model, (x,)), str(path.with_suffix(".pt")))
        return path.with_suffix(".pt")
    else:
        torch.jit.save(torch.jit.script(model), str(path.with_suffix(".ts")))
        return path.with_suffix(".ts")
    torch.export.save(program, str(path.with_suffix(".pt2")))
    return path.with_suffix(".pt2")


def _load(file: Path, shape: tuple[int, ...] = SHAPE) -> GraphNet:
    is_script = file.suffix in (".pt", ".ts")
    return load_exported(file, trust=True, input_shape=shape if is_script else None)


def _batch(n: int = 4, seed: int = 1) -> Tensor:
    return torch.rand((n,) + SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------ same model, same IR


def _cases() -> list[object]:
    cases: list[object] = []
    for name in MODELS:
        for fmt in FORMATS:
            if name.startswith("zoo") and fmt == "ts_script":
                # robustcert's Normalize declares its buffers as string annotations, which
                # torch.jit.script cannot resolve (the trace of a zoo model is tested instead)
                cases.append(
                    pytest.param(name, fmt, marks=pytest.mark.skip(reason="Normalize is not scriptable"))
                )
            else:
                cases.append((name, fmt))
    return cases


@pytest.mark.parametrize(("name", "fmt"), _cases())
def test_loaded_file_matches_module(name: str, fmt: str, tmp_path: Path) -> None:
    model = _seeded(MODELS[name])
    net = _load(_save(model, fmt, tmp_path / name))

    x = _batch()
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x)
        got = net(x)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=0, atol=1e-6), float((got - want).abs().max())

    ref = graph_from_module(model, SHAPE)
    assert [n.op for n in net.ir.nodes] == [n.op for n in ref.nodes]
    assert net.ir.stripped == ref.stripped
    y = torch.tensor([0, 3, 7, 9])
    lower = margin_lower(net, x, y, eps=0.01, method="crown")
    expected = margin_lower(model, x, y, eps=0.01, method="crown")
    assert torch.allclose(lower, expected, rtol=0, atol=1e-9), float(
        (lower - expected).abs().nan_to_num().max()
    )


def test_softmax_is_stripped_and_noted(tmp_path: Path) -> None:
    net = _load(_save(_seeded(SoftmaxHead), "pt2", tmp_path / "m"))
    assert net.ir.stripped == "softmax"
    assert any("Softmax" in note and "stripped" in note for note in net.ir.notes)
    out = net.ir.forward(_batch())
    assert not torch.allclose(out.sum(1), torch.ones(4, dtype=torch.float64))  # logits, not probabilities


def test_zoo_normalize_becomes_one_normalize_node(tmp_path: Path) -> None:
    model = _seeded(MODELS["zoo_cnn_small"])
    net = _load(_save(model, "pt2", tmp_path / "zoo"))
    ops = [n.op for n in net.ir.nodes]
    assert ops[:3] == ["input", "normalize", "conv2d"]
    node = net.ir.nodes[1]
    assert torch.equal(node.params["mean"], torch.tensor([0.5], dtype=torch.float64))
    assert torch.equal(node.params["std"], torch.tensor([0.3], dtype=torch.float32).double())


@pytest.mark.parametrize("fmt", ["pt2", "pt2_decomposed"])
def test_linear_on_3d_input(fmt: str, tmp_path: Path) -> None:
    model = _seeded(Tokens)
    shape = (2, 3, 8)
    net = _load(_save(model, fmt, tmp_path / "tok", shape), shape)
    ref = graph_from_module(model, shape)
    assert [n.op for n in net.ir.nodes] == [n.op for n in ref.nodes]
    x = torch.rand((3,) + shape, dtype=torch.float64)
    assert torch.allclose(net(x), copy.deepcopy(model).double()(x), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("fmt", ["pt2", "ts_trace"])
def test_untrusted_file_is_refused_without_loading(fmt: str, tmp_path: Path, monkeypatch) -> None:
    file = _save(_seeded(MLP), fmt, tmp_path / "m")

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was loaded")

    monkeypatch.setattr(torch.export, "load", boom)
    monkeypatch.setattr(torch.jit, "load", boom)
    with pytest.raises(RobustCertError) as err:
        load_exported(file, trust=False, input_shape=SHAPE)
    msg = str(err.value)
    assert "can run code" in msg and "--trust-model-file" in msg and "ONNX" in msg and str(file) in msg
    assert "\n" not in msg


@pytest.mark.parametrize("fmt", ["pt2", "ts_script"])
def test_truncated_file_is_refused(fmt: str, tmp_path: Path) -> None:
    file = _save(_seeded(MLP), fmt, tmp_path / "m")
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(RobustCertError) as err:
        load_exported(file, trust=True, input_shape=SHAPE)
    assert str(file) in str(err.value) and "truncated" in str(err.value) and "\n" not in str(err.value)


def test_damaged_program_inside_a_valid_zip_is_refused(tmp_path: Path) -> None:
    good = _save(_seeded(MLP), "pt2", tmp_path / "m")
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, b"{not json" if item.filename.endswith("models/model.json") else data)
    with pytest.raises(RobustCertError) as err:
        load_exported(bad, trust=True)
    assert "could not load the torch.export program" in str(err.value) and str(bad) in str(err.value)
    assert "\n" not in str(err.value)


def test_wrong_kinds_of_file_are_refused(tmp_path: Path) -> None:
    noise = tmp_path / "noise.pt2"
    noise.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(RobustCertError, match="not a torch.export"):
        load_exported(noise, trust=True)
    state = tmp_path / "state.pt"
    torch.save(_seeded(MLP).state_dict(), state)
    with pytest.raises(RobustCertError, match="torch.save"):
        load_exported(state, trust=True)
    with pytest.raises(RobustCertError, match="does not exist"):
        load_exported(tmp_path / "missing.pt2", trust=True)


@pytest.mark.parametrize("fmt", ["pt2", "pt2_decomposed", "ts_trace"])
def test_unsupported_op_names_the_node(fmt: str, tmp_path: Path) -> None:
    file = _save(_seeded(Unsupported), fmt, tmp_path / "m")
    with pytest.raises(RobustCertError) as err:
        _load(file)
    msg = str(err.value)
    assert re.search(r"unsupported op at node 'abs(_\d+)?' \(target 'aten\.abs\.default'", msg), msg
    assert "supported ops:" in msg and "conv2d" in msg and "\n" not in msg


@pytest.mark.parametrize("fmt", ["pt2_batch1", "ts_trace"])
def test_batch_mixing_is_refused(fmt: str, tmp_path: Path) -> None:
    model = _seeded(MixesBatch)
    x = torch.rand(2, *SHAPE)
    if fmt == "pt2_batch1":  # exported with batch 2 so that the reshape merges the two examples
        file = tmp_path / "m.pt2"
        torch.export.save(torch.export.export(model, (x,)), str(file))
    else:
        file = tmp_path / "m.pt"
        torch.jit.save(torch.jit.trace(model, (x,)), str(file))
    with pytest.raises(RobustCertError, match="mixes the batch dimension"):
        _load(file)


def test_training_mode_program_is_refused(tmp_path: Path) -> None:
    model = _seeded(ResidualCNN).train()
    file = tmp_path / "train.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, *SHAPE),)), str(file))
    with pytest.raises(RobustCertError, match=r"model\.eval\(\)"):
        load_exported(file, trust=True)


def test_torchscript_needs_input_shape(tmp_path: Path) -> None:
    file = _save(_seeded(MLP), "ts_trace", tmp_path / "m")
    with pytest.raises(RobustCertError, match="input_shape"):
        load_exported(file, trust=True)


def test_input_shape_is_checked_against_the_program(tmp_path: Path) -> None:
    file = _save(_seeded(MLP), "pt2", tmp_path / "m")
    with pytest.raises(RobustCertError, match="does not match"):
        load_exported(file, trust=True, input_shape=(1, 4, 16))
    assert load_exported(file, trust=True, input_shape=SHAPE).input_shape == SHAPE
