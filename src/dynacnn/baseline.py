"""Train, evaluate and time a backbone on a dataset: the `train` and `eval` commands' logic."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from dynacnn.data import normalize
from dynacnn.distill import DEFAULT_DISTILL, check_distill, load_teacher, with_teacher
from dynacnn.errors import CheckpointError
from dynacnn.flops import count_macs
from dynacnn.io import ensure_dir, write_json
from dynacnn.models.fold import fold_batchnorm
from dynacnn.models.layout import device_layout
from dynacnn.runs import DataSpec, ModelSpec, TrainedRun, load_run, save_run
from dynacnn.timing import Contender, measure
from dynacnn.train import ImageBatches, TrainConfig, evaluate, fit, resolve_device


def train_backbone(
    out_dir: str | Path,
    model_spec: ModelSpec,
    data_spec: DataSpec,
    config: TrainConfig,
    *,
    device: str = "auto",
    resume: bool = False,
    teacher: str | Path | None = None,
    distill: float = DEFAULT_DISTILL,
) -> dict[str, Any]:
    """Train `model_spec` on `data_spec` into `out_dir` (resumable); return the run's summary. With `teacher` (a
    `dynacnn train` run on the same data and split) the loss mixes in its softened logits with weight `distill`.

    Everything is validated (options, device, data, teacher) before the output directory is created.
    """
    config.validate()
    dev = resolve_device(device)
    teacher_model, digest = load_teacher(teacher, asdict(data_spec))
    if teacher_model is not None:
        check_distill(distill)
    splits = data_spec.load()
    model_spec = replace(model_spec, num_classes=splits.info.num_classes, in_channels=splits.info.input_shape[0])
    torch.manual_seed(config.seed)
    model = model_spec.build()
    out = ensure_dir(out_dir)
    model = device_layout(model, dev)
    write_json(out / "splits.json", splits.split_indices())
    train_data = ImageBatches(splits.train, splits.info, config.batch_size, shuffle=True, augment=config.augment)
    calib_data = ImageBatches(splits.calib, splits.info, 512)
    identity = {"model": asdict(model_spec), "data": asdict(data_spec)}
    distilled = {} if teacher_model is None else {"teacher_sha256": digest, "distill": distill}
    trained, scoring = with_teacher(model, teacher_model, distill)
    result = fit(
        trained,
        train_data,
        config,
        calib_data=calib_data,
        run_dir=out,
        resume=resume,
        device=dev,
        identity={**identity, **distilled},
        **scoring,
    )
    cost = count_macs(model.to("cpu"), torch.zeros(1, *splits.info.input_shape))
    summary = {
        "calib": {k.removeprefix("calib_"): v for k, v in result.final.items() if k.startswith("calib_")},
        "macs_per_image": cost.macs_per_image,
        "params": cost.params,
        "train_seconds_this_process": result.seconds,
        "class_names": list(splits.info.class_names),
        "train_config": config.to_dict(),
    }
    if teacher is not None:
        summary.update(teacher=str(teacher), **distilled)
    save_run(out, model, model_spec, data_spec, summary)
    return summary


TIMED_IMAGES = 10_000
"""Images/s are timed on the first this many test images (all of Fashion-MNIST's and CIFAR's test sets)."""


def evaluate_run(run_dir: str | Path, *, device: str = "auto", batch_size: int = 256) -> dict[str, float]:
    """Test top-1, top-5 (fractions) and images/s of a finished run."""
    dev = resolve_device(device)
    run: TrainedRun = load_run(run_dir, dev)
    splits = run.data_spec.load()
    if splits.info.num_classes != run.model_spec.num_classes:
        raise CheckpointError(
            f"{run_dir} was trained for {run.model_spec.num_classes} classes but the data has {splits.info.num_classes}; check --data"
        )
    test = ImageBatches(splits.test, splits.info, batch_size)
    metrics = evaluate(run.model, test, dev)
    images = device_layout(normalize(splits.test.read_images(0, TIMED_IMAGES), splits.info).to(dev), dev)
    device_layout(run.model, dev)
    timed = measure([Contender("model", fold_batchnorm(run.model), 1.0)], images, batch_sizes=(batch_size,), repeats=3)
    return {"top1": metrics["top1"], "top5": metrics["top5"], "images_per_s": timed[0]["images_per_s"]}
