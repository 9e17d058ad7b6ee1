"""Design-space exploration (Figs. 5, 6, 8, 9) on cached outputs: policy grids, Pareto frontier, oracle, max-drop choice."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from dynacnn.errors import ConfigError
from dynacnn.mscnn.cache import StageOutputs
from dynacnn.mscnn.costs import CostModel
from dynacnn.mscnn.policies import Decision, Policy, cap_fc_policy, full_policy, pthp_policy, simulate, tp_policy
from dynacnn.train import paired_drop

NEVER = 2.0  # a detection threshold no confidence exceeds: the stage never exits
TOP1_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9999, NEVER)
TOP5_GRID = (0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 0.99999, NEVER)
S_TH_GRID = (0.9, 0.95, 0.99, 0.995, 0.999, 0.9999)
EQ1 = "eq1"
"""Suffix of the candidates whose P_th comes from Eq. 1 (`rank.pick_pruning_thresholds`), e.g. "CAP_FC eq1"."""


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Per image: the true class is among the k most probable classes the policy computed (B,).

    Classes a policy pruned have probability 0 and never count, even when fewer than k classes were computed;
    classes as probable as the true one do not push it down (the rank of `rank.prediction_rank`)."""
    truth = probs.gather(1, labels[:, None])
    return (truth.squeeze(1) > 0) & ((probs > truth).sum(1) < k)


@dataclass
class Point:
    """One evaluated policy: accuracy and average costs per image on one split."""

    name: str
    settings: dict
    top1: float
    macs_per_image: float
    params_per_image: float
    exits: list[float] = field(default_factory=list)
    policy: Policy | None = None
    correct: torch.Tensor | None = field(default=None, repr=False)
    top5: float | None = None

    def row(self) -> dict:
        return {
            "name": self.name,
            "settings": self.settings,
            "top1": self.top1,
            "top5": self.top5,
            "macs_per_image": self.macs_per_image,
            "params_per_image": self.params_per_image,
            "exit_fractions": self.exits,
        }


def score(decision: Decision, labels: torch.Tensor, costs: CostModel, removed: torch.Tensor | None = None) -> dict:
    """Top-1, top-5, mean MACs and parameters per image, and the fraction of images leaving at each stage."""
    stages = len(costs.stages)
    correct = decision.pred == labels
    return {
        "correct": correct,
        "top1": correct.float().mean().item(),
        "top5": topk_correct(decision.probs, labels).float().mean().item(),
        "macs_per_image": costs.macs(decision.kept, removed).mean().item(),
        "params_per_image": costs.params(decision.kept, removed).mean().item(),
        "exits": (torch.bincount(decision.exit_stage, minlength=stages).float() / len(labels)).tolist(),
    }


def evaluate(outputs: StageOutputs, policy: Policy, costs: CostModel, name: str | None = None) -> Point:
    """Simulate `policy` on cached outputs and score it."""
    return Point(
        name or policy.kind,
        policy.settings(),
        policy=policy,
        **score(simulate(outputs.logits, policy), outputs.labels, costs),
    )


def tp_points(outputs: StageOutputs, costs: CostModel, d_ct: torch.Tensor, top_c: int, name: str) -> list[Point]:
    """Alg. 1 for many D_ct vectors (P, S-1) at once on cached outputs; equals `evaluate` of each `tp_policy`."""
    stages, _, classes = outputs.logits.shape
    policies = [tp_policy(tuple(row.tolist()), stages, classes, top_c) for row in d_ct]
    probs = outputs.logits.softmax(2)
    conf = probs.topk(top_c, dim=2).values.sum(2).clamp(max=1.0)
    hits = probs.argmax(2) == outputs.labels
    hits5 = torch.stack([topk_correct(p, outputs.labels) for p in probs])
    correct, correct5, exits = [], [], []
    for chunk in d_ct.float().split(256):
        exit_stage = torch.full((len(chunk), conf.shape[1]), stages - 1)
        for stage in reversed(range(stages - 1)):
            exit_stage = torch.where(conf[stage] > chunk[:, stage : stage + 1], stage, exit_stage)
        correct.append(hits.gather(0, exit_stage))
        correct5.append(hits5.gather(0, exit_stage).float().mean(1))
        exits.append(torch.stack([(exit_stage == stage).double().mean(1) for stage in range(stages)], 1))
    correct, top5, exits = torch.cat(correct), torch.cat(correct5), torch.cat(exits)
    top1 = correct.float().mean(1)
    ran = torch.arange(stages)[:, None] <= torch.arange(stages)[None, :]
    per_exit_macs = costs.macs(torch.where(ran, classes, 0))
    per_exit_params = costs.params(torch.where(ran, classes, 0))
    return [
        Point(
            name,
            policy.settings(),
            top1[i].item(),
            (exits[i] @ per_exit_macs).item(),
            (exits[i] @ per_exit_params).item(),
            exits[i].tolist(),
            policy,
            correct[i],
            top5[i].item(),
        )
        for i, policy in enumerate(policies)
    ]


def cap_fc_grid(num_stages: int, num_classes: int) -> list[Policy]:
    """Alg. 2 CAP_FC: every non-increasing P_th vector over a grid of class counts (Fig. 6)."""
    counts = sorted(
        {num_classes, *(max(1, num_classes >> k) for k in range(12)), *range(1, min(num_classes, 10) + 1)}, reverse=True
    )
    vectors = itertools.combinations_with_replacement(counts, num_stages - 1)
    return [cap_fc_policy(tuple(v), num_stages, num_classes) for v in vectors]


def pthp_grid(bases: list[Policy], s_values: tuple[float, ...] = S_TH_GRID) -> list[Policy]:
    """Alg. 4 PTHP: each TP policy in `bases` combined with each uniform S_th (Fig. 8)."""
    return [
        pthp_policy(base.d_ct, (s,) * (base.num_stages - 1), base.num_stages, base.num_classes, base.top_c)
        for base in bases
        for s in s_values
    ]


def pareto(points: list[Point]) -> list[Point]:
    """Points no other point beats on both MACs (lower) and top-1 (higher), sorted by MACs."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p.macs_per_image, -p.top1)):
        if not front or point.top1 > front[-1].top1:
            front.append(point)
    return front


def oracle(outputs: StageOutputs, costs: CostModel) -> dict:
    """The bound no exit rule beats: each image leaves at the first (cheapest) stage that classifies it
    correctly; images no stage gets right leave at stage 1, the cheapest."""
    correct = outputs.logits.argmax(2) == outputs.labels
    stages, batch = correct.shape
    first = torch.where(correct.any(0), correct.double().argmax(0), torch.zeros(batch, dtype=torch.long))
    kept = torch.where(torch.arange(stages)[:, None] <= first, costs.stages[0].num_classes, 0)
    return {
        "top1": correct.any(0).float().mean().item(),
        "macs_per_image": costs.macs(kept).mean().item(),
        "params_per_image": costs.params(kept).mean().item(),
        "exits": (torch.bincount(first, minlength=stages).float() / batch).tolist(),
    }


def eq1_policies(
    p_th: list[tuple[int, ...]], bases: list[Policy], num_stages: int, num_classes: int
) -> tuple[list[Policy], list[Policy]]:
    """§IV's P_th from Eq. 1 as candidates: CAP_FC with each vector (Alg. 2), and each TP base's exits with each
    vector's top-L pruning in place of PTHP's S_th selection (Alg. 4 with Alg. 2's pruning)."""
    cap_fc = [cap_fc_policy(tuple(v), num_stages, num_classes) for v in p_th]
    hybrid = [
        Policy("PTHP", b.num_stages, b.num_classes, d_ct=b.d_ct, top_c=b.top_c, p_th=tuple(v))
        for b in bases
        for v in p_th
    ]
    return cap_fc, hybrid


def sweep(
    outputs: StageOutputs,
    costs: CostModel,
    num_classes: int,
    quick: bool = False,
    eq1_p_th: list[tuple[int, ...]] | None = None,
) -> dict[str, list[Point]]:
    """Every policy family on cached (calibration) outputs: TP with C = 5 and C = 1, uniform, CAP_FC, PTHP; with
    `eq1_p_th` (P_th vectors for stages 1..N-1 from Eq. 1) also "CAP_FC eq1" and "PTHP eq1" (`eq1_policies`)."""
    stages = outputs.logits.shape[0]
    top_cs = sorted({min(5, num_classes), 1}, reverse=True)
    families: dict[str, list[Point]] = {}
    for c in top_cs:
        values = TOP1_GRID if c == 1 else TOP5_GRID
        grid = torch.tensor(
            list(itertools.product(values[:: 3 if quick else 1], repeat=stages - 1)), dtype=torch.float64
        )
        families[f"TP-C{c}"] = tp_points(outputs, costs, grid, c, f"TP-C{c}")
        uniform = torch.tensor(values, dtype=torch.float64)[:, None].expand(-1, stages - 1)
        families[f"uniform-C{c}"] = tp_points(outputs, costs, uniform, c, f"uniform-C{c}")
    grid = tqdm(cap_fc_grid(stages, num_classes), desc="CAP_FC sweep", unit="policy", leave=False, disable=None)
    families["CAP_FC"] = [evaluate(outputs, p, costs) for p in grid]
    bases = [p.policy for c in top_cs for p in pareto(families[f"TP-C{c}"])[-8:]]
    grid = tqdm(pthp_grid(bases), desc="PTHP sweep", unit="policy", leave=False, disable=None)
    families["PTHP"] = [evaluate(outputs, p, costs, f"PTHP-C{p.top_c}") for p in grid]
    if eq1_p_th:
        cap_fc, hybrid = eq1_policies(eq1_p_th, bases, stages, num_classes)
        families[f"CAP_FC {EQ1}"] = [evaluate(outputs, p, costs, f"CAP_FC {EQ1}") for p in cap_fc]
        families[f"PTHP {EQ1}"] = [evaluate(outputs, p, costs, f"PTHP-C{p.top_c} {EQ1}") for p in hybrid]
    families["full"] = [evaluate(outputs, full_policy(stages, num_classes), costs)]
    return families


def drop_and_error(point: Point, full: Point) -> tuple[float, float]:
    """Top-1 drop of `point` against `full` on the same images, and the standard error of that paired difference."""
    return paired_drop(full.correct, point.correct)


def choose(points: list[Point], full: Point, max_drop: float, z: float = 2.0) -> Point:
    """`--max-drop`: the cheapest policy whose calibration top-1 is within `max_drop` percentage points of the
    full network's, counting the drop plus `z` standard errors of the paired per-image difference (z = 0: the
    plain drop). The cheapest qualifying point otherwise sits at the edge, so half the time its test drop
    would exceed `max_drop`; one standard error keeps the choice from feeding on calibration noise."""
    if not 0 <= max_drop <= 100:
        raise ConfigError(f"--max-drop {max_drop} must be in [0, 100] percentage points, e.g. 0.5")
    allowed = []
    for point in points:
        drop, error = drop_and_error(point, full)
        if drop + z * error <= max_drop / 100 + 1e-12:
            allowed.append(point)
    return min(allowed, key=lambda p: (p.macs_per_image, -p.top1))
