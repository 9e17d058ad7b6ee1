"""`dynacnn demo`: base model, CP-CNN, MS-CNN, honest baselines, side-by-side benchmark, one report.

Every step writes its own artifact (base/run.json, cpcnn/cpcnn.json, mscnn/mscnn.json, matched/run.json,
matched-distilled/run.json, bench.json); a re-run after an interruption skips finished steps and resumes the
unfinished one from its last checkpoint. Policies are chosen on the calibration split; the test split
is used once per model, for the report.
"""

from __future__ import annotations

import itertools
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dynacnn import distributed
from dynacnn.baseline import train_backbone
from dynacnn.cpcnn import run_cpcnn
from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.distill import DEFAULT_DISTILL, teacher_digest
from dynacnn.errors import ConfigError
from dynacnn.experiments.baselines import compare_with_static, matched_width, uniform_threshold_exit
from dynacnn.experiments.bench import benchmark, contender_identity
from dynacnn.experiments.summary import summary_table
from dynacnn.flops import count_macs
from dynacnn.io import ensure_dir, read_json
from dynacnn.mscnn.config import MSCNNRunConfig
from dynacnn.mscnn.pipeline import run_mscnn
from dynacnn.report.demo_report import write_report
from dynacnn.runs import DataSpec, ModelSpec, load_run
from dynacnn.train import ImageBatches, TrainConfig, check_max_drop, evaluate, resolve_device

QUICK_OPTIONS = {"train_limit": 6000, "test_limit": 2000}
FULL_CPCNN = CPCNNConfig(split="layer1", configs="L22,L33", n_clusters=2, epochs=16)
"""The demo's CP-CNN (with --quick: fewer epochs on the quick subset): two hyper-classes, S up to layer1, heads chosen
between L22 (the backbone's layer2, fine-tuned, then one bottleneck-compression block) and L33 (a bottleneck, then
the compression block), 16 epochs each: at 8 the calibration guard kept the larger L22 head for the 7-class
hyper-class, at 16 the L33 head passes it (3.25 M MACs instead of 3.95 M). Two hyper-classes, because on
Fashion-MNIST Alg. 2's eigengap is ambiguous and its 4-way split separated the most confused pair; `dynacnn cpcnn`
keeps the eigengap's choice unless `--clusters` is given. The measurements behind these choices: docs/results.md."""
QUICK_EPOCHS = 2
FULL_EPOCHS = 5
"""Base recipe: one-cycle epochs without augmentation (the MS-CNN and the compute-matched ResNet get the same): in
so few epochs this small network underfits, so augmentation only slows it down; 5 epochs fit the demo's 20-minute
budget on 2 cores (measurements: docs/results.md). `--epochs 6` or `--epochs 8` runs the longer recipes."""


def demo_cpcnn_config(quick: bool = False, **changes: Any) -> CPCNNConfig:
    """The demo's CP-CNN settings (`FULL_CPCNN`; with `quick`, twice `QUICK_EPOCHS` epochs), with `changes` applied."""
    epochs = QUICK_EPOCHS * 2 if quick else FULL_CPCNN.epochs
    return replace(FULL_CPCNN, **{"epochs": epochs, **changes})


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings (`run_demo`, `dynacnn demo`).

    `data`, `data_dir`, `data_options` (extra `load_dataset` options, e.g. `samples_per_class` for `synthetic`) name
    the dataset; `quick` trains on a subset (`QUICK_OPTIONS`) with fewer epochs; `max_drop` (percentage points of
    calibration top-1) chooses both methods' operating points; `epochs` (default `FULL_EPOCHS`, or `QUICK_EPOCHS`
    with `quick`) trains the base, the MS-CNN and the compute-matched ResNet; `cpcnn` holds the CP-CNN's settings
    (default `demo_cpcnn_config(quick)`; its `memory_format` "auto" picks the faster by timing). The demo's
    `max_drop`, `seed` and `precision` (the training arithmetic of every network) are its CP-CNN's too: they
    replace `cpcnn`'s.
    """

    data: str = "fashion-mnist"
    data_dir: str | None = None
    quick: bool = False
    max_drop: float = 0.5
    epochs: int | None = None
    seed: int = 0
    data_options: dict[str, Any] = field(default_factory=dict)
    cpcnn: CPCNNConfig | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        cpcnn = demo_cpcnn_config(self.quick) if self.cpcnn is None else self.cpcnn
        if isinstance(cpcnn, CPCNNConfig):
            cpcnn = replace(cpcnn, max_drop=self.max_drop, seed=self.seed, precision=self.precision)
        object.__setattr__(self, "cpcnn", cpcnn)

    def validate(self) -> DemoConfig:
        """Every range check, before anything is read or written (the dataset's name is checked when it loads)."""
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError(f"--data {self.data!r} must be a dataset name such as fashion-mnist")
        if self.data_dir is not None and not isinstance(self.data_dir, (str, Path)):
            raise ConfigError(f"--data-dir {self.data_dir!r} must be a directory path or None")
        if not isinstance(self.quick, bool):
            raise ConfigError(f"--quick {self.quick!r} must be True or False")
        check_max_drop(self.max_drop, "--max-drop")
        if self.epochs is not None and (not _is_whole(self.epochs) or self.epochs < 1):
            raise ConfigError(f"--epochs must be a positive integer, got {self.epochs!r}")
        if not _is_whole(self.seed):
            raise ConfigError(f"--seed {self.seed!r} must be a whole number")
        if not isinstance(self.data_options, dict):
            raise ConfigError(f"data_options {self.data_options!r} must be a dict of load_dataset options")
        if not isinstance(self.cpcnn, CPCNNConfig):
            raise ConfigError(f"cpcnn must be a CPCNNConfig or None, got {type(self.cpcnn).__name__}")
        self.cpcnn.validate()
        return self

    @property
    def train_epochs(self) -> int:
        """Epochs of the base, the MS-CNN and the compute-matched ResNet."""
        return self.epochs or (QUICK_EPOCHS if self.quick else FULL_EPOCHS)

    @property
    def data_spec(self) -> DataSpec:
        """The dataset and split of every model the demo trains (`QUICK_OPTIONS` under `data_options` with `quick`)."""
        options = {**(QUICK_OPTIONS if self.quick else {}), **self.data_options}
        return DataSpec(name=self.data, data_dir=self.data_dir, seed=self.seed, options=options)

    @property
    def recipe(self) -> TrainConfig:
        """The base recipe, shared by the compute-matched ResNet."""
        return TrainConfig(epochs=self.train_epochs, seed=self.seed, augment=False, precision=self.precision)

    @property
    def mscnn(self) -> MSCNNRunConfig:
        """The MS-CNN's settings: the base recipe's epochs, the demo's max_drop, quick and seed; every stage learns
        from the base (`DEFAULT_DISTILL`), as the CP-CNN's heads do."""
        return MSCNNRunConfig(
            epochs=self.train_epochs,
            max_drop=self.max_drop,
            quick=self.quick,
            seed=self.seed,
            precision=self.precision,
            distill=DEFAULT_DISTILL,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (report.json records them under settings.config)."""
        data_dir = None if self.data_dir is None else str(self.data_dir)
        settings = {**asdict(self), "data_dir": data_dir, "cpcnn": self.cpcnn.to_dict()}
        if self.precision == "fp32":  # as TrainConfig.to_dict: demos made before the option keep their identity
            del settings["precision"]
        return settings

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoConfig:
        """The config `to_dict` (or its JSON) describes."""
        cpcnn = data.get("cpcnn")
        return cls(**{**data, "cpcnn": None if cpcnn is None else CPCNNConfig(**cpcnn)})


def base_model_spec(input_shape: tuple[int, int, int], num_classes: int) -> ModelSpec:
    """The demo's base model: ResNet-18 at width 0.25; max-pool stem for inputs of 28 px and more."""
    stem = "small-pool" if input_shape[1] >= 28 else "small"
    return ModelSpec(arch="resnet18", width=0.25, stem=stem, num_classes=num_classes, in_channels=input_shape[0])


class Steps:
    """Numbered, timed step headers on the console."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total, self.index, self.started = console, total, 0, time.perf_counter()

    def run(self, title: str, done: bool, work: Callable[[], Any], redo: bool = False) -> Any:
        self.index += 1
        elapsed = time.perf_counter() - self.started
        state = "found, reusing" if done else "found with other settings, redoing" if redo else "running"
        self.console.rule(f"[{self.index}/{self.total}] {elapsed / 60:.1f} min: {title} ({state})", align="left")
        return work()


def reusable(path: Path, same: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """A finished step's JSON at `path` if it was made with the current settings (`same` says), else None."""
    if not path.exists():
        return None
    found = read_json(path)
    return found if same(found) else None


def same_settings(found: dict[str, Any], config: CPCNNConfig | MSCNNRunConfig) -> bool:
    """Whether a finished method run (cpcnn.json, mscnn.json) records `config.to_dict()` in its "settings" (the
    resume identity; the CP-CNN adds what it chose there)."""
    recorded = found.get("settings") or {}
    return all(
        key in recorded and recorded[key] == value for key, value in json.loads(json.dumps(config.to_dict())).items()
    )


def base_differences(run_json: Path, expected: dict[str, Any]) -> list[str]:
    """The parts of `expected` (model, data, train_config) that a finished base run holds with other values."""
    if not run_json.exists():
        return []
    found = read_json(run_json)
    return [key for key, value in expected.items() if found.get(key) != json.loads(json.dumps(value))]


def set_aside(run_dir: Path) -> Path:
    """Rename a finished run made with other settings to the first free `<name>-previous-<i>`; nothing is deleted."""
    aside = distributed.broadcast_object(  # under torchrun: rank 0's choice, rank 0 renames, the others wait
        next(
            path for i in itertools.count(1) if not (path := run_dir.with_name(f"{run_dir.name}-previous-{i}")).exists()
        )
    )
    if distributed.is_main():
        run_dir.rename(aside)
    distributed.barrier()
    return aside


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def point_on_test_split(run_dir: Path, device: torch.device) -> dict[str, Any]:
    """A finished run's test top-1 and top-5, MACs per image and width (no timing)."""
    run = load_run(run_dir, device)
    splits = run.data_spec.load()
    metrics = evaluate(run.model, ImageBatches(splits.test, splits.info, 512), device)
    macs = count_macs(run.model.to("cpu"), torch.zeros(1, *splits.info.input_shape)).macs_per_image
    return {"top1": metrics["top1"], "top5": metrics["top5"], "macs_per_image": macs, "width": run.model_spec.width}


def run_demo(
    out: str | Path = "runs/demo",
    config: DemoConfig | None = None,
    *,
    device: str = "auto",
    console: Console | None = None,
) -> dict[str, Any]:
    """Run every step (skipping finished ones) and write report.json, report.md and plots into `out`.

    `config` (default `DemoConfig()`) is validated before anything is written.
    """
    config = (config or DemoConfig()).validate()
    console = console or Console()
    out = ensure_dir(out)
    dev = resolve_device(device)
    data, max_drop, quick, seed = config.data, config.max_drop, config.quick, config.seed
    data_spec, recipe = config.data_spec, config.recipe
    splits = data_spec.load()
    info = splits.info
    spec = base_model_spec(info.input_shape, info.num_classes)
    steps = Steps(console, 7)
    console.print(
        f"dataset {data}: {len(splits.train)} train / {len(splits.calib)} calibration / {len(splits.test)} test images, "
        f"{info.num_classes} classes, input {info.input_shape}; device {dev}"
    )

    base_dir, matched_dir, distilled_dir = out / "base", out / "matched", out / "matched-distilled"
    differences = base_differences(
        base_dir / "run.json", {"model": asdict(spec), "data": asdict(data_spec), "train_config": recipe.to_dict()}
    )
    if differences:
        raise ConfigError(
            f"{base_dir} holds a base model trained with another {' and '.join(differences)} than this "
            f"demo's; use another --out, or delete {base_dir} to retrain it"
        )
    steps.run(
        "Base model: train",
        (base_dir / "run.json").exists(),
        lambda: (
            (base_dir / "run.json").exists()
            or train_backbone(base_dir, spec, data_spec, recipe, device=device, resume=True)
        ),
    )
    cpcnn_json, mscnn_json = out / "cpcnn" / "cpcnn.json", out / "mscnn" / "mscnn.json"
    taught_by = teacher_digest(base_dir)
    if cpcnn_json.exists() and read_json(cpcnn_json)["base"].get("sha256") != taught_by:
        console.print(
            f"{cpcnn_json.parent} was converted from other base weights; moved to {set_aside(cpcnn_json.parent)}"
        )
    cpcnn = reusable(cpcnn_json, lambda r: same_settings(r, config.cpcnn))
    cpcnn = steps.run(
        "CP-CNN: cluster, convert, train heads, sweep tau",
        cpcnn is not None,
        lambda: cpcnn or run_cpcnn(base_dir, out / "cpcnn", config.cpcnn, device=device, resume=True),
        redo=cpcnn_json.exists(),
    )
    mscnn_config = config.mscnn
    if mscnn_json.exists() and read_json(mscnn_json).get("training", {}).get("teacher_sha256") != taught_by:
        console.print(f"{mscnn_json.parent} learned from other base weights; moved to {set_aside(mscnn_json.parent)}")
    mscnn = reusable(mscnn_json, lambda r: same_settings(r, mscnn_config))
    mscnn = steps.run(
        "MS-CNN: train stages, analyse, sweep policies",
        mscnn is not None,
        lambda: (
            mscnn
            or run_mscnn(
                out / "mscnn",
                mscnn_config,
                data=data,
                data_dir=config.data_dir,
                data_options=data_spec.options,
                device=device,
                resume=True,
                teacher=base_dir,
            )
        ),
        redo=mscnn_json.exists(),
    )
    targets = [cpcnn["chosen"]["macs_per_image"], mscnn["chosen"]["macs_per_image"]]
    width, _ = matched_width(spec, info.input_shape, targets)
    matched_spec = replace(spec, width=width)
    for run_dir, teacher, how in (
        (matched_dir, None, "train on labels"),
        (distilled_dir, base_dir, "train distilled from the base"),
    ):
        wanted = (width, None if teacher is None else taught_by)
        found = reusable(
            run_dir / "run.json", lambda r, wanted=wanted: (r["model"]["width"], r.get("teacher_sha256")) == wanted
        )
        done = found is not None
        if not done and (run_dir / "run.json").exists():
            console.print(f"{run_dir} was trained for another width or teacher; moved to {set_aside(run_dir)}")
        steps.run(
            f"Compute-matched ResNet (width {width:g}): {how}",
            done,
            lambda run_dir=run_dir, teacher=teacher, done=done: (
                done
                or train_backbone(run_dir, matched_spec, data_spec, recipe, device=device, resume=True, teacher=teacher)
            ),
        )
    bench = reusable(out / "bench.json", lambda r: r.get("contenders") == contender_identity(out))
    bench = steps.run(
        "Benchmark: images/s side by side",
        bench is not None,
        # the exported models (ONNX Runtime, CPU) add about a minute to a full demo
        lambda: bench or benchmark(out, splits, dev, console, repeats=2 if quick else 3),
        redo=(out / "bench.json").exists(),
    )
    speed = bench["images_per_s"]
    base = {**point_on_test_split(base_dir, dev), "images_per_s": speed["base"]}
    matched = {**point_on_test_split(matched_dir, dev), "images_per_s": speed["matched"]}
    # the same network as `matched`, other weights: the same speed
    distilled = {**point_on_test_split(distilled_dir, dev), "images_per_s": speed["matched"], "teacher": "base"}
    chosen = {"cpcnn": cpcnn["chosen"], "mscnn": mscnn["chosen"]}
    report = steps.run(
        "Report",
        False,
        lambda: write_report(
            out,
            {
                "dataset": {
                    "name": data,
                    "num_classes": info.num_classes,
                    "class_names": list(info.class_names),
                    "input_shape": list(info.input_shape),
                    "sizes": {"train": len(splits.train), "calib": len(splits.calib), "test": len(splits.test)},
                },
                "environment": environment(dev),
                "settings": {
                    "quick": quick,
                    "max_drop_points": max_drop,
                    "seed": seed,
                    "base_model": asdict(spec),
                    "recipe": recipe.to_dict(),
                    "config": config.to_dict(),
                },
                "base": base,
                "cpcnn": cpcnn,
                "mscnn": mscnn,
                "baselines": {
                    "compute_matched": matched,
                    "compute_matched_distilled": distilled,
                    "per_method": compare_with_static(chosen, [base, distilled]),
                    "per_method_plain": compare_with_static(chosen, [base, matched]),
                    "uniform_threshold_exit": uniform_threshold_exit(mscnn, max_drop),
                },
                "bench": bench["rows"],
                "speed_targets": bench.get("targets", []),
                "images_per_s_batch256": speed,
            },
        ),
    )
    summary_table(console, report)
    return report
