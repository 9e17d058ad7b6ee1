"""Evaluating and choosing tau and the Alg. 1 rule / Eq. 3 weighting on the calibration split; top-k accuracy.

Every rule x weighting combination gets its own tau by `choose_tau`; among the combinations the config allows
("auto": all four), the cheapest that meets the budget wins, ties going to the higher calibration top-1
(`pick_policy`). The test split never enters these functions' inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dynacnn.cpcnn.model import CPCNN
from dynacnn.cpcnn.policy import AUTO, RULES, WEIGHTINGS, activate, merge
from dynacnn.train import paired_drop

POLICIES = tuple((rule, weighting) for rule in RULES for weighting in WEIGHTINGS)
"""Every rule x weighting combination, in the order the report lists them."""
DROP_Z = 2.0
"""`--max-drop` counts the calibration drop plus this many standard errors of the paired per-image difference, as
the MS-CNN's choice does: the cheapest point that merely meets max_drop sits at the edge, so its test drop would
exceed max_drop half the time."""
TOP_K = 5


def allowed_policies(rule: str, weighting: str) -> list[tuple[str, str]]:
    """The combinations a config allows: the given rule / weighting, or every one where it is "auto"."""
    return [(r, w) for r, w in POLICIES if rule in (AUTO, r) and weighting in (AUTO, w)]


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, k: int = TOP_K) -> torch.Tensor:
    """(B,) bool: the label is among the k highest probabilities (the paper's top 5 of the Eq. 3 output). A label of
    probability 0 (its head did not run) is never a hit, wherever `topk` breaks the tie among zeros."""
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(1) & (probs.gather(1, labels[:, None]).squeeze(1) > 0)


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
    """Top-1, top-5, MACs per image, histogram of active heads and MACs per hyper-class for one policy (or a given active set).

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
        "top5": float(topk_correct(probs, labels).double().mean()),
        **paired,
        "macs_per_image": float(fixed_macs + per_head.sum()),
        "activated_hist": torch.bincount(active.sum(1) - 1, minlength=v.shape[1]).tolist(),
        "head_macs_per_image": per_head.tolist(),
    }


@dataclass(frozen=True)
class Routing:
    """What a policy row needs besides the outputs: the confusion matrix, MACs of S + M, MACs of each head."""

    confusion: torch.Tensor
    fixed_macs: float
    head_macs: torch.Tensor

    @classmethod
    def of(cls, model: CPCNN, confusion: torch.Tensor) -> Routing:
        return cls(confusion, model.fixed_macs, model.head_macs.cpu())


def meets(row: dict[str, Any], base_top1: float, max_drop: float, z: float = DROP_Z) -> bool:
    """Whether a row's calibration top-1 is within max_drop points of the base's, counting `z` standard errors of
    the paired difference (`drop_se`) where the row has one."""
    return base_top1 - row["top1"] + z * row.get("drop_se", 0.0) <= max_drop / 100 + 1e-12


def choose_tau(
    rows: list[dict[str, Any]], base_top1: float, max_drop: float, z: float = DROP_Z
) -> tuple[dict[str, Any], bool]:
    """`--max-drop`: the cheapest tau whose calibration top-1 is within max_drop points of the base model's,
    counting the drop plus `z` standard errors of the paired difference (`drop_se`) where the row has one."""
    fine = [row for row in rows if meets(row, base_top1, max_drop, z)]
    if not fine:
        return max(rows, key=lambda row: (row["top1"], -row["macs_per_image"])), False
    return min(fine, key=lambda row: (row["macs_per_image"], -row["top1"])), True


def pick_policy(candidates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Of the `eligible` candidates, the cheapest meeting max_drop (ties: higher calibration top-1); if none meets
    it, the most accurate (ties: cheaper)."""
    eligible = [row for row in candidates if row["eligible"]]
    fine = [row for row in eligible if row["meets_max_drop"]]
    if fine:
        return min(fine, key=lambda row: (row["macs_per_image"], -row["top1"]))
    return max(eligible, key=lambda row: (row["top1"], -row["macs_per_image"]))


def choose_policy(
    rows_for: Callable[[str, str], list[dict[str, Any]]],
    allowed: Sequence[tuple[str, str]],
    base_top1: float,
    max_drop: float,
) -> tuple[dict[str, Any], bool, list[dict[str, Any]]]:
    """Every combination at its own calibration-chosen tau (`rows_for(rule, weighting)`: its calibration rows over
    tau); returns (the winner by `pick_policy`, whether it meets max_drop, all four candidates)."""
    candidates = []
    for rule, weighting in POLICIES:
        row, ok = choose_tau(rows_for(rule, weighting), base_top1, max_drop)
        eligible = (rule, weighting) in allowed
        candidates.append({"rule": rule, "weighting": weighting, **row, "meets_max_drop": ok, "eligible": eligible})
    winner = pick_policy(candidates)
    for row in candidates:
        row["chosen"] = row is winner
    return winner, winner["meets_max_drop"], candidates
