"""The early-exit MS-CNN on ONNX Runtime: stage after stage on the sub-batch still running, as `execute` does.

TP / CAP_FC / PTHP (Alg. 1, 2, 4): the DWT once, then per stage its body on the images still in, its FC head (all
rows while every image keeps every class; otherwise the `rows` graph over the rows any image keeps, fc_rows
"batch", or the `pairs` graph over each kept (image, class) pair, fc_rows "image"), the policy step for the whole
sub-batch in numpy, and exited images leave. CAP_CONV (Alg. 3): every image runs every stage; from stage 2 on the
last CONV layer (`last` graph) computes only the filters each image's vote keeps, once per distinct filter set.
Per-image MACs use the exported stage cost table (`dynacnn.mscnn.costs.CostModel`): a stage that ran costs its
body and hidden layers, less the skipped filters, plus one FC row per class it computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from dynacnn.errors import CheckpointError
from dynacnn.runtime.exits import ExitPolicy, filter_order_arrays, filter_ranks, kept_filters, majority_filters
from dynacnn.runtime.graphs import PROVIDERS, Graph, session_options
from dynacnn.runtime.router import softmax
from dynacnn.runtime.spec import REEXPORT, ROUTING_FILE, ExportedModel, as_mapping, field, input_batch

COSTS = ("body_macs", "hidden_macs", "fc_in", "filter_macs")


class MSCNNOutput(NamedTuple):
    """Probabilities of each image's exit stage (B, K), MACs it executed (B,), its exit stage (B,; 0-based) and the
    classes each stage's last FC layer computed for it (B, S; 0: the stage did not run)."""

    probs: np.ndarray
    macs: np.ndarray
    exit_stage: np.ndarray
    kept: np.ndarray


class Stage:
    """One stage's graphs (those the policy needs: `graphs[name]`) and cost-table entries."""

    def __init__(
        self,
        path: Path,
        block: Mapping[str, Any],
        needs: Sequence[str],
        options: ort.SessionOptions,
        providers: Sequence[str],
    ) -> None:
        graphs = as_mapping(block["graphs"])
        self.graphs = {name: Graph(path, as_mapping(graphs[name]), options, providers) for name in needs}
        self.filters, self.area = int(block["filters"]), int(block["pool_area"])
        costs = as_mapping(block["costs"])
        self.body_macs, self.hidden_macs, self.fc_in, self.filter_macs = (int(costs[key]) for key in COSTS)


class MSCNNRuntime(ExportedModel):
    """An exported MS-CNN under its policy: `run(x)` -> `MSCNNOutput`; `x` is a normalised float32 (B, C, H, W)."""

    def __init__(
        self, export_dir: Path, spec: Mapping[str, Any], threads: int | None, providers: Sequence[str] = PROVIDERS
    ) -> None:
        path = Path(export_dir)
        options = session_options(threads)

        def read() -> None:
            self.read_common(spec)
            blocks = [as_mapping(block) for block in spec["stages"]]
            if len(blocks) < 2:
                raise ValueError(f"an MS-CNN needs at least 2 stages, got {len(blocks)}")
            policy = as_mapping(spec["policy"])
            self.policy = ExitPolicy.from_spec(policy, len(blocks), self.num_classes)
            for number, block in enumerate(blocks):
                missing = sorted(set(self.needs(number)) - set(as_mapping(block["graphs"])))
                if missing:
                    raise CheckpointError(
                        f"{path / ROUTING_FILE}: the {self.policy.kind} policy needs stage {number + 1}'s graphs "
                        f"{missing}, which this export lacks; {REEXPORT}"
                    )
            self.dwt = Graph(path, as_mapping(spec["dwt"]), options, providers)
            self.stages = [Stage(path, b, self.needs(i), options, providers) for i, b in enumerate(blocks)]
            self.orders = self.filter_orders(policy) if self.policy.kind == "CAP_CONV" else []
            self.check_shapes()

        field(path, read)

    def needs(self, stage: int) -> list[str]:
        """The graphs stage `stage` runs under the policy."""
        policy = self.policy
        if policy.kind == "CAP_CONV":
            return ["trunk", "last", "head"] if stage and policy.rm else ["body", "head"]
        if stage and policy.prunes_rows:
            return ["body", "head", "rows" if policy.fc_rows == "batch" else "pairs"]
        return ["body", "head"]

    def filter_orders(self, block: Mapping[str, Any]) -> list[np.ndarray | None]:
        """CAP_CONV's per-stage filter ranks (K, F) (smart vote) or class-agnostic order (F,) (ignorant)."""
        filters = [stage.filters for stage in self.stages]
        if not all(0 <= self.policy.rm < f for f in filters[1:]):
            raise ValueError(f"rm {self.policy.rm} must leave a filter in every stage after the first ({filters})")
        if self.policy.smart:
            orders = filter_order_arrays(block["filter_order"], self.num_classes, filters)
            return [None if order is None else filter_ranks(order) for order in orders]
        overall = [None] + [[block["overall_order"][stage]] for stage in range(1, len(filters))]
        orders = filter_order_arrays(overall, 1, filters)
        return [None if order is None else order[0] for order in orders]

    def check_shapes(self) -> None:
        """Refuse graphs whose fixed shapes disagree with the spec (classes, features, input shape)."""
        self.dwt.check_input((None, *self.input_shape))
        fc_in = 0
        for stage in self.stages:
            fc_in += stage.filters * stage.area
            if stage.fc_in != fc_in:
                raise ValueError(f"a stage's fc_in {stage.fc_in} is not the {fc_in} pooled features so far")
            for name, graph in stage.graphs.items():
                if name in ("head", "rows", "pairs"):
                    graph.check_input((None, fc_in))
                if name in ("head", "rows"):
                    graph.check_output((None, self.num_classes if name == "head" else None))
                if name == "body":
                    graph.check_output((None, stage.filters * stage.area))

    def run(self, x: Any) -> MSCNNOutput:
        """The policy executed with real skipping: exit-stage probabilities, MACs, exit stages, classes per stage."""
        x = input_batch(x, self.input_shape)
        if not len(x):
            empty = np.zeros(0, dtype=np.int64)
            return MSCNNOutput(
                np.zeros((0, self.num_classes), np.float32), empty, empty, empty.reshape(0, len(self.stages))
            )
        if self.policy.kind == "CAP_CONV":
            return self.run_cap_conv(x)
        batch, classes, stages = len(x), self.num_classes, len(self.stages)
        bands = self.dwt(x)
        index = np.arange(batch)
        mask = np.ones((batch, classes), dtype=bool)
        exit_stage = np.full(batch, stages - 1, dtype=np.int64)
        probs_out = np.zeros((batch, classes), dtype=np.float32)
        kept = np.zeros((batch, stages), dtype=np.int64)
        pooled: list[np.ndarray] = []
        for number, stage in enumerate(self.stages):
            pooled.append(stage.graphs["body"](bands))
            kept[index, number] = mask.sum(axis=1) if self.policy.fc_rows == "image" else mask.any(axis=0).sum()
            logits = self.head_logits(stage, np.concatenate(pooled, axis=1), mask)
            probs, leave, mask = self.policy.step(number, logits, mask)
            exit_stage[index[leave]] = number
            probs_out[index[leave]] = probs[leave]
            if leave.all():
                break
            if leave.any():
                stay = np.flatnonzero(~leave)
                index, bands, mask = index[stay], bands[stay], mask[stay]
                pooled = [p[stay] for p in pooled]
        return MSCNNOutput(probs_out, self.image_macs(kept, 0), exit_stage, kept)

    def head_logits(self, stage: Stage, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits of the kept classes (others -inf), computing only the FC rows the policy keeps (Alg. 2)."""
        if mask.all():
            return stage.graphs["head"](features)
        logits = np.full(mask.shape, -np.inf, dtype=np.float32)
        if self.policy.fc_rows == "batch":
            classes = np.flatnonzero(mask.any(axis=0))
            logits[:, classes] = stage.graphs["rows"](features, classes)
            logits[~mask] = -np.inf
            return logits
        rows, classes = np.nonzero(mask)
        logits[rows, classes] = stage.graphs["pairs"](features, rows.astype(np.int64), classes.astype(np.int64))
        return logits

    def run_cap_conv(self, x: np.ndarray) -> MSCNNOutput:
        """Alg. 3: stage i's probabilities vote the filters stage i+1's last CONV layer skips, image by image."""
        policy, batch = self.policy, len(x)
        bands = self.dwt(x)
        pooled = [self.stages[0].graphs["body"](bands)]
        probs = softmax(self.stages[0].graphs["head"](pooled[0]))
        for number in range(1, len(self.stages)):
            stage = self.stages[number]
            if policy.rm:
                if policy.smart:
                    removed = majority_filters(probs, self.orders[number], policy.p_th[number - 1], policy.rm)
                else:
                    removed = np.tile(np.sort(self.orders[number][: policy.rm]), (batch, 1))
                pooled.append(
                    self.sliced_last(stage, stage.graphs["trunk"](bands), kept_filters(removed, stage.filters))
                )
            else:
                pooled.append(stage.graphs["body"](bands))
            probs = softmax(stage.graphs["head"](np.concatenate(pooled, axis=1)))
        stages = len(self.stages)
        kept = np.full((batch, stages), self.num_classes, dtype=np.int64)
        return MSCNNOutput(probs, self.image_macs(kept, policy.rm), np.full(batch, stages - 1, np.int64), kept)

    @staticmethod
    def sliced_last(stage: Stage, maps: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """The last CONV layer computing each image's kept filters (one run per distinct filter set), pooled;
        skipped filters give 0. Returns (B, F * pool area)."""
        groups, inverse = np.unique(keep, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        out = np.zeros((len(maps), stage.filters, stage.area), dtype=np.float32)
        for number, filters in enumerate(groups):
            rows = np.flatnonzero(inverse == number)
            values = stage.graphs["last"](maps[rows], np.ascontiguousarray(filters))
            out[rows[:, None], filters] = values.reshape(len(rows), len(filters), stage.area)
        return out.reshape(len(maps), -1)

    def image_macs(self, kept: np.ndarray, rm: int) -> np.ndarray:
        """MACs each image executed (B,): the cost table over the stages it ran, the classes they computed and the
        filters CAP_CONV skipped (rm in every stage after the first)."""
        costs = np.asarray(
            [
                (stage.body_macs + stage.hidden_macs - (rm * stage.filter_macs if number else 0), stage.fc_in)
                for number, stage in enumerate(self.stages)
            ],
            dtype=np.int64,
        )
        return (kept > 0) @ costs[:, 0] + kept @ costs[:, 1]

    def predict(self, x: Any) -> np.ndarray:
        """Top-1 class of each image (B,)."""
        return self.run(x).probs.argmax(axis=1)
