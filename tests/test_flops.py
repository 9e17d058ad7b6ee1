import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dynacnn.flops import count_call_macs, count_macs, format_count
from dynacnn.models import build_resnet


@pytest.mark.parametrize(
    "arch, published_gmacs, published_mparams",
    [("resnet18", 1.81, 11.69), ("resnet34", 3.66, 21.80)],  # torchvision's model tables (GFLOPS there are MACs)
)
def test_agrees_with_torchvision_published_figures(arch, published_gmacs, published_mparams):
    model = build_resnet(arch, num_classes=1000, in_channels=3, width=1.0, stem="imagenet")
    report = count_macs(model, torch.zeros(1, 3, 224, 224))
    assert report.macs / 1e9 == pytest.approx(published_gmacs, rel=0.01)
    assert report.params / 1e6 == pytest.approx(published_mparams, rel=0.01)


def test_agrees_with_flop_counter_itself_and_per_module_rows_add_up():
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.zeros(2, 3, 64, 64)
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)
    report = count_macs(model, x, depth=1)
    assert report.macs == counter.get_total_flops() // 2
    assert report.macs_per_image == report.macs / 2
    assert sum(row.macs for row in report.rows) == report.macs
    assert sum(row.params for row in report.rows) == report.params


def test_conv_and_linear_macs_match_the_textbook_formula():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, torch.zeros(1, 3, 10, 10)).macs == 8 * 3 * 9 * 10 * 10
    linear = nn.Linear(20, 5)
    assert count_macs(linear, torch.zeros(4, 20)).macs == 4 * 20 * 5


def test_count_call_macs_counts_only_what_ran():
    small, large = nn.Linear(10, 10), nn.Linear(10, 1000)
    x = torch.zeros(3, 10)
    cheap, _ = count_call_macs(lambda t: small(t), x)
    both, _ = count_call_macs(lambda t: large(small(t)), x)
    assert cheap == 3 * 100 and both == 3 * 100 + 3 * 10 * 1000


def test_report_renders_table_and_dict():
    report = count_macs(
        build_resnet("resnet18", width=0.25, stem="small", in_channels=1), torch.zeros(1, 1, 28, 28), depth=1
    )
    table = report.table()
    assert "layer4" in table and "FLOPs / 2" in table
    assert report.to_dict()["macs"] == report.macs_per_image
    assert format_count(1_810_000_000) == "1.81 G"
