"""A second level of CP-CNN (abstract: "Steps 1 and 2 could be repeated"; Fig. 1 bottom) on a finished conversion.

`add_second_level(conv, levels)` takes a one-level `Conversion` (after `pipeline.measure_test`) and, for each
hyper-class chosen on the calibration split (`groups_to_split`: those of more than `max_hyper_class_size` classes,
else the largest), re-clusters its classes (Alg. 2 again, `HyperClassClustering.recluster`, on the backbone's
calibration probabilities), and builds a nested CP-CNN in its place: S' = the backbone's next stage (the split
point one stage later, frozen), a clustifier M' and sub-heads trained as the first level's are (`ComponentTrainer`:
warm started from the backbone, distilled from it, on the parent hyper-class's training images only), M''s
confusion matrix and the sub-heads' configurations and tau' chosen on calibration with the parent's tau fixed
(the same `max_drop` rule as the first level). Both models are then routed once on the test split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dynacnn.cpcnn import explore
from dynacnn.cpcnn.cache import shared_outputs
from dynacnn.cpcnn.clustering import HyperClassClustering
from dynacnn.cpcnn.compress import SMALL_CONFIGS, available_configurations, shared_part
from dynacnn.cpcnn.levels import head_shared, nested_cpcnn, next_split, shared_between
from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.cpcnn.policy import activate, confusion_matrix, merge
from dynacnn.cpcnn.training import ComponentTrainer, component_key, hyper_class_teacher
from dynacnn.data import batches
from dynacnn.errors import ConfigError
from dynacnn.flops import count_macs
from dynacnn.models.layout import MEMORY_FORMATS, as_format
from dynacnn.train import paired_drop

LEVELS = (1, 2)


@dataclass(frozen=True)
class MultiLevelConfig:
    """How many levels (1: plain CP-CNN, 2: nested CP-CNNs in some hyper-classes), which hyper-classes to split
    (`max_hyper_class_size`: every one with more classes; None: the largest), and the sub-clusters per split
    hyper-class (None: the eigengap's choice)."""

    levels: int = 1
    max_hyper_class_size: int | None = None
    sub_clusters: int | None = None

    def validate(self) -> MultiLevelConfig:
        if self.levels not in LEVELS:
            raise ConfigError(f"levels {self.levels!r} is not supported; use 1 or 2")
        if self.levels == 1 and (self.max_hyper_class_size is not None or self.sub_clusters is not None):
            raise ConfigError("--max-hyper-class-size and --sub-clusters split hyper-classes; use them with --levels 2")
        if self.max_hyper_class_size is not None and (
            not isinstance(self.max_hyper_class_size, int) or self.max_hyper_class_size < 2
        ):
            raise ConfigError(f"max_hyper_class_size {self.max_hyper_class_size!r} must be an integer >= 2")
        if self.sub_clusters is not None and (not isinstance(self.sub_clusters, int) or self.sub_clusters < 2):
            raise ConfigError(f"sub_clusters {self.sub_clusters!r} must be an integer >= 2 (or None: eigengap)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": self.levels,
            "max_hyper_class_size": self.max_hyper_class_size,
            "sub_clusters": self.sub_clusters,
        }


def groups_to_split(members: list[list[int]], levels: MultiLevelConfig) -> list[int]:
    """The hyper-classes that get a second level: more than `max_hyper_class_size` classes, else the largest."""
    sizes = [len(group) for group in members]
    if levels.max_hyper_class_size is None:
        chosen = [sizes.index(max(sizes))]
    else:
        chosen = [g for g, size in enumerate(sizes) if size > levels.max_hyper_class_size]
    if not chosen or min(sizes[g] for g in chosen) < 3:
        raise ConfigError(
            f"no hyper-class to split (sizes {sizes}; a second level needs one of at least 3 classes"
            f"{'' if levels.max_hyper_class_size is None else ' above --max-hyper-class-size'}); "
            "lower --max-hyper-class-size or use --levels 1"
        )
    return chosen


def partition_estimator(members: list[list[int]], seed: int) -> HyperClassClustering:
    """An Alg. 2 estimator holding the given hyper-classes as its fit, so that `recluster` can split one of them."""
    estimator = HyperClassClustering(random_state=seed)
    labels = np.empty(sum(len(group) for group in members), dtype=np.int64)
    for g, group in enumerate(members):
        labels[group] = g
    estimator.labels_, estimator.classes_, estimator.n_clusters_ = labels, np.arange(len(labels)), len(members)
    return estimator


@dataclass
class SubTrainer(ComponentTrainer):
    """`ComponentTrainer` for a nested level: `members` are sub-hyper-classes (backbone class ids) of the classes
    `parent`; M' is trained on the parent's images only."""

    parent: tuple[int, ...] = ()

    @property
    def group_of(self) -> torch.Tensor:
        group_of = torch.full((self.backbone.fc.out_features,), -1, dtype=torch.long)
        for g, group in enumerate(self.members):
            group_of[list(group)] = g
        return group_of

    def clustifier(self, split: str, name: str, cache: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        """M' with configuration `name` on the parent's images, distilled from the backbone's sub-hyper-classes."""
        module = self.make_head(split, name, len(self.members))
        group_of, source, calib = self.group_of, cache["train"], cache["calib"]
        parent = torch.tensor(self.parent)
        distill = self.config.distill if source.has_teacher else 0.0
        teacher = hyper_class_teacher(self.members) if distill > 0 else None
        in_train = torch.nonzero(torch.isin(source.labels, parent)).flatten()
        train = source.training_batches(group_of, teacher, in_train, self.train_config.batch_size, self.memory_format)
        in_calib = torch.nonzero(torch.isin(calib.labels, parent)).flatten()
        identity = self._identity(split, "clustifier", name, self.members, source.copies, train, self.config.distill)
        key = component_key(split, "clustifier", name)
        record = self.train_part(
            module, key, train, (calib, in_calib, group_of[calib.labels[in_calib]]), identity, distill
        )
        return module, record


def sub_head_candidates(candidates: tuple[str, ...] | None, sub_split: str) -> list[str] | None:
    """The sub-heads' candidate configurations: the conversion's candidates available at S''s split point, and the
    small LC and LP (a sub-head serves fewer classes); None (every available one) when the conversion gave none."""
    if not candidates:
        return None
    available = available_configurations(sub_split)
    return list(dict.fromkeys(name for name in (*candidates, *SMALL_CONFIGS) if name in available))


def level_outputs(
    v: torch.Tensor,
    confusion: torch.Tensor,
    policy: dict[str, Any],
    head_probs: list[torch.Tensor],
    members: list[list[int]],
    fixed_macs: float,
    head_costs: list[torch.Tensor | float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One level from cached outputs: Eq. 3 merged probabilities (N, K) and MACs per image (N,) of Alg. 1's active
    heads, a head costing a constant or, for a nested level, its own per-image MACs."""
    active, weights = activate(v, confusion.to(v.dtype), policy["tau"], policy["rule"], policy["weighting"])
    index = [torch.as_tensor(group) for group in members]
    probs = merge(weights, head_probs, index, sum(len(group) for group in members))
    macs = torch.full((len(v),), float(fixed_macs), dtype=torch.float64)
    for g, cost in enumerate(head_costs):
        macs += active[:, g].double() * (cost.double() if torch.is_tensor(cost) else float(cost))
    return probs, macs


def calib_row(tau: float, probs: torch.Tensor, macs: torch.Tensor, labels: torch.Tensor, base: torch.Tensor):
    """A policy row (top-1, paired drop SE against the base model, MACs per image) for `explore.choose_tau`."""
    correct = probs.argmax(1) == labels
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices.eq(labels[:, None]).any(1)
    return {
        "tau": tau,
        "top1": float(correct.double().mean()),
        "top5": float(top5.double().mean()),
        "drop_se": paired_drop(base, correct)[1],
        "macs_per_image": float(macs.mean()),
    }


def routed_test(model: CPCNN, conv: Any) -> dict[str, float]:
    """Top-1, top-5 and MACs per image of `model` by real routed inference on the test split (once)."""
    probs, macs = [], []
    for images, _ in batches(conv.data.test, conv.data.info, explore.TIMING_BATCH, device=conv.device):
        routed = model.route(as_format(images, MEMORY_FORMATS[conv.format_name]))
        probs.append(routed.probs.cpu())
        macs.append(routed.macs.cpu())
    probs, labels = torch.cat(probs), conv.data.test.labels
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices.eq(labels[:, None]).any(1)
    return {
        "top1": float((probs.argmax(1) == labels).double().mean()),
        "top5": float(top5.double().mean()),
        "macs_per_image": float(torch.cat(macs).double().mean()),
    }


def add_second_level(conv: Any, levels: MultiLevelConfig) -> tuple[CPCNN, dict[str, Any]]:
    """Fig. 1 bottom on a finished one-level `Conversion`: nested CP-CNNs in the hyper-classes `groups_to_split`
    chooses, tau' on calibration with the parent's tau fixed; returns the two-level model and the comparison."""
    levels.validate()
    c, one, parts = conv.config, conv.model, ("calib", "test")
    chosen = groups_to_split(conv.members, levels)
    policy = {"tau": one.tau, "rule": one.rule, "weighting": one.weighting}
    state = {
        "probs": {part: conv.cache[part].probs(list(one.heads), conv.device) for part in parts},
        "costs": {part: [float(cost) for cost in one.head_macs.tolist()] for part in parts},
    }

    def compose(
        part: str, g: int | None = None, probs: torch.Tensor | None = None, macs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole model's probabilities and MACs per image from cached outputs (hyper-class g's replaced)."""
        head_probs, costs = list(state["probs"][part]), list(state["costs"][part])
        if g is not None:
            head_probs[g], costs[g] = probs, macs
        return level_outputs(conv.v[part], conv.confusion, policy, head_probs, conv.members, one.fixed_macs, costs)

    estimator = partition_estimator(conv.members, c.seed)
    heads, entries, children = list(one.heads), list(conv.rows["heads"]), {}
    for g in chosen:
        params = {} if levels.sub_clusters is None else {"n_clusters": levels.sub_clusters}
        sub = estimator.recluster(g, conv.cal.base_probs.numpy(), conv.cal.labels.numpy(), **params)
        sub_members = [sorted(int(k) for k in sub.classes_[sub.labels_ == n]) for n in range(sub.n_clusters_)]
        child, entry, record, outputs = _second_level(conv, g, sub_members, policy, compose)
        for part in parts:
            state["probs"][part][g], state["costs"][part][g] = outputs[part]
        heads[g], entries[g], children[str(g)] = child, entry, record
    fmt = MEMORY_FORMATS[conv.format_name]
    model = CPCNN(conv.shared, conv.clustifier, heads, conv.members, conv.confusion, conv.input_shape, **policy)
    model = model.to(conv.device).to(memory_format=fmt).eval()
    calib = {"one_level": conv.rows["point"]}
    calib["two_level"] = calib_row(one.tau, *compose("calib"), conv.cal.labels, conv.cal.base_correct)
    probs, macs = compose("test")
    test = {"one_level": routed_test(one, conv), "two_level": routed_test(model, conv)}
    test["two_level"]["cached_top1"] = float((probs.argmax(1) == conv.data.test.labels).double().mean())
    test["two_level"]["cached_macs_per_image"] = float(macs.mean())
    speed = conv.timing.speeds({"base": conv.backbone, "one_level": one, "two_level": model})
    for name in test:
        test[name]["images_per_s"] = speed[name]["images_per_s"]
        test[name]["speedup_vs_base"] = speed[name]["wall_speedup_median"]
    result = {
        "settings": levels.to_dict(),
        "split": conv.split,
        "members": conv.members,
        "split_hyper_classes": chosen,
        "children": children,
        "taus": {"level1": one.tau, "level2": {str(g): heads[g].tau for g in chosen}},
        "calib": calib,
        "test": test,
        "base": {"top1": conv.base["test"].base_top1, "macs_per_image": conv.base["macs"]},
        "heads": entries,
    }
    return model, result


def second_level_shared(conv: Any, g: int) -> tuple[nn.Module, str, str, dict[str, Any]]:
    """S' of hyper-class g, where it ends, its description, and the outputs of S + S' on every part: the first
    block of the level-1 head (`levels.head_shared`) if it fits, else the backbone's next stage. The teacher of the
    distillation is the backbone's logits either way (computed from the backbone's own stages)."""
    c, device = conv.config, conv.device
    found = head_shared(conv.backbone, conv.split, conv.model.heads[g], conv.input_shape)
    if found is None:
        sub_split = next_split(conv.split)
        shared, description = shared_between(conv.backbone, conv.split, sub_split), "backbone"
    else:
        (shared, sub_split), description = found, f"head:{conv.rows['heads'][g]}"
    teacher = c.distill > 0 or c.head_distill > 0
    full = nn.Sequential(conv.shared, shared)
    cache, _ = shared_outputs(conv.backbone, full, sub_split, conv.data, device, c, teacher=teacher and found is None)
    if teacher and found is not None and cache["train"].mode == "cache":
        backbone_s = shared_part(conv.backbone, sub_split)
        reference, _ = shared_outputs(conv.backbone, backbone_s, sub_split, conv.data, device, c, ("train",))
        cache["train"].teacher = reference["train"].teacher
    return shared, sub_split, description, cache


def _second_level(
    conv: Any,
    g: int,
    sub_members: list[list[int]],
    policy: dict[str, Any],
    compose: Callable[..., tuple[torch.Tensor, torch.Tensor]],
) -> tuple[CPCNN, dict[str, Any], dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """M' and the sub-heads of hyper-class g trained, then its sub-head configurations and tau' chosen on
    calibration through the whole model (`compose`); the nested CP-CNN, its description, record and outputs."""
    c, device, group, parts = conv.config, conv.device, conv.members[g], ("calib", "test")
    shared, sub_split, description, cache = second_level_shared(conv, g)
    local = [[group.index(k) for k in sub_group] for sub_group in sub_members]
    fmt = MEMORY_FORMATS[conv.format_name]
    trainer = SubTrainer(
        conv.backbone,
        conv.input_shape,
        fmt,
        sub_members,
        conv.out / "level2" / f"h{g}",
        c,
        device,
        conv.resume,
        parent=tuple(group),
    )
    example = cache["calib"].example(device)
    clustifiers = [name for name in explore.CLUSTIFIER_CONFIGS if name in available_configurations(sub_split)]
    trained = {name: trainer.clustifier(sub_split, name, cache) for name in clustifiers}
    table1 = {
        "clustifier": {
            n: {"calib_top1": r["calib_top1"], "macs": count_macs(m, example).macs} for n, (m, r) in trained.items()
        }
    }
    clustifier_name = explore.pick_cheapest(table1["clustifier"], explore.CLUSTIFIER_TOLERANCE)
    clustifier = trained[clustifier_name][0]
    v = {part: cache[part].probs([clustifier], device)[0] for part in parts}
    labels = cache["calib"].labels
    inside = torch.isin(labels, torch.tensor(group))
    confusion = confusion_matrix(trainer.group_of[labels][inside], v["calib"][inside].argmax(1), len(sub_members))
    parent_example = conv.cache["calib"].example(device)
    shared_macs = count_macs(shared, parent_example).macs
    fixed_macs = shared_macs + table1["clustifier"][clustifier_name]["macs"]
    candidates = sub_head_candidates(c.parsed_configs[1], sub_split)
    modules: dict[int, dict[str, nn.Module]] = {}
    outputs: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for k, sub_group in enumerate(sub_members):
        if len(sub_group) == 1:
            continue
        names = explore.head_candidates(sub_split, k, {}, candidates, c.quick)
        got = trainer.heads(sub_split, k, names, cache)
        modules[k] = {name: module for name, (module, _) in got.items()}
        table1[f"h{k}"] = {
            n: {"calib_top1": r["calib_top1"], "macs": count_macs(m, example).macs} for n, (m, r) in got.items()
        }
        per = {part: cache[part].probs(list(modules[k].values()), device) for part in parts}
        outputs[k] = {name: {part: per[part][i] for part in parts} for i, name in enumerate(modules[k])}

    def child_outputs(names: list[str], tau: float, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        ones = torch.ones(len(v[part]), 1, dtype=torch.float64)
        probs = [ones if name == "trivial" else outputs[k][name][part] for k, name in enumerate(names)]
        costs = [0.0 if name == "trivial" else float(table1[f"h{k}"][name]["macs"]) for k, name in enumerate(names)]
        return level_outputs(v[part], confusion, {**policy, "tau": tau}, probs, local, fixed_macs, costs)

    taus = explore.SELECTION_TAUS if c.tau is None else [c.tau]
    search = []
    for tolerance in explore.HEAD_TOLERANCES if c.head_tolerance is None else (c.head_tolerance,):
        names = [
            "trivial" if len(sub_group) == 1 else explore.pick_cheapest(table1[f"h{k}"], tolerance)
            for k, sub_group in enumerate(sub_members)
        ]
        rows = [
            calib_row(tau, *compose("calib", g, *child_outputs(names, tau, "calib")), labels, conv.cal.base_correct)
            for tau in taus
        ]
        point, ok = explore.choose_tau(rows, conv.cal.base_top1, c.max_drop)
        search.append(
            {"tolerance_points": tolerance, "heads": names, "point": point, "meets_max_drop": ok, "sweep_calib": rows}
        )
        if ok:
            break
    pick = next((row for row in search if row["meets_max_drop"]), search[-1])
    names, tau = pick["heads"], pick["point"]["tau"]
    sub_heads = [TrivialHead() if name == "trivial" else modules[k][name] for k, name in enumerate(names)]
    child = nested_cpcnn(
        conv.backbone,
        conv.split,
        shared,
        clustifier,
        sub_heads,
        local,
        conv.input_shape,
        {**policy, "tau": tau},
        confusion,
    ).to(device)
    record = {
        "classes": group,
        "sub_split": sub_split,
        "shared": description,
        "distilled": cache["train"].has_teacher,
        "sub_hyper_classes": sub_members,
        "clustifier": clustifier_name,
        "heads": names,
        "tau": tau,
        "fixed_macs": child.fixed_macs,
        "head_macs": child.head_macs.tolist(),
        "table1": table1,
        "confusion_calib": confusion.long().tolist(),
        "tolerance_search": search,
    }
    entry = {"split": sub_split, "shared": description, "clustifier": clustifier_name, "heads": names}
    return child, entry, record, {part: child_outputs(names, tau, part) for part in parts}
