"""CP-CNN end to end (§3.1, §4): trained backbone -> clusters -> S, M, heads -> policy sweeps -> routed model.

`run_cpcnn(run_dir, out_dir)` loads a `dynacnn train` run and calls `convert`, which works on any ResNet
with torchvision's attribute names (e.g. a torchvision `resnet18(num_classes=K)`) and a
`dynacnn.data.DatasetSplits`. Steps:

1. Base model: calibration and test probabilities, MACs per image.
2. Hyper-classes: `out_dir/clusters.json` if present, else Alg. 2 (`HyperClassClustering`) fitted on the
   calibration probabilities.
3. Split point: given, or swept over stem / layer1 / layer2 / layer3: for each, S's output is cached,
   a clustifier trained, and the CP-CNN with uncompressed (L0) heads evaluated on the calibration split
   and timed; the chosen split is the fastest measured one whose calibration top-1 is within `max_drop`.
4. S's outputs are cached for the training images (one clean copy plus `feature_copies - 1` fixed
   augmented copies; each training sample is drawn from one of its copies), calibration and test.
5. Clustifier M and heads H_g are trained on the cached outputs with S frozen (`dynacnn.train.fit`),
   one per candidate configuration; the cheapest one (in MACs) whose calibration top-1 is within a
   tolerance of the best is kept (the paper's {C0: L44, C1: L1, ...}), unless `configs` fixes it. The
   heads' tolerance is given, or the largest of `HEAD_TOLERANCES` whose CP-CNN meets `max_drop`.
   Single-class hyper-classes get a `TrivialHead` (zero MACs, probability 1). Heads start from the
   backbone's weights where their stages are kept; the clustifier is also distilled from the backbone's
   hyper-class probabilities (`DISTILL`), each head from its restricted logits (`HEAD_DISTILL`).
6. M's confusion matrix is measured on the calibration split (the paper used its test set).
7. Sweeps from cached per-head outputs: rules x weightings x tau on calibration, Table 2 on test,
   CC-ideal and oracle rows, Table 1 analog; tau is chosen on calibration (`max_drop`).
8. The chosen point is measured once on the test split by real routed inference, with images/s at batch
   256 for the routed and the base model in the same process, paired chunked timings (`dynacnn.timing.measure`).

Every finished component is saved (safetensors + JSON) under `out_dir/components`; with `resume=True`
a re-run reuses those whose settings match and continues interrupted training from its checkpoint.
"""

from __future__ import annotations

import copy
import statistics
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from dynacnn.cpcnn.compress import (
    CONFIGURATIONS,
    SPLIT_POINTS,
    TABLE1,
    available_configurations,
    build_head,
    check_backbone,
    check_split,
    shared_part,
    table1_reduction,
)
from dynacnn.cpcnn.model import CPCNN, TrivialHead, check_members
from dynacnn.cpcnn.policy import (
    DEFAULT_RULE,
    DEFAULT_WEIGHTING,
    RULES,
    WEIGHTINGS,
    activate,
    check_policy,
    check_tau,
    confusion_matrix,
    merge,
)
from dynacnn.timing import Contender, measure
from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.flops import count_macs
from dynacnn.io import ensure_dir, read_json, write_json
from dynacnn.models.fold import fold_batchnorm
from dynacnn.models.layout import MEMORY_FORMATS, as_format, memory_format_of
from dynacnn.runs import load_run, load_weights, remembered, save_weights
from dynacnn.train import TrainConfig, fit, paired_drop, resolve_device

FORMAT_VERSION = 1
DEFAULT_EPOCHS = 8
"""Epochs for the clustifier and each head. Measured on the demo's 6-epoch base (S = layer1, L22 / L33 heads): test
top-1 92.57% with 6 epochs, 92.80% with 8 (base 92.83%)."""
TABLE2_TAUS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SELECTION_TAUS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
CLUSTIFIER_CONFIGS = ("LP", "LC")
HEAD_TOLERANCES = (5.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.25, 0.0)
"""Points of a hyper-class's calibration top-1 a cheaper head configuration may lose against the best: with
`head_tolerance=None` the largest of these whose CP-CNN still meets `max_drop` on the calibration split."""
CLUSTIFIER_TOLERANCE = 0.2
"""Points of hyper-class calibration top-1 a cheaper clustifier configuration may lose against the best."""
TIMING_BATCH = 256
TIMING_IMAGES = 2560
TIMING_REPEATS = 7
QUICK_TRAIN_IMAGES = 1000
MIN_ONECYCLE_STEPS = 16
KD_TEMPERATURE = 2.0
DISTILL = 0.5
"""Weight of the distillation term in the clustifier's loss: its target is the backbone's hyper-class probability
(summed over members). Measured on Fashion-MNIST at split layer1 (4 epochs): clustifier 97.15% -> 97.57%
calibration top-1."""
DROP_Z = 2.0
"""`--max-drop` counts the calibration drop plus this many standard errors of the paired per-image difference, as
the MS-CNN's choice does: the cheapest point that merely meets max_drop sits at the edge, so its test drop exceeds
max_drop half the time. Measured on the demo's 6-epoch base with z = 0: L22 heads were passed over for LC heads
at a calibration drop of 0.46 points, whose test drop was then 1.32 points."""
HEAD_DISTILL = 0.5
"""Weight of the distillation term in each head's loss (teacher: the backbone's logits restricted to the members).
Measured on Fashion-MNIST, S = layer2, L2 / L22 heads, 8 epochs, no-augmentation base (92.68% test): CP-CNN
calibration top-1 92.37% -> 92.57%, test 92.17% -> 92.24%. (With the weaker crop + flip base, 91.74%, it had
cost the heads 0.2-0.3 points: a teacher helps only where it is better than what the heads learn alone.)"""


@dataclass
class FeatureBatches:
    """Batches of cached S outputs (copies, N, ...): each sample comes from one of its copies, drawn at random.

    With `teacher` (copies, N, C) logits, inputs are (features, teacher logits) pairs for `Distilled`.
    Feature maps come in `memory_format` (the trained module's).
    """

    features: torch.Tensor
    labels: torch.Tensor
    teacher: torch.Tensor | None = None
    batch_size: int = 128
    shuffle: bool = True
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __call__(self, generator: torch.Generator | None, device: torch.device):
        n, copies = len(self.labels), self.features.shape[0]
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            copy = torch.randint(copies, (len(index),), generator=generator) if copies > 1 else torch.zeros_like(index)
            inputs = as_format(self.features[copy, index].to(device), self.memory_format)
            if self.teacher is not None:
                inputs = (inputs, self.teacher[copy, index].to(device))
            yield inputs, self.labels[index].to(device)


class Distilled(nn.Module):
    """Training wrapper: the student's logits next to the teacher's (the backbone's), for `distillation_loss`."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        features, teacher = inputs
        return self.student(features), teacher


def distillation_loss(weight: float, temperature: float = KD_TEMPERATURE) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """(1 - weight) * cross-entropy + weight * T^2 * KL(teacher || student) at temperature T (Hinton et al. 2015)."""

    def loss(outputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        logits, teacher = outputs
        hard = nn.functional.cross_entropy(logits, labels)
        soft = nn.functional.kl_div(nn.functional.log_softmax(logits / temperature, dim=1),
                                    nn.functional.log_softmax(teacher / temperature, dim=1), log_target=True, reduction="batchmean")
        return (1 - weight) * hard + weight * temperature**2 * soft

    return loss


@dataclass
class CachedSplit:
    """S's outputs for one split of the data, with labels and (for distillation) the backbone's logits."""

    features: torch.Tensor
    labels: torch.Tensor
    teacher: torch.Tensor | None = None


def backbone_spec(backbone: nn.Module) -> dict[str, Any]:
    """How to rebuild `backbone`'s architecture (ours or torchvision's ResNet-18/34) for `load_cpcnn`."""
    from dynacnn.models import ResNet
    from dynacnn.models.resnet import STAGE_BLOCKS

    check_backbone(backbone)
    blocks = tuple(len(getattr(backbone, f"layer{i}")) for i in range(1, 5))
    arch = next((name for name, counts in STAGE_BLOCKS.items() if counts == blocks), None)
    if arch is None:
        raise ConfigError(f"cannot describe a ResNet with stage depths {blocks}; use resnet18 or resnet34")
    num_classes, in_channels = backbone.fc.out_features, backbone.conv1.in_channels
    if isinstance(backbone, ResNet):
        width = backbone.conv1.out_channels / 64
        return {"kind": "dynacnn", "arch": arch, "width": width, "stem": backbone.stem, "num_classes": num_classes,
                "in_channels": in_channels}
    conv = backbone.conv1
    return {"kind": "torchvision", "arch": arch, "num_classes": num_classes, "in_channels": in_channels,
            "conv1": [conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0]],
            "maxpool": not isinstance(backbone.maxpool, nn.Identity)}


def build_backbone(spec: Mapping[str, Any]) -> nn.Module:
    """An untrained backbone of the architecture `spec` (from `backbone_spec`) describes."""
    if spec.get("kind") == "dynacnn":
        from dynacnn.models import build_resnet

        return build_resnet(spec["arch"], spec["num_classes"], spec["in_channels"], spec["width"], spec["stem"])
    if spec.get("kind") == "torchvision":
        import torchvision

        model = getattr(torchvision.models, spec["arch"])(num_classes=spec["num_classes"])
        out_channels, kernel, stride, padding = spec["conv1"]
        model.conv1 = nn.Conv2d(spec["in_channels"], out_channels, kernel, stride, padding, bias=False)
        if not spec["maxpool"]:
            model.maxpool = nn.Identity()
        return model
    raise CheckpointError(f"unknown backbone description {dict(spec)}; re-run the CP-CNN conversion")


# ---------------------------------------------------------------- cached outputs


@torch.inference_mode()
def _outputs(module: nn.Module, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """module(inputs) in eval mode, batched, on the inputs' device, inputs in the module's memory format."""
    module.eval()
    fmt = memory_format_of(module)
    return torch.cat([module(as_format(inputs[i : i + batch_size], fmt)) for i in range(0, len(inputs), batch_size)])


@torch.inference_mode()
def image_outputs(module: nn.Module, split: Any, info: Any, device: torch.device, *, augment: bool = False,
                  seed: int = 0, batch_size: int = 512) -> torch.Tensor:
    """module(normalised images of `split`), in the split's order, optionally with one seeded augmentation."""
    from dynacnn.data import batches

    module.eval()
    fmt = memory_format_of(module)
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([module(as_format(x, fmt)).cpu()
                      for x, _ in batches(split, info, batch_size, augment=augment, generator=generator, device=device)])


def class_probs(backbone: nn.Module, split: Any, info: Any, device: torch.device) -> torch.Tensor:
    """Softmax outputs (N, K) of the backbone on a split."""
    return torch.softmax(image_outputs(backbone, split, info, device).float(), dim=1)


def cache_split(shared: nn.Module, data: Any, split_name: str, device: torch.device, copies: int = 1, seed: int = 0,
                limit: int | None = None) -> CachedSplit:
    """S's outputs for one split: (copies, N, ...) for training (copy 0 clean), else (N, ...)."""
    split = getattr(data, split_name)
    if limit is not None:
        split = split.subset(limit, seed)
    clean = image_outputs(shared, split, data.info, device)
    if split_name != "train":
        return CachedSplit(clean, split.labels)
    copies = copies if data.info.augment != "none" else 1
    stacked = [clean] + [image_outputs(shared, split, data.info, device, augment=True, seed=seed + c) for c in range(1, copies)]
    return CachedSplit(torch.stack(stacked), split.labels)


def backbone_logits(backbone: nn.Module, split: str, features: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """The backbone's logits computed from cached S outputs (copies, N, ...) by its own later stages."""
    num_classes = backbone.fc.out_features
    tail = build_head(backbone, split, "L0", num_classes, input_shape, list(range(num_classes))).to(features.device)
    tail.to(memory_format=memory_format_of(backbone))
    return torch.stack([_outputs(tail, copy) for copy in features])


# ---------------------------------------------------------------- training components


def _component_key(split: str, role: str, config: str) -> str:
    return f"{split}-{role}-{config}"


def train_component(
    module: nn.Module,
    key: str,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    calib: tuple[torch.Tensor, torch.Tensor],
    out: Path,
    config: TrainConfig,
    identity: dict[str, Any],
    device: torch.device,
    resume: bool,
    reuse: bool = False,
    distill: float = 0.0,
) -> dict[str, Any]:
    """Train one head or clustifier on cached S outputs, or reuse a finished one (`reuse`) with the same identity.

    `train` is (features (copies, N, ...), labels, teacher logits (copies, N, C) or None); with a teacher and
    `distill` > 0 the loss mixes in distillation from the backbone (`distillation_loss`).
    """
    folder = ensure_dir(out / "components")
    weights, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if (resume or reuse) and meta_path.exists() and weights.exists():
        meta = read_json(meta_path)
        if meta.get("identity") == identity:
            load_weights(weights, module)
            return meta
    started = time.perf_counter()
    if len(train[1]):
        if config.epochs * -(-len(train[1]) // config.batch_size) < MIN_ONECYCLE_STEPS:
            config = replace(config, schedule="cosine")  # OneCycleLR divides by zero on a handful of steps
        features, labels, teacher = train
        fmt = memory_format_of(module)
        if teacher is not None and distill > 0:
            fit(Distilled(module), FeatureBatches(features, labels, teacher, config.batch_size, memory_format=fmt), config, run_dir=folder / key,
                resume=resume, device=device, identity=identity, desc=key, loss_fn=distillation_loss(distill),
                logits_fn=lambda outputs: outputs[0])
        else:
            fit(module, FeatureBatches(features, labels, None, config.batch_size, memory_format=fmt), config,
                run_dir=folder / key, resume=resume, device=device, identity=identity, desc=key)
    module.eval()
    logits = _outputs(module, calib[0].to(device)).cpu()
    top1 = float((logits.argmax(1) == calib[1]).float().mean()) if len(calib[1]) else 0.0
    meta = {"identity": identity, "calib_top1": top1, "calib_images": len(calib[1]), "train_seconds": time.perf_counter() - started}
    save_weights(weights, module)
    write_json(meta_path, meta)
    return meta


def pick_cheapest(records: Mapping[str, dict[str, Any]], tolerance_points: float) -> str:
    """Table 1 selection: the cheapest configuration whose calibration top-1 is within tolerance of the best."""
    best = max(record["calib_top1"] for record in records.values())
    fine = [name for name, record in records.items() if record["calib_top1"] >= best - tolerance_points / 100 - 1e-12]
    return min(fine, key=lambda name: (records[name]["macs"], -records[name]["calib_top1"]))


def parse_configs(configs: str | Sequence[str] | Mapping[Any, str] | None) -> tuple[dict[str, str], tuple[str, ...] | None]:
    """`configs` -> (fixed {"clustifier" | "0" | "1" ...: name}, candidate names or None for all).

    Accepts a mapping (hyper-class index or "clustifier" -> configuration), a list of candidate names, or a
    string: "L1,L22" (candidates) or fixed entries in the paper's notation "C0:L44,C1:L1,clustifier:LC"
    (also "0=L44,1=L1,clustifier=LC").
    """
    if configs is None:
        return {}, None
    if isinstance(configs, str):
        parts = [part.strip().replace("=", ":") for part in configs.split(",") if part.strip()]
        if parts and all(":" in part for part in parts):
            configs = dict(part.split(":", 1) for part in parts)
        elif any(":" in part for part in parts):
            raise ConfigError(f"configs {configs!r} mixes fixed (C0:L1) and candidate (L1) entries; use one form")
        else:
            configs = parts
    if isinstance(configs, Mapping):
        fixed = {str(key).strip(): str(value).strip() for key, value in configs.items()}
        return {key[1:] if key[:1] in "Cc" and key[1:].isdigit() else key: value for key, value in fixed.items()}, None
    names = tuple(configs)
    if not names:
        raise ConfigError("configs is empty; give candidate configuration names such as L1,L22 or leave it out")
    return {}, names


# ---------------------------------------------------------------- policy evaluation from cached outputs


def evaluate_policy(
    v: torch.Tensor,
    head_probs: list[torch.Tensor],
    members: list[list[int]],
    labels: torch.Tensor,
    confusion: torch.Tensor,
    tau: float,
    rule: str,
    weighting: str,
    fixed_macs: float,
    head_macs: torch.Tensor,
    active: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Top-1, MACs per image, histogram of active heads and MACs per hyper-class for one policy (or a given active set).

    With `reference` (the base model's per-image correctness on the same images) the row also holds `drop_se`,
    the standard error of the paired per-image top-1 difference (for `choose_tau`)."""
    if active is None:
        active, weights = activate(v, confusion, tau, rule, weighting)
    else:
        weights = active.to(v.dtype) / active.sum(1, keepdim=True)
    index = [torch.as_tensor(group) for group in members]
    probs = merge(weights, head_probs, index, sum(len(group) for group in members))
    per_head = (active.double() * head_macs.double()).mean(0)
    correct = probs.argmax(1) == labels
    paired = {} if reference is None else {"drop_se": paired_drop(reference, correct)[1]}
    return {
        "tau": tau,
        "top1": float(correct.double().mean()),
        **paired,
        "macs_per_image": float(fixed_macs + per_head.sum()),
        "activated_hist": torch.bincount(active.sum(1) - 1, minlength=v.shape[1]).tolist(),
        "head_macs_per_image": per_head.tolist(),
    }


def choose_tau(rows: list[dict[str, Any]], base_top1: float, max_drop: float, z: float = DROP_Z) -> tuple[dict[str, Any], bool]:
    """`--max-drop`: the cheapest tau whose calibration top-1 is within max_drop points of the base model's,
    counting the drop plus `z` standard errors of the paired difference (`drop_se`) where the row has one."""
    fine = [row for row in rows if base_top1 - row["top1"] + z * row.get("drop_se", 0.0) <= max_drop / 100 + 1e-12]
    if not fine:
        return max(rows, key=lambda row: (row["top1"], -row["macs_per_image"])), False
    return min(fine, key=lambda row: (row["macs_per_image"], -row["top1"])), True


# ---------------------------------------------------------------- timing


def measure_throughput(models: Mapping[str, nn.Module], images: torch.Tensor,
                       batch_size: int = TIMING_BATCH, repeats: int = TIMING_REPEATS) -> dict[str, Any]:
    """Images/s of each model over the same images, timed as `dynacnn bench` does (BatchNorm folded into the
    convs, `dynacnn.timing.measure`: interleaved chunks of two batches, order rotating); `speedup[name]` is the
    median over chunks of (first model's time / this model's time on the same chunk)."""
    rows = measure([Contender(name, fold_batchnorm(model), 1.0) for name, model in models.items()], images,
                   batch_sizes=(batch_size,), repeats=repeats, chunk_batches=2)
    result: dict[str, Any] = {row["model"]: row["images_per_s"] for row in rows}
    result["speedup"] = {row["model"]: row["wall_speedup_median"] for row in rows}
    return result


def fastest_format(backbone: nn.Module, images: torch.Tensor, repeats: int) -> tuple[str, dict[str, float]]:
    """The name of the memory format (contiguous or channels_last) in which the base model runs faster, and the speeds."""
    candidates = {name: fold_batchnorm(backbone).to(memory_format=fmt) for name, fmt in MEMORY_FORMATS.items()}
    inputs = {name: as_format(images, fmt) for name, fmt in MEMORY_FORMATS.items()}
    seconds = {name: [] for name in candidates}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, model in candidates.items():
                start = time.perf_counter()
                for begin in range(0, len(images), TIMING_BATCH):
                    model(inputs[name][begin : begin + TIMING_BATCH])
                seconds[name].append(time.perf_counter() - start)
    speed = {name: len(images) / statistics.median(times) for name, times in seconds.items()}
    return max(speed, key=speed.get), speed


# ---------------------------------------------------------------- saving


def save_cpcnn(model: CPCNN, out_dir: str | Path, meta: dict[str, Any]) -> None:
    """Write `cpcnn.safetensors` (all weights, the confusion matrix) and `cpcnn_model.json` (structure, policy)."""
    out = ensure_dir(out_dir)
    save_weights(out / "cpcnn.safetensors", model)
    write_json(out / "cpcnn_model.json", {
        "format_version": FORMAT_VERSION, **meta, "members": model.members, "input_shape": list(model.input_shape),
        "tau": model.tau, "rule": model.rule, "weighting": model.weighting,
    })


def load_cpcnn(out_dir: str | Path, device: torch.device | str = "cpu") -> CPCNN:
    """Rebuild the CP-CNN saved by `run_cpcnn` / `convert` in `out_dir` (for `dynacnn bench` and the Python API).

    The model comes in the memory format it was timed in (`cpcnn_model.json`: memory_format); feed it inputs
    in that format too (`x.contiguous(memory_format=torch.channels_last)`) for the measured speed.
    """
    out = Path(out_dir)
    if not (out / "cpcnn_model.json").exists():
        raise CheckpointError(f"{out} holds no CP-CNN (no cpcnn_model.json); make it with `dynacnn cpcnn --out {out}`")
    meta = read_json(out / "cpcnn_model.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{out}/cpcnn_model.json has an unknown format version; re-run the CP-CNN conversion")
    try:
        backbone = build_backbone(meta["backbone"])
        shape, split, members = meta["input_shape"], meta["split"], meta["members"]
        clustifier = build_head(backbone, split, meta["clustifier"], len(members), shape)
        heads = [TrivialHead() if name == "trivial" else build_head(backbone, split, name, len(group), shape)
                 for name, group in zip(meta["heads"], members)]
        model = CPCNN(shared_part(backbone, split), clustifier, heads, members, torch.zeros(len(members), len(members)), shape,
                      tau=meta["tau"], rule=meta["rule"], weighting=meta["weighting"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{out}/cpcnn_model.json is incomplete ({exc}); re-run the CP-CNN conversion") from None
    load_weights(out / "cpcnn.safetensors", model)
    fmt = MEMORY_FORMATS.get(meta.get("memory_format"), torch.contiguous_format)
    return model.to(device).to(memory_format=fmt).eval()


# ---------------------------------------------------------------- the pipeline


def load_clusters(out: Path, calib_probs: torch.Tensor, calib_labels: torch.Tensor, class_names: Sequence[str],
                  seed: int, n_clusters: int | None = None) -> tuple[list[list[int]], dict[str, Any]]:
    """Hyper-classes from `out/clusters.json`, or Alg. 2 fitted on calibration probabilities (written there);
    `n_clusters` fixes their number (None: the eigengap's choice)."""
    path = out / "clusters.json"
    if not path.exists():
        from dynacnn.cpcnn.clustering import HyperClassClustering
        from dynacnn.cpcnn.discover import write_clusters

        estimator = HyperClassClustering(n_clusters=n_clusters, random_state=seed)
        write_clusters(out, estimator.fit(calib_probs.double().numpy(), calib_labels.numpy()), class_names)
    clusters = read_json(path)
    try:
        members = [list(entry["classes"]) for entry in clusters["hyper_classes"]]
    except (KeyError, TypeError):
        raise ConfigError(f"{path} has no hyper_classes list; delete it to re-cluster") from None
    if n_clusters is not None and len(members) != n_clusters:
        raise ConfigError(f"{path} holds {len(members)} hyper-classes but {n_clusters} were asked for; "
                          "delete it to re-cluster, or drop the hyper-class count")
    return check_members(members, len(class_names)), clusters


def convert(
    backbone: nn.Module,
    data: Any,
    out_dir: str | Path,
    *,
    tau: float | None = None,
    max_drop: float = 0.5,
    split: str | None = None,
    configs: str | Sequence[str] | Mapping[Any, str] | None = None,
    n_clusters: int | None = None,
    epochs: int = DEFAULT_EPOCHS,
    device: str = "auto",
    resume: bool = False,
    quick: bool = False,
    seed: int = 0,
    rule: str = DEFAULT_RULE,
    weighting: str = DEFAULT_WEIGHTING,
    feature_copies: int = 1,
    lr: float = 0.05,
    distill: float = DISTILL,
    head_distill: float = HEAD_DISTILL,
    head_tolerance: float | None = None,
    memory_format: str = "auto",
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn a trained ResNet and its data (`DatasetSplits`) into a CP-CNN in `out_dir`; return the cpcnn.json dict.

    `n_clusters`: number of hyper-classes (None: Alg. 2's eigengap chooses). `memory_format`: "auto" times the
    base model in both layouts and keeps the faster; "contiguous" or "channels_last" fixes it (timing-free, so
    two runs with the same seed give bit-identical weights).
    """
    from dynacnn.report.cpcnn_report import write_report

    if tau is not None:
        check_tau(tau)
    check_policy(rule, weighting)
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop <= 100:
        raise ConfigError(f"max_drop {max_drop!r} must be a number of percentage points in [0, 100], e.g. 0.5")
    if split is not None:
        check_split(split)
    if n_clusters is not None and (isinstance(n_clusters, bool) or not isinstance(n_clusters, int)
                                   or not 2 <= n_clusters <= data.info.num_classes):
        raise ConfigError(f"--clusters {n_clusters!r} must be a whole number of hyper-classes in "
                          f"[2, {data.info.num_classes}] (the data's class count), or left out for the eigengap's choice")
    for label, weight in (("distill", distill), ("head_distill", head_distill)):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
            raise ConfigError(f"{label} {weight!r} must be a weight in [0, 1] (0: plain cross-entropy)")
    if head_tolerance is not None and (isinstance(head_tolerance, bool) or not isinstance(head_tolerance, (int, float))
                                       or not 0 <= head_tolerance <= 100):
        raise ConfigError(f"head_tolerance {head_tolerance!r} must be a number of percentage points in [0, 100], or None")
    if memory_format != "auto" and memory_format not in MEMORY_FORMATS:
        raise ConfigError(f"memory_format {memory_format!r} must be auto, {' or '.join(MEMORY_FORMATS)}")
    if not isinstance(feature_copies, int) or feature_copies < 1:
        raise ConfigError(f"feature_copies {feature_copies!r} must be a positive integer")
    check_backbone(backbone)
    info = data.info
    if backbone.fc.out_features != info.num_classes:
        raise ConfigError(f"the model has {backbone.fc.out_features} classes but the data {info.name!r} has "
                          f"{info.num_classes}; convert the model with the data it was trained on")
    fixed, candidates = parse_configs(configs)
    spec = spec or backbone_spec(backbone)
    dev = resolve_device(device)
    out = ensure_dir(out_dir)
    torch.manual_seed(seed)
    backbone = copy.deepcopy(backbone).to(dev).eval()  # the caller's model keeps its device and memory format
    shape = tuple(info.input_shape)
    train_limit = QUICK_TRAIN_IMAGES if quick else None
    train_config = TrainConfig(epochs=1 if quick else epochs, batch_size=128, lr=lr, augment=False, seed=seed).validate()
    repeats = 3 if quick else TIMING_REPEATS
    timing_images = _normalised(data.test, info, dev, TIMING_IMAGES // (4 if quick else 1), seed)
    choices = out / "timing_choices.json"
    if memory_format == "auto":
        format_name, format_speed = remembered(choices, "memory_format", {"timing_images": len(timing_images)}, resume,
                                               lambda: fastest_format(backbone, timing_images, repeats))
    else:
        format_name, format_speed = memory_format, {}
    fmt = MEMORY_FORMATS[format_name]
    backbone.to(memory_format=fmt)
    timing_images = as_format(timing_images, fmt)

    def make_head(split_name: str, name: str, outputs: int, classes: Sequence[int] | None = None) -> nn.Module:
        """A head or clustifier whose new layers are initialised from a seed of its own (not the global RNG's
        history), so a resumed run that reuses finished components builds the others exactly as before."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + zlib.crc32(f"{split_name}/{name}/{outputs}/{classes}".encode()))
            return build_head(backbone, split_name, name, outputs, shape, classes).to(memory_format=fmt)

    # 1-2. base model, hyper-classes
    base_calib = class_probs(backbone, data.calib, info, dev)
    base_test = class_probs(backbone, data.test, info, dev)
    base_macs = count_macs(backbone, torch.zeros(1, *shape, device=dev)).macs_per_image
    base_calib_top1 = float((base_calib.argmax(1) == data.calib.labels).double().mean())
    base_test_top1 = float((base_test.argmax(1) == data.test.labels).double().mean())
    members, clusters = load_clusters(out, base_calib, data.calib.labels, info.class_names, seed, n_clusters)
    groups = len(members)
    group_of = torch.empty(info.num_classes, dtype=torch.long)
    for g, group in enumerate(members):
        group_of[group] = g
    calib_groups = group_of[data.calib.labels]
    trivial = [len(group) == 1 for group in members]
    finished: set[str] = set()
    for key, name in [*fixed.items(), *(("candidate", name) for name in candidates or ())]:
        if name not in CONFIGURATIONS:
            raise ConfigError(f"unknown configuration {name!r} in configs; use names from {', '.join(CONFIGURATIONS)}")
        if key not in ("clustifier", "candidate") and (not key.isdigit() or int(key) >= groups):
            raise ConfigError(f"configs key {key!r} is neither 'clustifier' nor a hyper-class index 0..{groups - 1}")

    def fit_clustifier(split_name: str, name: str, cache: dict[str, CachedSplit]) -> tuple[nn.Module, dict[str, Any]]:
        module = make_head(split_name, name, groups)
        identity = {"split": split_name, "role": "clustifier", "config": name, "members": members, "train": asdict(train_config),
                    "copies": int(cache["train"].features.shape[0]), "train_images": len(cache["train"].labels), "distill": distill}
        teacher = cache["train"].teacher
        if teacher is not None:  # the backbone's hyper-class log-probabilities: log of its summed member probabilities
            log_probs = torch.log_softmax(teacher, dim=-1)
            teacher = torch.stack([torch.logsumexp(log_probs[..., group], dim=-1) for group in members], dim=-1)
        train = (cache["train"].features, group_of[cache["train"].labels], teacher)
        key = _component_key(split_name, "clustifier", name)
        record = train_component(module, key, train, (cache["calib"].features, calib_groups), out, train_config, identity,
                                 dev, resume, reuse=key in finished, distill=distill)
        finished.add(key)
        return module, record

    base_correct_calib = base_calib.argmax(1) == data.calib.labels

    def policy_rows(v: torch.Tensor, head_probs: list[torch.Tensor], labels: torch.Tensor, confusion: torch.Tensor,
                    fixed_macs: float, head_macs: torch.Tensor, taus: Sequence[float], rule_: str, weighting_: str,
                    reference: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """Policy rows for each tau; `reference` (the base's per-image correctness) adds `drop_se` for choose_tau."""
        return [evaluate_policy(v, head_probs, members, labels, confusion, t, rule_, weighting_, fixed_macs, head_macs,
                                reference=reference) for t in taus]

    def restricted(probs: torch.Tensor) -> list[torch.Tensor]:
        """What an L0 head initialised from the backbone outputs: its probabilities renormalised over the members."""
        return [probs[:, group] / probs[:, group].sum(1, keepdim=True).clamp_min(1e-30) for group in members]

    # 3. split sweep: accuracy with uncompressed heads (exactly the backbone restricted to each hyper-class, so no
    #    head training is needed), measured speed with those heads and with the most compressed Table 1 heads
    #    (untrained: timing does not depend on weights) under the same routing; the chosen split is the one whose
    #    compressed routing is fastest among those meeting max_drop with uncompressed heads.
    sweep_splits = [split] if split is not None else (["layer2"] if quick else list(SPLIT_POINTS))

    def sweep_split_points() -> list[dict[str, Any]]:
        split_rows = []
        for split_name in sweep_splits:
            shared = shared_part(backbone, split_name)
            cache = {"train": cache_split(shared, data, "train", dev, 1, seed, train_limit),
                     "calib": cache_split(shared, data, "calib", dev)}
            if distill > 0:
                cache["train"].teacher = backbone_logits(backbone, split_name, cache["train"].features, shape)
            clustifier_name = fixed.get("clustifier", "LC")
            clustifier, record = fit_clustifier(split_name, clustifier_name, cache)
            v = torch.softmax(_outputs(clustifier, cache["calib"].features.to(dev)).cpu().double(), dim=1)
            confusion = confusion_matrix(calib_groups, v.argmax(1), groups)
            heads = [TrivialHead() if trivial[g] else make_head(split_name, "L0", len(group), group)
                     for g, group in enumerate(members)]
            model = CPCNN(shared, clustifier, heads, members, confusion, shape, rule=rule, weighting=weighting).to(dev)
            rows = policy_rows(v, restricted(base_calib.double()), data.calib.labels, confusion, model.fixed_macs,
                               model.head_macs.cpu(), SELECTION_TAUS, rule, weighting, base_correct_calib)
            row, ok = choose_tau(rows, base_calib_top1, max_drop) if tau is None else (
                policy_rows(v, restricted(base_calib.double()), data.calib.labels, confusion, model.fixed_macs, model.head_macs.cpu(),
                            [tau], rule, weighting)[0], True)
            model.set_policy(row["tau"])
            smallest = [name for name in available_configurations(split_name) if name in TABLE1][-1]
            compressed_heads = [TrivialHead() if trivial[g] else make_head(split_name, smallest, len(group))
                                for g, group in enumerate(members)]
            compressed = CPCNN(shared, clustifier, compressed_heads, members, confusion, shape, tau=row["tau"], rule=rule,
                               weighting=weighting).to(dev)
            compressed_macs = float(compressed.image_macs(activate(v, confusion, row["tau"], rule, weighting)[0]).double().mean())
            speed = measure_throughput({"base": backbone, "routed": model, "compressed": compressed}, timing_images, repeats=repeats)
            split_rows.append({
                "split": split_name, "shared_macs": model.shared_macs, "clustifier": clustifier_name,
                "clustifier_macs": model.clustifier_macs, "clustifier_calib_top1": record["calib_top1"], "tau": row["tau"],
                "calib_top1": row["top1"], "macs_per_image": row["macs_per_image"], "meets_max_drop": ok,
                "images_per_s": speed["routed"], "base_images_per_s": speed["base"], "speedup": speed["speedup"]["routed"],
                "compressed_config": smallest, "compressed_macs_per_image": compressed_macs,
                "compressed_speedup": speed["speedup"]["compressed"],
            })
            del cache
        return split_rows

    sweep_identity = {"splits": sweep_splits, "members": members, "seed": seed, "tau": tau, "max_drop": max_drop,
                      "rule": rule, "weighting": weighting, "configs": fixed, "train": asdict(train_config),
                      "distill": distill, "memory_format": format_name}
    split_rows = remembered(choices, "split_sweep", sweep_identity, resume, sweep_split_points)
    fine = [row for row in split_rows if row["meets_max_drop"]] or split_rows
    split = max(fine, key=lambda row: (row["compressed_speedup"], row["calib_top1"]))["split"] if split is None else split

    # 4. cached S outputs at the chosen split
    shared = shared_part(backbone, split)
    cache = {"train": cache_split(shared, data, "train", dev, feature_copies, seed, train_limit),
             "calib": cache_split(shared, data, "calib", dev), "test": cache_split(shared, data, "test", dev)}
    if distill > 0 or head_distill > 0:
        cache["train"].teacher = backbone_logits(backbone, split, cache["train"].features, shape)
    features_in = {name: part.features.to(dev) for name, part in cache.items() if name != "train"}

    def config_macs(module: nn.Module) -> int:
        return count_macs(module, features_in["calib"][:1]).macs

    # 5. clustifier and heads, one per candidate configuration
    allowed = available_configurations(split)
    for name in [*fixed.values(), *(candidates or ())]:
        if name not in allowed:
            raise ConfigError(f"configuration {name!r} is not available at split {split}; use some of {', '.join(allowed)}")
    table1_names = [name for name in allowed if name in TABLE1]
    quick_candidates = [table1_names[0], table1_names[-1], "LP"]
    table1: dict[str, dict[str, dict[str, Any]]] = {}
    clustifier_names = [fixed["clustifier"]] if "clustifier" in fixed else list(CLUSTIFIER_CONFIGS)
    clustifiers = {}
    table1["clustifier"] = {}
    for name in clustifier_names:
        module, record = fit_clustifier(split, name, cache)
        clustifiers[name] = module
        table1["clustifier"][name] = {"calib_top1": record["calib_top1"], "macs": config_macs(module)}
    clustifier_name = pick_cheapest(table1["clustifier"], CLUSTIFIER_TOLERANCE)
    clustifier = clustifiers[clustifier_name]
    v_calib = torch.softmax(_outputs(clustifier, features_in["calib"]).cpu().double(), dim=1)
    v_test = torch.softmax(_outputs(clustifier, features_in["test"]).cpu().double(), dim=1)
    confusion = confusion_matrix(calib_groups, v_calib.argmax(1), groups)  # 6. on the calibration split
    fixed_macs = count_macs(shared, features_in["calib"].new_zeros(1, *shape)).macs + table1["clustifier"][clustifier_name]["macs"]
    trained: list[dict[str, nn.Module]] = []
    calib_outputs: list[dict[str, torch.Tensor]] = []
    for g, group in enumerate(members):
        trained.append({})
        calib_outputs.append({})
        if trivial[g]:
            continue
        names = [fixed[str(g)]] if str(g) in fixed else list(candidates or (quick_candidates if quick else allowed))
        in_train = torch.isin(cache["train"].labels, torch.tensor(group))
        local = torch.full((info.num_classes,), -1, dtype=torch.long)
        local[group] = torch.arange(len(group))
        teacher = cache["train"].teacher
        teacher = None if teacher is None or head_distill == 0 else teacher[:, in_train][..., group]
        train = (cache["train"].features[:, in_train], local[cache["train"].labels[in_train]], teacher)
        in_calib = calib_groups == g
        calib = (cache["calib"].features[in_calib], local[data.calib.labels[in_calib]])
        records = {}
        for name in names:
            module = make_head(split, name, len(group), group)
            identity = {"split": split, "role": f"h{g}", "config": name, "members": group, "train": asdict(train_config),
                        "copies": int(train[0].shape[0]), "train_images": len(train[1]), "distill": head_distill}
            record = train_component(module, _component_key(split, f"h{g}", name), train, calib, out, train_config,
                                     identity, dev, resume, distill=head_distill)
            trained[g][name] = module
            calib_outputs[g][name] = torch.softmax(_outputs(module, features_in["calib"]).cpu().double(), dim=1)
            records[name] = {"calib_top1": record["calib_top1"], "macs": config_macs(module)}
        table1[f"h{g}"] = records
    del cache["train"]

    def pick_heads(tolerance: float) -> list[str]:
        return ["trivial" if trivial[g] else pick_cheapest(table1[f"h{g}"], tolerance) for g in range(groups)]

    def calib_point(names: list[str]) -> tuple[dict[str, Any], bool]:
        """The calibration operating point (tau by max_drop, or the given tau) of one choice of head configurations."""
        probs = [torch.ones(len(v_calib), 1, dtype=torch.float64) if trivial[g] else calib_outputs[g][name] for g, name in enumerate(names)]
        macs = torch.tensor([0 if trivial[g] else table1[f"h{g}"][name]["macs"] for g, name in enumerate(names)])
        rows = policy_rows(v_calib, probs, data.calib.labels, confusion, fixed_macs, macs, SELECTION_TAUS if tau is None else [tau],
                           rule, weighting, base_correct_calib)
        return choose_tau(rows, base_calib_top1, max_drop)

    tolerance_search = []
    for tolerance in (HEAD_TOLERANCES if head_tolerance is None else (head_tolerance,)):
        names = pick_heads(tolerance)
        point, ok = calib_point(names)
        tolerance_search.append({"tolerance_points": tolerance, "heads": names, "tau": point["tau"], "calib_top1": point["top1"],
                                 "calib_macs_per_image": point["macs_per_image"], "meets_max_drop": ok})
        if ok:
            break
    chosen_search = next((row for row in tolerance_search if row["meets_max_drop"]), tolerance_search[-1])
    head_names = chosen_search["heads"]
    heads = [TrivialHead() if trivial[g] else trained[g][name] for g, name in enumerate(head_names)]
    model = CPCNN(shared, clustifier, heads, members, confusion, shape, rule=rule, weighting=weighting).to(dev).eval()
    head_macs = model.head_macs.cpu()

    # 7. sweeps from cached per-head outputs
    def cached_heads(features: torch.Tensor) -> list[torch.Tensor]:
        return [torch.ones(len(features), 1, dtype=torch.float64) if trivial[g]
                else torch.softmax(_outputs(head, features).cpu().double(), dim=1) for g, head in enumerate(heads)]

    heads_calib, heads_test = cached_heads(features_in["calib"]), cached_heads(features_in["test"])
    test_groups = group_of[data.test.labels]
    comparison = []
    for rule_ in RULES:
        for weighting_ in WEIGHTINGS:
            for part, v, hp, labels in (("calib", v_calib, heads_calib, data.calib.labels), ("test", v_test, heads_test, data.test.labels)):
                for row in policy_rows(v, hp, labels, confusion, model.fixed_macs, head_macs, SELECTION_TAUS, rule_, weighting_,
                                       base_correct_calib if part == "calib" else None):
                    comparison.append({"split": part, "rule": rule_, "weighting": weighting_, **row})
    calib_rows = policy_rows(v_calib, heads_calib, data.calib.labels, confusion, model.fixed_macs, head_macs, SELECTION_TAUS, rule, weighting,
                             base_correct_calib)
    test_rows = policy_rows(v_test, heads_test, data.test.labels, confusion, model.fixed_macs, head_macs, TABLE2_TAUS, rule, weighting)

    def one_head(v: torch.Tensor, hp: list[torch.Tensor], labels: torch.Tensor, which: torch.Tensor) -> dict[str, Any]:
        active = torch.zeros(len(labels), groups, dtype=torch.bool).scatter_(1, which[:, None], True)
        row = evaluate_policy(v, hp, members, labels, confusion, 0.0, rule, weighting, model.fixed_macs, head_macs, active)
        return {key: value for key, value in row.items() if key != "tau"}

    cc_ideal = one_head(v_test, heads_test, data.test.labels, v_test.argmax(1))
    oracle = one_head(v_test, heads_test, data.test.labels, test_groups)
    oracle_calib = one_head(v_calib, heads_calib, data.calib.labels, calib_groups)
    if tau is None:
        chosen_row, meets = choose_tau(calib_rows, base_calib_top1, max_drop)
    else:
        chosen_row, meets = policy_rows(v_calib, heads_calib, data.calib.labels, confusion, model.fixed_macs, head_macs,
                                        [tau], rule, weighting)[0], None
    model.set_policy(chosen_row["tau"])

    # 8. the chosen point, once on the test split, by real routed inference
    test_probs, test_macs = [], []
    for start in range(0, len(data.test), TIMING_BATCH):
        images = as_format(_normalised(data.test, info, dev, None, seed, start, start + TIMING_BATCH), fmt)
        routed = model(images)
        test_probs.append(routed.probs.cpu())
        test_macs.append(routed.macs.cpu())
    test_probs_all, test_macs_all = torch.cat(test_probs), torch.cat(test_macs)
    cached = evaluate_policy(v_test, heads_test, members, data.test.labels, confusion, model.tau, rule, weighting,
                             model.fixed_macs, head_macs)
    speed = measure_throughput({"base": backbone, "routed": model}, timing_images, repeats=repeats)
    speed["ratio"] = speed["speedup"]["routed"]
    chosen = {
        "tau": model.tau, "rule": rule, "weighting": weighting,
        "top1": float((test_probs_all.argmax(1) == data.test.labels).double().mean()),
        "macs_per_image": float(test_macs_all.double().mean()),
        "images_per_s": speed["routed"], "base_images_per_s": speed["base"], "speedup": speed["ratio"],
        "calib_top1": chosen_row["top1"], "calib_macs_per_image": chosen_row["macs_per_image"],
        "max_drop": None if tau is not None else max_drop, "drop_z": DROP_Z, "meets_max_drop": meets,
        "cached_top1": cached["top1"], "activated_hist": cached["activated_hist"],
    }
    chosen["mac_saving"] = 1 - chosen["macs_per_image"] / base_macs
    chosen["top1_change"] = chosen["top1"] - base_test_top1

    save_cpcnn(model, out, {"backbone": spec, "split": split, "clustifier": clustifier_name, "heads": head_names,
                            "class_names": list(info.class_names), "memory_format": format_name})
    result = {
        "format_version": FORMAT_VERSION,
        "dataset": info.name,
        "base": {"top1": base_test_top1, "calib_top1": base_calib_top1, "macs_per_image": base_macs},
        "clusters": [[info.class_names[c] for c in group] for group in members],
        "cluster_ids": members,
        "clusters_source": clusters.get("similarity", "given"),
        "base_cross_hyperclass_calib": float((group_of[base_calib.argmax(1)] != calib_groups).double().mean()),
        "split": split,
        "split_sweep": split_rows,
        "configs": {"clustifier": clustifier_name, "heads": head_names},
        "costs": {"shared": model.shared_macs, "clustifier": model.clustifier_macs, "heads": head_macs.tolist()},
        "table1": table1,
        "tolerance_search": tolerance_search,
        "confusion_calib": confusion.long().tolist(),
        "policy": {"rule": rule, "weighting": weighting},
        "policy_comparison": comparison,
        "sweep": test_rows,
        "sweep_calib": calib_rows,
        "cc_ideal": cc_ideal,
        "oracle": oracle,
        "oracle_calib": oracle_calib,
        "chosen": chosen,
        "table1_resnet18": [dict(row) for row in table1_reduction()],
        "settings": {"epochs": train_config.epochs, "lr": lr, "feature_copies": feature_copies, "distill": distill,
                     "head_distill": head_distill, "quick": quick, "seed": seed,
                     "head_tolerance_points": chosen_search["tolerance_points"], "clustifier_tolerance_points": CLUSTIFIER_TOLERANCE,
                     "timing": {"memory_format": format_name, "base_images_per_s_by_format": format_speed,
                                "batch_size": TIMING_BATCH, "images": len(timing_images), "repeats": repeats,
                                "threads": torch.get_num_threads(), "device": str(dev)}},
        "notes": [
            "accuracies are fractions in [0, 1]; MACs are per image (torch.utils.flop_counter FLOPs / 2)",
            "clusters, configurations, the confusion matrix, the rule comparison and tau are fitted on the calibration split; "
            "the test split is used for the report (Table 2 rows, the chosen point)",
            "the paper measured its confusion matrix on its test set; this one comes from the calibration split",
        ],
    }
    write_json(out / "cpcnn.json", result)
    write_report(result, out)
    return result


def _normalised(split: Any, info: Any, device: torch.device, limit: int | None, seed: int,
                start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Normalised float images of `split[start:stop]` (or a stratified subset of `limit` images)."""
    from dynacnn.data import normalize

    if limit is not None:
        split = split.subset(limit, seed)
    return normalize(split.images[start:stop].to(device), info).contiguous()


def run_cpcnn(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    tau: float | None = None,
    max_drop: float = 0.5,
    split: str | None = None,
    configs: str | Sequence[str] | Mapping[Any, str] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    device: str = "auto",
    resume: bool = False,
    quick: bool = False,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """`dynacnn cpcnn`: convert the run in `run_dir` into a CP-CNN in `out_dir` (see `convert`); return cpcnn.json."""
    run = load_run(run_dir, "cpu")
    data = run.data_spec.load()
    if run.model_spec.num_classes != data.info.num_classes:
        raise ConfigError(f"{run_dir} was trained for {run.model_spec.num_classes} classes but its data has "
                          f"{data.info.num_classes}; check the run's data")
    spec = {"kind": "dynacnn", **asdict(run.model_spec), "run_dir": str(run_dir), "data": asdict(run.data_spec)}
    return convert(run.model, data, out_dir, tau=tau, max_drop=max_drop, split=split, configs=configs, epochs=epochs,
                   device=device, resume=resume, quick=quick, seed=seed, spec=spec, **options)
