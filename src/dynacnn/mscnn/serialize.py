"""Saving and loading an MS-CNN run: model.safetensors + model.json (structure, training) and mscnn.json (results)."""

from __future__ import annotations

from pathlib import Path

import torch

from dynacnn.errors import CheckpointError
from dynacnn.io import read_json
from dynacnn.models.layout import device_layout
from dynacnn.mscnn.model import MSCNN, MSCNNConfig
from dynacnn.runs import load_weights

FORMAT_VERSION = 1
REQUIRED_KEYS = ("stages", "full", "policies", "oracle", "chosen", "bits")


def load_mscnn(out_dir: str | Path, device: torch.device | str = "cpu") -> MSCNN:
    """The trained MS-CNN of a finished run_mscnn output directory (channels_last on the CPU)."""
    meta = read_json(Path(out_dir) / "model.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{out_dir}/model.json has an unknown format version; re-run `dynacnn mscnn`")
    model = load_weights(Path(out_dir) / "model.safetensors", MSCNN(MSCNNConfig.from_dict(meta["config"])))
    return device_layout(model.to(device), device).eval()


def read_mscnn_result(out_dir: str | Path) -> dict:
    """mscnn.json of a finished run, checked for the required keys."""
    path = Path(out_dir) / "mscnn.json"
    result = read_json(path)
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; re-run `dynacnn mscnn --out {out_dir}`")
    return result
