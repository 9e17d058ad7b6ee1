"""One static part of an exported model: an ONNX Runtime session over a graph file, fed by input name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from dynacnn.errors import CheckpointError
from dynacnn.runtime.spec import REEXPORT, ROUTING_FILE, graph_path

PROVIDERS = ("CPUExecutionProvider",)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options shared by every part: `threads` intra-op threads (None: ONNX Runtime's default), one inter-op
    thread, no spinning between runs (a routed model alternates between many small sessions)."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class Graph:
    """A part's session; `graph(*arrays)` runs it on arrays given in the order of `inputs` and returns its output."""

    def __init__(
        self,
        export_dir: Path,
        entry: Mapping[str, Any],
        options: ort.SessionOptions,
        providers: Sequence[str] = PROVIDERS,
        output_dims: Sequence[int | None] | None = None,
    ) -> None:
        path = graph_path(export_dir, entry["file"])
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (named in {ROUTING_FILE}); {REEXPORT}")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own classes for every kind of bad file
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path} is not a readable ONNX graph ({reason}); {REEXPORT}") from None
        self.path = path
        self.inputs = tuple(str(name) for name in entry["inputs"])
        names = tuple(node.name for node in self.session.get_inputs())
        if names != self.inputs:
            raise CheckpointError(f"{path} takes inputs {list(names)} but {ROUTING_FILE} feeds {list(self.inputs)}")
        self.output = self.session.get_outputs()[0].name
        self.output_shape = tuple(self.session.get_outputs()[0].shape)
        if output_dims is not None:
            self.check_output(output_dims)

    def check_output(self, dims: Sequence[int | None]) -> None:
        """Refuse a graph whose output's fixed dimensions differ from `dims` (None: any size)."""
        self._check("outputs", self.output_shape, dims)

    def check_input(self, dims: Sequence[int | None]) -> None:
        """Refuse a graph whose first input's fixed dimensions differ from `dims` (None: any size)."""
        self._check("takes", tuple(self.session.get_inputs()[0].shape), dims)

    def _check(self, what: str, shape: tuple[Any, ...], dims: Sequence[int | None]) -> None:
        fixed = [d if isinstance(d, int) else None for d in shape]
        if len(shape) != len(dims) or any(want is not None and got != want for got, want in zip(fixed, dims)):
            expected = ["batch" if d is None else d for d in dims]
            raise CheckpointError(
                f"{self.path} {what} shape {list(shape)} but {ROUTING_FILE} expects {expected}: the spec does not "
                f"match the graphs; {REEXPORT}"
            )

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], dict(zip(self.inputs, arrays)))[0]
