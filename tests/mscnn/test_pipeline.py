"""End to end: run_mscnn on tiny synthetic data writes mscnn.json, mscnn.md and plots; training modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.io import write_json
from dynacnn.mscnn.analysis import MC_TARGETS
from dynacnn.mscnn.config import MSCNNRunConfig
from dynacnn.mscnn.model import MSCNN, MSCNNConfig, StageConfig
from dynacnn.mscnn.pipeline import run_mscnn
from dynacnn.mscnn.rank import pick_pruning_thresholds
from dynacnn.mscnn.serialize import load_mscnn, read_mscnn_result
from dynacnn.mscnn.training import train_mscnn
from dynacnn.train import TensorBatches, TrainConfig

from .helpers import tiny_config, tiny_data

DATA = {"num_classes": 6, "num_groups": 2, "samples_per_class": 40, "image_size": 12, "channels": 1}
CONFIG = MSCNNConfig(tuple(StageConfig(b, (4, 6), (1, 2), 8) for b in ("LL", "LH", "HL")), 1, 6, 2)
RUN = MSCNNRunConfig(epochs=1, quick=True, model=CONFIG)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mscnn")
    result = run_mscnn(out, RUN, data="synthetic", data_options=DATA, device="cpu")
    return out, result


def test_writes_the_required_artifacts(run) -> None:
    out, result = run
    assert read_mscnn_result(out) == result
    assert result["settings"] == json.loads(json.dumps(RUN.to_dict()))
    assert MSCNNRunConfig.from_dict(result["settings"]) == RUN
    for name in (
        "mscnn.md",
        "mscnn_tradeoff.png",
        "mscnn_rank.png",
        "mscnn_bits.png",
        "mscnn_cap_conv.png",
        "mscnn_timing.png",
        "model.safetensors",
        "model.json",
    ):
        assert (out / name).stat().st_size > 0
    assert [set(row) >= {"params", "macs", "top1"} for row in result["stages"]] == [True] * 3
    assert set(result["full"]) >= {"top1", "macs_per_image", "images_per_s"}
    assert all(
        set(row) >= {"name", "settings", "top1", "macs_per_image", "params_per_image"} for row in result["policies"]
    )
    assert set(result["oracle"]) >= {"top1", "macs_per_image"}
    assert result["uniform_chosen"]["name"] in ("uniform-C1", "uniform-C5", "full")
    assert set(result["chosen"]) >= {"policy", "settings", "top1", "macs_per_image", "images_per_s"}
    assert [set(row) >= {"saturation_bits", "size_mb_32", "size_mb_bits"} for row in result["bits"]["stages"]] == [
        True
    ] * 3


def test_units_and_consistency(run) -> None:
    _, result = run
    fractions = [
        result["full"]["top1"],
        result["oracle"]["top1"],
        result["chosen"]["top1"],
        *(r["top1"] for r in result["policies"]),
    ]
    assert all(0 <= f <= 1 for f in fractions)
    assert result["full"]["macs_per_image"] == pytest.approx(sum(s["macs"] for s in result["stages"]))
    assert result["chosen"]["macs_per_image"] <= result["full"]["macs_per_image"]
    assert result["oracle"]["top1"] >= max(s["top1"] for s in result["stages"])
    assert result["chosen"]["counted_macs_first_batch"] == result["chosen"]["modelled_macs_first_batch"]
    assert result["chosen"]["calib_top1"] >= result["full"]["calib_top1"] - 0.005 - 1e-9


def test_top5_everywhere_and_at_least_top1(run) -> None:
    _, result = run
    rows = [
        *result["stages"],
        result["full"],
        result["chosen"],
        result["uniform_chosen"],
        *result["policies"],
        *result["bits"]["stages"],
        *result["bits"]["dynamic"],
        *result["bits"]["whole_network"]["rows"],
    ]
    assert all(row["top5"] >= row["top1"] - 1e-9 for row in rows)
    assert all(row["calib_top5"] >= row["calib_top1"] - 1e-9 for row in [*result["stages"], result["full"]])
    assert all(r["smart_test_top5"] >= r["smart_test_top1"] - 1e-9 for r in result["cap_conv"])


def test_eq1_candidates_are_pick_pruning_thresholds_choice(run) -> None:
    _, result = run
    p_mc = torch.tensor(result["prediction_rank"]["p_mc"], dtype=torch.float64)
    picked = {tuple(pick_pruning_thresholds(p_mc, t)[:-1]) for t in MC_TARGETS}
    eq1 = result["cap_fc_eq1"]
    assert {tuple(c["p_th"]) for c in eq1["candidates"]} == picked
    assert len(result["all_calib"]["CAP_FC eq1"]) == len(picked)
    assert eq1["cap_fc_winner"]["is_eq1"] == eq1["cap_fc_winner"]["name"].endswith("eq1")
    assert eq1["chosen_is_eq1"] == result["chosen"]["policy"].endswith("eq1")


def test_whole_network_bits_beside_float(run) -> None:
    _, result = run
    whole, stages = result["bits"]["whole_network"], result["bits"]["stages"]
    assert whole["saturation_bits"] == [row["saturation_bits"] for row in stages]
    assert all(b >= s for b, s in zip(whole["bits"], whole["saturation_bits"]))
    keys = {(r["vector"], r["split"], r["policy"]) for r in whole["rows"]}
    for split in ("calib", "test"):
        assert {("float", split, "full"), ("saturation", split, "full"), ("saturation", split, "chosen")} <= keys
    float_test = next(
        r for r in whole["rows"] if r["vector"] == "float" and r["split"] == "test" and r["policy"] == "full"
    )
    assert float_test["top1"] == pytest.approx(result["full"]["top1"])
    chosen_calib = next(
        r for r in whole["rows"] if (r["vector"], r["split"], r["policy"]) == ("float", "calib", "chosen")
    )
    assert chosen_calib["top1"] == pytest.approx(result["chosen"]["calib_top1"])
    assert result["cap_conv_ranking"]["split"] == "train"


def test_resume_reuses_the_finished_training(run) -> None:
    out, result = run
    again = run_mscnn(out, RUN, data="synthetic", data_options=DATA, device="cpu", resume=True)
    assert again["stages"] == result["stages"]
    model = load_mscnn(out)
    assert isinstance(model.network, MSCNN) and model.network.config == CONFIG
    assert model.policy.settings() == result["chosen"]["settings"]


def test_bad_arguments(tmp_path) -> None:
    with pytest.raises(ConfigError, match="max-drop"):
        run_mscnn(tmp_path / "out", MSCNNRunConfig(max_drop=-1), data="synthetic", data_options=DATA)
    with pytest.raises(ConfigError, match="stages"):
        run_mscnn(tmp_path / "out", MSCNNRunConfig(stages=1), data="synthetic", data_options=DATA)
    assert not (tmp_path / "out").exists()
    write_json(tmp_path / "mscnn.json", {"stages": []})
    with pytest.raises(CheckpointError, match="lacks"):
        read_mscnn_result(tmp_path)


def test_stagewise_training_freezes_earlier_stages(tmp_path) -> None:
    torch.manual_seed(0)
    model = MSCNN(tiny_config(stages=2))
    x, y = tiny_data(24, seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = train_mscnn(
        model,
        TensorBatches(x, y, 12, shuffle=True),
        TrainConfig(epochs=1, batch_size=12, lr=0.05),
        mode="stagewise",
        run_dir=tmp_path,
        resume=False,
        device=torch.device("cpu"),
        identity={},
    )
    assert [row["stage"] for row in history] == [1, 2]
    assert (tmp_path / "stage1" / "checkpoint.pt").exists() and (tmp_path / "stage2" / "checkpoint.pt").exists()
    after = model.state_dict()
    assert not torch.equal(before["bodies.0.last.0.weight"], after["bodies.0.last.0.weight"])
    assert all(p.requires_grad for p in model.parameters())


def test_bad_training_mode(tmp_path) -> None:
    model = MSCNN(tiny_config(stages=2))
    x, y = tiny_data(12, seed=5)
    with pytest.raises(ConfigError, match="training mode"):
        train_mscnn(
            model,
            TensorBatches(x, y, 12),
            TrainConfig(epochs=1),
            mode="greedy",
            run_dir=tmp_path,
            resume=False,
            device=torch.device("cpu"),
            identity={},
        )
    with pytest.raises(ConfigError, match="loss weights"):
        train_mscnn(
            model,
            TensorBatches(x, y, 12),
            TrainConfig(epochs=1),
            weights=(1.0,),
            run_dir=tmp_path,
            resume=False,
            device=torch.device("cpu"),
            identity={},
        )
