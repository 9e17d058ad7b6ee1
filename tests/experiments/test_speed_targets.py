"""Issue 19's speed targets from paired timing rows: each pair stays within one runtime, every target is checked."""

from __future__ import annotations

import pytest

from dynacnn.experiments.speed_targets import TARGETS, speed_targets
from dynacnn.report.demo_report import write_bench
from dynacnn.report.render import targets_table

MACS = {"base": 8e6, "cpcnn": 4e6, "mscnn": 3e6, "mscnn-full": 9e6, "matched": 2e6}


def rows(seconds: dict[str, float], suffix: str = "") -> list[dict]:
    """Timing rows whose every chunk of `model` took seconds[model] (batch 32 twice as slow per image as 256)."""
    return [
        {
            "model": name + suffix,
            "batch_size": batch,
            "macs_per_image": MACS[name],
            "chunk_seconds": [[per_image * batch * (2 if batch == 32 else 1)] * 3] * 2,
        }
        for batch in (32, 256)
        for name, per_image in seconds.items()
    ]


def test_every_target_is_checked_per_runtime_against_its_own_runtimes_reference():
    torch_rows = rows({"base": 8.0, "cpcnn": 4.0, "mscnn": 3.0, "mscnn-full": 9.0})
    ort_rows = rows({"base": 4.0, "cpcnn": 2.0, "mscnn": 3.0, "mscnn-full": 4.5}, "-ort")
    checked = speed_targets(torch_rows + ort_rows)
    assert len(checked) == 2 * len(TARGETS)
    got = {(c["runtime"], c["model"], c["reference"], c["batch_size"], c["measure"]): c for c in checked}
    torch_cp = got["PyTorch", "cpcnn", "base", 256, "speed-up"]
    assert torch_cp["measured"] == pytest.approx(2.0) and torch_cp["met"]
    assert got["PyTorch", "cpcnn", "base", 256, "routing efficiency"]["measured"] == pytest.approx(1.0)
    assert got["PyTorch", "mscnn", "mscnn-full", 32, "speed-up"]["measured"] == pytest.approx(3.0)
    # the exported MS-CNN: 1.5x its exported full network (missed), efficiency (4/3) / (8/3) = 0.5 (missed)
    ort_full = got["ONNX Runtime", "mscnn", "mscnn-full", 256, "speed-up"]
    assert ort_full["measured"] == pytest.approx(1.5) and not ort_full["met"]
    assert got["ONNX Runtime", "mscnn", "base", 256, "routing efficiency"]["measured"] == pytest.approx(0.5)
    assert all(c["met"] == (c["measured"] >= c["target"]) for c in checked)


def test_targets_whose_contenders_were_not_timed_are_left_out_and_rendered(tmp_path):
    partial = [
        r for r in rows({"base": 8.0, "cpcnn": 5.0, "mscnn": 3.0, "mscnn-full": 9.0}) if r["model"] != "mscnn-full"
    ]
    checked = speed_targets(partial)
    assert {c["model"] for c in checked} == {"cpcnn", "mscnn"} and all(c["reference"] == "base" for c in checked)
    text = targets_table(checked)
    assert "| PyTorch | cpcnn vs base | 256 | speed-up | 1.600 | 1.6 | met | - |" in text
    assert all(c["static_efficiency"] is None for c in checked)  # no static ResNet was timed
    bench = {"rows": [], "targets": checked}
    write_bench(tmp_path, bench)
    assert (tmp_path / "bench.md").read_text().endswith(text)


def test_other_runtimes_are_checked_by_their_own_suffix():
    ov_rows = rows({"base": 4.0, "cpcnn": 1.0, "mscnn": 3.0, "mscnn-full": 9.0}, "-ov")
    checked = speed_targets(rows({"base": 8.0, "cpcnn": 8.0}) + ov_rows, [("OpenVINO", "-ov")])
    assert {c["runtime"] for c in checked} == {"OpenVINO"} and len(checked) == len(TARGETS)
    got = {(c["model"], c["reference"], c["batch_size"], c["measure"]): c["measured"] for c in checked}
    assert got["cpcnn", "base", 32, "speed-up"] == pytest.approx(4.0)
    assert got["mscnn", "mscnn-full", 256, "speed-up"] == pytest.approx(3.0)


def test_each_routing_efficiency_stands_beside_the_static_resnets_in_the_same_runtime():
    torch_rows = rows({"base": 8.0, "cpcnn": 4.0, "mscnn": 3.0, "mscnn-full": 9.0, "matched": 5.0})
    ort_rows = rows({"base": 4.0, "cpcnn": 2.0, "mscnn": 3.0, "mscnn-full": 4.5, "matched": 1.6}, "-ort")
    checked = speed_targets(torch_rows + ort_rows)
    static = {(c["runtime"], c["model"], c["measure"]): c["static_efficiency"] for c in checked}
    # the static ResNet: 4x fewer MACs; PyTorch 8 / 5 = 1.6x (efficiency 0.4), ONNX Runtime 4 / 1.6 = 2.5x (0.625)
    assert static["PyTorch", "cpcnn", "routing efficiency"] == pytest.approx(0.4)
    assert static["PyTorch", "mscnn", "routing efficiency"] == pytest.approx(0.4)
    assert static["ONNX Runtime", "cpcnn", "routing efficiency"] == pytest.approx(0.625)
    assert all(value is None for (_, _, what), value in static.items() if what == "speed-up")
    row = "| ONNX Runtime | mscnn vs base | 256 | routing efficiency | 0.500 | 0.75 | missed | 0.625 |"
    assert row in targets_table(checked)
