"""Alg. 1 / Eq. 1 (minimum activation set) and Eq. 3 (weights) of CP-CNN in numpy, vectorised over the batch.

The same arithmetic as `dynacnn.cpcnn.policy.activate`, in the same precision: float32 probabilities, the
confusion matrix cast to float32, stable descending sorts (ties keep the lower index first) and cumulative
sums accumulated in float64 as PyTorch's CPU `cumsum` does, so activation sets agree image for image.
"""

from __future__ import annotations

import numpy as np

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


def activation_order(v: np.ndarray, confusion: np.ndarray, rule: str) -> np.ndarray:
    """Alg. 1: the (B, G) order in which hyper-classes join the activation set, argmax first."""
    by_v = descending(v)
    if rule == "top":
        return by_v
    predicted = by_v[:, 0]
    score = confusion.T[predicted].copy()  # row b: confusion[:, argmax_b]
    score[np.arange(len(v)), predicted] = np.inf
    in_v_order = np.take_along_axis(score, by_v, axis=1)
    return np.take_along_axis(by_v, descending(in_v_order), axis=1)


def activate(
    v: np.ndarray, confusion: np.ndarray, tau: float, rule: str, weighting: str
) -> tuple[np.ndarray, np.ndarray]:
    """Alg. 1 / Eq. 1 active sets (B, G) bool and Eq. 3 (or clustifier) weights (B, G) for probabilities v."""
    confusion = confusion.astype(v.dtype)
    order = activation_order(v, confusion, rule)
    if tau >= 1:
        active = np.ones(v.shape, dtype=bool)
    else:
        before = cumulative_before(np.take_along_axis(v, order, axis=1))
        in_set = before <= np.float32(tau)
        in_set[:, 0] = True
        active = np.zeros(v.shape, dtype=bool)
        np.put_along_axis(active, order, in_set, axis=1)
    score = confusion.T[order[:, 0]] if weighting == "eq3" else v
    score = np.where(active, score, np.float32(0))
    total = score.sum(axis=1, keepdims=True)
    uniform = active.astype(v.dtype) / active.sum(axis=1, keepdims=True).astype(v.dtype)
    safe = np.maximum(total, np.finfo(v.dtype).tiny)
    return active, np.where(total > 0, score / safe, uniform).astype(v.dtype)
