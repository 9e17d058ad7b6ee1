"""Exporting a static classifier (the base model, the compute-matched ResNet) as one ONNX graph, the same way as
the routed models' parts (BatchNorm folded, dynamic batch, dynamo exporter), so their ONNX Runtime speeds compare."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynacnn.export.parts import Part, export_form, export_parts, one_image_macs
from dynacnn.export.spec import header, output_dir, write_spec


def export_plain(
    model: nn.Module,
    out: str | Path,
    input_shape: Sequence[int],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write `model.onnx` (x -> logits) and routing.json into `out`; returns the spec (`dynacnn.runtime.load`)."""
    out = output_dir(out)
    module = export_form(model)
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        num_classes = module(x).shape[1]
    spec = header("plain", num_classes, input_shape, mean, std, class_names)
    part = Part("model", module, ("x",), (x,), ({0: "batch"},))
    export_parts([part], out)
    spec["parts"] = {"model": part.entry(macs=one_image_macs(part))}
    return write_spec(out, spec)
