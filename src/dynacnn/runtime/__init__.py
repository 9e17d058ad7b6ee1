"""Run an exported dynacnn model (`dynacnn export`) with ONNX Runtime; needs only numpy and onnxruntime, not torch.

`load(export_dir)` reads routing.json and the ONNX graphs it names and returns a runtime whose `run(x)` routes a
normalised float32 batch (B, C, H, W) on the host, vectorised over the batch, running each static part only on
the sub-batch that needs it: `CPCNNRuntime` (Alg. 1 / Eq. 1 / Eq. 3 of CP-CNN), `MSCNNRuntime` (TP, CAP_FC, PTHP,
CAP_CONV of MS-CNN) or `PlainRuntime` (one graph, e.g. the base model exported the same way). `normalize(images)`
turns uint8 images into that batch with the training mean/std. Loading reads JSON and ONNX only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dynacnn.errors import ConfigError
from dynacnn.runtime.cpcnn import CPCNNOutput, CPCNNRuntime
from dynacnn.runtime.graphs import PROVIDERS
from dynacnn.runtime.mscnn import MSCNNOutput, MSCNNRuntime
from dynacnn.runtime.plain import PlainOutput, PlainRuntime
from dynacnn.runtime.spec import FORMAT, FORMAT_VERSION, ROUTING_FILE, read_spec

Runtime = CPCNNRuntime | MSCNNRuntime | PlainRuntime
RUNTIMES = {"cpcnn": CPCNNRuntime, "mscnn": MSCNNRuntime, "plain": PlainRuntime}


def load(export_dir: str | Path, *, threads: int | None = None, providers: Sequence[str] = PROVIDERS) -> Runtime:
    """The runtime of the model exported to `export_dir`; `threads`: intra-op threads per graph (None: default)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    spec = read_spec(export_dir)
    return RUNTIMES[spec["method"]](Path(export_dir), spec, threads, providers)


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ROUTING_FILE",
    "CPCNNOutput",
    "CPCNNRuntime",
    "MSCNNOutput",
    "MSCNNRuntime",
    "PlainOutput",
    "PlainRuntime",
    "Runtime",
    "load",
    "read_spec",
]
