"""EarlyExitMSCNN: the network with its policy as one module equals the reference paths on dense outputs, counts the
MACs that ran, survives save/load (CAP_CONV included) and refuses settings the network cannot run."""

from __future__ import annotations

import pytest
import torch

from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.flops import count_call_macs
from dynacnn.io import write_json
from dynacnn.models.fold import fold_batchnorm
from dynacnn.mscnn.cache import collect
from dynacnn.mscnn.cap_conv import filter_importance, simulate_cap_conv
from dynacnn.mscnn.costs import measure_costs
from dynacnn.mscnn.policies import cap_fc_policy, full_policy, pthp_policy, simulate, tp_policy
from dynacnn.mscnn.routed import CapConvPolicy, EarlyExitMSCNN, chosen_policy
from dynacnn.mscnn.serialize import FORMAT_VERSION, load_mscnn, save_filter_order
from dynacnn.runs import save_weights
from dynacnn.train import TensorBatches

from .helpers import CLASSES, SIZE, tiny_data, tiny_model

STAGES = 3
SHAPE = (1, SIZE, SIZE)
POLICIES = [
    full_policy(STAGES, CLASSES),
    tp_policy((0.95, 0.999), STAGES, CLASSES, top_c=1),
    cap_fc_policy((4, 2), STAGES, CLASSES),
    pthp_policy((0.99, 0.999), (0.9, 0.95), STAGES, CLASSES, top_c=1),
]


@pytest.fixture(scope="module")
def network():
    return tiny_model(stages=STAGES, pool=2)


@pytest.fixture(scope="module")
def importance(network):
    x, y = tiny_data(60, seed=2)
    return filter_importance(network, collect(network, TensorBatches(x, y, 60)))


@pytest.mark.parametrize("fc_rows", ["image", "batch"])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.kind)
def test_policy_families_equal_the_simulation_and_count_the_macs_that_ran(network, images, policy, fc_rows) -> None:
    model = EarlyExitMSCNN(network, policy, fc_rows=fc_rows, input_shape=SHAPE)
    with torch.no_grad():
        reference = simulate(torch.stack(network(images)), policy)
    routed = model.route(images)
    assert torch.equal(routed.exit_stage, reference.exit_stage)
    torch.testing.assert_close(routed.probs, reference.probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(images), routed.probs)
    if fc_rows == "image":
        assert torch.equal(routed.kept, reference.kept.T)
    counted, _ = count_call_macs(model, images)
    assert counted == int(routed.macs.sum())
    for i in range(3):  # per image: what the counter sees one image run
        one = model.route(images[i : i + 1])
        assert count_call_macs(model, images[i : i + 1])[0] == int(one.macs[0])
    if policy.kind == "TP":
        assert 0 < (routed.exit_stage < STAGES - 1).sum() < len(images)
        assert routed.macs.min() < routed.macs.max() == measure_costs(network, SHAPE).full_macs


@pytest.mark.parametrize("smart", [True, False])
def test_cap_conv_equals_its_simulation_and_counts_the_skipped_filters(network, importance, smart) -> None:
    policy = CapConvPolicy((2, 1), 3, smart)
    model = EarlyExitMSCNN(network, policy, filter_order=importance, input_shape=SHAPE)
    x, y = tiny_data(40, seed=3)
    reference = simulate_cap_conv(network, collect(network, TensorBatches(x, y, 40)), importance, (2, 1), 3, smart)
    routed = model.route(x)
    torch.testing.assert_close(routed.probs, reference.probs, atol=1e-5, rtol=1e-5)
    counted, _ = count_call_macs(model, x)
    assert counted == int(routed.macs.sum())
    full = measure_costs(network, SHAPE).full_macs
    filter_macs = measure_costs(network, SHAPE).stages[1].filter_macs
    assert (routed.macs == full - 3 * filter_macs * (STAGES - 1)).all()


def _run_dir(path, network, chosen, importance=None, input_shape=SHAPE):
    """An output directory as run_mscnn writes it (the parts load_mscnn reads)."""
    save_weights(path / "model.safetensors", network)
    meta = {"format_version": FORMAT_VERSION, "config": network.config.to_dict()}
    write_json(path / "model.json", meta | ({"input_shape": list(input_shape)} if input_shape else {}))
    if chosen is not None:
        write_json(path / "mscnn.json", {"chosen": chosen})
    if importance is not None:
        save_filter_order(path, importance)
    return path


def test_save_load_round_trip_with_the_chosen_cap_conv_policy(tmp_path, network, importance, images) -> None:
    chosen = {"policy": "CAP_CONV", "settings": {"p_th": [2, 2], "rm": 2}, "fc_rows": "image"}
    loaded = load_mscnn(_run_dir(tmp_path, network, chosen, importance))
    expected = EarlyExitMSCNN(network, CapConvPolicy((2, 2), 2), filter_order=importance, input_shape=SHAPE)
    assert loaded.policy == CapConvPolicy((2, 2), 2)
    for a, b in zip(
        loaded.filter_order.per_class + loaded.filter_order.overall, importance.per_class + importance.overall
    ):
        assert torch.equal(a, b)
    routed, reference = loaded.route(images), expected.route(images)
    torch.testing.assert_close(routed.probs, reference.probs, atol=1e-5, rtol=1e-5)
    assert torch.equal(routed.macs, reference.macs)
    folded = fold_batchnorm(loaded)  # what `dynacnn bench` times
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(images), routed.probs, atol=1e-4, rtol=1e-4)
    full = load_mscnn(tmp_path, policy="full")
    with torch.no_grad():
        torch.testing.assert_close(full(images), network(images)[-1].softmax(1), atol=1e-5, rtol=1e-5)
    assert full.network.config == network.config and type(full.network) is type(network)


def test_load_rebuilds_a_chosen_early_exit_policy_with_its_fc_rows(tmp_path, network, images) -> None:
    policy = pthp_policy((0.99, 0.999), (0.9, 0.95), STAGES, CLASSES, top_c=1)
    chosen = {"policy": "PTHP-C1", "settings": policy.settings(), "fc_rows": "batch"}
    loaded = load_mscnn(_run_dir(tmp_path, network, chosen, input_shape=None))
    assert loaded.policy == policy and loaded.fc_rows == "batch"
    expected = EarlyExitMSCNN(network, policy, fc_rows="batch")
    torch.testing.assert_close(loaded(images), expected(images), atol=1e-5, rtol=1e-5)
    assert torch.equal(loaded.route(images).macs, expected.route(images).macs)


def test_load_refuses_what_it_cannot_rebuild(tmp_path, network, importance) -> None:
    no_result = _run_dir(_mkdir(tmp_path / "a"), network, None)
    with pytest.raises(CheckpointError, match="no mscnn.json"):
        load_mscnn(no_result)
    assert load_mscnn(no_result, policy="full").policy.kind == "full"
    with pytest.raises(ConfigError, match="unknown policy"):
        load_mscnn(no_result, policy="fastest")
    chosen = {"policy": "CAP_CONV", "settings": {"p_th": [2, 2], "rm": 2}}
    no_ranking = _run_dir(_mkdir(tmp_path / "b"), network, chosen)
    with pytest.raises(CheckpointError, match="filter ranking"):
        load_mscnn(no_ranking)


def _mkdir(path):
    path.mkdir()
    return path


def test_bad_settings_are_refused(network, importance) -> None:
    with pytest.raises(ConfigError, match="2 stages"):
        EarlyExitMSCNN(network, full_policy(2, CLASSES))
    with pytest.raises(ConfigError, match="fc_rows"):
        EarlyExitMSCNN(network, fc_rows="rows")
    with pytest.raises(ConfigError, match="filter ranking"):
        EarlyExitMSCNN(network, CapConvPolicy((2, 2), 2))
    with pytest.raises(ConfigError, match="P_th"):
        EarlyExitMSCNN(network, CapConvPolicy((2,), 2), filter_order=importance)
    with pytest.raises(ConfigError, match="rm="):
        EarlyExitMSCNN(network, CapConvPolicy((2, 2), 8), filter_order=importance)


def test_chosen_policy_reads_every_family_back(network) -> None:
    for policy in [*POLICIES, CapConvPolicy((3, 1), 4), CapConvPolicy((3, 1), 4, smart=False)]:
        recorded = {"policy": policy.kind, "settings": policy.settings()}
        assert chosen_policy(recorded, STAGES, CLASSES) == policy


@pytest.mark.parametrize("fc_rows", ["image", "batch"])
@pytest.mark.parametrize("policy", [*POLICIES[1:], CapConvPolicy((2, 2), 2)], ids=lambda p: p.kind)
def test_early_exit_under_autocast_stays_float32(network, importance, images, policy, fc_rows) -> None:
    model = EarlyExitMSCNN(network, policy, fc_rows=fc_rows, filter_order=importance, input_shape=SHAPE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routed = model.route(images)
    assert routed.probs.dtype == torch.float32
    tolerance = 1e-2 if policy.kind == "CAP_CONV" else 1e-5  # execute_cap_conv's softmax runs in bf16
    torch.testing.assert_close(routed.probs.sum(1), torch.ones(len(images)), atol=tolerance, rtol=0)
    agree = (routed.probs.argmax(1) == model(images).argmax(1)).float().mean()
    assert agree >= 0.9
