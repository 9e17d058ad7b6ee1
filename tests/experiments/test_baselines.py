"""Compute-matched static baselines: the width nearest in log MACs, interpolation in log MACs, the per-method verdict."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from dynacnn.errors import ConfigError
from dynacnn.experiments.baselines import (
    MARGIN_POINTS,
    WIDTH_STEP,
    compare_with_static,
    matched_point,
    matched_width,
    uniform_threshold_exit,
)
from dynacnn.experiments.demo import base_model_spec
from dynacnn.flops import count_macs

SHAPE = (1, 28, 28)


def _macs(width: float) -> float:
    spec = replace(base_model_spec(SHAPE, 10), width=width)
    return count_macs(spec.build(), torch.zeros(1, *SHAPE)).macs_per_image


@pytest.mark.parametrize("targets", [[1.0e6], [3.25e6], [2.93e6, 3.25e6], [9.0e6]])
def test_matched_width_is_the_grid_width_nearest_in_log_to_every_target(targets):
    spec = base_model_spec(SHAPE, 10)
    width, macs = matched_width(spec, SHAPE, targets)
    assert width / WIDTH_STEP == round(width / WIDTH_STEP) and 0 < width < spec.width
    assert macs == _macs(width)
    worst = max(abs(math.log(macs / t)) for t in targets)
    for k in range(round(4 / 64 / WIDTH_STEP), round(spec.width / WIDTH_STEP)):  # the grid below the base's width
        assert worst <= max(abs(math.log(_macs(k * WIDTH_STEP) / t)) for t in targets) + 1e-12


def test_matched_width_lands_within_a_grid_step_of_the_demo_targets():
    spec = base_model_spec(SHAPE, 10)
    _, macs = matched_width(spec, SHAPE, 3.25e6)  # the 1/16 grid answered 4.36 M (+34%)
    assert abs(macs / 3.25e6 - 1) < 0.1
    with pytest.raises(ConfigError, match="target MACs"):
        matched_width(spec, SHAPE, [0.0])


def _point(width: float, macs: float, **extra: float) -> dict:
    top1 = 0.80 + 0.05 * math.log(macs / 1e6)  # linear in log MACs: interpolation must reproduce it exactly
    return {"width": width, "macs_per_image": macs, "top1": top1, "top5": top1 + 0.05, **extra}


STATIC = [_point(0.25, 8e6, images_per_s=1000.0), _point(0.15, 3e6, images_per_s=2000.0)]


@pytest.mark.parametrize("macs, kind", [(4e6, "interpolated"), (2.5e6, "extrapolated"), (9e6, "extrapolated")])
def test_matched_point_is_linear_in_log_macs(macs, kind):
    point = matched_point(STATIC, macs)
    expected = _point(0, macs)
    assert point["kind"] == kind and sorted(point["from"]) == [0.15, 0.25]
    assert point["top1"] == pytest.approx(expected["top1"]) and point["top5"] == pytest.approx(expected["top5"])
    slope = math.log(1000 / 2000) / math.log(8 / 3)  # images/s: a power law through the two networks
    assert point["images_per_s"] == pytest.approx(2000 * (macs / 3e6) ** slope)


def test_matched_point_at_a_trained_networks_macs_is_that_network():
    point = matched_point(STATIC, 3e6 * 1.005)
    assert point["kind"] == "trained" and point["top1"] == STATIC[1]["top1"] and point["from"] == [0.15]
    with pytest.raises(ConfigError, match="differ in MACs"):
        matched_point([STATIC[0], {**STATIC[1], "macs_per_image": 8e6}], 4e6)


def test_matched_point_without_top5_leaves_it_out():
    static = [{**p, "top5": None} for p in STATIC]
    assert matched_point(static, 4e6)["top5"] is None


def test_compare_with_static_asks_for_the_margin():
    at = matched_point(STATIC, 4e6)["top1"]
    margin = MARGIN_POINTS / 100
    dynamic = {
        "winner": {"macs_per_image": 4e6, "top1": at + margin + 1e-4},
        "loser": {"macs_per_image": 4e6, "top1": at + margin - 1e-3},
    }
    compared = compare_with_static(dynamic, STATIC)
    assert compared["margin_points"] == MARGIN_POINTS
    assert compared["methods"]["winner"]["beats"] and not compared["methods"]["loser"]["beats"]
    assert compared["methods"]["loser"]["gap_points"] == pytest.approx(MARGIN_POINTS - 0.1)
    with pytest.raises(ConfigError, match="two static networks"):
        compare_with_static(dynamic, STATIC[:1])


def test_uniform_threshold_baseline_is_chosen_on_calibration():
    rows = [
        ("uniform-C1", 0.5, 1.0, 0.80),
        ("uniform-C1", 0.88, 2.0, 0.897),
        ("TP-C1", 0.9, 0.5, 0.9),
    ]
    mscnn = {
        "full": {"calib_top1": 0.9},
        "policies": [
            {"name": n, "settings": {}, "top1": t, "macs_per_image": m, "calib_top1": c, "calib_macs_per_image": m}
            for n, t, m, c in rows
        ],
    }
    assert uniform_threshold_exit(mscnn, 0.5)["macs_per_image"] == 2.0
    assert uniform_threshold_exit(mscnn, 0.0) == {}
