"""Distillation from a trained model: the loss against its formula, the frozen teacher, that a student really learns
from it, and that a teacher trained on another split is refused before anything is written."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict

import pytest
import torch
from torch import nn

from dynacnn.baseline import train_backbone
from dynacnn.distill import WithTeacher, distillation_loss, load_teacher
from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.models.external import build_external
from dynacnn.mscnn.config import MSCNNRunConfig
from dynacnn.mscnn.model import MSCNN
from dynacnn.mscnn.pipeline import run_mscnn
from dynacnn.mscnn.training import train_mscnn
from dynacnn.runs import DataSpec, ModelSpec, save_weights, weights_digest
from dynacnn.train import TensorBatches, TrainConfig
from mscnn.helpers import CLASSES, tiny_config, tiny_data
from test_cli import assert_one_line_error, run_cli

DIGITS = DataSpec("digits", options={"train_limit": 60})


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "run"
    train_backbone(
        run, ModelSpec(width=0.125, stem="small"), DIGITS, TrainConfig(epochs=1, batch_size=32), device="cpu"
    )
    return run


@pytest.mark.parametrize("weight, temperature", [(0.0, 2.0), (0.5, 4.0), (0.9, 1.0)])
def test_distillation_loss_is_the_formula_written_out(weight, temperature):
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 4, generator=generator), 3 * torch.randn(5, 4, generator=generator)
    labels = torch.tensor([0, 3, 1, 2, 3])
    expected = 0.0
    for s, t, y in zip(student.double().tolist(), teacher.double().tolist(), labels.tolist()):
        log_z = math.log(sum(math.exp(v) for v in s))
        p_s = [math.exp(v / temperature) for v in s]
        p_t = [math.exp(v / temperature) for v in t]
        p_s, p_t = [v / sum(p_s) for v in p_s], [v / sum(p_t) for v in p_t]
        kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
        expected += ((1 - weight) * (log_z - s[y]) + weight * temperature**2 * kl) / len(labels)
    got = distillation_loss(weight, temperature)((student, teacher), labels)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_the_teacher_stays_frozen_and_in_eval_mode():
    teacher = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(4))
    teacher(torch.zeros(2, 1, 6, 6))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    wrapper = WithTeacher(student, teacher).train()
    assert not teacher.training and student.training
    optimizer = torch.optim.SGD([p for p in wrapper.parameters() if p.requires_grad], lr=0.5, weight_decay=0.1)
    x, y = torch.randn(8, 1, 6, 6), torch.arange(8) % 4
    first = wrapper(x)[1]
    for _ in range(3):
        optimizer.zero_grad()
        distillation_loss(0.5)(wrapper(x), y).backward()
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN statistics included
    assert torch.equal(first, wrapper(x)[1])  # dropout off: the same targets every time


def _agreement(model: MSCNN, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (model.eval()(x)[-1].argmax(1) == teacher(x).argmax(1)).float().mean().item()


@pytest.mark.parametrize("mode", ["joint", "stagewise"])
def test_an_mscnn_trained_with_a_teacher_learns_the_teachers_answers(mode, tmp_path):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(144, CLASSES)).eval()  # answers unrelated to the labels
    with torch.no_grad():
        teacher[1].weight.mul_(3)
    x, y = tiny_data(240, seed=0)
    held_out = tiny_data(120, seed=1)[0]
    agreement = {}
    for distill in (0.0, 0.9):
        torch.manual_seed(0)
        model = MSCNN(tiny_config())
        train_mscnn(
            model,
            TensorBatches(x, y, 40, shuffle=True),
            TrainConfig(epochs=6, lr=0.05),
            mode=mode,
            run_dir=tmp_path / str(distill),
            resume=False,
            device=torch.device("cpu"),
            identity={},
            teacher=teacher if distill else None,
            distill=distill,
        )
        agreement[distill] = _agreement(model, teacher, held_out)
    assert agreement[0.9] > agreement[0.0] + 0.1, agreement


def test_distill_without_a_teacher_or_out_of_range_is_refused(tmp_path):
    kwargs = dict(run_dir=tmp_path, resume=False, device=torch.device("cpu"), identity={})
    batches = TensorBatches(*tiny_data(12, 0), 6)
    for teacher, distill in ((None, 0.5), (nn.Identity(), 0.0), (nn.Identity(), 1.0)):
        with pytest.raises(ConfigError, match="--distill"):
            train_mscnn(
                MSCNN(tiny_config()), batches, TrainConfig(epochs=1), teacher=teacher, distill=distill, **kwargs
            )
    for bad in (0.0, 1.0, "0.5"):
        with pytest.raises(ConfigError, match="--distill"):
            MSCNNRunConfig(distill=bad).validate()
    assert "distill" not in MSCNNRunConfig().to_dict() and MSCNNRunConfig(distill=0.3).to_dict()["distill"] == 0.3


def test_a_teacher_trained_on_another_split_is_refused_before_anything_is_written(teacher_run, tmp_path):
    assert load_teacher(None, {}) == (None, None)
    same = {"name": "digits", "data_dir": None, "calib_fraction": 0.1, "seed": 0, "options": {"train_limit": 60}}
    model, digest = load_teacher(teacher_run, same)
    assert (
        isinstance(model, nn.Module)
        and digest == hashlib.sha256((teacher_run / "model.safetensors").read_bytes()).hexdigest()
    )
    with pytest.raises(ConfigError, match=r"--teacher .* \(seed differ\)"):
        run_mscnn(
            tmp_path / "mscnn",
            MSCNNRunConfig(epochs=1, quick=True, distill=0.5, seed=1),
            data="digits",
            data_options={"train_limit": 60},
            device="cpu",
            teacher=teacher_run,
        )
    for config, teacher in ((MSCNNRunConfig(distill=0.5), None), (MSCNNRunConfig(), teacher_run)):
        with pytest.raises(ConfigError, match="--teacher and --distill go together"):
            run_mscnn(tmp_path / "mscnn", config, data="digits", device="cpu", teacher=teacher)
    other = DataSpec("digits", seed=1, options={"train_limit": 60})
    with pytest.raises(ConfigError, match="calibration fraction"):
        train_backbone(
            tmp_path / "static", ModelSpec(width=0.125, stem="small"), other, TrainConfig(), teacher=teacher_run
        )
    assert not (tmp_path / "mscnn").exists() and not (tmp_path / "static").exists()


def test_a_distilled_static_network_records_its_teacher(teacher_run, tmp_path):
    spec = ModelSpec(width=0.0625, stem="small")
    summary = train_backbone(
        tmp_path / "s", spec, DIGITS, TrainConfig(epochs=1, batch_size=32), device="cpu", teacher=teacher_run
    )
    assert (summary["teacher"], summary["distill"]) == (str(teacher_run), 0.5)
    assert summary["teacher_sha256"] == load_teacher(teacher_run, asdict(DIGITS))[1]


def test_cli_names_a_missing_teacher_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(
        ["mscnn", "--data", "digits", "--teacher", "/nonexistent/run", "--out", str(tmp_path)], capsys
    )
    assert_one_line_error(code, err, "/nonexistent/run", "dynacnn train")


def _checkpoint(path, classes: int = 10, channels: int = 1):
    """A torchvision ResNet-18 (CIFAR stem) checkpoint for the digits, as a user would bring one."""
    torch.manual_seed(0)
    model = build_external("torchvision:resnet18", classes, channels, cifar_stem=True)
    save_weights(path, model)
    return path


def test_a_checkpoint_teaches_the_mscnn_and_its_digest_is_recorded(tmp_path):
    checkpoint = _checkpoint(tmp_path / "resnet18.safetensors")
    result = run_mscnn(
        tmp_path / "mscnn",
        MSCNNRunConfig(epochs=1, quick=True, distill=0.5),
        data="digits",
        data_options={"train_limit": 60},
        device="cpu",
        teacher=checkpoint,
        teacher_arch="torchvision:resnet18",
    )
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert (result["training"]["teacher_sha256"], result["training"]["distill"]) == (digest, 0.5)
    model, found = load_teacher(checkpoint, {}, arch="torchvision:resnet18", input_shape=(1, 8, 8), num_classes=10)
    assert found == digest == weights_digest(model) and not model.training


def test_a_checkpoint_teacher_that_does_not_fit_is_refused_in_one_line(tmp_path, capsys):
    seven, rgb = _checkpoint(tmp_path / "seven.safetensors", 7), _checkpoint(tmp_path / "rgb.safetensors", channels=3)
    fits = _checkpoint(tmp_path / "resnet18.safetensors")
    out = tmp_path / "mscnn"
    for teacher, arch, expected in (
        (seven, "torchvision:resnet18", "7-class head but 10"),
        (rgb, "torchvision:resnet18", "takes 3-channel images but the data has 1"),
        (None, "torchvision:resnet18", "--teacher-arch torchvision:resnet18 needs --teacher"),
        (fits, "torchvision:resnet50", "not a torchvision:resnet50 checkpoint"),
    ):
        args = ["mscnn", "--data", "digits", "--out", str(out), "--teacher-arch", arch]
        code, _, err = run_cli(args + ([] if teacher is None else ["--teacher", str(teacher)]), capsys)
        assert_one_line_error(code, err, expected)
    with pytest.raises(CheckpointError, match="7-class head"):
        load_teacher(seven, {}, arch="torchvision:resnet18", input_shape=(1, 8, 8), num_classes=10)
    assert not out.exists()
