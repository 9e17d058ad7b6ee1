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
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dynacnn.cpcnn.cache import shared_outputs
from dynacnn.cpcnn.choice import DROP_Z as DROP_Z
from dynacnn.cpcnn.choice import Routing as Routing
from dynacnn.cpcnn.choice import allowed_policies, choose_policy, evaluate_policy, topk_correct
from dynacnn.cpcnn.choice import choose_tau as choose_tau
from dynacnn.cpcnn.compress import TABLE1, available_configurations, shared_part
from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.cpcnn.policy import RULES, WEIGHTINGS, activate, confusion_matrix
from dynacnn.cpcnn.training import ComponentTrainer, group_index
from dynacnn.models.fold import fold_batchnorm
from dynacnn.models.layout import MEMORY_FORMATS, as_format
from dynacnn.timing import Contender, measure

TABLE2_TAUS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SELECTION_TAUS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
CLUSTIFIER_CONFIGS = ("LP", "LC", "L44")
"""Clustifier candidates: ours (LP, LC) and the paper's (L44, Table 1's compression of every stage; only where S
leaves all four stages to the clustifier, i.e. at split "stem")."""
HEAD_TOLERANCES = (5.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.25, 0.0)
"""Points of a hyper-class's calibration top-1 a cheaper head configuration may lose against the best: with
`head_tolerance=None` the largest of these whose CP-CNN still meets `max_drop` on the calibration split."""
CLUSTIFIER_TOLERANCE = 0.2
"""Points of hyper-class calibration top-1 a cheaper clustifier configuration may lose against the best."""
TIMING_BATCH = 256
TIMING_IMAGES = 2560
TIMING_REPEATS = 7


def pick_cheapest(records: Mapping[str, dict[str, Any]], tolerance_points: float) -> str:
    """Table 1 selection: the cheapest configuration whose calibration top-1 is within tolerance of the best."""
    best = max(record["calib_top1"] for record in records.values())
    fine = [name for name, record in records.items() if record["calib_top1"] >= best - tolerance_points / 100 - 1e-12]
    return min(fine, key=lambda name: (records[name]["macs"], -records[name]["calib_top1"]))


def restricted(probs: torch.Tensor, members: list[list[int]]) -> list[torch.Tensor]:
    """What an L0 head initialised from the backbone outputs: its probabilities renormalised over the members."""
    return [probs[:, group] / probs[:, group].sum(1, keepdim=True).clamp_min(1e-30) for group in members]


def clustifier_candidates(fixed: Mapping[str, str], split: str | None = None) -> list[str]:
    """The clustifier configurations to train: the fixed one, else those of `CLUSTIFIER_CONFIGS` available at
    `split` (all of them when no split is given)."""
    if "clustifier" in fixed:
        return [fixed["clustifier"]]
    return [name for name in CLUSTIFIER_CONFIGS if split is None or name in available_configurations(split)]


def clustifier_skipped(fixed: Mapping[str, str], split: str) -> dict[str, str]:
    """The `CLUSTIFIER_CONFIGS` not trained at `split`, each with the reason."""
    if "clustifier" in fixed:
        return {}
    kept = clustifier_candidates(fixed, split)
    return {
        name: f"replaces stages inside S (split {split}); Table 1's {name} needs split stem"
        for name in CLUSTIFIER_CONFIGS
        if name not in kept
    }


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

    @property
    def base_top5(self) -> float:
        return float(topk_correct(self.base_probs, self.labels).double().mean())

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

    def choose(
        self, v: torch.Tensor, head_probs: list[torch.Tensor], routing: Routing
    ) -> tuple[dict[str, Any], bool, list[dict[str, Any]]]:
        """`choice.choose_policy` on this view: each rule x weighting at its own tau (the given one, else the
        cheapest of `SELECTION_TAUS` meeting max_drop); the winner among this view's allowed combinations ("auto":
        all), whether it meets max_drop, and all four candidates (each with its rule and weighting)."""
        taus = SELECTION_TAUS if self.tau is None else [self.tau]

        def rows_for(rule: str, weighting: str) -> list[dict[str, Any]]:
            return self.rows(v, head_probs, routing, taus, True, rule, weighting)

        allowed = allowed_policies(self.rule, self.weighting)
        return choose_policy(rows_for, allowed, self.base_top1, self.max_drop)

    def point(
        self, v: torch.Tensor, head_probs: list[torch.Tensor], routing: Routing
    ) -> tuple[dict[str, Any], bool | None]:
        """The operating point (`choose`'s winner, with its rule and weighting) and whether it meets max_drop (None
        when tau is given)."""
        row, ok, _ = self.choose(v, head_probs, routing)
        return row, None if self.tau is not None else ok

    def resolved(self, row: Mapping[str, Any]) -> SplitView:
        """This view with the rule and weighting of a chosen row."""
        return replace(self, rule=row["rule"], weighting=row["weighting"])

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
    search = []
    for tolerance in HEAD_TOLERANCES if head_tolerance is None else (head_tolerance,):
        names = ["trivial" if trivial[g] else pick_cheapest(table1[f"h{g}"], tolerance) for g in range(len(trivial))]
        probs = [
            torch.ones(len(v), 1, dtype=torch.float64) if trivial[g] else calib_outputs[g][name]
            for g, name in enumerate(names)
        ]
        macs = torch.tensor([0 if trivial[g] else table1[f"h{g}"][name]["macs"] for g, name in enumerate(names)])
        point, ok, _ = cal.choose(v, probs, Routing(confusion, fixed_macs, macs))
        search.append(
            {
                "tolerance_points": tolerance,
                "heads": names,
                "tau": point["tau"],
                "rule": point["rule"],
                "weighting": point["weighting"],
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
    candidates: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The report's policy rows of one CP-CNN from its cached outputs on `views` "calib" and "test" (resolved to the
    chosen rule and weighting): every rule x weighting x `SELECTION_TAUS` on both, Table 2 (test), the tau sweep on
    calibration, CC-ideal and oracle; with `candidates` (`SplitView.choose`'s, fitted on calibration), "table2_policies":
    each candidate's calibration row beside its test row at the same tau (reported, never used to choose)."""
    cal, test = views["calib"], views["test"]
    table2 = []
    for row in candidates:
        policy = (row["rule"], row["weighting"])
        tested = test.rows(v["test"], probs["test"], routing, [row["tau"]], False, *policy)[0]
        keep = ("rule", "weighting", "tau", "eligible", "chosen", "meets_max_drop")
        table2.append({**{key: row[key] for key in keep}, "calib": _summary(row), "test": _summary(tested)})
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
        "table2_policies": table2,
    }


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """A policy row's top-1, top-5, MACs and activated-head histogram."""
    return {key: row[key] for key in ("top1", "top5", "macs_per_image", "activated_hist")}


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
    model = CPCNN(shared, clustifier, heads, members, confusion, shape).to(device)
    row, ok = cal.point(v, restricted(cal.base_probs.double(), members), Routing.of(model, confusion))
    model.set_policy(row["tau"], row["rule"], row["weighting"])
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
        rule=row["rule"],
        weighting=row["weighting"],
    ).to(device)
    active = activate(v, confusion, row["tau"], row["rule"], row["weighting"])[0]
    compressed_macs = float(compressed.image_macs(active).double().mean())
    speed = timing.speeds({"base": backbone, "routed": model, "compressed": compressed})
    return {
        "split": split,
        "shared_macs": model.shared_macs,
        "clustifier": clustifier_name,
        "clustifier_macs": model.clustifier_macs,
        "clustifier_calib_top1": record["calib_top1"],
        "tau": row["tau"],
        "rule": row["rule"],
        "weighting": row["weighting"],
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
