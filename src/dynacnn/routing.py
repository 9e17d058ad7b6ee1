"""Alg. 1 / Eq. 1 (minimum activation set) and Eq. 3 (weights) of CP-CNN for a single image, in plain Python.

At batch 1 the cost of routing is the number of numpy or torch calls, not the arithmetic on G values: the vectorised
policies (`dynacnn.cpcnn.policy.activate`, `dynacnn.runtime.router.activate`) take 24-80 us, this 6 us. The
PyTorch model and the ONNX Runtime router both use it for a one-image batch on the CPU.

Same semantics as the vectorised policies: stable descending sorts (Python's sort is stable with `reverse=True`,
so ties keep the lower index first), each partial sum accumulated in float64 and rounded to the probabilities'
dtype before the image's own probability is taken off (as PyTorch's CPU `cumsum` and `cumulative_before` do), tau
compared in that dtype. The active set is the same; the weights are divided in float64 and rounded once, so they
may differ from the vectorised float32 ones in the last bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def activate_one(
    v: Sequence[float],
    confusion: Sequence[Sequence[float]],
    tau: float,
    rule: str,
    weighting: str,
    dtype: type[np.floating] = np.float32,
) -> tuple[list[bool], list[float]] | None:
    """Active hyper-classes (G,) and their weights (G,) for one image's clustifier probabilities `v`, the confusion
    matrix (rows true, columns predicted) given in `dtype`; None when `v` holds NaN, which has no order (the
    caller's vectorised policy decides then)."""
    if any(value != value for value in v):
        return None
    groups = len(v)
    order = sorted(range(groups), key=v.__getitem__, reverse=True)
    column = [row[order[0]] for row in confusion]  # confusion[:, argmax]
    if rule != "top":  # the argmax first, then by decreasing confusion[:, argmax], ties kept in v's order
        order = order[:1] + sorted(order[1:], key=column.__getitem__, reverse=True)
    active = [False] * groups
    running, limit = 0.0, dtype(tau)
    for group in order:
        running += v[group]
        active[group] = tau >= 1 or dtype(float(dtype(running)) - v[group]) <= limit
    scores = column if weighting == "eq3" else v
    score = [scores[group] if active[group] else 0.0 for group in range(groups)]
    total = sum(score)
    if total > 0:
        tiny = float(np.finfo(dtype).tiny)
        return active, [value / max(total, tiny) for value in score]
    return active, [1.0 / sum(active) if is_active else 0.0 for is_active in active]  # no score: equal weights
