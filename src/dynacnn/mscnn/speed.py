"""Timing the MS-CNN's executing paths against its full network (paired chunks, BatchNorm folded, as `dynacnn bench`).

The chosen policy is executed once on the test split as the module `load_mscnn` returns (`EarlyExitMSCNN`, really
skipping work); its counted MACs, agreement with the cached simulation and images/s beside the full network go to
mscnn.json; frontier points are timed for Fig. 9.
"""

from __future__ import annotations

import torch

from dynacnn.flops import count_call_macs
from dynacnn.models.fold import fold_batchnorm
from dynacnn.mscnn.cache import StageOutputs
from dynacnn.mscnn.cap_conv import FilterImportance, simulate_cap_conv
from dynacnn.mscnn.costs import CostModel
from dynacnn.mscnn.explore import Point, topk_correct
from dynacnn.mscnn.model import MSCNN
from dynacnn.mscnn.policies import simulate
from dynacnn.mscnn.routed import EarlyExitMSCNN, chosen_policy
from dynacnn.timing import Contender, measure
from dynacnn.train import ImageBatches

BATCH = 256
TIMING_BATCHES = 10
"""Test batches of 256 timed for the chosen policy against the full network."""


def image_batches(split, info, device: torch.device, batch_size: int = BATCH) -> list[torch.Tensor]:
    """Normalised image batches of a split on `device` (labels dropped)."""
    return [x for x, _ in ImageBatches(split, info, batch_size)(None, device)]


def routed_model(
    model: MSCNN,
    point: Point,
    importance: FilterImportance | None,
    fc_rows: str,
    input_shape: tuple[int, ...] | None = None,
) -> EarlyExitMSCNN:
    """The executing module of an operating point (`fc_rows`: see `execute`; CAP_CONV computes every FC row)."""
    policy = point.policy or chosen_policy(
        {"policy": point.name, "settings": point.settings}, model.num_stages, model.config.num_classes
    )
    return EarlyExitMSCNN(model, policy, fc_rows=fc_rows, filter_order=importance, input_shape=input_shape)


def measure_chosen(
    model: MSCNN,
    point: Point,
    importance: FilterImportance,
    test_split,
    info,
    test: StageOutputs,
    costs: CostModel,
    device: torch.device,
    repeats: int,
    fc_rows: str,
) -> tuple[dict, dict]:
    """Execute the chosen policy once on the test split; time it against the full network, paired chunks."""
    batches = image_batches(test_split, info, device)
    routed = routed_model(model, point, importance, fc_rows, info.input_shape)
    outputs = [routed.route(x) for x in batches]
    exit_stage = torch.cat([o.exit_stage for o in outputs]).cpu()
    probs = torch.cat([o.probs for o in outputs]).cpu()
    pred = probs.argmax(1)
    kept = torch.cat([o.kept for o in outputs]).T.cpu()
    removed = routed.removed_filters()
    counted, _ = count_call_macs(routed, batches[0])
    modelled = int(outputs[0].macs.sum())
    if point.name == "CAP_CONV":
        cached_pred = simulate_cap_conv(
            model, test, importance, tuple(point.settings["p_th"]), point.settings["rm"]
        ).pred
        cached_exit = exit_stage
    else:
        cached = simulate(test.logits, point.policy)
        cached_pred, cached_exit = cached.pred, cached.exit_stage
    chosen_macs = costs.macs(kept, removed).mean().item()
    folded = fold_batchnorm(model)
    rows = measure(
        [
            Contender("full", folded, float(costs.full_macs)),
            Contender("chosen", routed_model(folded, point, importance, fc_rows), chosen_macs),
        ],
        torch.cat(batches[:TIMING_BATCHES]),
        batch_sizes=(BATCH,),
        repeats=repeats,
        chunk_batches=2,
    )
    speed = speeds(rows)
    chosen = {
        "policy": point.name,
        "settings": point.settings,
        "top1": (pred == test.labels).float().mean().item(),
        "top5": topk_correct(probs, test.labels).float().mean().item(),
        "macs_per_image": chosen_macs,
        "params_per_image": costs.params(kept, removed).mean().item(),
        "images_per_s": speed["chosen"],
        "speedup": speed["speedup"]["chosen"],
        "exit_fractions": (torch.bincount(exit_stage, minlength=model.num_stages).float() / len(pred)).tolist(),
        "calib_top1": point.top1,
        "calib_top5": point.top5,
        "calib_macs_per_image": point.macs_per_image,
        "counted_macs_first_batch": counted,
        "modelled_macs_first_batch": modelled,
        "agreement_with_cached": ((cached_pred == pred) & (cached_exit == exit_stage)).float().mean().item(),
        "fc_rows": "image" if point.name == "CAP_CONV" else fc_rows,
    }
    return chosen, speed


def speeds(rows: list[dict]) -> dict:
    """Images/s by contender name from `measure` rows, and `speedup[name]`: the median over chunks of full time / its time."""
    return {row["model"]: row["images_per_s"] for row in rows} | {
        "speedup": {row["model"]: row["wall_speedup_median"] for row in rows}
    }


def frontier_timing(
    model: MSCNN, points: list[Point], batches: list[torch.Tensor], full_macs: float, fc_rows: str
) -> list[dict]:
    """Fig. 9: measured time per image of frontier policies next to the full network (calibration images), timed as
    `dynacnn bench` does (paired chunks of two batches, BatchNorm folded for every contender)."""
    folded = fold_batchnorm(model)
    contenders = [Contender("full", folded, full_macs)]
    contenders += [
        Contender(f"{i}", routed_model(folded, p, None, fc_rows), p.macs_per_image) for i, p in enumerate(points)
    ]
    speed = speeds(measure(contenders, torch.cat(batches), batch_sizes=(BATCH,), repeats=1, chunk_batches=2))
    return [
        {
            "name": p.name,
            "settings": p.settings,
            "top1": p.top1,
            "macs_per_image": p.macs_per_image,
            "ms_per_image": 1e3 / speed[f"{i}"],
            "full_ms_per_image": 1e3 / speed["full"],
        }
        for i, p in enumerate(points)
    ]
