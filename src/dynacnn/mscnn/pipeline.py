"""`run_mscnn`: train (resumable), analyse, sweep, choose with --max-drop, measure, and write mscnn.json / mscnn.md / plots.

Protocol: thresholds, pruning vectors and the chosen policy are fitted on the calibration split; the
test split is used for reporting only, and the chosen policy is executed on it once (really skipping
work) next to the full network, timed at batch 256 as `dynacnn bench` times (paired chunks, BatchNorm folded).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from dynacnn.data import load_dataset
from dynacnn.distill import load_teacher
from dynacnn.errors import ConfigError
from dynacnn.flops import MAC_NOTE
from dynacnn.io import ensure_dir, write_json
from dynacnn.models.layout import device_layout
from dynacnn.mscnn.analysis import (
    cap_conv_points,
    eq1_report,
    eq1_thresholds,
    rank_report,
    table2,
    train_filter_ranking,
)
from dynacnn.mscnn.bits import bit_sweep, bit_table, dynamic_fc_precision
from dynacnn.mscnn.cache import collect
from dynacnn.mscnn.config import DEFAULT_RANK_IMAGES, DEFAULT_STAGES, MSCNNRunConfig
from dynacnn.mscnn.costs import measure_costs
from dynacnn.mscnn.explore import choose, drop_and_error, evaluate, oracle, pareto, sweep
from dynacnn.mscnn.model import MSCNN, MSCNNConfig, default_config
from dynacnn.mscnn.network_bits import BitOutputs, whole_network_bits
from dynacnn.mscnn.serialize import FORMAT_VERSION, save_filter_order
from dynacnn.mscnn.speed import frontier_timing, image_batches, measure_chosen
from dynacnn.mscnn.training import equal_weights, train_mscnn
from dynacnn.report.mscnn_report import write_report
from dynacnn.runs import save_weights
from dynacnn.train import ImageBatches, TrainConfig, resolve_device

BITS_TOLERANCE = 0.002
"""Top-1 (fraction) a bit-length may lose against float: per stage (Fig. 4 saturation) and for the whole network."""


class _Clock:
    """Seconds spent in each analysis phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 2)
        self._last = now


def _load_or_train(
    out: Path,
    splits,
    config: MSCNNConfig,
    train_config: TrainConfig,
    mode: str,
    resume: bool,
    device: torch.device,
    data_spec: dict,
    teacher: nn.Module | None,
    distilled: dict,
) -> tuple[MSCNN, list[dict]]:
    """Train (resumable through fit's checkpoint under out/train; `distilled`: the teacher's digest and weight) and
    save model.safetensors + model.json."""
    model = device_layout(MSCNN(config), device)
    identity = {"model": config.to_dict(), "data": data_spec, "mode": mode, **distilled}
    train = ImageBatches(splits.train, splits.info, train_config.batch_size, shuffle=True, augment=train_config.augment)
    calib = ImageBatches(splits.calib, splits.info, 512)
    history = train_mscnn(
        model,
        train,
        train_config,
        mode=mode,
        calib_data=calib,
        run_dir=out / "train",
        resume=resume,
        device=device,
        identity=identity,
        teacher=teacher,
        distill=distilled.get("distill", 0.0),
    )
    save_weights(out / "model.safetensors", model)
    write_json(
        out / "model.json",
        {
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "input_shape": list(splits.info.input_shape),
            "data": data_spec,
            "train": train_config.to_dict(),
            "mode": mode,
            "loss_weights": list(equal_weights(model.num_stages)),
            **distilled,
            "history": history,
        },
    )
    return model.to(device).eval(), history


def analyse_mscnn(
    out: Path,
    model: MSCNN,
    splits,
    *,
    max_drop: float = 0.5,
    quick: bool = False,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    drop_z: float = 2.0,
    fc_rows: str = "batch",
    rank_images: int = DEFAULT_RANK_IMAGES,
) -> dict:
    """Everything after training: caches, Table II analog, Eq. 1-3, sweeps, CAP_CONV, choice, timing, bits.

    Sweeps count MACs per image, as Alg. 2 prunes FC rows; the chosen point and the timings execute with
    `fc_rows` (see `execute`: "batch" computes the rows any image of a sub-batch keeps) and report its MACs.
    CAP_CONV's filter ranking (Alg. 3 Pre) is fitted on `rank_images` training images (a stratified subset,
    fixed by `seed`), as the paper analyses the training set; every choice is made on the calibration split."""
    dev, clock = device, _Clock()
    info, config = splits.info, model.config
    calib_batches = ImageBatches(splits.calib, info, 512)
    test_batches = ImageBatches(splits.test, info, 512)
    calib = collect(model, calib_batches, dev)
    test = collect(model, test_batches, dev)
    costs = measure_costs(model, info.input_shape)
    classes, n = info.num_classes, model.num_stages
    cumulative = torch.tensor([c.macs for c in costs.stages]).cumsum(0).tolist()
    stage_rows = [
        {
            "stage": i + 1,
            "band": s.band,
            "params": c.params,
            "macs": c.macs,
            "cumulative_macs": cumulative[i],
            "top1": t,
            "top5": t5,
            "calib_top1": k,
            "calib_top5": k5,
        }
        for i, (s, c, t, t5, k, k5) in enumerate(
            zip(
                config.stages,
                costs.stages,
                test.stage_top1(),
                test.stage_top5(),
                calib.stage_top1(),
                calib.stage_top5(),
            )
        )
    ]

    clock.lap("collect")
    rank = rank_report(calib, classes)
    thresholds = eq1_thresholds(rank)
    families = sweep(calib, costs, classes, quick, sorted(set(thresholds.values()), reverse=True))
    clock.lap("sweep")
    importance, ranked_images = train_filter_ranking(model, splits, rank_images, seed, dev)
    conv_points, conv_rows = cap_conv_points(model, importance, calib, test, costs, quick)
    save_filter_order(out, importance)  # CAP_CONV's filter ranking, for load_mscnn
    clock.lap("cap_conv")
    full_calib = families["full"][0]
    candidates = [p for points in families.values() for p in points] + conv_points
    chosen_point = choose(candidates, full_calib, max_drop, drop_z)
    calib_drop, calib_error = drop_and_error(chosen_point, full_calib)
    uniform_point = choose(
        [p for name in families if name.startswith("uniform") for p in families[name]] + [full_calib],
        full_calib,
        max_drop,
        drop_z,
    )
    uniform_tested = evaluate(test, uniform_point.policy, costs, uniform_point.name)
    uniform_chosen = {
        "name": uniform_point.name,
        "settings": uniform_point.settings,
        "top1": uniform_tested.top1,
        "top5": uniform_tested.top5,
        "macs_per_image": uniform_tested.macs_per_image,
        "params_per_image": uniform_tested.params_per_image,
        "calib_top1": uniform_point.top1,
        "calib_top5": uniform_point.top5,
        "calib_macs_per_image": uniform_point.macs_per_image,
    }
    repeats = 1 if quick else 3
    chosen, speed = measure_chosen(
        model, chosen_point, importance, splits.test, info, test, costs, dev, repeats, fc_rows
    )
    clock.lap("chosen")

    policy_rows = []
    for name, points in families.items():
        for point in points if name in ("full",) or name.startswith("uniform") else pareto(points):
            tested = evaluate(test, point.policy, costs, point.name)
            policy_rows.append(
                {
                    **point.row(),
                    "calib_top1": point.top1,
                    "calib_top5": point.top5,
                    "calib_macs_per_image": point.macs_per_image,
                    "top1": tested.top1,
                    "top5": tested.top5,
                    "macs_per_image": tested.macs_per_image,
                    "params_per_image": tested.params_per_image,
                    "exit_fractions": tested.exits,
                    "frontier": name not in ("full",) and not name.startswith("uniform"),
                }
            )
    timing_points = [
        p for name in families if name.startswith(("TP", "PTHP", "CAP_FC")) for p in pareto(families[name])
    ]
    timing_points = timing_points[:: max(1, len(timing_points) // (4 if quick else 12))]
    timing_batches = image_batches(splits.calib.subset(256 if quick else 1024, seed), info, dev)
    timing = frontier_timing(model, timing_points, timing_batches, float(costs.full_macs), fc_rows)
    clock.lap("frontier_timing")

    sweep_bits = (4, 8, 16) if quick else tuple(range(4, 17))
    bits_split = splits.calib.subset(256 if quick else 3000, seed)
    bits_x, bits_y = next(iter(ImageBatches(bits_split, info, len(bits_split))(None, dev)))
    bit_curves = bit_sweep(model, bits_x, bits_y, sweep_bits)
    bits_rows = bit_table(model, bit_curves, BITS_TOLERANCE)
    stage_bits = [row["saturation_bits"] for row in bits_rows]
    clock.lap("bits")
    whole = whole_network_bits(
        model,
        stage_bits,
        chosen_point,
        importance,
        costs,
        BitOutputs(model, calib_batches, calib, dev),
        BitOutputs(model, test_batches, test, dev),
        sweep_bits,
        BITS_TOLERANCE,
        max_rounds=2 * n,
    )
    clock.lap("whole_network_bits")
    dynamic = [
        dynamic_fc_precision(model, calib, stage_bits, keep, low)
        for keep in sorted({1, min(3, classes), min(5, classes)})
        for low in (2, 3, 4)
    ]
    clock.lap("dynamic_bits")

    result = {
        "format_version": FORMAT_VERSION,
        "mac_note": MAC_NOTE,
        "model": config.to_dict(),
        "stages": stage_rows,
        "full": {
            "top1": stage_rows[-1]["top1"],
            "top5": stage_rows[-1]["top5"],
            "calib_top1": full_calib.top1,
            "calib_top5": full_calib.top5,
            "macs_per_image": float(costs.full_macs),
            "params_per_image": float(costs.params(torch.full((n, 1), classes)).item()),
            "images_per_s": speed["full"],
        },
        "policies": policy_rows,
        "all_calib": {
            name: [[p.macs_per_image, p.top1, p.params_per_image] for p in points] for name, points in families.items()
        },
        "cap_conv": conv_rows,
        "cap_conv_ranking": {"split": "train", "images": ranked_images},
        "cap_fc_eq1": eq1_report(families, thresholds, test, costs, chosen_point, max_drop, drop_z),
        "oracle": oracle(test, costs) | {"calib": oracle(calib, costs)},
        "uniform_chosen": uniform_chosen,
        "chosen": chosen
        | {
            "max_drop": max_drop,
            "drop_z": drop_z,
            "calib_drop": calib_drop,
            "calib_drop_se": calib_error,
            "macs_fraction": chosen["macs_per_image"] / costs.full_macs,
        },
        "timing": timing,
        "prediction_rank": rank,
        "table2": [] if quick else table2(),
        "bits": {
            "split": "calib",
            "images": len(bits_split),
            "tolerance": BITS_TOLERANCE,
            "stages": bits_rows,
            "sweep": {
                "float_top1": bit_curves["float_top1"],
                "float_top5": bit_curves["float_top5"],
                "top1": [{str(b): a for b, a in curve.items()} for curve in bit_curves["top1"]],
                "top5": [{str(b): a for b, a in curve.items()} for curve in bit_curves["top5"]],
            },
            "dynamic": dynamic,
            "whole_network": whole,
        },
        "analysis_seconds": clock.seconds,
    }
    return result


def run_mscnn(
    out_dir: str | Path,
    config: MSCNNRunConfig | None = None,
    *,
    data: str = "fashion-mnist",
    data_dir: str | Path | None = None,
    calib_fraction: float = 0.1,
    data_options: dict | None = None,
    device: str = "auto",
    resume: bool = False,
    teacher: str | Path | None = None,
    teacher_arch: str | None = None,
) -> dict:
    """Train an MS-CNN, analyse it (Eq. 1-3, Alg. 1-4, §IV-C), sweep policies, choose one and measure it; returns mscnn.json.

    `config` (default `MSCNNRunConfig()`) holds every setting of the run; it is validated before anything is
    written and recorded in mscnn.json as "settings". `data`, `data_dir`, `calib_fraction` and `data_options`
    (extra `load_dataset` options) name the dataset, split with `config.seed`. `resume` continues the training
    from its last finished epoch. `teacher`: a `dynacnn train` run on the same data and split, or with `teacher_arch`
    the user's checkpoint of that architecture, whose model every stage learns from (weight `config.distill`).
    """
    config = (config or MSCNNRunConfig()).validate()
    torch.manual_seed(config.seed)
    dev = resolve_device(device)
    splits = load_dataset(data, data_dir, calib_fraction=calib_fraction, seed=config.seed, **(data_options or {}))
    info = splits.info
    model_config = config.model or default_config(
        config.stages or DEFAULT_STAGES, info.input_shape[0], info.num_classes
    )
    if (model_config.in_channels, model_config.num_classes) != (info.input_shape[0], info.num_classes):
        raise ConfigError(
            f"model config expects {model_config.in_channels} channels / {model_config.num_classes} classes but "
            f"{data} has {info.input_shape[0]} / {info.num_classes}"
        )
    data_spec = {
        "name": data,
        "data_dir": None if data_dir is None else str(data_dir),
        "calib_fraction": calib_fraction,
        "seed": config.seed,
        "options": data_options or {},
    }
    if (teacher is None) != (config.distill is None):
        raise ConfigError("--teacher and --distill go together: give the teacher and its weight, or neither")
    teacher_model, digest = load_teacher(
        teacher, data_spec, arch=teacher_arch, input_shape=info.input_shape, num_classes=info.num_classes
    )
    out = ensure_dir(out_dir)
    train_config = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        augment=config.augment,
        precision=config.precision,
    )
    distilled = {} if teacher is None else {"teacher_sha256": digest, "distill": config.distill}
    model, history = _load_or_train(
        out, splits, model_config, train_config, config.mode, resume, dev, data_spec, teacher_model, distilled
    )

    result = analyse_mscnn(
        out,
        model,
        splits,
        max_drop=config.max_drop,
        quick=config.quick,
        seed=config.seed,
        device=dev,
        drop_z=config.drop_z,
        fc_rows=config.fc_rows,
        rank_images=config.rank_images,
    )
    result.update(
        data=data_spec,
        settings=config.to_dict(),
        training={
            "mode": config.mode,
            "loss_weights": list(equal_weights(model.num_stages)),
            **distilled,
            "config": train_config.to_dict(),
            "history": history,
        },
    )
    result = json.loads(json.dumps(result))
    write_json(out / "mscnn.json", result)
    write_report(out, result)
    return result
