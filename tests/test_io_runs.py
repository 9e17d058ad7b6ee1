import errno
import hashlib
import json

import pytest
import torch

from dynacnn.errors import CheckpointError, DynacnnError
from dynacnn.io import ensure_dir, read_json, write_json
from dynacnn.models import build_resnet
from dynacnn.runs import DataSpec, ModelSpec, load_run, load_weights, save_run, save_weights, weights_digest


def test_write_json_is_atomic_under_failure(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    write_json(path, {"ok": 1})
    import os

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(DynacnnError, match="cannot write"):
        write_json(path, {"ok": 2})
    assert read_json(path) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_json_refuses_nan_and_reports_corrupt_files(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "nan.json", {"x": float("nan")})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DynacnnError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_ensure_dir_names_an_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DynacnnError, match="--out"):
        ensure_dir(blocker / "sub")


def test_run_round_trip_and_architecture_mismatch(tmp_path):
    spec = ModelSpec(arch="resnet18", width=0.125, stem="small", num_classes=10, in_channels=1)
    model = spec.build()
    save_run(tmp_path, model, spec, DataSpec(name="digits"))
    run = load_run(tmp_path)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(run.model(x), model.eval()(x))
    with pytest.raises(CheckpointError, match="another architecture or number of classes"):
        load_weights(tmp_path / "model.safetensors", build_resnet("resnet18", 7, 1, 0.125, "small"))
    meta = json.loads((tmp_path / "run.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "run.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version"):
        load_run(tmp_path)


def test_weights_digest_is_the_saved_files_sha256_in_any_layout(tmp_path):
    model = build_resnet("resnet18", 10, 1, 0.125, "small")
    save_weights(tmp_path / "model.safetensors", model)
    saved = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    reloaded = load_weights(tmp_path / "model.safetensors", build_resnet("resnet18", 10, 1, 0.125, "small"))
    assert weights_digest(model) == saved == weights_digest(reloaded.to(memory_format=torch.channels_last))
    with torch.no_grad():
        model.fc.bias[0] += 1e-6
    assert weights_digest(model) != saved


def test_truncated_weights_file_is_a_clear_error(tmp_path):
    model = build_resnet("resnet18", 10, 1, 0.125, "small")
    save_weights(tmp_path / "w.safetensors", model)
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_weights(tmp_path / "w.safetensors", model)
