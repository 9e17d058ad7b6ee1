"""`dynacnn run`: an export directory on a dataset's test split with ONNX Runtime (top-1, MACs, images/s)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynacnn.errors import ConfigError
from dynacnn.runs import DataSpec
from dynacnn.runtime import CPCNNOutput, MSCNNOutput, load, read_spec
from dynacnn.train import ImageBatches


def evaluate_export(
    export_dir: str | Path, *, batch_size: int = 256, threads: int | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Top-1, mean MACs per image and images/s of the exported model on its dataset's test split (the data spec
    routing.json records); CP-CNN: mean active heads; MS-CNN: fraction of images leaving at each stage."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size!r}")
    export_dir = Path(export_dir)
    spec = read_spec(export_dir)
    data = (spec.get("source") or {}).get("data")
    if data is None:
        raise ConfigError(f"{export_dir}/routing.json records no dataset; export it with `dynacnn export`")
    runtime = load(export_dir, threads=threads)
    splits = DataSpec(**data).load()
    test = splits.test if limit is None else splits.test.subset(limit)
    labels, outputs, seconds = [], [], 0.0
    for x, y in ImageBatches(test, splits.info, batch_size)(None, torch.device("cpu")):
        images = x.contiguous().numpy()
        start = time.perf_counter()
        outputs.append(runtime.run(images))
        seconds += time.perf_counter() - start
        labels.append(y.numpy())
    truth = np.concatenate(labels)
    probs = np.concatenate([o.probs for o in outputs])
    macs = np.concatenate([o.macs for o in outputs])
    result: dict[str, Any] = {
        "export_dir": str(export_dir),
        "method": spec["method"],
        "images": int(len(truth)),
        "top1": float((probs.argmax(1) == truth).mean()),
        "macs_per_image": float(macs.mean()),
        "images_per_s": float(len(truth) / seconds) if seconds else float("inf"),
        "batch_size": batch_size,
    }
    if isinstance(outputs[0], CPCNNOutput):
        result["active_heads_per_image"] = float(np.concatenate([o.active for o in outputs]).sum(1).mean())
    if isinstance(outputs[0], MSCNNOutput):
        exits = np.concatenate([o.exit_stage for o in outputs])
        result["exit_fractions"] = (np.bincount(exits, minlength=len(spec["stages"])) / len(exits)).tolist()
    return result
