"""The speed targets (docs/results.md) checked against one benchmark's paired timings, per runtime (PyTorch and
ONNX Runtime).

Every ratio pairs two contenders of the same `measure` call in the same runtime: the CP-CNN and the MS-CNN against
that runtime's base, and the MS-CNN also against its own full network (every stage, every class).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dynacnn.timing import paired_speedup

RUNTIMES = (("PyTorch", ""), ("ONNX Runtime", "-ort"))
TARGETS = (
    # (model, reference, batch size, measure, target)
    ("cpcnn", "base", 256, "speed-up", 1.6),
    ("cpcnn", "base", 32, "speed-up", 1.3),
    ("cpcnn", "base", 256, "routing efficiency", 0.75),
    ("mscnn", "mscnn-full", 256, "speed-up", 2.5),
    ("mscnn", "mscnn-full", 32, "speed-up", 1.5),
    ("mscnn", "base", 256, "routing efficiency", 0.75),
)


def speed_targets(
    rows: Sequence[dict[str, Any]], runtimes: Sequence[tuple[str, str]] = RUNTIMES
) -> list[dict[str, Any]]:
    """One entry per runtime (name, contender-name suffix) and target whose two contenders were timed: measured
    median, target, met."""
    by_key = {(row["model"], row["batch_size"]): row for row in rows}
    checked = []
    for runtime, suffix in runtimes:
        for model, reference, batch, what, target in TARGETS:
            pair = by_key.get((model + suffix, batch)), by_key.get((reference + suffix, batch))
            if None in pair:
                continue
            ratio = paired_speedup(*pair)
            measured = ratio["median"] if what == "speed-up" else ratio["routing_efficiency"]
            checked.append(
                {
                    "runtime": runtime,
                    "model": model,
                    "reference": reference,
                    "batch_size": batch,
                    "measure": what,
                    "measured": measured,
                    "target": target,
                    "met": measured >= target,
                }
            )
    return checked
