"""The exported MS-CNN on ONNX Runtime executes every policy family like `EarlyExitMSCNN.route`: the same exit
stages, classes computed per stage, MACs and (within 1e-4) probabilities."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from dynacnn import runtime
from dynacnn.export import export_mscnn, mscnn_policy
from dynacnn.mscnn.policies import cap_fc_policy, full_policy, pthp_policy, tp_policy
from dynacnn.mscnn.routed import CapConvPolicy, EarlyExitMSCNN

from .helpers import MS_CLASSES, MS_SHAPE, MS_STAGES

TOP_C = 2


def held_out(n: int = 120, seed: int = 4) -> torch.Tensor:
    return torch.randn(n, *MS_SHAPE, generator=torch.Generator().manual_seed(seed))


def midpoints(values: torch.Tensor, quantile: float) -> float:
    """A threshold halfway between two neighbouring observed values near `quantile` (never equal to one)."""
    ordered = values.sort().values
    index = int(quantile * (len(ordered) - 1))
    return float((ordered[index] + ordered[index + 1]) / 2)


def thresholds(network, x: torch.Tensor) -> tuple[float, ...]:
    """Per stage 1..N-1, a D_ct that the top-C confidence of about a third of the images exceeds."""
    with torch.no_grad():
        logits = network(x)
    return tuple(midpoints(out.softmax(1).topk(TOP_C, 1).values.sum(1), 0.66) for out in logits[:-1])


def policies(network, x) -> dict:
    d_ct = thresholds(network, x)
    return {
        "full": (full_policy(MS_STAGES, MS_CLASSES), "image"),
        "TP": (tp_policy(d_ct, MS_STAGES, MS_CLASSES, TOP_C), "image"),
        "CAP_FC-image": (cap_fc_policy((4, 2), MS_STAGES, MS_CLASSES), "image"),
        "CAP_FC-batch": (cap_fc_policy((4, 2), MS_STAGES, MS_CLASSES), "batch"),
        "PTHP-image": (pthp_policy(d_ct, (0.9, 0.95), MS_STAGES, MS_CLASSES, TOP_C), "image"),
        "PTHP-batch": (pthp_policy(d_ct, (0.9, 0.95), MS_STAGES, MS_CLASSES, TOP_C), "batch"),
        "CAP_CONV": (CapConvPolicy((2, 3), 3), "image"),
        "CAP_CONV-ignorant": (CapConvPolicy((2, 3), 5, smart=False), "image"),
    }


def with_policy(export_dir, tmp_path, policy, fc_rows, filter_order):
    copy = shutil.copytree(export_dir, tmp_path / "export")
    spec = json.loads((copy / "routing.json").read_text())
    spec["policy"] = mscnn_policy(policy, fc_rows, filter_order)
    (copy / "routing.json").write_text(json.dumps(spec))
    return copy


FAMILIES = ("full", "TP", "CAP_FC-image", "CAP_FC-batch", "PTHP-image", "PTHP-batch", "CAP_CONV", "CAP_CONV-ignorant")


@pytest.mark.parametrize("family", FAMILIES)
def test_runtime_matches_the_pytorch_policy(mscnn_network, mscnn_export, filter_order, tmp_path, family):
    x = held_out()
    policy, fc_rows = policies(mscnn_network, x)[family]
    model = EarlyExitMSCNN(mscnn_network, policy, fc_rows=fc_rows, filter_order=filter_order, input_shape=MS_SHAPE)
    expected = model.route(x)
    got = runtime.load(with_policy(mscnn_export, tmp_path, policy, fc_rows, filter_order)).run(x.numpy())
    np.testing.assert_allclose(got.probs, expected.probs.numpy(), rtol=0, atol=1e-4)
    assert (got.probs.argmax(1) == expected.probs.argmax(1).numpy()).all()
    assert (got.exit_stage == expected.exit_stage.numpy()).all()
    assert (got.kept == expected.kept.numpy()).all()
    assert (got.macs == expected.macs.numpy()).all()
    if family.startswith(("TP", "PTHP")):  # images really leave early, at more than one stage
        assert len(np.unique(got.exit_stage)) > 1 and (got.exit_stage < MS_STAGES - 1).any()
    if family.startswith(("CAP_FC", "PTHP")):  # and later stages really compute fewer classes
        assert (got.kept[:, 1:][got.kept[:, 1:] > 0] < MS_CLASSES).any()


def test_policy_export_holds_only_the_graphs_it_runs(mscnn_network, filter_order, tmp_path):
    model = EarlyExitMSCNN(mscnn_network, CapConvPolicy((2, 2), 3), filter_order=filter_order, input_shape=MS_SHAPE)
    spec = export_mscnn(model, tmp_path / "cap_conv", MS_SHAPE)
    assert [sorted(stage["graphs"]) for stage in spec["stages"]] == [["body", "head"]] + [["head", "last", "trunk"]] * 2
    x = held_out(40)
    got = runtime.load(tmp_path / "cap_conv").run(x.numpy())
    np.testing.assert_allclose(got.probs, model(x).numpy(), rtol=0, atol=1e-4)
    for path in (tmp_path / "cap_conv").glob("*.onnx"):
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph, full_check=True)
        assert not [n for n in graph.graph.node if n.op_type == "BatchNormalization"], path.name
