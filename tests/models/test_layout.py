"""safe_backward_layout: exactly the unsafe convolutions run in NCHW while training, everything else keeps its layout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dynacnn.models import build_resnet
from dynacnn.models.layout import (
    SAFE_BLOCK_CHANNELS,
    as_format,
    memory_format_of,
    safe_backward_layout,
    unsafe_in_channels_last,
)
from dynacnn.train import TensorBatches, TrainConfig, fit


@settings(max_examples=60, deadline=None)
@given(
    kernel=st.integers(1, 3), stride=st.integers(1, 3), in_channels=st.integers(1, 40), groups=st.sampled_from([1, 2])
)
def test_unsafe_is_exactly_strided_1x1_with_few_channels_per_group(kernel, stride, in_channels, groups):
    in_channels *= groups
    conv = nn.Conv2d(in_channels, 2 * groups, kernel, stride=stride, groups=groups)
    expected = kernel == 1 and stride > 1 and in_channels // groups < SAFE_BLOCK_CHANNELS
    assert unsafe_in_channels_last(conv) == expected
    assert not unsafe_in_channels_last(nn.Linear(in_channels, 2))


def record_input_layouts(model: nn.Module) -> dict[str, list[bool]]:
    """Per convolution, whether each input it saw was NCHW-contiguous (forward hooks, left in place)."""
    seen: dict[str, list[bool]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            seen[name] = []
            module.register_forward_hook(
                lambda m, args, out, name=name: seen[name].append(args[0].is_contiguous() and out.is_contiguous())
            )
    return seen


def narrow_resnet() -> nn.Module:
    """Width 1/16: layer2's and layer3's shortcuts are strided 1x1 convolutions on 4 and 8 channels."""
    torch.manual_seed(0)
    return build_resnet("resnet18", num_classes=3, in_channels=1, width=0.0625, stem="small").to(
        memory_format=torch.channels_last
    )


def test_inside_the_block_only_the_unsafe_convolutions_see_nchw():
    model = narrow_resnet()
    seen = record_input_layouts(model)
    x = torch.randn(4, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    with safe_backward_layout(model) as guarded:
        model(x).sum().backward()
    names = {name for name, module in model.named_modules() if module in guarded}
    assert names == {"layer2.0.downsample.0", "layer3.0.downsample.0"}
    assert all(all(seen[name]) for name in names)
    assert not any(any(flags) for name, flags in seen.items() if name not in names)


def test_on_exit_weights_keep_their_values_and_get_their_strides_back():
    model = narrow_resnet()
    conv = model.layer2[0].downsample[0]
    strides = conv.weight.stride()
    with safe_backward_layout(model):
        assert conv.weight.stride() != strides
        with torch.no_grad():
            conv.weight.add_(1.0)
        changed = conv.weight.detach().clone()
    assert conv.weight.stride() == strides
    assert torch.equal(conv.weight.detach(), changed)
    seen = record_input_layouts(model)
    model(torch.randn(2, 1, 16, 16).contiguous(memory_format=torch.channels_last))
    assert seen["layer2.0.downsample.0"] == [False]  # hooks removed


def test_the_guard_gives_the_same_gradients_as_nchw_training():
    x = torch.randn(8, 1, 16, 16)
    reference = narrow_resnet().to(memory_format=torch.contiguous_format).double()
    reference(x.double()).sum().backward()
    model = narrow_resnet()
    with safe_backward_layout(model):
        model(as_format(x, torch.channels_last)).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad.double(), q.grad, rtol=1e-4, atol=1e-5), name


def test_fit_trains_the_unsafe_convolutions_in_nchw_and_the_rest_in_channels_last():
    model = narrow_resnet()
    seen = record_input_layouts(model)
    data = TensorBatches(torch.randn(32, 1, 16, 16), torch.randint(0, 3, (32,)), batch_size=16)
    fit(model, data, TrainConfig(epochs=1, batch_size=16, lr=0.01))
    assert seen["layer2.0.downsample.0"] and all(seen["layer2.0.downsample.0"])
    assert not any(seen["layer1.0.conv1"])
    assert memory_format_of(model.layer1) == torch.channels_last


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_convolutions_are_left_alone():
    model = narrow_resnet().cuda()
    with safe_backward_layout(model) as guarded:
        assert guarded == []
