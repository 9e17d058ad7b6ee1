"""`export_directory` (what `dynacnn export` runs) on a trained run, a CP-CNN and an MS-CNN directory, and
`evaluate_export` (`dynacnn run`): the exports classify as the PyTorch models do."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dynacnn import runtime
from dynacnn.cli import main
from dynacnn.cpcnn.serialize import load_cpcnn
from dynacnn.errors import ConfigError
from dynacnn.export import evaluate_export, export_directory, ort_speedups, runtime_contender
from dynacnn.mscnn.serialize import load_mscnn
from dynacnn.runs import DataSpec, load_run
from dynacnn.timing import Contender, measure
from dynacnn.train import ImageBatches

from .helpers import CP_SHAPE, MS_SHAPE, synthetic

TINY = ["--data", "digits", "--width", "0.125", "--stem", "small", "--batch-size", "32", "--train-limit", "40"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, "--epochs", "1", "--device", "cpu", "--out", str(out)])
        raise SystemExit(0)
    assert not exit_info.value.code
    return out


@pytest.fixture(scope="module")
def base_export(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "base"
    return out, export_directory(out, run=tiny_run)


def test_an_exported_run_predicts_like_the_pytorch_model(tiny_run, base_export):
    export_dir, spec = base_export
    trained = load_run(tiny_run)
    splits = trained.data_spec.load()
    assert spec["method"] == "plain" and spec["input_shape"] == list(splits.info.input_shape)
    assert spec["mean"] == list(splits.info.mean) and spec["class_names"] == list(splits.info.class_names)
    loaded = runtime.load(export_dir)
    x, _ = next(iter(ImageBatches(splits.test, splits.info, 64)(None, torch.device("cpu"))))
    with torch.no_grad():
        expected = trained.model.eval()(x).softmax(1).numpy()
    got = loaded.run(x.numpy())
    np.testing.assert_allclose(got.probs, expected, rtol=0, atol=1e-4)
    assert (got.probs.argmax(1) == expected.argmax(1)).all()
    raw = splits.test.images[:64].numpy()  # uint8, normalised by the runtime with the recorded mean/std
    np.testing.assert_allclose(loaded.normalize(raw), x.numpy(), rtol=0, atol=1e-6)

    result = evaluate_export(export_dir, batch_size=100)
    test = ImageBatches(splits.test, splits.info, 256)(None, torch.device("cpu"))
    with torch.no_grad():
        correct = sum(int((trained.model(x).argmax(1) == y).sum()) for x, y in test)
    assert result["images"] == len(splits.test) and result["top1"] == correct / len(splits.test)
    assert result["macs_per_image"] == spec["parts"]["model"]["macs"] > 0


def test_exactly_one_source(tmp_path, tiny_run):
    with pytest.raises(ConfigError, match="exactly one"):
        export_directory(tmp_path / "x")
    with pytest.raises(ConfigError, match="exactly one"):
        export_directory(tmp_path / "x", run=tiny_run, cpcnn=tiny_run)


def test_a_non_empty_directory_that_is_no_export_is_refused(tmp_path, tiny_run):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no export"):
        export_directory(tmp_path / "busy", run=tiny_run)


def test_exported_models_time_beside_pytorch_ones(tiny_run, base_export):
    export_dir, spec = base_export
    model = load_run(tiny_run).model
    images = torch.randn(64, *spec["input_shape"])
    contenders = [
        Contender("base", model, 1.0),
        runtime_contender("base-ort", runtime.load(export_dir, threads=1), 1.0),
        runtime_contender("twin-ort", runtime.load(export_dir, threads=1), 1.0),
    ]
    rows = measure(contenders, images, batch_sizes=(1, 32), repeats=1, max_images_batch1=4, chunk_batches=1)
    assert {(row["model"], row["batch_size"]) for row in rows} == {(c.name, b) for c in contenders for b in (1, 32)}
    speedups = ort_speedups(rows)
    for batch in (1, 32):
        assert speedups[batch]["base-ort"] == 1.0
        speed = {row["model"]: row["images_per_s"] for row in rows if row["batch_size"] == batch}
        assert speedups[batch]["twin-ort"] == pytest.approx(speed["twin-ort"] / speed["base-ort"])


def test_a_cpcnn_directory_exports_its_routed_model(cpcnn_dir, cpcnn_export):
    spec = runtime.read_spec(cpcnn_export)
    info = DataSpec(**synthetic(9, 3, 16)).load().info
    assert (
        spec["class_names"] == list("abcdefghi") and spec["mean"] == list(info.mean) and spec["std"] == list(info.std)
    )
    assert spec["policy"]["tau"] == 0.7 and spec["source"]["kind"] == "cpcnn"
    x = torch.randn(50, *CP_SHAPE)
    expected = load_cpcnn(cpcnn_dir).route(x)
    got = runtime.load(cpcnn_export).run(x.numpy())
    np.testing.assert_allclose(got.probs, expected.probs.numpy(), rtol=0, atol=1e-4)
    assert (got.active == expected.active.numpy()).all()


def test_an_mscnn_directory_exports_its_chosen_policy(mscnn_dir, mscnn_export):
    spec = runtime.read_spec(mscnn_export)
    assert spec["policy"]["kind"] == "PTHP" and spec["policy"]["fc_rows"] == "batch" and spec["policy"]["top_c"] == 2
    assert spec["input_shape"] == list(MS_SHAPE) and spec["source"]["kind"] == "mscnn"
    x = torch.randn(50, *MS_SHAPE)
    expected = load_mscnn(mscnn_dir).route(x)
    got = runtime.load(mscnn_export).run(x.numpy())
    np.testing.assert_allclose(got.probs, expected.probs.numpy(), rtol=0, atol=1e-4)
    assert (got.exit_stage == expected.exit_stage.numpy()).all() and (got.macs == expected.macs.numpy()).all()


def test_the_export_and_run_commands(tiny_run, tmp_path, capsys):
    """`dynacnn export --run` then `dynacnn run --json`: the printed top-1 is the runtime's on the test split."""
    out = tmp_path / "deploy"
    for args in (
        ["export", "--run", str(tiny_run), "--out", str(out), "--json"],
        ["run", "--export", str(out), "--json"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
            raise SystemExit(0)
        assert not exit_info.value.code
    exported, ran = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:])
    assert exported["method"] == "plain" and exported["graphs"] and (out / "routing.json").exists()
    assert ran["top1"] == pytest.approx(evaluate_export(out, batch_size=256)["top1"])
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--export", str(tmp_path / "missing")])
    assert exit_info.value.code == 2


def test_export_int8_quantizes_the_large_graphs_on_the_calibration_split_and_still_classifies(
    tiny_run, base_export, tmp_path
):
    out = tmp_path / "int8"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--run", str(tiny_run), "--out", str(out), "--int8"])
        raise SystemExit(0)
    assert not exit_info.value.code
    spec = json.loads((out / "routing.json").read_text())
    record = spec["quantization"]
    assert record["graphs"]["model.onnx"].startswith("int8") and record["calibration_images"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]  # the float scratch export is gone
    splits = load_run(tiny_run).data_spec.load()
    assert record["calibration_images"] == min(512, len(splits.calib))
    x, _ = next(iter(ImageBatches(splits.test, splits.info, 64)(None, torch.device("cpu"))))
    float_probs = runtime.load(base_export[0]).run(x.numpy()).probs
    int8_probs = runtime.load(out).run(x.numpy()).probs
    assert not np.allclose(int8_probs, float_probs, atol=1e-6)  # it really runs other arithmetic
    assert (int8_probs.argmax(1) == float_probs.argmax(1)).mean() >= 0.9


def test_export_int8_of_a_model_without_a_recorded_dataset_is_refused_and_leaves_nothing(cpcnn_dir, tmp_path):
    source = tmp_path / "cpcnn"
    shutil.copytree(cpcnn_dir, source)
    meta = json.loads((source / "cpcnn_model.json").read_text())
    meta["backbone"].pop("data")
    (source / "cpcnn_model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="records no dataset; int8 needs its calibration split") as info:
        export_directory(tmp_path / "exports" / "int8", cpcnn=source, int8=True)
    assert "\n" not in str(info.value)
    assert list((tmp_path / "exports").iterdir()) == []
