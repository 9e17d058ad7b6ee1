"""Bad export directories give one-line errors; the runtime imports no torch; loading reads JSON and ONNX only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dynacnn import runtime
from dynacnn.errors import CheckpointError, ConfigError, DynacnnError

from .helpers import CP_SHAPE, MS_SHAPE


@pytest.fixture
def cp_copy(cpcnn_export, tmp_path):
    return shutil.copytree(cpcnn_export, tmp_path / "cp")


@pytest.fixture
def ms_copy(mscnn_export, tmp_path):
    return shutil.copytree(mscnn_export, tmp_path / "ms")


def edit(export_dir, change) -> None:
    spec = json.loads((export_dir / "routing.json").read_text())
    change(spec)
    (export_dir / "routing.json").write_text(json.dumps(spec))


def one_line_error(kind: type[DynacnnError], export_dir, *needles: str) -> str:
    with pytest.raises(kind) as info:
        runtime.load(export_dir)
    message = str(info.value)
    assert "\n" not in message and all(needle in message for needle in needles), message
    return message


@pytest.mark.parametrize("which", ["cp", "ms"])
def test_importing_and_running_the_runtime_never_imports_torch(cpcnn_export, mscnn_export, which):
    export_dir, shape = (cpcnn_export, CP_SHAPE) if which == "cp" else (mscnn_export, MS_SHAPE)
    script = (
        "import sys, numpy as np\n"
        "import dynacnn.runtime as rt\n"
        f"out = rt.load({str(export_dir)!r}).run(np.zeros((3, *{shape!r}), np.float32))\n"
        "assert out.probs.shape[0] == 3\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_graph(cp_copy):
    (cp_copy / "head_2.onnx").unlink()
    one_line_error(CheckpointError, cp_copy, "head_2.onnx is missing", "dynacnn export")


@pytest.mark.parametrize("content", [b"", b"not a protobuf at all \x00\xff" * 10])
def test_corrupt_graph(ms_copy, content):
    (ms_copy / "stage2_head.onnx").write_bytes(content)
    one_line_error(CheckpointError, ms_copy, "stage2_head.onnx is not a readable ONNX graph")


def test_truncated_graph(cp_copy):
    data = (cp_copy / "shared.onnx").read_bytes()
    (cp_copy / "shared.onnx").write_bytes(data[: len(data) // 2])
    one_line_error(CheckpointError, cp_copy, "shared.onnx is not a readable ONNX graph")


def test_other_format_version(cp_copy):
    edit(cp_copy, lambda spec: spec.update(format_version=2))
    one_line_error(CheckpointError, cp_copy, "format version 2", "reads version 1")


@pytest.mark.parametrize(
    ("text", "needle"),
    [("{not json", "not valid JSON"), ('{"format_version": 1}', "not a dynacnn routing spec"), ("[1, 2]", "not a")],
)
def test_not_a_routing_spec(cp_copy, text, needle):
    (cp_copy / "routing.json").write_text(text)
    one_line_error(CheckpointError, cp_copy, needle)


def test_no_routing_json(tmp_path):
    one_line_error(CheckpointError, tmp_path, "no routing.json", "dynacnn export")


def test_hyper_classes_that_do_not_match_the_heads(cp_copy):
    # class 5 moved from hyper-class 0 (a 3-class head) to hyper-class 2 (a 2-class head): still a partition
    edit(cp_copy, lambda spec: spec["policy"].update(members=[[0, 3], [1], [2, 4, 5], [6, 7, 8]]))
    one_line_error(CheckpointError, cp_copy, "head_0.onnx outputs shape", "does not match the graphs")


def test_classes_that_do_not_partition(cp_copy):
    edit(cp_copy, lambda spec: spec.update(num_classes=10))
    one_line_error(CheckpointError, cp_copy, "do not partition the 10 classes")


def test_mscnn_class_count_that_does_not_match_the_heads(ms_copy):
    edit(ms_copy, lambda spec: spec.update(num_classes=7))
    one_line_error(CheckpointError, ms_copy, "stage1_head.onnx outputs shape", "does not match the graphs")


def test_input_shape_that_does_not_match_the_graphs(cp_copy):
    edit(cp_copy, lambda spec: spec.update(input_shape=[3, 32, 32]))
    one_line_error(CheckpointError, cp_copy, "shared.onnx takes shape")


def test_a_policy_needing_graphs_the_export_lacks(ms_copy):
    for name in ("stage2_pairs.onnx", "stage3_pairs.onnx"):
        (ms_copy / name).unlink()
    policy = {"kind": "CAP_FC", "p_th": [3, 2], "fc_rows": "image"}
    edit(
        ms_copy,
        lambda spec: [stage["graphs"].pop("pairs", None) for stage in spec["stages"]] and spec.update(policy=policy),
    )
    one_line_error(CheckpointError, ms_copy, "needs stage 2's graphs ['pairs']")


@pytest.mark.parametrize(
    "policy",
    [
        {"kind": "TP", "d_ct": [0.9]},  # one threshold for two exits
        {"kind": "CAP_FC", "p_th": [0, 2]},
        {"kind": "SKIP"},
        {"kind": "CAP_CONV", "p_th": [2, 2], "rm": 8, "filter_order": [], "overall_order": []},
    ],
)
def test_bad_mscnn_policy(ms_copy, policy):
    edit(ms_copy, lambda spec: spec.update(policy=policy))
    one_line_error(CheckpointError, ms_copy, "routing.json is incomplete or malformed")


@pytest.mark.parametrize("name", ["../shared.onnx", "/etc/passwd", "model.py", "sub/shared.onnx", ".onnx"])
def test_graph_names_must_be_plain_onnx_files_in_the_directory(cp_copy, name):
    edit(cp_copy, lambda spec: spec["parts"]["shared"].update(file=name))
    one_line_error(CheckpointError, cp_copy, "not a plain *.onnx file")


def test_an_export_holds_json_and_onnx_only(cpcnn_export, mscnn_export):
    for export_dir in (cpcnn_export, mscnn_export):
        assert {path.suffix for path in export_dir.iterdir()} == {".json", ".onnx"}


def test_bad_images_are_refused_in_one_line(cpcnn_export):
    loaded = runtime.load(cpcnn_export)
    for bad in (np.zeros((2, *MS_SHAPE), np.float32), np.zeros((2, *CP_SHAPE), np.uint8), np.zeros(CP_SHAPE)):
        with pytest.raises(ConfigError, match="expected normalised float images"):
            loaded.run(bad)
    with pytest.raises(ConfigError, match="threads"):
        runtime.load(cpcnn_export, threads=0)


def test_an_empty_batch_gives_empty_outputs(cpcnn_export, mscnn_export):
    for export_dir, shape in ((cpcnn_export, CP_SHAPE), (mscnn_export, MS_SHAPE)):
        out = runtime.load(export_dir).run(np.zeros((0, *shape), np.float32))
        assert all(len(part) == 0 for part in out)
