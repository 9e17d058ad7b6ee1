"""The exported CP-CNN on ONNX Runtime routes like the PyTorch CP-CNN: same probabilities, active heads and MACs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from dynacnn import runtime
from dynacnn.export import cpcnn_policy

from .helpers import CP_SHAPE, MEMBERS


def held_out(n: int = 96, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, *CP_SHAPE, generator=torch.Generator().manual_seed(seed))


def with_policy(export_dir, tmp_path, model):
    """A copy of the export whose routing.json carries `model`'s current policy."""
    copy = shutil.copytree(export_dir, tmp_path / "export")
    spec = json.loads((copy / "routing.json").read_text())
    spec["policy"] = cpcnn_policy(model)
    (copy / "routing.json").write_text(json.dumps(spec))
    return copy


@pytest.mark.parametrize("tau", [0.3, 0.7, 0.95, 1.0])
@pytest.mark.parametrize(("rule", "weighting"), [("top", "clustifier"), ("confusion", "eq3"), ("top", "eq3")])
def test_runtime_matches_the_routed_pytorch_model(cpcnn_model, cpcnn_export, tmp_path, tau, rule, weighting):
    model = cpcnn_model.set_policy(tau, rule, weighting)
    x = held_out()
    expected = model.route(x)
    got = runtime.load(with_policy(cpcnn_export, tmp_path, model)).run(x.numpy())
    np.testing.assert_allclose(got.probs, expected.probs.numpy(), rtol=0, atol=1e-4)
    assert (got.probs.argmax(1) == expected.probs.argmax(1).numpy()).all()
    assert (got.active == expected.active.numpy()).all()
    assert (got.macs == expected.macs.numpy()).all()
    if tau == 0.7:  # the routing really varies from image to image
        assert len(np.unique(got.active, axis=0)) > 1


def test_each_head_runs_once_on_exactly_the_images_that_activate_it(cpcnn_model, cpcnn_export, tmp_path):
    model = cpcnn_model.set_policy(0.7, "top", "clustifier")
    loaded = runtime.load(with_policy(cpcnn_export, tmp_path, model))
    seen: dict[int, list[int]] = {}
    for group, head in enumerate(loaded.heads):
        if head is not None:
            loaded.heads[group] = lambda features, head=head, group=group: (
                seen.setdefault(group, []).append(len(features)) or head(features)
            )
    got = loaded.run(held_out().numpy())
    counts = got.active.sum(0)
    for group in range(len(loaded.heads)):
        if MEMBERS[group] != [1]:
            assert seen.get(group, []) == ([int(counts[group])] if counts[group] else [])
    assert not any(counts[g] == 0 for g in seen)


def test_graphs_are_checked_folded_and_batch_dynamic(cpcnn_export, cpcnn_model):
    spec = runtime.read_spec(cpcnn_export)
    files = sorted(p.name for p in cpcnn_export.iterdir())
    assert files == sorted(
        ["routing.json", "shared.onnx", "clustifier.onnx", "head_0.onnx", "head_2.onnx", "head_3.onnx"]
    )
    assert spec["parts"]["heads"][1] == {"file": None, "macs": 0}  # the single-class hyper-class: no graph
    for name in (name for name in files if name.endswith(".onnx")):
        graph = onnx.load(str(cpcnn_export / name))
        onnx.checker.check_model(graph, full_check=True)
        assert not [n for n in graph.graph.node if n.op_type == "BatchNormalization"], name
        assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert spec["parts"]["shared"]["macs"] == cpcnn_model.shared_macs
    assert [h["macs"] for h in spec["parts"]["heads"]] == cpcnn_model.head_macs.tolist()


def test_batching_does_not_change_any_image(cpcnn_model, cpcnn_export, tmp_path):
    loaded = runtime.load(with_policy(cpcnn_export, tmp_path, cpcnn_model.set_policy(0.7, "confusion", "eq3")))
    x = held_out(17).numpy()
    whole = loaded.run(x)
    for index in (0, 9, 16):
        one = loaded.run(x[index : index + 1])
        np.testing.assert_allclose(one.probs[0], whole.probs[index], rtol=0, atol=1e-5)
        assert (one.active[0] == whole.active[index]).all() and one.macs[0] == whole.macs[index]


def test_normalize_uses_the_recorded_statistics(cpcnn_export):
    spec = runtime.read_spec(cpcnn_export)
    mean, std = np.array(spec["mean"]).reshape(1, 3, 1, 1), np.array(spec["std"]).reshape(1, 3, 1, 1)
    images = np.random.default_rng(0).integers(0, 256, (2, *CP_SHAPE), dtype=np.uint8)
    x = runtime.load(cpcnn_export).normalize(images)
    np.testing.assert_allclose(x, (images / 255 - mean) / std, rtol=0, atol=1e-5)
    assert x.dtype == np.float32
