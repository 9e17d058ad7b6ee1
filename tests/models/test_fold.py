"""BatchNorm folding: same outputs and counted MACs, no BatchNorm left where a conv feeds it alone, input untouched."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dynacnn.flops import count_macs
from dynacnn.models import build_resnet
from dynacnn.models.fold import fold_batchnorm


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine parameters, so that a wrong fold changes the output."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            size = module.num_features
            if module.track_running_stats:
                module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.data.copy_(torch.rand(size, generator=generator) - 0.5)
    return model.eval()


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    "name,model,shape",
    [
        ("ours, small stem", lambda: build_resnet("resnet18", 7, 1, 0.25, "small"), (1, 16, 16)),
        ("torchvision resnet18", lambda: torchvision.models.resnet18(num_classes=7), (3, 32, 32)),
    ],
)
def test_resnets_fold_every_batchnorm_and_keep_outputs_and_macs(name, model, shape) -> None:
    original = randomise_batchnorms(model())
    original.train()
    before = count_batchnorms(original)
    folded = fold_batchnorm(original)
    assert count_batchnorms(folded) == 0, name
    assert count_batchnorms(original) == before and original.training, "the given model must stay as it was"
    x = torch.randn(4, *shape)
    original.eval()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), original(x), atol=1e-4, rtol=1e-4)
    assert count_macs(folded, x[:1]).macs_per_image == count_macs(original, x[:1]).macs_per_image


def test_channels_last_weights_stay_channels_last() -> None:
    model = randomise_batchnorms(build_resnet("resnet18", 5, 1, 0.25, "small")).to(memory_format=torch.channels_last)
    folded = fold_batchnorm(model)
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


class SharedConvOutput(nn.Module):
    """A conv whose output feeds its BatchNorm and a skip: folding would change the skip, so it must not fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class DataDependent(nn.Module):
    """Untraceable as a whole (Python branch on a tensor); its child blocks still fold."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) if bool(x.mean() > -10) else x


@pytest.mark.parametrize(
    "module,left",
    [
        (SharedConvOutput(), 1),
        (nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1)), 1),
        (nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)), 1),
        (DataDependent(), 0),
    ],
)
def test_only_a_batchnorm_fed_by_a_conv_alone_is_folded(module: nn.Module, left: int) -> None:
    original = randomise_batchnorms(module)
    folded = fold_batchnorm(original)
    assert count_batchnorms(folded) == left
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), original(x), atol=1e-5, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), groups=st.sampled_from([1, 2]), bias=st.booleans(), stride=st.sampled_from([1, 2]))
def test_folding_any_conv_batchnorm_pair_keeps_the_output(seed: int, groups: int, bias: bool, stride: int) -> None:
    torch.manual_seed(seed)
    block = nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=stride, padding=1, groups=groups, bias=bias), nn.BatchNorm2d(6), nn.ReLU()
    )
    original = randomise_batchnorms(block, seed)
    x = torch.randn(3, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(original)(x), original(x), atol=1e-5, rtol=1e-5)
