"""Benchmark (not a test): int8 execution with ONNX Runtime static quantization (issue 19), for a finished demo's
four models, each run by `dynacnn.runtime` (routing in numpy) in float32 and in int8.

1. Each model's export (`<demo>/export/<name>`, made with `dynacnn export` as `dynacnn bench` makes it when
   missing) is quantized with `dynacnn.export.quantize.quantize_export` to `<demo>/export-int8/<name>`, calibrated
   on the first `--calibration-images` images of the calibration split (never the test split).
2. Test-split top-1 / top-5 and mean MACs per image of float and int8 (all test images, batch 256, 1 thread), and
   how often int8 agrees with float on the top-1 class.
3. Images/s at batch 1, 32 and 256 of all 8 contenders (4 float + 4 int8) interleaved in one
   `dynacnn.timing.measure` call per thread count (`--threads`); from the same passes: int8 over float per model,
   and each routed model over the base of its own precision with its routing efficiency (wall speed-up over MAC
   speed-up).
`--explore` first compares quantization settings (QDQ / QOperator, per-channel / per-tensor weights, uint8 / int8
activations, with `quant_pre_process`, the small graphs quantized too) on the calibration split: accuracy on its images
after the calibration ones, images/s at batch 32 and 256. `--lock FILE` waits until FILE does not exist, creates
it for each timing run and removes it after (a convention for sharing a machine with other timing jobs).
Writes <demo>/int8_ort.json and <demo>/int8_ort.md.
Run: .venv/bin/python benchmarks/int8_ort.py --demo-dir runs/demo [--threads 2 1] [--repeats 5] [--explore]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from dynacnn.experiments.bench import DEMO_PARTS
from dynacnn.export import export_directory, runtime_contender
from dynacnn.export.quantize import CALIBRATION_IMAGES, quantize_export
from dynacnn.report.render import table
from dynacnn.runs import load_run
from dynacnn.runtime import load
from dynacnn.timing import measure, paired_speedup

BATCH_SIZES = (1, 32, 256)
DEMO_MODELS = (
    ("base", "run", "base"),
    ("cpcnn", "cpcnn", "cpcnn"),
    ("mscnn", "mscnn", "mscnn"),
    ("matched", "run", "matched"),
)
MODELS = tuple(name for name, *_ in DEMO_MODELS)
ROUTED = ("cpcnn", "mscnn", "matched")
SETTINGS = {
    "qdq, per-channel, uint8 (default)": {},
    "qdq, per-tensor, uint8": {"per_channel": False},
    "qdq, per-channel, int8 activations": {"activations": "int8"},
    "qoperator, per-channel, uint8": {"quant_format": "qoperator"},
    "qoperator, per-tensor, uint8": {"quant_format": "qoperator", "per_channel": False},
    "qdq, per-channel, uint8, quant_pre_process": {"preprocess": True},
    "qdq, per-channel, uint8, every graph": {"min_macs": 0},
}


def machine() -> dict[str, Any]:
    """Where this ran: CPU model and the vector extensions int8 kernels use, cores, ONNX Runtime version."""
    cpu, flags = platform.processor(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            if key.strip() == "flags":
                flags = set(value.split())
    isa = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"})
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "onnxruntime": ort.__version__}


@contextlib.contextmanager
def timing_lock(path: Path | None) -> Iterator[None]:
    """Wait until `path` does not exist, hold it while timing, remove it after (nothing when `path` is None)."""
    if path is None:
        yield
        return
    while path.exists():
        time.sleep(5)
    path.write_text("int8_ort\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def float_export(demo: Path, name: str, kind: str, source: str) -> Path:
    """`<demo>/export/<name>`, exported (as `dynacnn bench` does) when it holds no export yet."""
    out = demo / "export" / name
    if not (out / "routing.json").is_file():
        export_directory(out, **{kind: demo / source})
    return out


def evaluate(export_dir: Path, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> dict[str, Any]:
    """Top-1, top-5, mean MACs per image (1 thread) and the probabilities (for agreement)."""
    runtime = load(export_dir, threads=1)
    outputs = [runtime.run(images[begin : begin + batch]) for begin in range(0, len(images), batch)]
    probs = np.concatenate([o.probs for o in outputs])
    top5 = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    return {
        "top1": float((probs.argmax(1) == labels).mean()),
        "top5": float((top5 == labels[:, None]).any(1).mean()),
        "macs_per_image": float(np.concatenate([o.macs for o in outputs]).mean()),
        "probs": probs,
    }


def timing(
    exports: dict[str, Path], macs: dict[str, float], images: torch.Tensor, args: argparse.Namespace, threads: int
) -> list[dict[str, Any]]:
    """Every contender (the first is the reference of `measure`) at every batch size, interleaved, under the lock."""
    contenders = [runtime_contender(name, load(path, threads=threads), macs[name]) for name, path in exports.items()]
    with timing_lock(args.lock):
        return measure(contenders, images, args.batch_sizes, args.repeats, args.batch1_images, chunk_batches=10)


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per batch size: int8 over float per model; each routed model over the base of the same precision, its MAC
    speed-up and routing efficiency (wall speed-up / MAC speed-up)."""
    out: dict[str, dict[str, Any]] = {}
    for batch in sorted({int(r["batch_size"]) for r in rows}):
        at = {r["model"]: r for r in rows if r["batch_size"] == batch}
        entry: dict[str, Any] = {
            "int8_over_float": {m: paired_speedup(at[f"{m}/int8"], at[f"{m}/float"])["median"] for m in MODELS}
        }
        for precision in ("float", "int8"):
            base = at[f"base/{precision}"]
            entry[f"vs_base_{precision}"] = {}
            for m in ROUTED:
                pair = paired_speedup(at[f"{m}/{precision}"], base)
                wall, macs = pair["median"], pair["mac_speedup"]
                entry[f"vs_base_{precision}"][m] = {
                    "wall": wall,
                    "macs": macs,
                    "efficiency": pair["routing_efficiency"],
                }
        out[str(batch)] = entry
    return out


def explore(
    demo: Path, calibration: np.ndarray, held: tuple[np.ndarray, np.ndarray], args: argparse.Namespace
) -> list[list[str]]:
    """Every setting of SETTINGS on every model: calibration-split accuracy and images/s at batch 32 and 256."""
    root, exports, macs, accuracy = demo / "export-int8-explore", {}, {}, {}
    for name in MODELS:
        exports[f"{name}/float"] = demo / "export" / name
        for number, (label, options) in enumerate(SETTINGS.items()):
            out = root / str(number) / name
            quantize_export(demo / "export" / name, out, calibration, **options)
            exports[f"{name}/{label}"] = out
    for key, path in exports.items():
        result = evaluate(path, *held)
        accuracy[key], macs[key] = result["top1"], result["macs_per_image"]
    options = argparse.Namespace(**{**vars(args), "batch_sizes": (32, 256)})
    images = torch.from_numpy(held[0][: args.explore_images])
    rows = timing(exports, macs, images, options, args.threads[0])
    at = {b: {r["model"]: r for r in rows if r["batch_size"] == b} for b in (32, 256)}
    return [
        [key, f"{100 * accuracy[key]:.2f}%"]
        + [f"{paired_speedup(at[b][key], at[b][key.split('/')[0] + '/float'])['median']:.2f}x" for b in (32, 256)]
        for key in exports
    ]


def report(result: dict[str, Any]) -> str:
    """The markdown tables: accuracy, then per thread count images/s and ratios."""
    acc = result["accuracy"]
    where = result["machine"]
    lines = [
        f"# int8 (ONNX Runtime static quantization) vs float32\n\n{where['cpu']} ({', '.join(where['isa'])}), "
        f"{where['cores']} cores, ONNX Runtime {where['onnxruntime']}; calibration: the first "
        f"{result['calibration_images']} images of the calibration split; accuracy on the whole test split, 1 thread\n"
    ]
    lines.append(
        table(
            [
                "model",
                "float top-1 / top-5",
                "int8 top-1 / top-5",
                "top-1 agreement",
                "MACs float / int8",
                "quantize s",
            ],
            [
                [
                    m,
                    f"{100 * acc[m + '/float']['top1']:.2f} / {100 * acc[m + '/float']['top5']:.2f}%",
                    f"{100 * acc[m + '/int8']['top1']:.2f} / {100 * acc[m + '/int8']['top5']:.2f}%",
                    f"{100 * acc[m + '/int8']['agreement']:.2f}%",
                    f"{acc[m + '/float']['macs_per_image'] / 1e6:.2f} / {acc[m + '/int8']['macs_per_image'] / 1e6:.2f} M",
                    f"{result['quantization_seconds'][m]:.1f}",
                ]
                for m in MODELS
            ],
        )
    )
    for threads, block in result["timing"].items():
        lines.append(f"\n## {threads} thread(s): images/s, int8 / float, routed vs the base of the same precision\n")
        rows = []
        for batch, entry in block["ratios"].items():
            speed = {r["model"]: r["images_per_s"] for r in block["rows"] if str(r["batch_size"]) == batch}
            for m in MODELS:
                cells = [m, batch, f"{speed[m + '/float']:.0f}", f"{speed[m + '/int8']:.0f}"]
                cells.append(f"{entry['int8_over_float'][m]:.2f}x")
                for precision in ("float", "int8"):
                    vs = entry[f"vs_base_{precision}"].get(m)
                    cells.append(f"{vs['wall']:.2f}x / {vs['macs']:.2f}x ({vs['efficiency']:.2f})" if vs else "")
                rows.append(cells)
        header = ["model", "batch", "float img/s", "int8 img/s", "int8 / float"]
        header += ["float vs base: wall / MACs (eff.)", "int8 vs base: wall / MACs (eff.)"]
        lines.append(table(header, rows))
    if "explore" in result:
        lines.append("\n## Settings (calibration split; images/s over the same model's float, batch 32 / 256)\n")
        lines.append(table(["model / setting", "calib top-1", "batch 32", "batch 256"], result["explore"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, required=True)
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="ONNX Runtime threads, one timing each")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch1-images", type=int, default=500)
    parser.add_argument("--timed-images", type=int, default=10_000, help="test images timed at batch 32 and 256")
    parser.add_argument("--no-timing", action="store_true", help="quantize and measure accuracy only")
    parser.add_argument("--explore", action="store_true", help="compare quantization settings first")
    parser.add_argument("--explore-images", type=int, default=3000)
    parser.add_argument("--lock", type=Path, default=None, help="a lock file other timing jobs respect")
    args = parser.parse_args()
    args.batch_sizes = BATCH_SIZES
    demo = args.demo_dir
    for needed in DEMO_PARTS:
        if not (demo / needed).exists():
            parser.error(f"{demo} has no {needed}; run `dynacnn demo --out {demo}` first")
    torch.set_num_threads(max(args.threads))
    result: dict[str, Any] = {"machine": machine(), "calibration_images": args.calibration_images}
    print(f"machine: {result['machine']}, ONNX Runtime threads {args.threads}")
    splits = load_run(demo / "base").data_spec.load()
    floats = {name: float_export(demo, name, kind, source) for name, kind, source in DEMO_MODELS}
    normalize = load(floats["base"], threads=1).normalize
    calibration = normalize(np.asarray(splits.calib.read_images(0, args.calibration_images)))
    rest = slice(args.calibration_images, None)
    held = normalize(np.asarray(splits.calib.read_images(rest.start))), splits.calib.labels[rest].numpy()
    if args.explore:
        result["explore"] = explore(demo, calibration, held, args)
    exports, seconds, quantization = {}, {}, {}
    for name, path in floats.items():
        start = time.perf_counter()
        spec = quantize_export(path, demo / "export-int8" / name, calibration)
        seconds[name] = time.perf_counter() - start
        quantization[name] = spec["quantization"]
        exports[f"{name}/float"], exports[f"{name}/int8"] = path, demo / "export-int8" / name
    result.update({"quantization_seconds": seconds, "quantization": quantization})
    test_images = normalize(np.asarray(splits.test.read_images(0, len(splits.test))))
    labels = splits.test.labels.numpy()
    accuracy = {key: evaluate(path, test_images, labels) for key, path in exports.items()}
    for name in MODELS:
        float_probs, int8 = accuracy[f"{name}/float"]["probs"], accuracy[f"{name}/int8"]
        int8["agreement"] = float((int8["probs"].argmax(1) == float_probs.argmax(1)).mean())
        int8["max_abs_prob_diff"] = float(np.abs(int8["probs"] - float_probs).max())
    result["accuracy"] = {key: {k: v for k, v in entry.items() if k != "probs"} for key, entry in accuracy.items()}
    result["timing"] = {}
    if not args.no_timing:
        macs = {key: entry["macs_per_image"] for key, entry in accuracy.items()}
        order = [f"{name}/{precision}" for precision in ("float", "int8") for name in MODELS]
        timed = torch.from_numpy(test_images[: args.timed_images])
        for threads in args.threads:
            rows = timing({key: exports[key] for key in order}, macs, timed, args, threads)
            result["timing"][str(threads)] = {"rows": rows, "ratios": ratios(rows)}
    (demo / "int8_ort.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (demo / "int8_ort.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
