"""Run-time policies TP (Alg. 1), CAP_FC (Alg. 2) and PTHP (Alg. 4) as pure functions over per-stage logits.

A `Policy` holds validated settings; `Policy.step` is the per-stage rule, vectorised over a batch.
`simulate` applies it to cached logits of every stage for every image (for cheap sweeps); the executor
in `dynacnn.mscnn.execute` applies the same `step` to the sub-batch still running, so both agree.

Semantics shared by both paths:
- Class pruning keeps a boolean mask (B, K) of the classes whose last-FC row a stage computes; the
  stage's probabilities are the softmax over its kept logits, and pruned classes get probability 0.
  Masks only shrink: stage i+1 chooses among the classes stage i computed (Alg. 2's C_L <- C_L[1:P_th]).
- Exit (Alg. 1): after stage i < N, an image leaves when the sum of its top-C probabilities > D_ct[i].
  The last stage always classifies what is left.
- PTHP selection (Alg. 4): the smallest set of kept labels whose cumulative probability reaches
  S_th[i] goes on; if that set has at most `stop_size` labels (the paper's "5 or fewer", tied to C
  by default) the image terminates at stage i, since more stages cannot change its top-C set.
  With 10 classes and C = 5 this stops images once half the labels hold S_th of the probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynacnn.errors import ConfigError

KINDS = ("full", "TP", "CAP_FC", "PTHP")


@dataclass(frozen=True)
class Policy:
    """Settings of one policy; None disables that part (d_ct: exits, p_th: CAP_FC, s_th: PTHP selection)."""

    kind: str
    num_stages: int
    num_classes: int
    d_ct: tuple[float, ...] | None = None
    top_c: int = 5
    p_th: tuple[int, ...] | None = None
    s_th: tuple[float, ...] | None = None
    stop_size: int = 0

    def __post_init__(self) -> None:
        """Refuse vectors of the wrong length and out-of-range values."""
        n, k = self.num_stages - 1, self.num_classes
        if self.kind not in KINDS:
            raise ConfigError(f"unknown policy {self.kind!r}; use one of {', '.join(KINDS)}")
        if not 1 <= self.top_c <= k:
            raise ConfigError(f"top-C {self.top_c} must be in 1..{k} (the number of classes)")
        if not 0 <= self.stop_size < k:
            raise ConfigError(f"stop_size {self.stop_size} must be in 0..{k - 1}")
        for name, vector in (("D_ct", self.d_ct), ("P_th", self.p_th), ("S_th", self.s_th)):
            if vector is not None and len(vector) != n:
                raise ConfigError(f"{name} needs one value per stage 1..{n} ({n} values), got {len(vector)}")
        if self.p_th is not None and not all(isinstance(p, int) and 1 <= p <= k for p in self.p_th):
            raise ConfigError(f"P_th values must be integers in 1..{k} (the number of classes), got {list(self.p_th)}")
        if self.s_th is not None and not all(0 <= s <= 1 for s in self.s_th):
            raise ConfigError(f"S_th values must be in [0, 1], got {list(self.s_th)}")

    def settings(self) -> dict:
        """JSON-ready settings (only the parts in use)."""
        out: dict = {}
        if self.d_ct is not None:
            out.update(d_ct=list(self.d_ct), top_c=self.top_c)
        if self.p_th is not None:
            out["p_th"] = list(self.p_th)
        if self.s_th is not None:
            out.update(s_th=list(self.s_th), stop_size=self.stop_size)
        return out

    def step(
        self, stage: int, logits: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One stage's rule: (probabilities, exit now (B,), class mask for the next stage)."""
        probs = masked_softmax(logits, mask)
        if stage == self.num_stages - 1:
            return probs, torch.ones(len(probs), dtype=torch.bool, device=probs.device), mask
        leave = torch.zeros(len(probs), dtype=torch.bool, device=probs.device)
        if self.d_ct is not None:
            leave = confidence(probs, self.top_c) > self.d_ct[stage]
        if self.p_th is not None:
            mask = keep_top(probs, mask, self.p_th[stage])
        if self.s_th is not None:
            mask = keep_cumulative(probs, mask, self.s_th[stage])
            leave = leave | (mask.sum(1) <= self.stop_size)
        return probs, leave, mask


def full_policy(num_stages: int, num_classes: int) -> Policy:
    """Every image runs every stage with every class (the full MS-CNN)."""
    return Policy("full", num_stages, num_classes)


def tp_policy(d_ct: tuple[float, ...], num_stages: int, num_classes: int, top_c: int = 5) -> Policy:
    """Alg. 1 TP: exit after stage i when the top-C probability sum exceeds D_ct[i]."""
    return Policy("TP", num_stages, num_classes, d_ct=tuple(float(v) for v in d_ct), top_c=top_c)


def cap_fc_policy(p_th: tuple[int, ...], num_stages: int, num_classes: int) -> Policy:
    """Alg. 2 CAP_FC: after stage i only the top P_th[i] classes are computed by later stages."""
    return Policy("CAP_FC", num_stages, num_classes, p_th=tuple(p_th))


def pthp_policy(
    d_ct: tuple[float, ...],
    s_th: tuple[float, ...],
    num_stages: int,
    num_classes: int,
    top_c: int = 5,
    stop_size: int | None = None,
) -> Policy:
    """Alg. 4 PTHP: TP exits plus S_th label selection; <= stop_size (default C) selected labels terminates."""
    return Policy(
        "PTHP",
        num_stages,
        num_classes,
        d_ct=tuple(float(v) for v in d_ct),
        top_c=top_c,
        s_th=tuple(float(v) for v in s_th),
        stop_size=top_c if stop_size is None else stop_size,
    )


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the kept classes only; pruned classes get probability 0."""
    # Reducing over the (short) class dimension of the transpose is several times faster on CPUs.
    return logits.masked_fill(~mask, float("-inf")).t().softmax(0).t()


def confidence(probs: torch.Tensor, top_c: int) -> torch.Tensor:
    """Sum of the top-C probabilities (Alg. 1 line 4), at most 1."""
    return probs.topk(top_c, dim=1).values.sum(1).clamp(max=1.0)


def keep_top(probs: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """Alg. 2 line 4: the `count` most probable kept classes (all kept ones if fewer)."""
    order = probs.masked_fill(~mask, -1.0).argsort(dim=1, descending=True, stable=True)
    chosen = torch.zeros_like(mask).scatter_(1, order[:, :count], True)
    return chosen & mask


def keep_cumulative(probs: torch.Tensor, mask: torch.Tensor, s_th: float) -> torch.Tensor:
    """Alg. 4 lines 7-11: the fewest most probable kept labels whose probabilities sum to at least S_th."""
    ordered, order = probs.masked_fill(~mask, -1.0).sort(dim=1, descending=True, stable=True)
    before = ordered.clamp(min=0).cumsum(1) - ordered.clamp(min=0)
    take = before < s_th
    take[:, 0] = True
    return torch.zeros_like(mask).scatter_(1, order, take) & mask


@dataclass
class Decision:
    """Per image: exit stage (0-based), prediction, exit-stage probabilities, classes computed per stage (S, B)."""

    exit_stage: torch.Tensor
    pred: torch.Tensor
    probs: torch.Tensor
    kept: torch.Tensor


def simulate(logits: torch.Tensor, policy: Policy) -> Decision:
    """Apply `policy` to cached logits (S, B, K) of every stage for every image."""
    stages, batch, classes = logits.shape
    if (stages, classes) != (policy.num_stages, policy.num_classes):
        raise ConfigError(
            f"cached logits have {stages} stages x {classes} classes but the policy expects "
            f"{policy.num_stages} x {policy.num_classes}"
        )
    mask = torch.ones(batch, classes, dtype=torch.bool)
    active = torch.ones(batch, dtype=torch.bool)
    exit_stage = torch.full((batch,), stages - 1, dtype=torch.long)
    probs_out = torch.zeros(batch, classes)
    kept = torch.zeros(stages, batch, dtype=torch.long)
    for stage in range(stages):
        kept[stage] = torch.where(active, mask.sum(1), 0)
        probs, leave, next_mask = policy.step(stage, logits[stage], mask)
        leaving = active & leave
        exit_stage[leaving] = stage
        probs_out[leaving] = probs[leaving]
        active &= ~leave
        mask = next_mask
    return Decision(exit_stage, probs_out.argmax(1), probs_out, kept)
