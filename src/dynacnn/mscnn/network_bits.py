"""§IV-C on the whole network: every stage at its own bit-length (Table III's vector), run end to end.

`bit_sweep` quantises one stage at a time and scores that stage's own classifier; here every stage's conv stack
and classifier is converted at once (`quantize_network`, the same per-tensor fixed point; BatchNorm and
activations stay in float), later classifiers read the concatenated fixed-point features of earlier stages, and
the network is scored as the full MS-CNN (every stage, last classifier) and under the chosen policy, beside
float. If either falls more than the tolerance below float on the calibration split, the stage whose raise
recovers most is named, and bit-lengths are raised greedily (calibration split only) until both are within it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from dynacnn.errors import ConfigError
from dynacnn.flops import count_params
from dynacnn.mscnn.cache import StageOutputs, head_from_features
from dynacnn.mscnn.cap_conv import FilterImportance, simulate_cap_conv
from dynacnn.mscnn.costs import CostModel
from dynacnn.mscnn.explore import Point, score
from dynacnn.mscnn.fixed_point import quantize_in_place, quantize_module, size_mb
from dynacnn.mscnn.model import MSCNN
from dynacnn.mscnn.policies import full_policy, simulate
from dynacnn.train import paired_drop


def quantize_network(model: MSCNN, stage_bits: Sequence[int]) -> MSCNN:
    """§IV-C, Table III: a copy of `model` whose stage i (conv stack and classifier) is `stage_bits[i]`-bit fixed
    point, each tensor with its own fraction bits (as `bit_sweep` converts one stage)."""
    if len(stage_bits) != model.num_stages:
        raise ConfigError(f"the bit vector {list(stage_bits)} needs one bit-length per stage ({model.num_stages})")
    quantized = copy.deepcopy(model)
    for stage, bits in enumerate(stage_bits):
        quantize_in_place(quantized.bodies[stage], bits)
        quantize_in_place(quantized.heads[stage], bits)
    return quantized.eval()


class BitOutputs:
    """`StageOutputs` of one split for any per-stage bit vector: each stage's pooled last-CONV features are computed
    once per bit-length (its conv stack alone, on `data`, a Batches source); the classifiers over the concatenated
    features are recomputed per vector. `reference` holds the float outputs of the same images in the same order."""

    def __init__(self, model: MSCNN, data, reference: StageOutputs, device: torch.device) -> None:
        self.model, self.data, self.device, self.reference = model, data, device, reference
        self._features: dict[tuple[int, int], torch.Tensor] = {}

    @torch.no_grad()
    def features(self, stage: int, bits: int) -> torch.Tensor:
        """Pooled last-CONV features (B, D) of stage `stage` with its conv stack at `bits` bits."""
        if (stage, bits) not in self._features:
            body = quantize_module(self.model.bodies[stage], bits).eval()
            band, parts = self.model.band_index[stage], []
            for x, _ in self.data(None, self.device):
                parts.append(self.model.pool(body(self.model.dwt(x)[:, band])).flatten(1).cpu())
            self._features[(stage, bits)] = torch.cat(parts)
        return self._features[(stage, bits)]

    def outputs(self, stage_bits: Sequence[int]) -> tuple[StageOutputs, MSCNN]:
        """The whole network at `stage_bits`: its outputs on these images, and the quantised network."""
        network = quantize_network(self.model, stage_bits)
        features = [self.features(stage, bits) for stage, bits in enumerate(stage_bits)]
        logits = torch.stack([head_from_features(network, features, stage) for stage in range(len(stage_bits))])
        return StageOutputs(logits, features, self.reference.labels), network

    def keep_only(self, stage_bits: Sequence[int]) -> None:
        """Forget the features of every other bit-length (memory)."""
        self._features = {k: v for k, v in self._features.items() if stage_bits[k[0]] == k[1]}


def point_score(
    network: MSCNN, outputs: StageOutputs, point: Point, costs: CostModel, importance: FilterImportance | None
) -> dict:
    """`score` of an operating point on `outputs` of `network`: CAP_CONV re-runs Alg. 3, the others `simulate`."""
    if point.name == "CAP_CONV":
        rm, stages = point.settings["rm"], network.num_stages
        decision = simulate_cap_conv(network, outputs, importance, tuple(point.settings["p_th"]), rm)
        return score(decision, outputs.labels, costs, torch.tensor([0] + [rm] * (stages - 1)))
    return score(simulate(outputs.logits, point.policy), outputs.labels, costs)


def _scores(network: MSCNN, outputs: StageOutputs, point: Point, costs: CostModel, importance) -> dict[str, dict]:
    stages, classes = network.num_stages, network.config.num_classes
    return {
        "full": score(simulate(outputs.logits, full_policy(stages, classes)), outputs.labels, costs),
        "chosen": point_score(network, outputs, point, costs, importance),
    }


def _rows(name: str, bits: list[int] | None, split: str, scores: dict, reference: dict) -> list[dict]:
    """One row per policy (full, chosen): top-1, top-5, MACs and the paired top-1 drop against float."""
    rows = []
    for policy, result in scores.items():
        drop, error = paired_drop(reference[policy]["correct"], result["correct"])
        rows.append(
            {
                "vector": name,
                "bits": bits,
                "split": split,
                "policy": policy,
                "top1": result["top1"],
                "top5": result["top5"],
                "macs_per_image": result["macs_per_image"],
                "drop": drop,
                "drop_se": error,
            }
        )
    return rows


def _worst_drop(scores: dict, reference: dict) -> float:
    return max(reference[p]["top1"] - scores[p]["top1"] for p in ("full", "chosen"))


def whole_network_bits(
    model: MSCNN,
    stage_bits: Sequence[int],
    point: Point,
    importance: FilterImportance | None,
    costs: CostModel,
    calib: BitOutputs,
    test: BitOutputs,
    levels: Sequence[int],
    tolerance: float,
    max_rounds: int,
) -> dict:
    """The whole MS-CNN at `stage_bits` (full network and the chosen `point`) beside float, on calib and test.

    Both within `tolerance` of float on calib: done. Otherwise `stage_sensitivity` gives, per stage, the worst
    calib drop with only that stage raised to the top of `levels`, and `raise_first` the stage that recovers most;
    then, for at most `max_rounds` rounds, the stage whose next level in `levels` lowers the worst calib drop
    most is raised (ties: the smaller parameter size), until both are within `tolerance`. The test split
    is scored at the saturation vector and at the final one, never used to choose."""
    stage_bits, top = [int(b) for b in stage_bits], max(levels)
    reference = {
        split: _scores(model, outputs.reference, point, costs, importance)
        for split, outputs in (("calib", calib), ("test", test))
    }

    def on_calib(bits: list[int]) -> dict:
        outputs, network = calib.outputs(bits)
        return _scores(network, outputs, point, costs, importance)

    params = [count_params(b) + count_params(h) for b, h in zip(model.bodies, model.heads)]
    current, scores = list(stage_bits), on_calib(stage_bits)
    saturation_scores = scores
    sensitivity, raise_first, steps = None, None, []
    if _worst_drop(scores, reference["calib"]) > tolerance:
        sensitivity = []
        for stage in range(len(current)):
            trial = [top if s == stage else b for s, b in enumerate(current)]
            sensitivity.append(_worst_drop(on_calib(trial), reference["calib"]))
        raise_first = 1 + min(range(len(current)), key=lambda s: (sensitivity[s], params[s]))
    for _ in range(max_rounds):
        if _worst_drop(scores, reference["calib"]) <= tolerance:
            break
        trials = []
        for stage, bits in enumerate(current):
            higher = [level for level in levels if level > bits]
            if higher:
                trial = [higher[0] if s == stage else b for s, b in enumerate(current)]
                trial_scores = on_calib(trial)
                trials.append(
                    (
                        _worst_drop(trial_scores, reference["calib"]),
                        params[stage] * (higher[0] - bits),
                        stage,
                        trial,
                        trial_scores,
                    )
                )
        if not trials:
            break
        _, _, stage, current, scores = min(trials, key=lambda t: t[:3])
        calib.keep_only(current)
        steps.append(
            {"stage": stage + 1, "bits": list(current), "calib_worst_drop": _worst_drop(scores, reference["calib"])}
        )
    vectors = [("saturation", stage_bits)] + ([("raised", current)] if current != stage_bits else [])
    rows = []
    for split, outputs in (("calib", calib), ("test", test)):
        rows += _rows("float", None, split, reference[split], reference[split])
        for name, bits in vectors:
            if split == "calib":
                found = saturation_scores if name == "saturation" else scores
            else:
                quantized, network = outputs.outputs(bits)
                found = _scores(network, quantized, point, costs, importance)
            rows += _rows(name, bits, split, found, reference[split])
    return {
        "tolerance": tolerance,
        "policy": point.name,
        "settings": point.settings,
        "saturation_bits": stage_bits,
        "bits": current,
        "levels": list(levels),
        "saturation_within_tolerance": _worst_drop(saturation_scores, reference["calib"]) <= tolerance,
        "within_tolerance": _worst_drop(scores, reference["calib"]) <= tolerance,
        "stage_sensitivity": sensitivity,
        "raise_first": raise_first,
        "raise_steps": steps,
        "size_mb_32": sum(size_mb(p, 32) for p in params),
        "size_mb_saturation": sum(size_mb(p, b) for p, b in zip(params, stage_bits)),
        "size_mb": sum(size_mb(p, b) for p, b in zip(params, current)),
        "rows": rows,
    }
