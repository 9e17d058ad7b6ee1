"""routing.json as the exporters write it: the header every method shares, and writing it atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynacnn.errors import ConfigError
from dynacnn.io import ensure_dir, write_json
from dynacnn.runtime.spec import FORMAT, FORMAT_VERSION, ROUTING_FILE


def header(
    method: str,
    num_classes: int,
    input_shape: Sequence[int],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    class_names: Sequence[str] | None,
) -> dict[str, Any]:
    """The fields every routing.json holds: format, version, method, classes, input shape, normalisation."""
    shape = [int(d) for d in input_shape]
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input_shape must be (C, H, W) with positive sizes, got {list(input_shape)}")
    if (mean is None) != (std is None) or (mean is not None and (len(mean) != shape[0] or len(std) != shape[0])):
        raise ConfigError(f"give both mean and std, one value per input channel ({shape[0]}), or neither")
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for {num_classes} classes")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method,
        "num_classes": int(num_classes),
        "input_shape": shape,
        "mean": None if mean is None else [float(m) for m in mean],
        "std": None if std is None else [float(s) for s in std],
        "class_names": None if class_names is None else [str(n) for n in class_names],
    }


def output_dir(out: str | Path) -> Path:
    """The export directory, created; refuses a non-empty directory that holds no earlier export."""
    path = Path(out)
    if path.exists() and any(path.iterdir()) and not (path / ROUTING_FILE).exists():
        raise ConfigError(f"{path} is not empty and holds no export; choose a new or empty --out directory")
    return ensure_dir(path)


def write_spec(out: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Write routing.json (atomically) and return the spec."""
    write_json(out / ROUTING_FILE, spec)
    return spec
