"""Mixed precision in the one training loop, and the routed models on CUDA.

On the CPU: bf16 autocast trains (the forward runs in bf16, the weights stay float32, the loss falls), fp16 is
refused, a resume in another precision is refused and an fp32 checkpoint records the settings as before the option
existed. With a GPU: fp16 with the GradScaler trains and checkpoints its scale without a host sync inside the
training steps, and the routed CP-CNN and the early-exit MS-CNN give on CUDA what they give on the CPU.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

import pytest
import torch

from dynacnn.cpcnn.compress import build_head, shared_part
from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.data import normalize
from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.models import build_resnet
from dynacnn.mscnn.cache import collect
from dynacnn.mscnn.cap_conv import filter_importance
from dynacnn.mscnn.model import MSCNN, MSCNNConfig, StageConfig
from dynacnn.mscnn.policies import cap_fc_policy, full_policy
from dynacnn.mscnn.routed import CapConvPolicy, EarlyExitMSCNN
from dynacnn.train import (
    ImageBatches,
    TensorBatches,
    TrainConfig,
    evaluate,
    fit,
    load_checkpoint,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_resnet("resnet18", num_classes=10, in_channels=1, width=0.125, stem="small")


def train_data(splits) -> ImageBatches:
    return ImageBatches(splits.train, splits.info, 64, shuffle=True)


def small_convnet() -> torch.nn.Module:
    """A few-thousand-parameter conv net (bf16 convolutions are slow on CPUs without bf16 instructions)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    )


def test_bf16_on_the_cpu_trains_in_bf16_and_the_loss_falls(digits):
    model = small_convnet()
    seen = []
    model[-1].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    config = TrainConfig(epochs=3, batch_size=64, lr=0.1, augment=False, precision="bf16")
    result = fit(model, train_data(digits), config, calib_data=ImageBatches(digits.calib, digits.info, 256))
    assert set(seen) == {torch.bfloat16}  # training steps and calibration passes alike
    assert all(p.dtype == torch.float32 for p in model.parameters())
    losses = [row["train_loss"] for row in result.history]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.8 * losses[0]
    assert result.final["calib_top1"] > 0.3  # chance is 0.1


def test_fp16_is_refused_on_the_cpu_before_any_work(digits, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        fit(tiny_model(), train_data(digits), TrainConfig(epochs=1, precision="fp16"), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        evaluate(tiny_model(), ImageBatches(digits.calib, digits.info, 256), torch.device("cpu"), precision="fp16")
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8").validate()


def test_resume_in_another_precision_is_refused_and_fp32_keeps_the_old_identity(digits, tmp_path):
    fp32 = TrainConfig(epochs=1, batch_size=64, augment=False)
    bf16 = replace(fp32, precision="bf16")
    for config, other in ((fp32, bf16), (bf16, fp32)):
        run_dir = tmp_path / config.precision
        result = fit(small_convnet(), train_data(digits), config, run_dir=run_dir)
        with pytest.raises(CheckpointError, match="other settings"):
            fit(small_convnet(), train_data(digits), other, run_dir=run_dir, resume=True)
        assert fit(small_convnet(), train_data(digits), config, run_dir=run_dir, resume=True).history == result.history
    before_the_option = {key: value for key, value in asdict(fp32).items() if key != "precision"}
    assert load_checkpoint(tmp_path / "fp32" / "checkpoint.pt")["config"] == before_the_option
    assert load_checkpoint(tmp_path / "bf16" / "checkpoint.pt")["config"] == asdict(bf16)


@dataclass
class NoSyncSteps:
    """Batches whose consumer may not synchronise with the GPU between the first and the last batch: the training
    steps run under `torch.cuda.set_sync_debug_mode("error")`."""

    inner: TensorBatches

    @property
    def num_samples(self) -> int:
        return self.inner.num_samples

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    def __call__(self, generator, device):
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from self.inner(generator, device)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@cuda
def test_fp16_on_cuda_scales_the_loss_without_host_syncs_and_checkpoints_the_scale(digits, tmp_path):
    data = NoSyncSteps(TensorBatches(normalize(digits.train.images, digits.info), digits.train.labels, 64, True))
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, augment=False, precision="fp16")
    model = tiny_model()
    seen = []
    model.fc.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    result = fit(model, data, config, run_dir=tmp_path, device="cuda")
    assert set(seen) == {torch.float16} and all(p.dtype == torch.float32 for p in model.parameters())
    first, second = result.history
    assert second["train_loss"] < first["train_loss"]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["scaler"]["scale"] > 0 and state["config"]["precision"] == "fp16"
    assert all(group["fused"] for group in state["optimizer"]["param_groups"])
    again = fit(tiny_model(), data, config, run_dir=tmp_path, device="cuda", resume=True)
    assert again.history == result.history
    calib = ImageBatches(digits.calib, digits.info, 256)
    fp32, fp16 = (evaluate(model, calib, torch.device("cuda"), precision=p) for p in ("fp32", "fp16"))
    assert abs(fp32["top1"] - fp16["top1"]) < 0.02


def _cpcnn(shape: tuple[int, int, int]) -> CPCNN:
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", 9, shape[0], 0.125, "small").eval()
    members = [[0, 3, 5], [1], [2, 4], [6, 7, 8]]
    heads = [
        TrivialHead() if len(group) == 1 else build_head(backbone, "layer2", "L1", len(group), shape, group)
        for group in members
    ]
    confusion = torch.randint(0, 30, (4, 4)).double() + 300 * torch.eye(4)
    clustifier = build_head(backbone, "layer2", "LC", 4, shape)
    return CPCNN(shared_part(backbone, "layer2"), clustifier, heads, members, confusion, shape, tau=1.0).eval()


@cuda
def test_routed_cpcnn_runs_on_cuda_as_on_the_cpu():
    shape = (3, 16, 16)
    model = _cpcnn(shape)
    x = torch.randn(33, *shape, generator=torch.Generator().manual_seed(1))
    expected = model.route(x)
    model.to("cuda")
    routed = model.route(x.cuda())
    assert routed.probs.is_cuda and routed.macs.is_cuda
    torch.testing.assert_close(routed.probs.cpu(), expected.probs, atol=1e-4, rtol=1e-4)
    assert torch.equal(routed.macs.cpu(), expected.macs) and torch.equal(routed.active.cpu(), expected.active)
    with torch.autocast("cuda", dtype=torch.float16):
        mixed = model(x.cuda())
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed.sum(1).cpu(), torch.ones(33))


@cuda
def test_early_exit_mscnn_runs_on_cuda_as_on_the_cpu():
    torch.manual_seed(0)
    config = MSCNNConfig(tuple(StageConfig(b, (4, 6), (1, 2), 8) for b in ("LL", "LH", "HL")), 1, 6, 2)
    network = MSCNN(config).eval()
    x = torch.randn(40, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    order = filter_importance(network, collect(network, TensorBatches(x, torch.arange(40) % 6, 40)))
    gpu_network = copy.deepcopy(network).cuda()
    for policy in (full_policy(3, 6), cap_fc_policy((4, 2), 3, 6), CapConvPolicy((2, 2), 3)):
        expected = EarlyExitMSCNN(network, policy, filter_order=order, input_shape=(1, 12, 12)).route(x)
        model = EarlyExitMSCNN(gpu_network, policy, filter_order=order, input_shape=(1, 12, 12))
        routed = model.route(x.cuda())
        assert routed.probs.is_cuda
        torch.testing.assert_close(routed.probs.cpu(), expected.probs, atol=1e-4, rtol=1e-4)
        assert torch.equal(routed.macs.cpu(), expected.macs) and torch.equal(routed.kept.cpu(), expected.kept)
        if policy.kind != "CAP_CONV":
            with torch.autocast("cuda", dtype=torch.float16):
                mixed = model(x.cuda())
            assert mixed.dtype == torch.float32
            torch.testing.assert_close(mixed.sum(1).cpu(), torch.ones(40))
