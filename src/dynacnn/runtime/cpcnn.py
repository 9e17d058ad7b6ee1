"""The routed CP-CNN on ONNX Runtime: S and M on the batch, each head H_g only on the images that activate it.

The host side is `CPCNN.route` in numpy: Alg. 1 / Eq. 1 active sets and Eq. 3 weights for the whole batch at
once (`router.activate`; for a single image `router.activate_one`, in plain Python), then one loop over the G
heads, each run on its sub-batch (`features[rows]`), its softmax scaled by the weights and written into the (B, K)
output with one indexed assignment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dynacnn.runtime.graphs import PROVIDERS, Graph, session_options
from dynacnn.runtime.router import RULES, WEIGHTINGS, activate, activate_one, softmax
from dynacnn.runtime.spec import ExportedModel, as_mapping, check_classes, field, input_batch


class CPCNNOutput(NamedTuple):
    """Class probabilities (B, K), MACs each image executed (B,), its active heads (B, G)."""

    probs: np.ndarray
    macs: np.ndarray
    active: np.ndarray


def read_policy(path: Path, block: Mapping[str, Any], groups: int) -> tuple[np.ndarray, float, str, str]:
    """Confusion (G, G) float64, tau, rule and weighting of routing.json's policy block, range-checked."""
    confusion = np.asarray(block["confusion"], dtype=np.float64)
    tau, rule, weighting = float(block["tau"]), str(block["rule"]), str(block["weighting"])
    if confusion.shape != (groups, groups) or not np.isfinite(confusion).all() or (confusion < 0).any():
        raise ValueError(f"confusion must be ({groups}, {groups}), finite and non-negative, got {confusion.shape}")
    if not 0 < tau <= 1 or rule not in RULES or weighting not in WEIGHTINGS:
        raise ValueError(f"tau {tau} must be in (0, 1], rule in {RULES}, weighting in {WEIGHTINGS}")
    return confusion, tau, rule, weighting


class CPCNNRuntime(ExportedModel):
    """An exported CP-CNN: `run(x)` -> `CPCNNOutput`; `x` is a normalised float32 batch (B, C, H, W)."""

    def __init__(
        self, export_dir: Path, spec: Mapping[str, Any], threads: int | None, providers: Sequence[str] = PROVIDERS
    ) -> None:
        path = Path(export_dir)
        options = session_options(threads)

        def read() -> None:
            self.read_common(spec)
            policy = as_mapping(spec["policy"])
            self.members = check_classes(path, policy["members"], self.num_classes)
            self.confusion, self.tau, self.rule, self.weighting = read_policy(path, policy, len(self.members))
            parts = as_mapping(spec["parts"])
            self.shared = Graph(path, parts["shared"], options, providers)
            self.clustifier = Graph(path, parts["clustifier"], options, providers, (None, len(self.members)))
            heads = list(parts["heads"])
            if len(heads) != len(self.members):
                raise ValueError(f"{len(heads)} heads for {len(self.members)} hyper-classes")
            self.heads = [
                None if entry.get("file") is None else Graph(path, entry, options, providers, (None, len(group)))
                for entry, group in zip(map(as_mapping, heads), self.members)
            ]
            self.fixed_macs = int(parts["shared"]["macs"]) + int(parts["clustifier"]["macs"])
            self.head_macs = np.asarray([int(entry["macs"]) for entry in heads], dtype=np.int64)

        field(path, read)
        self.shared.check_input((None, *self.input_shape))
        for graph in (self.clustifier, *(head for head in self.heads if head is not None)):
            graph.check_input((None, *self.shared.output_shape[1:]))

    def run(self, x: Any) -> CPCNNOutput:
        """Alg. 1 routing with real skipping: probabilities, MACs each image executed, its active heads."""
        x = input_batch(x, self.input_shape)
        features = self.shared(x)
        v = softmax(self.clustifier(features))
        batch = len(x)
        policy = activate_one if batch == 1 else activate
        active, weights = policy(v, self.confusion, self.tau, self.rule, self.weighting)
        probs = np.zeros((batch, self.num_classes), dtype=np.float32)
        counts = active.sum(axis=0)
        for group, head in enumerate(self.heads):
            if counts[group] == 0:
                continue
            classes = self.members[group]
            if counts[group] == batch:
                rows, head_input = np.arange(batch), features
            else:
                rows = np.flatnonzero(active[:, group])
                head_input = features[rows]
            weight = weights[rows, group][:, None]
            if head is None:
                probs[rows[:, None], classes] = weight
            else:
                probs[rows[:, None], classes] = softmax(head(head_input)) * weight
        return CPCNNOutput(probs, self.fixed_macs + active.astype(np.int64) @ self.head_macs, active)

    def predict(self, x: Any) -> np.ndarray:
        """Top-1 class of each image (B,)."""
        return self.run(x).probs.argmax(axis=1)
