"""Rule / weighting chosen on the calibration split (Alg. 1 + Eq. 3 vs ours), top-5, and the L44 clustifier."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacnn.cpcnn import pipeline
from dynacnn.cpcnn.choice import POLICIES, choose_tau, evaluate_policy, meets
from dynacnn.cpcnn.compress import build_head, shared_part
from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.cpcnn.explore import SELECTION_TAUS, Routing, SplitView, clustifier_candidates, clustifier_skipped
from dynacnn.cpcnn.policy import RULES, WEIGHTINGS, activate, merge
from dynacnn.io import write_json
from dynacnn.runs import ModelSpec
from dynacnn.train import ImageBatches, TrainConfig, fit

MEMBERS = [[0, 6, 8], [1, 4, 7], [2, 3, 5], [9]]


@st.composite
def cached_outputs(draw):
    """A calibration view over random cached outputs: clustifier v, per-head probabilities, base probabilities."""
    seed = draw(st.integers(0, 2**31 - 1))
    members = draw(st.sampled_from([[[0, 1], [2, 3], [4, 5], [6, 7]], [[0, 2, 4], [1, 3], [5, 6, 7]]]))
    generator = torch.Generator().manual_seed(seed)
    n, classes, groups = 64, 8, len(members)
    labels = torch.randint(0, classes, (n,), generator=generator)
    group_of = torch.tensor([g for c in range(classes) for g, m in enumerate(members) if c in m])
    sharp = draw(st.sampled_from([1.0, 3.0]))
    v = torch.softmax(sharp * torch.randn(n, groups, generator=generator, dtype=torch.float64), 1)
    v += 0.5 * torch.nn.functional.one_hot(group_of[labels], groups)
    v /= v.sum(1, keepdim=True)
    base = torch.softmax(torch.randn(n, classes, generator=generator, dtype=torch.float64), 1)
    base += draw(st.sampled_from([0.3, 1.0])) * torch.nn.functional.one_hot(labels, classes)
    heads = [torch.softmax(2 * torch.randn(n, len(m), generator=generator, dtype=torch.float64), 1) for m in members]
    confusion = torch.randint(0, 10, (groups, groups), generator=generator).double() + 30 * torch.eye(groups)
    head_macs = torch.randint(100, 1000, (groups,), generator=generator)
    max_drop = draw(st.sampled_from([0.0, 5.0, 30.0, 100.0]))
    policy = draw(st.sampled_from([("auto", "auto"), ("confusion", "auto"), ("top", "eq3")]))
    view = SplitView(members, labels, base / base.sum(1, keepdim=True), None, max_drop, *policy)
    return view, v, heads, Routing(confusion, 50.0, head_macs)


@settings(max_examples=40, deadline=None)
@given(cached_outputs())
def test_the_winner_is_the_cheapest_allowed_candidate_meeting_the_budget(case):
    view, v, heads, routing = case
    winner, ok, candidates = view.choose(v, heads, routing)
    assert [(c["rule"], c["weighting"]) for c in candidates] == list(POLICIES)
    for c in candidates:  # each at its own calibration-chosen tau, recomputed independently of `choose`
        rows = view.rows(v, heads, routing, SELECTION_TAUS, True, c["rule"], c["weighting"])
        row, fine = choose_tau(rows, view.base_top1, view.max_drop)
        assert (c["tau"], c["top1"], c["macs_per_image"], c["meets_max_drop"]) == (
            row["tau"],
            row["top1"],
            row["macs_per_image"],
            fine,
        )
        assert c["eligible"] == (view.rule in ("auto", c["rule"]) and view.weighting in ("auto", c["weighting"]))
    assert [c["chosen"] for c in candidates].count(True) == 1 and winner["chosen"] and winner["eligible"]
    eligible = [c for c in candidates if c["eligible"]]
    fine = [c for c in eligible if meets(c, view.base_top1, view.max_drop)]
    assert ok == bool(fine)
    if fine:
        assert all(winner["macs_per_image"] <= c["macs_per_image"] for c in fine)
        assert all(winner["top1"] >= c["top1"] for c in fine if c["macs_per_image"] == winner["macs_per_image"])
    else:
        assert winner["top1"] == max(c["top1"] for c in eligible)


def test_top5_of_a_policy_row_matches_an_independent_rank_count():
    generator = torch.Generator().manual_seed(3)
    members = [[0, 3, 5], [1, 2], [4, 6, 7]]
    n = 200
    v = torch.softmax(torch.randn(n, 3, generator=generator, dtype=torch.float64), 1)
    heads = [torch.softmax(torch.randn(n, len(m), generator=generator, dtype=torch.float64), 1) for m in members]
    labels = torch.randint(0, 8, (n,), generator=generator)
    confusion = torch.eye(3, dtype=torch.float64) * 20 + 1
    for rule in RULES:
        for weighting in WEIGHTINGS:
            row = evaluate_policy(v, heads, members, labels, confusion, 0.7, rule, weighting, 0, torch.ones(3))
            _, weights = activate(v, confusion, 0.7, rule, weighting)
            probs = merge(weights, heads, [torch.tensor(m) for m in members], 8)
            own = probs.gather(1, labels[:, None])
            above = (probs > own).sum(1)  # classes ranked above the label; zero: its head did not run, no hit
            assert row["top5"] == pytest.approx(float(((above < 5) & (own[:, 0] > 0)).double().mean()))
            assert row["top5"] >= row["top1"]


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """A small base model on digits and a conversion run up to its heads (steps 1-6) with four hyper-classes, at
    split stem so that L44 is a clustifier candidate; L0 heads (the backbone's stages) keep the heads accurate."""
    torch.manual_seed(0)
    model = ModelSpec("resnet18", 0.125, "small", 10, 1).build()
    batches = ImageBatches(digits.train, digits.info, 32, shuffle=True)
    fit(model, batches, TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="cosine"))
    out = tmp_path_factory.mktemp("choice")
    write_json(out / "clusters.json", {"hyper_classes": [{"classes": group} for group in MEMBERS]})
    config = CPCNNConfig(epochs=2, max_drop=2.0, split="stem", configs="L0", memory_format="contiguous")
    conv = pipeline.prepare(model, digits, out, config, "cpu", False, None)
    for step in (pipeline.cluster, pipeline.choose_split_point, pipeline.cache_outputs):
        step(conv)
    pipeline.train_clustifier(conv)
    pipeline.train_heads(conv)
    return model, digits, conv


def test_l44_is_a_clustifier_candidate_at_stem_only_and_its_counted_macs_match(trained):
    model, data, conv = trained
    assert clustifier_candidates({}, "stem") == ["LP", "LC", "L44"]
    assert clustifier_candidates({}, "layer1") == ["LP", "LC"] and "L44" in clustifier_skipped({}, "layer1")
    assert clustifier_skipped({"clustifier": "LC"}, "layer1") == {} and conv.clustifier_skipped == {}
    records = conv.table1["clustifier"]
    assert set(records) == {"LP", "LC", "L44"} and 0 <= records["L44"]["calib_top1"] <= 1
    shape = tuple(data.info.input_shape)
    head = build_head(model, "stem", "L44", len(MEMBERS), shape).eval()
    macs = []

    def count(module, inputs, output):  # independent of torch.utils.flop_counter: k*k*C_in/groups per output
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs.append(output.numel() * k * module.in_channels // module.groups)
        elif isinstance(module, torch.nn.Linear):
            macs.append(output.numel() * module.in_features)

    hooks = [
        m.register_forward_hook(count) for m in head.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        head(shared_part(model, "stem")(torch.zeros(1, *shape)))
    for hook in hooks:
        hook.remove()
    assert records["L44"]["macs"] == sum(macs) > records["LC"]["macs"] > records["LP"]["macs"]


def test_the_choice_uses_the_calibration_split_only(trained, monkeypatch):
    _, _, conv = trained
    first = copy.copy(conv)
    pipeline.choose_point(first)
    # a test split the choice must not see: the calibration images with shuffled labels and reversed routing inputs
    seen: list[torch.Tensor] = []
    choose = SplitView.choose

    def recording_choose(view, *args, **kwargs):
        seen.append(view.labels)
        return choose(view, *args, **kwargs)

    monkeypatch.setattr(SplitView, "choose", recording_choose)
    other = copy.copy(conv)
    order = torch.randperm(len(conv.cal.labels), generator=torch.Generator().manual_seed(0))
    other.base = {**conv.base, "test": replace(conv.cal, labels=conv.cal.labels[order])}
    other.v = {**conv.v, "test": conv.v["calib"].flip(1)}
    other.cache = {**conv.cache, "test": conv.cache["calib"]}
    pipeline.choose_point(other)
    assert seen and all(labels is conv.cal.labels for labels in seen)
    assert other.rows["policy_choice"] == first.rows["policy_choice"] and other.rows["point"] == first.rows["point"]
    tested = [row["test"]["top1"] for row in other.rows["policies"]["table2_policies"]]
    assert tested != [row["test"]["top1"] for row in first.rows["policies"]["table2_policies"]]


def test_an_explicit_rule_and_weighting_fix_the_policy(trained):
    _, _, conv = trained
    fixed = copy.copy(conv)
    fixed.cal = replace(conv.cal, rule="confusion", weighting="eq3")
    pipeline.choose_point(fixed)
    assert (fixed.model.rule, fixed.model.weighting) == ("confusion", "eq3")
    candidates = fixed.rows["policy_choice"]["candidates"]
    assert [c["eligible"] for c in candidates] == [p == ("confusion", "eq3") for p in POLICIES]
    assert len(fixed.rows["policies"]["table2_policies"]) == len(POLICIES)
