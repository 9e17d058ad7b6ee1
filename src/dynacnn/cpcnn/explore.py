"""Choosing a CP-CNN on the calibration split: split point, clustifier and head configurations, tau (Alg. 1, Eq. 1-3).

Policies are evaluated from cached per-head outputs (`evaluate_policy`), so a sweep over rules, weightings and
tau costs no network passes. `--max-drop` (`choose_tau`) counts the calibration drop plus `DROP_Z` standard
errors of the paired per-image difference. Speeds are measured side by side with `dynacnn.timing.measure` (the
memory-format choice, whose candidates take differently laid out inputs, times whole passes).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dynacnn.cpcnn.cache import shared_outputs
from dynacnn.cpcnn.compress import TABLE1, available_configurations, shared_part
from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.cpcnn.policy import RULES, WEIGHTINGS, activate, confusion_matrix, merge
from dynacnn.cpcnn.training import ComponentTrainer, group_index
from dynacnn.models.fold import fold_batchnorm
from dynacnn.models.layout import MEMORY_FORMATS, as_format
from dynacnn.timing import Contender, measure
from dynacnn.train import paired_drop

TABLE2_TAUS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SELECTION_TAUS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
CLUSTIFIER_CONFIGS = ("LP", "LC")
HEAD_TOLERANCES = (5.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.25, 0.0)
"""Points of a hyper-class's calibration top-1 a cheaper head configuration may lose against the best: with
`head_tolerance=None` the largest of these whose CP-CNN still meets `max_drop` on the calibration split."""
CLUSTIFIER_TOLERANCE = 0.2
"""Points of hyper-class calibration top-1 a cheaper clustifier configuration may lose against the best."""
DROP_Z = 2.0
"""`--max-drop` counts the calibration drop plus this many standard errors of the paired per-image difference, as
the MS-CNN's choice does: the cheapest point that merely meets max_drop sits at the edge, so its test drop would
exceed max_drop half the time."""
TIMING_BATCH = 256
TIMING_IMAGES = 2560
TIMING_REPEATS = 7


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


def choose_tau(
    rows: list[dict[str, Any]], base_top1: float, max_drop: float, z: float = DROP_Z
) -> tuple[dict[str, Any], bool]:
    """`--max-drop`: the cheapest tau whose calibration top-1 is within max_drop points of the base model's,
    counting the drop plus `z` standard errors of the paired difference (`drop_se`) where the row has one."""
    fine = [row for row in rows if base_top1 - row["top1"] + z * row.get("drop_se", 0.0) <= max_drop / 100 + 1e-12]
    if not fine:
        return max(rows, key=lambda row: (row["top1"], -row["macs_per_image"])), False
    return min(fine, key=lambda row: (row["macs_per_image"], -row["top1"])), True


def pick_cheapest(records: Mapping[str, dict[str, Any]], tolerance_points: float) -> str:
    """Table 1 selection: the cheapest configuration whose calibration top-1 is within tolerance of the best."""
    best = max(record["calib_top1"] for record in records.values())
    fine = [name for name, record in records.items() if record["calib_top1"] >= best - tolerance_points / 100 - 1e-12]
    return min(fine, key=lambda name: (records[name]["macs"], -records[name]["calib_top1"]))


def restricted(probs: torch.Tensor, members: list[list[int]]) -> list[torch.Tensor]:
    """What an L0 head initialised from the backbone outputs: its probabilities renormalised over the members."""
    return [probs[:, group] / probs[:, group].sum(1, keepdim=True).clamp_min(1e-30) for group in members]


def clustifier_candidates(fixed: Mapping[str, str]) -> list[str]:
    """The clustifier configurations to train: the fixed one, else `CLUSTIFIER_CONFIGS`."""
    return [fixed["clustifier"]] if "clustifier" in fixed else list(CLUSTIFIER_CONFIGS)


def head_candidates(
    split: str, g: int, fixed: Mapping[str, str], candidates: Sequence[str] | None, quick: bool
) -> list[str]:
    """The configurations to train for hyper-class g: the fixed one, the given candidates, or every available one
    (with `quick`: the least and the most compressed Table 1 rows and LP)."""
    if str(g) in fixed:
        return [fixed[str(g)]]
    allowed = available_configurations(split)
    table1_names = [name for name in allowed if name in TABLE1]
    return list(candidates or ([table1_names[0], table1_names[-1], "LP"] if quick else allowed))


@dataclass(frozen=True)
class Routing:
    """What a policy row needs besides the outputs: the confusion matrix, MACs of S + M, MACs of each head."""

    confusion: torch.Tensor
    fixed_macs: float
    head_macs: torch.Tensor

    @classmethod
    def of(cls, model: CPCNN, confusion: torch.Tensor) -> Routing:
        return cls(confusion, model.fixed_macs, model.head_macs.cpu())


@dataclass(frozen=True)
class SplitView:
    """A split as the choices see it: labels, hyper-classes, the base model's probabilities, the policy settings
    (the calibration split for every choice; the test split, `replace`d in, for the report's rows)."""

    members: list[list[int]]
    labels: torch.Tensor
    base_probs: torch.Tensor
    tau: float | None
    max_drop: float
    rule: str
    weighting: str

    @property
    def groups(self) -> torch.Tensor:
        return group_index(self.members, self.base_probs.shape[1])[self.labels]

    @property
    def base_correct(self) -> torch.Tensor:
        return self.base_probs.argmax(1) == self.labels

    @property
    def base_top1(self) -> float:
        return float(self.base_correct.double().mean())

    def rows(
        self,
        v: torch.Tensor,
        head_probs: list[torch.Tensor],
        routing: Routing,
        taus: Sequence[float],
        paired: bool = True,
        rule: str | None = None,
        weighting: str | None = None,
    ) -> list[dict[str, Any]]:
        """One policy row per tau (this view's rule and weighting unless given); `paired` adds `drop_se` against
        the base model for `choose_tau`."""
        reference = self.base_correct if paired else None
        rule, weighting = rule or self.rule, weighting or self.weighting
        r = routing
        return [
            evaluate_policy(
                v,
                head_probs,
                self.members,
                self.labels,
                r.confusion,
                tau,
                rule,
                weighting,
                r.fixed_macs,
                r.head_macs,
                reference=reference,
            )
            for tau in taus
        ]

    def point(
        self, v: torch.Tensor, head_probs: list[torch.Tensor], routing: Routing
    ) -> tuple[dict[str, Any], bool | None]:
        """The operating point: the cheapest tau that meets max_drop (and whether one does), or the given tau (None)."""
        if self.tau is not None:
            return self.rows(v, head_probs, routing, [self.tau], paired=False)[0], None
        return choose_tau(self.rows(v, head_probs, routing, SELECTION_TAUS), self.base_top1, self.max_drop)

    def one_head(
        self, v: torch.Tensor, head_probs: list[torch.Tensor], which: torch.Tensor, routing: Routing
    ) -> dict[str, Any]:
        """The row of routing every image to exactly one head, `which` (CC-ideal: the clustifier's argmax; oracle:
        the true hyper-class)."""
        active = torch.zeros(len(self.labels), len(self.members), dtype=torch.bool).scatter_(1, which[:, None], True)
        r = routing
        row = evaluate_policy(
            v,
            head_probs,
            self.members,
            self.labels,
            r.confusion,
            0.0,
            self.rule,
            self.weighting,
            r.fixed_macs,
            r.head_macs,
            active,
        )
        return {key: value for key, value in row.items() if key != "tau"}


def choose_heads(
    table1: Mapping[str, Mapping[str, dict[str, Any]]],
    calib_outputs: list[dict[str, torch.Tensor]],
    v: torch.Tensor,
    confusion: torch.Tensor,
    fixed_macs: float,
    cal: SplitView,
    head_tolerance: float | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Heads by `pick_cheapest` at the largest tolerance (of `HEAD_TOLERANCES`, or the given one) whose CP-CNN meets
    max_drop on calibration; returns every tolerance tried and the chosen row (the last tried if none meets it)."""
    trivial = [len(group) == 1 for group in cal.members]
    taus = SELECTION_TAUS if cal.tau is None else [cal.tau]
    search = []
    for tolerance in HEAD_TOLERANCES if head_tolerance is None else (head_tolerance,):
        names = ["trivial" if trivial[g] else pick_cheapest(table1[f"h{g}"], tolerance) for g in range(len(trivial))]
        probs = [
            torch.ones(len(v), 1, dtype=torch.float64) if trivial[g] else calib_outputs[g][name]
            for g, name in enumerate(names)
        ]
        macs = torch.tensor([0 if trivial[g] else table1[f"h{g}"][name]["macs"] for g, name in enumerate(names)])
        rows = cal.rows(v, probs, Routing(confusion, fixed_macs, macs), taus)
        point, ok = choose_tau(rows, cal.base_top1, cal.max_drop)
        search.append(
            {
                "tolerance_points": tolerance,
                "heads": names,
                "tau": point["tau"],
                "calib_top1": point["top1"],
                "calib_macs_per_image": point["macs_per_image"],
                "meets_max_drop": ok,
            }
        )
        if ok:
            break
    return search, next((row for row in search if row["meets_max_drop"]), search[-1])


def policy_rows(
    views: Mapping[str, SplitView],
    v: Mapping[str, torch.Tensor],
    probs: Mapping[str, list[torch.Tensor]],
    routing: Routing,
) -> dict[str, Any]:
    """The report's policy rows of one CP-CNN from its cached outputs on `views` "calib" and "test": every rule x
    weighting x `SELECTION_TAUS` on both, Table 2 (test), the tau sweep on calibration, CC-ideal and oracle."""
    cal, test = views["calib"], views["test"]
    comparison = []
    for rule in RULES:
        for weighting in WEIGHTINGS:
            for part, view in views.items():
                rows = view.rows(v[part], probs[part], routing, SELECTION_TAUS, part == "calib", rule, weighting)
                comparison += [{"split": part, "rule": rule, "weighting": weighting, **row} for row in rows]
    return {
        "policy_comparison": comparison,
        "sweep": test.rows(v["test"], probs["test"], routing, TABLE2_TAUS, paired=False),
        "sweep_calib": cal.rows(v["calib"], probs["calib"], routing, SELECTION_TAUS),
        "cc_ideal": test.one_head(v["test"], probs["test"], v["test"].argmax(1), routing),
        "oracle": test.one_head(v["test"], probs["test"], test.groups, routing),
        "oracle_calib": cal.one_head(v["calib"], probs["calib"], cal.groups, routing),
    }


@dataclass(frozen=True)
class Timing:
    """Images/s side by side, as `dynacnn bench` times: BatchNorm folded, batch `TIMING_BATCH`, interleaved chunks of
    two batches with the order rotating (`dynacnn.timing.measure`); ratios are against the first model."""

    images: torch.Tensor
    repeats: int = TIMING_REPEATS

    def speeds(self, models: Mapping[str, nn.Module]) -> dict[str, dict[str, Any]]:
        contenders = [Contender(name, fold_batchnorm(model), 1.0) for name, model in models.items()]
        rows = measure(contenders, self.images, batch_sizes=(TIMING_BATCH,), repeats=self.repeats, chunk_batches=2)
        return {row["model"]: row for row in rows}

    def fastest_format(self, backbone: nn.Module) -> tuple[str, dict[str, float]]:
        """The memory format (contiguous or channels_last) in which the base model runs faster, and the images/s of
        each. Whole passes, alternating, not `measure`: each candidate takes its inputs in its own layout."""
        candidates = {name: fold_batchnorm(backbone).to(memory_format=fmt) for name, fmt in MEMORY_FORMATS.items()}
        inputs = {name: as_format(self.images, fmt) for name, fmt in MEMORY_FORMATS.items()}
        seconds: dict[str, list[float]] = {name: [] for name in candidates}
        with torch.inference_mode():
            for _ in range(self.repeats):
                for name, model in candidates.items():
                    start = time.perf_counter()
                    for begin in range(0, len(self.images), TIMING_BATCH):
                        model(inputs[name][begin : begin + TIMING_BATCH])
                    seconds[name].append(time.perf_counter() - start)
        speed = {name: len(self.images) / statistics.median(times) for name, times in seconds.items()}
        return max(speed, key=speed.get), speed


def sweep_split_points(
    splits: Sequence[str],
    data: Any,
    trainer: ComponentTrainer,
    cal: SplitView,
    clustifier_name: str,
    timing: Timing,
) -> list[dict[str, Any]]:
    """Per split point: calibration accuracy with uncompressed heads (exactly the backbone restricted to each
    hyper-class, so no head training is needed), measured speed with those heads and with the most compressed
    Table 1 heads (untrained: timing does not depend on weights) under the same routing."""
    bar = tqdm(splits, desc="split sweep", unit="split", leave=False, disable=None)
    return [_split_point(split, data, trainer, cal, clustifier_name, timing) for split in bar]


def _split_point(
    split: str,
    data: Any,
    trainer: ComponentTrainer,
    cal: SplitView,
    clustifier_name: str,
    timing: Timing,
) -> dict[str, Any]:
    backbone, device, members, shape = trainer.backbone, trainer.device, cal.members, trainer.input_shape
    shared = shared_part(backbone, split)
    cache, _ = shared_outputs(
        backbone, shared, split, data, device, trainer.config, ("train", "calib"), trainer.config.distill > 0, copies=1
    )
    clustifier, record = trainer.clustifier(split, clustifier_name, cache)
    v = cache["calib"].probs([clustifier], device)[0]
    confusion = confusion_matrix(cal.groups, v.argmax(1), len(members))
    heads = [
        TrivialHead() if len(group) == 1 else trainer.make_head(split, "L0", len(group), group) for group in members
    ]
    model = CPCNN(shared, clustifier, heads, members, confusion, shape, rule=cal.rule, weighting=cal.weighting)
    model = model.to(device)
    row, ok = cal.point(v, restricted(cal.base_probs.double(), members), Routing.of(model, confusion))
    model.set_policy(row["tau"])
    smallest = [name for name in available_configurations(split) if name in TABLE1][-1]
    compressed_heads = [
        TrivialHead() if len(group) == 1 else trainer.make_head(split, smallest, len(group)) for group in members
    ]
    compressed = CPCNN(
        shared,
        clustifier,
        compressed_heads,
        members,
        confusion,
        shape,
        tau=row["tau"],
        rule=cal.rule,
        weighting=cal.weighting,
    ).to(device)
    active = activate(v, confusion, row["tau"], cal.rule, cal.weighting)[0]
    compressed_macs = float(compressed.image_macs(active).double().mean())
    speed = timing.speeds({"base": backbone, "routed": model, "compressed": compressed})
    return {
        "split": split,
        "shared_macs": model.shared_macs,
        "clustifier": clustifier_name,
        "clustifier_macs": model.clustifier_macs,
        "clustifier_calib_top1": record["calib_top1"],
        "tau": row["tau"],
        "calib_top1": row["top1"],
        "macs_per_image": row["macs_per_image"],
        "meets_max_drop": ok is not False,
        "images_per_s": speed["routed"]["images_per_s"],
        "base_images_per_s": speed["base"]["images_per_s"],
        "speedup": speed["routed"]["wall_speedup_median"],
        "compressed_config": smallest,
        "compressed_macs_per_image": compressed_macs,
        "compressed_speedup": speed["compressed"]["wall_speedup_median"],
    }


def choose_split(rows: list[dict[str, Any]]) -> str:
    """The split whose compressed routing is fastest among those meeting max_drop with uncompressed heads."""
    fine = [row for row in rows if row["meets_max_drop"]] or rows
    return max(fine, key=lambda row: (row["compressed_speedup"], row["calib_top1"]))["split"]
