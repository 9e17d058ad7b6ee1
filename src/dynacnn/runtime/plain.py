"""A static classifier on ONNX Runtime (one graph: the base model or the compute-matched ResNet, exported the same
way as the routed parts), so its speed is comparable with the routed models'."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dynacnn.runtime.graphs import PROVIDERS, Graph, session_options
from dynacnn.runtime.router import softmax
from dynacnn.runtime.spec import ExportedModel, as_mapping, field, input_batch


class PlainOutput(NamedTuple):
    """Class probabilities (B, K) and the MACs each image executed (B,)."""

    probs: np.ndarray
    macs: np.ndarray


class PlainRuntime(ExportedModel):
    """An exported static classifier: `run(x)` -> `PlainOutput`; `x` is a normalised float32 (B, C, H, W)."""

    def __init__(
        self, export_dir: Path, spec: Mapping[str, Any], threads: int | None, providers: Sequence[str] = PROVIDERS
    ) -> None:
        path = Path(export_dir)

        def read() -> None:
            self.read_common(spec)
            entry = as_mapping(as_mapping(spec["parts"])["model"])
            self.model = Graph(path, entry, session_options(threads), providers, (None, self.num_classes))
            self.model.check_input((None, *self.input_shape))
            self.macs = int(entry["macs"])

        field(path, read)

    def run(self, x: Any) -> PlainOutput:
        """Class probabilities of every image, and its (constant) MACs."""
        x = input_batch(x, self.input_shape)
        return PlainOutput(softmax(self.model(x)), np.full(len(x), self.macs, dtype=np.int64))

    def predict(self, x: Any) -> np.ndarray:
        """Top-1 class of each image (B,)."""
        return self.run(x).probs.argmax(axis=1)
