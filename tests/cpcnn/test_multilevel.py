"""Two-level CP-CNN (Fig. 1 bottom): routed == dense, per-image MACs == what the flop counter saw run, tau = 1 at
both levels == every head of both levels, save / load, bad settings refused, `dynacnn cpcnn --levels 2` end to end."""

from __future__ import annotations

import json

import pytest
import torch

from dynacnn.cli import main
from dynacnn.cpcnn.cache import normalised_images
from dynacnn.cpcnn.compress import build_head, shared_part
from dynacnn.cpcnn.levels import build_nested, head_shared, next_split, shared_between
from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.cpcnn.multilevel import MultiLevelConfig, groups_to_split, partition_estimator
from dynacnn.cpcnn.serialize import load_cpcnn, save_cpcnn
from dynacnn.errors import ConfigError
from dynacnn.export import export_cpcnn
from dynacnn.flops import count_call_macs
from dynacnn.io import read_json, write_json
from dynacnn.models import build_resnet

SHAPE = (3, 16, 16)
MEMBERS = [[0, 3, 5, 6, 7, 8], [1], [2, 4]]
SUB_MEMBERS = [[0, 4], [1], [2, 3, 5]]
CHILD = {"split": "layer2", "clustifier": "LC", "heads": ["L1", "trivial", "L22"], "members": SUB_MEMBERS}
POLICY = {"tau": 0.7, "rule": "confusion", "weighting": "eq3"}


def _randomise(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and confusion matrices, so that wrong gathers or weights would show."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
        if isinstance(module, CPCNN):
            size = len(module.members)
            module.confusion.copy_(torch.randint(0, 30, (size, size), generator=generator) + 300 * torch.eye(size))


def _two_level(backbone: torch.nn.Module) -> CPCNN:
    torch.manual_seed(0)
    child = build_nested(backbone, "layer1", {**CHILD, **POLICY}, SHAPE)
    heads = [child, TrivialHead(), build_head(backbone, "layer1", "L33", 2, SHAPE)]
    clustifier = build_head(backbone, "layer1", "LC", 3, SHAPE)
    model = CPCNN(shared_part(backbone, "layer1"), clustifier, heads, MEMBERS, torch.eye(3), SHAPE, **POLICY)
    _randomise(model)
    return model.eval()


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_resnet("resnet18", 9, 3, 0.125, "small").eval()


@pytest.fixture(scope="module")
def model(backbone) -> CPCNN:
    return _two_level(backbone)


@pytest.mark.parametrize("taus", [(0.5, 0.5), (0.7, 0.95), (0.95, 0.4), (0.01, 0.01)])
def test_routed_equals_dense_and_counted_macs_equal_modelled(model, taus):
    model.set_taus(taus)
    x = torch.randn(41, *SHAPE, generator=torch.Generator().manual_seed(1))
    routed, dense = model.route(x), model.forward_dense(x)
    assert torch.allclose(routed.probs, dense.probs, atol=1e-6)
    assert torch.equal(routed.active, dense.active) and torch.equal(routed.macs, dense.macs)
    assert torch.allclose(routed.probs.sum(1), torch.ones(41), atol=1e-5)
    executed, _ = count_call_macs(model, x)
    assert executed == int(routed.macs.sum())
    child = model.heads[0]
    # the independent per-image model: S + M + active heads, the nested one adding S' + M' + its active sub-heads
    with torch.no_grad():
        child_active = child.route(model.shared(x)).active
    expected = model.fixed_macs + (routed.active.long() * model.head_macs).sum(1)
    expected += routed.active[:, 0].long() * (child_active.long() * child.head_macs).sum(1)
    assert torch.equal(routed.macs, expected)
    for image in (0, 7):  # one image at a time: the flop counter sees exactly its modelled MACs
        assert count_call_macs(model, x[image : image + 1])[0] == int(routed.macs[image])


def test_tau_one_at_both_levels_runs_every_head_and_is_the_dense_merge(model):
    model.set_taus([1.0, 1.0])
    x = torch.randn(9, *SHAPE, generator=torch.Generator().manual_seed(2))
    routed = model.route(x)
    assert routed.active.all()
    every_head = model.fixed_macs + int(model.head_macs.sum()) + int(model.heads[0].head_macs.sum())
    assert torch.equal(routed.macs, torch.full((9,), every_head))
    with torch.no_grad():  # independent reference: Eq. 3 written out over the plain modules of both levels
        features = model.shared(x)
        v = torch.softmax(model.clustifier(features), 1)
        inner = model.heads[0].shared(features)
        w = torch.softmax(model.heads[0].clustifier(inner), 1)
        conf = model.confusion.float()
        sub_conf = model.heads[0].confusion.float()
    scale, sub_scale = conf[:, v.argmax(1)].T, sub_conf[:, w.argmax(1)].T  # Eq. 3: P_fN over the active set
    scale, sub_scale = scale / scale.sum(1, keepdim=True), sub_scale / sub_scale.sum(1, keepdim=True)
    child_probs = torch.zeros(9, 6)
    sub_heads = model.heads[0].heads
    with torch.no_grad():
        child_probs[:, [0, 4]] = sub_scale[:, :1] * torch.softmax(sub_heads[0](inner), 1)
        child_probs[:, [1]] = sub_scale[:, 1:2]
        child_probs[:, [2, 3, 5]] = sub_scale[:, 2:] * torch.softmax(sub_heads[2](inner), 1)
        expected = torch.zeros(9, 9)
        expected[:, MEMBERS[0]] = scale[:, :1] * child_probs
        expected[:, MEMBERS[1]] = scale[:, 1:2]
        expected[:, MEMBERS[2]] = scale[:, 2:] * torch.softmax(model.heads[2](features), 1)
    assert torch.allclose(routed.probs, expected, atol=1e-5)


def test_save_load_round_trip_gives_the_same_outputs(model, backbone, tmp_path):
    model.set_taus([0.8, 0.6])
    spec = {"kind": "dynacnn", "arch": "resnet18", "width": 0.125, "stem": "small", "num_classes": 9}
    meta = {
        "backbone": {**spec, "in_channels": 3},
        "split": "layer1",
        "clustifier": "LC",
        "heads": [{"split": "layer2", "clustifier": "LC", "heads": CHILD["heads"]}, "trivial", "L33"],
    }
    save_cpcnn(model, tmp_path, meta)
    loaded = load_cpcnn(tmp_path)
    assert loaded.depth == 2 and loaded.heads[0].tau == 0.6 and loaded.tau == 0.8
    assert torch.equal(loaded.heads[0].confusion, model.heads[0].confusion)
    x = torch.randn(17, *SHAPE, generator=torch.Generator().manual_seed(3))
    routed, again = model.route(x), loaded.route(x)
    assert torch.allclose(routed.probs, again.probs, atol=1e-6) and torch.equal(routed.macs, again.macs)


def test_s_prime_from_a_trained_head_round_trips(backbone, tmp_path):
    head = build_head(backbone, "layer1", "L33", 6, SHAPE)  # body: a layer2 bottleneck, then layer3+layer4
    block, sub_split = head_shared(backbone, "layer1", head, SHAPE)
    assert sub_split == "layer2" and not any(p.requires_grad for p in block.parameters())
    assert head_shared(backbone, "layer1", build_head(backbone, "layer1", "LP", 6, SHAPE), SHAPE) is None
    assert head_shared(backbone, "layer2", build_head(backbone, "layer2", "L22", 6, SHAPE), SHAPE) is None
    entry = {**CHILD, **POLICY, "shared": "head:L33"}
    child = build_nested(backbone, "layer1", entry, SHAPE)
    child.shared.load_state_dict(block.state_dict())
    model = CPCNN(
        shared_part(backbone, "layer1"),
        build_head(backbone, "layer1", "LC", 3, SHAPE),
        [child, TrivialHead(), build_head(backbone, "layer1", "L33", 2, SHAPE)],
        MEMBERS,
        torch.eye(3),
        SHAPE,
        **POLICY,
    )
    _randomise(model)
    assert model.heads[0].fixed_macs < _two_level(backbone).heads[0].fixed_macs  # a bottleneck instead of layer2
    spec = {"kind": "dynacnn", "arch": "resnet18", "width": 0.125, "stem": "small", "num_classes": 9, "in_channels": 3}
    heads_meta = [
        {"split": "layer2", "shared": "head:L33", "clustifier": "LC", "heads": CHILD["heads"]},
        "trivial",
        "L33",
    ]
    save_cpcnn(model, tmp_path, {"backbone": spec, "split": "layer1", "clustifier": "LC", "heads": heads_meta})
    loaded = load_cpcnn(tmp_path)
    x = torch.randn(13, *SHAPE, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(loaded.route(x).probs, model.route(x).probs, atol=1e-6)
    assert count_call_macs(loaded, x)[0] == int(loaded.route(x).macs.sum())


def test_the_hyper_classes_to_split_come_from_their_sizes():
    members = [[0, 1, 2, 3], [4, 5], [6, 7, 8]]
    assert groups_to_split(members, MultiLevelConfig(levels=2)) == [0]
    assert groups_to_split(members, MultiLevelConfig(levels=2, max_hyper_class_size=2)) == [0, 2]
    with pytest.raises(ConfigError, match="no hyper-class to split"):
        groups_to_split(members, MultiLevelConfig(levels=2, max_hyper_class_size=4))
    with pytest.raises(ConfigError, match="no hyper-class to split"):
        groups_to_split([[0, 1], [2]], MultiLevelConfig(levels=2))
    similarity = torch.rand(9, 9, generator=torch.Generator().manual_seed(0))
    sub = partition_estimator(members, 0).recluster(2, similarity=(similarity + similarity.T).numpy())
    assert sorted(sub.classes_.tolist()) == [6, 7, 8] and sub.n_clusters_ == 2


def test_bad_settings_are_refused_in_one_line(model, backbone):
    with pytest.raises(ConfigError, match="3 taus for a CP-CNN of 2 level"):
        model.set_taus([0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="must come after"):
        shared_between(backbone, "layer2", "layer1")
    with pytest.raises(ConfigError, match="second level needs S to end earlier"):
        next_split("layer3")
    wrong = build_nested(
        backbone, "layer2", {**CHILD, "split": "layer3", "heads": ["L1", "trivial", "LP"], **POLICY}, SHAPE
    )  # S' on layer2's output
    with pytest.raises(ConfigError, match="nested CP-CNN of hyper-class 0 takes"):
        CPCNN(
            shared_part(backbone, "layer1"),
            TrivialHead(),
            [wrong, TrivialHead(), TrivialHead()],
            MEMBERS,
            torch.eye(3),
            SHAPE,
        )
    for bad, match in (
        ({"levels": 3}, "levels"),
        ({"levels": 2, "max_hyper_class_size": 1}, "max_hyper_class_size"),
        ({"levels": 1, "max_hyper_class_size": 4}, "levels 2"),
        ({"levels": 2, "sub_clusters": 1}, "sub_clusters"),
    ):
        with pytest.raises(ConfigError, match=match) as error:
            MultiLevelConfig(**bad).validate()
        assert "\n" not in str(error.value)


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_cli_levels_2_end_to_end(base_run, tmp_path, capsys):
    run_dir, data, _ = base_run
    out = tmp_path / "cpcnn"
    code, _, err = _cli(["cpcnn", "--run", str(run_dir), "--levels", "3", "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "levels 3" in err and not out.exists()
    code, _, err = _cli(
        ["cpcnn", "--run", str(run_dir), "--levels", "2", "--split", "layer3", "--out", str(out)], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "second level needs S to end earlier" in err and not out.exists()
    out.mkdir()
    write_json(
        out / "clusters.json", {"hyper_classes": [{"id": 0, "classes": [0, 2, 4]}, {"id": 1, "classes": [1, 3, 5]}]}
    )
    fast = [
        "--split",
        "layer2",
        "--configs",
        "L0,LP",
        "--max-drop",
        "5",
        "--epochs",
        "1",
        "--memory-format",
        "contiguous",
    ]
    args = ["cpcnn", "--run", str(run_dir), "--out", str(out), "--levels", "2", "--max-hyper-class-size", "2", *fast]
    code, stdout, _ = _cli([*args, "--device", "cpu", "--json"], capsys)
    summary, multi = json.loads(stdout), read_json(out / "multilevel.json")
    assert code == 0 and summary["multilevel"]["test"] == multi["test"]
    assert multi["split_hyper_classes"] == [0, 1] and (out / "multilevel.md").exists()
    for g, group in ((0, [0, 2, 4]), (1, [1, 3, 5])):
        subs = multi["children"][str(g)]["sub_hyper_classes"]
        assert sorted(c for sub in subs for c in sub) == group and len(subs) == 2
        child = multi["children"][str(g)]
        level1 = read_json(out / "cpcnn.json")["configs"]["heads"][g]
        assert child["shared"] == ("head:L0" if level1 == "L0" else "backbone") and child["distilled"]
    model = load_cpcnn(out / "two_level")
    assert model.depth == 2 and load_cpcnn(out).depth == 1  # the one-level model beside it still loads
    assert model.heads[0].tau == multi["taus"]["level2"]["0"] and model.tau == multi["taus"]["level1"]
    x = normalised_images(data.test, data.info, torch.device("cpu"), None, 0)
    routed = model.route(x)
    two = multi["test"]["two_level"]
    assert float((routed.probs.argmax(1) == data.test.labels).double().mean()) == pytest.approx(two["top1"])
    assert float(routed.macs.double().mean()) == pytest.approx(two["macs_per_image"])
    # the choice's cached composition of both levels (no routed model) predicts what routing executed
    assert two["cached_top1"] == pytest.approx(two["top1"])
    assert two["cached_macs_per_image"] == pytest.approx(two["macs_per_image"])
    assert count_call_macs(model, x)[0] == int(routed.macs.sum())
    assert torch.allclose(routed.probs, model.forward_dense(x).probs, atol=1e-6)
    with pytest.raises(ConfigError, match="multi-level CP-CNN export is not supported yet"):
        export_cpcnn(model, tmp_path / "onnx")
