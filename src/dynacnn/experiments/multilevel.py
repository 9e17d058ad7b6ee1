"""`dynacnn cpcnn --levels 2`: the one-level conversion's steps (`cpcnn.pipeline`), then a second level in the
hyper-classes chosen on calibration (`cpcnn.multilevel.add_second_level`), both routed once on the test split.

Writes, next to the one-level run's files, `two_level/` (the nested model: `load_cpcnn(out / "two_level")`),
`multilevel.json` (settings, the children's choices, calibration and test figures of both) and `multilevel.md`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dynacnn.cpcnn import pipeline
from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.cpcnn.levels import next_split
from dynacnn.cpcnn.multilevel import MultiLevelConfig, add_second_level
from dynacnn.cpcnn.serialize import save_cpcnn
from dynacnn.io import write_json
from dynacnn.report.multilevel_report import write_multilevel_report

NOTES = [
    "accuracies are fractions in [0, 1]; MACs are per image, counted by torch.utils.flop_counter over what ran",
    "sub-hyper-classes, M', the sub-heads and tau' are chosen on the calibration split with the level-1 tau fixed; "
    "the test split is routed once for each model",
]


def convert_multilevel(
    backbone: nn.Module,
    data: Any,
    out_dir: str | Path,
    config: CPCNNConfig,
    levels: MultiLevelConfig,
    *,
    device: str = "auto",
    resume: bool = False,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A one-level CP-CNN in `out_dir` (as `pipeline.convert`), then its two-level version in `out_dir/two_level`;
    returns multilevel.json's dict."""
    levels.validate()
    if config.split is not None:
        next_split(config.split)  # a second level needs a stage after S': refused before any work
    conv = pipeline.prepare(backbone, data, out_dir, config, device, resume, spec)
    for step in pipeline.STEPS:
        step(conv)
    model, result = add_second_level(conv, levels)
    meta = {
        "backbone": conv.spec,
        "split": conv.split,
        "clustifier": conv.clustifier_name,
        "heads": result["heads"],
        "class_names": list(data.info.class_names),
        "memory_format": conv.format_name,
    }
    save_cpcnn(model, conv.out / "two_level", meta)
    result = {**result, "dataset": data.info.name, "cpcnn_settings": config.to_dict(), "notes": NOTES}
    write_json(conv.out / "multilevel.json", result)
    write_multilevel_report(conv.out, result)
    return result
