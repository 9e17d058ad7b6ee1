"""`dynacnn bench` and the demo's benchmark step: the demo's four models timed side by side (bench.json / bench.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dynacnn.baseline import TIMED_IMAGES
from dynacnn.cpcnn import load_cpcnn
from dynacnn.data import normalize
from dynacnn.errors import ConfigError
from dynacnn.experiments.speed_targets import speed_targets
from dynacnn.export import onnx_contenders, ort_speedups
from dynacnn.export.contenders import SUFFIX, full_mscnn_macs
from dynacnn.flops import count_macs
from dynacnn.io import read_json
from dynacnn.models.fold import fold_batchnorm
from dynacnn.models.layout import device_layout
from dynacnn.mscnn.serialize import load_mscnn, read_mscnn_result
from dynacnn.report.demo_report import write_bench
from dynacnn.report.render import targets_table, timing_table
from dynacnn.runs import load_run
from dynacnn.timing import Contender, measure
from dynacnn.train import resolve_device

BATCH_SIZES = (1, 32, 256)
CHUNK_BATCHES = 10
DEMO_PARTS = ("base/run.json", "cpcnn/cpcnn.json", "mscnn/mscnn.json", "matched/run.json")
TIMED_WEIGHTS = (
    "base/model.safetensors",
    "cpcnn/cpcnn.safetensors",
    "mscnn/model.safetensors",
    "matched/model.safetensors",
)
"""The weights of the timed models: routing decisions, and so sub-batch sizes and time, follow them."""
BENCH_FORMAT = 2  # 2: the full MS-CNN timed beside its policy; exported contenders paired with the exported base


def demo_contenders(out: Path, input_shape: tuple[int, ...], device: torch.device) -> list[Contender]:
    """Base, CP-CNN at its chosen tau, MS-CNN with its chosen policy and as the full network, and the
    compute-matched ResNet, each with its BatchNorms folded into the convs (the form a deployment runs)."""
    probe = torch.zeros(1, *input_shape)
    contenders = []
    for name, run_dir in (("base", out / "base"), ("matched", out / "matched")):
        model = load_run(run_dir, "cpu").model
        macs = count_macs(model, probe).macs_per_image
        model = device_layout(model.to(device), device)
        contenders.append(Contender(name, fold_batchnorm(model), macs))
    cpcnn = fold_batchnorm(load_cpcnn(out / "cpcnn", device))
    contenders.insert(1, Contender("cpcnn", cpcnn, read_json(out / "cpcnn" / "cpcnn.json")["chosen"]["macs_per_image"]))
    chosen = read_mscnn_result(out / "mscnn")["chosen"]
    mscnn = fold_batchnorm(load_mscnn(out / "mscnn", device))  # its chosen policy, CAP_CONV included
    contenders.insert(2, Contender("mscnn", mscnn, chosen["macs_per_image"]))
    full = fold_batchnorm(load_mscnn(out / "mscnn", device, "full"))
    contenders.insert(3, Contender("mscnn-full", full, full_mscnn_macs(out / "mscnn", input_shape)))
    return contenders


def contender_identity(out: Path) -> dict[str, Any]:
    """What the benchmark timed: each contender's run settings, chosen operating point and the SHA-256 of its weights
    (a rerun of the demo re-measures when any of them changed)."""
    runs = {name: read_json(out / name / "run.json") for name in ("base", "matched")}
    cpcnn, mscnn = read_json(out / "cpcnn" / "cpcnn.json")["chosen"], read_json(out / "mscnn" / "mscnn.json")["chosen"]
    return {
        "format": BENCH_FORMAT,
        **{name: {"model": run["model"], "train_config": run.get("train_config")} for name, run in runs.items()},
        "cpcnn": {"tau": cpcnn["tau"], "macs_per_image": cpcnn["macs_per_image"]},
        "mscnn": {"policy": mscnn["policy"], "settings": mscnn["settings"]},
        "weights_sha256": {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in TIMED_WEIGHTS},
    }


def benchmark(
    out: Path, splits: Any, device: torch.device, console: Console, repeats: int = 5, onnx: bool = True
) -> dict[str, Any]:
    """Images/s of every contender at batch 1, 32 and 256 on the test split, paired chunks; writes bench.json/.md
    with the speed targets checked per runtime (`speed_targets`).

    With `onnx` (CPU only) the models also run exported (`out/export/<name>`, ONNX Runtime, routed in numpy) as
    contenders "<name>-ort" in the same interleaved passes, each paired with base-ort (the same runtime)."""
    contenders = demo_contenders(out, splits.info.input_shape, device)
    onnx = onnx and device.type == "cpu"
    if onnx:
        contenders += onnx_contenders(out, threads=torch.get_num_threads())
    images = device_layout(normalize(splits.test.read_images(0, TIMED_IMAGES), splits.info).to(device), device)
    batch1_images = 500 if repeats > 2 else 100
    references = {c.name: "base" + SUFFIX for c in contenders if c.name.endswith(SUFFIX)}
    rows = measure(
        contenders,
        images,
        BATCH_SIZES,
        repeats=repeats,
        max_images_batch1=batch1_images,
        chunk_batches=CHUNK_BATCHES,
        references=references,
    )
    targets = speed_targets(rows)
    console.print(timing_table(rows))
    console.print(targets_table(targets))
    extra = {"ort_speedups": {str(b): ratios for b, ratios in ort_speedups(rows).items()}} if onnx else {}
    return write_bench(
        out,
        {
            "contenders": contender_identity(out),
            "rows": rows,
            "targets": targets,
            "images_per_s": {row["model"]: row["images_per_s"] for row in rows if row["batch_size"] == 256},
            **extra,
            "note": f"interleaved repetitions in one process, each over chunks of {CHUNK_BATCHES} batches run by every model in "
            "turn; BatchNorm folded into the convs of every model; speed-ups are per-chunk base time / model time "
            "on the same images (min and median); "
            f"batch 1 is timed on the first {batch1_images} test images; device {device}"
            + (
                "; ONNX Runtime contenders (-ort): each static part an ONNX graph, routed on the host in numpy, "
                "speed-ups against base-ort (per-chunk pairs); ort_speedups: images/s over base-ort's"
                if onnx
                else ""
            ),
        },
    )


def bench_demo(
    out: str | Path, *, device: str = "auto", console: Console | None = None, repeats: int = 5, onnx: bool = True
) -> dict[str, Any]:
    """Re-measure the demo's models side by side (what `dynacnn bench` runs); rewrites bench.json / bench.md."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"--repeats must be a positive integer, got {repeats!r}")
    out = Path(out)
    for needed in DEMO_PARTS:
        if not (out / needed).exists():
            raise ConfigError(f"{out} has no {needed}; run `dynacnn demo --out {out}` first")
    splits = load_run(out / "base").data_spec.load()
    return benchmark(out, splits, resolve_device(device), console or Console(), repeats=repeats, onnx=onnx)
