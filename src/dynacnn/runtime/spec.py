"""routing.json: the format marker and version, reading it with one-line errors, and the graph files it may name.

An export directory holds `routing.json` and the ONNX graphs it names, nothing else: loading reads JSON and
ONNX protobufs only and never imports or unpickles anything from the directory. A graph name must be a plain
`*.onnx` file name inside the directory (no path separators, no `..`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dynacnn.errors import CheckpointError, ConfigError

FORMAT = "dynacnn-routing"
FORMAT_VERSION = 1
ROUTING_FILE = "routing.json"
METHODS = ("cpcnn", "mscnn", "plain")
REEXPORT = "re-export it with `dynacnn export`"

T = TypeVar("T")


def read_spec(export_dir: str | Path) -> dict[str, Any]:
    """routing.json of `export_dir`, checked for the format marker, this version and a known method."""
    path = Path(export_dir) / ROUTING_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{export_dir} holds no exported model (no {ROUTING_FILE}); make one with `dynacnn export`"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); {REEXPORT}") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise CheckpointError(f'{path} is not a dynacnn routing spec (no "format": "{FORMAT}"); {REEXPORT}')
    if spec.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {spec.get('format_version')!r} but this dynacnn reads version "
            f"{FORMAT_VERSION}; {REEXPORT}"
        )
    if spec.get("method") not in METHODS:
        raise CheckpointError(
            f"{path}: unknown method {spec.get('method')!r} (one of {', '.join(METHODS)}); {REEXPORT}"
        )
    return spec


def field(path: Path, read: Callable[[], T]) -> T:
    """`read()` with a missing key or a value of the wrong type turned into one line naming routing.json."""
    try:
        return read()
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path / ROUTING_FILE} is incomplete or malformed ({exc!r}); {REEXPORT}") from None


def graph_path(export_dir: Path, name: Any) -> Path:
    """The graph file `name` of `export_dir`; refuses anything but a plain `*.onnx` file name."""
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".onnx") or name.startswith("."):
        raise CheckpointError(f"{export_dir / ROUTING_FILE} names graph {name!r}, not a plain *.onnx file; {REEXPORT}")
    return export_dir / name


def check_classes(path: Path, members: Sequence[Sequence[int]], num_classes: int) -> list[np.ndarray]:
    """Hyper-class member lists that partition 0..K-1, as int64 arrays."""
    flat = sorted(int(c) for group in members for c in group)
    if not members or any(len(group) == 0 for group in members) or flat != list(range(num_classes)):
        raise CheckpointError(
            f"{path / ROUTING_FILE}: the hyper-classes do not partition the {num_classes} classes; {REEXPORT}"
        )
    return [np.asarray(group, dtype=np.int64) for group in members]


def input_batch(x: Any, input_shape: Sequence[int]) -> np.ndarray:
    """A float32, C-contiguous (B, C, H, W) batch of normalised images of the exported input shape."""
    array = np.asarray(x)
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(input_shape) or not np.issubdtype(array.dtype, np.floating):
        raise ConfigError(
            f"expected normalised float images of shape (B, {', '.join(map(str, input_shape))}), got "
            f"{array.dtype} {tuple(array.shape)}; uint8 images go through `normalize` first"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def normalize(images: Any, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """uint8 (B, C, H, W) -> float32 `(x / 255 - mean) / std`, with the statistics the model was trained with."""
    array = np.asarray(images)
    if mean is None or std is None:
        raise ConfigError("this export records no mean/std; normalise the images as the model was trained")
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] != len(mean):
        raise ConfigError(f"normalize expects uint8 images (B, {len(mean)}, H, W), got {array.dtype} {array.shape}")
    shape = (1, -1, 1, 1)
    mean_array = np.asarray(mean, dtype=np.float32).reshape(shape)
    std_array = np.asarray(std, dtype=np.float32).reshape(shape)
    return ((array.astype(np.float32) / np.float32(255) - mean_array) / std_array).astype(np.float32)


def as_mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is a JSON object (else a TypeError for `field`)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


class ExportedModel:
    """What every exported model's runtime shares: its classes, input shape and normalisation (routing.json)."""

    def read_common(self, spec: Mapping[str, Any]) -> None:
        """Class count, input shape, mean / std and class names from routing.json."""
        self.num_classes = int(spec["num_classes"])
        self.input_shape = tuple(int(d) for d in spec["input_shape"])
        self.mean, self.std = spec.get("mean"), spec.get("std")
        self.class_names = spec.get("class_names")

    def normalize(self, images: Any) -> np.ndarray:
        """uint8 (B, C, H, W) -> the normalised float32 batch `run` takes (the training mean/std)."""
        return normalize(images, self.mean, self.std)
