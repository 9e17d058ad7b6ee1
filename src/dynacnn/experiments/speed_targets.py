"""The speed targets (docs/results.md) checked against one benchmark's paired timings, per runtime (PyTorch and
ONNX Runtime).

Every ratio pairs two contenders of the same `measure` call in the same runtime: the CP-CNN and the MS-CNN against
that runtime's base, and the MS-CNN also against its own full network (every stage, every class). Beside each
routing efficiency stands the same ratio for the compute-matched static ResNet (`STATIC_REFERENCE`, no routing at
all) when it was timed: what merely running fewer MACs in narrower layers achieves on this machine.
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
STATIC_REFERENCE = "matched"
"""The demo's compute-matched static ResNet: the routing efficiency a network with no routing reaches."""


def speed_targets(
    rows: Sequence[dict[str, Any]], runtimes: Sequence[tuple[str, str]] = RUNTIMES
) -> list[dict[str, Any]]:
    """One entry per runtime (name, contender-name suffix) and target whose two contenders were timed: measured
    median, target, met, and for a routing efficiency the static ResNet's against the same reference (else None)."""
    by_key = {(row["model"], row["batch_size"]): row for row in rows}
    checked = []
    for runtime, suffix in runtimes:
        for model, reference, batch, what, target in TARGETS:
            pair = by_key.get((model + suffix, batch)), by_key.get((reference + suffix, batch))
            if None in pair:
                continue
            ratio = paired_speedup(*pair)
            measured = ratio["median"] if what == "speed-up" else ratio["routing_efficiency"]
            static = by_key.get((STATIC_REFERENCE + suffix, batch))
            static_efficiency = None
            if what == "routing efficiency" and static is not None:
                static_efficiency = paired_speedup(static, pair[1])["routing_efficiency"]
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
                    "static_efficiency": static_efficiency,
                }
            )
    return checked
