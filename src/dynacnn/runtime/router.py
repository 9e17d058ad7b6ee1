"""Alg. 1 / Eq. 1 (minimum activation set) and Eq. 3 (weights) of CP-CNN in numpy, vectorised over the batch.

The same arithmetic as `dynacnn.cpcnn.policy.activate`, in the same precision: float32 probabilities, the
confusion matrix cast to float32, stable descending sorts (ties keep the lower index first) and cumulative
sums accumulated in float64 as PyTorch's CPU `cumsum` does, so activation sets agree image for image.
"""

from __future__ import annotations

import numpy as np

from dynacnn import routing

RULES = ("confusion", "top")
WEIGHTINGS = ("eq3", "clustifier")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32."""
    logits = logits.astype(np.float32, copy=False)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def descending(values: np.ndarray) -> np.ndarray:
    """Stable descending argsort along the last axis (equal values keep their order)."""
    return np.argsort(-values, axis=-1, kind="stable")


def cumulative_before(ordered: np.ndarray) -> np.ndarray:
    """Sum of the values before each position (float32 results of a float64 running sum, like torch's CPU cumsum)."""
    total = np.cumsum(ordered, axis=1, dtype=np.float64).astype(ordered.dtype)
    return total - ordered


def activate(
    v: np.ndarray, confusion: np.ndarray, tau: float, rule: str, weighting: str
) -> tuple[np.ndarray, np.ndarray]:
    """Alg. 1 / Eq. 1 active sets (B, G) bool and Eq. 3 (or clustifier) weights (B, G) for probabilities v.

    Rows are indexed with one (B, 1) row index rather than `take_along_axis`: at batch 1 the numpy calls, not the
    arithmetic, are the cost (23 against 40 microseconds for two hyper-classes)."""
    confusion = confusion.astype(v.dtype, copy=False)
    rows = np.arange(len(v))[:, None]
    order = descending(v)  # Alg. 1: the order in which hyper-classes join the set, argmax first
    if rule != "top":  # then by decreasing confusion[:, argmax], ties kept in v's order
        predicted = order[:, 0]
        score = confusion.T[predicted]  # row b: confusion[:, argmax_b] (a copy)
        score[rows[:, 0], predicted] = np.inf
        order = order[rows, descending(score[rows, order])]
    if tau >= 1:
        active = np.ones(v.shape, dtype=bool)
    else:
        in_set = cumulative_before(v[rows, order]) <= np.float32(tau)
        in_set[:, 0] = True
        active = np.empty(v.shape, dtype=bool)
        active[rows, order] = in_set
    score = np.where(active, confusion.T[order[:, 0]] if weighting == "eq3" else v, np.float32(0))
    total = score.sum(axis=1, keepdims=True)
    weights = score / np.maximum(total, np.finfo(v.dtype).tiny)
    if not (total > 0).all():  # no score on the active set: equal weights
        uniform = active.astype(v.dtype) / active.sum(axis=1, keepdims=True).astype(v.dtype)
        weights = np.where(total > 0, weights, uniform)
    return active, weights.astype(v.dtype, copy=False)


def activate_one(
    v: np.ndarray, confusion: np.ndarray, tau: float, rule: str, weighting: str
) -> tuple[np.ndarray, np.ndarray]:
    """`activate` for a batch of one image (1, G) in plain Python (`dynacnn.routing.activate_one`): the same active
    set, weights within float32 rounding. A row with NaN, which has no order, goes to `activate`."""
    if len(v) == 1:
        result = routing.activate_one(
            v[0].tolist(), confusion.astype(v.dtype).tolist(), tau, rule, weighting, v.dtype.type
        )
        if result is not None:
            return np.asarray([result[0]]), np.asarray([result[1]], dtype=v.dtype)
    return activate(v, confusion, tau, rule, weighting)
