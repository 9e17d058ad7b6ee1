"""Analysis steps of `analyse_mscnn` on cached outputs: prediction rank (Eq. 1-3) and its P_th as candidates, the
CAP_CONV sweep (Alg. 3, Fig. 7) and the Table II configuration."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from dynacnn.mscnn.cache import StageOutputs, collect
from dynacnn.mscnn.cap_conv import FilterImportance, filter_importance, simulate_cap_conv
from dynacnn.mscnn.costs import CostModel, measure_costs
from dynacnn.mscnn.explore import EQ1, Point, choose, drop_and_error, evaluate, pareto, score
from dynacnn.mscnn.model import MSCNN, table2_config
from dynacnn.mscnn.rank import misclassification_probability, pick_pruning_thresholds, prediction_rank, rank_statistics
from dynacnn.train import ImageBatches

MC_TARGETS = (0.01, 0.02, 0.05)
TABLE2_PARAMS_M = (3.36, 4.54, 5.72, 6.90, 18.15, 20.5, 54.01)
TABLE2_FLOPS_M = (59.57, 60.75, 61.93, 63.11, 74.36, 76.72, 110.22)


def rank_report(calib: StageOutputs, classes: int) -> dict:
    """§IV on the calibration split: PR statistics, P(MC | P_th = L) and the L picked for a few targets."""
    ranks = prediction_rank(calib.logits, calib.labels)
    mean, std = rank_statistics(ranks, calib.labels, classes)
    p_mc = misclassification_probability(ranks, calib.labels, classes)
    return {
        "pr_mean": mean.tolist(),
        "pr_std": std.tolist(),
        "p_mc": p_mc.tolist(),
        "max_pr_mean": mean.max(1).values.tolist(),
        "max_pr_mean_2std": (mean + 2 * std).max(1).values.tolist(),
        "picked_l": {str(t): list(pick_pruning_thresholds(p_mc, t)) for t in MC_TARGETS},
    }


def eq1_thresholds(rank: dict) -> dict[str, tuple[int, ...]]:
    """Eq. 1's P_th for CAP_FC per target: the picked L of stages 1..N-1 (the last stage prunes nothing after it)."""
    return {target: tuple(picked[:-1]) for target, picked in rank["picked_l"].items()}


def _winner(points: list[Point], full: Point, max_drop: float, drop_z: float) -> dict:
    best = choose([*points, full], full, max_drop, drop_z)
    return {
        "name": best.name,
        "settings": best.settings,
        "calib_top1": best.top1,
        "calib_macs_per_image": best.macs_per_image,
        "is_eq1": best.name.endswith(EQ1),
    }


def eq1_report(
    families: dict[str, list[Point]],
    thresholds: dict[str, tuple[int, ...]],
    test: StageOutputs,
    costs: CostModel,
    chosen: Point,
    max_drop: float,
    drop_z: float,
) -> dict:
    """Where Eq. 1's CAP_FC candidates sit among the grid's (calibration split), each scored once on test, and
    which candidate the --max-drop rule picks among CAP_FC (grid + Eq. 1), among PTHP (S_th + Eq. 1) and overall."""
    full = families["full"][0]
    grid = families["CAP_FC"]
    front = pareto(grid + families[f"CAP_FC {EQ1}"])
    candidates = []
    for point in families[f"CAP_FC {EQ1}"]:
        targets = [t for t, p_th in thresholds.items() if list(p_th) == point.settings["p_th"]]
        cheaper = [p.top1 for p in grid if p.macs_per_image <= point.macs_per_image + 1e-9]
        drop, error = drop_and_error(point, full)
        tested = evaluate(test, point.policy, costs)
        candidates.append(
            {
                "targets": targets,
                "p_th": point.settings["p_th"],
                "calib_top1": point.top1,
                "calib_top5": point.top5,
                "calib_macs_per_image": point.macs_per_image,
                "calib_drop": drop,
                "calib_drop_se": error,
                "top1": tested.top1,
                "top5": tested.top5,
                "macs_per_image": tested.macs_per_image,
                "on_frontier": any(point is p for p in front),
                "best_grid_top1_at_most_its_macs": max(cheaper, default=None),
            }
        )
    pthp = [p for name in ("PTHP", f"PTHP {EQ1}") for p in families.get(name, [])]
    return {
        "candidates": candidates,
        "cap_fc_winner": _winner(grid + families[f"CAP_FC {EQ1}"], full, max_drop, drop_z),
        "pthp_winner": _winner(pthp, full, max_drop, drop_z),
        "chosen_is_eq1": chosen.name.endswith(EQ1),
    }


def train_filter_ranking(
    model: MSCNN, splits, images: int, seed: int, device: torch.device
) -> tuple[FilterImportance, int]:
    """Alg. 3 pre-processing Pre(i, cnv, c) on the training split, as the paper analyses the training set: a
    stratified subset of `images` training images (fixed by `seed`; all of them if fewer), run once through the
    network. Returns the ranking and the number of images it saw."""
    split = splits.train.subset(images, seed)
    return filter_importance(model, collect(model, ImageBatches(split, splits.info, 512), device)), len(split)


def cap_conv_points(
    model: MSCNN,
    importance: FilterImportance,
    calib: StageOutputs,
    test: StageOutputs,
    costs: CostModel,
    quick: bool,
) -> tuple[list[Point], list[dict]]:
    """Alg. 3 on cached outputs: smart and ignorant filter pruning for a few rm and P_th = 2 and 5 (Fig. 7), with the
    filter ranking `importance` (fitted on training images)."""
    filters = min(s.last for s in model.config.stages[1:])
    classes = model.config.num_classes
    fractions = (1 / 3,) if quick else (1 / 6, 1 / 3, 1 / 2)
    points, rows = [], []
    settings = [
        (rm, (keep,) * (model.num_stages - 1))
        for keep in sorted({min(2, classes), min(5, classes)})
        for rm in sorted({max(1, min(filters - 1, round(filters * f))) for f in fractions})
    ]
    for rm, p_th in tqdm(settings, desc="CAP_CONV sweep", unit="setting", leave=False, disable=None):
        removed = torch.tensor([0] + [rm] * (model.num_stages - 1))
        row = {"rm": rm, "p_th": list(p_th)}
        for smart in (True, False):
            label = "smart" if smart else "ignorant"
            for split, outputs in (("calib", calib), ("test", test)):
                result = score(
                    simulate_cap_conv(model, outputs, importance, p_th, rm, smart), outputs.labels, costs, removed
                )
                row[f"{label}_{split}_top1"] = result["top1"]
                row[f"{label}_{split}_top5"] = result["top5"]
                if smart and split == "calib":
                    points.append(Point("CAP_CONV", {"p_th": list(p_th), "rm": rm}, **result))
        row["macs_per_image"] = costs.macs(torch.full((model.num_stages, 1), classes), removed).item()
        rows.append(row)
    return points, rows


def table2() -> list[dict]:
    """Table II's 7-stage AlexNet widths at 224 px (built on the meta device: shapes only), beside the paper."""
    with torch.device("meta"):
        model = MSCNN(table2_config())
    costs = measure_costs(model, (3, 224, 224))
    return [
        {"stage": i + 1, "params": c.params, "macs": c.macs, "paper_params": p * 1e6, "paper_flops": f * 1e6}
        for i, (c, p, f) in enumerate(zip(costs.stages, TABLE2_PARAMS_M, TABLE2_FLOPS_M))
    ]
