"""`quantize_export`: an int8 export that `dynacnn.runtime.load` runs unchanged, whose graphs really compute in
integers, calibrated on the inputs routing gives each part, and that classifies like the float export."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import onnx
import pytest
import torch

from dynacnn import runtime
from dynacnn.errors import ConfigError
from dynacnn.export import export_plain
from dynacnn.export.quantize import quantize_export, record_feeds
from dynacnn.models import build_resnet

from .helpers import CP_SHAPE, MS_SHAPE, spread_batchnorm

INTEGER = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}


def images(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)).numpy()


def int8_graphs(spec: dict) -> list[str]:
    return sorted(name for name, how in spec["quantization"]["graphs"].items() if how.startswith("int8"))


def assert_integer_graph(path) -> None:
    """Quantize/dequantize nodes and int8 weights: the graph computes its convolutions and FC layers in integers."""
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, (path.name, ops)
    assert sum(init.data_type in INTEGER for init in graph.initializer) >= 2, path.name


def assert_close_to_float(float_dir, int8_dir, x: np.ndarray) -> tuple:
    """Both exports on the same images: top-1 mostly agrees, probabilities close but not identical."""
    expected, got = runtime.load(float_dir, threads=1).run(x), runtime.load(int8_dir, threads=1).run(x)
    gap = np.abs(got.probs - expected.probs)
    assert (got.probs.argmax(1) == expected.probs.argmax(1)).mean() >= 0.9
    assert gap.mean() < 0.03 and 0 < gap.max() < 0.5, (gap.mean(), gap.max())
    return expected, got


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory):
    torch.manual_seed(0)
    model = build_resnet("resnet18", 9, 3, 0.125, "small").eval()
    spread_batchnorm(model)
    out = tmp_path_factory.mktemp("plain")
    export_plain(model, out, CP_SHAPE)
    return out


def test_a_plain_export_quantizes_to_integer_kernels(plain_export, tmp_path):
    spec = quantize_export(plain_export, tmp_path / "int8", images(CP_SHAPE, 64, 1), min_macs=0)
    assert int8_graphs(spec) == ["model.onnx"] and spec["quantization"]["calibration_images"] == 64
    assert_integer_graph(tmp_path / "int8" / "model.onnx")
    assert_close_to_float(plain_export, tmp_path / "int8", images(CP_SHAPE, 96, 2))


def test_cpcnn_heads_are_calibrated_on_the_features_of_the_images_that_activate_them(cpcnn_export, tmp_path):
    calibration = images(CP_SHAPE, 80, 1)
    feeds = record_feeds(runtime.load(cpcnn_export, threads=1), calibration, batch_size=32)
    active = np.concatenate([runtime.load(cpcnn_export).run(calibration[i : i + 32]).active for i in (0, 32, 64)])
    features = runtime.load(cpcnn_export).shared(calibration)
    assert sum(len(feed["x"]) for feed in feeds["shared.onnx"]) == 80
    for group, name in ((0, "head_0.onnx"), (2, "head_2.onnx"), (3, "head_3.onnx")):
        rows = np.concatenate([feed["features"] for feed in feeds[name]])
        assert rows.shape == (active[:, group].sum(), *features.shape[1:])
        np.testing.assert_allclose(rows, features[active[:, group]], atol=1e-5)
    spec = quantize_export(cpcnn_export, tmp_path / "int8", calibration, min_macs=0)
    assert int8_graphs(spec) == ["clustifier.onnx", "head_0.onnx", "head_2.onnx", "head_3.onnx", "shared.onnx"]
    for name in int8_graphs(spec):
        assert_integer_graph(tmp_path / "int8" / name)
    held = images(CP_SHAPE, 96, 3)
    expected, got = assert_close_to_float(cpcnn_export, tmp_path / "int8", held)
    assert (got.active == expected.active).mean() >= 0.9
    assert json.loads((tmp_path / "int8" / "routing.json").read_text())["policy"] == spec["policy"]


def test_mscnn_small_and_unused_graphs_stay_float(mscnn_export, tmp_path):
    calibration = images(MS_SHAPE, 96, 1)
    spec = quantize_export(mscnn_export, tmp_path / "int8", calibration, min_macs=5_000)
    graphs = spec["quantization"]["graphs"]
    bodies = [name for name in graphs if name.endswith("_body.onnx")]
    assert bodies and set(int8_graphs(spec)) == set(bodies)
    for name in bodies:
        assert_integer_graph(tmp_path / "int8" / name)
    for name in set(graphs) - set(bodies):  # the DWT, FC heads, pruned rows, CAP_CONV graphs PTHP never runs
        assert filecmp.cmp(mscnn_export / name, tmp_path / "int8" / name, shallow=False), name
    assert any("ran it on no calibration image" in how for how in graphs.values())
    expected, got = assert_close_to_float(mscnn_export, tmp_path / "int8", images(MS_SHAPE, 120, 4))
    assert (got.exit_stage == expected.exit_stage).mean() >= 0.8


def test_bad_inputs_are_one_line_config_errors(cpcnn_export, tmp_path):
    calibration = images(CP_SHAPE, 8, 1)
    (tmp_path / "not_export").mkdir()
    cases = [
        (tmp_path / "missing", tmp_path / "a", calibration, "is not an export directory"),
        (tmp_path / "not_export", tmp_path / "b", calibration, "is not an export directory"),
        (cpcnn_export, tmp_path / "c", calibration[:0], "no calibration images"),
        (cpcnn_export, tmp_path / "d", calibration[:, :, :8], "expected normalised float images"),
        (cpcnn_export, cpcnn_export, calibration, "another directory"),
    ]
    for source, out, x, needle in cases:
        with pytest.raises(ConfigError) as info:
            quantize_export(source, out, x)
        assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="quant_format"):
        quantize_export(cpcnn_export, tmp_path / "e", calibration, quant_format="int4")
