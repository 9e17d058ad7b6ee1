"""Benchmark (not a test): the demo's exported models run by OpenVINO instead of ONNX Runtime (issue 19's lever).

Needs `pip install openvino` (not a dynacnn dependency). Each of the demo's five exported models
(`<demo>/export/<name>`, exported here as `dynacnn bench` does when missing) is loaded twice with
`dynacnn.runtime.load`: as it is (every static part an ONNX Runtime session) and with every part compiled by
OpenVINO's CPU plugin instead (the same ONNX files and the same numpy routing; `--threads` inference threads,
latency hint, dynamic batch). All ten contenders are timed in one `dynacnn.timing.measure` call (paired,
interleaved chunks); each model is paired with the base of its own runtime and the speed targets are checked per
runtime (`speed_targets`). Also printed: how often OpenVINO's top-1 agrees with ONNX Runtime's, and each part's
time alone at batch 256 in both runtimes (median of `--part-runs` runs on the routed model's real inputs).
Run: .venv/bin/python benchmarks/openvino_runtime.py --demo-dir runs/demo [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from dynacnn.experiments.speed_targets import RUNTIMES, speed_targets
from dynacnn.export import export_directory, runtime_contender
from dynacnn.export.contenders import DEMO_MODELS, exported_macs
from dynacnn.export.quantize import runtime_graphs
from dynacnn.report.render import table, targets_table, timing_table
from dynacnn.runs import load_run
from dynacnn.runtime import CPCNNRuntime, Runtime, load
from dynacnn.timing import measure

ONNX_RUNTIME, OPENVINO = RUNTIMES[1], ("OpenVINO", "-ov")


class OpenVINOSession:
    """One part compiled by OpenVINO, standing in for its ONNX Runtime session (`run(outputs, feed)`)."""

    def __init__(self, path: Path, core: ov.Core, threads: int) -> None:
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        compiled = core.compile_model(str(path), "CPU", config)
        self.inputs = [port.get_any_name() for port in compiled.inputs]
        self.request = compiled.create_infer_request()

    def run(self, outputs: list[str], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.request.infer([feed[name] for name in self.inputs], share_inputs=True)
        return [self.request.get_output_tensor(0).data.copy()]


def on_openvino(runtime: Runtime, core: ov.Core, threads: int) -> Runtime:
    """`runtime` with each part's ONNX Runtime session replaced by the part compiled by OpenVINO (in place)."""
    for graph in runtime_graphs(runtime):
        graph.session = OpenVINOSession(graph.path, core, threads)
    return runtime


def median_ms(call: Callable[[], Any], runs: int) -> float:
    """Median wall time of `call` in milliseconds, after three untimed calls."""
    for _ in range(3):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def cpcnn_parts(ort_model: CPCNNRuntime, ov_model: CPCNNRuntime, images: np.ndarray, runs: int) -> list[list[str]]:
    """Each CP-CNN part alone on the whole batch (S on the images, M and the heads on S's output), both runtimes."""
    features = ort_model.shared(images)

    def parts(model: CPCNNRuntime) -> list[tuple[str, Any, np.ndarray]]:
        heads = [(f"head {g}", head, features) for g, head in enumerate(model.heads) if head is not None]
        return [("shared", model.shared, images), ("clustifier", model.clustifier, features), *heads]

    return [
        [name] + [f"{median_ms(lambda part=part, data=data: part(data), runs):.2f}" for part in (ort_part, ov_part)]
        for (name, ort_part, data), (_, ov_part, _) in zip(parts(ort_model), parts(ov_model))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=None, help="threads per part (default: torch's count)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=2560, help="test images timed at batch 32 and 256")
    parser.add_argument("--part-runs", type=int, default=30)
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    splits = load_run(args.demo_dir / "base").data_spec.load()
    root, core = args.demo_dir / "export", ov.Core()
    contenders, runtimes, references = [], {}, {}
    macs = {}
    for name, kind, source in DEMO_MODELS:
        policy = "full" if name == "mscnn-full" else "chosen"
        spec = export_directory(root / name, **{kind: args.demo_dir / source}, mscnn_policy=policy)
        macs[name] = exported_macs(args.demo_dir, name, spec)
    for _, suffix in (ONNX_RUNTIME, OPENVINO):
        for name in macs:
            runtime = load(root / name, threads=threads)
            if suffix == OPENVINO[1]:
                runtime = on_openvino(runtime, core, threads)
            runtimes[name + suffix], references[name + suffix] = runtime, "base" + suffix
            contenders.append(runtime_contender(name + suffix, runtime, macs[name]))
    images = runtimes["base" + ONNX_RUNTIME[1]].normalize(splits.test.read_images(0, args.images).numpy())
    first = images[:1000]
    agreement = {
        name: float(
            (runtimes[name + ONNX_RUNTIME[1]].predict(first) == runtimes[name + OPENVINO[1]].predict(first)).mean()
        )
        for name, _, _ in DEMO_MODELS
    }
    rows = measure(contenders, torch.from_numpy(images), (1, 32, 256), args.repeats, 300, 10, references)
    targets = speed_targets(rows, (ONNX_RUNTIME, OPENVINO))
    parts = cpcnn_parts(
        runtimes["cpcnn" + ONNX_RUNTIME[1]], runtimes["cpcnn" + OPENVINO[1]], images[:256], args.part_runs
    )
    base_ms = [
        median_ms(lambda m=runtimes["base" + suffix]: m.run(images[:256]), args.part_runs)
        for _, suffix in (ONNX_RUNTIME, OPENVINO)
    ]
    lines = [
        f"# OpenVINO {ov.__version__} vs ONNX Runtime, {threads} threads per part\n",
        "top-1 agreement (OpenVINO vs ONNX Runtime, 1,000 test images): " + json.dumps(agreement) + "\n",
        timing_table(rows),
        targets_table(targets),
        "CP-CNN parts alone at batch 256 (ms): ONNX Runtime, OpenVINO; whole base: "
        f"{base_ms[0]:.2f}, {base_ms[1]:.2f}\n",
        table(["part", "ONNX Runtime", "OpenVINO"], parts),
    ]
    text = "\n".join(lines)
    print(text)
    (args.demo_dir / "openvino.md").write_text(text)
    (args.demo_dir / "openvino.json").write_text(
        json.dumps(
            {"agreement": agreement, "rows": rows, "targets": targets, "parts_ms": parts}, indent=2, default=float
        )
    )


if __name__ == "__main__":
    main()
