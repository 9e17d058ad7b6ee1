"""Saving and loading a CP-CNN (`cpcnn.safetensors` + `cpcnn_model.json`), its backbone's description and its
hyper-classes (`clusters.json`). A nested level (Fig. 1 bottom) is described in place of its head's configuration
name (`levels.py`); its weights, confusion matrix included, are in the same safetensors file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynacnn.cpcnn.compress import build_head, check_backbone, shared_part
from dynacnn.cpcnn.levels import build_heads, describe_heads
from dynacnn.cpcnn.model import CPCNN, check_members
from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.io import ensure_dir, read_json, write_json
from dynacnn.models import ARCH_HELP, ResNet, build_external, build_resnet, external_arch
from dynacnn.models.external import first_conv
from dynacnn.models.layout import MEMORY_FORMATS
from dynacnn.models.resnet import STAGE_BLOCKS
from dynacnn.runs import load_weights, save_weights

FORMAT_VERSION = 1


def backbone_spec(backbone: nn.Module) -> dict[str, Any]:
    """How to rebuild `backbone`'s architecture for `load_cpcnn`: ours ("dynacnn") or an arch string that
    `build_external` takes ("external": torchvision:resnet50, timm:resnet50d, ...) with its stem modifications."""
    check_backbone(backbone)
    num_classes, in_channels = backbone.fc.out_features, first_conv(backbone).in_channels
    if isinstance(backbone, ResNet):
        blocks = tuple(len(getattr(backbone, f"layer{i}")) for i in range(1, 5))
        arch = next((name for name, counts in STAGE_BLOCKS.items() if counts == blocks), None)
        if arch is None:
            raise ConfigError(f"cannot describe a ResNet with stage depths {blocks}; use resnet18 or resnet34")
        return {
            "kind": "dynacnn",
            "arch": arch,
            "width": backbone.conv1.out_channels / 64,
            "stem": backbone.stem,
            "num_classes": num_classes,
            "in_channels": in_channels,
        }
    arch = external_arch(backbone)
    if arch is None:
        raise ConfigError(
            f"cannot describe a backbone {type(backbone).__name__}; use dynacnn's ResNet or build it with "
            f"dynacnn.models.build_external / load_backbone ({ARCH_HELP})"
        )
    conv = backbone.conv1
    return {
        "kind": "external",
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "conv1": conv_spec(conv) if isinstance(conv, nn.Conv2d) else None,
        "maxpool": not isinstance(backbone.maxpool, nn.Identity),
    }


def conv_spec(conv: nn.Conv2d) -> list[int]:
    """A stem convolution as [out_channels, kernel, stride, padding]."""
    return [conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0]]


def build_backbone(spec: Mapping[str, Any]) -> nn.Module:
    """An untrained backbone of the architecture `spec` (from `backbone_spec`, or the older "torchvision" kind)
    describes."""
    kind = spec.get("kind")
    if kind == "dynacnn":
        return build_resnet(spec["arch"], spec["num_classes"], spec["in_channels"], spec["width"], spec["stem"])
    if kind not in ("external", "torchvision"):
        raise CheckpointError(f"unknown backbone description {dict(spec)}; re-run the CP-CNN conversion")
    arch = spec["arch"] if kind == "external" else f"torchvision:{spec['arch']}"
    model = build_external(arch, spec["num_classes"], spec["in_channels"])
    if spec["conv1"] is not None and conv_spec(model.conv1) != list(spec["conv1"]):
        out_channels, kernel, stride, padding = spec["conv1"]
        model.conv1 = nn.Conv2d(spec["in_channels"], out_channels, kernel, stride, padding, bias=False)
    if not spec["maxpool"]:
        model.maxpool = nn.Identity()
    return model


def save_cpcnn(model: CPCNN, out_dir: str | Path, meta: dict[str, Any]) -> None:
    """Write `cpcnn.safetensors` (all weights, the confusion matrices) and `cpcnn_model.json` (structure, policy;
    `meta["heads"]` names each head's configuration, or describes a nested level: `levels.describe_heads`)."""
    out = ensure_dir(out_dir)
    save_weights(out / "cpcnn.safetensors", model)
    write_json(
        out / "cpcnn_model.json",
        {
            "format_version": FORMAT_VERSION,
            **meta,
            "heads": describe_heads(model, meta["heads"]),
            "members": model.members,
            "input_shape": list(model.input_shape),
            "tau": model.tau,
            "rule": model.rule,
            "weighting": model.weighting,
        },
    )


def load_cpcnn(out_dir: str | Path, device: torch.device | str = "cpu") -> CPCNN:
    """The routed CP-CNN saved by `run_cpcnn` / `convert` in `out_dir`, on `device`, in eval mode, at its chosen tau.

    `model(x)` returns class probabilities (B, K); `model.route(x)` the routing details (`RoutedOutput`). The model
    comes in the memory format it was timed in (`cpcnn_model.json`: memory_format); feed it inputs in that format
    too (`x.contiguous(memory_format=torch.channels_last)`) for the measured speed.
    """
    out = Path(out_dir)
    if not (out / "cpcnn_model.json").exists():
        raise CheckpointError(f"{out} holds no CP-CNN (no cpcnn_model.json); make it with `dynacnn cpcnn --out {out}`")
    meta = read_json(out / "cpcnn_model.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{out}/cpcnn_model.json has an unknown format version; re-run the CP-CNN conversion")
    try:
        backbone = build_backbone(meta["backbone"])
        shape, split, members = meta["input_shape"], meta["split"], meta["members"]
        clustifier = build_head(backbone, split, meta["clustifier"], len(members), shape)
        heads = build_heads(backbone, split, meta["heads"], members, shape)
        confusion = torch.zeros(len(members), len(members))
        model = CPCNN(
            shared_part(backbone, split),
            clustifier,
            heads,
            members,
            confusion,
            shape,
            tau=meta["tau"],
            rule=meta["rule"],
            weighting=meta["weighting"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{out}/cpcnn_model.json is incomplete ({exc}); re-run the CP-CNN conversion") from None
    load_weights(out / "cpcnn.safetensors", model)
    fmt = MEMORY_FORMATS.get(meta.get("memory_format"), torch.contiguous_format)
    return model.to(device).to(memory_format=fmt).eval()


def load_clusters(out: Path, num_classes: int, n_clusters: int | None = None) -> tuple[list[list[int]], dict[str, Any]]:
    """Hyper-classes (member lists) and the whole JSON of `out/clusters.json`, checked to partition the classes
    and, with `n_clusters`, to be that many."""
    path = out / "clusters.json"
    clusters = read_json(path)
    try:
        members = [list(entry["classes"]) for entry in clusters["hyper_classes"]]
    except (KeyError, TypeError):
        raise ConfigError(f"{path} has no hyper_classes list; delete it to re-cluster") from None
    if n_clusters is not None and len(members) != n_clusters:
        raise ConfigError(
            f"{path} holds {len(members)} hyper-classes but {n_clusters} were asked for; "
            "delete it to re-cluster, or drop the hyper-class count"
        )
    return check_members(members, num_classes), clusters
