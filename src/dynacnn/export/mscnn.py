"""Exporting an early-exit MS-CNN: the DWT, every stage's body and head (and the pruned variants its policy needs)
as ONNX graphs, and the policy (TP, CAP_FC, PTHP, CAP_CONV or full) as JSON.

Graphs (stage numbers from 1): `dwt.onnx` (x -> bands), `stage<i>_body.onnx` (bands -> pooled features),
`stage<i>_head.onnx` (concatenated features -> logits); for FC-row pruning (CAP_FC, PTHP) from stage 2 on,
`stage<i>_rows.onnx` (fc_rows "batch") or `stage<i>_pairs.onnx` (fc_rows "image"); for CAP_CONV from stage 2 on,
`stage<i>_trunk.onnx` (bands -> maps before the last CONV layer) and `stage<i>_last.onnx` (maps, kept filters ->
pooled features). `variants="all"` writes every variant, so that any policy can later be set in routing.json.
routing.json holds the policy's thresholds (D_ct, C, P_th, S_th, stop size, fc_rows; CAP_CONV's P_th, rm and
filter ranking), the stage cost table (`dynacnn.mscnn.costs`) and each constant part's MACs for one image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dynacnn.errors import ConfigError
from dynacnn.export.mscnn_parts import HeadPairs, HeadRows, KeptFilters, StagePart, TrunkPart
from dynacnn.export.parts import Part, export_form, export_parts, one_image_macs
from dynacnn.export.spec import header, output_dir, write_spec
from dynacnn.mscnn.cap_conv import FilterImportance
from dynacnn.mscnn.model import MSCNN
from dynacnn.mscnn.policies import Policy
from dynacnn.mscnn.routed import CapConvPolicy, EarlyExitMSCNN

BATCH = {0: "batch"}
VARIANTS = ("policy", "all")


def mscnn_policy(
    policy: Policy | CapConvPolicy, fc_rows: str = "image", filter_order: FilterImportance | None = None
) -> dict[str, Any]:
    """routing.json's policy block: the family and its settings (CAP_CONV: with the filter ranking of every stage)."""
    if isinstance(policy, CapConvPolicy):
        if filter_order is None:
            raise ConfigError("a CAP_CONV policy needs its filter ranking (filter_order) to be exported")
        return {
            "kind": "CAP_CONV",
            "p_th": [int(p) for p in policy.p_th],
            "rm": int(policy.rm),
            "smart": bool(policy.smart),
            "filter_order": [order.tolist() for order in filter_order.per_class],
            "overall_order": [order.tolist() for order in filter_order.overall],
        }
    return {
        "kind": policy.kind,
        "d_ct": None if policy.d_ct is None else [float(v) for v in policy.d_ct],
        "top_c": int(policy.top_c),
        "p_th": None if policy.p_th is None else [int(p) for p in policy.p_th],
        "s_th": None if policy.s_th is None else [float(v) for v in policy.s_th],
        "stop_size": int(policy.stop_size),
        "fc_rows": fc_rows,
    }


def needed(policy: Policy | CapConvPolicy, fc_rows: str, stage: int, filters: int, variants: str) -> list[str]:
    """The graphs stage `stage` (0-based) gets: what the policy runs, or every variant."""
    if variants == "all":
        extra = ["rows", "pairs"] + (["trunk", "last"] if filters > 1 else [])
        return ["body", "head"] + (extra if stage else [])
    if isinstance(policy, CapConvPolicy):
        return ["trunk", "last", "head"] if stage and policy.rm else ["body", "head"]
    prunes = stage and (policy.p_th is not None or policy.s_th is not None)
    return ["body", "head"] + ([("rows" if fc_rows == "batch" else "pairs")] if prunes else [])


def stage_part(name: str, network: MSCNN, stage: int, bands: torch.Tensor, features: torch.Tensor) -> Part:
    """Graph `name` (body, head, rows, pairs, trunk or last) of stage `stage`, with example inputs."""
    body, head, band = network.bodies[stage], network.heads[stage], network.band_index[stage]
    tag, classes = f"stage{stage + 1}_{name}", network.config.num_classes
    if name == "body":
        return Part(tag, StagePart(body, network.pool, band), ("bands",), (bands,), (BATCH,))
    if name == "head":
        return Part(tag, head, ("features",), (features,), (BATCH,))
    if name == "rows":
        examples = (features, torch.tensor([0, classes - 1]))
        return Part(tag, HeadRows(head), ("features", "classes"), examples, (BATCH, {0: "classes"}))
    if name == "pairs":
        examples = (features, torch.tensor([0, 1, 1]), torch.tensor([0, 1, classes - 1]))
        return Part(
            tag, HeadPairs(head), ("features", "rows", "classes"), examples, (BATCH, {0: "pairs"}, {0: "pairs"})
        )
    if name == "trunk":
        return Part(tag, TrunkPart(body, band), ("bands",), (bands,), (BATCH,))
    keep = torch.arange(max(2, body.last[0].out_channels // 2))
    maps = body.features(bands[:, band])
    return Part(tag, KeptFilters(body.last, network.pool), ("maps", "keep"), (maps, keep), (BATCH, {0: "filters"}))


def stage_parts(network: MSCNN, input_shape: Sequence[int], wanted: list[list[str]]) -> list[Part]:
    """The DWT and every stage's wanted graphs, BatchNorm folded, with example inputs of batch 2."""
    network = export_form(network)
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    parts = [Part("dwt", network.dwt, ("x",), (x,), (BATCH,))]
    with torch.no_grad():
        bands = network.dwt(x)
        pooled: list[torch.Tensor] = []
        for stage, names in enumerate(wanted):
            pooled.append(StagePart(network.bodies[stage], network.pool, network.band_index[stage])(bands))
            features = torch.cat(pooled, 1)
            parts += [stage_part(name, network, stage, bands, features) for name in names]
    return parts


def export_mscnn(
    model: EarlyExitMSCNN,
    out: str | Path,
    input_shape: Sequence[int],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    variants: str = "policy",
) -> dict[str, Any]:
    """Write the MS-CNN's graphs and routing.json (its policy) into `out`; returns the spec (`dynacnn.runtime.load`)."""
    if variants not in VARIANTS:
        raise ConfigError(f"variants {variants!r} must be one of {', '.join(VARIANTS)}")
    network, policy = model.network, model.policy
    out = output_dir(out)
    spec = header("mscnn", network.config.num_classes, input_shape, mean, std, class_names)
    filters = [body.last[0].out_channels for body in network.bodies]
    wanted = [needed(policy, model.fc_rows, stage, f, variants) for stage, f in enumerate(filters)]
    parts = stage_parts(network, spec["input_shape"], wanted)
    export_parts(parts, out)
    by_name = {part.name: part for part in parts}
    costs = model.cost_model(spec["input_shape"])
    spec["dwt"] = by_name["dwt"].entry(macs=one_image_macs(by_name["dwt"]))
    area = network.config.pool**2
    spec["stages"] = [
        {
            "band": network.config.stages[stage].band,
            "filters": filters[stage],
            "pool_area": area,
            "costs": {
                "body_macs": cost.body_macs,
                "hidden_macs": cost.hidden_macs,
                "fc_in": cost.fc_in,
                "filter_macs": cost.filter_macs,
            },
            "graphs": {name: graph_entry(by_name[f"stage{stage + 1}_{name}"]) for name in wanted[stage]},
        }
        for stage, cost in enumerate(costs.stages)
    ]
    spec["policy"] = mscnn_policy(policy, model.fc_rows, model.filter_order)
    return write_spec(out, spec)


def graph_entry(part: Part) -> dict[str, Any]:
    """A stage graph's routing.json entry; graphs that take index inputs have no fixed cost (see the cost table)."""
    macs = one_image_macs(part)
    return part.entry() if macs is None else part.entry(macs=macs)
