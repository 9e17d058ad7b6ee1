"""The benchmark's MS-CNN (`load_mscnn`) rebuilds, from mscnn.json's settings, the very policy the sweep scored."""

from __future__ import annotations

import json

import torch

from dynacnn.mscnn.cache import StageOutputs
from dynacnn.mscnn.costs import CostModel, StageCost
from dynacnn.mscnn.explore import sweep
from dynacnn.mscnn.routed import CapConvPolicy, chosen_policy

STAGES, CLASSES = 3, 6
COSTS = CostModel(tuple(StageCost(1000 * (s + 1), 50, 10, 20, 8 * (s + 1), 3, 5, CLASSES) for s in range(STAGES)))


def test_every_swept_policy_is_rebuilt_from_its_recorded_settings():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(STAGES, 40, CLASSES, generator=generator) * 3
    labels = torch.randint(0, CLASSES, (40,), generator=generator)
    families = sweep(StageOutputs(logits, [], labels), COSTS, CLASSES, quick=True)
    points = [point for points in families.values() for point in points]
    assert {point.policy.kind for point in points} >= {"full", "TP", "CAP_FC", "PTHP"}
    for point in points:
        recorded = json.loads(json.dumps({"policy": point.name, "settings": point.settings}))  # as mscnn.json holds it
        assert chosen_policy(recorded, STAGES, CLASSES) == point.policy, point.name


def test_a_cap_conv_point_is_rebuilt_as_cap_conv():
    recorded = json.loads(json.dumps({"policy": "CAP_CONV", "settings": {"p_th": [2, 2], "rm": 3}}))
    assert chosen_policy(recorded, STAGES, CLASSES) == CapConvPolicy((2, 2), 3)
