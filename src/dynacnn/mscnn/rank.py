"""Prediction rank (§IV): PR statistics per class and stage, P(MC | P_th = L) (Eq. 1-3), and picking L."""

from __future__ import annotations

import torch

from dynacnn.errors import ConfigError


def prediction_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """§IV: position (1 = first) of each image's true class among the sorted class probabilities, per stage (S, B).

    Classes scoring exactly as high as the true class do not push it down.
    """
    truth = logits.gather(2, labels.expand(logits.shape[0], -1).unsqueeze(2))
    return 1 + (logits > truth).sum(2)


def _per_class(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the images of each class of `values` (S, B) -> (S, K), and the class counts (K,)."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).double()
    return values.double() @ onehot, onehot.sum(0)


def rank_statistics(ranks: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fig. 3: mean PR_mu and standard deviation PR_sigma (population) of every class at every stage, (S, K) each."""
    sums, counts = _per_class(ranks, labels, num_classes)
    squares, _ = _per_class(ranks.double() ** 2, labels, num_classes)
    mean = sums / counts.clamp(min=1)
    std = (squares / counts.clamp(min=1) - mean**2).clamp(min=0).sqrt()
    return mean, std


def misclassification_probability(
    ranks: torch.Tensor, labels: torch.Tensor, num_classes: int, prior: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 1-3: P(MC | P_th = L) = sum_c P(c) P(PR(c) > L) for L = 1..K, per stage (S, K); column L-1 is L.

    P(PR(c) > L) is the fraction of class c's images whose rank exceeds L (Eq. 2-3); P(c) defaults to
    the class frequencies of `labels`.
    """
    limits = torch.arange(1, num_classes + 1)
    beyond = (ranks.unsqueeze(2) > limits).double()  # (S, B, K): D(alpha, L) of Eq. 2
    onehot = torch.nn.functional.one_hot(labels, num_classes).double()
    counts = onehot.sum(0)
    per_class = torch.einsum("sbl,bc->slc", beyond, onehot) / counts.clamp(min=1)  # Eq. 3
    if prior is None:
        prior = counts / counts.sum()
    return (per_class * prior.double()).sum(2)


def pick_pruning_thresholds(p_mc: torch.Tensor, target: float) -> tuple[int, ...]:
    """§IV: per stage, the smallest L whose P(MC | P_th = L) <= target (misclassification probability)."""
    if not 0 <= target <= 1:
        raise ConfigError(f"target misclassification probability {target} must be in [0, 1]")
    within = p_mc <= target + 1e-12
    return tuple(int(row.nonzero()[0]) + 1 for row in within)
