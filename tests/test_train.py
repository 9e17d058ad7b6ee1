import errno

import pytest
import torch

from dynacnn.errors import CheckpointError, ConfigError, DynacnnError
from dynacnn.models import build_resnet
from dynacnn.train import ImageBatches, TensorBatches, TrainConfig, evaluate, fit, load_checkpoint, resolve_device


def tiny_model(num_classes=10):
    torch.manual_seed(0)
    return build_resnet("resnet18", num_classes=num_classes, in_channels=1, width=0.125, stem="small")


def train_data(splits, batch_size=64):
    return ImageBatches(splits.train, splits.info, batch_size, shuffle=True, augment=False)


def test_short_training_clearly_beats_chance(digits):
    model = tiny_model()
    config = TrainConfig(epochs=3, batch_size=64, lr=0.05)
    result = fit(model, train_data(digits), config, calib_data=ImageBatches(digits.calib, digits.info, 256))
    assert result.final["calib_top1"] > 0.6  # chance is 0.1
    test = evaluate(model, ImageBatches(digits.test, digits.info, 256), torch.device("cpu"))
    assert test["top1"] > 0.6 and test["top5"] >= test["top1"]


def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(digits, tmp_path, monkeypatch):
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=5)
    straight = tiny_model()
    fit(straight, train_data(digits), config, run_dir=tmp_path / "a")

    import dynacnn.train as train_module

    calls = {"n": 0}
    real_step = torch.optim.SGD.step

    class Interrupt(Exception):
        pass

    def step_then_die(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > steps_per_epoch + 3:  # die early in epoch 2
            raise Interrupt
        return real_step(self, *args, **kwargs)

    steps_per_epoch = -(-len(digits.train) // 64)
    monkeypatch.setattr(torch.optim.SGD, "step", step_then_die)
    with pytest.raises(Interrupt):
        fit(tiny_model(), train_data(digits), config, run_dir=tmp_path / "b")
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    resumed = tiny_model()
    result = fit(resumed, train_data(digits), config, run_dir=tmp_path / "b", resume=True)
    assert [row["epoch"] for row in result.history] == [1, 2]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert train_module.CHECKPOINT_VERSION == 1


def test_resume_refuses_a_checkpoint_made_with_other_settings(digits, tmp_path):
    fit(tiny_model(), train_data(digits), TrainConfig(epochs=1, batch_size=64), run_dir=tmp_path)
    with pytest.raises(CheckpointError, match="other settings"):
        fit(
            tiny_model(),
            train_data(digits),
            TrainConfig(epochs=1, batch_size=64, lr=0.3),
            run_dir=tmp_path,
            resume=True,
        )


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(digits, tmp_path, monkeypatch):
    config = TrainConfig(epochs=2, batch_size=64)
    fit(tiny_model(), train_data(digits), TrainConfig(epochs=1, batch_size=64), run_dir=tmp_path / "x")
    before = (tmp_path / "x" / "checkpoint.pt").read_bytes()

    real_save = torch.save

    def save_then_fill_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fill_disk)
    with pytest.raises(DynacnnError, match="cannot write"):
        fit(tiny_model(), train_data(digits), config, run_dir=tmp_path / "x")
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "x" / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "x" / "checkpoint.pt")["epoch"] == 1
    assert not [p for p in (tmp_path / "x").iterdir() if p.name.endswith(".tmp")]


def test_tensor_batches_cover_every_sample_once():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    seen = torch.cat(
        [
            labels
            for _, labels in TensorBatches(x, y, 3, shuffle=True)(torch.Generator().manual_seed(0), torch.device("cpu"))
        ]
    )
    assert sorted(seen.tolist()) == list(range(10))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 0},
        {"batch_size": 0},
        {"lr": -1.0},
        {"schedule": "step"},
        {"label_smoothing": 1.0},
        {"precision": "fp8"},
    ],
)
def test_bad_train_config_is_a_clear_error(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs).validate()


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")
