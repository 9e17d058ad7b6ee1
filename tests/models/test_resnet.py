import pytest
import torch
import torchvision

from dynacnn.errors import ConfigError
from dynacnn.models import build_resnet


@pytest.mark.parametrize(
    "arch, factory", [("resnet18", torchvision.models.resnet18), ("resnet34", torchvision.models.resnet34)]
)
def test_imagenet_stem_matches_torchvision_structure(arch, factory):
    ours = build_resnet(arch, num_classes=1000, in_channels=3, width=1.0, stem="imagenet")
    reference = factory()
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours_shapes == ref_shapes
    ours.load_state_dict(reference.state_dict())
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("stem, size, final", [("small", 32, 4), ("small-pool", 28, 2), ("imagenet", 64, 2)])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_shapes_and_feature_map_sizes(stem, size, final, in_channels):
    model = build_resnet("resnet18", num_classes=7, in_channels=in_channels, width=0.25, stem=stem).eval()
    x = torch.randn(2, in_channels, size, size)
    assert model(x).shape == (2, 7)
    stem_out = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    deepest = model.layer4(model.layer3(model.layer2(model.layer1(stem_out))))
    assert deepest.shape[-1] == final
    assert deepest.shape[1] == 128  # 512 * 0.25


def test_width_multiplier_scales_channels():
    narrow = build_resnet("resnet18", width=0.5)
    assert narrow.layer1[0].conv1.out_channels == 32 and narrow.fc.in_features == 256


@pytest.mark.parametrize("kwargs", [{"arch": "resnet50"}, {"stem": "tiny"}, {"width": 0.0}, {"num_classes": 1}])
def test_bad_configuration_is_a_clear_error(kwargs):
    with pytest.raises(ConfigError):
        build_resnet(**kwargs)
