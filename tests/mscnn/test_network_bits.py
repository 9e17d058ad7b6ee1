"""Whole-network fixed point (§IV-C), top-5, Eq. 1's P_th as a candidate and CAP_CONV's ranking on training images."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacnn.data import load_dataset
from dynacnn.errors import ConfigError
from dynacnn.mscnn.analysis import train_filter_ranking
from dynacnn.mscnn.cache import StageOutputs, collect
from dynacnn.mscnn.costs import measure_costs
from dynacnn.mscnn.explore import EQ1, evaluate, score, sweep, topk_correct
from dynacnn.mscnn.network_bits import BitOutputs, quantize_network, whole_network_bits
from dynacnn.mscnn.policies import cap_fc_policy, full_policy, simulate
from dynacnn.mscnn.routed import chosen_policy
from dynacnn.train import TensorBatches

from .helpers import CLASSES, SIZE, tiny_data, tiny_model

STAGES = 3


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(stages=STAGES, pool=2)
    calib_x, calib_y = tiny_data(60, seed=7)
    test_x, test_y = tiny_data(48, seed=8)
    calib_data, test_data = TensorBatches(calib_x, calib_y, 25), TensorBatches(test_x, test_y, 25)
    calib, test = collect(model, calib_data), collect(model, test_data)
    costs = measure_costs(model, (1, SIZE, SIZE))
    point = evaluate(calib, cap_fc_policy((3, 2), STAGES, CLASSES), costs, "CAP_FC")
    return model, calib_data, test_data, calib, test, costs, point


def run_whole(setup, bits: list[int], tolerance: float, max_rounds: int = 6) -> dict:
    model, calib_data, test_data, calib, test, costs, point = setup
    cpu = torch.device("cpu")
    calib_bits, test_bits = BitOutputs(model, calib_data, calib, cpu), BitOutputs(model, test_data, test, cpu)
    return whole_network_bits(
        model, bits, point, None, costs, calib_bits, test_bits, (4, 8, 16), tolerance, max_rounds=max_rounds
    )


@pytest.mark.parametrize("bits", [[32, 32, 32], [3, 5, 4]])
def test_cached_stages_equal_the_quantised_network_end_to_end(setup, bits: list[int]) -> None:
    model, calib_data, _, calib, *_ = setup
    outputs, network = BitOutputs(model, calib_data, calib, torch.device("cpu")).outputs(bits)
    direct = collect(quantize_network(model, bits), calib_data)
    assert torch.allclose(outputs.logits, direct.logits, atol=1e-5)
    assert torch.allclose(outputs.logits, collect(network, calib_data).logits, atol=1e-5)


def test_at_32_bits_the_whole_network_is_the_float_network(setup) -> None:
    model, calib_data, _, calib, *_ = setup
    outputs, _ = BitOutputs(model, calib_data, calib, torch.device("cpu")).outputs([32] * STAGES)
    assert torch.allclose(outputs.logits, calib.logits, atol=1e-4)
    result = run_whole(setup, [32] * STAGES, tolerance=0.0)
    by_key = {(r["vector"], r["split"], r["policy"]): r for r in result["rows"]}
    for split in ("calib", "test"):
        for policy in ("full", "chosen"):
            quantised, reference = by_key[("saturation", split, policy)], by_key[("float", split, policy)]
            assert (quantised["top1"], quantised["top5"]) == (reference["top1"], reference["top5"])
            assert quantised["drop"] == 0
    assert result["within_tolerance"] and result["raise_steps"] == [] and result["bits"] == [32] * STAGES


def test_low_bits_change_the_network_and_raising_moves_one_stage_a_level(setup) -> None:
    model, calib_data, _, calib, *_ = setup
    outputs, _ = BitOutputs(model, calib_data, calib, torch.device("cpu")).outputs([2] * STAGES)
    assert not torch.allclose(outputs.logits, calib.logits, atol=1e-2)
    result = run_whole(setup, [4] * STAGES, tolerance=-1.0, max_rounds=3)  # never within: raise every round
    assert not result["saturation_within_tolerance"] and not result["within_tolerance"]
    assert len(result["stage_sensitivity"]) == STAGES and 1 <= result["raise_first"] <= STAGES
    previous = [4] * STAGES
    assert len(result["raise_steps"]) == 3
    for step in result["raise_steps"]:
        changed = [s for s in range(STAGES) if step["bits"][s] != previous[s]]
        assert changed == [step["stage"] - 1]
        assert (previous[changed[0]], step["bits"][changed[0]]) in ((4, 8), (8, 16))
        previous = step["bits"]
    assert result["bits"] == previous
    assert {r["vector"] for r in result["rows"] if r["split"] == "test"} == {"float", "saturation", "raised"}


def test_bit_vector_length_is_checked(setup) -> None:
    with pytest.raises(ConfigError, match="one bit-length per stage"):
        quantize_network(setup[0], [8, 8])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 9))
def test_top5_against_torch_topk(seed: int, kept: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 9, generator=generator) * 3
    labels = torch.randint(0, 9, (40,), generator=generator)
    reference = (logits.softmax(1).topk(5, dim=1).indices == labels[:, None]).any(1)
    assert torch.equal(topk_correct(logits.softmax(1), labels), reference)
    outputs = StageOutputs(logits[None], [], labels)
    assert outputs.stage_top5() == pytest.approx([reference.float().mean().item()])
    # pruned classes (probability 0) never count, even when fewer than five classes were computed
    mask = torch.zeros(40, 9, dtype=torch.bool)
    mask[:, :kept] = True
    probs = logits.masked_fill(~mask, float("-inf")).softmax(1)
    among = torch.tensor(
        [y in [c for c in p.argsort(descending=True).tolist() if p[c] > 0][:5] for p, y in zip(probs, labels)]
    )
    assert torch.equal(topk_correct(probs, labels), among)


def test_policy_top5_of_the_full_network_matches_topk(setup) -> None:
    *_, calib, _, costs, _ = setup
    result = score(simulate(calib.logits, full_policy(STAGES, CLASSES)), calib.labels, costs)
    last = calib.logits[-1].softmax(1)
    assert result["top5"] == pytest.approx(
        (last.topk(5, 1).indices == calib.labels[:, None]).any(1).float().mean().item()
    )


def test_eq1_thresholds_are_swept_candidates(setup) -> None:
    *_, calib, _, costs, _ = setup
    vectors = [(4, 2), (6, 6)]
    families = sweep(calib, costs, CLASSES, quick=True, eq1_p_th=vectors)
    assert [p.settings["p_th"] for p in families[f"CAP_FC {EQ1}"]] == [list(v) for v in vectors]
    assert all(p.policy.p_th in vectors and p.policy.d_ct is not None for p in families[f"PTHP {EQ1}"])
    for point in families[f"CAP_FC {EQ1}"]:
        assert point.top1 == evaluate(calib, cap_fc_policy(tuple(point.settings["p_th"]), STAGES, CLASSES), costs).top1
    assert f"CAP_FC {EQ1}" not in sweep(calib, costs, CLASSES, quick=True)
    for point in families[f"CAP_FC {EQ1}"] + families[f"PTHP {EQ1}"]:  # load_mscnn rebuilds what was scored
        recorded = json.loads(json.dumps({"policy": point.name, "settings": point.settings}))
        assert chosen_policy(recorded, STAGES, CLASSES) == point.policy


def test_filter_ranking_depends_on_the_training_split_only() -> None:
    model = tiny_model(stages=STAGES, pool=2)
    options = {"num_classes": CLASSES, "num_groups": 2, "samples_per_class": 40, "image_size": SIZE, "channels": 1}
    splits = load_dataset("synthetic", None, calib_fraction=0.2, seed=0, **options)
    cpu = torch.device("cpu")
    ranking, images = train_filter_ranking(model, splits, 120, 0, cpu)
    assert images == 120
    other_calib, _ = train_filter_ranking(model, replace(splits, calib=splits.test), 120, 0, cpu)
    other_train, _ = train_filter_ranking(model, replace(splits, train=splits.test), 120, 0, cpu)
    same = [torch.equal(a, b) for a, b in zip(ranking.per_class, other_calib.per_class)]
    assert same == [True] * STAGES
    assert not all(torch.equal(a, b) for a, b in zip(ranking.acc_loss, other_train.acc_loss))
