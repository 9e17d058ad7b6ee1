"""Exported models as `dynacnn.timing` contenders, for `dynacnn bench` and benchmarks/export_speed.py.

A contender feeds the torch batch `measure` gives it to the ONNX Runtime runtime as a C-contiguous numpy array
(a channels_last batch is copied to NCHW: that copy is part of what ONNX Runtime costs when fed from torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dynacnn.export.directory import export_directory
from dynacnn.io import read_json
from dynacnn.mscnn.serialize import load_mscnn
from dynacnn.runtime import Runtime, load
from dynacnn.timing import Contender

DEMO_MODELS = (
    ("base", "run", "base"),
    ("cpcnn", "cpcnn", "cpcnn"),
    ("mscnn", "mscnn", "mscnn"),
    ("mscnn-full", "mscnn", "mscnn"),
    ("matched", "run", "matched"),
)
SUFFIX = "-ort"


def runtime_contender(name: str, runtime: Runtime, macs_per_image: float) -> Contender:
    """`runtime.run` on the numpy view of each torch batch."""
    return Contender(name, lambda x: runtime.run(x.detach().cpu().contiguous().numpy()), macs_per_image)


def onnx_contenders(
    demo_dir: str | Path, *, threads: int | None = None, export_root: str | Path | None = None
) -> list[Contender]:
    """The demo's base, CP-CNN (chosen tau), MS-CNN (chosen policy and full network) and matched ResNet, each
    exported to `export_root/<name>` (default demo_dir/export) and run with ONNX Runtime (`threads`: default torch's
    count), named "<name>-ort"; MACs per image as `dynacnn bench` counts them (the routed models' test-split means)."""
    demo_dir = Path(demo_dir)
    root = Path(export_root) if export_root is not None else demo_dir / "export"
    threads = torch.get_num_threads() if threads is None else threads
    contenders = []
    for name, kind, source in DEMO_MODELS:
        full = name == "mscnn-full"
        spec = export_directory(root / name, **{kind: demo_dir / source}, mscnn_policy="full" if full else "chosen")
        macs = exported_macs(demo_dir, name, spec)
        contenders.append(runtime_contender(name + SUFFIX, load(root / name, threads=threads), macs))
    return contenders


def exported_macs(demo_dir: Path, name: str, spec: dict[str, Any]) -> float:
    """MACs per image of a demo model as `dynacnn bench` counts them: a static model's count, the routed models'
    test-split means, the full MS-CNN's every-stage cost."""
    if spec["method"] == "plain":
        return float(spec["parts"]["model"]["macs"])
    if name == "mscnn-full":
        return full_mscnn_macs(demo_dir / "mscnn", spec["input_shape"])
    return chosen_macs(demo_dir, name)


def full_mscnn_macs(mscnn_dir: Path, input_shape: Sequence[int]) -> float:
    """MACs per image of the full MS-CNN (every stage, every class), from its stage cost table."""
    full = load_mscnn(mscnn_dir, "cpu", "full")
    return float(full.route(torch.zeros(1, *input_shape)).macs[0])


def chosen_macs(demo_dir: Path, name: str) -> float:
    """The routed model's mean MACs per image on the test split, as its run recorded them."""
    return float(read_json(demo_dir / name / f"{name}.json")["chosen"]["macs_per_image"])


def ort_speedups(rows: list[dict[str, Any]], base: str = "base" + SUFFIX) -> dict[int, dict[str, float]]:
    """Per batch size, each contender's images/s over `base`'s images/s (both from the same interleaved passes)."""
    speed: dict[int, dict[str, float]] = {}
    for row in rows:
        speed.setdefault(int(row["batch_size"]), {})[str(row["model"])] = float(row["images_per_s"])
    return {
        batch: {name: value / models[base] for name, value in models.items()}
        for batch, models in speed.items()
        if base in models
    }
