"""`dynacnn export`: a CP-CNN, MS-CNN or trained-run directory to an export directory (ONNX parts + routing.json).

The input shape, normalisation and class names come from the dataset the model was trained on (its recorded data
spec, loaded once to read them), so the runtime can normalise raw images itself; routing.json records the data
spec too, which `dynacnn run` uses to find the test split.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from dynacnn.cpcnn.serialize import load_cpcnn
from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.export.cpcnn import export_cpcnn
from dynacnn.export.mscnn import export_mscnn
from dynacnn.export.plain import export_plain
from dynacnn.export.quantize import CALIBRATION_IMAGES, quantize_export
from dynacnn.export.spec import write_spec
from dynacnn.io import read_json
from dynacnn.mscnn.serialize import load_mscnn
from dynacnn.runs import DataSpec, load_run
from dynacnn.runtime.spec import normalize


@functools.cache
def _info(data_json: str) -> Any:
    return DataSpec(**json.loads(data_json)).load().info


def dataset_info(data: Mapping[str, Any] | None, source: Path) -> Any:
    """The `DatasetInfo` of a recorded data spec (None when the source recorded none)."""
    if data is None:
        return None
    try:
        return _info(json.dumps(dict(data), sort_keys=True))
    except TypeError as exc:
        raise CheckpointError(f"{source} records an unreadable data spec ({exc}); re-run it") from None


def export_directory(
    out: str | Path,
    *,
    cpcnn: str | Path | None = None,
    mscnn: str | Path | None = None,
    run: str | Path | None = None,
    variants: str = "policy",
    mscnn_policy: str = "chosen",
    int8: bool = False,
) -> dict[str, Any]:
    """Export the model of exactly one of `cpcnn`, `mscnn` (its `mscnn_policy`: "chosen" or "full") or `run` (a
    static model) to `out`; `int8`: its large graphs quantized (`quantize_export`), calibrated on the first
    `CALIBRATION_IMAGES` images of the calibration split of the data the model was trained on."""
    if int8:
        return export_int8(out, cpcnn=cpcnn, mscnn=mscnn, run=run, variants=variants, mscnn_policy=mscnn_policy)
    given = [
        (kind, Path(path)) for kind, path in (("cpcnn", cpcnn), ("mscnn", mscnn), ("run", run)) if path is not None
    ]
    if len(given) != 1:
        raise ConfigError("give exactly one of --cpcnn DIR, --mscnn DIR or --run DIR to export")
    kind, source = given[0]
    if kind == "cpcnn":
        model = load_cpcnn(source, "cpu")
        meta = read_json(source / "cpcnn_model.json")
        data = meta.get("backbone", {}).get("data")
        info = dataset_info(data, source)
        names = meta.get("class_names") or (info.class_names if info else None)
        spec = export_cpcnn(model, out, **stats(info), class_names=names)
    elif kind == "mscnn":
        model = load_mscnn(source, "cpu", mscnn_policy)
        data = read_json(source / "model.json").get("data")
        info = dataset_info(data, source)
        if info is None:
            raise CheckpointError(f"{source}/model.json records no data spec (needed for the input shape); re-run it")
        spec = export_mscnn(
            model, out, info.input_shape, **stats(info), class_names=info.class_names, variants=variants
        )
    else:
        trained = load_run(source, "cpu")
        data = json.loads(json.dumps(asdict(trained.data_spec)))
        info = dataset_info(data, source)
        spec = export_plain(trained.model, out, info.input_shape, **stats(info), class_names=info.class_names)
    spec["source"] = {"kind": kind, "dir": str(source), "data": data}
    return write_spec(Path(out), spec)


def export_int8(out: str | Path, **sources: Any) -> dict[str, Any]:
    """The float32 export of `sources` (made in a scratch folder beside `out`, then removed) quantized into `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-float-") as scratch:
        spec = export_directory(scratch, **sources)
        return quantize_export(scratch, out, calibration_images(spec, scratch))


def calibration_images(spec: Mapping[str, Any], export_dir: str | Path) -> np.ndarray:
    """The first `CALIBRATION_IMAGES` images of the calibration split of an export's recorded data, normalised."""
    data = spec["source"].get("data")
    if data is None or spec.get("mean") is None:
        raise ConfigError(f"{export_dir} records no dataset; int8 needs its calibration split: export without --int8")
    calib = DataSpec(**data).load().calib
    raw = np.asarray(calib.read_images(0, min(CALIBRATION_IMAGES, len(calib))))
    return normalize(raw, spec["mean"], spec["std"])


def stats(info: Any) -> dict[str, Any]:
    """mean / std keyword arguments from a `DatasetInfo` (None: not recorded)."""
    return {"mean": None, "std": None} if info is None else {"mean": list(info.mean), "std": list(info.std)}
