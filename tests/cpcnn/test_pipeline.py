"""End to end on tiny synthetic data: run_cpcnn writes every table, plot and cpcnn.json; reload; resume; bad input."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from dynacnn.cpcnn.config import CPCNNConfig, parse_configs
from dynacnn.cpcnn.discover import hyper_classes
from dynacnn.cpcnn.explore import TABLE2_TAUS, choose_tau, pick_cheapest
from dynacnn.cpcnn.model import CPCNN
from dynacnn.cpcnn.pipeline import convert, run_cpcnn
from dynacnn.cpcnn.serialize import load_cpcnn
from dynacnn.data import normalize
from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.io import read_json, write_json
from dynacnn.report.cpcnn_report import report_markdown
from dynacnn.runs import ModelSpec, save_run

MEMBERS = [[0, 2, 4], [1, 3], [5]]
QUICK = CPCNNConfig(quick=True, max_drop=5.0)
SETTINGS_EXTRA = ("train_epochs", "head_tolerance_points", "clustifier_tolerance_points", "timing")


@pytest.fixture(scope="module")
def converted(base_run, tmp_path_factory):
    run_dir, data, _ = base_run
    out = tmp_path_factory.mktemp("cpcnn")
    write_json(
        out / "clusters.json", {"hyper_classes": [{"id": g, "classes": group} for g, group in enumerate(MEMBERS)]}
    )
    return out, run_cpcnn(run_dir, out, QUICK, device="cpu")


def test_writes_every_artifact(converted):
    out, _ = converted
    for name in (
        "cpcnn.json",
        "cpcnn.md",
        "table1_resnet18.md",
        "fig4_accuracy_macs.png",
        "fig4_mac_breakdown.png",
        "policies.png",
        "split_sweep.png",
        "cpcnn.safetensors",
        "cpcnn_model.json",
    ):
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "cpcnn.md").read_text()
    for heading in (
        "Table 1 analog",
        "Table 2",
        "CC-ideal",
        "oracle",
        "Shared-layer sweep",
        "Activation rule",
        "Table 1 reproduction",
    ):
        assert heading in markdown


def test_cpcnn_json_has_the_required_keys_and_units(converted, base_run):
    out, result = converted
    class_names = base_run[1].info.class_names
    assert json.loads((out / "cpcnn.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["base"]) >= {"top1", "macs_per_image"}
    assert result["clusters"] == [[class_names[c] for c in group] for group in MEMBERS]
    assert [row["tau"] for row in result["sweep"]] == list(TABLE2_TAUS)
    for row in result["sweep"]:
        assert set(row) >= {"tau", "top1", "macs_per_image", "activated_hist"}
        assert 0 <= row["top1"] <= 1 and sum(row["activated_hist"]) == 8 * 6
    assert set(result["oracle"]) >= {"top1", "macs_per_image"}
    chosen = result["chosen"]
    assert set(chosen) >= {"tau", "top1", "macs_per_image", "images_per_s", "base_images_per_s"}
    assert 0 < chosen["tau"] <= 1 and 0 <= chosen["top1"] <= 1 and chosen["images_per_s"] > 0
    assert chosen["top1"] == pytest.approx(chosen["cached_top1"])
    assert result["configs"]["heads"][2] == "trivial" and result["costs"]["heads"][2] == 0


def test_cross_hyperclass_fraction_counts_base_predictions_outside_the_true_group(base_run, converted):
    _, data, model = base_run
    out, result = converted
    group_of = {c: g for g, group in enumerate(MEMBERS) for c in group}
    with torch.no_grad():
        predicted = model.eval()(normalize(data.calib.images, data.info)).argmax(1).tolist()
    crossing = sum(group_of[p] != group_of[t] for p, t in zip(predicted, data.calib.labels.tolist())) / len(predicted)
    assert result["base_cross_hyperclass_calib"] == pytest.approx(crossing)
    assert f"{100 * crossing:.1f}% of the calibration images" in (out / "cpcnn.md").read_text()


def test_reloaded_model_reproduces_the_chosen_point(base_run, converted):
    out, result = converted
    _, data, _ = base_run
    model = load_cpcnn(out)
    routed = model.route(normalize(data.test.images, data.info))
    assert model.tau == result["chosen"]["tau"]
    assert (routed.probs.argmax(1) == data.test.labels).double().mean().item() == pytest.approx(
        result["chosen"]["top1"]
    )
    assert routed.macs.double().mean().item() == pytest.approx(result["chosen"]["macs_per_image"])


def test_resume_reuses_finished_components(base_run, converted):
    run_dir, data, model = base_run
    out, result = converted
    components = sorted((out / "components").glob("*.json"))
    stamps = [path.stat().st_mtime_ns for path in components]
    configs = result["configs"]
    fixed = f"clustifier:{configs['clustifier']},C0:{configs['heads'][0]},C1:{configs['heads'][1]}"
    routed = convert(model, data, out, replace(QUICK, split=result["split"], configs=fixed), device="cpu", resume=True)
    assert isinstance(routed, CPCNN) and not routed.training and routed.tau == result["chosen"]["tau"]
    again = read_json(out / "cpcnn.json")
    assert [path.stat().st_mtime_ns for path in components] == stamps
    assert again["configs"] == result["configs"]


def test_bad_input_is_refused_before_any_work(base_run, synthetic_spec, tmp_path):
    run_dir, data, model = base_run
    with pytest.raises(ConfigError, match="tau"):
        run_cpcnn(run_dir, tmp_path, CPCNNConfig(tau=1.5))
    with pytest.raises(ConfigError, match="split point"):
        convert(model, data, tmp_path, CPCNNConfig(split="layer4"))
    with pytest.raises(ConfigError, match="max_drop"):
        convert(model, data, tmp_path, CPCNNConfig(max_drop=-1))
    for bad in (1, 7, 2.5, True):
        with pytest.raises(ConfigError, match="--hyper-classes"):
            convert(model, data, tmp_path, CPCNNConfig(n_clusters=bad))
    wrong = ModelSpec("resnet18", 0.125, "small", 4, 1)
    with pytest.raises(ConfigError, match="classes"):
        convert(wrong.build(), data, tmp_path)
    (tmp_path / "wrong").mkdir()
    save_run(tmp_path / "wrong", wrong.build(), wrong, synthetic_spec)
    with pytest.raises(ConfigError, match="classes"):
        run_cpcnn(tmp_path / "wrong", tmp_path / "out")
    write_json(tmp_path / "clusters.json", {"hyper_classes": [{"classes": group} for group in MEMBERS]})
    with pytest.raises(ConfigError, match="unknown configuration"):
        convert(model, data, tmp_path, CPCNNConfig(configs="L1,L9"))
    with pytest.raises(ConfigError, match="hyper-class index"):
        convert(model, data, tmp_path, CPCNNConfig(configs="7=L1"))
    with pytest.raises(CheckpointError):
        load_cpcnn(tmp_path / "nothing")
    assert not (tmp_path / "cpcnn.json").exists()


def test_clusters_are_fitted_when_absent_and_checked_when_given(tmp_path):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat(20)
    logits = torch.randn(120, 6, generator=generator) + 4 * torch.nn.functional.one_hot(labels, 6)
    logits[:, [0, 1, 2]] += 2 * (labels[:, None] < 3)
    members, clusters = hyper_classes(tmp_path, torch.softmax(logits, 1), labels, [f"c{i}" for i in range(6)], 0)
    assert sorted(c for group in members for c in group) == list(range(6))
    assert (tmp_path / "clusters.json").exists() and (tmp_path / "eigenvalues.png").exists()
    write_json(tmp_path / "clusters.json", {"hyper_classes": [{"classes": [0, 1]}, {"classes": [1, 2, 3, 4, 5]}]})
    with pytest.raises(ConfigError, match="partition"):
        hyper_classes(tmp_path, torch.softmax(logits, 1), labels, [f"c{i}" for i in range(6)], 0)
    write_json(tmp_path / "clusters.json", {"hyper_classes": [{"classes": [0, 1, 2]}, {"classes": [3, 4]}]})
    with pytest.raises(ConfigError, match="6"):
        hyper_classes(tmp_path, torch.softmax(logits, 1), labels, [f"c{i}" for i in range(6)], 0)


def test_clusters_record_the_weights_they_were_fitted_on_and_refuse_others(tmp_path):
    labels = torch.arange(6).repeat(20)
    probs = torch.softmax(
        torch.randn(120, 6, generator=torch.Generator().manual_seed(2)) + 3 * torch.nn.functional.one_hot(labels), 1
    )
    names = [f"c{i}" for i in range(6)]
    members, clusters = hyper_classes(tmp_path, probs, labels, names, 0, 2, "a" * 64)
    assert clusters["backbone_sha256"] == "a" * 64
    assert hyper_classes(tmp_path, probs, labels, names, 0, 2, "a" * 64)[0] == members
    with pytest.raises(ConfigError, match="fitted on other weights of the model"):
        hyper_classes(tmp_path, probs, labels, names, 0, 2, "b" * 64)
    write_json(tmp_path / "clusters.json", {**clusters, "kept_by_user": True})
    assert hyper_classes(tmp_path, probs, labels, names, 0, 2, "b" * 64)[0] == members


@pytest.mark.parametrize("n_clusters", [2, 3, 4])
def test_a_given_hyper_class_count_is_fitted_and_then_enforced(tmp_path, n_clusters):
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(6).repeat(20)
    probs = torch.softmax(torch.randn(120, 6, generator=generator) + 3 * torch.nn.functional.one_hot(labels, 6), 1)
    names = [f"c{i}" for i in range(6)]
    members, clusters = hyper_classes(tmp_path, probs, labels, names, 0, n_clusters)
    assert len(members) == n_clusters == clusters["n_clusters"] and clusters["n_clusters_given"]
    assert sorted(c for group in members for c in group) == list(range(6))
    assert hyper_classes(tmp_path, probs, labels, names, 0)[0] == members
    with pytest.raises(ConfigError, match="delete it to re-cluster"):
        hyper_classes(tmp_path, probs, labels, names, 0, 7 - n_clusters if n_clusters != 3 else 2)


def test_configuration_selection_and_parsing():
    records = {
        "L0": {"calib_top1": 0.90, "macs": 100},
        "L1": {"calib_top1": 0.897, "macs": 60},
        "L22": {"calib_top1": 0.88, "macs": 10},
    }
    assert pick_cheapest(records, 0.5) == "L1"
    assert pick_cheapest(records, 2.0) == "L22"
    assert pick_cheapest(records, 0.0) == "L0"
    assert parse_configs("L1, L22") == ({}, ("L1", "L22"))
    assert parse_configs("0=L44,clustifier=LC") == ({"0": "L44", "clustifier": "LC"}, None)
    assert parse_configs("C0:L44, C1:L1, clustifier:LC") == ({"0": "L44", "1": "L1", "clustifier": "LC"}, None)
    with pytest.raises(ConfigError, match="mixes"):
        parse_configs("L1,0=L2")


def test_choose_tau_counts_standard_errors_of_the_paired_drop():
    rows = [
        {"tau": 0.3, "top1": 0.897, "macs_per_image": 10, "drop_se": 0.002},
        {"tau": 0.9, "top1": 0.899, "macs_per_image": 20, "drop_se": 0.0005},
    ]
    assert choose_tau(rows, 0.900, 0.5, z=0.0) == (rows[0], True)  # drop 0.3 points <= 0.5
    assert choose_tau(rows, 0.900, 0.5, z=2.0) == (rows[1], True)  # 0.3 + 2 x 0.2 > 0.5; 0.1 + 2 x 0.05 <= 0.5
    assert choose_tau(rows, 0.900, 0.05, z=2.0) == (rows[1], False)  # nothing qualifies: the most accurate


def test_resume_reuses_redoes_or_refuses_as_the_config_changes(base_run, tmp_path):
    """Resume keys: a component is reused when its own training settings match; a changed budget re-chooses from
    reused components; changed training settings are refused against a finished checkpoint (CheckpointError)."""
    _, data, model = base_run
    write_json(tmp_path / "clusters.json", {"hyper_classes": [{"classes": group} for group in MEMBERS]})
    config = replace(QUICK, split="layer2", configs="LC,LP", memory_format="contiguous")

    def stamps() -> dict[str, int]:
        return {path.name: path.stat().st_mtime_ns for path in sorted((tmp_path / "components").glob("*.json"))}

    convert(model, data, tmp_path, config, device="cpu")
    first = read_json(tmp_path / "cpcnn.json")
    before = stamps()
    assert len(before) == 6  # clustifier LC, LP; heads h0 and h1 in LC, LP
    assert first["settings"] == {**config.to_dict(), **{k: first["settings"][k] for k in SETTINGS_EXTRA}}
    convert(model, data, tmp_path, replace(config, max_drop=4.0), device="cpu", resume=True)
    again = read_json(tmp_path / "cpcnn.json")
    assert stamps() == before
    assert again["chosen"]["max_drop"] == 4.0 and again["configs"] == first["configs"]
    choices = json.loads((tmp_path / "timing_choices.json").read_text())
    assert choices["split_sweep"]["identity"]["max_drop"] == 4.0
    for change in ({"lr": 0.1}, {"head_distill": 0.0}, {"seed": 1}):
        with pytest.raises(CheckpointError, match="other settings"):
            convert(model, data, tmp_path, replace(config, **change), device="cpu", resume=True)
    retrained_backbone = copy.deepcopy(model)
    with torch.no_grad():
        retrained_backbone.fc.weight.mul_(1.01)
    with pytest.raises(CheckpointError, match="other settings"):  # its heads learned from another S and teacher
        convert(retrained_backbone, data, tmp_path, config, device="cpu", resume=True)
    convert(model, data, tmp_path, replace(config, lr=0.1), device="cpu")
    retrained = stamps()
    assert all(retrained[name] != before[name] for name in before)
    convert(model, data, tmp_path, replace(config, lr=0.1), device="cpu", resume=True)
    assert stamps() == retrained


def test_top5_of_the_chosen_point_matches_topk_of_the_routed_probabilities(base_run, converted):
    out, result = converted
    _, data, _ = base_run
    probs = load_cpcnn(out).route(normalize(data.test.images, data.info)).probs
    values, indices = torch.topk(probs, 5, dim=1)
    hits = ((indices == data.test.labels[:, None]) & (values > 0)).any(1)  # a class whose head did not run: no hit
    assert result["chosen"]["top5"] == pytest.approx(hits.double().mean().item())
    assert result["chosen"]["top5"] >= result["chosen"]["top1"]
    assert result["base"]["top5"] >= result["base"]["top1"] and result["base"]["calib_top5"] >= 0


def test_the_policy_choice_and_skipped_clustifiers_are_recorded_and_reported(converted):
    out, result = converted
    choice, chosen = result["policy_choice"], result["chosen"]
    assert choice["requested"] == {"rule": "auto", "weighting": "auto"}
    assert choice["chosen"] == {"rule": chosen["rule"], "weighting": chosen["weighting"]} == result["policy"]
    winner = [c for c in choice["candidates"] if c["chosen"]]
    assert len(choice["candidates"]) == 4 and len(winner) == 1 and winner[0]["tau"] == chosen["tau"]
    fine = [c for c in choice["candidates"] if c["meets_max_drop"]]
    if fine:
        assert winner[0]["macs_per_image"] == min(c["macs_per_image"] for c in fine)
    table2 = result["table2_policies"]
    assert [(r["rule"], r["weighting"], r["tau"]) for r in table2] == [
        (c["rule"], c["weighting"], c["tau"]) for c in choice["candidates"]
    ]
    assert all(set(r["test"]) >= {"top1", "top5", "macs_per_image"} for r in table2)
    assert "L44" in result["clustifier_skipped"] and "L44" not in result["table1"]["clustifier"]
    markdown = report_markdown(result, [])  # cpcnn.md may since have been rewritten by a resumed conversion
    assert (
        "Table 2 by policy" in markdown and "paper: Alg. 1 + Eq. 3" in markdown and "ours: top / clustifier" in markdown
    )
    assert "Clustifier L44 not trained" in markdown
