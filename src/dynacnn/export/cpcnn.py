"""Exporting a routed CP-CNN: S, M and every head H_g as ONNX graphs, and the Alg. 1 / Eq. 3 policy as JSON.

Graphs: `shared.onnx` (x -> features), `clustifier.onnx` (features -> M's logits), `head_<g>.onnx` (features ->
H_g's logits over its members); a single-class hyper-class has no graph (probability 1, zero MACs). Each has a
dynamic batch dimension and its BatchNorms folded. routing.json holds the members, the calibration confusion
matrix, tau, rule and weighting, and the MACs of one image through each part (the model's cost table).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.errors import ConfigError
from dynacnn.export.parts import Part, export_form, export_parts
from dynacnn.export.spec import header, output_dir, write_spec

BATCH = {0: "batch"}


def cpcnn_policy(model: CPCNN) -> dict[str, Any]:
    """routing.json's policy block: hyper-class members, confusion matrix, tau, rule and weighting (Alg. 1, Eq. 3)."""
    return {
        "members": [list(map(int, group)) for group in model.members],
        "confusion": model.confusion.double().cpu().tolist(),
        "tau": float(model.tau),
        "rule": model.rule,
        "weighting": model.weighting,
    }


def cpcnn_parts(model: CPCNN) -> list[Part]:
    """The static parts of `model`, BatchNorm folded, with example inputs of batch 2."""
    shared = export_form(model.shared)
    x = torch.randn(2, *model.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = shared(x)
    parts = [
        Part("shared", shared, ("x",), (x,), (BATCH,)),
        Part("clustifier", export_form(model.clustifier), ("features",), (features,), (BATCH,)),
    ]
    for group, head in enumerate(model.heads):
        if not isinstance(head, TrivialHead):
            parts.append(Part(f"head_{group}", export_form(head), ("features",), (features,), (BATCH,)))
    return parts


def export_cpcnn(
    model: CPCNN,
    out: str | Path,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write the CP-CNN's graphs and routing.json into `out`; returns the spec (`dynacnn.runtime.load` reads it).
    One level only: a nested CP-CNN (`--levels 2`) is refused."""
    if model.depth > 1:
        raise ConfigError("multi-level CP-CNN export is not supported yet; export a one-level model")
    out = output_dir(out)
    spec = header("cpcnn", model.num_classes, model.input_shape, mean, std, class_names)
    parts = {part.name: part for part in cpcnn_parts(model)}
    export_parts(list(parts.values()), out)
    heads = []
    for group, cost in enumerate(model.head_macs.tolist()):
        name = f"head_{group}"
        heads.append(parts[name].entry(macs=int(cost)) if name in parts else {"file": None, "macs": 0})
    spec["parts"] = {
        "shared": parts["shared"].entry(macs=int(model.shared_macs)),
        "clustifier": parts["clustifier"].entry(macs=int(model.clustifier_macs)),
        "heads": heads,
    }
    spec["policy"] = cpcnn_policy(model)
    return write_spec(out, spec)
