"""A CP-CNN conversion from a streamed image folder with S recomputed per batch, against the in-memory, cached one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.cpcnn.pipeline import convert
from dynacnn.data import StreamSplit, load_dataset
from dynacnn.io import ensure_dir, read_json, write_json
from dynacnn.models import build_resnet


def write_folder(root: Path, classes: int = 4, train: int = 12, test: int = 4) -> Path:
    """`root/{train,test}/c<k>/<i>.png`: 24 x 20 px RGB, a noisy colour per class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for k in range(classes):
            (root / split / f"c{k}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.normal(60 * k, 40, (20, 24, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{k}" / f"{i:02d}.png")
    return root


CONFIG = CPCNNConfig(
    quick=True, split="layer1", memory_format="contiguous", max_drop=50.0, configs="clustifier:LC,C0:L22,C1:L22"
)


def test_streamed_and_recomputed_conversion_matches_the_in_memory_cached_one(tmp_path: Path):
    root = write_folder(tmp_path / "data")
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", 4, 3, 0.0625, "small").eval()
    results = {}
    for name, options, budget in (("memory", {}, "1GB"), ("stream", {"stream": True, "num_workers": 0}, 0)):
        data = load_dataset("imagefolder", root, calib_fraction=0.25, **options)
        out = ensure_dir(tmp_path / name)
        write_json(out / "clusters.json", {"hyper_classes": [{"classes": [0, 1]}, {"classes": [2, 3]}]})
        convert(backbone, data, out, replace(CONFIG, feature_memory=budget), device="cpu")
        results[name] = read_json(out / "cpcnn.json")
    memory, stream = results["memory"], results["stream"]
    assert isinstance(data.train, StreamSplit)
    assert set(memory["features"]["modes"].values()) == {"cache"}
    assert set(stream["features"]["modes"].values()) == {"recompute"} and stream["features"]["budget_bytes"] == 0
    assert stream["settings"]["feature_memory"] == 0
    assert stream["base"] == memory["base"]
    for component, rows in memory["table1"].items():
        for config, row in rows.items():
            assert stream["table1"][component][config]["calib_top1"] == pytest.approx(row["calib_top1"])
    assert stream["configs"] == memory["configs"]
    assert stream["chosen"]["tau"] == memory["chosen"]["tau"]
    assert stream["chosen"]["top1"] == pytest.approx(memory["chosen"]["top1"])
