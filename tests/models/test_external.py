"""Users' own ResNets: arch strings, torchvision and timm models under torchvision's names, checkpoints in both
formats (bare, wrapped, DDP-prefixed) and every refusal as one line."""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.models import (
    ARCH_CHOICES,
    TimmResNet,
    build_external,
    build_resnet,
    external_arch,
    load_backbone,
    parse_arch,
)

TORCHVISION_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")


def save(model: torch.nn.Module, path, fmt: str) -> None:
    """Write `model`'s weights as users do: safetensors, a bare torch state dict, or wrapped (and DDP-prefixed)."""
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    if fmt == "safetensors":
        save_file(state, str(path))
    elif fmt == "torch":
        torch.save(state, path)
    elif fmt == "state_dict":
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:  # a DistributedDataParallel model's state dict, under "model"
        torch.save({"model": {f"module.{key}": value for key, value in state.items()}, "step": 10}, path)


def one_line(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


FORMATS = [("safetensors", "safetensors"), ("torch", "pt"), ("state_dict", "pth"), ("ddp", "pt")]


CASES = [("torchvision:resnet18", *f) for f in FORMATS] + [("torchvision:resnet50", *f) for f in FORMATS[::3]]


@pytest.mark.parametrize("arch, fmt, suffix", CASES, ids=[f"{a[12:]}-{f}" for a, f, _ in CASES])
def test_torchvision_checkpoint_round_trip(tmp_path, arch, fmt, suffix):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, parse_arch(arch).name)(num_classes=5).eval()
    for module in reference.modules():  # trained-looking BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    path = tmp_path / f"model.{suffix}"
    save(reference, path, fmt)
    loaded = load_backbone(arch, path)
    assert not loaded.training and loaded.fc.out_features == 5
    assert external_arch(loaded) == arch
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    assert load_backbone(arch, path, num_classes=5).fc.out_features == 5


def test_grayscale_torchvision_checkpoint_keeps_its_input_channels(tmp_path):
    model = build_external("torchvision:resnet18", 4, in_channels=1).eval()
    save(model, tmp_path / "gray.safetensors", "safetensors")
    loaded = load_backbone("torchvision:resnet18", tmp_path / "gray.safetensors")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("in_channels", [1, 3])
def test_a_cifar_stem_checkpoint_loads_with_its_stem(tmp_path, in_channels):
    """torchvision's ResNet-18 as CIFAR recipes train it (3x3 stride-1 conv1, no max-pool): same outputs."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    reference.conv1 = torch.nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    reference.maxpool = torch.nn.Identity()
    reference.eval()
    save(reference, tmp_path / "cifar.safetensors", "safetensors")
    loaded = load_backbone("torchvision:resnet18", tmp_path / "cifar.safetensors")
    assert isinstance(loaded.maxpool, torch.nn.Identity) and loaded.conv1.stride == (1, 1)
    x = torch.randn(2, in_channels, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


@pytest.mark.parametrize("name", ["resnet18", "resnet50d"])
def test_timm_model_under_torchvision_names_computes_timm_forward(tmp_path, name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, num_classes=5).eval()
    model = build_external(f"timm:{name}", 5)
    assert isinstance(model, TimmResNet) and all(hasattr(model, attr) for attr in TORCHVISION_NAMES)
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference(x))
    for fmt, suffix in (("safetensors", "safetensors"), ("ddp", "pt")):
        path = tmp_path / f"{name}.{suffix}"
        save(reference, path, fmt)
        loaded = load_backbone(f"timm:{name}", path, num_classes=5)
        assert external_arch(loaded) == f"timm:{name}"
        with torch.no_grad():
            assert torch.equal(loaded(x), reference(x))


def test_every_listed_choice_parses_and_others_are_refused():
    for arch in ARCH_CHOICES:
        if arch.startswith("timm:") and "timm" not in sys.modules:
            pytest.importorskip("timm")
        assert str(parse_arch(arch)) == arch
    for bad in (
        "resnet18",
        "torchvision:vgg16",
        "torchvision:",
        "keras:resnet50",
        "timm:",
        "timm:vit_base_patch16_224",
    ):
        with pytest.raises(ConfigError) as excinfo:
            parse_arch(bad)
        one_line(excinfo, repr(bad), "torchvision:resnet18")


def test_external_arch_names_only_what_build_external_rebuilds():
    with torch.device("meta"):
        assert external_arch(torchvision.models.resnet34(num_classes=3)) == "torchvision:resnet34"
        assert external_arch(torchvision.models.resnext50_32x4d(num_classes=3)) is None
        assert external_arch(torchvision.models.resnet152(num_classes=3)) is None
        assert external_arch(build_resnet("resnet18", 3, 3, 0.125)) is None


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.safetensors"
    save(torchvision.models.resnet18(num_classes=5), path, "safetensors")
    return path


@pytest.mark.parametrize(
    "arch, key",
    [("torchvision:resnet34", "layer1.2.conv1.weight is missing"), ("torchvision:resnet50", "layer1.0.conv1.weight")],
)
def test_checkpoint_of_another_architecture_is_refused(resnet18_checkpoint, arch, key):
    with pytest.raises(CheckpointError) as excinfo:
        load_backbone(arch, resnet18_checkpoint)
    one_line(excinfo, str(resnet18_checkpoint), arch, f"first difference: {key}", "arch it was trained with")


def test_unexpected_keys_are_refused(tmp_path):
    state = torchvision.models.resnet18(num_classes=5).state_dict()
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError) as excinfo:
        load_backbone("torchvision:resnet18", tmp_path / "extra.pt")
    one_line(excinfo, "unexpected extra.weight")


def test_checkpoint_for_another_class_count_is_refused(resnet18_checkpoint):
    with pytest.raises(CheckpointError) as excinfo:
        load_backbone("torchvision:resnet18", resnet18_checkpoint, num_classes=10)
    one_line(excinfo, str(resnet18_checkpoint), "5-class head", "10 classes")


def test_unknown_arch_is_refused_before_the_file_is_read(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load_backbone("torchvision:resnet19", tmp_path / "absent.pt")
    one_line(excinfo, "torchvision:resnet19")


@pytest.mark.parametrize("name", ["absent.pt", "corrupt.pt", "corrupt.safetensors", "truncated.pt", "empty.pt"])
def test_missing_or_corrupt_file_is_refused(tmp_path, name):
    state = torchvision.models.resnet18(num_classes=5).state_dict()
    torch.save(state, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    contents = {"corrupt.pt": b"not a checkpoint" * 8, "corrupt.safetensors": b"not a checkpoint" * 8}
    contents |= {"truncated.pt": data[: len(data) // 2], "empty.pt": b""}
    if name in contents:
        (tmp_path / name).write_bytes(contents[name])
    with pytest.raises(CheckpointError) as excinfo:
        load_backbone("torchvision:resnet18", tmp_path / name)
    one_line(excinfo, str(tmp_path / name))


@pytest.mark.parametrize(
    "content, words",
    [
        (torch.nn.Linear(2, 2), ("weights_only", "state_dict()")),
        ([torch.zeros(2)], ("no state dict of tensors",)),
        ({"epoch": 3, "lr": torch.tensor(0.1), "note": "x"}, ("no state dict of tensors",)),
        ({"layer.weight": torch.zeros(2, 2)}, ("no fc.weight",)),
    ],
    ids=["pickled-model", "list", "not-tensors", "no-fc"],
)
def test_files_that_hold_no_resnet_state_dict_are_refused(tmp_path, content, words):
    torch.save(content, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError) as excinfo:
        load_backbone("torchvision:resnet18", tmp_path / "odd.pt")
    one_line(excinfo, str(tmp_path / "odd.pt"), *words)


@pytest.mark.parametrize("library, hint", [("timm", "pip install dynacnn[timm]"), ("torchvision", "pip install")])
def test_missing_library_is_named_with_the_install_command(monkeypatch, library, hint):
    monkeypatch.setitem(sys.modules, library, None)  # makes `import library` raise ImportError
    with pytest.raises(ConfigError) as excinfo:
        build_external(f"{library}:resnet18", 5)
    one_line(excinfo, f"{library}:resnet18", library, hint)
