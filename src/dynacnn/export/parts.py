"""Static parts to ONNX: all parts of a model in one `torch.onnx.export(dynamo=True)`, cut into one graph per part.

Per-image routing cannot live in one static graph, so each static part (CP-CNN: S, M, every head; MS-CNN: the
DWT, every stage's body and head and their pruned variants) becomes its own graph with dynamic leading
dimensions, and the host routes between them. The dynamo exporter costs seconds per call whatever the module's
size, so the parts are exported together, as the outputs of one bundle module with one input tuple per part,
and `onnx.utils.extract_model` cuts each part's graph out (no part reads another's inputs, so each cut holds
exactly that part's nodes and weights). Each graph's values get plain names (inputs as the part declares
them, output "y"), its dynamic dimensions their labels ("batch", "classes", ...), and it is checked with
`onnx.checker.check_model(full_check=True)` and against the PyTorch part on the export examples with ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from dynacnn.flops import count_call_macs
from dynacnn.models.fold import fold_batchnorm

OUTPUT = "y"
OPSET = 18


class ExportError(RuntimeError):
    """An exported graph does not reproduce its PyTorch part (a bug of the exporter, not of the input)."""


@dataclass
class Part:
    """One static part: `module(*examples)` -> one tensor; `dynamic[i]` labels input i's dynamic axes."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    examples: tuple[torch.Tensor, ...]
    dynamic: tuple[dict[int, str], ...]

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    def entry(self, **extra: Any) -> dict[str, Any]:
        """The part's routing.json entry: its graph file and input names (and `extra`, e.g. MACs)."""
        return {"file": self.file, "inputs": list(self.inputs), **extra}


class Bundle(nn.Module):
    """Every part side by side: forward(*inputs of part 1, *inputs of part 2, ...) -> (output 1, output 2, ...)."""

    def __init__(self, parts: Sequence[Part]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(part.module for part in parts)
        self.counts = [len(part.inputs) for part in parts]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs, start = [], 0
        for module, count in zip(self.parts, self.counts):
            outputs.append(module(*inputs[start : start + count]))
            start += count
        return tuple(outputs)


def export_parts(parts: Sequence[Part], out_dir: Path) -> None:
    """Write `<part.name>.onnx` for every part into `out_dir` (one dynamo export, then one cut per part)."""
    names = [part.name for part in parts]
    if len(set(names)) != len(names) or not all(name.isidentifier() for name in names):
        raise ValueError(f"part names must be distinct identifiers, got {names}")
    shapes, input_names, examples = [], [], []
    for part in parts:
        dims = {
            label: torch.export.Dim(f"{part.name}_{label}", min=1) for axes in part.dynamic for label in axes.values()
        }
        shapes += [{axis: dims[label] for axis, label in axes.items()} for axes in part.dynamic]
        input_names += [f"{part.name}__{name}" for name in part.inputs]
        examples += [tensor.detach().clone().contiguous() for tensor in part.examples]  # distinct: no aliasing
    bundle = Bundle(parts).eval()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        path = Path(tmp) / "bundle.onnx"
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # Inputs that share a dimension (a pairs graph's rows and classes) share its name: nothing to warn about.
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
            torch.onnx.export(
                bundle,
                tuple(examples),
                str(path),
                dynamo=True,
                input_names=input_names,
                output_names=[f"{part.name}__{OUTPUT}" for part in parts],
                dynamic_shapes=(tuple(shapes),),
                external_data=False,
                opset_version=OPSET,
                verbose=False,
            )
        for part in parts:
            cut = Path(tmp) / part.file
            inputs = [f"{part.name}__{name}" for name in part.inputs]
            onnx.utils.extract_model(str(path), str(cut), inputs, [f"{part.name}__{OUTPUT}"], check_model=False)
            model = plain_names(onnx.load(str(cut)), part)
            onnx.checker.check_model(model, full_check=True)
            onnx.save(model, str(out_dir / part.file))
    for part in parts:
        verify(part, out_dir / part.file)


def plain_names(model: onnx.ModelProto, part: Part) -> onnx.ModelProto:
    """The cut graph with its inputs named as `part.inputs`, its output "y" and its dimensions by their labels."""
    prefix = f"{part.name}__"
    mapping = {prefix + name: name for name in part.inputs} | {prefix + OUTPUT: OUTPUT}
    graph = model.graph
    taken = {value for node in graph.node for value in (*node.input, *node.output)} | {
        i.name for i in graph.initializer
    }
    clash = (set(mapping.values()) & taken) - set(mapping)
    if clash:
        raise ExportError(f"graph {part.name} already has values named {sorted(clash)}")
    for node in graph.node:
        node.input[:] = [mapping.get(name, name) for name in node.input]
        node.output[:] = [mapping.get(name, name) for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = mapping.get(value.name, value.name)
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param.startswith(f"{part.name}_"):
                dim.dim_param = dim.dim_param[len(part.name) + 1 :]
    graph.name = part.name
    return model


def verify(part: Part, path: Path, tolerance: float = 1e-4) -> None:
    """Run the graph with ONNX Runtime on the part's examples and compare with the PyTorch part."""
    with torch.no_grad():
        expected = part.module(*part.examples).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: tensor.detach().contiguous().numpy() for name, tensor in zip(part.inputs, part.examples)}
    got = session.run([OUTPUT], feeds)[0]
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=tolerance * scale):
        raise ExportError(
            f"graph {path.name} does not reproduce its PyTorch part (shape {got.shape} vs {expected.shape})"
        )


def export_form(module: nn.Module) -> nn.Module:
    """What gets exported: an eval-mode float32 copy of `module` in the contiguous format, BatchNorm folded."""
    return fold_batchnorm(module).float().to(memory_format=torch.contiguous_format)


def one_image_macs(part: Part) -> int | None:
    """MACs of one image through a part whose only dynamic axis is the batch (None for parts fed index inputs)."""
    if any(axes != {0: "batch"} for axes in part.dynamic):
        return None
    with torch.no_grad():
        return int(count_call_macs(part.module, *(tensor[:1] for tensor in part.examples))[0])
