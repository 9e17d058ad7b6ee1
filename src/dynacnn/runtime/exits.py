"""MS-CNN run-time policies in numpy, vectorised over the batch: TP (Alg. 1), CAP_FC (Alg. 2), PTHP (Alg. 4) and
CAP_CONV's filter vote (Alg. 3), step for step as `dynacnn.mscnn.policies` and `dynacnn.mscnn.cap_conv` compute
them (float32 probabilities, stable descending sorts, float64 running sums, float64 vote scores)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynacnn.runtime.router import cumulative_before, descending

KINDS = ("full", "TP", "CAP_FC", "PTHP", "CAP_CONV")
FC_ROWS = ("image", "batch")


@dataclass(frozen=True)
class ExitPolicy:
    """One policy as routing.json records it; None disables a part (d_ct: exits, p_th: CAP_FC, s_th: PTHP)."""

    kind: str
    num_stages: int
    d_ct: tuple[float, ...] | None = None
    top_c: int = 5
    p_th: tuple[int, ...] | None = None
    s_th: tuple[float, ...] | None = None
    stop_size: int = 0
    fc_rows: str = "image"
    rm: int = 0
    smart: bool = True

    @classmethod
    def from_spec(cls, block: Mapping[str, Any], num_stages: int, num_classes: int) -> ExitPolicy:
        """Read and range-check a policy block (raises ValueError on a bad one)."""

        def floats(name: str) -> tuple[float, ...] | None:
            return None if block.get(name) is None else tuple(float(v) for v in block[name])

        p_th = None if block.get("p_th") is None else tuple(int(v) for v in block["p_th"])
        policy = cls(
            str(block["kind"]),
            num_stages,
            floats("d_ct"),
            int(block.get("top_c", 5)),
            p_th,
            floats("s_th"),
            int(block.get("stop_size", 0)),
            str(block.get("fc_rows", "image")),
            int(block.get("rm", 0)),
            bool(block.get("smart", True)),
        )
        if policy.kind not in KINDS or policy.fc_rows not in FC_ROWS:
            raise ValueError(f"policy {policy.kind!r} / fc_rows {policy.fc_rows!r} is not one of {KINDS} / {FC_ROWS}")
        for name, vector in (("d_ct", policy.d_ct), ("p_th", policy.p_th), ("s_th", policy.s_th)):
            if vector is not None and len(vector) != num_stages - 1:
                raise ValueError(f"{name} needs {num_stages - 1} values (stages 1..N-1), got {len(vector)}")
        if policy.p_th is not None and not all(1 <= p <= num_classes for p in policy.p_th):
            raise ValueError(f"p_th values must be in 1..{num_classes}")
        if not 1 <= policy.top_c <= num_classes or not 0 <= policy.stop_size < num_classes:
            raise ValueError(f"top_c must be in 1..{num_classes} and stop_size in 0..{num_classes - 1}")
        if policy.kind == "CAP_CONV" and (policy.p_th is None or policy.rm < 0):
            raise ValueError("CAP_CONV needs p_th and rm >= 0")
        return policy

    @property
    def prunes_rows(self) -> bool:
        """Whether later stages may compute only some rows of their last FC layer."""
        return self.kind != "CAP_CONV" and (self.p_th is not None or self.s_th is not None)

    def step(self, stage: int, logits: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One stage's rule (`Policy.step`): probabilities, exit now (B,), class mask for the next stage."""
        probs = masked_softmax(logits, mask)
        if stage == self.num_stages - 1:
            return probs, np.ones(len(probs), dtype=bool), mask
        leave = np.zeros(len(probs), dtype=bool)
        if self.d_ct is not None:
            leave = confidence(probs, self.top_c) > np.float32(self.d_ct[stage])
        if self.p_th is not None:
            mask = keep_top(probs, mask, self.p_th[stage])
        if self.s_th is not None:
            mask = keep_cumulative(probs, mask, self.s_th[stage])
            leave = leave | (mask.sum(axis=1) <= self.stop_size)
        return probs, leave, mask


def masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the kept classes only; pruned classes get probability 0."""
    masked = np.where(mask, logits.astype(np.float32, copy=False), np.float32(-np.inf))
    shifted = np.exp(masked - masked.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def confidence(probs: np.ndarray, top_c: int) -> np.ndarray:
    """Alg. 1 line 4: the sum of the top-C probabilities, at most 1."""
    top = -np.sort(-probs, axis=1)[:, :top_c]
    return np.minimum(top.sum(axis=1), np.float32(1))


def keep_top(probs: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """Alg. 2 line 4: the `count` most probable kept classes."""
    order = descending(np.where(mask, probs, np.float32(-1)))
    chosen = np.zeros_like(mask)
    np.put_along_axis(chosen, order[:, :count], True, axis=1)
    return chosen & mask


def keep_cumulative(probs: np.ndarray, mask: np.ndarray, s_th: float) -> np.ndarray:
    """Alg. 4 lines 7-11: the fewest most probable kept labels whose probabilities sum to at least S_th."""
    scores = np.where(mask, probs, np.float32(-1))
    order = descending(scores)
    ordered = np.maximum(np.take_along_axis(scores, order, axis=1), np.float32(0))
    take = cumulative_before(ordered) < np.float32(s_th)
    take[:, 0] = True
    chosen = np.zeros_like(mask)
    np.put_along_axis(chosen, order, take, axis=1)
    return chosen & mask


def filter_ranks(order: np.ndarray) -> np.ndarray:
    """rank[c, f]: position of filter f in class c's order (least important first), as float64."""
    classes, filters = order.shape
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(filters), order.shape), axis=1)
    return rank.astype(np.float64)


def majority_filters(probs: np.ndarray, rank: np.ndarray, p_th: int, rm: int) -> np.ndarray:
    """Alg. 3 lines 6-9: per image, the rm filters most often among the rm least important of its top-P_th classes
    (ties: lower summed rank, then lower index), sorted (B, rm)."""
    filters = rank.shape[1]
    top = descending(probs)[:, :p_th]
    ranks = rank[top]  # (B, P_th, F)
    votes, rank_sum = (ranks < rm).sum(axis=1), ranks.sum(axis=1)
    score = votes * float(p_th * filters + 1) - rank_sum
    return np.sort(descending(score)[:, :rm], axis=1)


def kept_filters(removed: np.ndarray, filters: int) -> np.ndarray:
    """The filters not in `removed` (B, rm), ascending (B, F - rm)."""
    drop = np.zeros((len(removed), filters), dtype=bool)
    np.put_along_axis(drop, removed, True, axis=1)
    return np.nonzero(~drop)[1].reshape(len(removed), filters - removed.shape[1])


def filter_order_arrays(orders: Sequence[Any], num_classes: int, filters: Sequence[int]) -> list[np.ndarray | None]:
    """Per stage, a (K, F) permutation of each row (None for stage 1, which CAP_CONV does not prune)."""
    arrays: list[np.ndarray | None] = [None]
    for stage in range(1, len(filters)):
        order = np.asarray(orders[stage], dtype=np.int64)
        if (
            order.shape != (num_classes, filters[stage])
            or not (np.sort(order, axis=1) == np.arange(filters[stage])).all()
        ):
            raise ValueError(f"stage {stage + 1}'s filter order must rank all {filters[stage]} filters for every class")
        arrays.append(order)
    return arrays
