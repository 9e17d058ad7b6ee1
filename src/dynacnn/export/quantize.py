"""An export directory with its graphs quantized to int8 (ONNX Runtime static quantization), run unchanged by
`dynacnn.runtime.load`: the same routing.json (plus a "quantization" record), each large graph replaced by its
int8 version, the small ones (the MS-CNN's DWT, FC heads and pruned-row graphs) copied as float32.

Calibration (`quantize_export`): the float32 runtime routes the calibration images in batches of
`CALIBRATION_BATCH` and every graph records the arrays it was fed, so each part is calibrated on inputs of its own
shape and of the distribution routing gives it (a CP-CNN head sees S's features of the images that activate it, a
later MS-CNN stage the images that did not exit). A graph the routing never ran, or one the policy does not load,
stays float32. Ranges: MinMax over those inputs. `CALIBRATION_IMAGES` (512) images of the calibration split
(never the test split) are enough: 128 or 2,048 moved no model's accuracy by more than 0.2 points.

Format: QDQ (QuantizeLinear / DequantizeLinear pairs, which ONNX Runtime fuses into integer kernels when it loads
the graph), per-channel int8 weights, uint8 activations, no `quant_pre_process`. Of the settings
`benchmarks/int8_ort.py --explore` compares, QOperator ran as fast as QDQ (QDQ kept: ONNX Runtime's recommended
form), per-tensor weights as fast as per-channel but further from float, int8 activations several times slower
on x86 (no fast int8 x int8 kernel), `quant_pre_process` changed nothing (the exporter's graphs are already
optimised), and quantizing the small graphs made the MS-CNN slower. Figures: docs/results.md.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from dynacnn.errors import ConfigError
from dynacnn.export.spec import output_dir, write_spec
from dynacnn.runtime import Runtime, load, read_spec
from dynacnn.runtime.graphs import Graph
from dynacnn.runtime.spec import ROUTING_FILE, input_batch

CALIBRATION_IMAGES = 512
CALIBRATION_BATCH = 64
MIN_MACS = 100_000
"""Graphs below this many MACs per image stay float32: quantizing their input and output costs more than their
arithmetic saves. Graphs the export records no MACs for (the pruned-row FC graphs, which gather their weight rows
at run time) always stay float32."""
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
ACTIVATIONS = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


class _Recorder:
    """Stands in for a graph's session: runs it and keeps a copy of every feed."""

    def __init__(self, session: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        self.session, self.feeds = session, feeds

    def run(self, outputs: list[str], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.feeds.append({name: np.array(value) for name, value in feed.items()})
        return self.session.run(outputs, dict(feed))


class _Feeds(CalibrationDataReader):
    """The recorded feeds of one graph, one batch at a time (what `quantize_static` calibrates on)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.iterator = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.iterator, None)

    def rewind(self) -> None:
        self.iterator = iter(self.feeds)


def runtime_graphs(obj: Any, seen: set[int] | None = None) -> Iterator[Graph]:
    """Every `Graph` a runtime holds (its parts, lists of heads, stages' graph dicts), each once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Graph):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from runtime_graphs(value, seen)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from runtime_graphs(value, seen)
    elif type(obj).__module__.startswith("dynacnn.runtime"):
        for value in vars(obj).values():
            yield from runtime_graphs(value, seen)


def record_feeds(runtime: Runtime, images: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> dict[str, list]:
    """Route `images` through the float32 `runtime`; the feeds each graph file received, by file name."""
    feeds: dict[str, list[dict[str, np.ndarray]]] = {}
    graphs = list(runtime_graphs(runtime))
    for graph in graphs:
        graph.session = _Recorder(graph.session, feeds.setdefault(graph.path.name, []))
    try:
        for begin in range(0, len(images), batch_size):
            runtime.run(images[begin : begin + batch_size])
    finally:
        for graph in graphs:
            graph.session = graph.session.session
    return feeds


def graph_entries(spec: Any) -> Iterator[Mapping[str, Any]]:
    """Every graph entry ({"file", "inputs", "macs"?}) routing.json names, wherever it sits."""
    if isinstance(spec, Mapping):
        if isinstance(spec.get("file"), str) and "inputs" in spec:
            yield spec
            return
        for value in spec.values():
            yield from graph_entries(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from graph_entries(value)


def quantize_graph(
    source: Path,
    target: Path,
    feeds: list[dict[str, np.ndarray]],
    quant_format: str,
    per_channel: bool,
    activations: str,
    preprocess: bool,
) -> None:
    """One graph to int8 with `quantize_static`, calibrated (MinMax) on `feeds`; `quant_pre_process` first
    (shape inference and ONNX Runtime's graph optimisations) when `preprocess`."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        if preprocess:
            quant_pre_process(str(source), str(prepared))
        else:
            shutil.copyfile(source, prepared)
        quantize_static(
            str(prepared),
            str(target),
            _Feeds(feeds),
            quant_format=FORMATS[quant_format],
            per_channel=per_channel,
            activation_type=ACTIVATIONS[activations],
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def quantize_export(
    export_dir: str | Path,
    out_dir: str | Path,
    calibration_images: Any,
    *,
    quant_format: str = "qdq",
    per_channel: bool = True,
    activations: str = "uint8",
    min_macs: int = MIN_MACS,
    preprocess: bool = False,
) -> dict[str, Any]:
    """Write to `out_dir` the export of `export_dir` with every graph of at least `min_macs` MACs per image that
    the routing ran on the calibration images (normalised float32 (B, C, H, W), as `run` takes) quantized to int8;
    returns the routing.json written (its "quantization" block says which graph is int8 and why others are not)."""
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    if quant_format not in FORMATS or activations not in ACTIVATIONS:
        raise ConfigError(
            f"quant_format must be one of {sorted(FORMATS)} and activations one of {sorted(ACTIVATIONS)}, got "
            f"{quant_format!r} / {activations!r}"
        )
    if not export_dir.is_dir() or not (export_dir / ROUTING_FILE).is_file():
        raise ConfigError(
            f"{export_dir} is not an export directory (no {ROUTING_FILE}); make one with `dynacnn export`"
        )
    if out_dir.resolve() == export_dir.resolve():
        raise ConfigError(f"the int8 export must go to another directory than {export_dir}; choose a new out_dir")
    spec = read_spec(export_dir)
    images = input_batch(calibration_images, spec["input_shape"])
    if not len(images):
        raise ConfigError("no calibration images; give some (a few hundred from the calibration split)")
    feeds = record_feeds(load(export_dir, threads=1), images)
    out = output_dir(out_dir)
    graphs: dict[str, str] = {}
    for entry in graph_entries(spec):
        name, macs = entry["file"], entry.get("macs")
        if name in graphs:
            continue
        if macs is None or int(macs) < min_macs:
            graphs[name] = "float32: " + ("no MACs recorded" if macs is None else f"{macs} MACs per image < {min_macs}")
        elif not feeds.get(name):
            graphs[name] = "float32: the routing ran it on no calibration image"
        else:
            quantize_graph(
                export_dir / name, out / name, feeds[name], quant_format, per_channel, activations, preprocess
            )
            rows = sum(len(next(iter(feed.values()))) for feed in feeds[name])
            graphs[name] = f"int8: calibrated on {rows} inputs"
            continue
        shutil.copyfile(export_dir / name, out / name)
    settings = {"format": quant_format, "per_channel": per_channel, "activations": activations, "weights": "int8"}
    settings["preprocessed"] = preprocess
    record = {**settings, "calibration": "MinMax", "calibration_images": len(images), "graphs": graphs}
    return write_spec(out, {**spec, "quantization": record})
