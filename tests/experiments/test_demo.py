import hashlib
import json
import re
import shutil
from dataclasses import replace
from importlib import resources

import jsonschema
import pytest
from rich.console import Console
from safetensors.torch import load_file, save_file

from dynacnn.errors import ConfigError
from dynacnn.experiments.bench import contender_identity
from dynacnn.experiments.demo import DemoConfig, run_demo, set_aside
from dynacnn.experiments.summary import summary_table

QUICK = DemoConfig(data="synthetic", quick=True, data_options={"samples_per_class": 60})


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run_demo(out, QUICK, device="cpu", console=Console(file=open(out / "console.txt", "w"), width=120))
    return out


def test_quick_demo_report_validates_against_the_schema(demo_dir):
    schema = json.loads(resources.files("dynacnn.report").joinpath("report.schema.json").read_text())
    report = json.loads((demo_dir / "report.json").read_text())
    jsonschema.validate(report, schema)
    assert report["base"]["images_per_s"] > 0
    assert {row["batch_size"] for row in report["bench"]} == {1, 32, 256}
    models = {"base", "cpcnn", "mscnn", "mscnn-full", "matched"}
    assert {row["model"] for row in report["bench"]} == models | {name + "-ort" for name in models}
    assert all(row["reference"] == ("base-ort" if row["model"].endswith("-ort") else "base") for row in report["bench"])
    assert {(t["runtime"], t["model"]) for t in report["speed_targets"]} == {
        (runtime, model) for runtime in ("PyTorch", "ONNX Runtime") for model in ("cpcnn", "mscnn")
    }
    baselines = report["baselines"]
    for key, matched in (("per_method", "compute_matched_distilled"), ("per_method_plain", "compute_matched")):
        static = [report["base"], baselines[matched]]
        for method, compared in baselines[key]["methods"].items():
            chosen = report[method]["chosen"]
            assert compared["static"]["macs_per_image"] == pytest.approx(chosen["macs_per_image"])
            assert compared["gap_points"] == pytest.approx(100 * (chosen["top1"] - compared["static"]["top1"]))
            low, high = sorted(p["top1"] for p in static)
            if compared["static"]["kind"] == "interpolated":  # between the two static networks' accuracies
                assert low <= compared["static"]["top1"] <= high
        assert set(baselines[key]["methods"]) == {"cpcnn", "mscnn"}
    assert report["base"]["top5"] >= report["base"]["top1"]


def test_the_mscnn_and_one_static_network_learn_from_the_base(demo_dir):
    base = str(demo_dir / "base")
    distilled = json.loads((demo_dir / "matched-distilled" / "run.json").read_text())
    plain = json.loads((demo_dir / "matched" / "run.json").read_text())
    assert (distilled["teacher"], distilled["model"]) == (base, plain["model"]) and "teacher" not in plain
    assert (
        distilled["teacher_sha256"]
        == hashlib.sha256((demo_dir / "base" / "model.safetensors").read_bytes()).hexdigest()
    )
    assert (demo_dir / "matched-distilled" / "model.safetensors").read_bytes() != (
        demo_dir / "matched" / "model.safetensors"
    ).read_bytes()
    assert json.loads((demo_dir / "cpcnn" / "cpcnn.json").read_text())["base"]["sha256"] == distilled["teacher_sha256"]
    training = json.loads((demo_dir / "mscnn" / "mscnn.json").read_text())["training"]
    assert (training["teacher_sha256"], training["distill"]) == (distilled["teacher_sha256"], 0.5)
    assert "teacher" not in training  # no paths in mscnn.json: a moved demo reports the same


def test_schema_rejects_a_report_missing_its_parts(demo_dir):
    schema = json.loads(resources.files("dynacnn.report").joinpath("report.schema.json").read_text())
    report = json.loads((demo_dir / "report.json").read_text())
    broken = {key: value for key, value in report.items() if key != "cpcnn"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    report["base"]["top1"] = 93.0  # a percentage where a fraction belongs
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, schema)


def test_report_markdown_links_only_existing_files(demo_dir):
    text = (demo_dir / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "tradeoff.png" in links
    for link in links:
        assert (demo_dir / link).exists(), link
    console = (demo_dir / "console.txt").read_text()
    assert "speed-up vs base" in console and "CP-CNN" in console
    report = json.loads((demo_dir / "report.json").read_text())
    cp_speedup = next(
        r["wall_speedup_median"] for r in report["bench"] if r["model"] == "cpcnn" and r["batch_size"] == 256
    )
    cp_line = next(line for line in console.splitlines() if "CP-CNN (tau" in line)
    assert f"{cp_speedup:.2f}x" in cp_line  # the closing table shows the benchmark's paired median
    assert f"{cp_speedup:.2f}x" in next(line for line in text.splitlines() if line.startswith("| CP-CNN"))


def test_closing_table_shows_the_paired_median_not_the_ratio_of_images_per_s(tmp_path):
    point = {"top1": 0.9, "top5": 0.9876, "macs_per_image": 1e6}
    static = {**point, "top1": 0.8912, "kind": "interpolated", "from": [0.15625, 0.25], "images_per_s": 1234.0}
    report = {
        "base": point,
        "cpcnn": {"chosen": {**point, "tau": 0.3}},
        "mscnn": {"chosen": {**point, "top5": None, "policy": "TP-C1"}},
        "baselines": {
            "compute_matched": {**point, "width": 0.1875},
            "per_method": {
                "margin_points": 0.5,
                "methods": {
                    "cpcnn": {"static": static, "gap_points": 0.88, "beats": True},
                    "mscnn": {"static": static, "gap_points": 0.12, "beats": False},
                },
            },
        },
        "images_per_s_batch256": {"base": 1000.0, "cpcnn": 1500.0, "mscnn": 2000.0, "matched": 1100.0},
        "bench": [
            {"model": name, "batch_size": 256, "wall_speedup_median": median}
            for name, median in (("base", 1.0), ("cpcnn", 1.19), ("mscnn", 1.77), ("matched", 1.03))
        ],
    }
    with open(tmp_path / "console.txt", "w") as handle:
        summary_table(Console(file=handle, width=120), report)
    lines = (tmp_path / "console.txt").read_text().splitlines()
    cp_line = next(line for line in lines if "CP-CNN" in line)
    assert "1.19x" in cp_line and "1.50x" not in cp_line
    assert "1.77x" in next(line for line in lines if "MS-CNN" in line)
    assert "98.76%" in cp_line and "98.76%" not in next(line for line in lines if "MS-CNN (" in line)
    static_line = next(line for line in lines if "static ResNet at the CP-CNN" in line)
    assert "89.12%" in static_line and "~1234" in static_line
    assert "+0.88 points" in next(line for line in lines if line.startswith("CP-CNN against")) and "met" in lines[-2]
    assert "missed" in next(line for line in lines if line.startswith("MS-CNN against"))


def test_the_console_puts_the_static_resnets_efficiency_beside_each_routing_efficiency(tmp_path):
    point = {"top1": 0.9, "top5": 0.98, "macs_per_image": 1e6}
    target = {"runtime": "PyTorch", "model": "cpcnn", "reference": "base", "batch_size": 256, "target": 0.75}
    report = {
        "base": point,
        "cpcnn": {"chosen": {**point, "tau": 0.3}},
        "mscnn": {"chosen": {**point, "policy": "TP-C1"}},
        "baselines": {"compute_matched": {**point, "width": 0.15625}},
        "images_per_s_batch256": {"base": 1000.0, "cpcnn": 1500.0, "mscnn": 2000.0, "matched": 1100.0},
        "bench": [
            {"model": name, "batch_size": 256, "wall_speedup_median": 1.0}
            for name in ("base", "cpcnn", "mscnn", "matched")
        ],
        "speed_targets": [
            {**target, "measure": "routing efficiency", "measured": 0.65, "met": False, "static_efficiency": 0.57},
            {**target, "measure": "speed-up", "measured": 1.55, "met": False, "static_efficiency": None},
        ],
    }
    with open(tmp_path / "console.txt", "w") as handle:
        summary_table(Console(file=handle, width=200), report)
    lines = (tmp_path / "console.txt").read_text().splitlines()
    efficiency = next(line for line in lines if "routing efficiency over base" in line)
    assert "0.650 (target 0.75: missed); the static ResNet, no routing: 0.570" in efficiency
    assert "static ResNet" not in next(line for line in lines if "speed-up over base" in line)


@pytest.mark.parametrize("heads_epochs", [16, 5])
def test_the_console_says_when_the_heads_trained_longer_than_the_static_networks(heads_epochs, tmp_path):
    point = {"top1": 0.9, "top5": 0.98, "macs_per_image": 1e6}
    static = {**point, "kind": "interpolated", "from": [0.15625, 0.25]}
    report = {
        "base": point,
        "cpcnn": {"chosen": {**point, "tau": 0.3}, "settings": {"epochs": heads_epochs}},
        "mscnn": {"chosen": {**point, "policy": "TP-C1"}},
        "settings": {"recipe": {"epochs": 5}},
        "baselines": {
            "compute_matched": {**point, "width": 0.15625},
            "per_method": {
                "margin_points": 0.5,
                "methods": {"cpcnn": {"static": static, "gap_points": 0.6, "beats": True}},
            },
        },
        "images_per_s_batch256": {"base": 1000.0, "cpcnn": 1500.0, "mscnn": 2000.0, "matched": 1100.0},
        "bench": [
            {"model": name, "batch_size": 256, "wall_speedup_median": 1.0}
            for name in ("base", "cpcnn", "mscnn", "matched")
        ],
    }
    with open(tmp_path / "console.txt", "w") as handle:
        summary_table(Console(file=handle, width=200), report)
    said = (tmp_path / "console.txt").read_text()
    assert ("trained 16 epochs on S's outputs, the static networks the base's 5" in said) == (heads_epochs > 5)


def test_a_rerun_reuses_every_finished_step(demo_dir):
    before = {p.name: p.stat().st_mtime for p in (demo_dir / "base").iterdir()}
    run_demo(demo_dir, QUICK, device="cpu", console=Console(file=open(demo_dir / "console2.txt", "w"), width=120))
    assert {p.name: p.stat().st_mtime for p in (demo_dir / "base").iterdir()} == before
    assert (demo_dir / "console2.txt").read_text().count("found, reusing") == 6  # every step but the report


def test_a_rerun_with_another_max_drop_redoes_the_choices_not_the_training(demo_dir, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(demo_dir, out)
    weights = [
        out / "base" / "model.safetensors",
        out / "matched" / "model.safetensors",
        out / "mscnn" / "model.safetensors",
        out / "matched-distilled" / "model.safetensors",
    ]
    trained = {path: path.read_bytes() for path in weights}
    run_demo(
        out,
        replace(QUICK, max_drop=3.0),
        device="cpu",
        console=Console(file=open(out / "console3.txt", "w"), width=120),
    )
    console = (out / "console3.txt").read_text()
    assert console.count("found with other settings, redoing") >= 2  # CP-CNN and MS-CNN choose again
    assert json.loads((out / "bench.json").read_text())["contenders"] == contender_identity(
        out
    )  # re-timed if they moved
    for name in ("cpcnn/cpcnn.json", "mscnn/mscnn.json"):
        assert json.loads((out / name).read_text())["chosen"]["max_drop"] == 3.0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["max_drop_points"] == 3.0
    assert report["settings"]["config"]["cpcnn"]["max_drop"] == 3.0 and report["mscnn"]["settings"]["max_drop"] == 3.0
    width = report["baselines"]["compute_matched"]["width"]
    if width == json.loads((demo_dir / "report.json").read_text())["baselines"]["compute_matched"]["width"]:
        assert {path: path.read_bytes() for path in weights} == trained
    else:
        assert "was trained for another width" in console and (out / "matched-previous-1" / "run.json").exists()
        assert (out / "matched-distilled-previous-1" / "run.json").exists()
        assert {path: path.read_bytes() for path in weights[:3:2]} == {path: trained[path] for path in weights[:3:2]}
    assert json.loads((out / "matched" / "run.json").read_text())["model"]["width"] == width


def test_a_base_with_other_weights_retrains_what_was_made_from_it(demo_dir, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(demo_dir, out)
    weights = load_file(str(out / "base" / "model.safetensors"))
    save_file(
        {name: tensor * 1.01 if tensor.is_floating_point() else tensor for name, tensor in weights.items()},
        str(out / "base" / "model.safetensors"),
    )
    plain = (out / "matched" / "model.safetensors").read_bytes()
    run_demo(out, QUICK, device="cpu", console=Console(file=open(out / "console4.txt", "w"), width=120))
    steps = [line for line in (out / "console4.txt").read_text().splitlines() if re.match(r"\[\d/7\]", line)]
    assert "CP-CNN" in steps[1] and "running" in steps[1] and (out / "cpcnn-previous-1" / "cpcnn.json").exists()
    assert "MS-CNN" in steps[2] and "running" in steps[2] and (out / "mscnn-previous-1" / "mscnn.json").exists()
    assert "on labels" in steps[3] and "reusing" in steps[3]
    assert "distilled" in steps[4] and "running" in steps[4] and (out / "matched-distilled-previous-1").exists()
    assert (out / "matched" / "model.safetensors").read_bytes() == plain
    digest = hashlib.sha256((out / "base" / "model.safetensors").read_bytes()).hexdigest()
    assert json.loads((out / "mscnn" / "mscnn.json").read_text())["training"]["teacher_sha256"] == digest
    assert json.loads((out / "cpcnn" / "cpcnn.json").read_text())["base"]["sha256"] == digest
    assert "Benchmark" in steps[5] and "redoing" in steps[5]  # the timed models changed: timed again
    assert (
        json.loads((out / "bench.json").read_text())["contenders"]["weights_sha256"]["base/model.safetensors"] == digest
    )


def test_a_rerun_with_another_recipe_is_refused_before_anything_changes(demo_dir):
    before = {p: p.stat().st_mtime for p in demo_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="train_config.*delete"):
        run_demo(
            demo_dir,
            replace(QUICK, epochs=3),
            device="cpu",
            console=Console(file=open(demo_dir.parent / "console4.txt", "w"), width=120),
        )
    assert {p: p.stat().st_mtime for p in demo_dir.rglob("*") if p.is_file()} == before


def test_set_aside_keeps_every_earlier_run(tmp_path):
    for i in (1, 2):
        (tmp_path / "matched").mkdir()
        (tmp_path / "matched" / "run.json").write_text(str(i))
        assert set_aside(tmp_path / "matched") == tmp_path / f"matched-previous-{i}"
    assert [(tmp_path / f"matched-previous-{i}" / "run.json").read_text() for i in (1, 2)] == ["1", "2"]
    assert not (tmp_path / "matched").exists()


def test_negative_max_drop_or_epochs_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="--max-drop"):
        run_demo(tmp_path / "a", replace(QUICK, max_drop=-1))
    with pytest.raises(ConfigError, match="--epochs"):
        run_demo(tmp_path / "b", replace(QUICK, epochs=0))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
