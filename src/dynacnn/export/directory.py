"""`dynacnn export`: a CP-CNN, MS-CNN or trained-run directory to an export directory (ONNX parts + routing.json).

The input shape, normalisation and class names come from the dataset the model was trained on (its recorded data
spec, loaded once to read them), so the runtime can normalise raw images itself; routing.json records the data
spec too, which `dynacnn run` uses to find the test split.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dynacnn.cpcnn.serialize import load_cpcnn
from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.export.cpcnn import export_cpcnn
from dynacnn.export.mscnn import export_mscnn
from dynacnn.export.plain import export_plain
from dynacnn.export.spec import write_spec
from dynacnn.io import read_json
from dynacnn.mscnn.serialize import load_mscnn
from dynacnn.runs import DataSpec, load_run


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
) -> dict[str, Any]:
    """Export the model of exactly one of `cpcnn`, `mscnn` (its `mscnn_policy`: "chosen" or "full") or `run` (a
    static model) to `out`."""
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


def stats(info: Any) -> dict[str, Any]:
    """mean / std keyword arguments from a `DatasetInfo` (None: not recorded)."""
    return {"mean": None, "std": None} if info is None else {"mean": list(info.mean), "std": list(info.std)}
