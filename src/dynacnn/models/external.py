"""Users' own ResNets: torchvision and timm architectures named by an arch string, and their trained checkpoints.

Arch strings are "torchvision:resnet18|resnet34|resnet50|resnet101" and "timm:<name>" for any model of timm's
ResNet family (`timm.models.resnet`: resnet18, resnet50, resnet50d, ...). The CP-CNN code addresses a backbone by
torchvision's attribute names; `TimmResNet` holds a timm ResNet's submodules under those names. torchvision and
timm are imported only when an arch string asks for them.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from dynacnn.errors import CheckpointError, ConfigError

TORCHVISION_ARCHS = {
    "resnet18": ("BasicBlock", (2, 2, 2, 2)),
    "resnet34": ("BasicBlock", (3, 4, 6, 3)),
    "resnet50": ("Bottleneck", (3, 4, 6, 3)),
    "resnet101": ("Bottleneck", (3, 4, 23, 3)),
}
"""torchvision's ResNets we build, with their block type and stage depths (how `external_arch` recognises one)."""
TIMM_EXAMPLES = ("resnet18", "resnet50", "resnet50d")
ARCH_CHOICES = (*(f"torchvision:{name}" for name in TORCHVISION_ARCHS), *(f"timm:{name}" for name in TIMM_EXAMPLES))
"""Arch strings for completion and help; `parse_arch` also accepts every other timm ResNet name."""
ARCH_HELP = "torchvision:resnet18|resnet34|resnet50|resnet101 or timm:<a timm ResNet name, e.g. resnet50d>"
TIMM_MODULE = "timm.models.resnet"
TIMM_NAMES = {
    "conv1": "conv1",
    "bn1": "bn1",
    "act1": "relu",
    "maxpool": "maxpool",
    "layer1": "layer1",
    "layer2": "layer2",
    "layer3": "layer3",
    "layer4": "layer4",
    "global_pool": "avgpool",
    "fc": "fc",
}
"""timm ResNet child -> torchvision attribute name (only act1 and global_pool differ; neither holds weights)."""
WRAPPERS = ("state_dict", "model", "model_state_dict")
PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes added by DistributedDataParallel / DataParallel and by torch.compile, stripped on load."""


@dataclass(frozen=True)
class ExternalArch:
    """A parsed arch string: the library ("torchvision" or "timm") and its model name."""

    library: str
    name: str

    def __str__(self) -> str:
        return f"{self.library}:{self.name}"


def _require(library: str, arch: str) -> ModuleType:
    """Import torchvision or timm, or say in one line how to install it."""
    try:
        if library == "timm":
            import timm

            return timm
        import torchvision

        return torchvision
    except ImportError:
        hint = "pip install dynacnn[timm]" if library == "timm" else "pip install torchvision"
        raise ConfigError(f"architecture {arch} needs {library}, which is not installed; {hint}") from None


def parse_arch(arch: str) -> ExternalArch:
    """Check an arch string ("torchvision:resnet50", "timm:resnet50d", ...) and split it."""
    library, _, name = arch.partition(":")
    if library == "torchvision" and name in TORCHVISION_ARCHS:
        _require(library, arch)
        return ExternalArch(library, name)
    if library == "timm" and name:
        timm = _require(library, arch)
        base = timm.models.split_model_name_tag(name)[0]
        if timm.is_model(base) and timm.models.model_entrypoint(base).__module__ == TIMM_MODULE:
            return ExternalArch(library, name)
    raise ConfigError(f"unknown architecture {arch!r}; use {ARCH_HELP}")


class TimmResNet(nn.Module):
    """A timm ResNet's submodules under torchvision's names (act1 -> relu, global_pool -> avgpool); timm's forward."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        super().__init__()
        children = dict(model.named_children())
        if set(children) != set(TIMM_NAMES):
            raise ConfigError(
                f"{arch} has modules {', '.join(sorted(set(children) ^ set(TIMM_NAMES)))} that a timm ResNet "
                f"does not; use {ARCH_HELP}"
            )
        for timm_name, name in TIMM_NAMES.items():
            self.add_module(name, children[timm_name])
        self.arch = arch
        self.drop_rate = float(getattr(model, "drop_rate", 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.fc(x)


def build_external(arch: str, num_classes: int, in_channels: int = 3, cifar_stem: bool = False) -> nn.Module:
    """A randomly initialised `arch` (no download) with torchvision's attribute names; `cifar_stem` (torchvision
    only): conv1 3x3 stride 1 and no max-pool, the usual recipe for 32 px images."""
    spec = parse_arch(arch)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    if in_channels < 1:
        raise ConfigError(f"in_channels must be at least 1, got {in_channels}")
    library = _require(spec.library, arch)
    if spec.library == "timm":
        model = library.create_model(spec.name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        return TimmResNet(model, str(spec))
    model = getattr(library.models, spec.name)(weights=None, num_classes=num_classes)
    if in_channels != 3 or cifar_stem:
        kernel, stride = (3, 1) if cifar_stem else (7, 2)
        conv = model.conv1
        model.conv1 = nn.Conv2d(in_channels, conv.out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if cifar_stem:
        model.maxpool = nn.Identity()
    return model


def external_arch(backbone: nn.Module) -> str | None:
    """The arch string of a backbone `build_external` can rebuild (a TimmResNet or torchvision ResNet), else None."""
    if isinstance(backbone, TimmResNet):
        return backbone.arch
    torchvision = _require("torchvision", "a torchvision ResNet")
    if not isinstance(backbone, torchvision.models.ResNet) or (backbone.groups, backbone.base_width) != (1, 64):
        return None
    found = (type(backbone.layer1[0]).__name__, tuple(len(getattr(backbone, f"layer{i}")) for i in range(1, 5)))
    name = next((name for name, signature in TORCHVISION_ARCHS.items() if signature == found), None)
    return None if name is None else f"torchvision:{name}"


def first_conv(backbone: nn.Module) -> nn.Conv2d:
    """The stem's first convolution (conv1 itself, or the first of a deep stem's convolutions)."""
    return next(module for module in backbone.conv1.modules() if isinstance(module, nn.Conv2d))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a `weights_only` torch file: bare, or under "state_dict"/"model"."""
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; pass the path of a .safetensors or torch (.pt/.pth) state dict"
        )
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds objects other than tensors, which torch.load(weights_only=True) refuses to run; "
            "save model.state_dict() instead of the model"
        ) from None
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: corrupt or truncated); save it again"
        ) from None
    if isinstance(state, Mapping):
        state = next((state[key] for key in WRAPPERS if isinstance(state.get(key), Mapping)), state)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} holds no state dict of tensors (bare or under {'/'.join(WRAPPERS)}); save model.state_dict()"
        )
    for prefix in PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return dict(state)


def first_difference(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    """The first key (in the model's order) missing, unexpected or of another shape; None when all match."""
    for key, value in expected.items():
        if key not in found:
            return f"{key} is missing"
        if tuple(found[key].shape) != tuple(value.shape):
            return f"{key} has shape {list(found[key].shape)} instead of {list(value.shape)}"
    extra = next((key for key in found if key not in expected), None)
    return None if extra is None else f"unexpected {extra}"


def load_backbone(arch: str, checkpoint: str | Path, num_classes: int | None = None) -> nn.Module:
    """`arch` with the trained weights of `checkpoint`, in eval mode; the class count comes from fc.weight.

    A torchvision checkpoint whose conv1 is 3x3 has the CIFAR stem (3x3 stride 1, no max-pool); a 7x7 conv1 the
    ImageNet stem (7x7 stride 2 and the 3x3 max-pool). A max-pool holds no weights, so a checkpoint cannot show
    that it was removed: a 7x7 model trained without it must be built in Python (`build_external` and
    `load_state_dict`) and passed to `convert`."""
    parse_arch(arch)
    path = Path(checkpoint)
    state = read_state_dict(path)
    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2:
        raise CheckpointError(f"{path} has no fc.weight, so it is no ResNet classifier; pass a checkpoint of {arch}")
    if num_classes is not None and fc.shape[0] != num_classes:
        raise CheckpointError(
            f"{path} has a {fc.shape[0]}-class head but {num_classes} classes are needed; "
            f"pass a checkpoint trained on these {num_classes} classes"
        )
    stem = state.get("conv1.weight", state.get("conv1.0.weight"))
    in_channels = stem.shape[1] if stem is not None and stem.ndim == 4 else 3
    cifar_stem = arch.startswith("torchvision:") and stem is not None and tuple(stem.shape[2:]) == (3, 3)
    model = build_external(arch, fc.shape[0], in_channels, cifar_stem)
    difference = first_difference(model.state_dict(), state)
    if difference is not None:
        raise CheckpointError(
            f"{path} is not a {arch} checkpoint (first difference: {difference}); pass the arch it was trained with"
        )
    model.load_state_dict(state)
    return model.eval()
