"""CP-CNN end to end (§3.1, §4): trained backbone -> hyper-classes -> S, M, heads -> choices -> routed model.

`run_cpcnn(run_dir, out_dir, config)` loads a `dynacnn train` run, calls `convert` and returns cpcnn.json's dict.
`convert` works on any ResNet with torchvision's attribute names (e.g. a torchvision `resnet18(num_classes=K)`) and
a `dynacnn.data.DatasetSplits`, and returns the routed `CPCNN` (as `load_cpcnn(out_dir)` would). It runs these
steps over one `Conversion`:

1. `prepare`: every check of the config, backbone and data; the device; the memory format ("auto": the faster).
2. `cluster`: the base model's calibration and test probabilities and MACs; hyper-classes from
   `out_dir/clusters.json` if present, else Alg. 2 (`HyperClassClustering`) on the calibration probabilities.
3. `choose_split_point`: given, or swept over stem / layer1 / layer2 / layer3 (`explore.sweep_split_points`): the
   fastest measured split whose calibration top-1 with uncompressed heads is within `max_drop`.
4. `cache_outputs`: S's outputs for the training images (one clean copy plus `feature_copies - 1` fixed augmented
   copies; each training sample is drawn from one of its copies), calibration and test; the backbone's logits. Each
   part is cached while `feature_memory` lasts, else recomputed from its images per batch (cpcnn.json "features").
5. `train_clustifier`: M in each candidate configuration (LP, LC and, at split stem, the paper's L44) on the cached
   outputs with S frozen, distilled from the backbone's hyper-class probabilities; the cheapest within
   `CLUSTIFIER_TOLERANCE` points of the best is kept.
   Its confusion matrix is measured on the calibration split (the paper used its test set).
6. `train_heads`: H_g in each candidate configuration, starting from the backbone's weights where their stages are
   kept, distilled from its restricted logits. Single-class hyper-classes get a `TrivialHead`.
7. `choose_point`: the heads (the cheapest within the largest of `HEAD_TOLERANCES` whose CP-CNN meets `max_drop`, the
   paper's {C0: L44, C1: L1, ...}, unless `configs` fixes them), tau, rule and weighting on calibration ("auto":
   every rule x weighting at its own tau, the cheapest meeting `max_drop`); every policy row from cached per-head
   outputs: rules x weightings x tau, Table 2 on test (each combination at its calibration tau), CC-ideal, oracle.
8. `measure_test`: the chosen point once on the test split by real routed inference, and images/s at batch 256 of the
   routed and the base model side by side (`explore.Timing`).
9. `save`: cpcnn.safetensors + cpcnn_model.json, cpcnn.json (its "settings" are `CPCNNConfig.to_dict()`), the report.

Every finished component is saved under `out_dir/components`; with `resume=True` a re-run reuses those whose
settings match and continues interrupted training from its checkpoint (`training.train_component`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynacnn import distributed
from dynacnn.cpcnn import explore
from dynacnn.cpcnn.cache import class_probs, normalised_images, shared_outputs
from dynacnn.cpcnn.choice import topk_correct
from dynacnn.cpcnn.compress import SPLIT_POINTS, check_backbone, shared_part, table1_reduction
from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.cpcnn.conversion import Conversion
from dynacnn.cpcnn.discover import hyper_classes
from dynacnn.cpcnn.explore import Routing, SplitView, Timing
from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.cpcnn.policy import confusion_matrix
from dynacnn.cpcnn.serialize import FORMAT_VERSION, backbone_spec, load_cpcnn, save_cpcnn
from dynacnn.cpcnn.training import ComponentTrainer, component_key, group_index
from dynacnn.data import batches
from dynacnn.errors import ConfigError
from dynacnn.flops import count_macs
from dynacnn.io import ensure_dir, read_json, write_json
from dynacnn.models.layout import MEMORY_FORMATS, as_format
from dynacnn.report.cpcnn_report import write_report
from dynacnn.runs import load_run, remembered, weights_digest
from dynacnn.train import resolve_device

NOTES = [
    "accuracies are fractions in [0, 1]; MACs are per image (torch.utils.flop_counter FLOPs / 2)",
    "clusters, configurations, the confusion matrix, rule, weighting and tau are fitted on the calibration split; "
    "the test split is used for the report (Table 2 rows, the chosen point)",
    "the paper measured its confusion matrix on its test set; this one comes from the calibration split",
]


def convert(
    backbone: nn.Module,
    data: Any,
    out_dir: str | Path,
    config: CPCNNConfig = CPCNNConfig(),
    *,
    device: str = "auto",
    resume: bool = False,
    spec: dict[str, Any] | None = None,
) -> CPCNN:
    """Turn a trained ResNet and its data (`DatasetSplits`) into a CP-CNN in `out_dir`; return the routed `CPCNN`.

    The module comes as `load_cpcnn(out_dir, device)` gives it: on the conversion's device, in eval mode and in the
    memory format it was timed in; `model(x)` gives class probabilities, `model.route(x)` the routing details.
    The figures (accuracy, MACs, speed, every policy row) are in `out_dir/cpcnn.json` and the report.
    `config.memory_format` "auto" times the base model in both layouts and keeps the faster; "contiguous" or
    "channels_last" fixes it (timing-free, so two runs with the same seed give bit-identical weights). `spec`
    describes the backbone for `load_cpcnn` (default: `backbone_spec(backbone)`).
    """
    conv = prepare(backbone, data, out_dir, config, device, resume, spec)
    for step in STEPS:
        step(conv)
    return load_cpcnn(conv.out, conv.device)


def prepare(
    backbone: nn.Module,
    data: Any,
    out_dir: str | Path,
    config: CPCNNConfig,
    device: str,
    resume: bool,
    spec: dict[str, Any] | None,
) -> Conversion:
    """Step 1: every check before any work; a private copy of the backbone on the device, in the chosen layout."""
    info = data.info
    config.validate(info.num_classes)
    check_backbone(backbone)
    if backbone.fc.out_features != info.num_classes:
        raise ConfigError(
            f"the model has {backbone.fc.out_features} classes but the data {info.name!r} has "
            f"{info.num_classes}; convert the model with the data it was trained on"
        )
    spec = spec or backbone_spec(backbone)
    dev = resolve_device(device)
    out = ensure_dir(out_dir)
    torch.manual_seed(config.seed)
    backbone = copy.deepcopy(backbone).to(dev).eval()  # the caller's model keeps its device and memory format
    images = normalised_images(data.test, info, dev, explore.TIMING_IMAGES // (4 if config.quick else 1), config.seed)
    timing = Timing(images, 3 if config.quick else explore.TIMING_REPEATS)
    format_name, format_speed = config.memory_format, {}
    if config.memory_format == "auto":
        choice = {"timing_images": len(images)}
        fastest = partial(timing.fastest_format, backbone)
        format_name, format_speed = remembered(out / "timing_choices.json", "memory_format", choice, resume, fastest)
    backbone.to(memory_format=MEMORY_FORMATS[format_name])
    timing = Timing(as_format(images, MEMORY_FORMATS[format_name]), timing.repeats)
    return Conversion(backbone, data, out, config, dev, resume, spec, timing, format_name, format_speed)


def cluster(conv: Conversion) -> None:
    """Step 2: the base model on calibration and test; the hyper-classes; the trainer of the components."""
    data, info, c = conv.data, conv.data.info, conv.config
    base_calib = class_probs(conv.backbone, data.calib, info, conv.device)
    base_test = class_probs(conv.backbone, data.test, info, conv.device)
    macs = count_macs(conv.backbone, torch.zeros(1, *conv.input_shape, device=conv.device)).macs_per_image
    members, conv.clusters = hyper_classes(
        conv.out, base_calib, data.calib.labels, info.class_names, c.seed, c.n_clusters, weights_digest(conv.backbone)
    )
    c.check_hyper_class_count(len(members))
    conv.cal = SplitView(members, data.calib.labels, base_calib, c.tau, c.max_drop, c.rule, c.weighting)
    conv.base = {"macs": macs, "test": replace(conv.cal, labels=data.test.labels, base_probs=base_test)}
    fmt = MEMORY_FORMATS[conv.format_name]
    conv.trainer = ComponentTrainer(
        conv.backbone, conv.input_shape, fmt, members, conv.out, c, conv.device, conv.resume
    )


def choose_split_point(conv: Conversion) -> None:
    """Step 3: the split sweep (made once per output directory: a resumed run repeats its timed choice), then the
    split: the given one, or the fastest with compressed heads among those meeting max_drop."""
    c, settings = conv.config, conv.config.to_dict()
    fixed = conv.config.parsed_configs[0]
    splits = [c.split] if c.split is not None else (["layer2"] if c.quick else list(SPLIT_POINTS))
    # the settings the sweep depends on (from `to_dict()`), laid out as before the split into modules: older output
    # directories still resume
    identity = {
        "splits": splits,
        "members": conv.members,
        **{key: settings[key] for key in ("seed", "tau", "max_drop", "rule", "weighting")},
        "configs": fixed,
        "train": c.train_config().to_dict(),
        "distill": settings["distill"],
        "memory_format": conv.format_name,
        "backbone_sha256": conv.trainer.backbone_sha256,
    }
    clustifier = fixed.get("clustifier", "LC")
    sweep = partial(explore.sweep_split_points, splits, conv.data, conv.trainer, conv.cal, clustifier, conv.timing)
    conv.split_rows = remembered(conv.out / "timing_choices.json", "split_sweep", identity, conv.resume, sweep)
    conv.split = c.split if c.split is not None else explore.choose_split(conv.split_rows)
    c.check_split_point(conv.split)


def cache_outputs(conv: Conversion) -> None:
    """Step 4: S's outputs at the chosen split for train (`feature_copies` copies), calibration and test, each cached
    or recomputed per batch within `feature_memory` (`cache.shared_outputs`); the backbone's logits as teacher."""
    c = conv.config
    conv.shared = shared_part(conv.backbone, conv.split)
    teacher = c.distill > 0 or c.head_distill > 0
    conv.cache, conv.features = shared_outputs(
        conv.backbone, conv.shared, conv.split, conv.data, conv.device, c, teacher=teacher
    )


def train_clustifier(conv: Conversion) -> None:
    """Step 5: M in each candidate configuration, the cheapest within `CLUSTIFIER_TOLERANCE` points of the best
    kept; its probabilities on calibration and test, and its confusion matrix on calibration."""
    fixed = conv.config.parsed_configs[0]
    names = explore.clustifier_candidates(fixed, conv.split)
    conv.clustifier_skipped = explore.clustifier_skipped(fixed, conv.split)
    train = partial(conv.trainer.clustifier, conv.split, cache=conv.cache)  # independent given S: one per rank
    trained = distributed.map_components(train, names, conv.device)
    conv.trainer.finished.update(component_key(conv.split, "clustifier", name) for name in names)
    modules = {name: module for name, (module, _) in zip(names, trained)}
    records = {name: _record(record, conv.macs(module)) for name, (module, record) in zip(names, trained)}
    conv.table1["clustifier"] = records
    conv.clustifier_name = explore.pick_cheapest(records, explore.CLUSTIFIER_TOLERANCE)
    conv.clustifier = modules[conv.clustifier_name]
    conv.v = {part: conv.cache[part].probs([conv.clustifier], conv.device)[0] for part in ("calib", "test")}
    conv.confusion = confusion_matrix(conv.cal.groups, conv.v["calib"].argmax(1), len(conv.members))


def train_heads(conv: Conversion) -> None:
    """Step 6: H_g in each candidate configuration for every hyper-class of more than one class; each one's
    calibration probabilities, top-1 and MACs (the Table 1 analog)."""
    fixed, candidates = conv.config.parsed_configs
    tasks = [
        (g, name)
        for g, group in enumerate(conv.members)
        if len(group) > 1
        for name in explore.head_candidates(conv.split, g, fixed, candidates, conv.config.quick)
    ]
    # independent given S: under torchrun each rank trains a share of them (`distributed.map_components`)
    trained = distributed.map_components(
        lambda task: conv.trainer.heads(conv.split, task[0], [task[1]], conv.cache)[task[1]], tasks, conv.device
    )
    for g in range(len(conv.members)):
        conv.heads.append({})
        mine = [(name, result) for (h, name), result in zip(tasks, trained) if h == g]
        if not mine:
            continue
        calib_probs = conv.cache["calib"].probs([module for _, (module, _) in mine], conv.device)
        records = {}
        for (name, (module, record)), probs in zip(mine, calib_probs):
            conv.heads[g][name] = (module, probs)
            records[name] = _record(record, conv.macs(module))
        conv.table1[f"h{g}"] = records
    del conv.cache["train"]


def _record(record: dict[str, Any], macs: int) -> dict[str, Any]:
    """A Table 1 cell: calibration top-1 (top-5 where the component was trained after top-5 was recorded), MACs."""
    return {"calib_top1": record["calib_top1"], "calib_top5": record.get("calib_top5"), "macs": macs}


def choose_point(conv: Conversion) -> None:
    """Step 7: heads, tau, rule and weighting on calibration (`SplitView.choose`: with "auto", every combination at
    its own tau, the cheapest meeting max_drop), the routed model there, and every policy row from cached outputs."""
    cal, test, c = conv.cal, conv.base["test"], conv.config
    fixed_macs = count_macs(conv.shared, torch.zeros(1, *conv.input_shape, device=conv.device)).macs
    fixed_macs += conv.table1["clustifier"][conv.clustifier_name]["macs"]
    calib_probs = [{name: probs for name, (_, probs) in heads.items()} for heads in conv.heads]
    search, chosen = explore.choose_heads(
        conv.table1, calib_probs, conv.v["calib"], conv.confusion, fixed_macs, cal, c.head_tolerance
    )
    heads = [TrivialHead() if name == "trivial" else conv.heads[g][name][0] for g, name in enumerate(chosen["heads"])]
    model = CPCNN(conv.shared, conv.clustifier, heads, conv.members, conv.confusion, conv.input_shape)
    model = model.to(conv.device).eval()
    routing = Routing.of(model, conv.confusion)
    probs = {part: conv.cache[part].probs(heads, conv.device) for part in ("calib", "test")}
    point, meets, candidates = cal.choose(conv.v["calib"], probs["calib"], routing)
    meets = None if cal.tau is not None else meets
    model.set_policy(point["tau"], point["rule"], point["weighting"])
    conv.model = model
    cal, test = cal.resolved(point), test.resolved(point)
    views = {"calib": cal, "test": test}
    conv.rows = {
        "tolerance_search": search,
        "heads": chosen["heads"],
        "head_tolerance_points": chosen["tolerance_points"],
        "policies": explore.policy_rows(views, conv.v, probs, routing, candidates),
        "policy_choice": {
            "requested": {"rule": c.rule, "weighting": c.weighting},
            "chosen": {"rule": model.rule, "weighting": model.weighting},
            "candidates": candidates,
        },
        "point": point,
        "meets": meets,
        "cached": test.rows(conv.v["test"], probs["test"], routing, [model.tau], paired=False)[0],
    }


def measure_test(conv: Conversion) -> None:
    """Step 8: the chosen point once on the test split by real routed inference; images/s beside the base's."""
    model, test, c = conv.model, conv.data.test, conv.config
    probs, macs = [], []  # the routed model's own outputs: the merged probabilities it serves
    for images, _ in batches(test, conv.data.info, explore.TIMING_BATCH, device=conv.device):
        routed = model.route(as_format(images, MEMORY_FORMATS[conv.format_name]))
        probs.append(routed.probs.cpu())
        macs.append(routed.macs.cpu())
    speed = conv.timing.speeds({"base": conv.backbone, "routed": model})
    point, cached, base = conv.rows["point"], conv.rows["cached"], conv.base["test"]
    probs = torch.cat(probs)
    top1, macs_per_image = (
        float((probs.argmax(1) == test.labels).double().mean()),
        float(torch.cat(macs).double().mean()),
    )
    conv.rows["chosen"] = {
        "tau": model.tau,
        "rule": model.rule,
        "weighting": model.weighting,
        "top1": top1,
        "top5": float(topk_correct(probs, test.labels).double().mean()),
        "macs_per_image": macs_per_image,
        "images_per_s": speed["routed"]["images_per_s"],
        "base_images_per_s": speed["base"]["images_per_s"],
        "speedup": speed["routed"]["wall_speedup_median"],
        "calib_top1": point["top1"],
        "calib_top5": point["top5"],
        "calib_macs_per_image": point["macs_per_image"],
        "max_drop": None if c.tau is not None else c.max_drop,
        "drop_z": explore.DROP_Z,
        "meets_max_drop": conv.rows["meets"],
        "cached_top1": cached["top1"],
        "activated_hist": cached["activated_hist"],
        "mac_saving": 1 - macs_per_image / conv.base["macs"],
        "top1_change": top1 - base.base_top1,
    }


def save(conv: Conversion) -> dict[str, Any]:
    """Step 9: the model, cpcnn.json and the report (tables and plots); returns cpcnn.json's dict."""
    model, info, rows, cal = conv.model, conv.data.info, conv.rows, conv.cal
    meta = {
        "backbone": conv.spec,
        "split": conv.split,
        "clustifier": conv.clustifier_name,
        "heads": rows["heads"],
        "class_names": list(info.class_names),
        "memory_format": conv.format_name,
    }
    save_cpcnn(model, conv.out, meta)
    crossing = group_index(conv.members, info.num_classes)[cal.base_probs.argmax(1)] != cal.groups
    timing = {
        "memory_format": conv.format_name,
        "base_images_per_s_by_format": conv.format_speed,
        "batch_size": explore.TIMING_BATCH,
        "images": len(conv.timing.images),
        "repeats": conv.timing.repeats,
        "threads": torch.get_num_threads(),
        "device": str(conv.device),
    }
    result = {
        "format_version": FORMAT_VERSION,
        "dataset": info.name,
        "base": {
            "top1": conv.base["test"].base_top1,
            "top5": conv.base["test"].base_top5,
            "calib_top1": cal.base_top1,
            "calib_top5": cal.base_top5,
            "macs_per_image": conv.base["macs"],
            "sha256": conv.trainer.backbone_sha256,
        },
        "clusters": [[info.class_names[c] for c in group] for group in conv.members],
        "cluster_ids": conv.members,
        "clusters_source": conv.clusters.get("similarity", "given"),
        "base_cross_hyperclass_calib": float(crossing.double().mean()),
        "split": conv.split,
        "split_sweep": conv.split_rows,
        "configs": {"clustifier": conv.clustifier_name, "heads": rows["heads"]},
        "costs": {"shared": model.shared_macs, "clustifier": model.clustifier_macs, "heads": model.head_macs.tolist()},
        "table1": conv.table1,
        "clustifier_skipped": conv.clustifier_skipped,
        "tolerance_search": rows["tolerance_search"],
        "confusion_calib": conv.confusion.long().tolist(),
        "policy": {"rule": model.rule, "weighting": model.weighting},
        "policy_choice": rows["policy_choice"],
        **rows["policies"],
        "chosen": rows["chosen"],
        "table1_resnet18": [dict(row) for row in table1_reduction()],
        "features": conv.features,
        "settings": {
            **conv.config.to_dict(),
            "train_epochs": conv.config.train_config().epochs,
            "head_tolerance_points": rows["head_tolerance_points"],
            "clustifier_tolerance_points": explore.CLUSTIFIER_TOLERANCE,
            "timing": timing,
        },
        "notes": NOTES,
    }
    write_json(conv.out / "cpcnn.json", result)
    write_report(conv.out, result)
    return result


STEPS = (
    cluster,
    choose_split_point,
    cache_outputs,
    train_clustifier,
    train_heads,
    choose_point,
    measure_test,
    save,
)
"""The conversion's steps after `prepare`, in order (`convert`; `experiments.multilevel` runs them too)."""


def run_cpcnn(
    run_dir: str | Path,
    out_dir: str | Path,
    config: CPCNNConfig = CPCNNConfig(),
    *,
    device: str = "auto",
    resume: bool = False,
) -> dict[str, Any]:
    """`dynacnn cpcnn`: convert the run in `run_dir` into a CP-CNN in `out_dir` (see `convert`); return cpcnn.json's
    dict (the routed module: `load_cpcnn(out_dir)`)."""
    config.validate()
    run = load_run(run_dir, "cpu")
    data = run.data_spec.load()
    if run.model_spec.num_classes != data.info.num_classes:
        raise ConfigError(
            f"{run_dir} was trained for {run.model_spec.num_classes} classes but its data has "
            f"{data.info.num_classes}; check the run's data"
        )
    spec = {"kind": "dynacnn", **asdict(run.model_spec), "run_dir": str(run_dir), "data": asdict(run.data_spec)}
    convert(run.model, data, out_dir, config, device=device, resume=resume, spec=spec)
    return read_json(Path(out_dir) / "cpcnn.json")
