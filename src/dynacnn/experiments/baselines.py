"""Compute-matched static baselines: plain ResNets of the demo's recipe at each dynamic model's MACs.

The demo trains one narrower ResNet (`matched_width`: the width nearest, in log MACs, to both methods' chosen
MACs) and reads every method's compute-matched accuracy off the static family (that network and the base, both
trained with the same recipe) by interpolating top-1 and top-5 linearly in log MACs (`matched_point`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from dynacnn.errors import ConfigError
from dynacnn.flops import count_macs
from dynacnn.runs import ModelSpec

WIDTH_STEP = 1 / 32
"""Width multipliers are multiples of 1/32: a ResNet-18's stages then have 2k, 4k, 8k and 16k channels (even counts;
oneDNN runs odd ones slowly), so the MACs move in steps of 30-55% around the demo's targets (3.04 M at 0.15625,
4.36 M at 0.1875); multiples of 1/16 jumped from 1.96 M to 4.36 M and matched the CP-CNN's 3.25 M with 4.36 M."""
MARGIN_POINTS = 0.5
"""How many points of test top-1 a dynamic model should gain over the static ResNet at its MACs (issue 19)."""
SAME_MACS = 0.01
"""A static network within 1% of a target's MACs is the matched network itself, not an interpolation."""


def width_costs(spec: ModelSpec, input_shape: tuple[int, int, int]) -> dict[float, float]:
    """MACs per image of `spec` at every multiple of `WIDTH_STEP` from 4 channels to just below the base's width
    (the base is the family's widest static network already)."""
    probe = torch.zeros(1, *input_shape)
    first = math.ceil(4 / 64 / WIDTH_STEP)
    steps = range(first, max(first + 1, math.ceil(spec.width / WIDTH_STEP)))
    return {
        k * WIDTH_STEP: count_macs(replace(spec, width=k * WIDTH_STEP).build(), probe).macs_per_image for k in steps
    }


def matched_width(
    spec: ModelSpec, input_shape: tuple[int, int, int], targets: float | Sequence[float]
) -> tuple[float, float]:
    """The width multiplier (a multiple of `WIDTH_STEP`, below the base's) and its MACs per image whose MACs are
    nearest, in log, to every target: the smallest largest |log(MACs / target)| over `targets`."""
    targets = [targets] if isinstance(targets, (int, float)) else list(targets)
    if not targets or any(not isinstance(t, (int, float)) or not t > 0 for t in targets):
        raise ConfigError(f"target MACs {targets!r} must be positive numbers; check the methods' chosen MACs")
    costs = width_costs(spec, input_shape)
    best = min(costs, key=lambda width: max(abs(math.log(costs[width] / t)) for t in targets))
    return best, costs[best]


def _line(low: dict[str, Any], high: dict[str, Any], macs: float, key: str, log_value: bool = False) -> float | None:
    """`key` at `macs` on the line through two static points in log MACs (log `key` too with `log_value`); None
    where either point lacks `key`."""
    if low.get(key) is None or high.get(key) is None:
        return None
    x0, x1 = math.log(low["macs_per_image"]), math.log(high["macs_per_image"])
    y0, y1 = (math.log(low[key]), math.log(high[key])) if log_value else (low[key], high[key])
    value = y0 + (y1 - y0) * (math.log(macs) - x0) / (x1 - x0)
    return math.exp(value) if log_value else value


def matched_point(static: Sequence[dict[str, Any]], macs: float) -> dict[str, Any]:
    """The static family's point at `macs`: top-1 and top-5 linear in log MACs, images/s linear in log-log between
    the neighbouring static networks (`static`: points with width, macs_per_image, top1, top5, images_per_s);
    `kind` says whether it is a trained network, an interpolation or an extrapolation, `from` which widths."""
    if len({p["macs_per_image"] for p in static}) != len(static):
        raise ConfigError("the static networks must differ in MACs; train the matched ResNet at another width")
    by_macs = sorted(static, key=lambda p: p["macs_per_image"])
    same = [p for p in by_macs if abs(p["macs_per_image"] / macs - 1) <= SAME_MACS]
    if same:
        return {**same[0], "kind": "trained", "from": [same[0]["width"]]}
    inside = by_macs[0]["macs_per_image"] < macs < by_macs[-1]["macs_per_image"]
    above = next((i for i, p in enumerate(by_macs) if p["macs_per_image"] > macs), len(by_macs) - 1)
    low, high = by_macs[max(1, above) - 1], by_macs[max(1, above)]
    top1, top5 = _line(low, high, macs, "top1"), _line(low, high, macs, "top5")
    return {
        "macs_per_image": macs,
        "top1": min(1.0, max(0.0, top1)),
        "top5": None if top5 is None else min(1.0, max(0.0, top5)),
        "images_per_s": _line(low, high, macs, "images_per_s", log_value=True),
        "kind": "interpolated" if inside else "extrapolated",
        "from": [low["width"], high["width"]],
    }


def compare_with_static(dynamic: dict[str, dict[str, Any]], static: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per method (`dynamic`: name -> its chosen test point), the static family's point at its MACs and the test
    top-1 gap in points; `beats` says whether the gap reaches `MARGIN_POINTS`."""
    if len(static) < 2:
        raise ConfigError("compute-matched baselines need at least two static networks (the base and one narrower)")
    compared = {}
    for name, point in dynamic.items():
        matched = matched_point(static, point["macs_per_image"])
        gap = 100 * (point["top1"] - matched["top1"])
        compared[name] = {"static": matched, "gap_points": gap, "beats": gap >= MARGIN_POINTS}
    return {"margin_points": MARGIN_POINTS, "methods": compared}


def uniform_threshold_exit(mscnn: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """Prior art's early exit (one confidence threshold for every stage), chosen like ours: the MS-CNN
    pipeline's `uniform_chosen` (same --max-drop rule as our policies), else the cheapest uniform threshold
    whose calibration top-1 is within `max_drop` points of the full MS-CNN's."""
    if mscnn.get("uniform_chosen"):
        return mscnn["uniform_chosen"]
    floor = mscnn["full"]["calib_top1"] - max_drop / 100
    rows = [r for r in mscnn["policies"] if r["name"].startswith("uniform") and r["calib_top1"] >= floor]
    if not rows:
        return {}
    best = min(rows, key=lambda r: (r["calib_macs_per_image"], -r["calib_top1"]))
    keys = ("name", "settings", "top1", "top5", "macs_per_image", "calib_top1", "calib_macs_per_image")
    return {key: best[key] for key in keys if key in best}
